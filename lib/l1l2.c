/*
 * l1l2.c - guest offset -> host cluster: the active L1 table and L2 tables.
 *
 * qcow2-format.md §3.1-§3.5 (lookup, entry formats) and §3.7 (COPIED).
 * Owns the in-memory active L1 and the L2 cache; guest.c decides what to
 * write into entries, refcount.c owns the counts. Snapshot L1 tables are
 * handled by txn.c and qcow2.c (snapshot views).
 *
 * Notes on the design:
 *  1. A new L2 table is allocated (refcount +1), filled in the cache and
 *     written only by the flush order (flush.c), after the refcount blocks
 *     are durable; the L1 entry naming it is written after the table is
 *     durable (§13 rule 2).
 *  2. An L2 table whose L1 entry lacks COPIED is shared with a snapshot:
 *     it is copied before any entry changes, and the old table loses one
 *     reference only once the new L1 entry is durable.
 */
#include "l1l2.h"

#include "error.h"
#include "file.h"
#include "meta.h"
#include "refcount.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Tables read in guest order before a scan reuses L2 cache buffers. */
#define L2_SCAN_TABLES 8

int l1_init(qimg_image *img)
{
    struct qcow2 *q = img->q;
    struct l1_state *s = calloc(1, sizeof *s);
    uint64_t cap = MIN((32ull << 20) / q->cluster_size,
                       (uint64_t)q->hdr.l1_size + 1 + 4);
    size_t n = (size_t)q->hdr.l1_size * 8;
    int ret;

    if (!s)
        return qimg_err(ENOMEM, "Out of memory");
    q->l1s = s;
    s->l1_size = q->hdr.l1_size;
    if (!s->l1_size) { /* one zero entry: nothing reads past the table */
        s->l1 = calloc(1, 8);
        ret = s->l1 ? 0 : qimg_err(ENOMEM, "Out of memory");
    } else {
        ret = file_read_table(img, &s->l1, q->hdr.l1_table_offset, n, NULL);
    }
    if (ret < 0)
        return ret;
    return mcache_init(&s->l2c, q->cluster_size, MAX(cap, 16));
}

void l1_free(qimg_image *img)
{
    struct l1_state *s = img->q->l1s;

    if (!s)
        return;
    free(s->l1);
    mcache_destroy(&s->l2c);
    free(s);
    img->q->l1s = NULL;
}

void l1_set_hook(qimg_image *img, int (*make_room)(void *))
{
    mcache_set_hook(&img->q->l1s->l2c, make_room, img);
}

void l1_adopt(qimg_image *img, uint8_t *l1, uint32_t size)
{
    struct l1_state *s = img->q->l1s;

    if (l1) {
        free(s->l1);
        s->l1 = l1;
        s->l1_size = size;
        s->dirty_lo = s->dirty_hi = 0;
    }
    mcache_clear(&s->l2c);
}

int l1_write_entry(qimg_image *img, uint32_t i, uint64_t e)
{
    struct qcow2 *q = img->q;
    uint8_t b[8];
    int ret;

    be64_store(b, e);
    ret = meta_check_write(img, META_BIT(META_ACTIVE_L1),
                           q->hdr.l1_table_offset + (uint64_t)i * 8, 8);
    if (ret == 0)
        ret = file_pwrite(img, b, 8,
                          q->hdr.l1_table_offset + (uint64_t)i * 8);
    if (ret == 0)
        ret = file_flush(img);
    if (ret == 0)
        l1_entry_set(q->l1s->l1, i, e);
    return ret;
}

bool l1_has_dirty(const qimg_image *img)
{
    return img->q->l1s->dirty_lo < img->q->l1s->dirty_hi;
}

bool l2_has_dirty(const qimg_image *img)
{
    return mcache_has_dirty(&img->q->l1s->l2c);
}

void l2_cache_forget(qimg_image *img, uint64_t off)
{
    mcache_drop(&img->q->l1s->l2c, off);
}

