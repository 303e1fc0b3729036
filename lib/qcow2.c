/*
 * qcow2.c - opening a qcow2 image: header validation against the file and
 * QEMU's limits, geometry, the flush order, the corrupt bit and the
 * overlap check.
 *
 * qcow2-format.md §1 (limits), §7 (dirty bit), §8 (corrupt bit), §13 (the
 * order qcow2_flush() writes metadata in). The codecs of the structures are
 * in header.c, l1l2.c, refcount.c and snapshot.c.
 *
 * Notes on the design:
 *  1. Opening never writes. Header changes QEMU makes on a read-write open
 *     (clearing unknown autoclear bits) are deferred to the first write, so
 *     an operation refused after opening leaves the file untouched.
 *  2. qcow2_flush(): refcount blocks, sync, L2 tables, sync, L1 entries,
 *     sync, then the queued decrements (now safe) and a last sync.
 *  3. Every allocation and in-place write is checked against the set of
 *     known metadata clusters; a hit sets the corrupt bit (QEMU's only
 *     permitted write on a damaged image) and fails the request.
 */
#include "internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int qcow2_read_table(qimg_image *img, uint8_t **out, uint64_t off, size_t n,
                     const char *what)
{
    struct qcow2 *q = img->q;
    uint8_t *buf;
    int ret;

    *out = NULL;
    if (off + n > q->file_size || off + n < off)
        return qimg_err(EINVAL, "%s exceeds the end of the file", what);
    buf = malloc(n ? n : 1);
    if (!buf)
        return qimg_err(ENOMEM, "Out of memory");
    ret = image_pread(img, buf, n, off);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    return 0;
}

/* QEMU's qcow2_validate_table(): count, alignment, 63-bit range. */
static int validate_table(const struct qcow2 *q, uint64_t off,
                          uint64_t entries, uint64_t entry_len,
                          uint64_t max_bytes, const char *what)
{
    if (entries > max_bytes / entry_len)
        return qimg_err(EFBIG, "%s too large", what);
    if ((uint64_t)INT64_MAX - entries * entry_len < off ||
        !IS_ALIGNED(off, q->cluster_size))
        return qimg_err(EINVAL, "%s offset invalid", what);
    return 0;
}

/* QEMU's wording: the bits the image's feature table names, then one
 * mask of all the others. */
static int report_unsupported(const struct qcow2_header *h, uint64_t mask)
{
    char msg[512] = "Unsupported qcow2 feature(s): ";
    size_t n = strlen(msg);
    uint64_t unnamed = 0;
    bool first = true;

    for (int bit = 0; bit < 64 && n < sizeof msg; bit++) {
        const char *name;
        if (!(mask & (1ull << bit)))
            continue;
        name = header_feature_name(h, 0, bit);
        if (!name) {
            unnamed |= 1ull << bit;
            continue;
        }
        n += (size_t)snprintf(msg + n, sizeof msg - n, "%s%s",
                              first ? "" : ", ", name);
        first = false;
    }
    if (unnamed && n < sizeof msg)
        snprintf(msg + n, sizeof msg - n,
                 "%sUnknown incompatible feature: %" PRIx64,
                 first ? "" : ", ", unnamed);
    return qimg_err(ENOTSUP, "%s", msg);
}

static void set_geometry(struct qcow2 *q)
{
    const struct qcow2_header *h = &q->hdr;

    q->cluster_bits = h->cluster_bits;
    q->cluster_size = 1ull << h->cluster_bits;
    q->ext_l2 = h->incompatible & INCOMPAT_EXTL2;
    q->l2_entry_size = q->ext_l2 ? 16 : 8;
    q->l2_bits = h->cluster_bits - (q->ext_l2 ? 4 : 3);
    q->l2_entries = 1ull << q->l2_bits;
    q->sc_bits = q->ext_l2 ? h->cluster_bits - 5 : h->cluster_bits;
    q->refcount_order = h->refcount_order;
    q->rb_bits = h->cluster_bits + 3 - h->refcount_order;
    q->refcount_max = h->refcount_order == 6
                          ? UINT64_MAX
                          : (1ull << (1u << h->refcount_order)) - 1;
    q->csize_shift = 62 - (h->cluster_bits - 8);
    q->csize_mask = (1ull << (h->cluster_bits - 8)) - 1;
    q->coff_mask = (1ull << q->csize_shift) - 1;
}

