/*
 * backing.h - reading through the backing chain (backing.c).
 *
 * The one cycle in lib/: a guest read of an unallocated range reads the
 * backing image (backing_read), which is a guest read of the image below
 * (guest.c), down to the bottom of the chain. Likewise for block status.
 */
#ifndef QIMG_BACKING_H
#define QIMG_BACKING_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

/* Read guest bytes [off, off+len) from the backing chain (zeros without
 * one, or past its end). */
int backing_read(qimg_image *img, void *buf, size_t len, uint64_t off);
/* Status of [off, off+len) (inside the disk, len > 0) through the chain:
 * the first layer that allocates it answers (depth says which); data over
 * a hole of the host file is also reported as zero. */
int backing_map(qimg_image *img, uint64_t off, uint64_t len,
                struct qimg_extent *out);
/* One layer's own status (raw: the file's; qcow2: its tables). */
int layer_block_status(qimg_image *img, uint64_t off, uint64_t len,
                       struct qimg_extent *out);
/* Resolve a backing name against the directory of `base`. */
char *backing_full_path(const char *base, const char *name);

#endif
