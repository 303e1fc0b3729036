/*
 * refcount.c - refcount table, refcount blocks, cluster allocation.
 *
 * qcow2-format.md §4 (encoding) and §13 rules 1, 3, 4, 5 (ordering). This
 * file owns the refcount structures of a live image: guest writes allocate
 * and free through it. Snapshot transactions (txn.c) build whole new
 * refcount structures instead and only read through here.
 *
 * Notes on the design:
 *  1. Increments are applied to cached blocks at once; the flush order
 *     (flush.c) writes the blocks and syncs before any L2/L1 entry that
 *     needs them is written.
 *  2. Decrements are queued (refcount_dec_later) and applied only after the
 *     metadata that dropped the reference is durable, so a cluster is never
 *     reused while an on-disk table still points at it.
 *  3. A new refcount block is written and synced before the reftable entry
 *     naming it; it is placed inside its own range, describing itself.
 *  4. Growing the refcount table writes new blocks and the new table past
 *     everything the old table covers, syncs, then switches header bytes
 *     48-59 in one write, syncs, and only then frees the old table.
 */
#include "refcount.h"

#include "error.h"
#include "file.h"
#include "meta.h"
#include "roots.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int refcount_init(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint64_t n = (uint64_t)q->hdr.refcount_table_clusters * q->cluster_size;
    uint64_t blocks, cap = (8ull << 20) / q->cluster_size;
    struct rc_state *rc = calloc(1, sizeof *rc);
    int ret;

    if (!rc)
        return qimg_err(ENOMEM, "Out of memory");
    q->rc = rc;
    ret = file_read_table(img, &rc->rt, q->hdr.refcount_table_offset, n,
                          NULL);
    if (ret < 0)
        return ret;
    rc->rt_entries = n / 8;
    blocks = rc->rt_entries ? rc->rt_entries : 1;
    cap = MIN(cap, blocks + 8);
    return mcache_init(&rc->rbc, q->cluster_size, MAX(cap, 8));
}

void refcount_free(qimg_image *img)
{
    struct rc_state *rc = img->q->rc;

    if (!rc)
        return;
    free(rc->rt);
    mcache_destroy(&rc->rbc);
    free(rc->dec);
    free(rc);
    img->q->rc = NULL;
}

void refcount_set_hooks(qimg_image *img, int (*make_room)(void *),
                        void (*on_free)(qimg_image *, uint64_t))
{
    mcache_set_hook(&img->q->rc->rbc, make_room, img);
    img->q->rc->on_free = on_free;
}

void refcount_adopt_table(qimg_image *img, uint8_t *rt, uint64_t entries)
{
    struct rc_state *rc = img->q->rc;

    free(rc->rt);
    rc->rt = rt;
    rc->rt_entries = entries;
    rc->free_hint = 0;
    rc->free_byte_off = 0;
    mcache_clear(&rc->rbc);
}

bool refcount_has_pending(const qimg_image *img)
{
    return img->q->rc->nb_dec != 0;
}

static uint64_t rt_get(const struct qcow2 *q, uint64_t rt_idx)
{
    if (rt_idx >= q->rc->rt_entries)
        return 0;
    return be64_load(q->rc->rt + rt_idx * 8) & RT_OFFSET_MASK;
}

static int rb_check_off(const struct qcow2 *q, uint64_t rt_idx, uint64_t rb_off)
{
    if (!IS_ALIGNED(rb_off, q->cluster_size))
        return qimg_corrupt("Refblock offset %#" PRIx64
                            " unaligned (reftable index: %#" PRIx64 ")",
                            rb_off, rt_idx);
    if (rb_off >= q->file_size || q->file_size - rb_off < q->cluster_size)
        return qimg_corrupt("Refblock offset %#" PRIx64
                            " beyond end of file (reftable index: %#" PRIx64
                            ")",
                            rb_off, rt_idx);
    return 0;
}

/* The cached refcount block at rb_off, pinned. */
static int rb_load(qimg_image *img, uint64_t rt_idx, uint64_t rb_off,
                   struct mcache_entry **out)
{
    struct qcow2 *q = img->q;
    struct mcache_entry *e = mcache_find(&q->rc->rbc, rb_off);
    int ret;

