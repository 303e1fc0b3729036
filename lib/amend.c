/*
 * amend.c - the format changes of qemu-img amend: the version (compat),
 * the refcount width and the lazy-refcounts bit.
 *
 * qcow2-format.md §1 (v2 and v3 headers), §4 (refcount widths), §5.2 (v3
 * snapshot entries carry at least 16 bytes of extra data), §13 (a new
 * structure is durable before the header names it).
 *
 * Notes on the design:
 *  1. Every change ends in one write of header sector 0 (roots.c), which
 *     holds the version, the feature bits, the refcount order and the
 *     refcount table pointer together. Whatever the new header names is
 *     written and synced first, where the old image does not look: a new
 *     refcount structure past the end of the file. A power cut leaves the
 *     old image or the new one.
 *  2. QEMU changes the refcount width in place, block by block, and can be
 *     cut in half. Here the new structure is built whole from the old
 *     values (the old table and blocks counted 0: the switch frees them)
 *     and the old clusters are punched once the header names the new one.
 *  3. An upgrade whose snapshot entries lack v3's extra data first rewrites
 *     the snapshot table (txn.c), itself atomic: the image in between is
 *     the old one with a longer table.
 *  4. Everything QEMU refuses is refused before the first write.
 *  5. A downgrade's zero clusters are rewritten by amend_zero.c into the
 *     same new state, switched in by the same header write.
 */
#include "amend_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "file.h"
#include "flush.h"
#include "rebuild.h"
#include "refcount.h"
#include "roots.h"
#include "snaptable.h"
#include "txn.h"
#include "util.h"

/* ---- Refusals ------------------------------------------------------------ */

int amend_check(qimg_image *img, const struct amend_plan *p, uint64_t size)
{
    const struct qcow2 *q = img->q;
    const struct qcow2_header *h = &q->hdr;

    if (p->refcount_order != h->refcount_order && p->version < 3 &&
        p->refcount_order != 4)
        return qimg_err(EINVAL, "Refcount widths other than 16 bits require "
                                "compatibility level 1.1 or above (use "
                                "compat=1.1 or greater)");
    if (p->lazy && !(h->compatible & COMPAT_LAZY_REFCOUNTS) &&
        p->version < 3)
        return qimg_err(EINVAL, "Lazy refcounts only supported with "
                                "compatibility level 1.1 and above (use "
                                "compat=1.1 or greater)");
    if (p->version >= h->version)
        return 0;
    if (p->refcount_order != 4)
        return qimg_err(ENOTSUP, "compat=0.10 requires refcount_bits=16");
    if (h->incompatible & INCOMPAT_DATA_FILE)
        return qimg_err(ENOTSUP, "Cannot downgrade an image with a data "
                                 "file");
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++)
        if (q->sn->snaps[i].vm_state_size > UINT32_MAX ||
            q->sn->snaps[i].disk_size != size)
            return qimg_err(ENOTSUP, "Internal snapshots prevent downgrade "
                                     "of image");
    if (h->incompatible & ~(INCOMPAT_DIRTY | INCOMPAT_COMPRESSION))
        return qimg_err(ENOTSUP, "Cannot downgrade an image with "
                                 "incompatible features 0x%" PRIx64 " set",
                        (uint64_t)(h->incompatible & ~INCOMPAT_COMPRESSION));
    return 0;
}

/* ---- The new refcounts --------------------------------------------------- */

/* Punch what the old structure held (advisory: nothing names it now). */
static void drop_old_structure(qimg_image *img, const uint8_t *old_rt,
                               uint64_t entries, uint64_t rt_off,
                               uint64_t rt_clusters)
{
    uint64_t cs = img->q->cluster_size;

    for (uint64_t i = 0; i < entries; i++) {
        uint64_t off = be64_load(old_rt + i * 8) & RT_OFFSET_MASK;
        if (off)
            file_discard_quiet(img, off, cs);
    }
    file_discard_quiet(img, rt_off, rt_clusters * cs);
}

/* ---- The change ---------------------------------------------------------- */

int amend_format(qimg_image *img, const struct amend_plan *p)
{
    struct qcow2 *q = img->q;
    const struct qcow2_header *h = &q->hdr;
    struct roots_format f = {
        .version = p->version,
        .refcount_order = p->refcount_order,
        .incompatible = h->incompatible & ~INCOMPAT_DIRTY,
        .compatible = p->lazy ? h->compatible | COMPAT_LAZY_REFCOUNTS
                              : h->compatible & ~COMPAT_LAZY_REFCOUNTS,
    };
    struct newrefs r = {0};
    uint8_t *old_rt = NULL;
    struct freelist freed = {0};
    uint64_t old_entries = 0;
    uint64_t old_rt_off, old_rt_clusters;
    /* v2 keeps no bitmaps (QEMU leaves them, leaked). */
    bool bitmaps = p->version < 3 && h->version >= 3 && h->has_bitmaps_ext;
    bool rebuild = p->refcount_order != h->refcount_order || p->expand ||
                   bitmaps;
    int ret = 0;

    if (p->version == h->version && !rebuild &&
        f.compatible == h->compatible)
        return 1;
    if (p->version < 3)
        f.incompatible = 0; /* zlib: the compression type goes too */
    /* v3 wants 16 bytes of extra data per snapshot entry. */
    for (uint32_t i = 0; p->version >= 3 && h->version < 3 &&
                         i < q->sn->nb_snaps; i++)
        if (q->sn->snaps[i].extra_size < 16) {
            ret = txn_snapshot_rewrite(img);
            break;
        }
    if (ret == 0)
        ret = qcow2_flush(img);
    /* (The rewrite may have moved the refcount table.) */
    f.rt_off = old_rt_off = h->refcount_table_offset;
    f.rt_clusters = old_rt_clusters = h->refcount_table_clusters;
    f.l1_off = h->l1_table_offset;
    f.snap_off = h->snapshots_offset;
    if (ret == 0 && rebuild)
        ret = newrefs_load(img, p->refcount_order, &r);
    /* What is new goes past everything a root names, even past the end
     * of the file (a table there reads as zeros). */
    if (ret == 0 && rebuild) {
        uint64_t end = newrefs_roots_end(img);
        ret = nr_reserve(&r, end);
        r.used = MAX(r.used, end);
    }
    if (ret == 0 && rebuild) {
        old_entries = q->rc->rt_entries;
        old_rt = malloc(old_entries * 8 + 1);
        if (!old_rt)
            ret = qimg_err(ENOMEM, "Out of memory");
        else
            memcpy(old_rt, q->rc->rt, old_entries * 8);
    }
    if (ret == 0 && p->expand)
        ret = amend_expand_zero(img, &r, &f, &freed);
    if (ret == 0 && bitmaps)
        ret = amend_drop_bitmaps(img, &r, &freed);
    if (ret == 0 && rebuild)
        ret = rebuild_refcounts_width(img, p->refcount_order, r.refs, r.used,
                                      &f.rt_off, &f.rt_clusters);
    free(r.refs);
    if (ret == 0)
        ret = roots_set_format(img, &f);
    if (ret == 0 && rebuild)
        drop_old_structure(img, old_rt, old_entries, old_rt_off,
                           old_rt_clusters);
    for (size_t i = 0; ret == 0 && i < freed.n; i++)
        file_discard_quiet(img, freed.v[i], q->cluster_size);
    free(freed.v);
    free(old_rt);
    return ret;
}
