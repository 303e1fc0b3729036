/*
 * compact.c - give a qcow2 file's free space back in place, keeping every
 * snapshot, bitmap and backing link (qimg compact).
 *
 * qcow2-format.md §3 (L1 and L2 entries, compressed descriptors), §4
 * (refcounts), §5 (the snapshot table), §13 (a new structure is durable
 * before the pointer to it).
 *
 * Notes on the design:
 *  1. A cut is chosen, in clusters: every cluster in use at or past it
 *     moves to a free cluster below it. Moving a cluster changes what
 *     names it, so the L2 tables naming moved data, the L1 tables naming
 *     moved or changed L2 tables and the snapshot table naming moved L1
 *     tables are written anew too, in free clusters (the old ones stay in
 *     use until the switch). A new refcount structure is built for the
 *     new state. The cut is the lowest for which the free clusters below
 *     it hold all of that: found by bisection over what the tables say.
 *     Runs of clusters (L1 tables, the snapshot and refcount tables) may
 *     not find a run of free clusters below the cut; then the attempt is
 *     dropped before the switch and made again with a higher cut.
 *  2. Nothing the old image uses is written: new clusters are those of
 *     refcount 0 outside the old refcount structure, and every write is
 *     overlap-checked against the census of live metadata. Everything is
 *     made durable, then one write of header sector 0 switches to the new
 *     state. A power cut before it leaves the old image (with some free
 *     clusters written), after it the new one; the tail is cut and the
 *     free clusters punched only after the switch (compact_trim()).
 *  3. The new refcounts start as the old ones (exact: the caller repaired
 *     leaks first) and follow each rewritten reference: taken from the
 *     old cluster, given to the new (an L2 entry is as many references as
 *     L1 entries name its table: the table's own count). No cluster past the cut may
 *     keep a count (something this file does not move would name it):
 *     refused then, before the switch.
 *  4. Compressed clusters are moved as the sectors their descriptor
 *     spans, packed one after another into new clusters at the same
 *     offset within a sector, so the descriptor keeps its sector count.
 *  5. Persistent bitmaps move as the trees do: their data clusters, the
 *     tables naming moved data, the directory naming moved tables (then
 *     the header's bitmaps extension switches with the rest).
 */
#include "compact.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "error.h"
#include "file.h"
#include "idset.h"
#include "l1l2.h"
#include "meta.h"
#include "metaset.h"
#include "newrefs.h"
#include "refcount.h"
#include "roots.h"
#include "snaptable.h"
#include "util.h"

/* Bytes copied at a time. */
#define COPY_CHUNK (4u << 20)

/* A table that may be rewritten: where it is, the highest cluster whose
 * move changes it or moves it (its trigger), where its copy goes. */
struct unit {
    uint64_t first, n; /* clusters */
    uint64_t trig;
    uint64_t new_first;
};

/* An L1 table: the active one ([0]) or a snapshot's. */
struct tree {
    uint8_t *l1;
    uint32_t size;
    struct unit u;
};

struct compact {
    qimg_image *img;
    struct qcow2 *q;
    uint64_t cs;
    struct newrefs r;   /* the new state's counts */
    uint64_t end;       /* clusters the old image covers */
    uint64_t *busy;     /* per cluster of [0, end): used by the old image,
                         * or taken by the new one */
    uint64_t *live;     /* used by the old image (its refcount structure
                         * aside), as loaded */
    uint64_t floor;     /* the cut is at least this */
    uint64_t cut;
    uint64_t lo;        /* no free cluster below this */
    uint64_t mn, mpos;  /* no run of mn free clusters before mpos */
    uint64_t tail;      /* next cluster past the end */
    struct tree *t;     /* [0] active, [1 + i] snapshot i */
    uint32_t nt;
    struct unit *l2;    /* distinct L2 tables, ascending */
    size_t nl2;
    struct unit snap;   /* the snapshot table (n 0: none) */
    struct bitmap_entry *bm; /* the bitmap directory's entries */
    size_t nbm;
    struct unit *bmu;   /* each bitmap's table (n 0: none) */
    uint8_t **bmt;      /* ... read */
    struct unit bmdir;  /* the directory (n 0: none) */
    uint64_t *dnew;     /* cluster k >= cut: its new cluster (0: none) */
    struct u64map cmap; /* compressed descriptor offset -> new offset */
    uint64_t pack, pack_used; /* cluster compressed data is packed into */
    uint8_t *buf;       /* data being copied */
    uint8_t *tbuf;      /* the table being rewritten */
    compact_progress_fn *fn;
    void *opaque;
    uint64_t done, total, moved;
};

/* ---- Clusters ------------------------------------------------------------ */

static bool bit_get(const uint64_t *v, uint64_t k)
{
    return (v[k / 64] >> (k % 64)) & 1;
}

static void bit_set(uint64_t *v, uint64_t k)
{
    v[k / 64] |= 1ull << (k % 64);
}

