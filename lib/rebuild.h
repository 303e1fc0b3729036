/*
 * rebuild.h - the writes a repair makes (rebuild.c); check decides what
 * to repair.
 */
#ifndef QIMG_REBUILD_H
#define QIMG_REBUILD_H

#include <stdint.h>

#include "image.h"
#include "snaptable.h"

/* How far past the end of the file a rebuild steps over what entries name
 * there (further out, an offset is bogus rather than a truncated file). */
#define REBUILD_AVOID_MAX (1ull << 30)

/* New refcount structure from a computed table (refblock encoding, one
 * entry per cluster), placed past the end of the file and past `avoid`
 * (the first cluster after what entries name past the end) if that lies
 * within REBUILD_AVOID_MAX of it; one header write switches to it. */
int rebuild_refcounts(qimg_image *img, const uint8_t *refs, uint64_t nb_refs,
                      uint64_t avoid);
/* The same for a structure of entries 2^order bits wide (refs in that
 * width), written and made durable but not switched in: the caller's
 * header write names it (*rt_off, *rt_clusters). */
int rebuild_refcounts_width(qimg_image *img, unsigned order,
                            const uint8_t *refs, uint64_t nb_refs,
                            uint64_t *rt_off, uint32_t *rt_clusters);
int rebuild_set_incompat(qimg_image *img, uint64_t bits);
int rebuild_snapshot_table(qimg_image *img, const struct snap *snaps,
                           uint32_t n);

#endif