static int check_fixed(qimg_image *img, bool read_write)
{
    struct qcow2 *q = img->q;
    const struct qcow2_header *h = &q->hdr;

    if (h->version < 2 || h->version > 3)
        return qimg_err(ENOTSUP, "Unsupported qcow2 version %" PRIu32,
                        h->version);
    if (h->cluster_bits < 9 || h->cluster_bits > 21)
        return qimg_err(EINVAL, "Unsupported cluster size: 2^%" PRIu32,
                        h->cluster_bits);
    if (h->version >= 3 && h->header_length < HDR_V3_MIN_LEN)
        return qimg_err(EINVAL, "qcow2 header too short");
    if (h->header_length > (1u << h->cluster_bits))
        return qimg_err(EINVAL, "qcow2 header exceeds cluster size");
    if (h->version >= 3 && h->header_length % 8)
        return qimg_err(EINVAL, "qcow2 header length is not a multiple of 8");
    if (h->backing_file_offset > (1u << h->cluster_bits))
        return qimg_err(EINVAL, "Invalid backing file offset");
    if (h->incompatible & ~INCOMPAT_MASK)
        return 1; /* reported once the feature table is read */
    if ((h->incompatible & INCOMPAT_CORRUPT) && read_write)
        return qimg_err(EACCES,
                        "qcow2: Image is corrupt; cannot be opened read/write");
    if (h->refcount_order > 6)
        return qimg_err(EINVAL, "Reference count entry width too large; may "
                                "not exceed 64 bits");
    return 0;
}

static int check_features(qimg_image *img)
{
    const struct qcow2_header *h = &img->q->hdr;

    if (h->compression_type > 1)
        return qimg_err(ENOTSUP, "qcow2: unknown compression type: %u",
                        h->compression_type);
    if (h->compression_type == 0 && (h->incompatible & INCOMPAT_COMPRESSION))
        return qimg_err(EINVAL, "qcow2: Compression type incompatible "
                                "feature bit must not be set");
    if (h->compression_type != 0 && !(h->incompatible & INCOMPAT_COMPRESSION))
        return qimg_err(EINVAL, "qcow2: Compression type incompatible "
                                "feature bit must be set");
    if ((h->incompatible & INCOMPAT_EXTL2) && h->cluster_bits < 14)
        return qimg_err(EINVAL, "Extended L2 entries are only supported with "
                                "cluster sizes of at least 16 KiB");
    if (h->crypt_method > 2)
        return qimg_err(EINVAL, "Unsupported encryption method %" PRIu32,
                        h->crypt_method);
    if (h->crypt_method)
        return qimg_err(ENOTSUP, "Encrypted images are not supported");
    if (h->incompatible & INCOMPAT_DATA_FILE)
        return qimg_err(ENOTSUP, "External data files are not supported");
    return 0;
}

static int check_tables(qimg_image *img, bool for_check)
{
    struct qcow2 *q = img->q;
    const struct qcow2_header *h = &q->hdr;
    uint64_t span, needed;
    int ret;

    if (h->refcount_table_clusters == 0 && !for_check)
        return qimg_err(EINVAL,
                        "Image does not contain a reference count table");
    ret = validate_table(q, h->refcount_table_offset,
                         h->refcount_table_clusters, q->cluster_size,
                         8ull << 20, "Reference count table");
    if (ret == 0 && !for_check) /* check reports a bad table itself */
        ret = validate_table(q, h->snapshots_offset, h->nb_snapshots, 40,
                             40ull * QCOW_MAX_SNAPSHOTS, "Snapshot table");
    if (ret == 0)
        ret = validate_table(q, h->l1_table_offset, h->l1_size, 8,
                             QCOW_MAX_L1_SIZE, "Active L1 table");
    if (ret < 0)
        return ret;
    span = 1ull << (q->cluster_bits + q->l2_bits);
    needed = h->size / span + (h->size % span != 0);
    if (needed > INT32_MAX)
        return qimg_err(EFBIG, "Image is too big");
    if (h->l1_size < needed)
        return qimg_err(EINVAL, "L1 table is too small");
    return 0;
}

