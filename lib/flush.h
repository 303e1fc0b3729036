/*
 * flush.h - the order dirty metadata reaches the disk in (flush.c),
 * qcow2-format.md §13.
 */
#ifndef QIMG_FLUSH_H
#define QIMG_FLUSH_H

#include "image.h"

/* Write all dirty metadata in crash-safe order, then fdatasync. */
int qcow2_flush(qimg_image *img);
/* The same, as the caches' make_room hook (ctx: the image). */
int qcow2_flush_hook(void *ctx);

#endif
