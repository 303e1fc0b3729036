/*
 * check.h - consistency check and repair (check.c and the check_*.c it is
 * split into); the public entry point is qimg_image_check().
 */
#ifndef QIMG_CHECK_H
#define QIMG_CHECK_H

#include "image.h"

/* QEMU repairs an image left dirty (lazy refcounts) on a read-write open;
 * so does qimg, with the same repair as `check -r all`. */
int check_repair_dirty(qimg_image *img);

#endif
