/*
 * txn.c - atomic snapshot operations: create, apply (goto), delete.
 *
 * qcow2-format.md §3.7 (COPIED), §4.1 (what is counted), §5.5 (what each
 * operation does to refcounts, and the shadow-metadata way to commit it).
 * snapapi.c validates requests and snaptable.c owns the table codec; this
 * file (with txn_*.c) builds the new image state beside the old one and
 * switches to it.
 *
 * The transaction is split by concept, each file owning one part of
 * struct txn (lib/txn_impl.h): txn_refs.c the new refcounts, txn_place.c
 * where the new refcount structures go, txn_space.c the free-space policy
 * and what the commit frees, txn_tables.c reading and counting L1/L2
 * tables and their COPIED flags, txn_wbuf.c the write buffer. This file holds the three operations, the snapshot table and
 * L1 tables they write, the commit, and the transaction's life cycle.
 *
 * Notes on the design:
 *  1. An operation replaces some L1 tables by others (create adds the
 *     snapshot's L1 and rewrites the active one, delete drops one, apply
 *     replaces the active one). Every L1 pointer that appears or disappears
 *     adds or removes one reference to its L2 table and one to each cluster
 *     that table maps (§4.1 items 3-5). Pointers that stay cost nothing,
 *     which makes re-applying an unchanged snapshot nearly free.
 *  2. The new refcounts live in memory as whole copies of the refcount
 *     blocks that change. Nothing on disk that the old state uses is ever
 *     written: changed L2 tables, L1 tables, the snapshot table, refcount
 *     blocks and the refcount table all get new copies in clusters that
 *     are free in the old state (and are counted in the new one).
 *  3. Write order: (a) everything new, (b) fdatasync, (c) one 512-byte write
 *     of header sector 0, which holds every root pointer (size, l1_size,
 *     l1_table_offset, refcount_table_offset/_clusters, nb_snapshots,
 *     snapshots_offset), (d) fdatasync, (e) discard clusters only the old
 *     state used. A power cut leaves exactly the old or the new image.
 *  4. What the operation reads is validated as it is counted, and every
 *     reference is counted before the first new structure is made. The
 *     write buffer holds what is made (up to 64 MiB) until the last count
 *     (the refcount structures' own) is done, so a refusal (a bad entry,
 *     a refcount at its maximum or below a reference, metadata where a
 *     data entry points) leaves the file byte for byte as it was.
 */
#include "txn_impl.h"

#include "bitmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* ---- Placing and writing the new metadata ------------------------------ */

static int write_table(struct txn *t, const uint8_t *buf, uint64_t len,
                       uint64_t *off)
{
    int ret;

    if (len == 0) {
        *off = 0;
        return 0;
    }
    ret = txn_space_alloc(t, DIV_ROUND_UP(len, t->cs), off);
    return ret < 0 ? ret : txn_wbuf_write(t, buf, len, *off);
}

/* The new root pointers, all in header sector 0. */
struct roots {
    uint64_t size;
    struct new_l1 *active; /* NULL: the active L1 is unchanged */
    uint32_t nb_snaps;
    uint64_t snap_off;
    bool trim; /* cut the file's tail once committed (a shrink) */
    /* A resize keeps the old active tables at L1 index < kept_l1 (table
     * cut_idx up to entry cut_from): checked against what it frees. */
    uint32_t kept_l1;
    uint64_t cut_idx, cut_from;
    /* A new set of bitmaps, staged (NULL: the bitmaps stay). */
    const struct roots_bitmaps *bm;
};

/* The root pointers the operation switches to. */
static struct qcow2_roots new_roots(const struct txn *t, const struct roots *r)
{
    struct qcow2_roots nr = {
        .size = r->size,
        .has_l1 = r->active != NULL,
        .l1_off = r->active ? r->active->off : 0,
        .l1_size = r->active ? r->active->size : 0,
        .rt_off = t->place.rt_off,
        .rt_clusters = (uint32_t)t->place.rt_clusters,
        .nb_snaps = r->nb_snaps,
        .snap_off = r->snap_off,
    };

    return nr;
}

/* Hand the committed state to the modules that own it; their caches
 * start empty. Cannot fail: the header already says this is the image. */
static void adopt(struct txn *t, const struct roots *r,
                  const struct qcow2_roots *nr, struct snap *snaps,
                  uint64_t snap_size)
{
    qimg_image *img = t->img;
    uint64_t rt_entries = t->place.rt_clusters * t->cs / 8;

    if (r->active) {
        l1_adopt(img, r->active->buf, r->active->size);
        r->active->buf = NULL;
    } else {
        l1_adopt(img, NULL, 0);
    }
    refcount_adopt_table(img, txn_place_take_table(t), rt_entries);
    snaptable_adopt(img, snaps, r->nb_snaps, snap_size);
    roots_adopt(img, nr);
    file_extend(img, t->space.scan * t->cs);
    meta_reset(img);
}