/* Set bits of v in [from, to). */
static uint64_t bit_count(const uint64_t *v, uint64_t from, uint64_t to)
{
    uint64_t n = 0;

    while (from < to && from % 64)
        n += bit_get(v, from++);
    for (; from + 64 <= to; from += 64)
        n += (uint64_t)__builtin_popcountll(v[from / 64]);
    while (from < to)
        n += bit_get(v, from++);
    return n;
}

static bool busy(const struct compact *c, uint64_t k)
{
    return k >= c->end ? k < c->tail : bit_get(c->busy, k);
}

static void claim(struct compact *c, uint64_t k, uint64_t n)
{
    for (uint64_t i = k; i < k + n && i < c->end; i++)
        bit_set(c->busy, i);
}

/* n free clusters in a row: the first run below the cut, else past the
 * end of the file. */
static uint64_t take(struct compact *c, uint64_t n)
{
    uint64_t k, run = 0;

    while (c->lo < c->cut && busy(c, c->lo))
        c->lo++;
    if (n == 1 && c->lo < c->cut) {
        claim(c, c->lo, 1);
        return c->lo++;
    }
    for (k = n >= c->mn ? MAX(c->lo, c->mpos) : c->lo; n > 1 && k < c->cut;
         k++) {
        run = busy(c, k) ? 0 : run + 1;
        if (run == n) {
            c->mn = n;
            c->mpos = k + 1 - n;
            claim(c, c->mpos, n);
            return c->mpos;
        }
    }
    if (n > 1) {
        c->mn = n;
        c->mpos = c->cut;
    }
    k = c->tail;
    c->tail += n;
    return k;
}

/* Move the references of n clusters from old to new (counts of new set,
 * old ones dropped). */
static int move_counts(struct compact *c, uint64_t old, uint64_t new,
                       uint64_t n)
{
    int ret = 0;

    for (uint64_t i = 0; ret == 0 && i < n; i++) {
        uint64_t v = nr_get(&c->r, old + i);
        ret = nr_set(&c->r, old + i, 0);
        if (ret == 0)
            ret = nr_set(&c->r, new + i, v);
    }
    return ret;
}

/* w references of [off, off+len) moved to [noff, noff+len). */
static int move_ref(struct compact *c, uint64_t off, uint64_t noff,
                    uint64_t len, uint64_t w)
{
    int ret = 0;

    for (uint64_t k = off / c->cs; ret == 0 && k <= (off + len - 1) / c->cs;
         k++)
        ret = nr_add(&c->r, c->cs, k * c->cs, -(int64_t)w);
    for (uint64_t k = noff / c->cs; ret == 0 && k <= (noff + len - 1) / c->cs;
         k++)
        ret = nr_add(&c->r, c->cs, k * c->cs, (int64_t)w);
    return ret;
}

static int write_new(struct compact *c, const void *buf, uint64_t len,
                     uint64_t off)
{
    int ret = meta_check_write(c->img, 0, off, len);

    if (ret == 0)
        ret = file_pwrite(c->img, buf, (size_t)len, off);
    if (ret == 0)
        file_extend(c->img, off + len);
    return ret;
}

static void progress(struct compact *c, uint64_t n)
{
    c->done += n;
    if (c->fn)
        c->fn(c->opaque, MIN(c->done, c->total), c->total);
}

/* ---- What the tables hold ------------------------------------------------ */

static int cmp_unit(const void *a, const void *b)
{
    const struct unit *x = a, *y = b;

    return (x->first > y->first) - (x->first < y->first);
}

static struct unit *find_l2(const struct compact *c, uint64_t off)
{
    struct unit key = {.first = off / c->cs};

    return bsearch(&key, c->l2, c->nl2, sizeof key, cmp_unit);
}

static uint64_t l1_ptr(const struct tree *t, uint32_t i)
{
    return l1_entry_get(t->l1, i) & L1E_OFFSET_MASK;
}

static struct unit table_unit(const struct compact *c, uint64_t off,
                              uint64_t len)
{
    uint64_t n = len ? DIV_ROUND_UP(off % c->cs + len, c->cs) : 1;

    return (struct unit){off / c->cs, n, off / c->cs + n - 1, 0};
}

static int read_trees(struct compact *c)
{
    struct qcow2 *q = c->q;
    int ret = 0;

    c->nt = q->sn->nb_snaps + 1;
    c->t = calloc(c->nt, sizeof *c->t);
    if (!c->t)
        return qimg_err(ENOMEM, "Out of memory");
    c->t[0].size = q->l1s->l1_size;
    c->t[0].l1 = malloc((size_t)q->l1s->l1_size * 8 + 1);
    if (!c->t[0].l1)
        return qimg_err(ENOMEM, "Out of memory");
    memcpy(c->t[0].l1, q->l1s->l1, (size_t)q->l1s->l1_size * 8);
    c->t[0].u = table_unit(c, q->hdr.l1_table_offset,
                           (uint64_t)q->l1s->l1_size * 8);
    for (uint32_t i = 1; ret == 0 && i < c->nt; i++) {
        const struct snap *s = &q->sn->snaps[i - 1];
        c->t[i].size = s->l1_size;
        c->t[i].u = table_unit(c, s->l1_off, (uint64_t)s->l1_size * 8);
        ret = snap_check_l1(c->img, s);
        if (ret == 0)
            ret = file_read_table(c->img, &c->t[i].l1, s->l1_off,
                                  s->l1_size ? (size_t)s->l1_size * 8 : 8,
                                  "Snapshot L1 table");
    }
    return ret;
}