static int read_header(qimg_image *img, bool read_write)
{
    struct qcow2 *q = img->q;
    uint8_t fixed[HDR_V3_LEN];
    uint8_t *c0 = NULL;
    size_t cs, n;
    int ret, unsupported;

    ret = image_pread(img, fixed, sizeof fixed, 0);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not read qcow2 header");
    if (be32_load(fixed + HDR_MAGIC) != QCOW2_MAGIC)
        return qimg_err(EINVAL, "Image is not in qcow2 format");
    ret = header_decode_fixed(&q->hdr, fixed, sizeof fixed);
    if (ret < 0)
        return ret;
    unsupported = check_fixed(img, read_write);
    if (unsupported < 0)
        return unsupported;
    /* The first 4 KiB hold the extensions and the backing file name in
     * nearly every image: the rest of the cluster is read only if not. */
    cs = 1u << q->hdr.cluster_bits;
    n = MIN(cs, 4096);
    c0 = malloc(cs);
    if (!c0)
        return qimg_err(ENOMEM, "Out of memory");
    ret = image_pread(img, c0, n, 0);
    if (ret == 0 && header_exts_len(&q->hdr, c0, n, cs) > n) {
        ret = image_pread(img, c0 + n, cs - n, n);
        n = cs;
    }
    if (ret < 0) {
        ret = qimg_err_errno(-ret, "Could not read qcow2 header");
        goto out;
    }
    ret = header_decode_exts(&q->hdr, c0, n);
    if (unsupported) {
        ret = report_unsupported(&q->hdr, q->hdr.incompatible & ~INCOMPAT_MASK);
        goto out;
    }
    if (ret == 0)
        ret = check_features(img);
out:
    free(c0);
    return ret;
}

static int caches_init(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint64_t tables = (uint64_t)q->l1_size + 1;
    uint64_t cap = MIN((32ull << 20) / q->cluster_size, tables + 4);

    q->l1_dirty_lo = q->l1_dirty_hi = 0;
    if (mcache_init(&q->l2c, q->cluster_size, MAX(cap, 16)) < 0)
        return -ENOMEM;
    return refcount_cache_init(img);
}

/* Read a table that may run past the end of the file (check mode reads
 * what QEMU would read: zeros). */
static int read_table_lenient(qimg_image *img, uint8_t **out, uint64_t off,
                              size_t n)
{
    uint8_t *buf = malloc(n ? n : 1);
    int ret;

    if (!buf)
        return qimg_err(ENOMEM, "Out of memory");
    ret = image_pread(img, buf, n, off);
    if (ret < 0) {
        free(buf);
        return ret;
    }
    *out = buf;
    return 0;
}

static int load_tables(qimg_image *img, const struct qimg_open_opts *o)
{
    struct qcow2 *q = img->q;
    int ret;

    if (!o->for_check) {
        ret = l1_load(img);
        if (ret == 0)
            ret = refcount_load_table(img);
        if (ret == 0)
            ret = snap_table_load(img);
        return ret;
    }
    q->l1_size = q->hdr.l1_size;
    ret = read_table_lenient(img, &q->l1, q->hdr.l1_table_offset,
                             (size_t)q->l1_size * 8);
    if (ret == 0)
        ret = read_table_lenient(img, &q->rt, q->hdr.refcount_table_offset,
                                 (size_t)q->hdr.refcount_table_clusters *
                                     q->cluster_size);
    q->rt_entries = (uint64_t)q->hdr.refcount_table_clusters *
                    q->cluster_size / 8;
    return ret;
}

/* QEMU repairs an image left dirty (lazy refcounts) on a read-write open;
 * so does qimg, with the same repair as `check -r all`. */
static int repair_dirty(qimg_image *img)
{
    struct qimg_check_result *r = NULL;
    int ret = qimg_image_check(&r, img, QIMG_CHECK_FIX_ERRORS);

    if (ret == 0 && r->check_errors)
        ret = -EIO;
    qimg_check_result_free(r);
    if (ret < 0)
        return qimg_err(-ret, "Could not repair dirty image: %s",
                        strerror(-ret));
    return 0;
}

