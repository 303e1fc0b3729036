/*
 * meta.c - which clusters hold which metadata, and the overlap check.
 *
 * A write of a host cluster may only land on metadata of the kind it
 * writes: guest data and new allocations on none, an L1 entry on the
 * active L1 table, an L2 table on itself, a refcount block on itself, a
 * refcount table entry on the refcount table, a bitmap flag on the bitmap
 * directory. A write that would land anywhere else sets the corrupt bit
 * (QEMU's only permitted write on a damaged image), is not made, and is
 * reported with the kind it would hit, in QEMU's words.
 *
 * Checked today: guest data written in place and compressed (guest.c),
 * every cluster refcount_alloc() hands out, new refcount blocks and
 * tables, L1 entries as they change and as they are written, L2 tables
 * and refcount blocks as they are written back, refcount table entries,
 * bitmap directory flags, a repair's new refcount structure where the
 * image allows a census. Not checked here: a repair's fixes in place
 * (COPIED flags, zeroed entries) in the L2 tables its walk reads, and a
 * snapshot transaction's, which places its metadata in
 * clusters it has verified free instead (metaset_check_counted).
 *
 * The map is filled by metaset.c and kept current by the table modules as
 * they allocate and free metadata.
 */
#include "meta.h"

#include <errno.h>
#include <stdlib.h>

#include "error.h"
#include "roots.h"

static const char *const kind_names[META_NB_KINDS] = {
    [META_HEADER] = "qcow2_header",
    [META_ACTIVE_L1] = "active L1 table",
    [META_ACTIVE_L2] = "active L2 table",
    [META_REFCOUNT_TABLE] = "refcount table",
    [META_REFCOUNT_BLOCK] = "refcount block",
    [META_SNAPSHOT_TABLE] = "snapshot table",
    [META_INACTIVE_L1] = "inactive L1 table",
    [META_INACTIVE_L2] = "inactive L2 table",
    [META_BITMAP_DIR] = "bitmap directory",
};

int meta_init(qimg_image *img)
{
    struct meta_state *m = calloc(1, sizeof *m);

    if (!m)
        return qimg_err(ENOMEM, "Out of memory");
    img->q->meta = m;
    return 0;
}

static void clear(struct meta_state *m)
{
    idset_free(&m->any);
    for (int k = 0; k < META_NB_KINDS; k++)
        idset_free(&m->kind[k]);
    m->ready = false;
}

void meta_free(qimg_image *img)
{
    if (!img->q->meta)
        return;
    clear(img->q->meta);
    idset_free(&img->q->meta->avoid);
    free(img->q->meta);
    img->q->meta = NULL;
}

bool meta_ready(const qimg_image *img)
{
    return img->q->meta->ready;
}

void meta_start(qimg_image *img)
{
    img->q->meta->ready = true;
}

void meta_reset(qimg_image *img)
{
    clear(img->q->meta);
}

int meta_add(qimg_image *img, enum meta_kind kind, uint64_t off,
             uint64_t len)
{
    const struct qcow2 *q = img->q;
    struct meta_state *m = q->meta;

    if (!m->ready || !len || off + len < off)
        return 0;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++)
        if (idset_add(&m->any, c) < 0 || idset_add(&m->kind[kind], c) < 0)
            return -ENOMEM;
    return 0;
}

void meta_del(qimg_image *img, uint64_t off, uint64_t len)
{
    const struct qcow2 *q = img->q;
    struct meta_state *m = q->meta;

    if (!m->ready || !len || off + len < off)
        return;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++) {
        if (!idset_has(&m->any, c))
            continue;
        idset_del(&m->any, c);
        for (int k = 0; k < META_NB_KINDS; k++)
            idset_del(&m->kind[k], c);
    }
}

int meta_retag(qimg_image *img, uint64_t off, uint64_t len,
               enum meta_kind from, enum meta_kind to)
{
    const struct qcow2 *q = img->q;
    struct meta_state *m = q->meta;

    if (!m->ready || !len || off + len < off)
        return 0;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++) {
        if (!idset_has(&m->kind[from], c))
            continue;
        idset_del(&m->kind[from], c);
        if (idset_add(&m->kind[to], c) < 0)
            return -ENOMEM;
    }
    return 0;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

int meta_list_sorted(const qimg_image *img, uint64_t **out, size_t *n)
{
    const struct idset *s = &img->q->meta->any;
    uint64_t *c = malloc((s->n ? s->n : 1) * sizeof *c);

    *out = NULL;
    *n = 0;
    if (!c)
        return qimg_err(ENOMEM, "Out of memory");
    for (size_t i = 0; i < s->cap; i++)
        if (s->slots[i] != UINT64_MAX)
            c[(*n)++] = s->slots[i];
    qsort(c, *n, sizeof *c, cmp_u64);
    *out = c;
    return 0;
}

/* The kinds cluster idx holds (cluster 0 is always the header). */
static unsigned kinds_of(const struct meta_state *m, uint64_t idx)
{
    unsigned mask = idx == 0 ? META_BIT(META_HEADER) : 0;

    for (int k = 0; k < META_NB_KINDS; k++)
        if (idset_has(&m->kind[k], idx))
            mask |= META_BIT(k);
    return mask;
}

unsigned meta_kinds(const qimg_image *img, uint64_t idx)
{
    const struct meta_state *m = img->q->meta;

    return idset_has(&m->any, idx) ? kinds_of(m, idx) : 0;
}

int meta_signal_overlap(qimg_image *img, uint64_t idx, unsigned allowed)
{
    unsigned hit = kinds_of(img->q->meta, idx) & ~allowed;
    const char *what = "metadata";

    for (int k = 0; k < META_NB_KINDS; k++)
        if (hit & META_BIT(k)) {
            what = kind_names[k];
            break;
        }
    return roots_signal_corruption(
        img, "Preventing invalid write on metadata (overlaps with %s)", what);
}

int meta_check_write(qimg_image *img, unsigned allowed, uint64_t off,
                     uint64_t len)
{
    const struct qcow2 *q = img->q;
    const struct meta_state *m = q->meta;

    if (!m->ready || !len)
        return 0;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++) {
        if (c != 0 && !idset_has(&m->any, c))
            continue;
        if (!allowed || (kinds_of(m, c) & ~allowed))
            return meta_signal_overlap(img, c, allowed);
    }
    return 0;
}

int meta_overlap_check(qimg_image *img, uint64_t off, uint64_t len)
{
    return meta_check_write(img, 0, off, len);
}

/* ---- Clusters allocation steps over ------------------------------------ */

bool meta_avoid_ready(const qimg_image *img)
{
    return img->q->meta->avoid_ready;
}

void meta_avoid_set_ready(qimg_image *img)
{
    img->q->meta->avoid_ready = true;
}

int meta_avoid_add(qimg_image *img, uint64_t idx)
{
    return idset_add(&img->q->meta->avoid, idx) < 0 ? -ENOMEM : 0;
}

bool meta_avoid_any(const qimg_image *img)
{
    return img->q->meta->avoid.n != 0;
}

bool meta_avoid(const qimg_image *img, uint64_t idx)
{
    const struct meta_state *m = img->q->meta;

    return m->avoid.n && idset_has(&m->avoid, idx);
}
