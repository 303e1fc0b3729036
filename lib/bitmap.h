/*
 * bitmap.h - persistent dirty bitmaps: kept and refcounted, not
 * interpreted (bitmap.c). qcow2-format.md §9.
 */
#ifndef QIMG_BITMAP_H
#define QIMG_BITMAP_H

#include <stddef.h>
#include <stdint.h>

#include "image.h"

struct bitmap_entry {
    uint64_t table_off;
    uint32_t table_size;
    uint32_t flags;
    uint8_t type, granularity_bits;
    char *name;
    uint64_t dir_pos; /* byte position of the entry in the directory */
};
#define BME_FLAG_IN_USE 1u
#define BME_FLAG_AUTO 2u
int bitmap_dir_load(qimg_image *img, struct bitmap_entry **out, size_t *n);
void bitmap_dir_free(struct bitmap_entry *b, size_t n);
/* Visit what the bitmaps reference: the directory (bitmap -1), each
 * bitmap's table (entry -1) and the cluster each entry of its table names
 * (entry k). A directory that cannot be loaded is visited, not followed; a
 * table that does not end inside [0, end) is not read. A non-zero return
 * of fn stops the visit and is returned. */
typedef int bitmap_ref_fn(void *ctx, int64_t bitmap, int64_t entry,
                          uint64_t off, uint64_t len);
int bitmap_each_ref(qimg_image *img, uint64_t end, bitmap_ref_fn *fn,
                    void *ctx);
/* Before guest data is first written: mark every auto bitmap in_use (once
 * per open image). */
int bitmap_mark_in_use(qimg_image *img);
/* Before a resize to `size`: no bitmap is in use (QEMU refuses those) and
 * every bitmap's table already covers the new size. */
int bitmap_check_resize(qimg_image *img, uint64_t size);

#endif
