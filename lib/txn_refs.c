/*
 * txn_refs.c - the new refcounts of a snapshot transaction: copies of the
 * refcount blocks the operation changes, and the clusters a decrement took
 * to 0.
 *
 * qcow2-format.md §4.1 (what is counted), §5.5 (the shadow-metadata way to
 * commit). Blocks on disk are only read (through refcount.c). Which
 * clusters are free, and which the commit frees, is txn_space.c's
 * question, answered from these copies; where the changed blocks and the
 * new table go is txn_place.c's. State: struct txn_refs (txn_impl.h),
 * written only here.
 */
#include "txn_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- New refcounts ------------------------------------------------------ */

#define CHUNK (2u << 20) /* the largest cluster size */

/* Memory for one refcount block. (Not huge pages: in a virtual machine
 * that hands freed memory back to its host, a fresh 2 MiB page can cost
 * several times as much to back as its 512 small faults.) */
static uint8_t *blk_alloc(struct txn *t)
{
    struct txn_refs *r = &t->refs;
    uint8_t **c, *p;

    if (!r->nb_chunks || r->chunk_used + t->cs > CHUNK) {
        c = realloc(r->chunks, (r->nb_chunks + 1) * sizeof *c);
        if (!c)
            return NULL;
        r->chunks = c;
        p = malloc(CHUNK);
        if (!p)
            return NULL;
        r->chunks[r->nb_chunks++] = p;
        r->chunk_used = 0;
    }
    p = r->chunks[r->nb_chunks - 1] + r->chunk_used;
    r->chunk_used += t->cs;
    return p;
}

/* Refcount block rt_idx as the operation has it so far, loaded from disk
 * the first time; modify: the caller is about to change it. */
static int rb_get(struct txn *t, uint64_t rt_idx, bool modify, uint8_t **out)
{
    struct txn_refs *r = &t->refs;
    uint64_t end = MAX(t->q->file_size, txn_space_end(t) * t->cs);
    const uint8_t *cached;
    bool exists;
    int ret;

    /* Every cluster counted lies in the file or was just allocated past
     * its end: anything else is a bad offset that escaped validation. */
    if (rt_idx > (end >> t->q->cluster_bits >> t->q->rb_bits) + 1)
        return qimg_corrupt("Refcount block index %#" PRIx64
                            " beyond end of file",
                            rt_idx);
    if (rt_idx >= r->nb_rb) {
        uint64_t n = MAX(rt_idx + 1, r->nb_rb * 2), old = r->nb_rb;
        uint8_t **rb = realloc(r->rb, n * sizeof *rb);
        bool *dirty = rb ? realloc(r->rb_dirty, n * sizeof *dirty) : NULL;
        uint8_t **zhit = dirty ? realloc(r->zhit, n * sizeof *zhit) : NULL;
        r->rb = rb ? rb : r->rb;
        r->rb_dirty = dirty ? dirty : r->rb_dirty;
        r->zhit = zhit ? zhit : r->zhit;
        if (!zhit)
            return qimg_err(ENOMEM, "Out of memory");
        memset(r->rb + old, 0, (n - old) * sizeof *rb);
        memset(r->rb_dirty + old, 0, (n - old) * sizeof *dirty);
        memset(r->zhit + old, 0, (n - old) * sizeof *zhit);
        r->nb_rb = n;
    }
    if (!r->rb[rt_idx]) {
        r->rb[rt_idx] = blk_alloc(t);
        if (!r->rb[rt_idx])
            return qimg_err(ENOMEM, "Out of memory");
        /* The free-cluster search may have read it already. */
        cached = txn_space_cached(t, rt_idx);
        if (cached)
            memcpy(r->rb[rt_idx], cached, t->cs);
        else if ((ret = refcount_read_block(t->img, rt_idx, r->rb[rt_idx],
                                            &exists)) < 0)
            return ret;
    }
    r->rb_dirty[rt_idx] |= modify;
    *out = r->rb[rt_idx];
    return 0;
}

/* A decrement took cluster i of block rt_idx to 0. */
static int zero_hit(struct txn *t, uint64_t rt_idx, uint64_t i)
{
    uint8_t *z = t->refs.zhit[rt_idx];

    if (!z) {
        z = t->refs.zhit[rt_idx] =
            calloc(MAX((1ull << t->q->rb_bits) / 8, 1), 1);
        if (!z)
            return qimg_err(ENOMEM, "Out of memory");
    }
    z[i / 8] |= (uint8_t)(1u << (i % 8));
    return 0;
}

void txn_refs_expect_existing(struct txn *t, bool on)
{
    t->refs.existing = on;
}

/* Adding delta to the refcount v of cluster idx leaves its range, or
 * raises from 0 one that counts a reference that exists. */
static int rc_out_of_range(const struct txn *t, uint64_t idx, int64_t delta,
                           uint64_t v)
{
    if (delta < 0 || !v)
        return qimg_corrupt("Refcount of cluster %" PRIu64 " is lower than "
                            "its references",
                            idx);
    return qimg_err(EINVAL, "Refcount of cluster %" PRIu64
                            " would exceed its maximum of %" PRIu64,
                    idx, t->q->refcount_max);
}