static void txn_free(struct txn *t)
{
    txn_refs_free(t);
    txn_place_free(t);
    txn_space_free(t);
    txn_wbuf_free(t);
    txn_tables_free(t);
}

/* preload: the operation will count most of the image (create, delete),
 * so the live-metadata check loads the refcount blocks it reads into the
 * operation's copies, and they are read once. */
static int txn_init(struct txn *t, qimg_image *img, bool preload)
{
    struct qcow2 *q = img->q;
    int ret;

    memset(t, 0, sizeof *t);
    t->img = img;
    t->q = q;
    t->cs = q->cluster_size;
    txn_space_init(t); /* before rb_get runs (preload) */
    if (q->hdr.incompatible & (INCOMPAT_CORRUPT | INCOMPAT_DIRTY))
        return qimg_err(EIO, "Image is corrupt or dirty; repair it first");
    ret = qcow2_flush(img);
    if (ret == 0)
        ret = metaset_check_counted(img,
                                    preload ? txn_tables_old_refcount : NULL,
                                    t);
    if (ret < 0)
        return ret;
    ret = txn_tables_init(t);
    if (ret == 0)
        ret = txn_space_setup(t);
    if (ret == 0)
        ret = txn_wbuf_init(t);
    return ret;
}

/* Validate every snapshot's L1 location and the tables they point at. */
struct l1_ref {
    uint64_t off;
    uint32_t idx;
};

static int cmp_l1_ref(const void *a, const void *b)
{
    const struct l1_ref *x = a, *y = b;

    if (x->off != y->off)
        return x->off < y->off ? -1 : 1;
    return (x->idx > y->idx) - (x->idx < y->idx);
}

/* Every snapshot's L1 table is valid, and no two share one (the first
 * entry naming a table is reported with the first that shares it). */
static int check_snapshots(struct txn *t, const struct snap *snaps,
                           uint32_t n)
{
    struct l1_ref *order = malloc((n ? n : 1) * sizeof *order);
    uint32_t *dup = malloc((n ? n : 1) * sizeof *dup);
    int ret = 0;

    if (!order || !dup) {
        free(order);
        free(dup);
        return qimg_err(ENOMEM, "Out of memory");
    }
    for (uint32_t i = 0; i < n; i++) {
        order[i] = (struct l1_ref){snaps[i].l1_off, i};
        dup[i] = UINT32_MAX;
    }
    qsort(order, n, sizeof *order, cmp_l1_ref);
    for (uint32_t k = 1, first = 0; k < n; k++) {
        if (order[k].off != order[first].off)
            first = k;
        else if (snaps[order[k].idx].l1_size)
            dup[order[k].idx] = order[first].idx;
    }
    for (uint32_t i = 0; ret == 0 && i < n; i++) {
        ret = snap_check_l1(t->img, &snaps[i]);
        if (ret == 0 && dup[i] != UINT32_MAX)
            ret = qimg_err(EINVAL, "Snapshots %s and %s share an L1 table",
                           snaps[dup[i]].id, snaps[i].id);
    }
    free(order);
    free(dup);
    return ret;
}

static int read_snap_l1(struct txn *t, const struct snap *s, uint8_t **out)
{
    int ret = file_read_table(t->img, out, s->l1_off,
                               s->l1_size ? (size_t)s->l1_size * 8 : 8,
                               "Snapshot L1 table");

    if (ret == 0 && !s->l1_size)
        memset(*out, 0, 8);
    return ret == 0 ? txn_tables_check_l1(t, *out, s->l1_size) : ret;
}

/* Write the new snapshot table; the old one is released. */
static int write_snap_table(struct txn *t, struct snap *snaps, uint32_t n,
                            uint64_t *off, uint64_t *size)
{
    struct qcow2 *q = t->q;
    uint8_t *buf = NULL;
    int ret = 0;

    if (q->sn->nb_snaps)
        ret = txn_refs_add_range(t, q->hdr.snapshots_offset,
                                 q->sn->snap_table_size, -1);
    if (ret == 0 && q->sn->nb_snaps)
        ret = txn_space_meta_freed(t, q->hdr.snapshots_offset,
                                   q->sn->snap_table_size);
    if (ret == 0)
        ret = snap_table_encode(q, snaps, n, &buf, size);
    if (ret == 0 && *size > QCOW_MAX_SNAPSHOTS_SIZE)
        ret = qimg_err(EFBIG, "Snapshot table too large");
    if (ret == 0)
        ret = write_table(t, buf, *size, off);
    free(buf);
    return ret;
}

static int new_l1_alloc(struct new_l1 *l1, uint32_t size)
{
    l1->size = size;
    l1->buf = calloc(size ? size : 1, 8);
    return l1->buf ? 0 : qimg_err(ENOMEM, "Out of memory");
}

