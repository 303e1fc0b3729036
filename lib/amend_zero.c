/*
 * amend_zero.c - a downgrade's zero clusters (qemu-img amend -o
 * compat=0.10): v2 has no zero flag, and no persistent bitmaps.
 *
 * qcow2-format.md §3.3 (zero entries, v3 only), §3.7 (COPIED), §4.1 (what
 * is counted), §13 (a new table is written before the pointer to it).
 * amend.c owns the plan and the header switch; this file reads every
 * table and builds the rewritten ones into the new refcounts.
 */
#include "amend_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "error.h"
#include "file.h"
#include "l1l2.h"
#include "snaptable.h"
#include "util.h"

/* §3.3: the bits of a standard L2 entry a downgrade looks at. */
#define L2E_ZERO 1ull
#define L2E_COMPRESSED (1ull << 62)

/* ---- What the tables hold ----------------------------------------------- */

/* Every L1 table (the active one, then each snapshot's) and the L2 tables
 * they name. */
struct trees {
    uint8_t **l1;      /* [0] active, [1 + i] snapshot i (disk order) */
    uint32_t *l1_size;
    uint32_t n;
    uint64_t *l2;      /* distinct L2 table offsets, ascending */
    size_t nl2;
    uint64_t *zt;      /* those holding a zero entry, ascending */
    size_t nzt;
    bool compressed;   /* some entry is compressed */
};

static void trees_free(struct trees *t)
{
    for (uint32_t i = 0; t->l1 && i < t->n; i++)
        free(t->l1[i]);
    free(t->l1);
    free(t->l1_size);
    free(t->l2);
    free(t->zt);
    memset(t, 0, sizeof *t);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return (x > y) - (x < y);
}

static int push(uint64_t **v, size_t *len, size_t *cap, uint64_t x)
{
    if (*len == *cap) {
        size_t nc = *cap ? *cap * 2 : 64;
        uint64_t *nv = realloc(*v, nc * sizeof *nv);
        if (!nv)
            return qimg_err(ENOMEM, "Out of memory");
        *v = nv;
        *cap = nc;
    }
    (*v)[(*len)++] = x;
    return 0;
}

static int read_l1s(qimg_image *img, struct trees *t)
{
    struct qcow2 *q = img->q;
    uint32_t n = q->sn->nb_snaps + 1;
    int ret = 0;

    t->l1 = calloc(n, sizeof *t->l1);
    t->l1_size = calloc(n, sizeof *t->l1_size);
    if (!t->l1 || !t->l1_size)
        return qimg_err(ENOMEM, "Out of memory");
    t->n = n;
    t->l1_size[0] = q->l1s->l1_size;
    t->l1[0] = malloc((size_t)q->l1s->l1_size * 8 + 1);
    if (!t->l1[0])
        return qimg_err(ENOMEM, "Out of memory");
    memcpy(t->l1[0], q->l1s->l1, (size_t)q->l1s->l1_size * 8);
    for (uint32_t i = 0; ret == 0 && i + 1 < n; i++) {
        const struct snap *s = &q->sn->snaps[i];
        t->l1_size[i + 1] = s->l1_size;
        ret = snap_check_l1(img, s);
        if (ret == 0)
            ret = file_read_table(img, &t->l1[i + 1], s->l1_off,
                                  s->l1_size ? (size_t)s->l1_size * 8 : 8,
                                  "Snapshot L1 table");
    }
    return ret;
}

static uint64_t l1_ptr(const struct trees *t, uint32_t k, uint32_t i)
{
    return be64_load(t->l1[k] + (size_t)i * 8) & L1E_OFFSET_MASK;
}