/* Every distinct L2 table, once (the trees of 1,000 snapshots name the
 * same few thousand tables two million times). */
static int list_l2(struct compact *c)
{
    struct idset seen = {0};
    size_t cap = 0;
    int ret = 0;

    for (uint32_t k = 0; ret == 0 && k < c->nt; k++)
        for (uint32_t i = 0; ret == 0 && i < c->t[k].size; i++) {
            uint64_t p = l1_ptr(&c->t[k], i);
            struct unit *nu;
            if (!p || (ret = idset_add(&seen, p)) <= 0)
                continue;
            ret = 0;
            if (c->nl2 == cap) {
                cap = cap ? cap * 2 : 64;
                nu = realloc(c->l2, cap * sizeof *nu);
                if (!nu) {
                    ret = qimg_err(ENOMEM, "Out of memory");
                    break;
                }
                c->l2 = nu;
            }
            c->l2[c->nl2++] = table_unit(c, p, c->cs);
        }
    idset_free(&seen);
    if (ret < 0)
        return ret;
    if (c->nl2)
        qsort(c->l2, c->nl2, sizeof *c->l2, cmp_unit);
    return 0;
}

/* The clusters an L2 entry names: [*k, *k + *n). */
static bool entry_clusters(const struct compact *c, uint64_t e, uint64_t *k,
                           uint64_t *n)
{
    if (e & QCOW_OFLAG_COMPRESSED) {
        uint64_t off, len;
        l2_compressed_range(c->q, e, &off, &len);
        *k = off / c->cs;
        *n = (off + len - 1) / c->cs - *k + 1;
        return true;
    }
    *k = (e & L2E_OFFSET_MASK) / c->cs;
    *n = 1;
    return *k != 0;
}

/* Each L2 table's trigger: its own cluster or the last it names. */
static int l2_triggers(struct compact *c)
{
    struct qcow2 *q = c->q;
    int ret = 0;

    for (size_t i = 0; ret == 0 && i < c->nl2; i++) {
        struct unit *u = &c->l2[i];
        ret = file_pread(c->img, c->buf, c->cs, u->first * c->cs);
        for (uint64_t j = 0; ret == 0 && j < q->l2_entries; j++) {
            uint64_t k, n;
            if (entry_clusters(c, l2_entry_get(q, c->buf, j), &k, &n))
                u->trig = MAX(u->trig, k + n - 1);
        }
    }
    for (uint32_t k = 0; k < c->nt; k++)
        for (uint32_t i = 0; i < c->t[k].size; i++)
            if (l1_ptr(&c->t[k], i))
                c->t[k].u.trig = MAX(c->t[k].u.trig,
                                     find_l2(c, l1_ptr(&c->t[k], i))->trig);
    if (q->sn->nb_snaps) {
        c->snap = table_unit(c, q->hdr.snapshots_offset,
                             q->sn->snap_table_size);
        for (uint32_t k = 1; k < c->nt; k++)
            c->snap.trig = MAX(c->snap.trig, c->t[k].u.trig);
    }
    return ret;
}

/* The bitmaps: each table's trigger (its own clusters, the data it
 * names), the directory's (its own, its tables'). */
static int bitmap_triggers(struct compact *c)
{
    const struct qcow2_header *h = &c->q->hdr;
    int ret = bitmap_dir_load(c->img, &c->bm, &c->nbm);

    if (ret < 0 || !c->nbm)
        return ret;
    c->bmu = calloc(c->nbm, sizeof *c->bmu);
    c->bmt = calloc(c->nbm, sizeof *c->bmt);
    if (!c->bmu || !c->bmt)
        return qimg_err(ENOMEM, "Out of memory");
    c->bmdir = table_unit(c, h->bitmap_dir_offset, h->bitmap_dir_size);
    for (size_t i = 0; ret == 0 && i < c->nbm; i++) {
        const struct bitmap_entry *b = &c->bm[i];
        uint64_t len = (uint64_t)b->table_size * 8;
        if (!len)
            continue;
        c->bmu[i] = table_unit(c, b->table_off, len);
        ret = file_read_table(c->img, &c->bmt[i], b->table_off, (size_t)len,
                              "Bitmap table");
        for (uint32_t k = 0; ret == 0 && k < b->table_size; k++) {
            uint64_t off = be64_load(c->bmt[i] + (size_t)k * 8) &
                           BTE_OFFSET_MASK;
            if (off)
                c->bmu[i].trig = MAX(c->bmu[i].trig, off / c->cs);
        }
        c->bmdir.trig = MAX(c->bmdir.trig, c->bmu[i].trig);
    }
    return ret;
}

