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
