/*
 * guest.c - guest reads, writes, write-zeroes, discard and block status on
 * a qcow2 image.
 *
 * qcow2-format.md §3 (cluster types, subclusters), §3.4 and §10
 * (compressed clusters), §13 rule 1 (a new data cluster: refcount, data,
 * then the L2 entry). Decides what each L2 entry becomes; l1l2.c supplies
 * writable L2 tables and refcount.c the clusters.
 *
 * Notes on the design:
 *  1. Guest data is written before the L2 entry that names it is changed in
 *     the cache; the flush order (flush.c) syncs data and refcounts before
 *     any L2 table reaches the disk.
 *  2. A cluster whose L2 entry lacks COPIED is shared with a snapshot and is
 *     never written in place: a new cluster gets the old contents merged
 *     with the new bytes and the old one loses a reference later.
 *  3. Zeroing and discard follow QEMU 7.2's choices (zero flag on v3,
 *     deallocation on v2 without a backing file, partial clusters written
 *     as zeros unless the rest already reads as zeros), so both tools leave
 *     the same allocation map.
 */
#include "guest.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backing.h"
#include "bitmap.h"
#include "compress.h"
#include "error.h"
#include "file.h"
#include "l1l2.h"
#include "meta.h"
#include "metaset.h"
#include "refcount.h"
#include "roots.h"
#include "util.h"

/* Before the first guest write: the image may be written, the overlap
 * check knows the metadata, unknown autoclear bits are cleared and auto
 * bitmaps marked in use (both as QEMU does on a read-write open). */