int qcow2_open(qimg_image *img, const struct qimg_open_opts *o)
{
    struct qcow2 *q = calloc(1, sizeof *q);
    int ret;

    if (!q)
        return qimg_err(ENOMEM, "Out of memory");
    img->q = q;
    ret = img->io.ops->get_size(img->io.ctx, &q->file_size);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not get the image size");
    img->zero_from = q->file_size;
    ret = read_header(img, o->read_write && !o->for_check);
    if (ret < 0)
        return ret;
    set_geometry(q);
    ret = check_tables(img, o->for_check);
    if (ret < 0)
        return ret;
    img->size = q->hdr.size;
    ret = load_tables(img, o);
    if (ret == 0)
        ret = caches_init(img);
    if (ret == 0 && (q->hdr.incompatible & INCOMPAT_DIRTY) &&
        img->read_write && !o->for_check)
        ret = repair_dirty(img);
    return ret;
}

void qcow2_close(qimg_image *img)
{
    struct qcow2 *q = img->q;

    if (!q)
        return;
    header_free(&q->hdr);
    free(q->l1);
    free(q->rt);
    mcache_destroy(&q->l2c);
    mcache_destroy(&q->rbc);
    free(q->dec);
    for (uint32_t i = 0; i < q->nb_snaps; i++)
        snap_free(&q->snaps[i]);
    free(q->snaps);
    idset_free(&q->meta);
    free(q);
    img->q = NULL;
}

int qcow2_flush(qimg_image *img)
{
    struct qcow2 *q = img->q;
    bool meta = mcache_has_dirty(&q->l2c) || q->l1_dirty_lo < q->l1_dirty_hi;
    int ret;

    if (!img->read_write)
        return 0;
    /* 1 of 4: refcount increments (and guest data) durable first ... */
    ret = refcount_flush(img);
    if (ret == 0 && meta)
        ret = image_flush_file(img);
    /* 2 of 4: ... then the L2 tables that use them ... */
    if (ret == 0 && mcache_has_dirty(&q->l2c)) {
        ret = l2_write_dirty(img);
        if (ret == 0 && q->l1_dirty_lo < q->l1_dirty_hi)
            ret = image_flush_file(img);
    }
    /* 3 of 4: ... then L1 entries naming new L2 tables ... */
    if (ret == 0)
        ret = l1_write_dirty(img);
    if (ret == 0)
        ret = image_flush_file(img);
    /* 4 of 4: references are gone on disk: decrements are now safe. */
    if (ret == 0 && q->nb_dec) {
        ret = refcount_apply_pending(img);
        if (ret == 0)
            ret = refcount_flush(img);
        if (ret == 0)
            ret = image_flush_file(img);
    }
    return ret;
}

int qcow2_write_header(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint8_t *buf = malloc(q->cluster_size);
    int ret;

    if (!buf)
        return qimg_err(ENOMEM, "Out of memory");
    ret = header_encode(&q->hdr, buf, q->cluster_size);
    if (ret == 0)
        ret = image_pwrite(img, buf, q->cluster_size, 0);
    if (ret == 0)
        ret = image_flush_file(img);
    free(buf);
    return ret;
}

int qcow2_signal_corruption(qimg_image *img, const char *fmt, ...)
{
    struct qcow2 *q = img->q;
    char msg[768];
    uint8_t b[8];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (img->read_write && !(q->hdr.incompatible & INCOMPAT_CORRUPT)) {
        q->hdr.incompatible |= INCOMPAT_CORRUPT;
        be64_store(b, q->hdr.incompatible);
        if (q->hdr.version >= 3 && image_pwrite(img, b, 8, HDR_INCOMPAT) == 0)
            image_flush_file(img);
    }
    q->corrupt_signalled = true;
    return qimg_corrupt("qcow2: Marking image as corrupt: %s; further "
                        "corruption events will be suppressed",
                        msg);
}