    if (e) {
        mcache_pin(&q->rc->rbc, e);
        *out = e;
        return 0;
    }
    ret = rb_check_off(q, rt_idx, rb_off);
    if (ret < 0)
        return ret;
    ret = mcache_insert_room(&q->rc->rbc, rb_off, &e);
    if (ret < 0)
        return ret;
    ret = file_pread(img, e->buf, q->cluster_size, rb_off);
    if (ret < 0) {
        mcache_unpin(e);
        mcache_drop(&q->rc->rbc, rb_off);
        return ret;
    }
    *out = e;
    return 0;
}

int refcount_get(qimg_image *img, uint64_t idx, uint64_t *out)
{
    struct qcow2 *q = img->q;
    uint64_t rt_idx = idx >> q->rb_bits;
    uint64_t rb_off = rt_get(q, rt_idx);
    struct mcache_entry *e;
    int ret;

    *out = 0;
    if (!rb_off)
        return 0;
    ret = rb_load(img, rt_idx, rb_off, &e);
    if (ret < 0)
        return ret;
    *out = refblock_get(e->buf, idx & ((1ull << q->rb_bits) - 1),
                        q->refcount_order);
    mcache_unpin(e);
    return 0;
}

int refcount_read_block(qimg_image *img, uint64_t rt_idx, uint8_t *buf,
                        bool *exists)
{
    struct qcow2 *q = img->q;
    uint64_t rb_off = rt_get(q, rt_idx);
    struct mcache_entry *e = NULL;
    int ret;

    *exists = rb_off != 0;
    if (!rb_off) {
        memset(buf, 0, q->cluster_size);
        return 0;
    }
    e = mcache_find(&q->rc->rbc, rb_off);
    if (e) {
        memcpy(buf, e->buf, q->cluster_size);
        return 0;
    }
    /* Not cached: read it straight into buf, leaving the cache alone
     * (a transaction reads every block once; caching them would only
     * evict what the cache holds). */
    ret = rb_check_off(q, rt_idx, rb_off);
    return ret < 0 ? ret : file_pread(img, buf, q->cluster_size, rb_off);
}

static int grow_reftable(qimg_image *img, uint64_t min_entries);

/* Write a new refcount block for rt_idx at cluster blk_idx, then point the
 * reftable at it. Inside its own range the block describes itself;
 * elsewhere the block covering blk_idx (which must exist) counts it, and
 * that count is durable before anything names the new block. */
static int create_refblock(qimg_image *img, uint64_t rt_idx, uint64_t blk_idx)
{
    struct qcow2 *q = img->q;
    uint64_t off = blk_idx << q->cluster_bits;
    bool self = blk_idx >> q->rb_bits == rt_idx;
    struct mcache_entry *e;
    uint8_t ent[8];
    int ret;

    /* Both writes are checked before either is made. */
    ret = meta_check_write(img, META_BIT(META_REFCOUNT_TABLE),
                           q->hdr.refcount_table_offset + rt_idx * 8, 8);
    if (ret == 0)
        ret = meta_overlap_check(img, off, q->cluster_size);
    if (ret < 0)
        return ret;
    if (!self) {
        ret = refcount_update(img, blk_idx, 1, 1);
        if (ret == 0)
            ret = refcount_flush(img);
        if (ret < 0)
            return ret;
    }
    ret = mcache_insert_room(&q->rc->rbc, off, &e);
    if (ret < 0)
        return ret;
    memset(e->buf, 0, q->cluster_size);
    if (self)
        refblock_set(e->buf, blk_idx - (rt_idx << q->rb_bits),
                     q->refcount_order, 1);
    /* 1 of 2: the block and its own count are durable ... */
    ret = file_pwrite(img, e->buf, q->cluster_size, off);
    if (ret == 0)
        ret = file_flush(img);
    mcache_unpin(e);
    if (ret < 0) {
        mcache_drop(&q->rc->rbc, off);
        return ret;
    }
    /* 2 of 2: ... before the reftable names it. */
    be64_store(ent, off);
    ret = file_pwrite(img, ent, 8, img->q->hdr.refcount_table_offset +
                                        rt_idx * 8);
    if (ret == 0)
        ret = file_flush(img);
    if (ret < 0)
        return ret;
    memcpy(q->rc->rt + rt_idx * 8, ent, 8);
    file_extend(img, off + q->cluster_size);
    return meta_add(img, META_REFCOUNT_BLOCK, off, q->cluster_size);
}