static int prepare_write(qimg_image *img)
{
    bool first;
    int ret;

    if (!img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (roots_is_corrupt(img))
        return qimg_err(EIO, "Image is corrupt; cannot be written");
    first = !meta_ready(img);
    ret = metaset_build(img);
    if (ret == 0 && first) /* a refusal marks the image corrupt */
        ret = metaset_check_snapshot_l1s(img);
    if (ret == 0)
        ret = roots_clear_autoclear(img);
    if (ret == 0)
        ret = bitmap_track_begin(img);
    return ret;
}

/* A run of guest bytes sharing one mapping. */
struct run {
    enum cl_type type;
    uint64_t host; /* NORMAL, ZERO_ALLOC, UNALLOC_ALLOC: host offset of the
                    * first byte */
    uint64_t len;
    uint64_t entry;    /* COMPRESSED: the L2 entry */
};

/* Extend a run that has just covered the whole cluster last_ci over the
 * following clusters whose entries continue it exactly: same flags and
 * bitmap, host offsets (if any) contiguous and inside the file, so each
 * would pass l2_entry_check() and map to the run's type. Returns the new
 * position; *last_ci and *entry name the last cluster taken. */
static uint64_t run_whole_clusters(const struct qcow2 *q, const uint8_t *buf,
                                   uint64_t end, uint64_t pos,
                                   uint64_t *last_ci, uint64_t *entry,
                                   uint64_t bm)
{
    uint64_t e = *entry, host = e & L2E_OFFSET_MASK;
    uint64_t step = host ? q->cluster_size : 0, ci = *last_ci + 1;

    if (!q->ext_l2) {
        /* The same flags and the next offset: the entry plus the step.
         * (A tight loop: a preallocated image's tables are walked whole.) */
        uint64_t n = MIN(q->l2_entries - ci, (end - pos) >> q->cluster_bits);
        uint64_t k = 0;
        if (step) /* host + (k + 1) * step < file_size */
            n = MIN(n, host < q->file_size
                           ? (q->file_size - host - 1) / step
                           : 0);
        for (; k < n && be64_load(buf + 8 * (ci + k)) == e + step; k++)
            e += step;
        *last_ci = ci + k - 1;
        *entry = e;
        return pos + k * q->cluster_size;
    }
    for (; ci < q->l2_entries && end - pos >= q->cluster_size; ci++) {
        uint64_t e2 = l2_entry_get(q, buf, ci);
        if ((e2 ^ e) & ~L2E_OFFSET_MASK ||
            (e2 & L2E_OFFSET_MASK) != host + step ||
            (step && host + step >= q->file_size) ||
            (q->ext_l2 && l2_bitmap_get(q, buf, ci) != bm))
            break;
        e = e2;
        host += step;
        pos += q->cluster_size;
    }
    *last_ci = ci - 1;
    *entry = e;
    return pos;
}

static int map_run(qimg_image *img, uint64_t off, uint64_t len, struct run *r)
{
    struct qcow2 *q = img->q;
    unsigned span_bits = q->cluster_bits + q->l2_bits;
    uint64_t l1_idx = off >> span_bits;
    uint64_t end = MIN(off + len, (l1_idx + 1) << span_bits);
    uint64_t g = q->ext_l2 ? 1ull << q->sc_bits : q->cluster_size;
    uint64_t pos = off, last_ci = UINT64_MAX, entry = 0, bm = 0, l2_off;
    struct mcache_entry *l2;
    int ret = 0;

    memset(r, 0, sizeof *r);
    r->type = CL_UNALLOC;
    l2_note_read(img, l1_idx);
    l2_off = l1_idx < q->l1s->l1_size
                 ? l1_entry_get(q->l1s->l1, l1_idx) & L1E_OFFSET_MASK
                 : 0;
    if (!l2_off) {
        r->len = end - off;
        return 0;
    }
    if (!IS_ALIGNED(l2_off, q->cluster_size))
        return qimg_corrupt("L2 table offset %#" PRIx64
                            " unaligned (L1 index: %#" PRIx64 ")",
                            l2_off, l1_idx);
    ret = l2_load(img, l2_off, &l2);
    if (ret < 0)
        return ret;
    while (pos < end) {
        uint64_t ci = (pos >> q->cluster_bits) & (q->l2_entries - 1);
        uint64_t in_cl = pos & (q->cluster_size - 1), unit_end, host;
        enum cl_type t;

        if (ci != last_ci) {
            entry = l2_entry_get(q, l2->buf, ci);
            bm = l2_bitmap_get(q, l2->buf, ci);
            ret = l2_entry_check_read(img, entry, bm, l2_off, ci);
            if (ret < 0)
                break;
            last_ci = ci;
        }
        t = l2_subcluster_type(q, entry, bm, (unsigned)(in_cl >> q->sc_bits));
        host = (entry & L2E_OFFSET_MASK) + in_cl;
        unit_end = t == CL_COMPRESSED ? ALIGN_DOWN(pos, q->cluster_size) +
                                            q->cluster_size
                                      : ALIGN_DOWN(pos, g) + g;
        unit_end = MIN(unit_end, end);
        if (pos == off) {
            r->type = t;
            r->host = host;
            r->entry = entry;
        } else if (t != r->type || t == CL_COMPRESSED ||
                   ((t == CL_NORMAL || t == CL_ZERO_ALLOC ||
                     t == CL_UNALLOC_ALLOC) &&
                    host != r->host + (pos - off))) {
            break;
        }
        pos = unit_end;
        if (!(pos & (q->cluster_size - 1)) && t != CL_COMPRESSED)
            pos = run_whole_clusters(q, l2->buf, end, pos, &last_ci, &entry,
                                     bm);
    }
    mcache_unpin(l2);
    r->len = pos - off;
    return ret;
}

static int read_compressed(qimg_image *img, uint64_t entry, uint8_t *out)
{
    struct qcow2 *q = img->q;
    uint64_t coff, clen;
    uint8_t *src;
    int ret;

    l2_compressed_range(q, entry, &coff, &clen);
    src = malloc(clen);
    if (!src)
        return qimg_err(ENOMEM, "Out of memory");
    ret = file_pread(img, src, clen, coff);
    if (ret == 0)
        ret = compress_decode(q->hdr.compression_type, out, q->cluster_size,
                              src, clen);
    free(src);
    return ret;
}

int guest_read(qimg_image *img, void *buf, size_t len, uint64_t off)
{
    struct qcow2 *q = img->q;
    uint8_t *b = buf, *tmp = NULL;
    int ret = 0;

    while (len > 0 && ret == 0) {
        struct run r;
        ret = map_run(img, off, len, &r);
        if (ret < 0)
            break;
        switch (r.type) {
        case CL_UNALLOC:
        case CL_UNALLOC_ALLOC:
            ret = backing_read(img, b, r.len, off);
            break;
        case CL_ZERO_PLAIN:
        case CL_ZERO_ALLOC:
            memset(b, 0, r.len);
            break;
        case CL_NORMAL:
            ret = file_pread(img, b, r.len, r.host);
            break;
        case CL_COMPRESSED:
            if (!tmp && !(tmp = malloc(q->cluster_size))) {
                ret = qimg_err(ENOMEM, "Out of memory");
                break;
            }
            ret = read_compressed(img, r.entry, tmp);
            if (ret == 0)
                memcpy(b, tmp + (off & (q->cluster_size - 1)), r.len);
            break;
        }
        b += r.len;
        off += r.len;
        len -= r.len;
    }
    free(tmp);
    return ret;
}

/* Current guest contents of [cstart+lo, cstart+hi) into tmp[lo..hi), zeros
 * past the end of the disk. */
static int cow_fill(qimg_image *img, uint64_t cstart, uint8_t *tmp,
                    uint64_t lo, uint64_t hi)
{
    uint64_t end = MIN(cstart + hi, img->size);

    if (cstart + lo >= end) {
        memset(tmp + lo, 0, hi - lo);
        return 0;
    }
    memset(tmp + (end - cstart), 0, cstart + hi - end);
    return guest_read(img, tmp + lo, end - cstart - lo, cstart + lo);
}

/* Give up the host storage an entry referred to, once the change of the
 * entry is durable. */
static int release_entry(qimg_image *img, uint64_t entry, bool do_discard)
{
    struct qcow2 *q = img->q;
    uint64_t coff, clen;

    if (entry & QCOW_OFLAG_COMPRESSED) {
        l2_compressed_range(q, entry, &coff, &clen);
        return refcount_dec_later(img, coff, clen, do_discard);
    }
    if (entry & L2E_OFFSET_MASK)
        return refcount_dec_later(img, entry & L2E_OFFSET_MASK,
                                  q->cluster_size, do_discard);
    return 0;
}

static bool sector_is_zero(const uint8_t *p)
{
    static const uint8_t zero[512];

    return !memcmp(p, zero, sizeof zero);
}

/* A new cluster past everything ever written reads as zeros already: leave
 * out its leading and trailing zero sectors, but write at least one sector
 * so the file covers the cluster. */
static void trim_zero_sectors(const uint8_t *data, uint64_t *lo, uint64_t *hi)
{
    uint64_t start = *lo; /* data[0] is at cluster offset start */

    if ((*lo | *hi) & 511)
        return;
    while (*hi - *lo > 512 && sector_is_zero(data + *lo - start))
        *lo += 512;
    while (*hi - *lo > 512 && sector_is_zero(data + *hi - 512 - start))
        *hi -= 512;
}

/* A cluster a write moves away from (shared, so copied) keeps being used
 * by whoever shares it: with a refcount of 0 (damage) the allocator would
 * hand it out for the copy and the write would land on the other user's
 * data. Refuse that before anything is allocated. */
static int check_shared(qimg_image *img, uint64_t entry)
{
    uint64_t host = entry & L2E_OFFSET_MASK, rc;
    int ret;

    if (!host || (entry & QCOW_OFLAG_COMPRESSED))
        return 0;
    ret = refcount_get(img, host >> img->q->cluster_bits, &rc);
    if (ret == 0 && !rc)
        ret = qimg_corrupt("Refcount of cluster %" PRIu64
                           " is lower than its references",
                           host >> img->q->cluster_bits);
    return ret;
}

/* Write the len bytes at data to offset in_off of a newly allocated
 * cluster; on failure the allocation is undone (nothing refers to it yet). */
static int write_new_cluster(qimg_image *img, const uint8_t *data,
                             uint64_t in_off, uint64_t len, uint64_t *host)
{
    struct qcow2 *q = img->q;
    uint64_t lo = in_off, hi = in_off + len;
    int ret = refcount_alloc(img, 1, host);

    if (ret < 0)
        return ret;
    if (*host >= img->zero_from)
        trim_zero_sectors(data, &lo, &hi);
    ret = file_pwrite(img, data + (lo - in_off), hi - lo, *host + lo);
    if (ret < 0)
        refcount_update(img, *host >> q->cluster_bits, 1, -1);
    return ret;
}

static int write_std(qimg_image *img, struct mcache_entry *l2, uint64_t idx,
                     const uint8_t *buf, uint64_t n, uint64_t off,
                     uint8_t *tmp)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size, cstart = ALIGN_DOWN(off, cs);
    uint64_t in_cl = off - cstart;
    uint64_t entry = l2_entry_get(q, l2->buf, idx);
    uint64_t host = entry & L2E_OFFSET_MASK, target;
    enum cl_type t = l2_cluster_type(q, entry);
    bool in_place = (t == CL_NORMAL || t == CL_ZERO_ALLOC) &&
                    (entry & QCOW_OFLAG_COPIED);
    int ret;

    if (in_place) {
        ret = meta_overlap_check(img, host, cs);
        if (ret < 0)
            return ret;
        if (t == CL_NORMAL)
            return file_pwrite(img, buf, n, host + in_cl);
    }
    if (n < cs) {
        if (in_place)
            memset(tmp, 0, cs);
        else if ((ret = cow_fill(img, cstart, tmp, 0, cs)) < 0)
            return ret;
    }
    memcpy(tmp + in_cl, buf, n);
    if (in_place) {
        target = host;
        ret = file_pwrite(img, tmp, cs, host);
    } else {
        ret = write_new_cluster(img, tmp, 0, cs, &target);
        if (ret == 0)
            ret = release_entry(img, entry, false);
    }
    if (ret < 0)
        return ret;
    l2_entry_set(q, l2->buf, idx, target | QCOW_OFLAG_COPIED, 0);
    l2->dirty = true;
    return 0;
}