/* ---- The cut -------------------------------------------------------------- */

static uint64_t unit_need(const struct unit *u, uint64_t cut)
{
    return u->trig >= cut && u->first < cut ? u->n : 0;
}

/* Clusters the new state takes below cut: what moves, what is rewritten,
 * a refcount structure for cut clusters, and a cluster of slack for the
 * packing of compressed data. */
static uint64_t need(const struct compact *c, uint64_t cut)
{
    uint64_t per_blk = 1ull << c->q->rb_bits;
    uint64_t blocks = DIV_ROUND_UP(cut, per_blk);
    uint64_t n = bit_count(c->live, cut, c->end) + blocks +
                 DIV_ROUND_UP(blocks * 8, c->cs) + 2;

    for (size_t i = 0; i < c->nl2; i++)
        n += unit_need(&c->l2[i], cut);
    for (uint32_t k = 0; k < c->nt; k++)
        n += unit_need(&c->t[k].u, cut);
    for (size_t i = 0; i < c->nbm; i++)
        n += c->bmu[i].n ? unit_need(&c->bmu[i], cut) : 0;
    n += c->bmdir.n ? unit_need(&c->bmdir, cut) : 0;
    return n + (c->snap.n ? unit_need(&c->snap, cut) : 0);
}

static bool fits(const struct compact *c, uint64_t cut)
{
    return cut - bit_count(c->busy, 0, cut) >= need(c, cut);
}

static void choose_cut(struct compact *c)
{
    uint64_t lo = MAX(c->floor, 1), hi = c->end;

    if (lo >= hi || !fits(c, hi)) {
        c->cut = c->end;
        return;
    }
    while (lo < hi) {
        uint64_t mid = lo + (hi - lo) / 2;
        if (fits(c, mid))
            hi = mid;
        else
            lo = mid + 1;
    }
    c->cut = lo;
}

/* ---- Moving data ---------------------------------------------------------- */

static bool all_zero(const uint8_t *b, size_t n)
{
    return n == 0 || (b[0] == 0 && !memcmp(b, b + 1, n - 1));
}

/* Copy n clusters from old to new; a run of zeros is punched instead
 * (written as zeros where the file system cannot punch). */
static int copy_run(struct compact *c, uint64_t old, uint64_t new,
                    uint64_t n)
{
    uint64_t per = COPY_CHUNK / c->cs ? COPY_CHUNK / c->cs : 1;
    int ret = 0;

    for (uint64_t i = 0; ret == 0 && i < n; i += per) {
        uint64_t m = MIN(per, n - i), len = m * c->cs;
        uint64_t dst = (new + i) * c->cs;
        ret = file_pread(c->img, c->buf, (size_t)len, (old + i) * c->cs);
        if (ret == 0)
            ret = meta_check_write(c->img, 0, dst, len);
        if (ret == 0 && all_zero(c->buf, (size_t)len) &&
            file_punch(c->img, dst, len) == 0)
            file_extend(c->img, dst + len);
        else if (ret == 0)
            ret = write_new(c, c->buf, len, dst);
        c->moved += len;
        progress(c, m);
    }
    return ret;
}

/* Every data cluster at or past the cut that an L2 table names gets a new
 * cluster (in file order), and so does every compressed span touching the
 * cut (packed); both are copied. */
static int move_data(struct compact *c)
{
    struct qcow2 *q = c->q;
    uint64_t n = c->end - c->cut;
    int ret = 0;

    c->dnew = calloc(n + 1, sizeof *c->dnew);
    if (!c->dnew)
        return qimg_err(ENOMEM, "Out of memory");
    /* Which clusters hold data (the tables past the cut move as tables). */
    for (size_t i = 0; ret == 0 && i < c->nl2; i++) {
        if (c->l2[i].trig < c->cut)
            continue;
        ret = file_pread(c->img, c->buf, c->cs, c->l2[i].first * c->cs);
        for (uint64_t j = 0; ret == 0 && j < q->l2_entries; j++) {
            uint64_t e = l2_entry_get(q, c->buf, j), k, m;
            if (!entry_clusters(c, e, &k, &m) || k + m - 1 < c->cut)
                continue;
            if (e & QCOW_OFLAG_COMPRESSED)
                ret = u64map_put(&c->cmap, e & q->coff_mask, 0);
            else
                c->dnew[k - c->cut] = 1;
        }
    }
    for (size_t i = 0; ret == 0 && i < c->nbm; i++)
        for (uint32_t k = 0; c->bmu[i].n && c->bmu[i].trig >= c->cut &&
                             k < c->bm[i].table_size;
             k++) {
            uint64_t off = be64_load(c->bmt[i] + (size_t)k * 8) &
                           BTE_OFFSET_MASK;
            if (off / c->cs >= c->cut)
                c->dnew[off / c->cs - c->cut] = 1;
        }
    for (uint64_t k = 0; k < n; k++)
        if (c->dnew[k])
            c->total++;
    for (size_t i = 0; i < c->nl2; i++)
        if (c->l2[i].trig >= c->cut)
            c->total++;
    c->total += c->cmap.n;
    for (uint64_t k = 0; ret == 0 && k < n; k++)
        if (c->dnew[k])
            c->dnew[k] = take(c, 1);
    for (uint64_t k = 0; ret == 0 && k < n;) {
        uint64_t m = 1;
        if (!c->dnew[k]) {
            k++;
            continue;
        }
        while (k + m < n && c->dnew[k + m] == c->dnew[k] + m &&
               m < COPY_CHUNK / c->cs)
            m++;
        ret = copy_run(c, c->cut + k, c->dnew[k], m);
        k += m;
    }
    return ret;
}