int qcow2_write_failed(qimg_image *img, int ret)
{
    struct qcow2 *q = img->q;
    const struct qimg_error *e = qimg_last_error();
    char msg[sizeof e->message];
    uint8_t b[8];

    /* Only bad metadata met by a write, on an image we may write. */
    if (ret != -EIO || !e->where[0] || !img->read_write || !q ||
        !strncmp(e->message, "qcow2: ", 7))
        return ret;
    snprintf(msg, sizeof msg, "%s", e->message);
    if (!(q->hdr.incompatible & INCOMPAT_CORRUPT) && q->hdr.version >= 3) {
        q->hdr.incompatible |= INCOMPAT_CORRUPT;
        be64_store(b, q->hdr.incompatible);
        if (image_pwrite(img, b, 8, HDR_INCOMPAT) == 0)
            image_flush_file(img);
    }
    q->corrupt_signalled = true;
    return qimg_corrupt("qcow2: Marking image as corrupt: %s; further "
                        "corruption events will be suppressed",
                        msg);
}

int qcow2_meta_add(struct qcow2 *q, uint64_t off, uint64_t len)
{
    if (!q->meta_ready || !len || off + len < off)
        return 0;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++)
        if (idset_add(&q->meta, c) < 0)
            return -ENOMEM;
    return 0;
}

void qcow2_meta_del(struct qcow2 *q, uint64_t off, uint64_t len)
{
    if (!q->meta_ready || !len || off + len < off)
        return;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++)
        idset_del(&q->meta, c);
}

static bool in_range(uint64_t c, unsigned bits, uint64_t off, uint64_t len)
{
    return len && c >= off >> bits && c <= (off + len - 1) >> bits;
}

/* Which structure metadata cluster idx belongs to, in QEMU's words. */
static const char *meta_name(qimg_image *img, uint64_t idx)
{
    struct qcow2 *q = img->q;
    const struct qcow2_header *h = &q->hdr;
    unsigned bits = q->cluster_bits;

    if (idx == 0)
        return "qcow2_header";
    if (in_range(idx, bits, h->l1_table_offset, (uint64_t)q->l1_size * 8))
        return "active L1 table";
    for (uint32_t i = 0; i < q->l1_size; i++)
        if ((l1_entry_get(q->l1, i) & L1E_OFFSET_MASK) >> bits == idx)
            return "active L2 table";
    if (in_range(idx, bits, h->refcount_table_offset,
                 (uint64_t)h->refcount_table_clusters << bits))
        return "refcount table";
    for (uint64_t i = 0; i < q->rt_entries; i++)
        if ((be64_load(q->rt + i * 8) & RT_OFFSET_MASK) >> bits == idx)
            return "refcount block";
    if (q->nb_snaps && in_range(idx, bits, h->snapshots_offset,
                                q->snap_table_size))
        return "snapshot table";
    for (uint32_t i = 0; i < q->nb_snaps; i++)
        if (in_range(idx, bits, q->snaps[i].l1_off,
                     (uint64_t)q->snaps[i].l1_size * 8))
            return "inactive L1 table";
    if (h->has_bitmaps_ext &&
        in_range(idx, bits, h->bitmap_dir_offset, h->bitmap_dir_size))
        return "bitmap directory";
    return "metadata";
}

int qcow2_overlap_check(qimg_image *img, uint64_t off, uint64_t len)
{
    struct qcow2 *q = img->q;

    if (!q->meta_ready || !len)
        return 0;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++)
        if (c == 0 || idset_has(&q->meta, c))
            return qcow2_signal_corruption(
                img, "Preventing invalid write on metadata (overlaps with %s)",
                meta_name(img, c));
    return 0;
}

/* Collect every metadata cluster QEMU's default overlap check knows. A
 * snapshot's L1 table and the bitmap directory count only as far as they
 * lie inside the file, and a snapshot L1 table only if its size is valid
 * (operations on it refuse it): neither is validated at open, and a bogus
 * entry must not cost a set of billions of clusters. */
