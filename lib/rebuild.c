/*
 * rebuild.c - the writes a repair makes: a new refcount structure built
 * from counted references, a rewritten snapshot table, cleared
 * dirty/corrupt bits.
 *
 * qcow2-format.md §4 (refcount structures), §5.1 (snapshot table), §13
 * rules 5 and 7 (a new table is written and synced before the header points
 * at it). check.c decides what to repair; this file only writes.
 */
#include "rebuild.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "endian.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "meta.h"
#include "refcount.h"
#include "roots.h"
#include "util.h"

/* A refcount structure of entries 2^order bits wide. */
struct width {
    unsigned order;
    unsigned rb_bits; /* log2(entries per block) */
};

static struct width width_of(const struct qcow2 *q, unsigned order)
{
    return (struct width){order, q->cluster_bits + 3 - order};
}

/* Does block rt_idx of the computed table have a non-zero entry? */
static bool block_used(struct width w, const uint8_t *refs, uint64_t nb_refs,
                       uint64_t rt_idx)
{
    uint64_t first = rt_idx << w.rb_bits;
    uint64_t last = MIN(nb_refs, first + (1ull << w.rb_bits));

    for (uint64_t k = first; k < last; k++)
        if (refblock_get(refs, k, w.order))
            return true;
    return false;
}

/* Blocks for every used part of [0, nb_refs) plus [start, start+extra). */
static uint64_t count_blocks(struct width w, const uint8_t *refs,
                             uint64_t nb_refs, uint64_t start, uint64_t extra)
{
    uint64_t n = 0, hi = (start + extra - 1) >> w.rb_bits;

    for (uint64_t i = 0; i <= hi; i++)
        if ((i >= start >> w.rb_bits) || block_used(w, refs, nb_refs, i))
            n++;
    return n;
}

/* Write the structure for refs (entries of width w) past the end of the
 * file (and past avoid, see rebuild.h), blocks then table, and make it
 * durable. *tbl: the table (t clusters at *rt_off), the caller's. */
static int write_structure(qimg_image *img, struct width w,
                           const uint8_t *refs, uint64_t nb_refs,
                           uint64_t avoid, uint64_t *rt_off, uint64_t *t_out,
                           uint8_t **tbl_out)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size, per_cl = cs / 8;
    uint64_t start = MAX(DIV_ROUND_UP(q->file_size, cs), nb_refs);

    /* Not over a cluster an entry names (QEMU is): data there would be
     * the new table's. Not gigabytes away for a bogus offset either. */
    if (avoid > start && avoid - start <= REBUILD_AVOID_MAX / cs)
        start = avoid;
    uint64_t b = 1, t = 1, nb, tb, entries, pos;
    uint8_t *blk = malloc(cs), *tbl = NULL;
    int ret = 0;

    if (!blk)
        return qimg_err(ENOMEM, "Out of memory");
    /* New blocks at start, then the table: size both to a fixed point. */
    for (;;) {
        nb = count_blocks(w, refs, nb_refs, start, b + t);
        entries = ((start + b + t - 1) >> w.rb_bits) + 1;
        tb = DIV_ROUND_UP(entries, per_cl);
        if (nb == b && tb == t)
            break;
        b = nb;
        t = tb;
    }
    if (t * cs > (8ull << 20)) {
        ret = qimg_err(EFBIG, "Reference count table too large");
        goto out;
    }
    tbl = calloc(t, cs);
    if (!tbl) {
        ret = qimg_err(ENOMEM, "Out of memory");
        goto out;
    }
    /* Where nothing lives (as far as the census of live metadata knows). */
    ret = meta_check_write(img, 0, start * cs, (b + t) * cs);
    pos = start;
    for (uint64_t i = 0; i < entries && ret == 0; i++) {
        uint64_t base = i << w.rb_bits;
        if (i < start >> w.rb_bits && !block_used(w, refs, nb_refs, i))
            continue;
        memset(blk, 0, cs);
        for (uint64_t k = base; k < base + (1ull << w.rb_bits); k++) {
            uint64_t v = k < nb_refs ? refblock_get(refs, k, w.order) : 0;
            if (k >= start && k < start + b + t)
                v = 1;
            refblock_set(blk, k - base, w.order, v);
        }
        be64_store(tbl + i * 8, pos * cs);
        ret = file_pwrite(img, blk, cs, pos * cs);
        pos++;
    }
    if (ret == 0)
        ret = file_pwrite(img, tbl, t * cs, (start + b) * cs);
    /* The new structure is durable before a header names it. */
    if (ret == 0)
        ret = file_flush(img);
    if (ret == 0) {
        *rt_off = (start + b) * cs;
        *t_out = t;
        *tbl_out = tbl;
        tbl = NULL;
        file_extend(img, (start + b + t) * cs);
    }
