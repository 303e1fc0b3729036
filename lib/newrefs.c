/*
 * newrefs.c - the refcounts of a new image state in memory (newrefs.h).
 *
 * qcow2-format.md §4 (refcount entries of 2^order bits).
 */
#include "newrefs.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "endian.h"
#include "error.h"
#include "refcount.h"
#include "snaptable.h"
#include "util.h"

uint64_t nr_get(const struct newrefs *r, uint64_t k)
{
    return k < r->cap ? refblock_get(r->refs, k, r->order) : 0;
}

int nr_reserve(struct newrefs *r, uint64_t n)
{
    uint64_t cap = MAX(n, r->cap * 2);
    size_t old = (size_t)((r->cap << r->order) / 8 + 1);
    size_t len = (size_t)((cap << r->order) / 8 + 1);
    uint8_t *b;

    if (n <= r->cap)
        return 0;
    b = realloc(r->refs, len);
    if (!b)
        return qimg_err(ENOMEM, "Out of memory");
    memset(b + old, 0, len - old);
    r->refs = b;
    r->cap = cap;
    return 0;
}

int nr_set(struct newrefs *r, uint64_t k, uint64_t v)
{
    int ret = nr_reserve(r, k + 1);

    if (ret < 0)
        return ret;
    refblock_set(r->refs, k, r->order, v);
    if (v && k >= r->used)
        r->used = k + 1;
    return 0;
}

int nr_add(struct newrefs *r, uint64_t cs, uint64_t off, int64_t d)
{
    uint64_t k = off / cs, v = nr_get(r, k);
    uint64_t max = r->order == 6 ? UINT64_MAX : (1ull << (1u << r->order)) - 1;

    if ((d < 0 && v < (uint64_t)-d) || (d > 0 && max - v < (uint64_t)d))
        return qimg_err(EINVAL, "Reference count of cluster %#" PRIx64
                                " does not match its references",
                        (uint64_t)(k * cs));
    return nr_set(r, k, v + (uint64_t)d);
}

uint64_t newrefs_roots_end(qimg_image *img)
{
    const struct qcow2 *q = img->q;
    const struct qcow2_header *h = &q->hdr;
    uint64_t cs = q->cluster_size, end = DIV_ROUND_UP(q->file_size, cs);

    end = MAX(end, DIV_ROUND_UP(h->l1_table_offset + (uint64_t)h->l1_size * 8,
                                cs));
    end = MAX(end, h->refcount_table_offset / cs + h->refcount_table_clusters);
    end = MAX(end, DIV_ROUND_UP(h->snapshots_offset + q->sn->snap_table_size,
                                cs));
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++)
        end = MAX(end, DIV_ROUND_UP(q->sn->snaps[i].l1_off +
                                        (uint64_t)q->sn->snaps[i].l1_size * 8,
                                    cs));
    if (h->has_bitmaps_ext)
        end = MAX(end, DIV_ROUND_UP(h->bitmap_dir_offset + h->bitmap_dir_size,
                                    cs));
    return end;
}

int newrefs_load(qimg_image *img, unsigned order, struct newrefs *r)
{
    struct qcow2 *q = img->q;
    const struct rc_state *rc = q->rc;
    uint64_t cs = q->cluster_size, per_blk = 1ull << q->rb_bits;
    uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
    uint64_t nb = 0, rt_first = q->hdr.refcount_table_offset / cs;
    uint64_t end = newrefs_roots_end(img);
    uint64_t rt_n = q->hdr.refcount_table_clusters;
    uint8_t *blk = malloc(cs);
    int ret = blk ? 0 : qimg_err(ENOMEM, "Out of memory");

    memset(r, 0, sizeof *r);
    r->order = order;
    for (uint64_t i = 0; i < rc->rt_entries; i++)
        if (be64_load(rc->rt + i * 8) & RT_OFFSET_MASK)
            nb = (i + 1) * per_blk;
    if (ret == 0 && nb)
        ret = nr_reserve(r, nb);
    for (uint64_t i = 0; ret == 0 && i < nb / per_blk; i++) {
        bool exists;
        ret = refcount_read_block(img, i, blk, &exists);
        for (uint64_t k = 0; ret == 0 && exists && k < per_blk; k++) {
            uint64_t idx = i * per_blk + k;
            uint64_t v = refblock_get(blk, k, q->refcount_order);
            if (v > max)
                ret = qimg_err(EINVAL, "Cannot decrease refcount entry width "
                                       "to %u bits: Cluster at offset %#" PRIx64
                                       " has a refcount of %" PRIu64,
                               1u << order, (uint64_t)(idx * cs), v);
            else if (idx < end)
                ret = nr_set(r, idx, v);
        }
    }
    /* The switch frees the old table and blocks. */
    for (uint64_t k = rt_first; ret == 0 && k < rt_first + rt_n && k < nb; k++)
        refblock_set(r->refs, k, order, 0);
    for (uint64_t i = 0; ret == 0 && i < rc->rt_entries; i++) {
        uint64_t k = (be64_load(rc->rt + i * 8) & RT_OFFSET_MASK) / cs;
        if (k && k < nb)
            refblock_set(r->refs, k, order, 0);
    }
    free(blk);
    if (ret < 0) {
        free(r->refs);
        r->refs = NULL;
    }
    return ret;
}