/* The new offset of the compressed span of entry e, copied there on first
 * sight. */
static int move_compressed(struct compact *c, uint64_t e, uint64_t *noff)
{
    uint64_t off, len, span, base, dst;
    int ret;

    l2_compressed_range(c->q, e, &off, &len);
    if (u64map_get(&c->cmap, off, noff) && *noff)
        return 0;
    base = off & ~511ull;
    span = off + len - base;
    if (c->pack && c->pack_used + span <= c->cs) {
        dst = c->pack * c->cs + c->pack_used;
    } else {
        uint64_t n = DIV_ROUND_UP(span, c->cs);
        c->pack = take(c, n) + n - 1;
        dst = (c->pack - n + 1) * c->cs;
        c->pack_used = 0;
    }
    c->pack_used = dst + span - c->pack * c->cs;
    ret = file_pread(c->img, c->buf, (size_t)span, base);
    if (ret == 0)
        ret = write_new(c, c->buf, span, dst);
    *noff = dst + (off - base);
    if (ret == 0)
        ret = u64map_put(&c->cmap, off, *noff);
    c->moved += span;
    progress(c, 1);
    return ret;
}

/* ---- Rewriting the tables ------------------------------------------------- */

/* The L2 tables to rewrite, with the references they hold moved. */
static int rewrite_l2s(struct compact *c)
{
    struct qcow2 *q = c->q;
    int ret = 0;

    for (size_t i = 0; ret == 0 && i < c->nl2; i++) {
        struct unit *u = &c->l2[i];
        /* An entry is a reference per L1 entry naming its table (§4.1). */
        uint64_t w = nr_get(&c->r, u->first);
        if (u->trig < c->cut)
            continue;
        ret = file_pread(c->img, c->tbuf, c->cs, u->first * c->cs);
        for (uint64_t j = 0; ret == 0 && j < q->l2_entries; j++) {
            uint64_t e = l2_entry_get(q, c->tbuf, j), k, m, off, len, noff;
            if (!entry_clusters(c, e, &k, &m) || k + m - 1 < c->cut)
                continue;
            if (e & QCOW_OFLAG_COMPRESSED) {
                l2_compressed_range(q, e, &off, &len);
                ret = move_compressed(c, e, &noff);
                if (ret == 0)
                    ret = move_ref(c, off, noff, len, w);
                e = (e & ~q->coff_mask) | noff;
            } else {
                noff = c->dnew[k - c->cut] * c->cs;
                ret = move_ref(c, k * c->cs, noff, c->cs, w);
                e = (e & ~L2E_OFFSET_MASK) | noff;
            }
            l2_entry_set(q, c->tbuf, j, e, l2_bitmap_get(q, c->tbuf, j));
        }
        if (ret == 0) {
            u->new_first = take(c, 1);
            ret = move_counts(c, u->first, u->new_first, 1);
        }
        if (ret == 0)
            ret = write_new(c, c->tbuf, c->cs, u->new_first * c->cs);
        progress(c, 1);
    }
    return ret;
}

/* The L1 tables naming moved L2 tables (or lying past the cut). */
static int rewrite_l1s(struct compact *c)
{
    int ret = 0;

    for (uint32_t k = 0; ret == 0 && k < c->nt; k++) {
        struct tree *t = &c->t[k];
        uint64_t len = (uint64_t)t->size * 8;
        uint8_t *b;
        if (t->u.trig < c->cut || !t->size)
            continue;
        for (uint32_t i = 0; i < t->size; i++) {
            struct unit *u = l1_ptr(t, i) ? find_l2(c, l1_ptr(t, i)) : NULL;
            if (u && u->new_first)
                l1_entry_set(t->l1, i,
                             (l1_entry_get(t->l1, i) & ~L1E_OFFSET_MASK) |
                                 u->new_first * c->cs);
        }
        b = calloc(t->u.n, c->cs);
        if (!b)
            return qimg_err(ENOMEM, "Out of memory");
        memcpy(b, t->l1, len);
        t->u.new_first = take(c, t->u.n);
        ret = move_counts(c, t->u.first, t->u.new_first, t->u.n);
        if (ret == 0)
            ret = write_new(c, b, t->u.n * c->cs, t->u.new_first * c->cs);
        free(b);
    }
    return ret;
}