/* Whole clusters from entry idx of one L2 table (standard entries), with
 * one host call: either clusters written in place, contiguous on the host,
 * or clusters that all need new storage, allocated together. Returns the
 * number of clusters written, 0 when fewer than two qualify (the caller
 * goes cluster by cluster), or a negative errno. */
static int64_t write_std_run(qimg_image *img, struct mcache_entry *l2,
                             uint64_t idx, const uint8_t *buf, uint64_t len)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size;
    uint64_t max = MIN(len >> q->cluster_bits, q->l2_entries - idx);
    uint64_t first = 0, k, host;
    bool alloc = false;
    int ret;

    for (k = 0; k < max; k++) {
        uint64_t e = l2_entry_get(q, l2->buf, idx + k);
        enum cl_type t = l2_cluster_type(q, e);
        bool in_place = (t == CL_NORMAL || t == CL_ZERO_ALLOC) &&
                        (e & QCOW_OFLAG_COPIED);

        if (l2_entry_check(img, e, 0, l2->off, idx + k) < 0) {
            qimg_error_clear(); /* reported by the cluster-wise path */
            break;
        }
        if (k == 0) {
            alloc = !in_place;
            first = e & L2E_OFFSET_MASK;
        }
        if (alloc ? in_place
                  : t != CL_NORMAL || !in_place ||
                        (e & L2E_OFFSET_MASK) != first + k * cs)
            break;
    }
    if (k < 2)
        return 0;
    if (!alloc) {
        ret = meta_overlap_check(img, first, k * cs);
        if (ret == 0)
            ret = file_pwrite(img, buf, k * cs, first);
        return ret < 0 ? ret : (int64_t)k;
    }
    ret = refcount_alloc(img, k, &host);
    if (ret < 0)
        return ret;
    ret = file_pwrite(img, buf, k * cs, host);
    if (ret < 0) {
        refcount_update(img, host >> q->cluster_bits, k, -1);
        return ret;
    }
    for (uint64_t i = 0; i < k; i++) {
        ret = release_entry(img, l2_entry_get(q, l2->buf, idx + i), false);
        if (ret < 0)
            return ret;
        l2_entry_set(q, l2->buf, idx + i, (host + i * cs) | QCOW_OFLAG_COPIED,
                     0);
        l2->dirty = true;
    }
    return (int64_t)k;
}