/* Read every L1 table and, once each, every L2 table they name. */
static int census(qimg_image *img, struct trees *t)
{
    struct qcow2 *q = img->q;
    size_t cap = 0, zcap = 0;
    uint8_t *buf = NULL;
    int ret;

    memset(t, 0, sizeof *t);
    ret = read_l1s(img, t);
    for (uint32_t k = 0; ret == 0 && k < t->n; k++)
        for (uint32_t i = 0; ret == 0 && i < t->l1_size[k]; i++)
            if (l1_ptr(t, k, i))
                ret = push(&t->l2, &t->nl2, &cap, l1_ptr(t, k, i));
    if (ret == 0 && t->nl2)
        qsort(t->l2, t->nl2, sizeof *t->l2, cmp_u64);
    if (ret == 0 && t->nl2) {
        size_t j = 1;
        for (size_t i = 1; i < t->nl2; i++)
            if (t->l2[i] != t->l2[j - 1])
                t->l2[j++] = t->l2[i];
        t->nl2 = j;
    }
    for (size_t i = 0; ret == 0 && i < t->nl2; i++) {
        bool zero = false;
        free(buf);
        buf = NULL;
        ret = file_read_table(img, &buf, t->l2[i], q->cluster_size,
                              "L2 table");
        for (uint64_t k = 0; ret == 0 && k < q->l2_entries; k++) {
            uint64_t e = be64_load(buf + k * q->l2_entry_size);
            if (e & L2E_COMPRESSED)
                t->compressed = true;
            else if (e & L2E_ZERO)
                zero = true;
        }
        if (ret == 0 && zero)
            ret = push(&t->zt, &t->nzt, &zcap, t->l2[i]);
    }
    free(buf);
    return ret;
}

int amend_check_tables(qimg_image *img, struct amend_plan *p)
{
    struct trees t;
    int ret;

    p->expand = false;
    if (p->version >= img->q->hdr.version)
        return 0;
    ret = census(img, &t);
    if (ret == 0 && t.compressed &&
        (img->q->hdr.incompatible & INCOMPAT_COMPRESSION))
        ret = qimg_err(ENOTSUP, "Cannot downgrade an image with zstd "
                                "compression type and existing compressed "
                                "clusters");
    if (ret == 0)
        p->expand = t.nzt > 0;
    trees_free(&t);
    return ret;
}

/* ---- A downgrade's zero clusters ------------------------------------------ */

/* v2 has no zero flag. A zero entry becomes: nothing (unallocated) where
 * no backing file shows through; else a data cluster of zeros, its own
 * cluster zeroed where only this entry's table names it, a new one past
 * the end where another entry shares it (QEMU zeroes a shared cluster in
 * place, and the snapshot holding data there loses it). Every table that
 * changes gets a copy, every L1 table naming one a copy, the snapshot
 * table a copy if a snapshot's L1 moved; all past the end of the file,
 * counted in the new refcounts, switched in by the header write. */
struct pending {
    uint64_t off;
    uint8_t *buf; /* NULL: a cluster of zeros */
    uint64_t len;
};

struct expand {
    qimg_image *img;
    struct newrefs *r;
    uint64_t cs, next; /* next cluster index to take, past everything */
    struct trees t;
    /* Tables rewritten: old offset, pointers to it, new content. */
    uint64_t *rw_off;
    uint32_t *rw_nptr;
    uint8_t **rw_buf;
    size_t nrw, caprw;
    uint64_t *to_one; /* clusters a dropped reference left at refcount 1 */
    size_t nto, capto;
    struct freelist *freed; /* clusters the new state frees */
    struct pending *w;
    size_t nw, capw;
};

static int add_write(struct expand *x, uint64_t off, uint8_t *buf,
                     uint64_t len)
{
    if (x->nw == x->capw) {
        size_t nc = x->capw ? x->capw * 2 : 64;
        struct pending *n = realloc(x->w, nc * sizeof *n);
        if (!n) {
            free(buf);
            return qimg_err(ENOMEM, "Out of memory");
        }
        x->w = n;
        x->capw = nc;
    }
    x->w[x->nw++] = (struct pending){off, buf, len};
    return 0;
}

