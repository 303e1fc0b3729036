/*
 * check_snaptable.c - the snapshot table as a check sees it: read (with
 * QEMU's limits and, with -r all, its repairs), checked, and rewritten
 * when it needs fixing (check.c, note 3; qcow2-format.md §5).
 *
 * Owns struct chk_snaptable: the snapshots read, where the table is, and
 * what rewriting it would fix. Decoding the table is snaptable.c's, writing
 * the new one rebuild.c's; the snapshots' L1 trees are walked by
 * check_walk.c.
 */
#include "check_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Table size and offset as QEMU validates them; nonzero if unusable. */
static int validate_snapshot_table(struct chk *c, uint32_t n, uint64_t off)
{
    const char *why = NULL;
    int ret;

    if (n > QCOW_MAX_SNAPSHOTS)
        why = "snapshot table too large";
    else if ((uint64_t)INT64_MAX - n * 40ull < off ||
             !IS_ALIGNED(off, c->q->cluster_size))
        why = "snapshot table offset invalid";
    if (!why)
        return 0;
    c->res->check_errors++;
    ret = findings_add(c, "snapshot-table-unreadable", true, NULL, "ERROR %s",
                       why);
    if (ret == 0 && n > QCOW_MAX_SNAPSHOTS)
        ret = findings_add(c, "snapshot-table", false, NULL,
                           "You can force-remove all %u overhanging snapshots "
                           "with qemu-img check -r all",
                           n - QCOW_MAX_SNAPSHOTS);
    return ret < 0 ? ret : n > QCOW_MAX_SNAPSHOTS ? -EFBIG : -EINVAL;
}

static int snapshot_table_unreadable(struct chk *c, int err)
{
    const char *msg = qimg_last_error()->message;
    int ret;

    c->res->check_errors++;
    ret = findings_add(c, "snapshot-table-unreadable", true, NULL,
                       "ERROR failed to read the snapshot table: %s", msg);
    if (ret == 0 && !strncmp(msg, "Too much extra metadata", 23))
        ret = findings_add(c, "snapshot-table", false, NULL,
                           "You can force-remove this extra metadata with "
                           "qemu-img check -r all");
    return ret < 0 ? ret : err;
}

/* What reading the table found (and, with -r all, dropped). */
static int snapshot_read_findings(struct chk *c, const struct snap_read *rd)
{
    struct chk_snaptable *t = &c->snaptab;
    int ret = 0;

    for (size_t i = 0; i < rd->nb_drop && ret == 0; i++) {
        /* As QEMU, the overlong extra data is cut to the known fields. */
        t->snaps[rd->drop_idx[i]].extra_size = 24;
        ret = findings_add(
            c, "snapshot-table", false, NULL,
            "Discarding too much extra metadata in snapshot table "
            "entry %u (%u > %u)",
            rd->drop_idx[i], rd->drop_size[i], QCOW_MAX_SNAPSHOT_EXTRA);
    }
    if (ret == 0 && rd->overhang)
        ret = findings_add(
            c, "snapshot-table", false, NULL,
            "Discarding %u overhanging snapshots (snapshot table is "
            "too big)",
            rd->overhang);
    /* The discarded snapshots count as fixed at once (QEMU writes the
     * header then); the rest is fixed by rewriting the table. */
    c->res->corruptions_fixed += rd->overhang;
    t->corruptions = (int64_t)rd->nb_drop;
    for (uint32_t i = 0; i < t->nb_snaps && ret == 0; i++) {
        if (c->q->hdr.version < 3 || t->snaps[i].extra_size >= 16)
            continue;
        t->corruptions++;
        ret = findings_add(
            c, "snapshot-table", true, NULL,
            "%s snapshot table entry %u is incomplete",
            c->fix & QIMG_CHECK_FIX_ERRORS ? "Repairing" : "ERROR", i);
    }
    c->res->corruptions += t->corruptions;
    return ret;
}

int chk_snaptable_read(struct chk *c)
{
    struct qcow2 *q = c->q;
    struct chk_snaptable *t = &c->snaptab;
    struct snap_read rd = {0};
    uint32_t n = q->hdr.nb_snapshots;
    uint64_t off = q->hdr.snapshots_offset;
    int ret;

    rd.repair = c->fix & QIMG_CHECK_FIX_ERRORS;
    if (n > QCOW_MAX_SNAPSHOTS && rd.repair) {
        ret = findings_add(c, "snapshot-table", false, NULL,
                           "Discarding %u overhanging snapshots",
                           n - QCOW_MAX_SNAPSHOTS);
        if (ret < 0)
            return ret;
        c->res->corruptions_fixed += n - QCOW_MAX_SNAPSHOTS;
        n = QCOW_MAX_SNAPSHOTS;
    }
    ret = validate_snapshot_table(c, n, off);
    if (ret)
        return ret;
    ret = snap_table_read(c->img, off, n, &rd, &t->snaps, &t->nb_snaps,
                          &t->size);
    if (ret < 0)
        return snapshot_table_unreadable(c, ret);
    t->off = t->nb_snaps ? off : 0;
    t->dirty = rd.overhang || n != q->hdr.nb_snapshots;
    return snapshot_read_findings(c, &rd);
}

int chk_snaptable_fix(struct chk *c)
{
    struct qcow2 *q = c->q;
    struct chk_snaptable *t = &c->snaptab;
    bool had_table = q->sn->nb_snaps > 0;
    int ret;

    if (!(c->fix & QIMG_CHECK_FIX_ERRORS) || (!t->corruptions && !t->dirty))
        return 0;
    for (uint32_t i = 0; i < t->nb_snaps; i++) {
        if (q->hdr.version < 3 || t->snaps[i].extra_size >= 16)
            continue;
        /* As QEMU: the known fields, with this disk's size. */
        t->snaps[i].disk_size = c->img->size;
        t->snaps[i].icount = UINT64_MAX;
    }
    ret = rebuild_snapshot_table(c->img, t->snaps, t->nb_snaps);
    /* Opened for check, the library had not loaded the old table, so it
     * is freed here, once the header no longer points at it. */
    if (ret == 0 && !had_table && t->size && t->off)
        ret = refcount_dec_later(c->img, t->off, t->size, true);
    if (ret == 0 && !had_table)
        ret = qcow2_flush(c->img);
    if (ret < 0) {
        c->res->check_errors++;
        qimg_error_clear();
        findings_add(c, "snapshot-table", true, NULL,
                     "ERROR failed to update snapshot table: %s",
                     strerror(-ret));
        return ret;
    }
    c->res->corruptions -= t->corruptions;
    c->res->corruptions_fixed += t->corruptions;
    t->corruptions = 0;
    c->disk.equal = false; /* the old table's clusters were freed */
    return 1;
}

void chk_snaptable_free(struct chk *c)
{
    struct chk_snaptable *t = &c->snaptab;

    for (uint32_t i = 0; i < t->nb_snaps; i++)
        snap_free(&t->snaps[i]);
    free(t->snaps);
}