int l1_write_dirty(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint64_t lo = q->l1s->dirty_lo, hi = q->l1s->dirty_hi;
    int ret;

    if (lo >= hi)
        return 0;
    ret = meta_check_write(img, META_BIT(META_ACTIVE_L1),
                           q->hdr.l1_table_offset + lo * 8, (hi - lo) * 8);
    if (ret == 0)
        ret = file_pwrite(img, q->l1s->l1 + lo * 8, (hi - lo) * 8,
                          q->hdr.l1_table_offset + lo * 8);
    if (ret < 0)
        return ret;
    q->l1s->dirty_lo = q->l1s->dirty_hi = 0;
    return 0;
}

static void l1_mark_dirty(struct qcow2 *q, uint32_t idx)
{
    if (q->l1s->dirty_lo >= q->l1s->dirty_hi) {
        q->l1s->dirty_lo = idx;
        q->l1s->dirty_hi = idx + 1;
        return;
    }
    q->l1s->dirty_lo = MIN(q->l1s->dirty_lo, idx);
    q->l1s->dirty_hi = MAX(q->l1s->dirty_hi, idx + 1);
}

static struct mcache_entry *l2c_insert(qimg_image *img, uint64_t off, int *ret)
{
    struct mcache_entry *e;

    *ret = mcache_insert_room(&img->q->l1s->l2c, off, &e);
    return *ret < 0 ? NULL : e;
}

int l2_load(qimg_image *img, uint64_t l2_off, struct mcache_entry **out)
{
    struct qcow2 *q = img->q;
    struct mcache_entry *e = mcache_find(&q->l1s->l2c, l2_off);
    int ret;

    if (e) {
        mcache_pin(&q->l1s->l2c, e);
        *out = e;
        return 0;
    }
    e = l2c_insert(img, l2_off, &ret);
    if (!e)
        return ret;
    ret = file_pread(img, e->buf, q->cluster_size, l2_off);
    if (ret < 0) {
        mcache_unpin(e);
        mcache_drop(&q->l1s->l2c, l2_off);
        return ret;
    }
    *out = e;
    return 0;
}

void l2_note_read(qimg_image *img, uint64_t l1_idx)
{
    struct l1_state *s = img->q->l1s;

    if (l1_idx + 1 == s->scan_next) /* the same table */
        return;
    s->scan_tables = l1_idx == s->scan_next ? s->scan_tables + 1 : 0;
    s->scan_next = l1_idx + 1;
    s->l2c.recycle = s->scan_tables >= L2_SCAN_TABLES;
}

int l2_write_dirty(qimg_image *img)
{
    struct qcow2 *q = img->q;

    for (size_t i = 0; i < q->l1s->l2c.cap; i++) {
        struct mcache_entry *e = &q->l1s->l2c.e[i];
        int ret;
        if (e->off == UINT64_MAX || !e->dirty)
            continue;
        ret = meta_check_write(img, META_BIT(META_ACTIVE_L2), e->off,
                               q->cluster_size);
        if (ret == 0)
            ret = file_pwrite(img, e->buf, q->cluster_size, e->off);
        if (ret < 0)
            return ret;
        e->dirty = false;
    }
    return 0;
}

/* The L2 offset in L1 entry l1_idx, validated. 0 if none. */
static int l1_l2_offset(qimg_image *img, uint64_t l1_idx, uint64_t *out)
{
    struct qcow2 *q = img->q;
    uint64_t off = l1_entry_get(q->l1s->l1, l1_idx) & L1E_OFFSET_MASK;

    *out = off;
    if (off && !IS_ALIGNED(off, q->cluster_size))
        return qimg_corrupt("L2 table offset %#" PRIx64
                            " unaligned (L1 index: %#" PRIx64 ")",
                            off, l1_idx);
    return 0;
}

/* A table a write would change lies inside the file (one past its end
 * reads as zeros, as in QEMU, but is not written). */
static int l2_check_writable(const struct qcow2 *q, uint64_t l2_off)
{
    if (l2_off >= q->file_size || q->file_size - l2_off < q->cluster_size)
        return qimg_corrupt("L2 table offset %#" PRIx64
                            " beyond end of file",
                            l2_off);
    return 0;
}

