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
/* Before guest data is first written: mark every auto bitmap in_use (once
 * per open image). */
int bitmap_mark_in_use(qimg_image *img);

#endif