/* Redirect the new L1 tables to the L2 copies made, set their COPIED
 * flags and write them. l1s[0] is the new active table; it is kept in
 * place, unwritten, if it comes out unchanged. */
static int place_l1s(struct txn *t, struct roots *r, struct new_l1 **l1s,
                     size_t n)
{
    struct qcow2 *q = t->q;
    int ret = 0;

    for (size_t i = 0; ret == 0 && i < n; i++)
        ret = txn_tables_redirect(t, l1s[i]);
    for (size_t i = 0; ret == 0 && i < n; i++)
        ret = txn_tables_set_l1_flags(t, l1s[i]);
    if (ret < 0)
        return ret;
    if (r->active && r->active->size == q->l1s->l1_size &&
        !memcmp(r->active->buf, q->l1s->l1, (size_t)q->l1s->l1_size * 8))
        r->active = NULL; /* unchanged: stays where it is */
    else if (r->active && q->l1s->l1_size)
        ret = txn_refs_add_range(t, q->hdr.l1_table_offset,
                                 (uint64_t)q->l1s->l1_size * 8, -1);
    if (ret == 0 && r->active && q->l1s->l1_size)
        ret = txn_space_meta_freed(t, q->hdr.l1_table_offset,
                                   (uint64_t)q->l1s->l1_size * 8);
    for (size_t i = 0; ret == 0 && i < n; i++)
        if (i > 0 || r->active)
            ret = write_table(t, l1s[i]->buf, (uint64_t)l1s[i]->size * 8,
                              &l1s[i]->off);
    return ret;
}

/* At most how many clusters an operation allocates besides refcount
 * structures: a copy of every L2 table an L1 of l1_size entries names,
 * nb_l1 such L1 tables, and the new snapshot table (if snaps). */
static uint64_t room_needed(const struct txn *t, uint32_t l1_size,
                            unsigned nb_l1, const struct snap *snaps,
                            uint32_t nb_snaps)
{
    uint64_t n = l1_size + nb_l1 * DIV_ROUND_UP((uint64_t)l1_size * 8, t->cs);

    if (snaps)
        n += DIV_ROUND_UP(snap_table_size(t->q, snaps, nb_snaps), t->cs) + 1;
    return n;
}

/* Place the refcount structures, write them, switch the header, tidy up. */
static int commit(struct txn *t, struct roots *r, struct snap *snaps,
                  uint64_t snap_size, uint32_t deleted)
{
    struct qcow2_roots nr;
    uint64_t end = UINT64_MAX;
    int ret;

    if (txn_refs_unchanged(t) && r->size == t->img->size)
        return 1; /* e.g. applying the snapshot the disk already equals */
    ret = txn_place_refcounts(t);
    if (ret == 0)
        ret = txn_place_write(t);
    if (ret == 0)
        ret = txn_space_find_freed(t);
    /* Delete alone leaves the active tree uncounted. */
    if (ret == 0)
        ret = txn_tables_check_freed(
            t, deleted, !r->bm, r->active ? r->active->buf : t->q->l1s->l1,
            r->active ? r->active->size : t->q->l1s->l1_size);
    if (ret == 0 && r->kept_l1)
        ret = txn_tables_check_kept(t, r->kept_l1, r->cut_idx, r->cut_from);
    /* A smaller disk gives the file's tail back, as QEMU's does. */
    if (ret == 0 && r->trim)
        ret = txn_space_find_end(t, &end);
    nr = new_roots(t, r);
    /* 1 of 3: every new structure is durable (nothing was written before
     * every count was made) ... */
    if (ret == 0)
        ret = txn_wbuf_flush(t);
    if (ret == 0)
        ret = txn_wbuf_release(t);
    /* 2 of 3: ... before one sector switches all roots at once ... */
    if (ret == 0)
        ret = r->bm ? roots_commit_bitmaps(t->img, &nr, r->bm)
                    : roots_commit(t->img, &nr);
    if (ret < 0)
        return ret;
    txn_space_discard_freed(t);
    adopt(t, r, &nr, snaps, snap_size);
    /* Advisory, as QEMU's (it warns): nothing names what lies there. */
    if (end != UINT64_MAX && end * t->cs < t->q->file_size)
        file_truncate_quiet(t->img, end * t->cs);
    return 0;
}

/* ---- Create -------------------------------------------------------------- */

static int next_id(const struct qcow2 *q, char *buf, size_t n)
{
    unsigned long max = 0;

    for (uint32_t i = 0; i < q->sn->nb_snaps; i++) {
        unsigned long v = strtoul(q->sn->snaps[i].id, NULL, 10);
        max = MAX(max, v);
    }
    snprintf(buf, n, "%lu", max + 1);
    return snap_find_by_id(q, buf) >= 0 ? qimg_err(EIO, "Snapshot ID %s "
                                                        "already exists",
                                                   buf)
                                        : 0;
}

