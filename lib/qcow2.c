/*
 * qcow2.c - opening and closing a qcow2 image: validation against the
 * file and QEMU's limits, geometry, the tables' state, and the hooks that
 * let a lower layer reach a higher one without calling it by name.
 *
 * qcow2-format.md §1 (limits), §7 (a dirty image is repaired on a
 * read-write open). The header is read by roots.c; the tables by their
 * modules (l1l2.c, refcount.c, snaptable.c).
 *
 * Notes on the design:
 *  1. Opening never writes (but the repair of a dirty image, as QEMU).
 *  2. The hooks: a full metadata cache writes dirty metadata back through
 *     the flush order (flush.c); a freed cluster leaves the L2 cache
 *     (l1l2.c) though refcount.c frees it.
 */
#include "qcow2.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "check.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "l1l2.h"
#include "meta.h"
#include "refcount.h"
#include "roots.h"
#include "snaptable.h"
#include "txn.h"
#include "util.h"

/* QEMU's qcow2_validate_table(): count, alignment, 63-bit range. */
static int validate_table(const struct qcow2 *q, uint64_t off,
                          uint64_t entries, uint64_t entry_len,
                          uint64_t max_bytes, const char *what)
{
    if (entries > max_bytes / entry_len)
        return qimg_err(EFBIG, "%s too large", what);
    if ((uint64_t)INT64_MAX - entries * entry_len < off ||
        !IS_ALIGNED(off, q->cluster_size))
        return qimg_err(EINVAL, "%s offset invalid", what);
    return 0;
}

static void set_geometry(struct qcow2 *q)
{
    const struct qcow2_header *h = &q->hdr;

    q->cluster_bits = h->cluster_bits;
    q->cluster_size = 1ull << h->cluster_bits;
    q->ext_l2 = h->incompatible & INCOMPAT_EXTL2;
    q->l2_entry_size = q->ext_l2 ? 16 : 8;
    q->l2_bits = h->cluster_bits - (q->ext_l2 ? 4 : 3);
    q->l2_entries = 1ull << q->l2_bits;
    q->sc_bits = q->ext_l2 ? h->cluster_bits - 5 : h->cluster_bits;
    q->refcount_order = h->refcount_order;
    q->rb_bits = h->cluster_bits + 3 - h->refcount_order;
    q->refcount_max = h->refcount_order == 6
                          ? UINT64_MAX
                          : (1ull << (1u << h->refcount_order)) - 1;
    q->csize_shift = 62 - (h->cluster_bits - 8);
    q->csize_mask = (1ull << (h->cluster_bits - 8)) - 1;
    q->coff_mask = (1ull << q->csize_shift) - 1;
}

static int check_tables(const struct qcow2 *q, bool for_check)
{
    const struct qcow2_header *h = &q->hdr;
    uint64_t span, needed;
    int ret;

    if (h->refcount_table_clusters == 0 && !for_check)
        return qimg_err(EINVAL,
                        "Image does not contain a reference count table");
    ret = validate_table(q, h->refcount_table_offset,
                         h->refcount_table_clusters, q->cluster_size,
                         8ull << 20, "Reference count table");
    if (ret == 0 && !for_check) /* check reports a bad table itself */
        ret = validate_table(q, h->snapshots_offset, h->nb_snapshots, 40,
                             40ull * QCOW_MAX_SNAPSHOTS, "Snapshot table");
    if (ret == 0)
        ret = validate_table(q, h->l1_table_offset, h->l1_size, 8,
                             QCOW_MAX_L1_SIZE, "Active L1 table");
    if (ret < 0)
        return ret;
    span = 1ull << (q->cluster_bits + q->l2_bits);
    needed = h->size / span + (h->size % span != 0);
    if (needed > INT32_MAX)
        return qimg_err(EFBIG, "Image is too big");
    if (h->l1_size < needed)
        return qimg_err(EINVAL, "L1 table is too small");
    return 0;
}

int qcow2_open(qimg_image *img, const struct qimg_open_opts *o)
{
    struct qcow2 *q = calloc(1, sizeof *q);
    int ret;

    if (!q)
        return qimg_err(ENOMEM, "Out of memory");
    img->q = q;
    ret = file_size_init(img);
    if (ret == 0)
        ret = roots_load(img, o->read_write && !o->for_check,
                         o->no_io && !o->read_write);
    if (ret < 0)
        return ret;
    set_geometry(q);
    ret = check_tables(q, o->for_check);
    if (ret < 0)
        return ret;
    roots_set_size(img, q->hdr.size);
    ret = meta_init(img);
    if (ret == 0)
        ret = l1_init(img);
    if (ret == 0)
        ret = refcount_init(img);
    if (ret == 0)
        ret = snaptable_init(img, !o->for_check);
    if (ret < 0)
        return ret;
    l1_set_hook(img, qcow2_flush_hook);
    refcount_set_hooks(img, qcow2_flush_hook, l2_cache_forget);
    if ((q->hdr.incompatible & INCOMPAT_DIRTY) && img->read_write &&
        !o->for_check)
        ret = check_repair_dirty(img);
    return ret;
}

int qcow2_store_bitmaps(qimg_image *img)
{
    struct bitmap_set *s = bitmap_track_take(img);
    int ret = 0;

    if (!s)
        return 0;
    if (!roots_is_corrupt(img))
        ret = txn_bitmaps_store(img, s);
    bitmap_set_free(s);
    free(s);
    return ret;
}

void qcow2_close(qimg_image *img)
{
    struct qcow2 *q = img->q;

    if (!q)
        return;
    bitmap_track_free(img);
    header_free(&q->hdr);
    snaptable_free(img);
    refcount_free(img);
    l1_free(img);
    meta_free(img);
    free(q);
    img->q = NULL;
}

int qcow2_reopen(qimg_image *img)
{
    struct qimg_open_opts o = {.read_write = img->read_write};
    struct qcow2 *old = img->q, *fresh;
    int ret = qcow2_flush(img);

    if (ret < 0)
        return ret;
    img->q = NULL;
    ret = qcow2_open(img, &o);
    fresh = img->q;
    if (ret < 0) {
        /* The old state still reads the guest data (an amend moves
         * none), but would write with the old format: reads only. */
        qcow2_close(img);
        file_set_read_only(img);
        img->q = old;
        return ret;
    }
    img->q = old;
    qcow2_close(img);
    img->q = fresh;
    return 0;
}

int qcow2_open_view(qimg_image *img, const char *spec)
{
    struct qcow2 *q = img->q;
    int idx = snap_lookup(q, spec);
    const struct snap *s;
    uint8_t *l1;
    int ret;

    if (idx < 0)
        return qimg_err(ENOENT, "Can't find snapshot");
    s = &q->sn->snaps[idx];
    ret = snap_check_l1(img, s);
    if (ret < 0)
        return ret;
    ret = file_read_table(img, &l1, s->l1_off,
                          s->l1_size ? (size_t)s->l1_size * 8 : 8,
                          "Snapshot L1 table");
    if (ret < 0)
        return ret;
    l1_adopt(img, l1, s->l1_size);
    roots_set_size(img, s->disk_size);
    file_set_read_only(img);
    return 0;
}