static int meta_build(qimg_image *img)
{
    struct qcow2 *q = img->q;
    const struct qcow2_header *h = &q->hdr;
    int ret;

    q->meta_ready = true;
    ret = qcow2_meta_add(q, 0, q->cluster_size);
    if (ret == 0 && q->l1_size)
        ret = qcow2_meta_add(q, h->l1_table_offset, (uint64_t)q->l1_size * 8);
    if (ret == 0)
        ret = qcow2_meta_add(q, h->refcount_table_offset,
                             (uint64_t)h->refcount_table_clusters *
                                 q->cluster_size);
    for (uint64_t i = 0; ret == 0 && i < q->rt_entries; i++) {
        uint64_t off = be64_load(q->rt + i * 8) & RT_OFFSET_MASK;
        if (off)
            ret = qcow2_meta_add(q, off, q->cluster_size);
    }
    for (uint32_t i = 0; ret == 0 && i < q->l1_size; i++) {
        uint64_t off = l1_entry_get(q->l1, i) & L1E_OFFSET_MASK;
        if (off)
            ret = qcow2_meta_add(q, off, q->cluster_size);
    }
    if (ret == 0 && q->nb_snaps)
        ret = qcow2_meta_add(q, h->snapshots_offset, q->snap_table_size);
    for (uint32_t i = 0; ret == 0 && i < q->nb_snaps; i++) {
        uint64_t off = q->snaps[i].l1_off;
        uint64_t len = (uint64_t)q->snaps[i].l1_size * 8;
        if (off < q->file_size && len <= QCOW_MAX_L1_SIZE)
            ret = qcow2_meta_add(q, off, MIN(len, q->file_size - off));
    }
    if (ret == 0 && h->has_bitmaps_ext && h->bitmap_dir_offset < q->file_size)
        ret = qcow2_meta_add(q, h->bitmap_dir_offset,
                             MIN(h->bitmap_dir_size,
                                 q->file_size - h->bitmap_dir_offset));
    if (ret < 0) {
        q->meta_ready = false;
        return qimg_err(ENOMEM, "Out of memory");
    }
    return 0;
}

/* Before a snapshot operation writes anything: every cluster of live
 * metadata must be counted, or first-fit allocation of the operation's new
 * metadata could land on it. The lowest uncounted one is reported as
 * QEMU's overlap check reports a write there. Refcounts come from get
 * (NULL: refcount_get), so a caller can load the blocks its own way. */
static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

int qcow2_meta_check_counted(qimg_image *img,
                             int (*get)(void *, uint64_t, uint64_t *),
                             void *ctx)
{
    struct qcow2 *q = img->q;
    uint64_t low = UINT64_MAX, rc, *c;
    size_t n = 0;
    int ret = q->meta_ready ? 0 : meta_build(img);

    if (ret < 0)
        return ret;
    /* In file order, so that each refcount block is read once. */
    c = malloc((q->meta.n ? q->meta.n : 1) * sizeof *c);
    if (!c)
        return qimg_err(ENOMEM, "Out of memory");
    for (size_t i = 0; i < q->meta.cap; i++)
        if (q->meta.slots[i] != UINT64_MAX)
            c[n++] = q->meta.slots[i];
    qsort(c, n, sizeof *c, cmp_u64);
    for (size_t i = 0; ret == 0 && i < n && low == UINT64_MAX; i++) {
        ret = get ? get(ctx, c[i], &rc) : refcount_get(img, c[i], &rc);
        if (ret == 0 && !rc)
            low = c[i];
    }
    free(c);
    if (ret < 0 || low == UINT64_MAX)
        return ret;
    return qcow2_signal_corruption(
        img, "Preventing invalid write on metadata (overlaps with %s)",
        meta_name(img, low));
}

int qcow2_prepare_write(qimg_image *img)
{
    struct qcow2 *q = img->q;
    int ret;

    if (!img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (q->corrupt_signalled || (q->hdr.incompatible & INCOMPAT_CORRUPT))
        return qimg_err(EIO, "Image is corrupt; cannot be written");
    if (!q->meta_ready && (ret = meta_build(img)) < 0)
        return ret;
    if (q->hdr.autoclear & ~AUTOCLEAR_MASK ||
        (q->hdr.has_bitmaps_ext && !(q->hdr.autoclear & AUTOCLEAR_BITMAPS))) {
        /* As QEMU on a read-write open: clear what we cannot maintain. */
        q->hdr.autoclear &= AUTOCLEAR_MASK;
        if (!(q->hdr.autoclear & AUTOCLEAR_BITMAPS))
            q->hdr.has_bitmaps_ext = false;
        ret = qcow2_write_header(img);
        if (ret < 0)
            return ret;
    }
    if (!q->bitmaps_marked && q->hdr.has_bitmaps_ext) {
        ret = bitmap_mark_in_use(img);
        if (ret < 0)
            return ret;
        q->bitmaps_marked = true;
    }
    return 0;
}
