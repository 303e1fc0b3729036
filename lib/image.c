/*
 * image.c - the public image API: open, close, format probing, guest I/O
 * dispatch to qcow2 (guest.c) or raw, and the checked io wrappers every
 * lib file uses to reach the file.
 *
 * Does not know any on-disk structure beyond the qcow2 magic.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int image_pread(qimg_image *img, void *buf, size_t len, uint64_t off)
{
    int ret = img->io.ops->pread(img->io.ctx, buf, len, off);

    if (ret < 0)
        return qimg_err_errno(-ret, "Could not read image at offset %#" PRIx64,
                              off);
    return 0;
}

int image_pwrite(qimg_image *img, const void *buf, size_t len, uint64_t off)
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

int image_flush_file(qimg_image *img)
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

int image_discard_file(qimg_image *img, uint64_t off, uint64_t len)
{
    int ret = img->io.ops->discard(img->io.ctx, off, len);

    if (ret == -EOPNOTSUPP)
        return 0; /* freeing space is advisory */
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not discard image range");
    img->unsynced = true;
    return 0;
}

static int probe_format(qimg_image *img, enum qimg_format want)
{
    uint8_t magic[4];
    int ret;

    if (want != QIMG_FMT_AUTO) {
        img->fmt = want;
        return 0;
    }
    ret = image_pread(img, magic, sizeof magic, 0);
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
    if (img->io.ops)
        img->io.ops->close(img->io.ctx);
    qimg_image_close(img->backing);
    free(img->filename);
    free(img);
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
    img->io = *io;
    img->read_write = o->read_write && !o->snapshot;
    img->lock_fd = -1;
    img->zero_from = UINT64_MAX;
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
    if (img->fmt == QIMG_FMT_QCOW2) {
        ret = qcow2_open(img, o);
    } else {
        ret = img->io.ops->get_size(img->io.ctx, &img->size);
        if (ret < 0)
            ret = qimg_err_errno(-ret, "Could not get the image size");
        /* As QEMU: a raw disk is whole 512-byte sectors; the tail of a
         * partial last sector reads as zeros (writes extend the file). */
        img->size = ALIGN_UP(img->size, 512);
    }
    if (ret == 0 && o->snapshot) {
        if (img->fmt != QIMG_FMT_QCOW2)
            ret = qimg_err(ENOTSUP, "This image format does not support "
                                    "snapshots");
        else
            ret = snap_open_view(img, o->snapshot);
    }
    if (ret == 0 && !o->no_backing)
        ret = backing_open(img, o, depth);
    if (ret < 0)
        goto fail;
    *out = img;
    return 0;
fail:
    image_free(img);
    return ret;
}

int qimg_image_open(qimg_image **out, const char *path,
                    const struct qimg_open_opts *o)
{
    struct qimg_open_opts def = QIMG_OPEN_OPTS_INIT;
    struct qimg_io io;
    int ret;

    *out = NULL;
    if (!o)
        o = &def;
    ret = io_posix_open(&io, path, o->read_write && !o->snapshot, false);
    if (ret == -EISDIR)
        return qimg_err(EISDIR, "'file' driver requires '%s' to be a regular "
                                "file",
                        path);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not open '%s'", path);
    if (o->direct_data && o->read_write)
        io_posix_direct_data(&io);
    return image_open_io(out, &io, path, o, 0);
}

int qimg_image_close(qimg_image *img)
{
    int ret = 0;

    if (!img)
        return 0;
    if (img->read_write)
        ret = qimg_image_flush(img);
    image_free(img);
    return ret;
}

uint64_t qimg_image_size(const qimg_image *img)
{
    return img->size;
}

enum qimg_format qimg_image_format(const qimg_image *img)
{
    return img->fmt;
}

qimg_image *qimg_image_backing(qimg_image *img)
{
    return img->backing;
}

static int check_range(const qimg_image *img, uint64_t off, uint64_t len)
{
    if (off > img->size || len > img->size - off)
        return qimg_err(EINVAL, "Request out of range: offset %" PRIu64
                                " length %" PRIu64 " (disk size %" PRIu64 ")",
                        off, len, img->size);
    return 0;
}