int l2_lookup(qimg_image *img, uint64_t guest_off, struct l2_slot *out)
{
    struct qcow2 *q = img->q;
    uint64_t l1_idx = guest_off >> (q->cluster_bits + q->l2_bits);
    uint64_t l2_idx = (guest_off >> q->cluster_bits) & (q->l2_entries - 1);
    struct mcache_entry *e;
    int ret;

    memset(out, 0, sizeof *out);
    if (l1_idx >= q->l1s->l1_size)
        return 0;
    ret = l1_l2_offset(img, l1_idx, &out->l2_off);
    if (ret < 0 || !out->l2_off)
        return ret;
    ret = l2_check_writable(q, out->l2_off);
    /* A table on another structure is that structure's damage first. */
    if (ret == 0)
        ret = meta_check_write(img, META_BIT(META_ACTIVE_L2), out->l2_off,
                               q->cluster_size);
    if (ret == 0)
        ret = l2_load(img, out->l2_off, &e);
    if (ret < 0)
        return ret;
    out->entry = l2_entry_get(q, e->buf, l2_idx);
    out->bitmap = l2_bitmap_get(q, e->buf, l2_idx);
    mcache_unpin(e);
    return l2_entry_check(img, out->entry, out->bitmap, out->l2_off, l2_idx);
}

int l2_get_writable(qimg_image *img, uint64_t guest_off,
                    struct mcache_entry **out, uint64_t *idx)
{
    struct qcow2 *q = img->q;
    uint64_t l1_idx = guest_off >> (q->cluster_bits + q->l2_bits);
    uint64_t l1e, old_off, new_off;
    struct mcache_entry *old = NULL, *e;
    int ret;

    *idx = (guest_off >> q->cluster_bits) & (q->l2_entries - 1);
    if (l1_idx >= q->l1s->l1_size)
        return qimg_err(EINVAL, "Write beyond the L1 table");
    l1e = l1_entry_get(q->l1s->l1, l1_idx);
    ret = l1_l2_offset(img, l1_idx, &old_off);
    if (ret == 0 && old_off)
        ret = l2_check_writable(q, old_off);
    if (ret < 0)
        return ret;
    /* A table written in place may only lie on itself (QEMU checks as it
     * writes the table, within the request). */
    if (old_off && (l1e & QCOW_OFLAG_COPIED)) {
        ret = meta_check_write(img, META_BIT(META_ACTIVE_L2), old_off,
                               q->cluster_size);
        return ret < 0 ? ret : l2_load(img, old_off, out);
    }
    /* The L1 entry will change: refuse now, before anything is written,
     * if it does not lie in the active L1 table alone (QEMU writes the
     * entry at once and refuses there). */
    ret = meta_check_write(img, META_BIT(META_ACTIVE_L1),
                           q->hdr.l1_table_offset + l1_idx * 8, 8);
    if (ret < 0)
        return ret;
    if (old_off) {
        ret = l2_load(img, old_off, &old);
        if (ret < 0)
            return ret;
    }
    ret = refcount_alloc(img, 1, &new_off);
    if (ret < 0)
        goto out;
    e = l2c_insert(img, new_off, &ret);
    if (!e)
        goto out;
    if (old)
        memcpy(e->buf, old->buf, q->cluster_size);
    else
        memset(e->buf, 0, q->cluster_size);
    e->dirty = true;
    ret = meta_add(img, META_ACTIVE_L2, new_off, q->cluster_size);
    /* The old table is a snapshot's now (or freed, once durable). */
    if (ret == 0 && old_off)
        ret = meta_retag(img, old_off, q->cluster_size, META_ACTIVE_L2,
                         META_INACTIVE_L2);
    if (ret == 0 && old_off)
        ret = refcount_dec_later(img, old_off, q->cluster_size, false);
    if (ret < 0) {
        mcache_unpin(e);
        goto out;
    }
    l1_entry_set(q->l1s->l1, l1_idx, new_off | QCOW_OFLAG_COPIED);
    l1_mark_dirty(q, (uint32_t)l1_idx);
    *out = e;
out:
    mcache_unpin(old);
    return ret;
}