static int find_free_run(qimg_image *img, uint64_t n, uint64_t *out,
                         uint64_t *first_free);

/* Make sure a refcount block covers cluster idx. Returns 1 if it had to
 * allocate one (the caller's view of free clusters is then stale). The new
 * block goes to the lowest free cluster, as QEMU places it: usually in a
 * range already covered, so that a long run of clusters can span whole
 * ranges that have no block yet (a block inside its own range would cut
 * such a run forever). */
static int ensure_refblock(qimg_image *img, uint64_t idx)
{
    struct qcow2 *q = img->q;
    uint64_t rt_idx = idx >> q->rb_bits, blk, unused, blk_rt;
    int ret;

    if (rt_idx >= q->rc->rt_entries) {
        ret = grow_reftable(img, rt_idx + 1);
        return ret < 0 ? ret : 1;
    }
    if (rt_get(q, rt_idx))
        return 0;
    ret = find_free_run(img, 1, &blk, &unused);
    if (ret < 0)
        return ret;
    blk_rt = blk >> q->rb_bits;
    if (blk_rt >= q->rc->rt_entries) {
        ret = grow_reftable(img, blk_rt + 1);
        return ret < 0 ? ret : 1;
    }
    /* A free cluster in a range without a block: cover that range first. */
    if (!rt_get(q, blk_rt))
        rt_idx = blk_rt;
    ret = create_refblock(img, rt_idx, blk);
    return ret < 0 ? ret : 1;
}

/* Check that clusters [idx, idx+n) can take delta without changing them. */
static int update_range(qimg_image *img, uint64_t idx, uint64_t n,
                        int64_t delta, bool apply)
{
    struct qcow2 *q = img->q;
    uint64_t mask = (1ull << q->rb_bits) - 1;
    int ret = 0;

    while (n > 0) {
        uint64_t rt_idx = idx >> q->rb_bits;
        uint64_t rb_off = rt_get(q, rt_idx);
        uint64_t cnt = MIN(n, (mask + 1) - (idx & mask));
        struct mcache_entry *e;

        if (!rb_off)
            return qimg_err(EIO, "No refcount block for cluster %" PRIu64,
                            idx);
        ret = rb_load(img, rt_idx, rb_off, &e);
        if (ret < 0)
            return ret;
        for (uint64_t i = idx & mask; i < (idx & mask) + cnt; i++) {
            uint64_t v = refblock_get(e->buf, i, q->refcount_order);
            if (delta < 0 && v < (uint64_t)-delta) {
                ret = qimg_corrupt("Refcount of cluster %" PRIu64
                                   " would drop below zero",
                                   (rt_idx << q->rb_bits) + i);
                break;
            }
            if (delta > 0 && q->refcount_max - v < (uint64_t)delta) {
                ret = qimg_err(EINVAL, "Refcount overflow on cluster %" PRIu64
                                       " (maximum %" PRIu64 ")",
                               (rt_idx << q->rb_bits) + i, q->refcount_max);
                break;
            }
            if (apply)
                refblock_set(e->buf, i, q->refcount_order,
                             v + (uint64_t)delta);
        }
        if (apply && ret == 0)
            e->dirty = true;
        mcache_unpin(e);
        if (ret < 0)
            return ret;
        idx += cnt;
        n -= cnt;
    }
    return 0;
}

int refcount_update(qimg_image *img, uint64_t idx, uint64_t n, int64_t delta)
{
    int ret = update_range(img, idx, n, delta, false);

    return ret < 0 ? ret : update_range(img, idx, n, delta, true);
}

/* First run of n free clusters at or after q->rc->free_hint; *first_free is
 * the first free cluster met (every cluster from the hint to it is used). */
