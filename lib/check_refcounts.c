/*
 * check_refcounts.c - the refcounts on disk: compared with the expected
 * ones, repaired in place, or rebuilt (check.c, notes 1 and 3;
 * qcow2-format.md §4.1, §4.2).
 *
 * Owns struct chk_disk: the refcount block being compared and what the
 * comparisons found. The expected counts come from check_walk.c; the new
 * refcount structures of a rebuild are written by rebuild.c.
 */
#include "check_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

int disk_init(struct chk *c)
{
    c->disk.rb_idx = UINT64_MAX;
    c->disk.rbbuf = malloc(c->q->cluster_size);
    return c->disk.rbbuf ? 0 : -ENOMEM;
}

void disk_free(struct chk *c)
{
    free(c->disk.rbbuf);
}

/* Forget the refcount block in c->disk.rbbuf: its refcounts may have been
 * repaired. */
void disk_forget(struct chk *c)
{
    c->disk.rb_idx = UINT64_MAX;
}

/* The refcount structures must be rebuilt: the walk met a refcount block
 * that needs it, or a comparison a referenced cluster with refcount 0. */
static bool need_rebuild(const struct chk *c)
{
    return c->walk.need_rebuild || c->disk.rebuild;
}

/* QEMU's notice when it meets an unusable refcount block; printed once.
 * On a writable image QEMU also sets the corrupt bit (so does qimg; a
 * successful repair clears it again). */
static void signal_corruption(struct chk *c, uint64_t off, uint64_t rt_idx)
{
    bool fatal = c->img->read_write;

    if (c->disk.signaled || c->find.quiet)
        return;
    c->disk.signaled = true;
    findings_add(c, "corrupt", true, NULL,
                 "qcow2: %s: Refblock offset %#" PRIx64 " unaligned (reftable "
                 "index: %#" PRIx64 "); further %scorruption events will be "
                 "suppressed",
                 fatal ? "Marking image as corrupt" : "Image is corrupt", off,
                 rt_idx, fatal ? "" : "non-fatal ");
    if (fatal && rebuild_set_incompat(c->img, c->q->hdr.incompatible |
                                                  INCOMPAT_CORRUPT) < 0)
        qimg_error_clear();
}

/* disk_block() for a block that is not the one in c->disk.rbbuf. */
int disk_block_load(struct chk *c, uint64_t rt_idx)
{
    struct qcow2 *q = c->q;
    struct chk_disk *d = &c->disk;
    uint64_t off =
        rt_idx < q->rc->rt_entries ? chk_rt_raw(c, rt_idx) & RT_OFFSET_MASK : 0;

    d->rb_idx = rt_idx;
    d->rb_unreadable = false;
    if (!off) {
        memset(d->rbbuf, 0, q->cluster_size);
        return d->rb_state = 0;
    }
    if (!IS_ALIGNED(off, q->cluster_size)) {
        signal_corruption(c, off, rt_idx);
        return d->rb_state = -EIO;
    }
    d->rb_state = file_pread(c->img, d->rbbuf, q->cluster_size, off) < 0
                      ? -EIO
                      : 1;
    if (d->rb_state < 0) {
        qimg_error_clear();
        d->rb_unreadable = true;
    }
    return d->rb_state;
}

/* Set the on-disk refcount of cluster i from r1 to r2 (r1 > 0). */
static int repair_refcount(struct chk *c, uint64_t i, uint64_t r1, uint64_t r2)
{
    int ret = refcount_update(c->img, i, 1, (int64_t)(r2 - r1));

    if (ret == 0 && r2 == 0)
        ret = file_discard(c->img, i << c->q->cluster_bits,
                                 c->q->cluster_size);
    if (ret == 0)
        ret = refcount_flush(c->img);
    if (ret < 0) {
        /* Counted as not repaired (as QEMU), and as an error: I/O. */
        c->res->check_errors++;
        ret = findings_add(c, "io", true, NULL,
                           "ERROR could not repair cluster %" PRIu64 ": %s", i,
                           qimg_last_error()->message);
        return ret < 0 ? ret : 1;
    }
    return 0;
}

/* Cluster i has refcount r1 on disk but r2 references: report it, and
 * with fix, correct it (a refcount of 0 asks for a rebuild instead). */