static uint64_t sc_range_bits(unsigned from, unsigned to)
{
    return (to - from >= 32 ? 0xffffffffull : ((1ull << (to - from)) - 1))
           << from;
}

static int write_ext(qimg_image *img, struct mcache_entry *l2, uint64_t idx,
                     const uint8_t *buf, uint64_t n, uint64_t off,
                     uint8_t *tmp)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size, scs = 1ull << q->sc_bits;
    uint64_t cstart = ALIGN_DOWN(off, cs), in_cl = off - cstart;
    uint64_t sa = ALIGN_DOWN(in_cl, scs), sb = ALIGN_UP(in_cl + n, scs);
    uint64_t wlo = sa, whi = sb; /* bytes of the cluster to write */
    uint64_t entry = l2_entry_get(q, l2->buf, idx);
    uint64_t bm = l2_bitmap_get(q, l2->buf, idx);
    uint64_t host = entry & L2E_OFFSET_MASK, target, span;
    enum cl_type t = l2_cluster_type(q, entry);
    int ret = 0;

    span = sc_range_bits((unsigned)(sa / scs), (unsigned)(sb / scs));
    if (t == CL_COMPRESSED) {
        ret = cow_fill(img, cstart, tmp, 0, cs);
        memcpy(tmp + in_cl, buf, n);
        if (ret == 0)
            ret = write_new_cluster(img, tmp, 0, cs, &target);
        if (ret == 0)
            ret = release_entry(img, entry, false);
        if (ret < 0)
            return ret;
        bm = L2_BITMAP_ALL_ALLOC;
        goto set;
    }
    /* Shared: copy the whole cluster, allocated subclusters included. */
    if (host && !(entry & QCOW_OFLAG_COPIED)) {
        ret = file_pread(img, tmp, cs, host);
        wlo = 0;
        whi = cs;
    }
    /* Partly written subclusters get their current guest contents. */
    if (ret == 0 && in_cl > sa)
        ret = cow_fill(img, cstart, tmp, sa, sa + scs);
    if (ret == 0 && in_cl + n < sb)
        ret = cow_fill(img, cstart, tmp, sb - scs, sb);
    if (ret < 0)
        return ret;
    memcpy(tmp + in_cl, buf, n);
    if (host && (entry & QCOW_OFLAG_COPIED)) {
        target = host;
        ret = meta_overlap_check(img, host, cs);
        if (ret == 0)
            ret = file_pwrite(img, tmp + wlo, whi - wlo, host + wlo);
    } else {
        ret = write_new_cluster(img, tmp + wlo, wlo, whi - wlo, &target);
        if (ret == 0)
            ret = release_entry(img, entry, false);
    }
    if (ret < 0)
        return ret;
    bm = (bm | span) & ~(span << 32);