static int find_free_run(qimg_image *img, uint64_t n, uint64_t *out,
                         uint64_t *first_free)
{
    struct qcow2 *q = img->q;
    uint64_t idx = q->rc->free_hint, run = 0;

    *first_free = UINT64_MAX;
    uint64_t mask = (1ull << q->rb_bits) - 1;
    int ret;

    while (run < n) {
        uint64_t rt_idx = idx >> q->rb_bits;
        uint64_t rb_off = rt_get(q, rt_idx);
        struct mcache_entry *e;
        uint64_t i;

        if (!rb_off && !meta_avoid_any(img)) {
            /* No block (or past the table): the whole range is free. */
            uint64_t left = (mask + 1) - (idx & mask);
            uint64_t take = MIN(left, n - run);
            *first_free = MIN(*first_free, idx);
            run += take;
            idx += take;
            continue;
        }
        if (!rb_off) {
            /* The same, one cluster at a time, past those to avoid. */
            run = meta_avoid(img, idx) ? 0 : run + 1;
            if (run)
                *first_free = MIN(*first_free, idx);
            idx++;
            continue;
        }
        ret = rb_load(img, rt_idx, rb_off, &e);
        if (ret < 0)
            return ret;
        for (i = idx & mask; i <= mask && run < n; i++, idx++) {
            /* Metadata in use is never free, whatever its (damaged)
             * refcount says: handing it out would fail the overlap check
             * after the request wrote part of its data. */
            if (refblock_get(e->buf, i, q->refcount_order) ||
                meta_kinds(img, idx) || meta_avoid(img, idx)) {
                run = 0;
            } else {
                *first_free = MIN(*first_free, idx);
                run++;
            }
        }
        mcache_unpin(e);
    }
    *out = idx - n;
    return 0;
}

int refcount_alloc(qimg_image *img, uint64_t n, uint64_t *host_off)
{
    struct qcow2 *q = img->q;
    uint64_t start, first_free;
    int ret;

    for (;;) {
        bool restart = false;
        ret = find_free_run(img, n, &start, &first_free);
        if (ret < 0)
            return ret;
        for (uint64_t i = start; i < start + n; i = (i | ((1ull << q->rb_bits) - 1)) + 1) {
            ret = ensure_refblock(img, i);
            if (ret < 0)
                return ret;
            if (ret > 0) {
                restart = true;
                break;
            }
        }
        if (!restart)
            break;
    }
    ret = meta_overlap_check(img, start << q->cluster_bits,
                              n << q->cluster_bits);
    if (ret < 0)
        return ret;
    ret = refcount_update(img, start, n, 1);
    if (ret < 0)
        return ret;
    /* Skip the used clusters just scanned, so that allocation does not
     * rescan them every time (it would be quadratic in the image size). */
    q->rc->free_hint = first_free >= start ? start + n : first_free;
    *host_off = start << q->cluster_bits;
    file_extend(img, (start + n) << q->cluster_bits);
    return 0;
}

int refcount_alloc_bytes(qimg_image *img, uint64_t len, uint64_t *coff)
{
    struct qcow2 *q = img->q;
    struct rc_state *rc = q->rc;
    uint64_t cs = q->cluster_size, fbo = rc->free_byte_off, newc, v = 0;
    int ret;

    if (fbo && (ret = refcount_get(img, fbo >> q->cluster_bits, &v)) < 0)
        return ret;
    if (fbo && v >= q->refcount_max)
        fbo = 0;
    if (fbo && cs - (fbo & (cs - 1)) >= len) {
        ret = refcount_update(img, fbo >> q->cluster_bits, 1, 1);
        if (ret < 0)
            return ret;
        *coff = fbo;
    } else {
        ret = refcount_alloc(img, 1, &newc);
        if (ret < 0)
            return ret;
        if (fbo && newc == ALIGN_UP(fbo, cs)) {
            ret = refcount_update(img, fbo >> q->cluster_bits, 1, 1);
            if (ret < 0)
                return ret;
            *coff = fbo;
        } else {
            *coff = newc;
        }
    }
    rc->free_byte_off = (*coff + len) & (cs - 1) ? *coff + len : 0;
    return 0;
}

/* A decrement the image's damage refuses: QEMU leaks the cluster
 * ("qcow2_free_clusters failed") and goes on; counted for the caller. */
static void dec_failed(struct qcow2 *q, int err)
{
    q->rc->failed_frees++;
    q->rc->failed_err = err;
    qimg_error_clear();
}

/* Append to the queue of decrements that wait for a flush. */
static int dec_push(struct qcow2 *q, struct pending_dec d)
{
    if (q->rc->nb_dec == q->rc->cap_dec) {
        size_t cap = q->rc->cap_dec ? q->rc->cap_dec * 2 : 64;
        struct pending_dec *p = realloc(q->rc->dec, cap * sizeof *p);
        if (!p)
            return qimg_err(ENOMEM, "Out of memory");
        q->rc->dec = p;
        q->rc->cap_dec = cap;
    }
    q->rc->dec[q->rc->nb_dec++] = d;
    return 0;
}

