/*
 * create.h - creating qcow2 and raw image files (create.c).
 */
#ifndef QIMG_CREATE_H
#define QIMG_CREATE_H

#include "image.h"
#include "io.h"

/* A new qcow2 image over io (consumed), left open read-write. */
int qcow2_create(qimg_image **out, struct qimg_io *io, const char *filename,
                 const struct qimg_create_opts *o);

#endif