/* n clusters past everything, each counted ref times. */
static int take(struct expand *x, uint64_t n, uint64_t ref, uint64_t *off)
{
    int ret = 0;

    *off = x->next * x->cs;
    for (uint64_t i = 0; ret == 0 && i < n; i++)
        ret = nr_add(x->r, x->cs, (x->next + i) * x->cs, (int64_t)ref);
    x->next += n;
    return ret;
}

/* Drop ref references to [off, off+n clusters); note what that frees. */
static int drop(struct expand *x, uint64_t off, uint64_t n, uint64_t ref)
{
    int ret = 0;

    for (uint64_t i = 0; ret == 0 && i < n; i++) {
        uint64_t c = off + i * x->cs;
        ret = nr_add(x->r, x->cs, c, -(int64_t)ref);
        if (ret == 0 && nr_get(x->r, c / x->cs) == 0)
            ret = push(&x->freed->v, &x->freed->n, &x->freed->cap, c);
        if (ret == 0 && nr_get(x->r, c / x->cs) == 1)
            ret = push(&x->to_one, &x->nto, &x->capto, c);
    }
    return ret;
}

static uint32_t pointers_to(const struct trees *t, uint64_t l2)
{
    uint32_t n = 0;

    for (uint32_t k = 0; k < t->n; k++)
        for (uint32_t i = 0; i < t->l1_size[k]; i++)
            n += l1_ptr(t, k, i) == l2;
    return n;
}

static bool in_sorted(const uint64_t *v, size_t n, uint64_t x)
{
    return n && bsearch(&x, v, n, sizeof *v, cmp_u64);
}

static int add_rewrite(struct expand *x, uint64_t off, uint8_t *buf)
{
    if (x->nrw == x->caprw) {
        size_t nc = x->caprw ? x->caprw * 2 : 64;
        uint64_t *o = realloc(x->rw_off, nc * sizeof *o);
        uint32_t *p = o ? realloc(x->rw_nptr, nc * sizeof *p) : NULL;
        uint8_t **b = p ? realloc(x->rw_buf, nc * sizeof *b) : NULL;
        if (o)
            x->rw_off = o;
        if (p)
            x->rw_nptr = p;
        if (!b) {
            free(buf);
            return qimg_err(ENOMEM, "Out of memory");
        }
        x->rw_buf = b;
        x->caprw = nc;
    }
    x->rw_off[x->nrw] = off;
    x->rw_nptr[x->nrw] = pointers_to(&x->t, off);
    x->rw_buf[x->nrw++] = buf;
    return 0;
}

/* Turn the zero entries of table i (read into its buffer) into v2 ones. */
static int convert_zero(struct expand *x, size_t i, bool backing)
{
    struct qcow2 *q = x->img->q;
    uint32_t nptr = x->rw_nptr[i];
    uint8_t *b = x->rw_buf[i];
    int ret = 0;

    for (uint64_t k = 0; ret == 0 && k < q->l2_entries; k++) {
        uint64_t e = be64_load(b + k * 8), host = e & L2E_OFFSET_MASK, d;
        if ((e & L2E_COMPRESSED) || !(e & L2E_ZERO))
            continue;
        if (host && nr_get(x->r, host / x->cs) == nptr) {
            /* Only this table names it: zero it where it is. */
            ret = add_write(x, host, NULL, x->cs);
            d = host;
        } else {
            if (host)
                ret = drop(x, host, 1, nptr);
            d = 0;
            if (ret == 0 && backing)
                ret = take(x, 1, nptr, &d);
        }
        if (d && nptr == 1)
            d |= QCOW_OFLAG_COPIED;
        be64_store(b + k * 8, d);
    }
    return ret;
}

/* A dropped reference may leave a cluster at refcount 1 that an active
 * table maps without COPIED: fix the flag (in a copy of the table). */