out:
    free(blk);
    free(tbl);
    return ret;
}

int rebuild_refcounts(qimg_image *img, const uint8_t *refs, uint64_t nb_refs,
                      uint64_t avoid)
{
    struct qcow2 *q = img->q;
    uint64_t rt_off, t;
    uint8_t *tbl = NULL;
    int ret = write_structure(img, width_of(q, q->refcount_order), refs,
                              nb_refs, avoid, &rt_off, &t, &tbl);

    /* Switch refcount_table_offset and _clusters in one write. */
    if (ret == 0)
        ret = roots_switch_refcount_table(img, rt_off, (uint32_t)t);
    if (ret < 0) {
        free(tbl);
        return ret;
    }
    refcount_adopt_table(img, tbl, t * (q->cluster_size / 8));
    meta_reset(img);
    return 0;
}

int rebuild_refcounts_width(qimg_image *img, unsigned order,
                            const uint8_t *refs, uint64_t nb_refs,
                            uint64_t *rt_off, uint32_t *rt_clusters)
{
    uint64_t t;
    uint8_t *tbl = NULL;
    int ret = write_structure(img, width_of(img->q, order), refs, nb_refs, 0,
                              rt_off, &t, &tbl);

    if (ret == 0) {
        free(tbl);
        *rt_clusters = (uint32_t)t;
    }
    return ret;
}

int rebuild_set_incompat(qimg_image *img, uint64_t bits)
{
    int ret = qcow2_flush(img);

    return ret < 0 ? ret : roots_set_incompat(img, bits);
}

int rebuild_snapshot_table(qimg_image *img, const struct snap *snaps,
                           uint32_t n)
{
    struct qcow2 *q = img->q;
    uint64_t len, off = 0, old_off = q->hdr.snapshots_offset;
    uint64_t old_len = q->sn->nb_snaps ? q->sn->snap_table_size : 0;
    struct snap *copy = calloc(n ? n : 1, sizeof *copy);
    uint8_t *buf = NULL;
    int ret = copy ? 0 : qimg_err(ENOMEM, "Out of memory");

    for (uint32_t i = 0; ret == 0 && i < n; i++)
        ret = snap_copy(&copy[i], &snaps[i]);
    if (ret == 0)
        ret = snap_table_encode(q, snaps, n, &buf, &len);
    if (ret == 0 && len)
        ret = refcount_alloc(img, DIV_ROUND_UP(len, q->cluster_size), &off);
    if (ret == 0 && len)
        ret = file_pwrite(img, buf, len, off);
    /* 1 of 2: table and its refcounts durable before the header switch. */
    if (ret == 0)
        ret = qcow2_flush(img);
    if (ret == 0)
        ret = roots_switch_snapshot_table(img, n, off);
    /* 2 of 2: only now is the old table free. */
    if (ret == 0 && old_len && old_off)
        ret = refcount_dec_later(img, old_off, old_len, true);
    if (ret == 0)
        ret = qcow2_flush(img);
    free(buf);
    if (ret < 0) {
        for (uint32_t i = 0; i < n; i++)
            snap_free(&copy[i]);
        free(copy);
        return ret;
    }
    snaptable_adopt(img, copy, n, len);
    return 0;
}
