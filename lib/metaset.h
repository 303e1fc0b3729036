/*
 * metaset.h - the census of live metadata (metaset.c): which clusters the
 * header, the tables and the snapshot and bitmap directories occupy, for
 * the overlap check (meta.h) and before a snapshot operation allocates.
 */
#ifndef QIMG_METASET_H
#define QIMG_METASET_H

#include <stdint.h>

#include "image.h"

/* Fill the overlap check's set, once (before the first write); refuse
 * (corruption) if a table cluster 0 points at lies past the end of the
 * file. */
int metaset_build(qimg_image *img);
/* Before a guest write: no snapshot's L1 table starts inside the file and
 * runs past its end (the file would grow into it). Snapshot operations
 * refuse such a table in their own words. */
int metaset_check_snapshot_l1s(qimg_image *img);
/* Before a snapshot operation writes anything: every cluster of live
 * metadata must be counted, or first-fit allocation of the operation's new
 * metadata could land on it. The lowest uncounted one is reported as
 * QEMU's overlap check reports a write there. Refcounts come from get
 * (NULL: refcount_get), so a caller can load the blocks its own way; the
 * census is built first if it was not (metaset_build, its refcounts from
 * get too). */
int metaset_check_counted(qimg_image *img,
                          int (*get)(void *, uint64_t, uint64_t *),
                          void *ctx);

#endif
