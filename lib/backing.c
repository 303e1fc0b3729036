/*
 * backing.c - reading through the backing chain.
 *
 * qcow2-format.md §2 (backing file name, relative to the overlay's
 * directory) and §3.3 (unallocated ranges read from the backing image,
 * zeros past its end or without one). The chain is opened by open.c.
 *
 * The recursion: guest.c reads an unallocated range here, and this file
 * reads the image below through guest.c again (or its file, if raw). It
 * ends at the bottom of the chain, whose depth open.c bounds. This is the
 * only call in lib/ that runs back up a layer.
 */
#include "backing.h"

#include <stdlib.h>
#include <string.h>

#include "file.h"
#include "guest.h"
#include "refcount.h"
#include "util.h"

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

int backing_read(qimg_image *img, void *buf, size_t len, uint64_t off)
{
    qimg_image *b = img->backing;
    size_t n = 0;
    int ret;

    if (b && off < b->size) {
        n = (size_t)MIN(len, b->size - off);
        ret = b->q ? guest_read(b, buf, n, off) : file_pread(b, buf, n, off);
        if (ret < 0)
            return ret;
    }
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

int layer_block_status(qimg_image *img, uint64_t off, uint64_t len,
                       struct qimg_extent *out)
{
    if (!img->q)
        return file_block_status(img, off, len, out);
    return guest_block_status(img, off, len, out);
}

/* QEMU looks at the file's holes under data clusters only in an image
 * that looks metadata-preallocated: more clusters with a refcount than
 * 10/9 of the clusters the file has blocks for (and 2 more). Guessed once
 * per open, as QEMU does; a failed query guesses no. */
static bool looks_preallocated(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint64_t alloc, real, threshold, end, count = 0, rc;

    if (q->prealloc_guess)
        return q->prealloc_guess == 2;
    q->prealloc_guess = 1;
    if (file_get_allocated(img, &alloc) < 0)
        return false;
    real = alloc / q->cluster_size;
    threshold = MAX(real * 10 / 9, real + 2);
    end = DIV_ROUND_UP(q->file_size, q->cluster_size);
    for (uint64_t i = 0; i < end && count <= threshold; i++) {
        if (refcount_get(img, i, &rc) < 0) {
            qimg_error_clear();
            return false;
        }
        count += rc != 0;
    }
    q->prealloc_guess = count > threshold ? 2 : 1;
    return q->prealloc_guess == 2;
}

int backing_map(qimg_image *img, uint64_t off, uint64_t len,
                struct qimg_extent *out)
{
    qimg_image *layer = img;
    int depth = 0, ret;

    for (;;) {
        ret = layer_block_status(layer, off, len, out);
        if (ret < 0)
            return ret;
        out->depth = depth;
        if ((out->flags & QIMG_BS_ALLOCATED) && layer->q &&
            (out->flags & QIMG_BS_DATA) && (out->flags & QIMG_BS_OFFSET)) {
            if (looks_preallocated(layer))
                file_host_holes(layer, out);
            return 0;
        }
        if (out->flags & QIMG_BS_ALLOCATED)
            return 0;
        if (!layer->backing) {
            out->flags |= QIMG_BS_ZERO;
            return 0;
        }
        if (off >= layer->backing->size) {
            /* Past the backing image's end: zeros, told by this layer. */
            out->flags |= QIMG_BS_ZERO;
            return 0;
        }
        layer = layer->backing;
        depth++;
        len = MIN(out->len, layer->size - off);
    }
}