set:
    l2_entry_set(q, l2->buf, idx, target | QCOW_OFLAG_COPIED, bm);
    l2->dirty = true;
    return 0;
}

/* Before anything of a write request moves (a shared table copied, a
 * cluster allocated, data written): every cluster it changes has a valid
 * entry in a table on no other structure, a shared one still has a
 * refcount, and a compressed one it only partly covers can be read. So
 * a refusal leaves the file as it was. */
static int check_request(qimg_image *img, uint64_t off, uint64_t len,
                         uint8_t *tmp)
{
    const uint64_t cs = img->q->cluster_size;
    uint64_t end = off + len;
    int ret = 0;

    for (uint64_t p = off; ret == 0 && p < end; p = ALIGN_DOWN(p, cs) + cs) {
        struct l2_slot s;
        ret = l2_lookup(img, p, &s);
        if (ret == 0 && !(s.entry & QCOW_OFLAG_COPIED))
            ret = check_shared(img, s.entry);
        if (ret == 0 && (s.entry & QCOW_OFLAG_COMPRESSED) &&
            (!IS_ALIGNED(p, cs) || end - p < cs))
            ret = cow_fill(img, ALIGN_DOWN(p, cs), tmp, 0, cs);
    }
    return ret;
}

int guest_write(qimg_image *img, const void *buf, size_t len, uint64_t off)
{
    struct qcow2 *q = img->q;
    const uint8_t *b = buf;
    uint8_t *tmp;
    int ret = prepare_write(img);

    if (ret < 0)
        return ret;
    bitmap_track(img, off, len);
    tmp = malloc(q->cluster_size);
    if (!tmp)
        return qimg_err(ENOMEM, "Out of memory");
    ret = check_request(img, off, len, tmp);
    while (ret == 0 && len > 0) {
        uint64_t n = MIN(len, q->cluster_size - (off & (q->cluster_size - 1)));
        struct mcache_entry *l2;
        uint64_t idx;

        ret = l2_get_writable(img, off, &l2, &idx);
        if (ret < 0)
            break;
        if (!q->ext_l2 && n == q->cluster_size && len >= 2 * n) {
            int64_t k = write_std_run(img, l2, idx, b, len);
            if (k != 0) {
                mcache_unpin(l2);
                if (k < 0) {
                    ret = (int)k;
                    break;
                }
                n = (uint64_t)k << q->cluster_bits;
                goto next;
            }
        }
        /* The entry was checked with the whole request (check_request). */
        ret = q->ext_l2 ? write_ext(img, l2, idx, b, n, off, tmp)
                        : write_std(img, l2, idx, b, n, off, tmp);
        mcache_unpin(l2);
        if (ret < 0)
            break;
next:
        b += n;
        off += n;
        len -= n;
    }
    free(tmp);
    return ret;
}

/* ---- Compressed writes -------------------------------------------------- */

static int write_one_compressed(qimg_image *img, const uint8_t *data,
                                uint64_t off, uint8_t *zbuf)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size, coff, idx, field;
    struct mcache_entry *l2;
    struct l2_slot s;
    int64_t zlen;
    int ret;

    zlen = compress_encode(q->hdr.compression_type, zbuf, cs - 1, data, cs);
    if (zlen == -ENOSPC)
        return guest_write(img, data, MIN(cs, img->size - off), off);
    if (zlen < 0)
        return (int)zlen;
    /* Refused before a shared L2 table is copied for it (QEMU copies
     * first). */
    ret = l2_lookup(img, off, &s);
    if (ret == 0 && (s.entry & (L2E_OFFSET_MASK | QCOW_OFLAG_COMPRESSED)))
        ret = qimg_err(EIO, "Compressed writes need unallocated clusters");
    if (ret == 0)
        ret = l2_get_writable(img, off, &l2, &idx);
    if (ret < 0)
        return ret;
    ret = refcount_alloc_bytes(img, (uint64_t)zlen, &coff);
    if (ret == 0)
        ret = meta_overlap_check(img, ALIGN_DOWN(coff, cs),
                                  ALIGN_UP(coff + (uint64_t)zlen, cs) -
                                      ALIGN_DOWN(coff, cs));
    if (ret == 0)
        ret = file_pwrite(img, zbuf, (size_t)zlen, coff);
    if (ret < 0)
        goto out;
    field = ((coff + (uint64_t)zlen - 1) >> 9) - (coff >> 9);
    l2_entry_set(q, l2->buf, idx,
                 QCOW_OFLAG_COMPRESSED | (field << q->csize_shift) | coff, 0);
    l2->dirty = true;
