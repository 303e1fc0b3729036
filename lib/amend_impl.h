/*
 * amend_impl.h - private to amend.c and amend_zero.c: the new refcounts
 * both build, and the zero-cluster rewrite of a downgrade.
 */
#ifndef QIMG_AMEND_IMPL_H
#define QIMG_AMEND_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "amend.h"
#include "newrefs.h"
#include "roots.h"

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