static int new_snap_entry(struct txn *t, struct snap *s, const char *name)
{
    struct timespec ts;
    char id[32];
    int ret = next_id(t->q, id, sizeof id);

    if (ret < 0)
        return ret;
    clock_gettime(CLOCK_REALTIME, &ts);
    memset(s, 0, sizeof *s);
    s->id = strdup(id);
    s->name = strndup(name, 255);
    if (!s->id || !s->name)
        return qimg_err(ENOMEM, "Out of memory");
    s->date_sec = (uint32_t)ts.tv_sec;
    s->date_nsec = (uint32_t)(ts.tv_nsec / 1000 * 1000);
    s->disk_size = t->img->size;
    s->icount = 0; /* what qemu-img writes */
    return 0;
}

static void free_snaps(struct snap *snaps, uint32_t n)
{
    if (!snaps)
        return;
    for (uint32_t i = 0; i < n; i++)
        snap_free(&snaps[i]);
    free(snaps);
}

/* Copy the snapshot list, leaving out `skip` (-1: none) and leaving
 * `extra` empty slots at the end. */
static int copy_snaps(const struct qcow2 *q, int skip, uint32_t extra,
                      struct snap **out)
{
    struct snap *snaps = calloc(q->sn->nb_snaps + extra + 1, sizeof *snaps);
    uint32_t j = 0;
    int ret = 0;

    if (!snaps)
        return qimg_err(ENOMEM, "Out of memory");
    for (uint32_t i = 0; ret == 0 && i < q->sn->nb_snaps; i++)
        if ((int)i != skip)
            ret = snap_copy(&snaps[j++], &q->sn->snaps[i]);
    if (ret < 0) {
        free_snaps(snaps, q->sn->nb_snaps + extra);
        return ret;
    }
    *out = snaps;
    return 0;
}

int txn_snapshot_create(qimg_image *img, const char *name)
{
    struct qcow2 *q = img->q;
    struct new_l1 active = {0}, snap = {0}, *l1s[2] = {&active, &snap};
    struct snap *snaps = NULL;
    uint64_t snap_size = 0;
    struct roots r = {img->size, &active, q->sn->nb_snaps + 1, 0, false,
                      0, 0, 0, NULL};
    struct txn t;
    int ret;

    ret = txn_init(&t, img, true);
    if (ret == 0)
        ret = txn_tables_check_l1(&t, q->l1s->l1, q->l1s->l1_size);
    if (ret == 0)
        ret = check_snapshots(&t, q->sn->snaps, q->sn->nb_snaps);
    if (ret == 0)
        ret = copy_snaps(q, -1, 1, &snaps);
    if (ret == 0)
        ret = new_snap_entry(&t, &snaps[q->sn->nb_snaps], name);
    /* write_snap_table would refuse it too, after the L1 tables: now. */
    if (ret == 0 && snap_table_size(q, snaps, q->sn->nb_snaps + 1) >
                        QCOW_MAX_SNAPSHOTS_SIZE)
        ret = qimg_err(EFBIG, "Snapshot table too large");
    if (ret == 0)
        ret = new_l1_alloc(&active, q->l1s->l1_size);
    if (ret == 0)
        ret = new_l1_alloc(&snap, q->l1s->l1_size);
    if (ret < 0)
        goto out;
    memcpy(active.buf, q->l1s->l1, (size_t)q->l1s->l1_size * 8);
    memcpy(snap.buf, q->l1s->l1, (size_t)q->l1s->l1_size * 8);
    /* One more L1 points at every active L2 table (reading validates
     * them); all of them lose their COPIED flags. Every reference is
     * counted before the first copy is written, so whatever refuses the
     * operation (a bad entry, a refcount at its maximum) finds the file
     * as it was. */
    for (uint32_t i = 0; ret == 0 && i < q->l1s->l1_size; i++) {
        uint64_t p = txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i);
        if (p)
            ret = txn_tables_pointer_change(&t, p, 1);
    }
    if (ret == 0)
        ret = txn_tables_check_meta(&t);
    if (ret == 0)
        ret = txn_place_room(&t, room_needed(&t, active.size, 2,
                                             snaps, q->sn->nb_snaps + 1));
    for (uint32_t i = 0; ret == 0 && i < q->l1s->l1_size; i++) {
        uint64_t p = txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i);
        if (p)
            ret = txn_tables_clear_copied(&t, p);
    }
    if (ret == 0)
        ret = place_l1s(&t, &r, l1s, 2);
    if (ret < 0)
        goto out;
    snaps[q->sn->nb_snaps].l1_off = snap.off;
    snaps[q->sn->nb_snaps].l1_size = snap.size;
    ret = write_snap_table(&t, snaps, q->sn->nb_snaps + 1, &r.snap_off,
                           &snap_size);
    if (ret == 0)
        ret = commit(&t, &r, snaps, snap_size, UINT32_MAX);
    if (ret >= 0) {
        snaps = NULL;
        ret = 0;
    }
