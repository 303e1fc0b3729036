/*
 * file.c - the image file under a handle: checked reads and writes,
 * flushes, discards, the file's size and allocation.
 *
 * Everything below the qcow2 structures: no file of lib/ reaches the io
 * backend but through here. Tracks whether anything was written since the
 * last fdatasync (so a flush with nothing to make durable costs nothing)
 * and from where on the file reads as zeros (writes into a new cluster
 * there can leave its zero sectors out).
 */
#include "file.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "util.h"

void file_init(qimg_image *img, const struct qimg_io *io, bool read_write)
{
    img->io = *io;
    img->read_write = read_write;
    img->unsynced = false;
    img->zero_from = UINT64_MAX;
}

void file_close(qimg_image *img)
{
    if (img->io.ops)
        img->io.ops->close(img->io.ctx);
    img->io.ops = NULL;
}

void file_set_read_only(qimg_image *img)
{
    img->read_write = false;
}

void file_prefetch(qimg_image *img, uint64_t off, uint64_t len)
{
    if (img->io.ops->prefetch)
        img->io.ops->prefetch(img->io.ctx, off, len);
}

int file_pread(qimg_image *img, void *buf, size_t len, uint64_t off)
{
    int ret = img->io.ops->pread(img->io.ctx, buf, len, off);

    if (ret < 0)
        return qimg_err_errno(-ret, "Could not read image at offset %#" PRIx64,
                              off);
    return 0;
}

int file_pwrite(qimg_image *img, const void *buf, size_t len, uint64_t off)
{
    int ret;

    if (!img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    ret = img->io.ops->pwrite(img->io.ctx, buf, len, off);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not write image at offset %#" PRIx64,
                              off);
    img->unsynced = true;
    img->zero_from = MAX(img->zero_from, off + len);
    return 0;
}

int file_flush(qimg_image *img)
{
    int ret;

    if (!img->read_write || !img->unsynced)
        return 0;
    ret = img->io.ops->flush(img->io.ctx);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not flush image");
    img->unsynced = false;
    return 0;
}

int file_flush_always(qimg_image *img)
{
    if (!img->read_write)
        return 0;
    img->unsynced = true;
    return file_flush(img);
}

int file_discard(qimg_image *img, uint64_t off, uint64_t len)
{
    int ret = img->io.ops->discard(img->io.ctx, off, len);

    if (ret == -EOPNOTSUPP)
        return 0; /* freeing space is advisory */
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not discard image range");
    img->unsynced = true;
    return 0;
}

int file_punch(qimg_image *img, uint64_t off, uint64_t len)
{
    int ret = img->io.ops->discard(img->io.ctx, off, len);

    if (ret == 0)
        img->unsynced = true;
    return ret;
}

void file_discard_quiet(qimg_image *img, uint64_t off, uint64_t len)
{
    bool unsynced = img->unsynced;

    if (file_discard(img, off, len) < 0)
        qimg_error_clear(); /* advisory: the last error stays the caller's */
    img->unsynced = unsynced;
}

int file_get_size(qimg_image *img, uint64_t *out)
{
    return img->io.ops->get_size(img->io.ctx, out);
}

int file_get_allocated(qimg_image *img, uint64_t *out)
{
    if (!img->io.ops->get_allocated)
        return -ENOTSUP;
    return img->io.ops->get_allocated(img->io.ctx, out);
}

int file_truncate(qimg_image *img, uint64_t size)
{
    int ret = img->io.ops->truncate(img->io.ctx, size);

    if (ret == 0 && img->q)
        img->q->file_size = size;
    if (ret == 0)
        img->zero_from = MIN(img->zero_from, size);
    return ret;
}

int file_io_fill(struct qimg_io *io, uint64_t from, uint64_t to,
                 enum qimg_prealloc mode)
{
    int fd = io->ops->get_fd ? io->ops->get_fd(io->ctx) : -1;
    size_t chunk = 1u << 20;
    uint64_t sz = 0;
    uint8_t *z;
    int ret = 0;

    if (to <= from || mode == QIMG_PREALLOC_OFF)
        return 0;
    if (mode == QIMG_PREALLOC_METADATA) {
        ret = io->ops->get_size(io->ctx, &sz);
        if (ret == 0 && sz < to)
            ret = io->ops->truncate(io->ctx, to);
        return ret < 0 ? qimg_err_errno(-ret, "Could not resize image") : 0;
    }
    if (mode == QIMG_PREALLOC_FALLOC && fd >= 0 &&
        posix_fallocate(fd, (off_t)from, (off_t)(to - from)) == 0)
        return 0;
    z = calloc(1, chunk);
    if (!z)
        return qimg_err(ENOMEM, "Out of memory");
    for (uint64_t o = from; o < to && ret == 0; o += chunk)
        ret = io->ops->pwrite(io->ctx, z, (size_t)MIN(chunk, to - o), o);
    free(z);
    return ret < 0 ? qimg_err_errno(-ret, "Could not preallocate data") : 0;
}

int file_fill(qimg_image *img, uint64_t from, uint64_t to,
              enum qimg_prealloc mode)
{
    int ret = file_io_fill(&img->io, from, to, mode);

    if (ret == 0 && to > from && mode != QIMG_PREALLOC_OFF)
        img->unsynced = true;
    return ret;
}

void file_truncate_quiet(qimg_image *img, uint64_t size)
{
    if (file_truncate(img, size) < 0)
        qimg_error_clear();
}

int file_size_init(qimg_image *img)
{
    int ret = file_get_size(img, &img->q->file_size);

    if (ret < 0)
        return qimg_err_errno(-ret, "Could not get the image size");
    img->zero_from = img->q->file_size;
    return 0;
}

void file_extend(qimg_image *img, uint64_t end)
{
    img->q->file_size = MAX(img->q->file_size, end);
}

int file_read_table(qimg_image *img, uint8_t **out, uint64_t off, size_t n,
                    const char *what)
{
    uint8_t *buf;
    int ret;

    *out = NULL;
    if (what && (off + n > img->q->file_size || off + n < off))
        return qimg_err(EINVAL, "%s exceeds the end of the file", what);
    buf = malloc(n ? n : 1);
    if (!buf)
        return qimg_err(ENOMEM, "Out of memory");
    ret = file_pread(img, buf, n, off);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    return 0;
}

int file_block_status(qimg_image *img, uint64_t off, uint64_t len,
                      struct qimg_extent *out)
{
    bool is_data = true;
    uint64_t end = off + len;
    int ret = 0;

    if (img->io.ops->seek_data)
        ret = img->io.ops->seek_data(img->io.ctx, off, &is_data, &end);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not get file allocation status");
    memset(out, 0, sizeof *out);
    out->len = MIN(MAX(end, off + 1), off + len) - off;
    out->flags = QIMG_BS_ALLOCATED | QIMG_BS_OFFSET |
                 (is_data ? QIMG_BS_DATA : QIMG_BS_ZERO);
    out->host_off = off;
    return 0;
}

void file_host_holes(qimg_image *img, struct qimg_extent *e)
{
    bool is_data = true;
    uint64_t end = e->host_off + e->len;

    /* Past the end of the file: QEMU reports plain data there. */
    if (img->q && e->host_off >= img->q->file_size)
        return;
    if (img->io.ops->seek_data &&
        img->io.ops->seek_data(img->io.ctx, e->host_off, &is_data, &end) < 0)
        return; /* unknown: report plain data */
    if (end > e->host_off && end - e->host_off < e->len)
        e->len = end - e->host_off;
    if (!is_data)
        e->flags |= QIMG_BS_ZERO;
}