int refcount_dec_later(qimg_image *img, uint64_t off, uint64_t len,
                       bool do_discard)
{
    struct qcow2 *q = img->q;
    uint64_t first = off >> q->cluster_bits;
    uint64_t last = (off + len - 1) >> q->cluster_bits;

    for (uint64_t idx = first; idx <= last; idx++) {
        uint64_t v = UINT64_MAX;
        int ret = refcount_get(img, idx, &v);
        /* Already 0 (damage): it would fail when applied, by then maybe
         * on a cluster handed out again in between. Leak it now. */
        if ((ret < 0 && qimg_last_error()->where[0]) || (ret == 0 && !v)) {
            dec_failed(q, ret < 0 ? -ret : EINVAL);
            continue;
        }
        if (ret == 0)
            ret = dec_push(q, (struct pending_dec){idx, do_discard});
        if (ret < 0)
            return ret;
    }
    return 0;
}

static int cluster_freed(qimg_image *img, uint64_t idx, bool do_discard)
{
    struct qcow2 *q = img->q;
    uint64_t off = idx << q->cluster_bits;

    if (q->rc->on_free)
        q->rc->on_free(img, off);
    meta_del(img, off, q->cluster_size);
    /* Never pack another compressed stream into a cluster that is free. */
    if (q->rc->free_byte_off >> q->cluster_bits == idx)
        q->rc->free_byte_off = 0;
    if (idx < q->rc->free_hint)
        q->rc->free_hint = idx;
    if (do_discard)
        return file_discard(img, off, q->cluster_size);
    return 0;
}

/* Put back decrements a failed apply did not consume. */
static int requeue(qimg_image *img, const struct pending_dec *d, size_t n)
{
    struct qcow2 *q = img->q;

    for (size_t i = 0; i < n; i++) {
        int ret = dec_push(q, d[i]);
        if (ret < 0)
            return ret;
    }
    return 0;
}

int refcount_apply_pending(qimg_image *img)
{
    struct qcow2 *q = img->q;
    struct pending_dec *d = q->rc->dec;
    size_t n = q->rc->nb_dec, i;
    int ret = 0, r2;

    /* Loading a refcount block may flush the caches, which would apply
     * the queue again: take it out first. */
    if (q->rc->applying || !n)
        return 0;
    q->rc->applying = true;
    q->rc->dec = NULL;
    q->rc->nb_dec = q->rc->cap_dec = 0;
    for (i = 0; i < n && ret == 0; i++) {
        uint64_t v = UINT64_MAX;
        ret = refcount_get(img, d[i].idx, &v);
        if (ret == 0 && v == 0)
            ret = qimg_corrupt("Refcount of cluster %" PRIu64
                               " would drop below zero",
                               d[i].idx);
        if (ret == 0)
            ret = refcount_update(img, d[i].idx, 1, -1);
        if (ret < 0 && qimg_last_error()->where[0]) {
            /* Damage, not I/O: leak the cluster and go on, as QEMU. */
            dec_failed(q, v == 0 ? EINVAL : -ret);
            ret = 0;
            continue;
        }
        if (ret < 0)
            break; /* not consumed: retried at the next flush */
        if (v == 1)
            ret = cluster_freed(img, d[i].idx, d[i].do_discard);
    }
    r2 = requeue(img, d + i, n - i);
    free(d);
    q->rc->applying = false;
    return ret < 0 ? ret : r2;
}

unsigned refcount_take_failed_frees(qimg_image *img, int *err)
{
    struct rc_state *rc = img->q->rc;
    unsigned n = rc->failed_frees;

    *err = rc->failed_err;
    rc->failed_frees = 0;
    return n;
}

int refcount_flush(qimg_image *img)
{
    struct qcow2 *q = img->q;

    for (size_t i = 0; i < q->rc->rbc.cap; i++) {
        struct mcache_entry *e = &q->rc->rbc.e[i];
        int ret;
        if (e->off == UINT64_MAX || !e->dirty)
            continue;
        ret = meta_check_write(img, META_BIT(META_REFCOUNT_BLOCK), e->off,
                               q->cluster_size);
        if (ret == 0)
            ret = file_pwrite(img, e->buf, q->cluster_size, e->off);
        if (ret < 0)
            return ret;
        e->dirty = false;
    }
    return 0;
}

