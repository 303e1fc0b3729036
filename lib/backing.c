/*
 * backing.c - the backing chain: opening it read-only and reading through
 * it.
 *
 * qcow2-format.md §2 (backing file name, relative to the overlay's
 * directory) and §3.3 (unallocated ranges read from the backing image,
 * zeros past its end or without one).
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define MAX_CHAIN_DEPTH 256

char *backing_full_path(const char *base, const char *name)
{
    const char *slash = strrchr(base, '/');
    size_t dir_len;
    char *p;

    if (name[0] == '/' || !slash)
        return strdup(name);
    dir_len = (size_t)(slash - base) + 1;
    p = malloc(dir_len + strlen(name) + 1);
    if (!p)
        return NULL;
    memcpy(p, base, dir_len);
    strcpy(p + dir_len, name);
    return p;
}

int backing_open(qimg_image *img, const struct qimg_open_opts *o, int depth)
{
    struct qimg_open_opts bo = QIMG_OPEN_OPTS_INIT;
    const struct qcow2_header *h;
    struct qimg_io io;
    char *path;
    int ret;

    if (!img->q || !img->q->hdr.backing_file)
        return 0;
    h = &img->q->hdr;
    if (depth >= MAX_CHAIN_DEPTH)
        return qimg_err(ELOOP, "Backing chain too deep (a loop?)");
    if (!h->backing_fmt)
        bo.fmt = QIMG_FMT_AUTO;
    else if (!strcmp(h->backing_fmt, "qcow2"))
        bo.fmt = QIMG_FMT_QCOW2;
    else if (!strcmp(h->backing_fmt, "raw"))
        bo.fmt = QIMG_FMT_RAW;
    else
        return qimg_err(ENOTSUP, "Could not open backing file: Unknown "
                                 "driver '%s'",
                        h->backing_fmt);
    bo.force_share = o->force_share;
    bo.no_locking = o->no_locking;
    path = backing_full_path(img->filename, h->backing_file);
    if (!path)
        return qimg_err(ENOMEM, "Out of memory");
    ret = io_posix_open(&io, path, false, false);
    if (ret < 0) {
        ret = qimg_err_errno(-ret, "Could not open backing file: Could not "
                                   "open '%s'",
                             path);
        free(path);
        return ret;
    }
    ret = image_open_io(&img->backing, &io, path, &bo, depth + 1);
    if (ret < 0 && !strstr(qimg_last_error()->message, "backing file"))
        qimg_err_prefix("Could not open backing file: ");
    free(path);
    return ret;
}

int backing_read(qimg_image *img, void *buf, size_t len, uint64_t off)
{
    qimg_image *b = img->backing;
    size_t n = 0;
    int ret;

    if (b && off < b->size) {
        n = (size_t)MIN(len, b->size - off);
        ret = qimg_image_read(b, buf, n, off);
        if (ret < 0)
            return ret;
    }
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}
