/*
 * roots.c - header cluster 0 of a live qcow2 image: reading and
 * validating it, the in-memory copy, and every write to it.
 *
 * qcow2-format.md §1 (fields, feature bits, limits), §7 (dirty bit), §8
 * (corrupt bit), §13 (a root pointer is switched only after what it names
 * is durable). header.c turns bytes into fields and back; this file owns
 * q->hdr and the file's cluster 0.
 *
 * Notes on the design:
 *  1. Opening never writes. Header changes QEMU makes on a read-write open
 *     (clearing unknown autoclear bits) are deferred to the first write, so
 *     an operation refused after opening leaves the file untouched.
 *  2. Every switch of root pointers is one write inside header sector 0,
 *     which a power cut leaves old or new.
 */
#include "roots.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "endian.h"
#include "error.h"
#include "file.h"
#include "util.h"

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

static int check_fixed(const struct qcow2_header *h, bool read_write)
{
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

static int check_features(const struct qcow2_header *h, bool no_io)
{
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
    /* Without data access (info) an AES image and one whose data lies in
     * another file open as they do in QEMU; qimg reads neither. */
    if (h->crypt_method == 2 && !h->has_crypto_ext)
        return qimg_err(EINVAL, "Missing CRYPTO header for crypt method 2");
    if (h->crypt_method && !no_io)
        return qimg_err(EINVAL,
                        "Parameter 'encrypt.key-secret' is required for cipher");
    if (h->crypt_method == 2) /* info would show the LUKS header */
        return qimg_err(ENOTSUP, "LUKS-encrypted images are not supported");
    if ((h->incompatible & INCOMPAT_DATA_FILE) && !no_io)
        return h->data_file
                   ? qimg_err(ENOTSUP, "External data files are not supported")
                   : qimg_err(EINVAL, "'data-file' is required for this image");
    return 0;
}

int roots_load(qimg_image *img, bool read_write, bool no_io)
{
    struct qcow2 *q = img->q;
    uint8_t fixed[HDR_V3_LEN];
    uint8_t *c0 = NULL;
    size_t cs, n;
    int ret, unsupported;

    ret = file_pread(img, fixed, sizeof fixed, 0);
    if (ret < 0)
        return qimg_err_errno(-ret, "Could not read qcow2 header");
    if (be32_load(fixed + HDR_MAGIC) != QCOW2_MAGIC)
        return qimg_err(EINVAL, "Image is not in qcow2 format");
    ret = header_decode_fixed(&q->hdr, fixed, sizeof fixed);
    if (ret < 0)
        return ret;
    unsupported = check_fixed(&q->hdr, read_write);
    if (unsupported < 0)
        return unsupported;
    /* The first 4 KiB hold the extensions and the backing file name in
     * nearly every image: the rest of the cluster is read only if not. */
    cs = 1u << q->hdr.cluster_bits;
    n = MIN(cs, 4096);
    c0 = malloc(cs);
    if (!c0)
        return qimg_err(ENOMEM, "Out of memory");
    ret = file_pread(img, c0, n, 0);
    if (ret == 0 && header_exts_len(&q->hdr, c0, n, cs) > n) {
        ret = file_pread(img, c0 + n, cs - n, n);
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
        ret = check_features(&q->hdr, no_io);
out:
    free(c0);
    return ret;
}

void roots_set_size(qimg_image *img, uint64_t size)
{
    img->size = size;
}

int roots_write_header(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint8_t *buf = malloc(q->cluster_size);
    int ret;

    if (!buf)
        return qimg_err(ENOMEM, "Out of memory");
    ret = header_encode(&q->hdr, buf, q->cluster_size);
    if (ret == 0)
        ret = file_pwrite(img, buf, q->cluster_size, 0);
    if (ret == 0)
        ret = file_flush(img);
    free(buf);
    return ret;
}

void roots_set_disk(qimg_image *img, uint64_t size, uint64_t l1_off,
                    uint32_t l1_size)
{
    struct qcow2 *q = img->q;

    img->size = size;
    q->hdr.size = size;
    q->hdr.l1_table_offset = l1_off;
    q->hdr.l1_size = l1_size;
}

int roots_commit(qimg_image *img, const struct qcow2_roots *r)
{
    struct qcow2 *q = img->q;
    uint8_t s0[512];
    int ret = file_pread(img, s0, sizeof s0, 0);

    if (ret < 0)
        return ret;
    be64_store(s0 + HDR_SIZE, r->size);
    if (r->has_l1) {
        be32_store(s0 + HDR_L1_SIZE, r->l1_size);
        be64_store(s0 + HDR_L1_OFF, r->l1_off);
    }
    be64_store(s0 + HDR_RT_OFF, r->rt_off);
    be32_store(s0 + HDR_RT_CLUSTERS, r->rt_clusters);
    be32_store(s0 + HDR_NB_SNAPSHOTS, r->nb_snaps);
    be64_store(s0 + HDR_SNAPSHOTS_OFF, r->snap_off);
    if (q->hdr.version >= 3)
        be64_store(s0 + HDR_AUTOCLEAR, q->hdr.autoclear & AUTOCLEAR_MASK);
    /* Every new structure is durable before one sector switches all
     * roots at once. */
    ret = file_flush(img);
    if (ret == 0)
        ret = file_pwrite(img, s0, sizeof s0, 0);
    if (ret == 0)
        ret = file_flush(img);
    return ret;
}

/* Where in cluster 0 n bytes fit past sector 0 without touching what
 * the old header (old) uses: its extensions and its backing file name.
 * The end of the cluster first; 0 if there is no room. */
static size_t free_spot(const struct qcow2_header *oh, const uint8_t *old,
                        size_t cs, size_t n)
{
    size_t lo = MAX(header_exts_end(oh, old, cs), (size_t)512);
    size_t no = oh->backing_file_offset < cs ? oh->backing_file_offset : cs;
    size_t ne = MIN(no + (size_t)oh->backing_file_size, cs);

    if (!oh->backing_file_offset || ne <= lo)
        return cs - lo >= n && n <= cs ? cs - n : 0;
    if (cs - MAX(ne, lo) >= n)
        return cs - n;                     /* after the old name */
    if (no > lo && no - lo >= n)
        return no - n;                     /* before it */
    return 0;
}

/* The header in h, encoded into buf so that everything that changes lies
 * in sector 0, but the backing file name, which goes where the old header
 * (q->hdr, and cluster 0 as the file holds it, read only then) does not
 * look. *two_step: the name lies past sector 0. */
static int encode_switchable(qimg_image *img, const struct qcow2_header *h,
                             uint8_t *buf, bool *two_step)
{
    const size_t cs = img->q->cluster_size;
    size_t n = h->backing_file ? strlen(h->backing_file) : 0, end, at = 0;
    uint8_t *old = NULL;
    int ret;

    /* Without the feature-name table (QEMU writes it, reads it only to
     * name unknown features): the extensions then fit in sector 0. */
    ret = header_encode_at(h, buf, cs, false, 0, &end);
    if (ret < 0)
        return ret;
    *two_step = end + n > 512;
    if (!*two_step)
        return 0;
    if (end <= 512) {
        ret = file_read_table(img, &old, 0, cs, NULL);
        if (ret < 0)
            return ret;
        at = free_spot(&img->q->hdr, old, cs, n);
        free(old);
    }
    if (!at)
        return qimg_err(ENOSPC, "No room in the header cluster to change "
                                "the backing file name atomically");
    return header_encode_at(h, buf, cs, false, at, &end);
}

/* Switch cluster 0 to the header h (whose strings h owns) atomically:
 * the backing name first where the old header does not look, if it lies
 * past sector 0, then sector 0 in one write, fdatasync around. On
 * success q->hdr takes h's fields and strings; on failure h keeps them. */
static int switch_header(qimg_image *img, struct qcow2_header *h)
{
    struct qcow2 *q = img->q;
    uint8_t *buf = malloc(q->cluster_size);
    bool two_step = false;
    int ret = buf ? 0 : qimg_err(ENOMEM, "Out of memory");

    if (ret == 0)
        ret = encode_switchable(img, h, buf, &two_step);
    if (ret == 0 && two_step) {
        uint64_t at = be64_load(buf + HDR_BACKING_OFF);
        ret = file_pwrite(img, buf + at, strlen(h->backing_file), at);
    }
    if (ret == 0)
        ret = file_flush(img);
    if (ret == 0)
        ret = file_pwrite(img, buf, 512, 0);
    if (ret == 0)
        ret = file_flush(img);
    if (ret == 0) {
        struct qcow2_header done = *h;
        char *old_name = q->hdr.backing_file, *old_fmt = q->hdr.backing_fmt;
        uint8_t *old_tail = q->hdr.tail;
        done.backing_file_offset = be64_load(buf + HDR_BACKING_OFF);
        done.backing_file_size = be32_load(buf + HDR_BACKING_SIZE);
        done.header_length = done.version < 3 ? HDR_V2_LEN
                                              : HDR_V3_LEN + done.tail_len;
        q->hdr = done;
        if (old_name != h->backing_file)
            free(old_name);
        if (old_fmt != h->backing_fmt)
            free(old_fmt);
        if (old_tail != h->tail)
            free(old_tail);
    }
    free(buf);
    return ret;
}

int roots_set_backing(qimg_image *img, const char *name, const char *fmt)
{
    struct qcow2_header h = img->q->hdr;
    int ret = 0;

    h.backing_file = name ? strdup(name) : NULL;
    h.backing_fmt = fmt ? strdup(fmt) : NULL;
    h.autoclear &= AUTOCLEAR_MASK;
    if ((name && !h.backing_file) || (fmt && !h.backing_fmt))
        ret = qimg_err(ENOMEM, "Out of memory");
    if (ret == 0)
        ret = switch_header(img, &h);
    if (ret < 0) {
        free(h.backing_file);
        free(h.backing_fmt);
    }
    return ret;
}

int roots_set_format(qimg_image *img, const struct roots_format *f)
{
    struct qcow2_header h = img->q->hdr;

    h.version = f->version;
    h.refcount_order = f->version < 3 ? 4 : f->refcount_order;
    h.refcount_table_offset = f->rt_off;
    h.refcount_table_clusters = f->rt_clusters;
    h.l1_table_offset = f->l1_off;
    h.snapshots_offset = f->snap_off;
    h.incompatible = f->version < 3 ? 0 : f->incompatible;
    h.compatible = f->version < 3 ? 0 : f->compatible;
    h.autoclear = f->version < 3 ? 0 : h.autoclear & AUTOCLEAR_MASK;
    h.compression_type = f->version < 3 ? 0 : h.compression_type;
    if (f->version < 3) {
        h.tail = NULL; /* unknown v3 fields go with the v3 header */
        h.tail_len = 0;
        h.has_bitmaps_ext = false; /* the caller freed them */
    }
    return switch_header(img, &h);
}

int roots_commit_bitmaps(qimg_image *img, const struct qcow2_roots *r,
                         const struct roots_bitmaps *b)
{
    struct qcow2_header h = img->q->hdr;

    h.size = r->size;
    if (r->has_l1) {
        h.l1_size = r->l1_size;
        h.l1_table_offset = r->l1_off;
    }
    h.refcount_table_offset = r->rt_off;
    h.refcount_table_clusters = r->rt_clusters;
    h.nb_snapshots = r->nb_snaps;
    h.snapshots_offset = r->snap_off;
    h.autoclear &= AUTOCLEAR_MASK & ~AUTOCLEAR_BITMAPS;
    h.has_bitmaps_ext = b->nb > 0;
    h.nb_bitmaps = b->nb;
    h.bitmap_dir_size = b->nb ? b->dir_size : 0;
    h.bitmap_dir_offset = b->nb ? b->dir_off : 0;
    if (b->nb)
        h.autoclear |= AUTOCLEAR_BITMAPS;
    return switch_header(img, &h);
}

void roots_adopt(qimg_image *img, const struct qcow2_roots *r)
{
    struct qcow2_header *h = &img->q->hdr;

    if (r->has_l1) {
        h->l1_size = r->l1_size;
        h->l1_table_offset = r->l1_off;
    }
    h->refcount_table_offset = r->rt_off;
    h->refcount_table_clusters = r->rt_clusters;
    h->nb_snapshots = r->nb_snaps;
    h->snapshots_offset = r->snap_off;
    h->autoclear &= AUTOCLEAR_MASK;
    h->size = r->size;
    img->size = r->size;
}

/* What came before is durable, then one write of header bytes [at,
 * at+len) inside sector 0, then fdatasync. */
static int switch_fields(qimg_image *img, const uint8_t *b, size_t len,
                         uint64_t at)
{
    int ret = file_flush(img);

    if (ret == 0)
        ret = file_pwrite(img, b, len, at);
    return ret < 0 ? ret : file_flush(img);
}

int roots_switch_refcount_table(qimg_image *img, uint64_t off,
                                uint32_t clusters)
{
    struct qcow2_header *h = &img->q->hdr;
    uint8_t b[12];
    int ret;

    be64_store(b, off);
    be32_store(b + 8, clusters);
    ret = switch_fields(img, b, sizeof b, HDR_RT_OFF);
    if (ret < 0)
        return ret;
    h->refcount_table_offset = off;
    h->refcount_table_clusters = clusters;
    return 0;
}

int roots_switch_snapshot_table(qimg_image *img, uint32_t n, uint64_t off)
{
    struct qcow2_header *h = &img->q->hdr;
    uint8_t b[12];
    int ret;

    be32_store(b, n);
    be64_store(b + 4, off);
    ret = switch_fields(img, b, sizeof b, HDR_NB_SNAPSHOTS);
    if (ret < 0)
        return ret;
    h->nb_snapshots = n;
    h->snapshots_offset = off;
    return 0;
}

int roots_set_incompat(qimg_image *img, uint64_t bits)
{
    uint8_t b[8];
    int ret;

    be64_store(b, bits);
    ret = switch_fields(img, b, sizeof b, HDR_INCOMPAT);
    if (ret == 0)
        img->q->hdr.incompatible = bits;
    return ret;
}

int roots_clear_autoclear(qimg_image *img)
{
    struct qcow2_header *h = &img->q->hdr;

    if (!(h->autoclear & ~AUTOCLEAR_MASK) &&
        !(h->has_bitmaps_ext && !(h->autoclear & AUTOCLEAR_BITMAPS)))
        return 0;
    /* As QEMU on a read-write open: clear what we cannot maintain. */
    h->autoclear &= AUTOCLEAR_MASK;
    if (!(h->autoclear & AUTOCLEAR_BITMAPS))
        h->has_bitmaps_ext = false;
    return roots_write_header(img);
}

bool roots_is_corrupt(const qimg_image *img)
{
    return img->q->corrupt_signalled ||
           (img->q->hdr.incompatible & INCOMPAT_CORRUPT);
}

/* Set the corrupt bit on disk (v3; v2 has no such field: in_memory_v2
 * still sets it in the copy), suppress further events, and word the
 * error as QEMU does. */
static int mark_corrupt(qimg_image *img, const char *msg, bool in_memory_v2)
{
    struct qcow2 *q = img->q;
    uint8_t b[8];

    if (img->read_write && !(q->hdr.incompatible & INCOMPAT_CORRUPT) &&
        (q->hdr.version >= 3 || in_memory_v2)) {
        q->hdr.incompatible |= INCOMPAT_CORRUPT;
        be64_store(b, q->hdr.incompatible);
        if (q->hdr.version >= 3 && file_pwrite(img, b, 8, HDR_INCOMPAT) == 0)
            file_flush(img);
    }
    q->corrupt_signalled = true;
    return qimg_corrupt("qcow2: Marking image as corrupt: %s; further "
                        "corruption events will be suppressed",
                        msg);
}

int roots_signal_corruption(qimg_image *img, const char *fmt, ...)
{
    char msg[768];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    return mark_corrupt(img, msg, true);
}

int roots_write_failed(qimg_image *img, int ret)
{
    const struct qimg_error *e = qimg_last_error();
    char msg[sizeof e->message];

    /* Only bad metadata met by a write, on an image we may write. */
    if (ret != -EIO || !e->where[0] || !img->read_write || !img->q ||
        !strncmp(e->message, "qcow2: ", 7))
        return ret;
    snprintf(msg, sizeof msg, "%s", e->message);
    return mark_corrupt(img, msg, false);
}