out:
    free_snaps(snaps, q->sn->nb_snaps + 1);
    free(active.buf);
    free(snap.buf);
    txn_free(&t);
    return ret;
}

int txn_snapshot_delete(qimg_image *img, int idx)
{
    struct qcow2 *q = img->q;
    struct new_l1 active = {0}, *l1s[1] = {&active};
    const struct snap *s = &q->sn->snaps[idx];
    uint32_t nb_old = q->sn->nb_snaps;
    struct snap *snaps = NULL;
    uint8_t *sl1 = NULL;
    uint64_t snap_size = 0;
    struct roots r = {img->size, &active, q->sn->nb_snaps - 1, 0, false,
                      0, 0, 0, NULL};
    struct txn t;
    int ret;

    ret = txn_init(&t, img, true);
    if (ret == 0)
        ret = txn_tables_check_l1(&t, q->l1s->l1, q->l1s->l1_size);
    if (ret == 0)
        ret = check_snapshots(&t, q->sn->snaps, q->sn->nb_snaps);
    if (ret == 0)
        ret = read_snap_l1(&t, s, &sl1);
    /* Validate the active tables a flag fix may rewrite, before writing. */
    for (uint32_t i = 0; ret == 0 && i < q->l1s->l1_size; i++)
        if (txn_l1_ptr(sl1, s->l1_size, i) &&
            txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i))
            ret = txn_tables_read_l2(
                &t, txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i));
    if (ret == 0)
        ret = copy_snaps(q, idx, 0, &snaps);
    if (ret == 0)
        ret = new_l1_alloc(&active, q->l1s->l1_size);
    if (ret < 0)
        goto out;
    memcpy(active.buf, q->l1s->l1, (size_t)q->l1s->l1_size * 8);
    for (uint32_t i = 0; ret == 0 && i < s->l1_size; i++)
        if (txn_l1_ptr(sl1, s->l1_size, i))
            ret = txn_tables_pointer_change(&t, txn_l1_ptr(sl1, s->l1_size, i),
                                            -1);
    if (ret == 0)
        ret = txn_tables_check_meta(&t);
    if (ret == 0 && s->l1_size)
        ret = txn_refs_add_range(&t, s->l1_off, (uint64_t)s->l1_size * 8, -1);
    if (ret == 0 && s->l1_size)
        ret = txn_space_meta_freed(&t, s->l1_off, (uint64_t)s->l1_size * 8);
    if (ret == 0)
        ret = txn_place_room(&t, room_needed(&t, active.size, 1, snaps,
                                             nb_old - 1));
    for (uint32_t i = 0; ret == 0 && i < active.size; i++)
        if (txn_l1_ptr(sl1, s->l1_size, i))
            ret = txn_tables_inspect(&t, active.buf, active.size, i);
    if (ret == 0)
        ret = place_l1s(&t, &r, l1s, 1);
    if (ret == 0)
        ret = write_snap_table(&t, snaps, nb_old - 1, &r.snap_off,
                               &snap_size);
    if (ret == 0)
        ret = commit(&t, &r, snaps, snap_size, (uint32_t)idx);
    if (ret >= 0) {
        snaps = NULL;
        ret = 0;
    }
out:
    free_snaps(snaps, nb_old);
    free(sl1);
    free(active.buf);
    txn_free(&t);
    return ret;
}

/* ---- Rewriting the table ------------------------------------------------ */

/* Write the snapshot table again (snapshot idx, if >= 0, renamed) and
 * switch to it. */
static int rewrite_table(qimg_image *img, int idx, const char *name)
{
    struct qcow2 *q = img->q;
    uint32_t n = q->sn->nb_snaps;
    struct snap *snaps = NULL;
    uint64_t snap_size = 0;
    struct roots r = {img->size, NULL, n, 0, false, 0, 0, 0, NULL};
    struct txn t;
    int ret;

    ret = txn_init(&t, img, false);
    if (ret == 0)
        ret = check_snapshots(&t, q->sn->snaps, n);
    if (ret == 0)
        ret = copy_snaps(q, -1, 0, &snaps);
    if (ret == 0 && idx >= 0) {
        char *nn = strndup(name, 255);
        if (!nn) {
            ret = qimg_err(ENOMEM, "Out of memory");
        } else {
            free(snaps[idx].name);
            snaps[idx].name = nn;
        }
    }
    if (ret == 0 && snap_table_size(q, snaps, n) > QCOW_MAX_SNAPSHOTS_SIZE)
        ret = qimg_err(EFBIG, "Snapshot table too large");
    if (ret == 0)
        ret = txn_place_room(&t, room_needed(&t, 0, 0, snaps, n));
    if (ret == 0)
        ret = write_snap_table(&t, snaps, n, &r.snap_off, &snap_size);
    if (ret == 0)
        ret = commit(&t, &r, snaps, snap_size, UINT32_MAX);
    if (ret >= 0) {
        snaps = NULL;
        ret = 0;
    }
    free_snaps(snaps, n);
    txn_free(&t);
    return ret;
}

