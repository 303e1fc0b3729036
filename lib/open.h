/*
 * open.h - opening and closing image handles, the backing chain included
 * (open.c).
 */
#ifndef QIMG_OPEN_H
#define QIMG_OPEN_H

#include "image.h"
#include "io.h"

/* Open over an io backend (consumed, even on failure); depth counts the
 * backing files above this one. */
int image_open_io(qimg_image **out, struct qimg_io *io, const char *filename,
                  const struct qimg_open_opts *o, int depth);
/* Flush (if writable) and free the handle and its backing chain. */
int image_close(qimg_image *img);

#endif
