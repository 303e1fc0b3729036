/*
 * imageapi.c - the public image API: open and close, size and format, guest
 * I/O and block status, dispatched to qcow2 (guest.c) or to the raw file
 * (file.c).
 *
 * Checks each request (range, writability) and, for qcow2 writes, lets
 * roots.c set the corrupt bit where QEMU would. Knows no on-disk
 * structure.
 */
#include "qimg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "amend.h"
#include "backing.h"
#include "bitmap.h"
#include "compact.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "guest.h"
#include "image.h"
#include "open.h"
#include "qcow2.h"
#include "refcount.h"
#include "roots.h"
#include "txn.h"
#include "util.h"

int qimg_image_open(qimg_image **out, const char *path,
                    const struct qimg_open_opts *o)
{
    struct qimg_open_opts def = QIMG_OPEN_OPTS_INIT;
    struct qimg_io io;
    int ret;

    *out = NULL;
    if (!o)
        o = &def;
    if (!*path)
        return qimg_err(EINVAL, "The 'file' block driver requires a file "
                                "name");
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
    return image_close(img);
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

const char *qimg_image_filename(const qimg_image *img)
{
    return img->filename;
}

static int check_range(const qimg_image *img, uint64_t off, uint64_t len)
{
    if (off > img->size || len > img->size - off)
        return qimg_err(EINVAL, "Request out of range: offset %" PRIu64
                                " length %" PRIu64 " (disk size %" PRIu64 ")",
                        off, len, img->size);
    return 0;
}

/* A write request: a writable image, a range inside the disk. */
static int check_write(const qimg_image *img, uint64_t off, uint64_t len)
{
    if (!img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    return check_range(img, off, len);
}

int qimg_image_read(qimg_image *img, void *buf, size_t len, uint64_t off)
{
    int ret = check_range(img, off, len);

    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return file_pread(img, buf, len, off);
    return guest_read(img, buf, len, off);
}

int qimg_image_write(qimg_image *img, const void *buf, size_t len,
                     uint64_t off)
{
    int ret = check_write(img, off, len);

    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return file_pwrite(img, buf, len, off);
    return roots_write_failed(img, guest_write(img, buf, len, off));
}

int qimg_image_write_compressed(qimg_image *img, const void *buf, size_t len,
                                uint64_t off)
{
    int ret = check_write(img, off, len);

    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return qimg_err(ENOTSUP, "Compression is not supported for this "
                                 "image format");
    return roots_write_failed(img,
                              guest_write_compressed(img, buf, len, off));
}

/* Raw: punch a hole when unmapping is allowed and the file system can
 * (a punched range reads as zeros); otherwise write zeros. */
static int raw_zero(qimg_image *img, uint64_t off, uint64_t len, bool unmap)
{
    size_t chunk = (size_t)MIN(len, 1u << 20);
    uint8_t *z;
    int ret = 0;

    if (unmap && off + len <= img->size && file_punch(img, off, len) == 0)
        return 0;
    z = calloc(1, chunk ? chunk : 1);
    if (!z)
        return qimg_err(ENOMEM, "Out of memory");
    while (len > 0 && ret == 0) {
        size_t n = (size_t)MIN(len, chunk);
        ret = file_pwrite(img, z, n, off);
        off += n;
        len -= n;
    }
    free(z);
    return ret;
}

int qimg_image_write_zeroes(qimg_image *img, uint64_t off, uint64_t len,
                            unsigned flags)
{
    int ret = check_write(img, off, len);

    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return raw_zero(img, off, len, flags & QIMG_ZERO_UNMAP);
    if ((flags & QIMG_ZERO_NO_FALLBACK) &&
        (ret = guest_zero_no_fallback(img, off, len)) < 0)
        return ret;
    return roots_write_failed(
        img, guest_zero(img, off, len, flags & QIMG_ZERO_UNMAP));
}

int qimg_image_discard(qimg_image *img, uint64_t off, uint64_t len)
{
    int ret = check_write(img, off, len);

    if (ret < 0 || len == 0)
        return ret;
    if (img->fmt == QIMG_FMT_RAW)
        return file_discard(img, off, len);
    return roots_write_failed(img, guest_discard(img, off, len));
}

int qimg_image_flush(qimg_image *img)
{
    if (!img->read_write)
        return 0;
    if (img->fmt == QIMG_FMT_QCOW2)
        return qcow2_flush(img);
    return file_flush_always(img); /* a guest flush always reaches the disk */
}

unsigned qimg_image_take_free_failures(qimg_image *img, int *err)
{
    *err = 0;
    if (img->fmt != QIMG_FMT_QCOW2 || !img->q)
        return 0;
    return refcount_take_failed_frees(img, err);
}

/* A block status request: a non-empty range inside the disk. */
static int check_status(const qimg_image *img, uint64_t off, uint64_t len)
{
    int ret = check_range(img, off, len);

    if (ret == 0 && len == 0)
        ret = qimg_err(EINVAL, "Empty block status request");
    return ret;
}

int qimg_image_block_status(qimg_image *img, uint64_t off, uint64_t len,
                            struct qimg_extent *out)
{
    int ret = check_status(img, off, len);

    return ret < 0 ? ret : layer_block_status(img, off, len, out);
}

int qimg_image_map(qimg_image *img, uint64_t off, uint64_t len,
                   struct qimg_extent *out)
{
    int ret = check_status(img, off, len);

    return ret < 0 ? ret : backing_map(img, off, len, out);
}

int qimg_image_set_backing(qimg_image *img, const char *name, const char *fmt)
{
    if (img->fmt != QIMG_FMT_QCOW2)
        return qimg_err(ENOTSUP, "Operation not supported");
    if (img->is_view || !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (name && strlen(name) > MAX_BACKING_NAME)
        return qimg_err(EINVAL, "Backing file name too long");
    if (fmt && !*fmt)
        fmt = NULL;
    return roots_set_backing(img, name && *name ? name : NULL,
                             name && *name ? fmt : NULL);
}

static int resize_raw(qimg_image *img, uint64_t size, enum qimg_prealloc mode)
{
    uint64_t old = 0;
    int ret = file_get_size(img, &old);

    if (ret == 0)
        ret = file_truncate(img, size);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not resize file");
    if (size > old)
        ret = file_fill(img, old, size, mode);
    if (ret == 0)
        ret = file_flush(img);
    if (ret == 0)
        roots_set_size(img, ALIGN_UP(size, 512));
    return ret;
}

/* Growing: the bytes between the old size and the end of its cluster
 * read as zeros from now on (qemu-img writes zeros there when a longer
 * backing file would show through; qimg also where the cluster holds data
 * a shrink left past the end). They are invisible at the old size, so
 * this guest write changes nothing the old image shows. */
static int zero_head(qimg_image *img, uint64_t size, bool zero)
{
    const struct qcow2 *q = img->q;
    uint64_t old = img->size;
    uint64_t end = MIN(ALIGN_UP(old, q->cluster_size), size);
    uint64_t sc_end = MIN(ALIGN_UP(old, 1ull << q->sc_bits), end);
    struct qimg_extent e;
    uint8_t *z;
    int ret;

    if (end <= old)
        return 0;
    ret = guest_block_status(img, old - 1, 1, &e);
    if (ret < 0 || (!zero && !(e.flags & QIMG_BS_DATA)))
        return ret;
    /* Zeros written up to the subcluster's end; the cluster's further
     * subclusters (extended L2) marked zero. */
    z = calloc(1, sc_end - old);
    if (!z)
        return qimg_err(ENOMEM, "Out of memory");
    ret = sc_end > old ? guest_write(img, z, sc_end - old, old) : 0;
    free(z);
    if (ret == 0 && end > sc_end)
        ret = guest_zero(img, sc_end, end - sc_end, false);
    return ret;
}

/* qemu-img's refusals of a qcow2 resize to size, the image then being
 * of the given version; *zero: what the disk gains must read as zeros. */
static int resize_refusal(qimg_image *img, uint64_t size, uint32_t version,
                          bool *zero)
{
    int ret;

    if (size % 512)
        return qimg_err(EINVAL, "The new size must be a multiple of 512");
    if (img->q->hdr.incompatible & INCOMPAT_DATA_FILE)
        return qimg_err(ENOTSUP, "Cannot resize an image with an external "
                                 "data file");
    if (version < 3 && img->q->hdr.nb_snapshots)
        return qimg_err(ENOTSUP, "Can't resize a v2 image which has "
                                 "snapshots");
    ret = bitmap_check_resize(img);
    if (ret < 0 || size == img->size)
        return ret;
    /* As QEMU: what the disk gains must not show a longer backing file's
     * data through; v2 cannot mark clusters zero. */
    *zero = size > img->size && img->backing && img->backing->size > img->size;
    if (*zero && version < 3)
        return qimg_err(ENOTSUP, "Failed to zero out new clusters: Operation "
                                 "not supported");
    return 0;
}

/* The bitmaps at the new size (none: s stays empty). */
static int resize_bitmaps(qimg_image *img, uint64_t size,
                          struct bitmap_set *s)
{
    int ret = bitmap_set_load(img, s);

    for (size_t i = 0; ret == 0 && i < s->n; i++) {
        ret = bitmap_bits_load(img, &s->b[i]);
        if (ret == 0)
            ret = bitmap_bits_resize(img->q, &s->b[i], size);
    }
    return ret;
}

static int resize_qcow2(qimg_image *img, uint64_t size,
                        enum qimg_prealloc prealloc, bool zero)
{
    struct bitmap_set bm = {0};
    int ret = 0;

    if (size == img->size)
        return 0;
    ret = resize_bitmaps(img, size, &bm);
    /* Zeroing the tail is no guest write: the bitmaps do not see it. */
    bitmap_track_hold(img, true);
    if (ret == 0 && size > img->size)
        ret = roots_write_failed(img, zero_head(img, size, zero));
    bitmap_track_hold(img, false);
    if (ret == 0)
        ret = roots_write_failed(
            img, txn_resize(img, size, prealloc, zero, bm.n ? &bm : NULL));
    bitmap_set_free(&bm);
    return ret;
}

int qimg_image_resize(qimg_image *img, uint64_t size,
                      enum qimg_prealloc prealloc)
{
    bool zero = false;
    int ret;

    if (img->is_view || !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (size == 0 || size > INT64_MAX)
        return qimg_err(EINVAL, "New image size must be positive");
    if (size <= img->size && prealloc != QIMG_PREALLOC_OFF)
        return qimg_err(EINVAL, "Preallocation can only be used for "
                                "growing images");
    if (img->fmt == QIMG_FMT_RAW) {
        if (prealloc == QIMG_PREALLOC_METADATA)
            return qimg_err(ENOTSUP, "Unsupported preallocation mode: "
                                     "metadata");
        return resize_raw(img, size, prealloc);
    }
    ret = resize_refusal(img, size, img->q->hdr.version, &zero);
    return ret < 0 ? ret : resize_qcow2(img, size, prealloc, zero);
}

/* What the check counts as errors refuses an operation. */
static int refuse_errors(const struct qimg_check_result *r)
{
    if (!r->corruptions && !r->check_errors)
        return 0;
    return qimg_err(EINVAL, "The image has errors (qimg check finds %lld); "
                            "repair it first",
                    (long long)(r->corruptions + r->check_errors));
}

/* A new refcount structure copies the old counts and frees the old
 * clusters: on a damaged image that could free what an entry still
 * names. Refuse what the check finds broken (leaks are copied as
 * leaks), and so does a downgrade's rewrite of zero clusters and of
 * bitmaps. (The other changes write the header alone.) */
static int refuse_damaged(qimg_image *img)
{
    struct qimg_check_result *r = NULL;
    int ret = qimg_image_check(&r, img, 0);

    if (ret == 0)
        ret = refuse_errors(r);
    qimg_check_result_free(r);
    return ret;
}

int qimg_image_amend(qimg_image *img, const struct qimg_amend_opts *o)
{
    const struct qcow2_header *h;
    struct amend_plan p;
    uint64_t size;
    bool zero = false, down;
    int ret;

    if (img->is_view || !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (img->fmt != QIMG_FMT_QCOW2)
        return qimg_err(ENOTSUP, "Format driver 'raw' does not support "
                                 "option amendment");
    h = &img->q->hdr;
    if (o->refcount_bits && (o->refcount_bits > 64 ||
                             (o->refcount_bits & (o->refcount_bits - 1))))
        return qimg_err(EINVAL, "Refcount width must be a power of two and "
                                "may not exceed 64 bits");
    if (o->compat && o->compat != 2 && o->compat != 3)
        return qimg_err(EINVAL, "Unknown compatibility level");
    if (o->size > INT64_MAX)
        return qimg_err(EINVAL, "New image size must be positive");
    p.version = o->compat ? (uint32_t)o->compat : h->version;
    p.refcount_order = h->refcount_order;
    if (o->refcount_bits)
        p.refcount_order = (unsigned)__builtin_ctz(o->refcount_bits);
    p.lazy = o->lazy_refcounts < 0 ? (h->compatible & COMPAT_LAZY_REFCOUNTS)
                                   : o->lazy_refcounts > 0;
    size = o->size ? o->size : img->size;
    down = p.version < h->version;
    ret = amend_check(img, &p, size);
    if (ret == 0)
        ret = amend_check_tables(img, &p);
    /* (What rebuilds the refcount structure.) */
    if (ret == 0 && (p.expand || p.refcount_order != h->refcount_order ||
                     (down && h->has_bitmaps_ext)))
        ret = refuse_damaged(img);
    if (ret == 0 && size != img->size)
        ret = resize_refusal(img, size, down ? h->version : p.version, &zero);
    /* A downgrade last, as QEMU: v2 cannot resize with snapshots. */
    if (ret == 0 && down)
        ret = resize_qcow2(img, size, QIMG_PREALLOC_OFF, zero);
    if (ret == 0)
        ret = roots_write_failed(img, amend_format(img, &p));
    if (ret == 0)
        ret = qcow2_reopen(img);
    else if (ret == 1)
        ret = 0; /* nothing changed: no reopen (it would repair a dirty
                  * image that a repair could not clean, again) */
    if (ret == 0 && !down)
        ret = resize_qcow2(img, size, QIMG_PREALLOC_OFF, zero);
    return ret;
}

#define COMPACT_PASSES 4

/* Leaks repaired first: the new refcounts start from the old ones, which
 * must then be exact (a leaked cluster past the cut would be refused). */
static int compact_ready(qimg_image *img, int64_t *leaks)
{
    struct qimg_check_result *r = NULL;
    int ret = qimg_image_check(&r, img, 0);

    if (ret == 0)
        ret = refuse_errors(r);
    if (ret == 0 && r->leaks) {
        *leaks = r->leaks;
        qimg_check_result_free(r);
        r = NULL;
        ret = qimg_image_check(&r, img, QIMG_CHECK_FIX_LEAKS);
        qimg_check_result_free(r);
        r = NULL;
        if (ret == 0)
            ret = qimg_image_check(&r, img, 0);
        if (ret == 0)
            ret = refuse_errors(r);
        if (ret == 0 && r->leaks)
            ret = qimg_err(EIO, "Could not repair the leaked clusters");
    }
    qimg_check_result_free(r);
    return ret;
}

int qimg_image_compact(qimg_image *img, qimg_progress_fn *progress,
                       void *opaque, struct qimg_compact_result *res)
{
    uint64_t size = 0;
    int ret;

    memset(res, 0, sizeof *res);
    if (img->is_view || !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (img->fmt != QIMG_FMT_QCOW2)
        return qimg_err(ENOTSUP, "Only qcow2 images can be compacted");
    if (img->q->hdr.incompatible & INCOMPAT_DATA_FILE)
        return qimg_err(ENOTSUP, "Cannot compact an image with an external "
                                 "data file");
    if (img->q->hdr.crypt_method)
        return qimg_err(ENOTSUP, "Cannot compact an encrypted image");
    if (img->q->tracked)
        return qimg_err(EBUSY, "Bitmaps are being updated by this handle; "
                               "close it first");
    ret = qcow2_flush(img);
    if (ret == 0)
        ret = file_get_size(img, &size) < 0
                  ? qimg_err(EIO, "Could not get the image size")
                  : 0;
    res->old_file_size = size;
    if (ret == 0)
        ret = compact_ready(img, &res->leaks_repaired);
    /* A pass cannot use what its own switch frees (the tables it
     * rewrote, the old refcount structure); the next one can. */
    for (int pass = 0; ret == 0 && pass < COMPACT_PASSES; pass++) {
        uint64_t moved = 0;
        /* (Later passes move little: the progress is the first's.) */
        ret = roots_write_failed(img, compact_image(img, pass ? NULL
                                                              : progress,
                                                    opaque, &moved));
        res->moved_bytes += moved;
        if (ret == 0)
            ret = qcow2_reopen(img);
    }
    if (ret == 1)
        ret = 0;
    if (ret == 0)
        ret = compact_trim(img);
    if (ret == 0 && file_get_size(img, &size) == 0)
        res->new_file_size = size;
    return ret;
}