int txn_snapshot_rewrite(qimg_image *img)
{
    return rewrite_table(img, -1, NULL);
}

int txn_snapshot_rename(qimg_image *img, int idx, const char *name)
{
    return rewrite_table(img, idx, name);
}

/* ---- Apply --------------------------------------------------------------- */

/* Byte ranges [a, a+alen) and [b, b+blen) (both non-empty, checked
 * against the file) touch a common cluster. */
static bool clusters_overlap(const struct qcow2 *q, uint64_t a, uint64_t alen,
                             uint64_t b, uint64_t blen)
{
    return a >> q->cluster_bits <= (b + blen - 1) >> q->cluster_bits &&
           b >> q->cluster_bits <= (a + alen - 1) >> q->cluster_bits;
}

static uint64_t l1_entries_needed(const struct qcow2 *q, uint64_t size)
{
    unsigned span = q->cluster_bits + q->l2_bits;

    return (size + (1ull << span) - 1) >> span;
}

/* The new active tree: snapshot s's, the current one (keep), or an empty
 * one, at `size`; a tree kept through a resize loses what lies past a
 * smaller size, and `prealloc` maps what a larger one adds (zero: over a
 * backing file longer than the old size, it reads as zeros, as QEMU
 * makes it). */
struct active_plan {
    const struct snap *s;
    bool keep;
    uint64_t size;
    enum qimg_prealloc prealloc;
    bool zero; /* what a larger size adds must read as zeros, not through */
    struct bitmap_set *bm; /* the bitmaps at the new size, or NULL */
};

/* The guest clusters a larger size adds that the resize maps or marks:
 * from the one the old size ends in (preallocation) or the first past it,
 * to the end. */
static void grow_range(const struct txn *t, const struct active_plan *pl,
                       uint64_t *g0, uint64_t *g1)
{
    /* The cluster the old size ends in is only mapped whole where no
     * backing file can show through its first part. */
    *g0 = pl->prealloc != QIMG_PREALLOC_OFF && !t->img->backing
              ? t->img->size / t->cs
              : DIV_ROUND_UP(t->img->size, t->cs);
    *g1 = DIV_ROUND_UP(pl->size, t->cs);
    if (pl->size <= t->img->size ||
        (pl->prealloc == QIMG_PREALLOC_OFF && !pl->zero))
        *g1 = *g0;
}

/* Resize, counting: cut the table a smaller size ends inside (into cut,
 * one cluster; *cut_idx its L1 index, UINT64_MAX if none), or validate the
 * tables a larger one maps or marks and count the clusters it maps
 * (*fill). */
static int resize_count(struct txn *t, const struct active_plan *pl,
                        const struct new_l1 *a, uint8_t *cut,
                        uint64_t *cut_idx, uint64_t *fill)
{
    const struct qcow2 *q = t->q;
    const uint64_t cs = t->cs, per = q->l2_entries;
    uint64_t g0, g1, k;
    int ret = 0;

    *cut_idx = UINT64_MAX;
    *fill = 0;
    if (pl->size < t->img->size) {
        g1 = DIV_ROUND_UP(pl->size, cs);
        if (g1 % per == 0 || !txn_l1_ptr(a->buf, a->size, g1 / per))
            return 0;
        for (uint32_t i = 0; i < a->size; i++)
            if (i != g1 / per && txn_l1_ptr(a->buf, a->size, i) ==
                                     txn_l1_ptr(a->buf, a->size, g1 / per))
                return qimg_corrupt("L2 table %#" PRIx64 " is named twice "
                                    "in the active L1 table",
                                    txn_l1_ptr(a->buf, a->size, i));
        *cut_idx = g1 / per;
        return txn_tables_cut(t, txn_l1_ptr(a->buf, a->size, *cut_idx),
                              g1 % per, cut);
    }
    grow_range(t, pl, &g0, &g1);
    for (uint64_t i = g0 / per; ret == 0 && g0 < g1 && i <= (g1 - 1) / per;
         i++) {
        ret = txn_tables_fill(t, txn_l1_ptr(a->buf, a->size, i),
                              MAX(g0, i * per) - i * per,
                              MIN(g1, (i + 1) * per) - i * per,
                              t->tables.tmp, NULL, false, &k);
        if (pl->prealloc != QIMG_PREALLOC_OFF)
            *fill += k;
    }
    return ret;
}

