/*
 * meta.c - the set of metadata clusters and the overlap check.
 *
 * What is checked against the set of known metadata clusters today: guest
 * data written in place (guest.c), every cluster refcount_alloc() hands
 * out, and the new refcount blocks and tables refcount.c writes. A hit
 * sets the corrupt bit (QEMU's only permitted write on a damaged image)
 * and fails the request. Not yet checked: writes of L1 entries, L2 tables
 * and refcount blocks that are already metadata, of the bitmap directory,
 * and of a repair (rebuild.c) or a snapshot transaction (which places
 * its metadata in clusters it has counted free instead).
 * The set is filled by metaset.c and kept current by the table modules as
 * they allocate and free metadata.
 */
#include "meta.h"

#include <errno.h>
#include <stdlib.h>

#include "error.h"
#include "roots.h"

int meta_init(qimg_image *img,
              const char *(*describe)(qimg_image *, uint64_t))
{
    struct meta_state *m = calloc(1, sizeof *m);

    if (!m)
        return qimg_err(ENOMEM, "Out of memory");
    m->describe = describe;
    img->q->meta = m;
    return 0;
}

void meta_free(qimg_image *img)
{
    if (!img->q->meta)
        return;
    idset_free(&img->q->meta->set);
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
    struct meta_state *m = img->q->meta;

    idset_free(&m->set);
    m->ready = false;
}

int meta_add(qimg_image *img, uint64_t off, uint64_t len)
{
    const struct qcow2 *q = img->q;
    struct meta_state *m = q->meta;

    if (!m->ready || !len || off + len < off)
        return 0;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++)
        if (idset_add(&m->set, c) < 0)
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
         c <= (off + len - 1) >> q->cluster_bits; c++)
        idset_del(&m->set, c);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

int meta_list_sorted(const qimg_image *img, uint64_t **out, size_t *n)
{
    const struct idset *s = &img->q->meta->set;
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

int meta_signal_overlap(qimg_image *img, uint64_t idx)
{
    return roots_signal_corruption(
        img, "Preventing invalid write on metadata (overlaps with %s)",
        img->q->meta->describe(img, idx));
}

int meta_overlap_check(qimg_image *img, uint64_t off, uint64_t len)
{
    const struct qcow2 *q = img->q;
    const struct meta_state *m = q->meta;

    if (!m->ready || !len)
        return 0;
    for (uint64_t c = off >> q->cluster_bits;
         c <= (off + len - 1) >> q->cluster_bits; c++)
        if (c == 0 || idset_has(&m->set, c))
            return meta_signal_overlap(img, c);
    return 0;
}