static int fix_copied(struct expand *x)
{
    struct qcow2 *q = x->img->q;
    const struct trees *t = &x->t;
    int ret = 0;

    if (!x->nto)
        return 0;
    qsort(x->to_one, x->nto, sizeof *x->to_one, cmp_u64);
    for (uint32_t i = 0; ret == 0 && i < t->l1_size[0]; i++) {
        uint64_t p = l1_ptr(t, 0, i);
        uint8_t *b = NULL;
        bool own = false, fixed = false;
        if (!p)
            continue;
        for (size_t j = 0; j < x->nrw; j++)
            if (x->rw_off[j] == p)
                b = x->rw_buf[j];
        if (!b) {
            ret = file_read_table(x->img, &b, p, x->cs, "L2 table");
            own = true;
        }
        for (uint64_t k = 0; ret == 0 && k < q->l2_entries; k++) {
            uint64_t e = be64_load(b + k * 8), host = e & L2E_OFFSET_MASK;
            if ((e & (L2E_COMPRESSED | L2E_ZERO | QCOW_OFLAG_COPIED)) ||
                !host || !in_sorted(x->to_one, x->nto, host) ||
                nr_get(x->r, host / x->cs) != 1)
                continue;
            be64_store(b + k * 8, e | QCOW_OFLAG_COPIED);
            fixed = true;
        }
        if (ret == 0 && own && fixed)
            ret = add_rewrite(x, p, b);
        else if (own)
            free(b);
    }
    return ret;
}

/* New copies of the rewritten tables, of the L1 tables naming them and of
 * the snapshot table; f gets the new roots. */
static int place_tables(struct expand *x, struct roots_format *f)
{
    struct qcow2 *q = x->img->q;
    struct trees *t = &x->t;
    uint64_t *new_off = calloc(x->nrw + 1, sizeof *new_off);
    struct snap *snaps = NULL;
    bool snap_moved = false;
    int ret = new_off ? 0 : qimg_err(ENOMEM, "Out of memory");

    for (size_t i = 0; ret == 0 && i < x->nrw; i++) {
        ret = take(x, 1, x->rw_nptr[i], &new_off[i]);
        if (ret == 0)
            ret = drop(x, x->rw_off[i], 1, x->rw_nptr[i]);
        if (ret == 0) {
            ret = add_write(x, new_off[i], x->rw_buf[i], x->cs);
            x->rw_buf[i] = NULL;
        }
    }
    if (ret == 0 && q->sn->nb_snaps) {
        snaps = calloc(q->sn->nb_snaps, sizeof *snaps);
        if (!snaps)
            ret = qimg_err(ENOMEM, "Out of memory");
        for (uint32_t i = 0; ret == 0 && i < q->sn->nb_snaps; i++)
            ret = snap_copy(&snaps[i], &q->sn->snaps[i]);
    }
    for (uint32_t k = 0; ret == 0 && k < t->n; k++) {
        uint64_t len = (uint64_t)t->l1_size[k] * 8, n, off;
        uint64_t old = k ? q->sn->snaps[k - 1].l1_off : q->hdr.l1_table_offset;
        bool changed = false;
        uint8_t *l1;
        for (uint32_t i = 0; i < t->l1_size[k]; i++)
            for (size_t j = 0; j < x->nrw; j++)
                if (l1_ptr(t, k, i) == x->rw_off[j]) {
                    uint64_t e = be64_load(t->l1[k] + (size_t)i * 8);
                    be64_store(t->l1[k] + (size_t)i * 8,
                               (e & ~L1E_OFFSET_MASK) | new_off[j]);
                    changed = true;
                    break;
                }
        if (!changed)
            continue;
        n = DIV_ROUND_UP(len, x->cs);
        l1 = calloc(n, x->cs);
        if (!l1) {
            ret = qimg_err(ENOMEM, "Out of memory");
            break;
        }
        memcpy(l1, t->l1[k], len);
        ret = take(x, n, 1, &off);
        if (ret == 0)
            ret = drop(x, old, n, 1);
        if (ret == 0)
            ret = add_write(x, off, l1, n * x->cs);
        else
            free(l1);
        if (k == 0) {
            f->l1_off = off;
        } else {
            snaps[k - 1].l1_off = off;
            snap_moved = true;
        }
    }
    if (ret == 0 && snap_moved) {
        uint8_t *buf = NULL;
        uint64_t len = 0, n, off;
        ret = snap_table_encode(q, snaps, q->sn->nb_snaps, &buf, &len);
        n = DIV_ROUND_UP(len, x->cs);
        if (ret == 0)
            ret = take(x, n, 1, &off);
        if (ret == 0)
            ret = drop(x, q->hdr.snapshots_offset,
                       DIV_ROUND_UP(q->sn->snap_table_size, x->cs), 1);
        if (ret == 0) {
            ret = add_write(x, off, buf, len);
            buf = NULL;
            f->snap_off = off;
        }
        free(buf);
    }
    for (uint32_t i = 0; snaps && i < q->sn->nb_snaps; i++)
        snap_free(&snaps[i]);
    free(snaps);
    free(new_off);
    return ret;
}