out:
    mcache_unpin(l2);
    return ret;
}

int guest_write_compressed(qimg_image *img, const void *buf, size_t len,
                           uint64_t off)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size;
    const uint8_t *b = buf;
    uint8_t *data = NULL, *zbuf = NULL;
    int ret = prepare_write(img);

    if (ret < 0)
        return ret;
    if (!IS_ALIGNED(off, cs) ||
        (!IS_ALIGNED(len, cs) && off + len != img->size))
        return qimg_err(EINVAL, "Compressed writes must be cluster aligned");
    bitmap_track(img, off, len);
    data = malloc(cs);
    zbuf = malloc(cs);
    if (!data || !zbuf) {
        ret = qimg_err(ENOMEM, "Out of memory");
        goto out;
    }
    while (len > 0 && ret == 0) {
        uint64_t n = MIN(len, cs);
        memcpy(data, b, n);
        memset(data + n, 0, cs - n);
        ret = write_one_compressed(img, data, off, zbuf);
        b += n;
        off += n;
        len -= n;
    }
out:
    free(data);
    free(zbuf);
    return ret;
}

/* ---- Write-zeroes and discard ------------------------------------------- */

/* True if [off, off+len) is known to read as zeros without reading data. */
static int reads_zero(qimg_image *img, uint64_t off, uint64_t len, bool *out)
{
    *out = true;
    while (len > 0 && off < img->size) {
        struct qimg_extent ext;
        int ret = backing_map(img, off, MIN(len, img->size - off), &ext);
        if (ret < 0)
            return ret;
        if (!(ext.flags & QIMG_BS_ZERO)) {
            *out = false;
            return 0;
        }
        off += ext.len;
        len -= ext.len;
    }
    return 0;
}

enum set_mode { SET_ZERO, SET_ZERO_UNMAP, SET_DISCARD };

/* What a whole-cluster zero or discard makes of one entry. */
static void new_entry_for(const qimg_image *img, enum set_mode mode,
                          uint64_t entry, uint64_t bm, uint64_t *ne,
                          uint64_t *nbm)
{
    const struct qcow2 *q = img->q;
    enum cl_type t = l2_cluster_type(q, entry);
    bool has_host = t == CL_COMPRESSED || (entry & L2E_OFFSET_MASK);

    *ne = entry;
    *nbm = bm;
    if (mode == SET_DISCARD) {
        if (!img->backing && !has_host)
            return;
        if (q->ext_l2) {
            *ne = 0;
            *nbm = L2_BITMAP_ALL_ZERO;
        } else {
            *ne = q->hdr.version >= 3 ? QCOW_OFLAG_ZERO : 0;
        }
        return;
    }
    if (t == CL_COMPRESSED || (mode == SET_ZERO_UNMAP && has_host))
        *ne = 0;
    if (q->ext_l2)
        *nbm = L2_BITMAP_ALL_ZERO;
    else
        *ne |= QCOW_OFLAG_ZERO;
}

/* Apply mode to whole clusters [off, off+len) (off cluster-aligned; len a
 * multiple of the cluster size or reaching the end of the disk). */
static int set_clusters(qimg_image *img, uint64_t off, uint64_t len,
                        enum set_mode mode)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size;
    int ret = 0;

    for (; len > 0 && ret == 0; off += MIN(len, cs), len -= MIN(len, cs)) {
        struct l2_slot s;
        struct mcache_entry *l2;
        uint64_t idx, ne, nbm, e, bm;

        ret = l2_lookup(img, off, &s);
        if (ret < 0)
            break;
        new_entry_for(img, mode, s.entry, s.bitmap, &ne, &nbm);
        if (ne == s.entry && nbm == s.bitmap)
            continue;
        ret = l2_get_writable(img, off, &l2, &idx);
        if (ret < 0)
            break;
        e = l2_entry_get(q, l2->buf, idx);
        bm = l2_bitmap_get(q, l2->buf, idx);
        new_entry_for(img, mode, e, bm, &ne, &nbm);
        if ((ne & L2E_OFFSET_MASK) != (e & L2E_OFFSET_MASK) ||
            (e & QCOW_OFLAG_COMPRESSED))
            ret = release_entry(img, e, true);
        if (ret == 0) {
            l2_entry_set(q, l2->buf, idx, ne, nbm);
            l2->dirty = true;
        }
        mcache_unpin(l2);
    }
    return ret;
}