enum cl_type l2_cluster_type(const struct qcow2 *q, uint64_t entry)
{
    if (entry & QCOW_OFLAG_COMPRESSED)
        return CL_COMPRESSED;
    if (!q->ext_l2 && (entry & QCOW_OFLAG_ZERO))
        return (entry & L2E_OFFSET_MASK) ? CL_ZERO_ALLOC : CL_ZERO_PLAIN;
    return (entry & L2E_OFFSET_MASK) ? CL_NORMAL : CL_UNALLOC;
}

enum cl_type l2_subcluster_type(const struct qcow2 *q, uint64_t entry,
                                uint64_t bitmap, unsigned sc)
{
    enum cl_type t = l2_cluster_type(q, entry);

    if (!q->ext_l2 || t == CL_COMPRESSED)
        return t;
    if (bitmap & (1ull << (32 + sc)))
        return t == CL_NORMAL ? CL_ZERO_ALLOC : CL_ZERO_PLAIN;
    if (bitmap & (1ull << sc))
        return CL_NORMAL;
    return t == CL_NORMAL ? CL_UNALLOC_ALLOC : CL_UNALLOC;
}

void l2_compressed_range(const struct qcow2 *q, uint64_t entry,
                         uint64_t *coff, uint64_t *clen)
{
    uint64_t nsec = ((entry >> q->csize_shift) & q->csize_mask) + 1;

    *coff = entry & q->coff_mask;
    *clen = nsec * 512 - (*coff & 511);
}

static int entry_check(qimg_image *img, uint64_t entry, uint64_t bitmap,
                       uint64_t l2_off, uint64_t l2_idx, bool read)
{
    struct qcow2 *q = img->q;
    uint64_t host = entry & L2E_OFFSET_MASK;
    unsigned idx = (unsigned)l2_idx;

    if (entry & QCOW_OFLAG_COMPRESSED) {
        uint64_t coff, clen;
        l2_compressed_range(q, entry, &coff, &clen);
        if (coff >= q->file_size && !read)
            return qimg_corrupt("Compressed cluster offset %#" PRIx64
                                " beyond end of file (L2 offset: %#" PRIx64
                                ", L2 index: %#x)",
                                coff, l2_off, idx);
        return 0;
    }
    if (q->ext_l2) {
        if (((bitmap >> 32) & bitmap & 0xffffffffull) ||
            (!host && (bitmap & 0xffffffffull)))
            return qimg_corrupt("Invalid cluster entry found (L2 offset: "
                                "%#" PRIx64 ", L2 index: %#x)",
                                l2_off, idx);
    } else if ((entry & QCOW_OFLAG_ZERO) && q->hdr.version < 3) {
        return qimg_corrupt("Zero cluster entry found in pre-v3 image (L2 "
                            "offset: %#" PRIx64 ", L2 index: %#x)",
                            l2_off, idx);
    }
    if (!host)
        return 0;
    if (!IS_ALIGNED(host, q->cluster_size))
        return qimg_corrupt("Cluster allocation offset %#" PRIx64
                            " unaligned (L2 offset: %#" PRIx64
                            ", L2 index: %#x)",
                            host, l2_off, idx);
    /* The file may end inside the last cluster (subclusters written). */
    if (host >= q->file_size && !read)
        return qimg_corrupt("Cluster allocation offset %#" PRIx64
                            " beyond end of file (L2 offset: %#" PRIx64
                            ", L2 index: %#x)",
                            host, l2_off, idx);
    return 0;
}

int l2_entry_check(qimg_image *img, uint64_t entry, uint64_t bitmap,
                   uint64_t l2_off, uint64_t l2_idx)
{
    return entry_check(img, entry, bitmap, l2_off, l2_idx, false);
}

int l2_entry_check_read(qimg_image *img, uint64_t entry, uint64_t bitmap,
                        uint64_t l2_off, uint64_t l2_idx)
{
    return entry_check(img, entry, bitmap, l2_off, l2_idx, true);
}
