/*
 * open.c - opening and closing image handles: locks, format probing, the
 * qcow2 or raw state, snapshot views, and the backing chain.
 *
 * qcow2-format.md §2: the backing file name is relative to the overlay's
 * directory; the chain is opened read-only, to a bounded depth.
 */
#include "open.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backing.h"
#include "endian.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "lock.h"
#include "qcow2.h"
#include "roots.h"
#include "util.h"

#define MAX_CHAIN_DEPTH 256

static int probe_format(qimg_image *img, enum qimg_format want)
{
    uint8_t magic[4];
    int ret;

    if (want != QIMG_FMT_AUTO) {
        img->fmt = want;
        return 0;
    }
    ret = file_pread(img, magic, sizeof magic, 0);
    if (ret < 0)
        return ret;
    img->fmt = be32_load(magic) == QCOW2_MAGIC ? QIMG_FMT_QCOW2 : QIMG_FMT_RAW;
    return 0;
}

static void image_free(qimg_image *img)
{
    if (!img)
        return;
    qcow2_close(img);
    file_close(img);
    image_close(img->backing);
    free(img->filename);
    free(img);
}

static int open_backing(qimg_image *img, const struct qimg_open_opts *o,
                        int depth)
{
    struct qimg_open_opts bo = QIMG_OPEN_OPTS_INIT;
    const struct qcow2_header *h;
    struct qimg_io io;
    char *path;
    int ret;

    if (!img->q || !img->q->hdr.backing_file ||
        (o->backing_layers > 0 && depth >= o->backing_layers))
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
    bo.backing_layers = o->backing_layers;
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

static int open_raw(qimg_image *img)
{
    uint64_t size;
    int ret = file_get_size(img, &size);

    if (ret < 0)
        return qimg_err_errno(-ret, "Could not get the image size");
    /* As QEMU: a raw disk is whole 512-byte sectors; the tail of a
     * partial last sector reads as zeros (writes extend the file). */
    roots_set_size(img, ALIGN_UP(size, 512));
    return 0;
}

int image_open_io(qimg_image **out, struct qimg_io *io, const char *filename,
                  const struct qimg_open_opts *o, int depth)
{
    qimg_image *img = calloc(1, sizeof *img);
    int ret;

    *out = NULL;
    if (!img) {
        io->ops->close(io->ctx);
        return qimg_err(ENOMEM, "Out of memory");
    }
    file_init(img, io, o->read_write && !o->snapshot);
    img->filename = strdup(filename ? filename : "");
    if (!img->filename) {
        ret = qimg_err(ENOMEM, "Out of memory");
        goto fail;
    }
    ret = lock_image(&img->io, img->read_write, o, img->filename);
    if (ret == 0)
        ret = probe_format(img, o->fmt);
    if (ret < 0)
        goto fail;
    if (img->fmt == QIMG_FMT_QCOW2)
        ret = qcow2_open(img, o);
    else
        ret = open_raw(img);
    if (ret == 0 && o->snapshot) {
        if (img->fmt != QIMG_FMT_QCOW2) {
            ret = qimg_err(ENOTSUP, "This image format does not support "
                                    "snapshots");
        } else {
            ret = qcow2_open_view(img, o->snapshot);
            img->is_view = ret == 0;
        }
    }
    if (ret == 0 && !o->no_backing)
        ret = open_backing(img, o, depth);
    if (ret < 0)
        goto fail;
    *out = img;
    return 0;
fail:
    image_free(img);
    return ret;
}

int image_close(qimg_image *img)
{
    int ret = 0;

    if (!img)
        return 0;
    if (img->read_write)
        ret = img->q ? qcow2_flush(img) : file_flush_always(img);
    if (ret == 0 && img->q && img->read_write)
        ret = qcow2_store_bitmaps(img);
    image_free(img);
    return ret;
}
