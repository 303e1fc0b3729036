/*
 * lock.h - QEMU-compatible image locks (lock.c).
 */
#ifndef QIMG_LOCK_H
#define QIMG_LOCK_H

#include <stdbool.h>

#include "io.h"
#include "qimg.h"

/* Take the locks QEMU takes for this kind of open and fail with QEMU's
 * message if another process's locks conflict. No-op without a file
 * descriptor, with no_locking, or where the file system cannot lock. */
int lock_image(struct qimg_io *io, bool read_write,
               const struct qimg_open_opts *o, const char *path);

#endif