static int mismatch(struct chk *c, uint64_t i, uint64_t r1, uint64_t r2,
                    unsigned fix)
{
    int64_t *fixed = NULL;
    int ret;

    if (r1 == 0)
        c->disk.rebuild = true;
    else if (r1 > r2 && (fix & QIMG_CHECK_FIX_LEAKS))
        fixed = &c->res->leaks_fixed;
    else if (r1 < r2 && (fix & QIMG_CHECK_FIX_ERRORS))
        fixed = &c->res->corruptions_fixed;
    ret = findings_add(c, r1 < r2 ? "refcount" : "leak", r1 < r2, NULL,
                       "%s cluster %" PRIu64 " refcount=%" PRIu64
                       " reference=%" PRIu64,
                       fixed ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked", i,
                       r1, r2);
    if (ret == 0)
        ret = findings_dispute(c, i);
    if (ret == 0 && fixed)
        ret = repair_refcount(c, i, r1, r2);
    if (ret < 0)
        return ret;
    if (fixed && ret == 0)
        (*fixed)++;
    else if (r1 < r2)
        c->res->corruptions++;
    else
        c->res->leaks++;
    return 0;
}

/* The highest cluster in [start, end) with a computed reference, or
 * UINT64_MAX; whole bytes of the table are scanned from the end. */
static uint64_t last_referenced(const struct chk *c, uint64_t start,
                                uint64_t end)
{
    unsigned order = c->q->refcount_order;
    uint64_t b = (end << order) / 8, b0 = (start << order) / 8;

    for (uint64_t i = end; i > start && (i << order) % 8; i--)
        if (walk_ref_get(c, i - 1))
            return i - 1;
    while (b > b0 && !c->walk.refs[b - 1])
        b--;
    for (uint64_t i = MIN(end, (b * 8) >> order); i > start; i--)
        if (walk_ref_get(c, i - 1))
            return i - 1;
    return UINT64_MAX;
}

/* Clusters [start, end) of refcount block rt_idx: true if the computed
 * counts equal the block's, byte for byte (then there is nothing to
 * report and *highest is updated). */
static bool block_equal(struct chk *c, uint64_t rt_idx, uint64_t start,
                        uint64_t end, uint64_t *highest)
{
    unsigned order = c->q->refcount_order;
    uint64_t first = (start << order) / 8, n = ((end - start) << order) / 8;
    uint64_t last;

    if (disk_block(c, rt_idx) < 0 ||
        memcmp(c->walk.refs + first, c->disk.rbbuf, n))
        return false;
    for (uint64_t i = start + ((n * 8) >> order); i < end; i++) {
        uint64_t r1 = refblock_get(c->disk.rbbuf, i - start, order);
        if (r1 != walk_ref_get(c, i))
            return false;
    }
    last = last_referenced(c, start, end);
    if (last != UINT64_MAX)
        *highest = last;
    return true;
}

/* Compare computed and on-disk refcounts; with fix, correct them. */
static int compare(struct chk *c, unsigned fix, uint64_t *highest)
{
    uint64_t per_block = 1ull << c->q->rb_bits;
    int64_t before = c->res->corruptions + c->res->leaks +
                     c->res->check_errors;
    size_t msgs = c->res->nb_msgs;
    int ret = 0;

    *highest = 0;
    c->disk.rb_idx = UINT64_MAX;
    /* As QEMU: references up to a cluster past the end of the file grew
     * the table, and are compared too. */
    for (uint64_t i = 0; i < c->walk.nb_refs && ret == 0; i++) {
        uint64_t r1, r2;

        if (i % per_block == 0) {
            uint64_t end = MIN(i + per_block, c->walk.nb_refs);
            if (block_equal(c, i >> c->q->rb_bits, i, end, highest)) {
                i = end - 1;
                continue;
            }
        }
        r2 = walk_ref_get(c, i);

        if (disk_refcount(c, i, &r1) < 0) {
            c->res->check_errors++;
            c->disk.rc_errors += !c->disk.rb_unreadable;
            ret = findings_add(c, "io", true, NULL,
                               "Can't get refcount for cluster %" PRIu64 ": %s",
                               i, "Input/output error");
            continue;
        }
        if (r1 || r2)
            *highest = i;
        if (r1 != r2)
            ret = mismatch(c, i, r1, r2, fix);
    }
    c->disk.equal = ret == 0 && c->res->nb_msgs == msgs &&
                    c->res->corruptions + c->res->leaks +
                            c->res->check_errors == before;
    return ret;
}

/* After a rebuild, compare against the new structure as QEMU does: with
 * -r leaks, counting only leaks that could not be fixed ("fresh" ones);
 * what else the comparison finds is printed but not counted (except, unlike
 * QEMU, refcounts it could not read: an I/O error stays an error). */