/* A table of len bytes (buf) replacing unit u: as many clusters as it
 * takes now, each counted once, u's old ones once less; written. */
static int place_table(struct compact *c, struct unit *u, const uint8_t *buf,
                       uint64_t len)
{
    uint64_t n = DIV_ROUND_UP(len, c->cs);
    int ret = 0;

    u->new_first = take(c, n);
    for (uint64_t i = 0; ret == 0 && i < u->n; i++)
        ret = nr_add(&c->r, c->cs, (u->first + i) * c->cs, -1);
    for (uint64_t i = 0; ret == 0 && i < n; i++)
        ret = nr_add(&c->r, c->cs, (u->new_first + i) * c->cs, 1);
    return ret == 0 ? write_new(c, buf, len, u->new_first * c->cs) : ret;
}

/* The snapshot table, if an L1 table it names moved (or it lies past the
 * cut); *off its new place. */
static int rewrite_snaps(struct compact *c, uint64_t *off)
{
    struct qcow2 *q = c->q;
    struct snap *snaps;
    uint8_t *buf = NULL;
    uint64_t len = 0;
    int ret = 0;

    *off = q->hdr.snapshots_offset;
    if (!c->snap.n || c->snap.trig < c->cut)
        return 0;
    snaps = calloc(q->sn->nb_snaps, sizeof *snaps);
    if (!snaps)
        return qimg_err(ENOMEM, "Out of memory");
    for (uint32_t i = 0; ret == 0 && i < q->sn->nb_snaps; i++) {
        ret = snap_copy(&snaps[i], &q->sn->snaps[i]);
        if (c->t[i + 1].u.new_first)
            snaps[i].l1_off = c->t[i + 1].u.new_first * c->cs;
    }
    if (ret == 0)
        ret = snap_table_encode(q, snaps, q->sn->nb_snaps, &buf, &len);
    if (ret == 0)
        ret = place_table(c, &c->snap, buf, len);
    if (ret == 0)
        *off = c->snap.new_first * c->cs;
    free(buf);
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++)
        snap_free(&snaps[i]);
    free(snaps);
    return ret;
}

/* The bitmap tables naming moved data (or lying past the cut), and the
 * directory naming moved tables; *moved: the directory moved (*dir_off,
 * *dir_size its new place). */
static int rewrite_bitmaps(struct compact *c, bool *moved, uint64_t *dir_off,
                           uint64_t *dir_size)
{
    struct bitmap_set set = {c->bm, c->nbm};
    uint8_t *buf = NULL;
    uint64_t len = 0;
    int ret = 0;

    *moved = false;
    for (size_t i = 0; ret == 0 && i < c->nbm; i++) {
        struct unit *u = &c->bmu[i];
        uint8_t *t = c->bmt[i];
        if (!u->n || u->trig < c->cut)
            continue;
        for (uint32_t k = 0; ret == 0 && k < c->bm[i].table_size; k++) {
            uint64_t e = be64_load(t + (size_t)k * 8);
            uint64_t off = e & BTE_OFFSET_MASK, noff;
            if (off / c->cs < c->cut)
                continue;
            noff = c->dnew[off / c->cs - c->cut] * c->cs;
            ret = move_ref(c, off, noff, c->cs, 1);
            be64_store(t + (size_t)k * 8, (e & ~BTE_OFFSET_MASK) | noff);
        }
        buf = calloc(u->n, c->cs);
        if (ret == 0 && !buf)
            ret = qimg_err(ENOMEM, "Out of memory");
        if (ret == 0) {
            memcpy(buf, t, (size_t)c->bm[i].table_size * 8);
            u->new_first = take(c, u->n);
            ret = move_counts(c, u->first, u->new_first, u->n);
        }
        if (ret == 0)
            ret = write_new(c, buf, u->n * c->cs, u->new_first * c->cs);
        c->bm[i].table_off = u->new_first * c->cs;
        free(buf);
        buf = NULL;
    }
    if (ret < 0 || !c->bmdir.n || c->bmdir.trig < c->cut)
        return ret;
    ret = bitmap_dir_encode(&set, &buf, &len);
    if (ret == 0)
        ret = place_table(c, &c->bmdir, buf, len);
    *moved = ret == 0;
    *dir_off = c->bmdir.new_first * c->cs;
    *dir_size = len;
    free(buf);
    return ret;
}

/* ---- The new refcount structure ------------------------------------------- */

static uint64_t last_used(const struct compact *c)
{
    uint64_t k = MAX(c->r.used, c->tail);

    while (k > 0 && !nr_get(&c->r, k - 1))
        k--;
    return k;
}