/* Extended L2: mark subclusters [off, off+len) of one cluster as zero. */
static int zero_subclusters(qimg_image *img, uint64_t off, uint64_t len)
{
    struct qcow2 *q = img->q;
    uint64_t in_cl = off & (q->cluster_size - 1), idx, e, bm, span;
    struct mcache_entry *l2;
    int ret;

    ret = l2_get_writable(img, off, &l2, &idx);
    if (ret < 0)
        return ret;
    e = l2_entry_get(q, l2->buf, idx);
    bm = l2_bitmap_get(q, l2->buf, idx);
    span = sc_range_bits((unsigned)(in_cl >> q->sc_bits),
                         (unsigned)((in_cl + len) >> q->sc_bits));
    if (e & QCOW_OFLAG_COMPRESSED) {
        mcache_unpin(l2);
        return -ENOTSUP;
    }
    l2_entry_set(q, l2->buf, idx, e, (bm | (span << 32)) & ~span);
    l2->dirty = true;
    mcache_unpin(l2);
    return 0;
}

static int write_zero_buffer(qimg_image *img, uint64_t off, uint64_t len)
{
    size_t chunk = (size_t)MIN(len, 1u << 20);
    uint8_t *z = calloc(1, chunk ? chunk : 1);
    int ret = 0;

    if (!z)
        return qimg_err(ENOMEM, "Out of memory");
    while (len > 0 && ret == 0) {
        size_t n = (size_t)MIN(len, chunk);
        ret = guest_write(img, z, n, off);
        off += n;
        len -= n;
    }
    free(z);
    return ret;
}

/* Zero an aligned range [off, off+len) (subcluster granularity). */
static int zeroize(qimg_image *img, uint64_t off, uint64_t len, bool unmap)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size;
    int ret = 0;

    if (q->hdr.version < 3) {
        if (img->backing)
            return write_zero_buffer(img, off, len);
        return set_clusters(img, off, len, SET_DISCARD);
    }
    while (len > 0 && ret == 0) {
        uint64_t in_cl = off & (cs - 1);
        uint64_t n = MIN(len, cs - in_cl);
        bool whole = in_cl == 0 && (n == cs || off + n >= img->size);

        if (whole) {
            /* Gather whole clusters for one set_clusters call. */
            n = ALIGN_DOWN(len, cs);
            if (n == 0 || off + len >= img->size)
                n = len;
            ret = set_clusters(img, off, n,
                               unmap ? SET_ZERO_UNMAP : SET_ZERO);
        } else {
            ret = zero_subclusters(img, off, n);
            if (ret == -ENOTSUP)
                ret = write_zero_buffer(img, off, n);
        }
        off += n;
        len -= n;
    }
    return ret;
}

/* An unaligned piece of a write-zeroes request, within one unit g. */
static int zero_piece(qimg_image *img, uint64_t off, uint64_t len,
                      uint64_t g, bool unmap)
{
    uint64_t us = ALIGN_DOWN(off, g), ue = MIN(us + g, img->size);
    struct qimg_extent ext;
    bool z1 = true, z2 = true;
    int ret;

    if (img->q->hdr.version < 3 && img->backing)
        return write_zero_buffer(img, off, len);
    ret = reads_zero(img, us, off - us, &z1);
    if (ret == 0)
        ret = reads_zero(img, off + len, ue > off + len ? ue - off - len : 0,
                         &z2);
    if (ret == 0)
        ret = guest_block_status(img, us, ue - us, &ext);
    if (ret < 0)
        return ret;
    if (z1 && z2 && ext.len >= ue - us && !(ext.flags & QIMG_BS_DATA))
        return zeroize(img, us, ue - us, unmap);
    return write_zero_buffer(img, off, len);
}