static void expand_free(struct expand *x)
{
    for (size_t i = 0; i < x->nrw; i++)
        free(x->rw_buf[i]);
    for (size_t i = 0; i < x->nw; i++)
        free(x->w[i].buf);
    free(x->rw_off);
    free(x->rw_nptr);
    free(x->rw_buf);
    free(x->to_one);
    free(x->w);
    trees_free(&x->t);
}

/* Build the new tables in memory, then write them past the end (and zero
 * the clusters that stay); nothing is written before every count is
 * made. */
int amend_expand_zero(qimg_image *img, struct newrefs *r,
                      struct roots_format *f, struct freelist *freed)
{
    struct qcow2 *q = img->q;
    struct expand x = {.img = img, .r = r, .cs = q->cluster_size,
                       .freed = freed};
    uint8_t *zeros = NULL;
    int ret = census(img, &x.t);

    x.next = MAX(DIV_ROUND_UP(q->file_size, x.cs), r->used);
    for (size_t i = 0; ret == 0 && i < x.t.nzt; i++) {
        uint8_t *b = NULL;
        ret = file_read_table(img, &b, x.t.zt[i], x.cs, "L2 table");
        if (ret == 0)
            ret = add_rewrite(&x, x.t.zt[i], b);
        if (ret == 0)
            ret = convert_zero(&x, x.nrw - 1, q->hdr.backing_file != NULL);
    }
    if (ret == 0)
        ret = fix_copied(&x);
    if (ret == 0)
        ret = place_tables(&x, f);
    if (ret == 0) {
        zeros = calloc(1, x.cs);
        if (!zeros)
            ret = qimg_err(ENOMEM, "Out of memory");
    }
    for (size_t i = 0; ret == 0 && i < x.nw; i++)
        ret = file_pwrite(img, x.w[i].buf ? x.w[i].buf : zeros,
                          (size_t)x.w[i].len, x.w[i].off);
    if (ret == 0)
        file_extend(img, x.next * x.cs);
    if (ret == 0)
        ret = nr_reserve(r, x.next);
    r->used = MAX(r->used, x.next);
    free(zeros);
    expand_free(&x);
    return ret;
}

/* ---- A downgrade's bitmaps ------------------------------------------------ */

struct bm_drop {
    struct newrefs *r;
    uint64_t cs;
    struct freelist *freed;
};

static int drop_bitmap_ref(void *ctx, int64_t bitmap, int64_t entry,
                           uint64_t off, uint64_t len)
{
    struct bm_drop *d = ctx;
    int ret = 0;

    (void)bitmap;
    (void)entry;
    for (uint64_t c = off / d->cs * d->cs; ret == 0 && c < off + len;
         c += d->cs) {
        ret = nr_add(d->r, d->cs, c, -1);
        if (ret == 0 && nr_get(d->r, c / d->cs) == 0)
            ret = push(&d->freed->v, &d->freed->n, &d->freed->cap, c);
    }
    return ret;
}

int amend_drop_bitmaps(qimg_image *img, struct newrefs *r,
                       struct freelist *freed)
{
    struct bm_drop d = {r, img->q->cluster_size, freed};

    return bitmap_each_ref(img, img->q->file_size, drop_bitmap_ref, &d);
}