static bool block_used(const struct compact *c, uint64_t i)
{
    uint64_t per = 1ull << c->q->rb_bits;

    for (uint64_t k = i * per; k < (i + 1) * per && k < c->r.cap; k++)
        if (nr_get(&c->r, k))
            return true;
    return false;
}

/* Blocks for every used part of the new counts, then a table naming them
 * (both counted in, so placed to a fixed point), written. */
static int write_refcounts(struct compact *c, uint64_t *rt_off,
                           uint32_t *rt_clusters)
{
    unsigned bits = c->q->rb_bits;
    uint64_t *blk = NULL, nb = 0, t = 0, tpos = 0;
    uint8_t *tbl = NULL;
    int ret = 0;

    for (;;) {
        uint64_t want = (last_used(c) + (1ull << bits) - 1) >> bits;
        uint64_t *nv;
        bool grew = false;
        if (want > nb) {
            nv = realloc(blk, want * sizeof *blk);
            if (!nv) {
                ret = qimg_err(ENOMEM, "Out of memory");
                break;
            }
            blk = nv;
            memset(blk + nb, 0, (want - nb) * sizeof *blk);
            nb = want;
        }
        for (uint64_t i = 0; ret == 0 && i < nb; i++)
            if (!blk[i] && block_used(c, i)) {
                blk[i] = take(c, 1);
                ret = nr_set(&c->r, blk[i], 1);
                grew = true;
            }
        if (ret == 0 && DIV_ROUND_UP(nb * 8, c->cs) > t) {
            for (uint64_t k = 0; t && k < t; k++)
                ret = nr_set(&c->r, tpos + k, 0); /* given back: a leak
                                                   * at worst, never named */
            t = DIV_ROUND_UP(nb * 8, c->cs);
            tpos = take(c, t);
            for (uint64_t k = 0; ret == 0 && k < t; k++)
                ret = nr_set(&c->r, tpos + k, 1);
            grew = true;
        }
        if (ret < 0 || !grew)
            break;
    }
    if (ret == 0 && t * c->cs > (8ull << 20))
        ret = qimg_err(EFBIG, "Reference count table too large");
    if (ret == 0) {
        tbl = calloc(t, c->cs);
        if (!tbl)
            ret = qimg_err(ENOMEM, "Out of memory");
    }
    for (uint64_t i = 0; ret == 0 && i < nb; i++) {
        uint64_t per = 1ull << bits;
        if (!blk[i])
            continue;
        memset(c->buf, 0, c->cs);
        for (uint64_t k = 0; k < per; k++)
            refblock_set(c->buf, k, c->q->refcount_order,
                         nr_get(&c->r, i * per + k));
        be64_store(tbl + i * 8, blk[i] * c->cs);
        ret = write_new(c, c->buf, c->cs, blk[i] * c->cs);
    }
    if (ret == 0)
        ret = write_new(c, tbl, t * c->cs, tpos * c->cs);
    *rt_off = tpos * c->cs;
    *rt_clusters = (uint32_t)t;
    free(tbl);
    free(blk);
    return ret;
}

/* ---- The operation -------------------------------------------------------- */

/* The old image's clusters: in use, and (its refcount structure too)
 * not to be written. */
static int census(struct compact *c)
{
    struct qcow2 *q = c->q;
    uint64_t words, rt = q->hdr.refcount_table_offset / c->cs;
    int ret = newrefs_load(c->img, q->refcount_order, &c->r);

    if (ret < 0)
        return ret;
    c->end = MAX(newrefs_roots_end(c->img), c->r.used);
    c->tail = c->end;
    words = c->end / 64 + 1;
    c->busy = calloc(words, 8);
    c->live = calloc(words, 8);
    if (posix_memalign((void **)&c->buf, 4096, MAX(COPY_CHUNK, c->cs) + c->cs))
        c->buf = NULL; /* page-aligned: the page cache copies faster */
    c->tbuf = malloc(c->cs);
    if (!c->busy || !c->live || !c->buf || !c->tbuf)
        return qimg_err(ENOMEM, "Out of memory");
    for (uint64_t k = 0; k < c->end; k++)
        if (nr_get(&c->r, k)) {
            bit_set(c->live, k);
            bit_set(c->busy, k);
        }
    claim(c, rt, q->hdr.refcount_table_clusters);
    for (uint64_t i = 0; i < q->rc->rt_entries; i++) {
        uint64_t off = be64_load(q->rc->rt + i * 8) & RT_OFFSET_MASK;
        if (off)
            claim(c, off / c->cs, 1);
    }
    claim(c, 0, 1);
    c->floor = 1;
    ret = read_trees(c);
    if (ret == 0)
        ret = list_l2(c);
    if (ret == 0)
        ret = l2_triggers(c);
    if (ret == 0)
        ret = bitmap_triggers(c);
    return ret;
}