static int recheck_rebuilt(struct chk *c, uint64_t *highest, int64_t *fresh)
{
    struct qimg_check_result saved = *c->res, *r = c->res;
    int ret;

    r->corruptions = r->leaks = r->check_errors = 0;
    r->corruptions_fixed = r->leaks_fixed = 0;
    ret = compare(c, QIMG_CHECK_FIX_LEAKS, highest);
    if (ret == 0 && need_rebuild(c))
        ret = findings_add(c, "rebuild", true, NULL,
                           "ERROR rebuilt refcount structure is still broken");
    *fresh = r->leaks;
    saved.check_errors += r->check_errors;
    findings_restore_counts(c, &saved);
    return ret;
}

/* The new refcount structure is checked against the census of live
 * metadata, where the image lets one be taken (roots inside the file, no
 * active L2 table named twice: a verdict on the image, not an error of the
 * repair); qimg_image_check drops it at the end, as the repair changed
 * what it describes. */
int check_census(qimg_image *img)
{
    int ret;

    meta_reset(img);
    ret = metaset_build(img);
    if (ret < 0 && qimg_last_error()->where[0]) {
        qimg_error_clear();
        ret = 0;
    }
    return ret;
}

/* Replace the refcount structures by ones built from the computed table,
 * then recount (as QEMU does, reporting what the walk finds again). */
static int rebuild(struct chk *c, uint64_t *highest)
{
    struct qimg_check_result *r = c->res;
    /* Snapshot table findings are counted apart, as QEMU does: the recount
     * does not see them, so they must not be mistaken for fixed. */
    int64_t snap = c->snaptab.corruptions;
    int64_t old_corruptions = r->corruptions - snap, old_leaks = r->leaks;
    int64_t fresh = 0;
    int ret;

    ret = findings_add(c, "rebuild", false, NULL,
                       "Rebuilding refcount structure");
    if (ret < 0)
        return ret;
    walk_drop_old_structures(c);
    ret = check_census(c->img);
    if (ret == 0)
        ret = rebuild_refcounts(c->img, c->walk.refs, c->walk.nb_refs,
                                c->walk.past_end);
    if (ret < 0) {
        r->check_errors++;
        findings_add(c, "rebuild-failed", true, NULL, "ERROR %s",
                     qimg_last_error()->message);
        return ret;
    }
    /* Unusable refcount blocks (bad offsets) are replaced: no longer an
     * error. Failed reads stay errors. */
    r->check_errors -= c->disk.rc_errors;
    c->disk.rc_errors = 0;
    r->corruptions = 0;
    r->leaks = 0;
    c->disk.rebuild = false;
    walk_set_file_size(c, c->q->file_size);
    ret = walk_calculate(c, false);
    if (ret == 0)
        ret = recheck_rebuilt(c, highest, &fresh);
    if (ret < 0)
        return ret;
    if (r->corruptions < old_corruptions)
        r->corruptions_fixed += old_corruptions - r->corruptions;
    if (r->leaks < old_leaks)
        r->leaks_fixed += old_leaks - r->leaks;
    r->leaks += fresh;
    r->corruptions += snap;
    return 0;
}

/* Compare the on-disk refcounts with the walk's; repair them as c->fix
 * allows. */
int disk_check(struct chk *c)
{
    struct qimg_check_result pre;
    uint64_t highest = 0;
    int ret;

    c->res->total_clusters =
        (int64_t)DIV_ROUND_UP(c->img->size, c->q->cluster_size);
    ret = walk_calculate(c, c->fix & QIMG_CHECK_FIX_ERRORS);
    if (ret < 0)
        return ret;
    pre = *c->res;
    ret = compare(c, 0, &highest);
    if (ret < 0)
        return ret;
    if (need_rebuild(c) && (c->fix & QIMG_CHECK_FIX_ERRORS)) {
        ret = rebuild(c, &highest);
    } else if (c->fix) {
        if (need_rebuild(c)) {
            c->res->check_errors++;
            findings_add(c, "rebuild", true, NULL,
                         "ERROR need to rebuild refcount structures");
            return -EIO;
        }
        if (c->res->leaks || c->res->corruptions) {
            int64_t errors = c->res->check_errors;
            findings_restore_counts(c, &pre);
            ret = compare(c, c->fix, &highest);
            /* A read that failed only the first time is still an error. */
            c->res->check_errors = MAX(c->res->check_errors, errors);
        }
    }
    c->res->image_end_offset = (int64_t)((highest + 1) * c->q->cluster_size);
    return ret;
}
