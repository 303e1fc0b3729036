/*
 * amend_refs.c - the refcounts of an amend's new state, held in memory at
 * the new width as one array (the refblock encoding, one entry per
 * cluster) until amend.c writes them as a new refcount structure.
 *
 * qcow2-format.md §4 (refcount entries of 2^order bits).
 */
#include "amend_impl.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "refcount.h"
#include "util.h"

uint64_t nr_get(const struct newrefs *r, uint64_t k)
{
    return k < r->cap ? refblock_get(r->refs, k, r->order) : 0;
}

int nr_reserve(struct newrefs *r, uint64_t n)
{
    uint64_t cap = MAX(n, r->cap * 2);
    size_t old = (size_t)((r->cap << r->order) / 8 + 1);
    size_t len = (size_t)((cap << r->order) / 8 + 1);
    uint8_t *b;

    if (n <= r->cap)
        return 0;
    b = realloc(r->refs, len);
    if (!b)
        return qimg_err(ENOMEM, "Out of memory");
    memset(b + old, 0, len - old);
    r->refs = b;
    r->cap = cap;
    return 0;
}

int nr_set(struct newrefs *r, uint64_t k, uint64_t v)
{
    int ret = nr_reserve(r, k + 1);

    if (ret < 0)
        return ret;
    refblock_set(r->refs, k, r->order, v);
    if (v && k >= r->used)
        r->used = k + 1;
    return 0;
}

int nr_add(struct newrefs *r, uint64_t cs, uint64_t off, int64_t d)
{
    uint64_t k = off / cs, v = nr_get(r, k);
    uint64_t max = r->order == 6 ? UINT64_MAX : (1ull << (1u << r->order)) - 1;

    if ((d < 0 && v < (uint64_t)-d) || (d > 0 && max - v < (uint64_t)d))
        return qimg_err(EINVAL, "Reference count of cluster %#" PRIx64
                                " does not match its references",
                        (uint64_t)(k * cs));
    return nr_set(r, k, v + (uint64_t)d);
}