int txn_refs_add(struct txn *t, uint64_t idx, int64_t delta)
{
    struct qcow2 *q = t->q;
    uint64_t i = idx & ((1ull << q->rb_bits) - 1), v;
    uint8_t *rb = NULL;
    int ret = rb_get(t, idx >> q->rb_bits, true, &rb);

    if (ret < 0)
        return ret;
    v = refblock_get(rb, i, q->refcount_order);
    if ((delta < 0 && v < (uint64_t)-delta) ||
        (delta > 0 && q->refcount_max - v < (uint64_t)delta))
        return rc_out_of_range(t, idx, delta, v);
    if (delta > 0 && !v && t->refs.existing)
        return rc_out_of_range(t, idx, delta, v);
    refblock_set(rb, i, q->refcount_order, v + (uint64_t)delta);
    return v + (uint64_t)delta == 0 ? zero_hit(t, idx >> q->rb_bits, i) : 0;
}

#define LANES16 0x0001000100010001ull

/* Whether a 16-bit lane of x is 0. */
static bool zero_lane16(uint64_t x)
{
    return (x - LANES16) & ~x & (LANES16 << 15);
}

/* Add delta (+1 or -1) to the 16-bit refcounts [from, end) of block blk,
 * four at a time, up to the first group where one would leave its range
 * (the caller's loop then reports it) or the last whole group. Returns
 * where it stopped, or UINT64_MAX if recording a refcount reaching 0
 * failed. */
static uint64_t add_one16(struct txn *t, uint8_t *rb, uint64_t blk,
                          uint64_t from, uint64_t end, int64_t delta)
{
    uint64_t k = from;

    for (; k + 4 <= end; k += 4) {
        uint64_t v = be64_load(rb + 2 * k);
        if (zero_lane16(delta > 0 ? ~v : v) ||
            (delta > 0 && t->refs.existing && zero_lane16(v)))
            break; /* a 0xffff to raise or a 0 to lower or count */
        v = delta > 0 ? v + LANES16 : v - LANES16;
        be64_store(rb + 2 * k, v);
        if (delta < 0 && zero_lane16(v))
            for (unsigned j = 0; j < 4; j++)
                if (!(v >> (48 - 16 * j) & 0xffff) &&
                    zero_hit(t, blk, k + j) < 0)
                    return UINT64_MAX;
    }
    return k;
}

/* Add delta to n consecutive clusters from idx (checked, all or nothing
 * per block: a failure leaves the transaction to be dropped anyway). */
int txn_refs_add_run(struct txn *t, uint64_t idx, uint64_t n, int64_t delta)
{
    struct qcow2 *q = t->q;
    uint64_t per = 1ull << q->rb_bits, max = q->refcount_max;
    unsigned order = q->refcount_order;

    while (n > 0) {
        uint64_t i = idx & (per - 1), cnt = MIN(n, per - i), blk = idx / per;
        uint8_t *rb = NULL;
        int ret = rb_get(t, blk, true, &rb);
        if (ret < 0)
            return ret;
        if (order == 4) {
            /* The common case, kept tight: 16-bit refcounts. */
            uint64_t k = i;
            if (delta == 1 || delta == -1)
                k = add_one16(t, rb, blk, i, i + cnt, delta);
            if (k == UINT64_MAX)
                return -ENOMEM;
            for (; k < i + cnt; k++) {
                uint64_t old = be16_load(rb + 2 * k);
                int64_t v = (int64_t)old + delta;
                if ((uint64_t)v > 0xffff ||
                    (delta > 0 && !old && t->refs.existing))
                    return rc_out_of_range(t, (idx - i) + k, delta, old);
                be16_store(rb + 2 * k, (uint16_t)v);
                if (!v && (ret = zero_hit(t, blk, k)) < 0)
                    return ret;
            }
        } else {
            for (uint64_t k = i; k < i + cnt; k++) {
                uint64_t v = refblock_get(rb, k, order);
                if ((delta < 0 && v < (uint64_t)-delta) ||
                    (delta > 0 && max - v < (uint64_t)delta) ||
                    (delta > 0 && !v && t->refs.existing))
                    return rc_out_of_range(t, (idx - i) + k, delta, v);
                refblock_set(rb, k, order, v + (uint64_t)delta);
                if (v + (uint64_t)delta == 0 && (ret = zero_hit(t, blk, k)) < 0)
                    return ret;
            }
        }
        idx += cnt;
        n -= cnt;
    }
    return 0;
}

int txn_refs_add_range(struct txn *t, uint64_t off, uint64_t len,
                       int64_t delta)
{
    int ret = 0;

    if (!len)
        return 0;
    for (uint64_t c = off / t->cs; ret == 0 && c <= (off + len - 1) / t->cs;
         c++)
        ret = txn_refs_add(t, c, delta);
    return ret;
}

/* Refcount of cluster idx from the operation's own copy of its block. */
int txn_refs_loaded(void *ctx, uint64_t idx, uint64_t *rc)
{
    struct txn *t = ctx;
    uint8_t *rb = NULL;
    int ret = rb_get(t, idx >> t->q->rb_bits, false, &rb);

    if (ret == 0)
        *rc = refblock_get(rb, idx & ((1ull << t->q->rb_bits) - 1),
                           t->q->refcount_order);
    return ret;
}

bool txn_refs_unchanged(const struct txn *t)
{
    for (uint64_t i = 0; i < t->refs.nb_rb; i++)
        if (t->refs.rb_dirty[i])
            return false;
    return true;
}

void txn_refs_free(struct txn *t)
{
    struct txn_refs *r = &t->refs;

    for (size_t i = 0; i < r->nb_chunks; i++)
        free(r->chunks[i]);
    free(r->chunks);
    for (uint64_t i = 0; i < r->nb_rb; i++)
        free(r->zhit[i]);
    free(r->zhit);
    free(r->rb_dirty);
    free(r->rb);
}
