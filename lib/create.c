/*
 * create.c - creating qcow2 and raw image files.
 *
 * qcow2-format.md §6: QEMU's layout (header, refcount table, one refcount
 * block, then the L1 table), built by writing the three fixed clusters and
 * then allocating the L1 table and any preallocated metadata through the
 * ordinary allocator, so growth of the refcount structures is the same code
 * guest writes use.
 *
 * Every option is checked before the file is created or truncated: a
 * refused create leaves an existing file untouched.
 */
#include "create.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"
#include "file.h"
#include "flush.h"
#include "l1l2.h"
#include "lock.h"
#include "meta.h"
#include "open.h"
#include "refcount.h"
#include "roots.h"
#include "util.h"

/* The checks QEMU 7.2's qcow2 create makes, in its order (the first
 * failing one is reported). */
static int validate_qcow2(const struct qimg_create_opts *o)
{
    uint64_t cs = o->cluster_size;

    if (o->compat != 2 && o->compat != 3)
        return qimg_err(EINVAL, "Invalid compatibility level");
    if (o->extended_l2 && o->compat < 3)
        return qimg_err(EINVAL, "Extended L2 entries are only supported with "
                                "compatibility level 1.1 and above (use "
                                "version=v3 or greater)");
    if (!is_power_of_2(cs) || cs < 512 || cs > (2u << 20))
        return qimg_err(EINVAL, "Cluster size must be a power of two between "
                                "512 and 2048k");
    if (o->extended_l2 && cs < 16384)
        return qimg_err(EINVAL, "Extended L2 entries are only supported with "
                                "cluster sizes of at least 16384 bytes");
    if (o->backing_file && o->prealloc != QIMG_PREALLOC_OFF &&
        !o->extended_l2)
        return qimg_err(EINVAL, "Backing file and preallocation can only be "
                                "used at the same time if extended_l2 is on");
    if (o->backing_fmt && !o->backing_file)
        return qimg_err(EINVAL, "Backing format cannot be used without "
                                "backing file");
    if (o->compat < 3 && o->lazy_refcounts)
        return qimg_err(EINVAL, "Lazy refcounts only supported with "
                                "compatibility level 1.1 and above (use "
                                "version=v3 or greater)");
    if (!is_power_of_2(o->refcount_bits) || o->refcount_bits > 64)
        return qimg_err(EINVAL, "Refcount width must be a power of two and "
                                "may not exceed 64 bits");
    if (o->compat < 3 && o->refcount_bits != 16)
        return qimg_err(EINVAL, "Different refcount widths than 16 bits "
                                "require compatibility level 1.1 or above "
                                "(use version=v3 or greater)");
    if (o->compression_type != 0 && o->compat < 3)
        return qimg_err(EINVAL, "Non-zlib compression type is only supported "
                                "with compatibility level 1.1 and above (use "
                                "version=v3 or greater)");
    if (o->compression_type < 0 || o->compression_type > 1)
        return qimg_err(EINVAL, "Unknown compression type");
    if (o->backing_file && strlen(o->backing_file) > MAX_BACKING_NAME)
        return qimg_err(EINVAL, "Backing file name too long");
    if (o->backing_fmt && strlen(o->backing_fmt) > MAX_BACKING_FMT)
        return qimg_err(EINVAL, "Backing format name too long");
    return 0;
}

/* Entries the L1 table needs for `size` bytes. */
static uint64_t l1_entries_for(uint64_t size, unsigned cluster_bits,
                               bool ext_l2)
{
    unsigned span_bits = cluster_bits * 2 - (ext_l2 ? 4 : 3);

    return (size + (1ull << span_bits) - 1) >> span_bits;
}

static int check_size(const struct qimg_create_opts *o)
{
    unsigned cb = (unsigned)ctz64(o->cluster_size);
    uint64_t l1 = l1_entries_for(o->size, cb, o->extended_l2);

    if (o->size > (uint64_t)INT64_MAX - 511)
        return qimg_err(EINVAL, "Could not resize image: Image size cannot be "
                                "negative");
    if (l1 * 8 > QCOW_MAX_L1_SIZE)
        return qimg_err(EFBIG, "The image size is too large for file format "
                               "'qcow2' (try using a larger cluster size)");
    return 0;
}

/* Header, refcount table and one refcount block: clusters 0, 1 and 2. */
static int write_skeleton(struct qimg_io *io, const struct qimg_create_opts *o,
                          struct qcow2_header *h)
{
    uint64_t cs = o->cluster_size;
    unsigned order = (unsigned)ctz64(o->refcount_bits);
    uint8_t *buf;
    int ret;

