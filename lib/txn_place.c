/*
 * txn_place.c - where a snapshot transaction's new refcount structures go:
 * a new place for every refcount block the operation changed and for the
 * new refcount table, found by txn_space.c, and writing them there.
 *
 * qcow2-format.md §5.5. Placing a block counts the cluster it takes, which
 * can change one more block, so placing repeats until nothing changes.
 * State: struct txn_place (txn_impl.h), written only here.
 */
#include "txn_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The new location of block i, growing the array as blocks are added. */
static int set_loc(struct txn_place *r, uint64_t i, uint64_t loc)
{
    if (i >= r->nb_loc) {
        uint64_t n = MAX(i + 1, r->nb_loc * 2);
        uint64_t *p = realloc(r->rb_loc, n * sizeof *p);
        if (!p)
            return qimg_err(ENOMEM, "Out of memory");
        memset(p + r->nb_loc, 0, (n - r->nb_loc) * sizeof *p);
        r->rb_loc = p;
        r->nb_loc = n;
    }
    r->rb_loc[i] = loc;
    return 0;
}

static uint64_t rt_old_loc(const struct txn *t, uint64_t rt_idx)
{
    if (rt_idx >= t->q->rc->rt_entries)
        return 0;
    return be64_load(t->q->rc->rt + rt_idx * 8) & RT_OFFSET_MASK;
}

/* RT_MAX bytes of refcount table at most, as QEMU's limit at open. */
#define RT_MAX (8ull << 20)

/* The table must cover the file's end once everything is placed. The
 * bound is generous: all new clusters land past the end, every changed
 * block moves, and each new cluster (block copies included) may dirty
 * one more block. */
int txn_place_room(const struct txn *t, uint64_t clusters)
{
    const struct qcow2 *q = t->q;
    uint64_t per_rb = 1ull << q->rb_bits, per_cl = t->cs / 8;
    uint64_t end = MAX(DIV_ROUND_UP(q->file_size, t->cs), txn_space_end(t));
    uint64_t base = clusters, n, rt;

    for (uint64_t i = 0; i < txn_refs_nb(t); i++)
        base += txn_refs_dirty(t, i);
    n = 3 * base + 4;
    rt = DIV_ROUND_UP(DIV_ROUND_UP(end + n, per_rb), per_cl);
    if ((end + n + rt + per_rb - 1) / per_rb > RT_MAX / 8)
        return qimg_err(EFBIG, "Reference count table too large");
    return 0;
}

/* Give every changed refcount block a new home, then size and place the
 * refcount table; repeat until placing things changes no more blocks. */
int txn_place_refcounts(struct txn *t)
{
    struct qcow2 *q = t->q;
    struct txn_place *r = &t->place;
    uint64_t per_cl = t->cs / 8;
    bool again = true;
    int ret;

    ret = txn_refs_add_range(t, q->hdr.refcount_table_offset,
                             (uint64_t)q->hdr.refcount_table_clusters * t->cs,
                             -1);
    if (ret == 0)
        ret = txn_space_meta_freed(
            t, q->hdr.refcount_table_offset,
            (uint64_t)q->hdr.refcount_table_clusters * t->cs);
    while (ret == 0 && again) {
        uint64_t need = q->rc->rt_entries;
        again = false;
        for (uint64_t i = 0; ret == 0 && i < txn_refs_nb(t); i++) {
            uint64_t loc;
            if (!txn_refs_dirty(t, i) || (i < r->nb_loc && r->rb_loc[i]))
                continue;
            /* Counting the new block may add blocks: grow after. */
            ret = txn_space_alloc(t, 1, &loc);
            if (ret == 0)
                ret = set_loc(r, i, loc);
            if (ret == 0 && rt_old_loc(t, i))
                ret = txn_refs_add(t, rt_old_loc(t, i) / t->cs, -1);
            if (ret == 0 && rt_old_loc(t, i))
                ret = txn_space_meta_freed(t, rt_old_loc(t, i), t->cs);
            again = true;
        }
        for (uint64_t i = 0; i < txn_refs_nb(t); i++)
            if (txn_refs_dirty(t, i))
                need = MAX(need, i + 1);
        need = DIV_ROUND_UP(need, per_cl);
        if (ret == 0 && need > r->rt_clusters) {
            if (r->rt_clusters)
                ret = txn_refs_add_range(t, r->rt_off, r->rt_clusters * t->cs,
                                         -1);
            if (ret == 0)
                ret = txn_space_alloc(t, need, &r->rt_off);
            r->rt_clusters = need;
            again = true;
        }
    }
    if (ret < 0)
        return ret;
    if (r->rt_clusters * t->cs > RT_MAX)
        return qimg_err(EFBIG, "Reference count table too large");
    r->rt = calloc(r->rt_clusters, t->cs);
    if (!r->rt)
        return qimg_err(ENOMEM, "Out of memory");
    memcpy(r->rt, q->rc->rt, q->rc->rt_entries * 8);
    for (uint64_t i = 0; i < txn_refs_nb(t); i++)
        if (txn_refs_dirty(t, i))
            be64_store(r->rt + i * 8, r->rb_loc[i]);
    return 0;
}

/* Blocks next to each other both in memory and in their new places go out
 * in one write, straight from memory. */
int txn_place_write(struct txn *t)
{
    const struct txn_place *r = &t->place;
    uint64_t nb = txn_refs_nb(t);
    int ret = 0;

    for (uint64_t i = 0; ret == 0 && i < nb; i++) {
        const uint8_t *b = txn_refs_block(t, i);
        uint64_t n = 1;
        if (!txn_refs_dirty(t, i))
            continue;
        while (i + n < nb && txn_refs_dirty(t, i + n) &&
               txn_refs_block(t, i + n) == b + n * t->cs &&
               r->rb_loc[i + n] == r->rb_loc[i] + n * t->cs)
            n++;
        if (n == 1)
            ret = txn_wbuf_write(t, b, t->cs, r->rb_loc[i]);
        else if ((ret = txn_wbuf_flush(t)) == 0)
            ret = txn_wbuf_direct(t, b, n * t->cs, r->rb_loc[i]);
        i += n - 1;
    }
    if (ret == 0)
        ret = txn_wbuf_write(t, r->rt, r->rt_clusters * t->cs, r->rt_off);
    return ret < 0 ? ret : txn_wbuf_flush(t);
}

uint8_t *txn_place_take_table(struct txn *t)
{
    uint8_t *rt = t->place.rt;

    t->place.rt = NULL;
    return rt;
}

void txn_place_free(struct txn *t)
{
    free(t->place.rb_loc);
    free(t->place.rt);
}