/* Sizes of a grown table: B new blocks then T table clusters from start. */
static void plan_reftable(const struct qcow2 *q, uint64_t start,
                          uint64_t min_entries, uint64_t *nb_blocks,
                          uint64_t *nb_tclusters, uint64_t *entries)
{
    uint64_t per_cl = q->cluster_size / 8, b = 0, t, e;

    e = MAX(min_entries, q->rc->rt_entries + q->rc->rt_entries / 2);
    for (;;) {
        uint64_t last_rt;
        t = DIV_ROUND_UP(e, per_cl);
        last_rt = (start + b + t - 1) >> q->rb_bits;
        if (last_rt + 1 > e) {
            e = last_rt + 1;
            continue;
        }
        /* Every block index covering [start, start+b+t) is new. */
        uint64_t nb = last_rt - (start >> q->rb_bits) + 1;
        if (nb == b)
            break;
        b = nb;
    }
    *nb_blocks = b;
    *nb_tclusters = t;
    *entries = t * per_cl;
}

static int grow_reftable(qimg_image *img, uint64_t min_entries)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size;
    uint64_t start, b, t, entries, old_off = q->hdr.refcount_table_offset;
    uint32_t old_clusters = q->hdr.refcount_table_clusters;
    uint8_t *tbl = NULL, *blk = NULL;
    int ret;

    start =
        MAX(DIV_ROUND_UP(q->file_size, cs), q->rc->rt_entries << q->rb_bits);
    plan_reftable(q, start, min_entries, &b, &t, &entries);
    if (t * cs > (8ull << 20))
        return qimg_err(EFBIG, "Reference count table too large");
    tbl = calloc(1, t * cs);
    blk = malloc(cs);
    if (!tbl || !blk) {
        ret = qimg_err(ENOMEM, "Out of memory");
        goto out;
    }
    memcpy(tbl, q->rc->rt, q->rc->rt_entries * 8);
    for (uint64_t k = 0; k < b; k++) {
        uint64_t rt_idx = (start >> q->rb_bits) + k;
        uint64_t base = rt_idx << q->rb_bits;
        memset(blk, 0, cs);
        for (uint64_t c = MAX(base, start);
             c < MIN(base + (1ull << q->rb_bits), start + b + t); c++)
            refblock_set(blk, c - base, q->refcount_order, 1);
        be64_store(tbl + rt_idx * 8, (start + k) * cs);
        ret = meta_overlap_check(img, (start + k) * cs, cs);
        if (ret == 0)
            ret = file_pwrite(img, blk, cs, (start + k) * cs);
        if (ret < 0)
            goto out;
    }
    ret = meta_overlap_check(img, (start + b) * cs, t * cs);
    if (ret == 0)
        ret = file_pwrite(img, tbl, t * cs, (start + b) * cs);
    /* 1 of 3: new blocks and table durable before the header names them. */
    if (ret == 0)
        ret = file_flush(img);
    if (ret < 0)
        goto out;
    /* 2 of 3: switch refcount_table_offset + _clusters in one write. */
    ret = roots_switch_refcount_table(img, (start + b) * cs, (uint32_t)t);
    if (ret < 0)
        goto out;
    free(q->rc->rt);
    q->rc->rt = tbl;
    tbl = NULL;
    q->rc->rt_entries = entries;
    file_extend(img, (start + b + t) * cs);
    ret = meta_add(img, META_REFCOUNT_BLOCK, start * cs, b * cs);
    if (ret == 0)
        ret = meta_add(img, META_REFCOUNT_TABLE, (start + b) * cs, t * cs);
    if (ret < 0)
        goto out;
    meta_del(img, old_off, (uint64_t)old_clusters * cs);
    /* 3 of 3: only now may the old table's clusters be freed. */
    ret = refcount_update(img, old_off / cs, old_clusters, -1);
    if (ret == 0 && old_off / cs < q->rc->free_hint)
        q->rc->free_hint = old_off / cs;
out:
    free(tbl);
    free(blk);
    return ret;
}
