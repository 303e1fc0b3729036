/*
 * guest.h - guest reads, writes, write-zeroes, discard and block status
 * on a qcow2 image (guest.c).
 */
#ifndef QIMG_GUEST_H
#define QIMG_GUEST_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"

int guest_read(qimg_image *img, void *buf, size_t len, uint64_t off);
int guest_write(qimg_image *img, const void *buf, size_t len, uint64_t off);
int guest_write_compressed(qimg_image *img, const void *buf, size_t len,
                           uint64_t off);
int guest_zero(qimg_image *img, uint64_t off, uint64_t len, bool unmap);
/* -ENOTSUP where QEMU could not zero [off, off+len) without writing
 * zeros (BDRV_REQ_NO_FALLBACK): qcow2 v2, or an unaligned end whose unit
 * does not already read as zeros or holds data. Writes nothing. */
int guest_zero_no_fallback(qimg_image *img, uint64_t off, uint64_t len);
int guest_discard(qimg_image *img, uint64_t off, uint64_t len);
int guest_block_status(qimg_image *img, uint64_t off, uint64_t len,
                       struct qimg_extent *out);

#endif