    memset(h, 0, sizeof *h); /* the caller frees it, even on failure */
    buf = calloc(3, cs);
    if (!buf)
        return qimg_err(ENOMEM, "Out of memory");
    h->version = (uint32_t)o->compat;
    h->cluster_bits = (uint32_t)ctz64(cs);
    h->size = 0; /* set with the L1 table, once it exists */
    h->refcount_table_offset = cs;
    h->refcount_table_clusters = 1;
    h->refcount_order = order;
    h->header_length = o->compat >= 3 ? HDR_V3_LEN : HDR_V2_LEN;
    h->compression_type = (uint8_t)o->compression_type;
    if (o->compression_type)
        h->incompatible |= INCOMPAT_COMPRESSION;
    if (o->extended_l2)
        h->incompatible |= INCOMPAT_EXTL2;
    if (o->lazy_refcounts)
        h->compatible |= COMPAT_LAZY_REFCOUNTS;
    h->backing_file = o->backing_file ? strdup(o->backing_file) : NULL;
    h->backing_fmt = o->backing_fmt ? strdup(o->backing_fmt) : NULL;
    if ((o->backing_file && !h->backing_file) ||
        (o->backing_fmt && !h->backing_fmt)) {
        ret = qimg_err(ENOMEM, "Out of memory");
        goto out;
    }
    ret = header_encode(h, buf, cs);
    if (ret < 0)
        goto out;
    be64_store(buf + cs, 2 * cs);
    for (unsigned i = 0; i < 3; i++)
        refblock_set(buf + 2 * cs, i, order, 1);
    /* The refcount structures are durable before the header that makes
     * the file a qcow2 image: a crash leaves no image or a whole one. */
    ret = io->ops->truncate(io->ctx, 0);
    if (ret == 0)
        ret = io->ops->pwrite(io->ctx, buf + cs, 2 * cs, cs);
    if (ret == 0)
        ret = io->ops->flush(io->ctx);
    if (ret == 0)
        ret = io->ops->pwrite(io->ctx, buf, cs, 0);
    if (ret < 0)
        ret = qimg_err_errno(-ret, "Could not write qcow2 header");
out:
    free(buf);
    return ret;
}

/* Allocate the zeroed L1 table for `size` bytes and point the header at
 * it. */
static int create_l1(qimg_image *img, uint64_t size)
{
    struct qcow2 *q = img->q;
    uint64_t n = l1_entries_for(size, q->cluster_bits, q->ext_l2), off;
    uint8_t *l1;
    int ret;

    if (n == 0) {
        roots_set_disk(img, size, q->hdr.l1_table_offset, 0);
        return roots_write_header(img);
    }
    ret = refcount_alloc(img, DIV_ROUND_UP(n * 8, q->cluster_size), &off);
    if (ret < 0)
        return ret;
    l1 = calloc(n, 8);
    if (!l1)
        return qimg_err(ENOMEM, "Out of memory");
    ret = file_pwrite(img, l1, n * 8, off);
    if (ret == 0)
        ret = qcow2_flush(img);
    if (ret < 0) {
        free(l1);
        return ret;
    }
    l1_adopt(img, l1, (uint32_t)n);
    roots_set_disk(img, size, off, (uint32_t)n);
    ret = meta_add(img, META_ACTIVE_L1, off, n * 8);
    return ret < 0 ? ret : roots_write_header(img);
}

static int extend_file(qimg_image *img, uint64_t end)
{
    uint64_t sz = 0;
    int ret = file_get_size(img, &sz);

    if (ret == 0 && sz < end)
        ret = file_truncate(img, end);
    return ret < 0 ? qimg_err_errno(-ret, "Could not resize image") : 0;
}

/* Map every guest cluster to a host cluster (preallocation=metadata), and
 * for falloc/full reserve or zero the host space too. */
