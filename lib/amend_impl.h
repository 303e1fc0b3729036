/*
 * amend_impl.h - private to amend.c and amend_zero.c: the new refcounts
 * both build, and the zero-cluster rewrite of a downgrade.
 */
#ifndef QIMG_AMEND_IMPL_H
#define QIMG_AMEND_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "amend.h"
#include "roots.h"

/* The refcounts of the new state, 2^order bits wide, growing as clusters
 * are taken past the end (amend_refs.c). */
struct newrefs {
    uint8_t *refs;
    uint64_t cap;  /* clusters refs has room for */
    uint64_t used; /* past the last cluster with a non-zero count */
    unsigned order;
};

uint64_t nr_get(const struct newrefs *r, uint64_t k);
/* Room for counts of clusters [0, n) (used unchanged). */
int nr_reserve(struct newrefs *r, uint64_t n);
int nr_set(struct newrefs *r, uint64_t k, uint64_t v);
/* Add d to the count of the cluster at host offset off; refuses a count
 * that would go below 0 or past the width. */
int nr_add(struct newrefs *r, uint64_t cs, uint64_t off, int64_t d);

/* Clusters the switch frees (discarded once it is made). */
struct freelist {
    uint64_t *v;
    size_t n, cap;
};

/* amend_zero.c: rewrite every zero entry for v2 into new copies of the
 * tables (and of the L1 tables and snapshot table naming them) past the
 * end of the file, counted in r; f gets the new roots, freed what the
 * switch frees. Nothing is written before every count is made. */
int amend_expand_zero(qimg_image *img, struct newrefs *r,
                      struct roots_format *f, struct freelist *freed);
/* amend_zero.c: v2 has no persistent bitmaps: their directory, tables and
 * data are freed in r (the header drops the extension). */
int amend_drop_bitmaps(qimg_image *img, struct newrefs *r,
                       struct freelist *freed);

#endif
