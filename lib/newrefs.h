/*
 * newrefs.h - the refcounts of a new image state, held in memory as one
 * array (the refblock encoding, one entry per cluster, 2^order bits wide)
 * until the operation building that state (amend, compact) writes them as
 * a new refcount structure (newrefs.c).
 */
#ifndef QIMG_NEWREFS_H
#define QIMG_NEWREFS_H

#include <stdint.h>

#include "image.h"

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

/* The cluster past every structure the header and the snapshot table
 * name: the L1 tables, the refcount table, the snapshot table, the bitmap
 * directory (and past the end of the file). */
uint64_t newrefs_roots_end(qimg_image *img);
/* The image's refcounts at width 2^order, the refcount structure's own
 * clusters counted 0 (the new state frees them), and so are clusters past
 * newrefs_roots_end() (stale counts no check sees; nothing names them on
 * an image the check passed). Refuses a count too wide for the order. */
int newrefs_load(qimg_image *img, unsigned order, struct newrefs *r);

#endif