static int preallocate(qimg_image *img, enum qimg_prealloc mode)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size, off = 0;
    int ret = 0;

    while (off < img->size && ret == 0) {
        uint64_t per_l2 = q->l2_entries - ((off >> q->cluster_bits) &
                                           (q->l2_entries - 1));
        uint64_t n = MIN(per_l2, DIV_ROUND_UP(img->size - off, cs));
        struct mcache_entry *l2;
        uint64_t idx, host;

        ret = l2_get_writable(img, off, &l2, &idx);
        if (ret < 0)
            break;
        ret = refcount_alloc(img, n, &host);
        /* Data before the entries naming it: falloc reserves, full writes,
         * metadata extends the file (durable with the refcounts, before
         * any L2 table is written). */
        if (ret == 0 && mode != QIMG_PREALLOC_METADATA)
            ret = file_io_fill(&img->io, host, host + n * cs, mode);
        else if (ret == 0)
            ret = extend_file(img, host + n * cs);
        for (uint64_t i = 0; ret == 0 && i < n; i++)
            l2_entry_set(q, l2->buf, idx + i,
                         (host + i * cs) | QCOW_OFLAG_COPIED,
                         L2_BITMAP_ALL_ALLOC);
        l2->dirty = true;
        mcache_unpin(l2);
        off += n * cs;
    }
    return ret < 0 ? ret : qcow2_flush(img);
}

int qcow2_create(qimg_image **out, struct qimg_io *io, const char *filename,
                 const struct qimg_create_opts *o)
{
    struct qimg_open_opts oo = QIMG_OPEN_OPTS_INIT;
    struct qcow2_header h;
    qimg_image *img = NULL;
    int ret;

    *out = NULL;
    ret = write_skeleton(io, o, &h);
    header_free(&h);
    if (ret == 0)
        ret = io->ops->flush(io->ctx) < 0 ? qimg_err(EIO, "Flush failed") : 0;
    if (ret < 0) {
        io->ops->close(io->ctx);
        return ret;
    }
    oo.fmt = QIMG_FMT_QCOW2;
    oo.read_write = true;
    oo.no_backing = true;
    ret = image_open_io(&img, io, filename, &oo, 0);
    if (ret < 0)
        return ret;
    ret = create_l1(img, ALIGN_UP(o->size, 512));
    if (ret == 0 && o->prealloc != QIMG_PREALLOC_OFF)
        ret = preallocate(img, o->prealloc);
    if (ret == 0)
        ret = qcow2_flush(img);
    if (ret < 0) {
        image_close(img);
        return ret;
    }
    *out = img;
    return 0;
}

/* The file being created is locked like any read-write image before it is
 * truncated: an image in use by QEMU is refused, not destroyed. */
static int create_lock(struct qimg_io *io, const char *path)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;

    return lock_image(io, true, &o, path);
}

static int create_raw(const char *path, const struct qimg_create_opts *o)
{
    struct qimg_io io;
    uint64_t size;
    int ret;

    if (o->backing_file)
        return qimg_err(EINVAL, "Backing file not supported for file format "
                                "'raw'");
    if (o->prealloc == QIMG_PREALLOC_METADATA)
        return qimg_err(EINVAL, "Unsupported preallocation mode: metadata");
    /* As QEMU: whole sectors; refuse an impossible size before the file
     * is touched. */
    if (o->size > (uint64_t)INT64_MAX - 511)
        return qimg_err(EINVAL, "Could not resize file: Invalid argument");
    size = ALIGN_UP(o->size, 512);
    ret = io_posix_open(&io, path, true, true);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not create '%s'", path);
    ret = create_lock(&io, path);
    if (ret == 0) {
        ret = io.ops->truncate(io.ctx, 0);
        if (ret == 0)
            ret = io.ops->truncate(io.ctx, size);
        if (ret < 0)
            ret = qimg_err_errno(-ret, "Could not resize file");
    }
    if (ret == 0 && o->prealloc != QIMG_PREALLOC_OFF)
        ret = file_io_fill(&io, 0, size, o->prealloc);
    if (ret == 0 && io.ops->flush(io.ctx) < 0)
        ret = qimg_err(EIO, "Could not flush image");
    io.ops->close(io.ctx);
    return ret;
}

int qimg_image_create(const char *path, const struct qimg_create_opts *o)
{
    qimg_image *img = NULL;
    struct qimg_io io;
    int ret;

    if (o->fmt == QIMG_FMT_RAW)
        return create_raw(path, o);
    if (o->fmt != QIMG_FMT_QCOW2)
        return qimg_err(EINVAL, "Unknown file format");
    ret = validate_qcow2(o);
    if (ret == 0)
        ret = check_size(o);
    if (ret < 0)
        return ret;
    ret = io_posix_open(&io, path, true, true);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not create '%s'", path);
    ret = create_lock(&io, path);
    if (ret < 0) {
        io.ops->close(io.ctx);
        return ret;
    }
    ret = qcow2_create(&img, &io, path, o);
    if (ret < 0)
        return ret;
    return image_close(img);
}