/* Resize, writing (every count made): the cut table's copy, or the
 * preallocated clusters (zeroed or reserved as the mode asks) and the
 * tables that map them or mark them zero. */
static int resize_write(struct txn *t, const struct active_plan *pl,
                        struct new_l1 *a, const uint8_t *cut,
                        uint64_t cut_idx, uint64_t fill)
{
    const uint64_t cs = t->cs, per = t->q->l2_entries;
    uint64_t host = 0, off, k, g0, g1;
    int ret = 0;

    if (cut_idx != UINT64_MAX)
        return txn_tables_write_edit(
            t, txn_l1_ptr(a->buf, a->size, cut_idx), cut, &off);
    grow_range(t, pl, &g0, &g1);
    if (fill)
        ret = txn_space_alloc_end(t, fill, &host);
    if (ret == 0 && fill)
        ret = file_fill(t->img, host, host + fill * cs, pl->prealloc);
    for (uint64_t i = g0 / per; ret == 0 && g0 < g1 && i <= (g1 - 1) / per;
         i++) {
        uint64_t p = txn_l1_ptr(a->buf, a->size, i);
        ret = txn_tables_fill(t, p, MAX(g0, i * per) - i * per,
                              MIN(g1, (i + 1) * per) - i * per,
                              t->tables.tmp, fill ? &host : NULL, pl->zero,
                              &k);
        if (ret == 0 && k)
            ret = txn_tables_write_edit(t, p, t->tables.tmp, &off);
        if (ret == 0 && k && !p)
            l1_entry_set(a->buf, (uint32_t)i, off);
    }
    return ret;
}

/* Make the planned tree the active one. */
static int set_active(qimg_image *img, const struct active_plan *pl)
{
    struct qcow2 *q = img->q;
    const struct snap *s = pl->s;
    const uint64_t disk_size = pl->size;
    struct new_l1 active = {0}, *l1s[1] = {&active};
    uint32_t nb = q->sn->nb_snaps, sl1_size = s ? s->l1_size : 0;
    struct snap *snaps = NULL;
    uint8_t *sl1 = NULL, *cut = NULL;
    uint64_t n, cut_idx = UINT64_MAX, fill = 0;
    struct roots r = {disk_size, &active, q->sn->nb_snaps,
                      q->hdr.snapshots_offset,
                      pl->keep && disk_size < img->size, 0, 0, 0, NULL};
    struct roots_bitmaps rb;
    struct txn t;
    int ret;

    if (s && q->hdr.has_bitmaps_ext && (q->hdr.autoclear & AUTOCLEAR_BITMAPS) &&
        q->hdr.nb_bitmaps)
        return qimg_err(EBUSY, "Device has active dirty bitmaps");
    if (disk_size != img->size && q->hdr.version < 3 && nb)
        return qimg_err(ENOTSUP, "Can't resize a v2 image which has "
                                 "snapshots");
    /* The size comes from the file: as QEMU's resize to it, refuse what
     * no image can be before computing with it. */
    if (disk_size > INT64_MAX)
        return qimg_err(EINVAL, "Image size cannot be negative");
    if (l1_entries_needed(q, disk_size) > QCOW_MAX_L1_SIZE / 8)
        return qimg_err(EFBIG, "Failed to grow the L1 table: File too large");
    ret = s ? snap_check_l1(img, s) : 0;
    if (ret < 0)
        return ret;
    /* QEMU copies the snapshot's table over the active one in place and
     * refuses when the two share a cluster; so does qimg, before writing
     * anything (it would otherwise apply a table onto itself). */
    if (sl1_size && q->l1s->l1_size &&
        clusters_overlap(q, s->l1_off, (uint64_t)s->l1_size * 8,
                         q->hdr.l1_table_offset,
                         (uint64_t)q->l1s->l1_size * 8))
        return roots_signal_corruption(
            img, "Preventing invalid write on metadata (overlaps with "
                 "inactive L1 table)");
    n = MAX(MAX(q->l1s->l1_size, sl1_size), l1_entries_needed(q, disk_size));
    /* A smaller disk keeps only the L1 entries it needs. */
    if (pl->keep && disk_size < img->size)
        n = l1_entries_needed(q, disk_size);
    if (n * 8 > QCOW_MAX_L1_SIZE)
        return qimg_err(EFBIG, "Active L1 table too large");
    ret = txn_init(&t, img, false);
    if (ret == 0)
        ret = txn_tables_check_l1(&t, q->l1s->l1, q->l1s->l1_size);
    if (ret == 0)
        ret = check_snapshots(&t, q->sn->snaps, q->sn->nb_snaps);
    if (ret == 0 && s)
        ret = read_snap_l1(&t, s, &sl1);
    if (ret == 0 && pl->keep) {
        sl1_size = (uint32_t)MIN(q->l1s->l1_size, n);
        sl1 = malloc(sl1_size ? (size_t)sl1_size * 8 : 1);
        cut = malloc(t.cs);
        if (!sl1 || !cut)
            ret = qimg_err(ENOMEM, "Out of memory");
        else
            memcpy(sl1, q->l1s->l1, (size_t)sl1_size * 8);
    }
    if (ret == 0)
        ret = copy_snaps(q, -1, 0, &snaps);
    if (ret == 0)
        ret = new_l1_alloc(&active, (uint32_t)n);
    if (ret < 0)
        goto out;
    if (sl1)
        memcpy(active.buf, sl1, (size_t)sl1_size * 8);
    /* Only pointers that differ change any count. */
    for (uint32_t i = 0; ret == 0 && i < MAX(n, q->l1s->l1_size); i++) {
        uint64_t o = txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i);
        uint64_t p = txn_l1_ptr(sl1, sl1_size, i);
        if (o == p)
            continue;
        if (o)
            ret = txn_tables_pointer_change(&t, o, -1);
        if (ret == 0 && p)
            ret = txn_tables_pointer_change(&t, p, 1);
    }
    if (ret == 0 && pl->keep)
        ret = resize_count(&t, pl, &active, cut, &cut_idx, &fill);
    if (ret == 0)
        ret = txn_tables_check_meta(&t);
    if (ret == 0)
        ret = txn_place_room(&t, room_needed(&t, active.size, 1, NULL, 0) +
                                     fill +
                                     (pl->bm ? txn_bitmaps_room(&t, pl->bm)
                                             : 0));
    for (uint32_t i = 0; ret == 0 && i < n; i++)
        if (txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i) !=
            txn_l1_ptr(sl1, sl1_size, i))
            ret = txn_tables_inspect(&t, active.buf, active.size, i);
    if (ret == 0 && pl->keep)
        ret = resize_write(&t, pl, &active, cut, cut_idx, fill);
    if (ret == 0)
        ret = place_l1s(&t, &r, l1s, 1);
    if (ret == 0 && pl->bm) {
        ret = txn_bitmaps_stage(&t, pl->bm, &rb);
        r.bm = &rb;
    }
    if (ret == 0) {
        r.snap_off = q->hdr.snapshots_offset;
        r.kept_l1 = pl->keep ? (uint32_t)n : 0;
        r.cut_idx = cut_idx;
        r.cut_from = DIV_ROUND_UP(disk_size, t.cs) % q->l2_entries;
        ret = commit(&t, &r, snaps, q->sn->snap_table_size, UINT32_MAX);
    }
    if (ret >= 0) {
        if (ret == 0)
            snaps = NULL;
        ret = 0;
    }