/* Nothing past the cut may still be counted. */
static int check_cut(struct compact *c)
{
    for (uint64_t k = c->cut; k < c->end; k++)
        if (nr_get(&c->r, k))
            return qimg_err(EIO, "Cluster %#" PRIx64 " is in use by a "
                                 "structure compact does not move",
                            k * c->cs);
    return 0;
}

static void compact_free(struct compact *c)
{
    for (uint32_t k = 0; c->t && k < c->nt; k++)
        free(c->t[k].l1);
    free(c->t);
    free(c->l2);
    for (size_t i = 0; c->bmt && i < c->nbm; i++)
        free(c->bmt[i]);
    free(c->bmt);
    free(c->bmu);
    bitmap_dir_free(c->bm, c->nbm);
    free(c->r.refs);
    free(c->busy);
    free(c->live);
    free(c->dnew);
    free(c->buf);
    free(c->tbuf);
    u64map_free(&c->cmap);
}

/* One attempt with the cut at least *floor; -EAGAIN (no message) if what
 * moves did not fit below the cut (a run of clusters went past the end:
 * the file would not shrink), *floor then raised. */
static int attempt(qimg_image *img, compact_progress_fn *fn, void *opaque,
                   uint64_t *moved, uint64_t *floor)
{
    struct qcow2 *q = img->q;
    struct compact c = {.img = img, .q = q, .cs = q->cluster_size,
                        .fn = fn, .opaque = opaque};
    struct qcow2_roots nr = {.size = img->size,
                             .l1_off = q->hdr.l1_table_offset,
                             .l1_size = q->l1s->l1_size,
                             .nb_snaps = q->sn->nb_snaps};
    struct roots_bitmaps rb = {0};
    uint64_t used_end = 0;
    bool bm_moved = false;
    int ret = metaset_build(img);

    if (ret == 0)
        ret = census(&c);
    for (uint64_t k = c.end; ret == 0 && k > 0; k--)
        if (busy(&c, k - 1)) {
            used_end = k;
            break;
        }
    c.floor = MAX(c.floor, *floor);
    if (ret == 0)
        choose_cut(&c);
    if (ret == 0 && c.cut >= used_end) {
        compact_free(&c);
        return 1;
    }
    if (ret == 0)
        ret = move_data(&c);
    if (ret == 0)
        ret = rewrite_l2s(&c);
    if (ret == 0)
        ret = rewrite_l1s(&c);
    if (ret == 0)
        ret = rewrite_snaps(&c, &nr.snap_off);
    if (ret == 0)
        ret = rewrite_bitmaps(&c, &bm_moved, &rb.dir_off, &rb.dir_size);
    rb.nb = (uint32_t)c.nbm;
    if (ret == 0)
        ret = check_cut(&c);
    if (ret == 0)
        ret = write_refcounts(&c, &nr.rt_off, &nr.rt_clusters);
    if (ret == 0 && c.tail > c.end) {
        *floor = c.cut + (c.tail - c.end);
        ret = -EAGAIN;
    }
    nr.has_l1 = c.t && c.t[0].u.new_first;
    if (nr.has_l1)
        nr.l1_off = c.t[0].u.new_first * c.cs;
    /* Everything new is durable before one sector names it (the commit
     * flushes first). */
    if (ret == 0)
        ret = bm_moved ? roots_commit_bitmaps(img, &nr, &rb)
                       : roots_commit(img, &nr);
    *moved += ret == 0 ? c.moved : 0;
    compact_free(&c);
    return ret;
}

int compact_image(qimg_image *img, compact_progress_fn *fn, void *opaque,
                  uint64_t *moved)
{
    uint64_t floor = 1;
    int ret = -EAGAIN;

    *moved = 0;
    for (int i = 0; ret == -EAGAIN && i < 8; i++)
        ret = attempt(img, fn, opaque, moved, &floor);
    return ret == -EAGAIN ? 1 : ret;
}

int compact_trim(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint64_t cs = q->cluster_size, per = 1ull << q->rb_bits;
    uint64_t nb = DIV_ROUND_UP(q->file_size, cs), last = 1, run = 0;
    uint64_t cur = UINT64_MAX;
    uint8_t *blk = malloc(cs);
    bool exists = false;
    int ret = blk ? 0 : qimg_err(ENOMEM, "Out of memory");

    for (uint64_t k = 0; ret == 0 && k < nb; k++) {
        uint64_t v = 0;
        if (k / per != cur) {
            cur = k / per;
            ret = refcount_read_block(img, cur, blk, &exists);
            if (ret < 0)
                break; /* nothing cut on a doubt */
        }
        if (exists)
            v = refblock_get(blk, k % per, q->refcount_order);
        if (v) {
            if (run < k)
                file_discard_quiet(img, run * cs, (k - run) * cs);
            run = k + 1;
            last = k + 1;
        }
    }
    free(blk);
    if (ret == 0 && last * cs < q->file_size)
        file_truncate_quiet(img, last * cs);
    return ret;
}