int guest_zero(qimg_image *img, uint64_t off, uint64_t len, bool unmap)
{
    struct qcow2 *q = img->q;
    uint64_t g = q->ext_l2 ? 1ull << q->sc_bits : q->cluster_size;
    uint64_t end = off + len, a, b;
    int ret = prepare_write(img);

    if (ret < 0 || len == 0)
        return ret;
    bitmap_track(img, off, len);
    a = ALIGN_UP(off, g);
    b = end == img->size ? end : ALIGN_DOWN(end, g);
    if (a > b) /* inside one unit, touching neither of its ends */
        return zero_piece(img, off, len, g, unmap);
    if (off < a && (ret = zero_piece(img, off, a - off, g, unmap)) < 0)
        return ret;
    if (a < b && (ret = zeroize(img, a, b - a, unmap)) < 0)
        return ret;
    if (b < end)
        ret = zero_piece(img, b, end - b, g, unmap);
    return ret;
}

/* An unaligned piece [off, off+len) inside one unit g: QEMU can only mark
 * the unit zero if the rest of it already reads as zeros and it holds no
 * data. */
static int no_fallback_piece(qimg_image *img, uint64_t off, uint64_t len,
                             uint64_t g)
{
    uint64_t us = ALIGN_DOWN(off, g), ue = MIN(us + g, img->size);
    uint64_t end = off + len;
    struct qimg_extent ext;
    bool z1 = false, z2 = false;
    int ret = reads_zero(img, us, off - us, &z1);

    if (ret == 0)
        ret = reads_zero(img, end, end < ue ? ue - end : 0, &z2);
    if (ret == 0 && z1 && z2)
        ret = guest_block_status(img, us, ue - us, &ext);
    if (ret < 0)
        return ret;
    if (!z1 || !z2 || (ext.flags & QIMG_BS_DATA))
        return qimg_err(ENOTSUP, "Zeroing would need to write data");
    return 0;
}

int guest_zero_no_fallback(qimg_image *img, uint64_t off, uint64_t len)
{
    struct qcow2 *q = img->q;
    uint64_t g = q->ext_l2 ? 1ull << q->sc_bits : q->cluster_size;
    uint64_t end = off + len, a, b;
    int ret = 0;

    if (len == 0)
        return 0;
    if (q->hdr.version < 3)
        return qimg_err(ENOTSUP, "Zeroing would need to write data");
    a = ALIGN_UP(off, g);
    b = end == img->size ? end : ALIGN_DOWN(end, g);
    if (a >= b)
        return no_fallback_piece(img, off, len, g);
    if (off < a)
        ret = no_fallback_piece(img, off, a - off, g);
    if (ret == 0 && b < end)
        ret = no_fallback_piece(img, b, end - b, g);
    return ret;
}

int guest_discard(qimg_image *img, uint64_t off, uint64_t len)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size, a, b;
    int ret;

    if (len == 0)
        return 0;
    /* The bitmaps count the whole request, as QEMU's do, whatever of it
     * is discarded. */
    ret = prepare_write(img);
    if (ret < 0)
        return ret;
    bitmap_track(img, off, len);
    a = ALIGN_UP(off, cs);
    b = off + len == img->size ? off + len : ALIGN_DOWN(off + len, cs);
    if (a >= b)
        return 0; /* partial clusters are ignored, as QEMU does */
    if (q->hdr.version < 3 && img->backing)
        return 0; /* v2 cannot say "zero" over a backing file: QEMU keeps
                   * the data (discard is only advisory) */
    return set_clusters(img, a, b - a, SET_DISCARD);
}

int guest_block_status(qimg_image *img, uint64_t off, uint64_t len,
                       struct qimg_extent *out)
{
    struct run r;
    int ret = map_run(img, off, len, &r);

    if (ret < 0)
        return ret;
    memset(out, 0, sizeof *out);
    out->len = r.len;
    switch (r.type) {
    case CL_UNALLOC:
        break;
    case CL_UNALLOC_ALLOC:
        /* Not this layer's data, but QEMU reports where it would be. */
        out->flags = QIMG_BS_OFFSET;
        out->host_off = r.host;
        break;
    case CL_ZERO_PLAIN:
        out->flags = QIMG_BS_ALLOCATED | QIMG_BS_ZERO;
        break;
    case CL_ZERO_ALLOC:
        out->flags = QIMG_BS_ALLOCATED | QIMG_BS_ZERO | QIMG_BS_OFFSET;
        out->host_off = r.host;
        break;
    case CL_NORMAL:
        out->flags = QIMG_BS_ALLOCATED | QIMG_BS_DATA | QIMG_BS_OFFSET;
        out->host_off = r.host;
        break;
    case CL_COMPRESSED:
        out->flags = QIMG_BS_ALLOCATED | QIMG_BS_DATA | QIMG_BS_COMPRESSED;
        break;
    }
    return 0;
}
