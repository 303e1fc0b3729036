/*
 * diffapi.c - qimg_snapshot_diff(): the guest ranges whose content may
 * differ between two snapshots (or a snapshot and the active disk), from
 * the tables alone.
 *
 * qcow2-format.md §3. Two L1 entries naming the same L2 table make a
 * whole table's range equal without reading it; two L2 entries naming the
 * same host cluster (COPIED aside), both reading zeros, or both
 * unallocated (the same backing file shows through) make a cluster equal.
 * Anything else is reported: a superset of the ranges whose bytes differ
 * (the caller may read and compare those, as `qimg diff --exact` does).
 * Past the end of the older disk everything is reported.
 */
#include "qimg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "file.h"
#include "image.h"
#include "l1l2.h"
#include "snaptable.h"
#include "util.h"

struct tree {
    uint8_t *l1;
    uint32_t l1_size;
    uint64_t size;
    bool own;
};

struct diff {
    qimg_image *img;
    const struct qcow2 *q;
    struct qimg_diff_extent *ext;
    size_t n, cap;
    uint8_t *a, *b; /* L2 tables */
};

static int load_tree(qimg_image *img, const char *spec, struct tree *t)
{
    const struct qcow2 *q = img->q;
    const struct snap *s;
    int idx, ret;

    memset(t, 0, sizeof *t);
    if (!spec) {
        t->l1 = q->l1s->l1;
        t->l1_size = q->l1s->l1_size;
        t->size = img->size;
        return 0;
    }
    idx = snap_find_by_id(q, spec);
    if (idx < 0)
        idx = snap_find_by_name(q, spec);
    if (idx < 0)
        return qimg_err(ENOENT, "Snapshot '%s' not found", spec);
    s = &q->sn->snaps[idx];
    ret = snap_check_l1(img, s);
    if (ret == 0 && s->l1_size)
        ret = file_read_table(img, &t->l1, s->l1_off, (size_t)s->l1_size * 8,
                              "Snapshot L1 table");
    if (ret < 0)
        return ret;
    t->l1_size = t->l1 ? s->l1_size : 0;
    t->size = s->disk_size;
    t->own = true;
    return 0;
}

static int emit(struct diff *d, uint64_t start, uint64_t len, bool zero)
{
    struct qimg_diff_extent *last = d->n ? &d->ext[d->n - 1] : NULL;

    if (!len)
        return 0;
    if (last && last->start + last->length == start && last->zero == zero) {
        last->length += len;
        return 0;
    }
    if (d->n == d->cap) {
        size_t cap = d->cap ? d->cap * 2 : 64;
        struct qimg_diff_extent *e = realloc(d->ext, cap * sizeof *e);
        if (!e)
            return qimg_err(ENOMEM, "Out of memory");
        d->ext = e;
        d->cap = cap;
    }
    d->ext[d->n++] = (struct qimg_diff_extent){start, len, zero};
    return 0;
}

/* The L2 table an L1 entry names, read into buf (all zeros for none). */
static int read_l2(struct diff *d, uint64_t l2_off, uint8_t *buf)
{
    const struct qcow2 *q = d->q;

    if (!l2_off) {
        memset(buf, 0, q->cluster_size);
        return 0;
    }
    if (l2_off & (q->cluster_size - 1) || l2_off >= q->file_size ||
        q->cluster_size > q->file_size - l2_off)
        return qimg_corrupt("L2 table offset %#" PRIx64 " is invalid",
                            l2_off);
    return file_pread(d->img, buf, q->cluster_size, l2_off);
}

/* The cluster reads as zeros without reading data. */
static bool reads_zero(const struct diff *d, enum cl_type t)
{
    return t == CL_ZERO_PLAIN || t == CL_ZERO_ALLOC ||
           (t == CL_UNALLOC && !d->img->backing);
}

static bool same(const struct diff *d, uint64_t ea, uint64_t ba, uint64_t eb,
                 uint64_t bb)
{
    enum cl_type ta = l2_cluster_type(d->q, ea), tb = l2_cluster_type(d->q, eb);

    if (((ea ^ eb) & ~QCOW_OFLAG_COPIED) == 0 && ba == bb)
        return true;
    if (reads_zero(d, ta) && reads_zero(d, tb))
        return true;
    return ta == CL_UNALLOC && tb == CL_UNALLOC && !d->q->ext_l2;
}

static uint64_t l1_ptr(const struct tree *t, uint64_t i)
{
    return i < t->l1_size ? l1_entry_get(t->l1, i) & L1E_OFFSET_MASK : 0;
}

/* One L1 index: guest bytes [g0, g1) of the newer disk. */
static int diff_range(struct diff *d, const struct tree *from,
                      const struct tree *to, uint64_t i, uint64_t g0,
                      uint64_t g1)
{
    const struct qcow2 *q = d->q;
    const uint64_t cs = q->cluster_size;
    uint64_t pa = l1_ptr(from, i), pb = l1_ptr(to, i);
    int ret;

    if (pa == pb && g1 <= from->size)
        return 0; /* the same table (or none on both sides) */
    ret = read_l2(d, pa, d->a);
    if (ret == 0)
        ret = read_l2(d, pb, d->b);
    for (uint64_t g = g0; ret == 0 && g < g1; g += cs) {
        uint64_t j = (g >> q->cluster_bits) & (q->l2_entries - 1);
        uint64_t eb = l2_entry_get(q, d->b, j), bb = l2_bitmap_get(q, d->b, j);
        bool zero = reads_zero(d, l2_cluster_type(q, eb));
        if (g + cs <= from->size &&
            same(d, l2_entry_get(q, d->a, j), l2_bitmap_get(q, d->a, j), eb,
                 bb))
            continue;
        ret = emit(d, g, MIN(cs, g1 - g), zero);
    }
    return ret;
}

void qimg_diff_free(struct qimg_diff_extent *e)
{
    free(e);
}

int qimg_snapshot_diff(qimg_image *img, const char *from, const char *to,
                       struct qimg_diff_extent **out, size_t *count)
{
    struct tree f = {0}, t = {0};
    struct diff d = {img, img->q, NULL, 0, 0, NULL, NULL};
    uint64_t span;
    int ret;

    *out = NULL;
    *count = 0;
    if (!img->q)
        return qimg_err(ENOTSUP, "This image format does not support "
                                 "snapshots");
    if (img->is_view)
        return qimg_err(EINVAL, "Open the image itself, not a snapshot");
    span = img->q->cluster_size * img->q->l2_entries;
    ret = load_tree(img, from, &f);
    if (ret == 0)
        ret = load_tree(img, to, &t);
    d.a = malloc(img->q->cluster_size);
    d.b = malloc(img->q->cluster_size);
    if (ret == 0 && (!d.a || !d.b))
        ret = qimg_err(ENOMEM, "Out of memory");
    for (uint64_t i = 0; ret == 0 && i * span < t.size; i++)
        ret = diff_range(&d, &f, &t, i, i * span, MIN((i + 1) * span, t.size));
    if (f.own)
        free(f.l1);
    if (t.own)
        free(t.l1);
    free(d.a);
    free(d.b);
    if (ret < 0) {
        free(d.ext);
        return ret;
    }
    *out = d.ext;
    *count = d.n;
    return 0;
}