static int check_writable(const qimg_image *img)
{
    if (!img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    return 0;
}

int qimg_image_read(qimg_image *img, void *buf, size_t len, uint64_t off)
{
    int ret = check_range(img, off, len);

    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return image_pread(img, buf, len, off);
    return guest_read(img, buf, len, off);
}

int qimg_image_write(qimg_image *img, const void *buf, size_t len,
                     uint64_t off)
{
    int ret = check_writable(img);

    if (ret == 0)
        ret = check_range(img, off, len);
    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return image_pwrite(img, buf, len, off);
    return qcow2_write_failed(img, guest_write(img, buf, len, off));
}

int qimg_image_write_compressed(qimg_image *img, const void *buf, size_t len,
                                uint64_t off)
{
    int ret = check_writable(img);

    if (ret == 0)
        ret = check_range(img, off, len);
    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return qimg_err(ENOTSUP, "Compression is not supported for this "
                                 "image format");
    return qcow2_write_failed(img,
                              guest_write_compressed(img, buf, len, off));
}

/* Raw: punch a hole when unmapping is allowed and the file system can
 * (a punched range reads as zeros); otherwise write zeros. */
static int raw_zero(qimg_image *img, uint64_t off, uint64_t len, bool unmap)
{
    size_t chunk = (size_t)MIN(len, 1u << 20);
    uint8_t *z;
    int ret = 0;

    if (unmap && off + len <= img->size &&
        img->io.ops->discard(img->io.ctx, off, len) == 0) {
        img->unsynced = true;
        return 0;
    }
    z = calloc(1, chunk ? chunk : 1);
    if (!z)
        return qimg_err(ENOMEM, "Out of memory");
    while (len > 0 && ret == 0) {
        size_t n = (size_t)MIN(len, chunk);
        ret = image_pwrite(img, z, n, off);
        off += n;
        len -= n;
    }
    free(z);
    return ret;
}

int qimg_image_write_zeroes(qimg_image *img, uint64_t off, uint64_t len,
                            unsigned flags)
{
    int ret = check_writable(img);

    if (ret == 0)
        ret = check_range(img, off, len);
    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return raw_zero(img, off, len, flags & QIMG_ZERO_UNMAP);
    return qcow2_write_failed(img,
                              guest_zero(img, off, len, flags & QIMG_ZERO_UNMAP));
}

int qimg_image_discard(qimg_image *img, uint64_t off, uint64_t len)
{
    int ret = check_writable(img);

    if (ret == 0)
        ret = check_range(img, off, len);
    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return image_discard_file(img, off, len);
    return qcow2_write_failed(img, guest_discard(img, off, len));
}

int qimg_image_flush(qimg_image *img)
{
    int ret;

    if (!img->read_write)
        return 0;
    if (img->fmt == QIMG_FMT_QCOW2)
        return qcow2_flush(img);
    img->unsynced = true; /* a guest flush always reaches the disk */
    ret = image_flush_file(img);
    return ret;
}

static int raw_block_status(qimg_image *img, uint64_t off, uint64_t len,
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

int qimg_image_block_status(qimg_image *img, uint64_t off, uint64_t len,
                            struct qimg_extent *out)
{
    int ret = check_range(img, off, len);

    if (ret < 0)
        return ret;
    if (len == 0)
        return qimg_err(EINVAL, "Empty block status request");
    if (img->fmt == QIMG_FMT_RAW)
        return raw_block_status(img, off, len, out);
    return guest_block_status(img, off, len, out);
}

/* Data clusters over a hole of the host file read as zeros: say so, as
 * QEMU's block status does (preallocated metadata shows this). */
static int host_holes(qimg_image *layer, struct qimg_extent *e)
{
    bool is_data = true;
    uint64_t end = e->host_off + e->len;
    int ret = 0;

    if (layer->io.ops->seek_data)
        ret = layer->io.ops->seek_data(layer->io.ctx, e->host_off, &is_data,
                                       &end);
    if (ret < 0)
        return 0; /* unknown: report plain data */
    if (end > e->host_off && end - e->host_off < e->len)
        e->len = end - e->host_off;
    if (!is_data)
        e->flags |= QIMG_BS_ZERO;
    return 0;
}

const char *qimg_image_filename(const qimg_image *img)
{
    return img->filename;
}

int qimg_image_map(qimg_image *img, uint64_t off, uint64_t len,
                   struct qimg_extent *out)
{
    qimg_image *layer = img;
    int depth = 0, ret;

    for (;;) {
        ret = qimg_image_block_status(layer, off, len, out);
        if (ret < 0)
            return ret;
        out->depth = depth;
        if ((out->flags & QIMG_BS_ALLOCATED) && layer->fmt == QIMG_FMT_QCOW2 &&
            (out->flags & QIMG_BS_DATA) && (out->flags & QIMG_BS_OFFSET))
            return host_holes(layer, out);
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
