/*
 * compact.h - give a qcow2 file's free space back in place, every
 * snapshot, bitmap and backing link kept (compact.c).
 */
#ifndef QIMG_COMPACT_H
#define QIMG_COMPACT_H

#include <stdint.h>

#include "image.h"

/* Called as clusters are moved: done of total. */
typedef void compact_progress_fn(void *opaque, uint64_t done, uint64_t total);

/* Move the clusters in use near the end of the file into free clusters
 * nearer the start, rewrite what names them, switch to the new state
 * with one write of header sector 0, then punch the free clusters left
 * and cut the file after the last one in use. The caller made the
 * refcounts exact (no leaks, no errors) and reopens the image after a
 * return of 0 (1: nothing moved, nothing switched; free clusters
 * punched). *moved: bytes copied. */
int compact_image(qimg_image *img, compact_progress_fn *fn, void *opaque,
                  uint64_t *moved);
/* After the reopen: punch every free cluster and cut the file after the
 * last cluster in use. The punches and the cut are advisory (nothing
 * names what they give back); a refcount block that cannot be read is an
 * error (and nothing is cut). */
int compact_trim(qimg_image *img);

#endif