out:
    free_snaps(snaps, nb);
    free(sl1);
    free(cut);
    free(active.buf);
    txn_free(&t);
    return ret;
}

int txn_snapshot_apply(qimg_image *img, int idx)
{
    const struct snap *s = &img->q->sn->snaps[idx];
    struct active_plan pl = {s, false, s->disk_size, QIMG_PREALLOC_OFF,
                             false, NULL};

    return set_active(img, &pl);
}

int txn_make_empty(qimg_image *img)
{
    struct active_plan pl = {NULL, false, img->size, QIMG_PREALLOC_OFF,
                             false, NULL};

    return set_active(img, &pl);
}

int txn_resize(qimg_image *img, uint64_t size, enum qimg_prealloc prealloc,
               bool zero, struct bitmap_set *bm)
{
    struct active_plan pl = {NULL, true, size, prealloc, zero, bm};

    return set_active(img, &pl);
}

/* ---- Bitmaps ------------------------------------------------------------ */

int txn_bitmaps_store(qimg_image *img, struct bitmap_set *s)
{
    struct qcow2 *q = img->q;
    uint32_t n = q->sn->nb_snaps;
    struct snap *snaps = NULL;
    struct roots_bitmaps rb;
    /* The active tree is kept uncounted: checked against what the commit
     * frees (the old refcount structure among it), as a resize's is. */
    struct roots r = {img->size, NULL, n, q->hdr.snapshots_offset, false,
                      q->l1s->l1_size, UINT64_MAX, 0, &rb};
    struct txn t;
    int ret;

    ret = txn_init(&t, img, false);
    if (ret == 0)
        ret = copy_snaps(q, -1, 0, &snaps);
    if (ret == 0)
        ret = txn_place_room(&t, txn_bitmaps_room(&t, s));
    if (ret == 0)
        ret = txn_bitmaps_stage(&t, s, &rb);
    if (ret == 0)
        ret = commit(&t, &r, snaps, q->sn->snap_table_size, UINT32_MAX);
    if (ret >= 0) {
        if (ret == 0)
            snaps = NULL;
        ret = 0;
    }
    free_snaps(snaps, n);
    txn_free(&t);
    return ret;
}
