/*
 * bitmap.h - persistent dirty bitmaps (qcow2-format.md §9): the directory
 * and its entries (bitmap.c), their bits in memory (bitmap_bits.c), and
 * keeping the enabled ones up to date across guest writes (bitmap.c).
 * Writing a changed set is a transaction (txn.h).
 */
#ifndef QIMG_BITMAP_H
#define QIMG_BITMAP_H

#include <stdbool.h>
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
    uint32_t extra_len;
    uint8_t *extra; /* extra data, kept as found */
    /* In memory: table_size clusters of bits (NULL: not loaded), and
     * whether the table and its data are to be written anew. */
    uint8_t *bits;
    bool rewrite;
};
/* §9: a bitmap table entry's offset bits, its reserved bits, and bit 0 (a
 * cluster of ones where no offset is given) */
#define BTE_OFFSET_MASK 0x00fffffffffffe00ull
#define BTE_RESERVED_MASK 0xff000000000001feull
#define BTE_ALL_ONES 1ull
#define BME_FLAG_IN_USE 1u
#define BME_FLAG_AUTO 2u
#define BME_FLAG_EXTRA_COMPAT 4u
#define BME_MIN_GRAN_BITS 9
#define BME_MAX_GRAN_BITS 31
#define BME_MAX_NAME 1023
#define BME_MAX_BITMAPS 65535

/* A directory in memory. */
struct bitmap_set {
    struct bitmap_entry *b;
    size_t n;
};

int bitmap_dir_load(qimg_image *img, struct bitmap_entry **out, size_t *n);
void bitmap_dir_free(struct bitmap_entry *b, size_t n);
/* The directory, every entry checked as QEMU checks it before it loads
 * a bitmap (an empty set without the extension). */
int bitmap_set_load(qimg_image *img, struct bitmap_set *s);
void bitmap_set_free(struct bitmap_set *s);
/* Index of the bitmap named `name`, or -1. */
int bitmap_set_find(const struct bitmap_set *s, const char *name);
/* A new, empty bitmap at the end of the set. */
int bitmap_set_add(qimg_image *img, struct bitmap_set *s, const char *name,
                   unsigned gran_bits, uint32_t flags);
void bitmap_set_remove(struct bitmap_set *s, size_t i);
/* The directory's bytes (entries padded to 8), and its length. */
int bitmap_dir_encode(const struct bitmap_set *s, uint8_t **out,
                      uint64_t *len);
/* Visit what the bitmaps reference: the directory (bitmap -1), each
 * bitmap's table (entry -1) and the cluster each entry of its table names
 * (entry k). A directory that cannot be loaded is visited, not followed; a
 * table that does not end inside [0, end) is not read. A non-zero return
 * of fn stops the visit and is returned. */
typedef int bitmap_ref_fn(void *ctx, int64_t bitmap, int64_t entry,
                          uint64_t off, uint64_t len);
int bitmap_each_ref(qimg_image *img, uint64_t end, bitmap_ref_fn *fn,
                    void *ctx);
/* Before a resize: no bitmap is in use (QEMU refuses those). */
int bitmap_check_resize(qimg_image *img);

/* ---- Bits (bitmap_bits.c) ----------------------------------------------- */
/* Table entries a bitmap of 2^gran_bits granularity needs for `size`. */
uint64_t bitmap_table_size(const struct qcow2 *q, unsigned gran_bits,
                           uint64_t size);
/* Read b's bits from its table (every entry checked first). */
int bitmap_bits_load(qimg_image *img, struct bitmap_entry *b);
/* Set the bits covering guest bytes [off, off + len). */
void bitmap_bits_mark(struct bitmap_entry *b, uint64_t off, uint64_t len,
                      uint64_t size);
/* Set in dst the bits covering what src's set bits cover; both loaded,
 * for a disk of `size` bytes. */
void bitmap_bits_merge(struct bitmap_entry *dst,
                       const struct bitmap_entry *src, uint64_t size);
/* Every bit clear. */
void bitmap_bits_clear(const struct qcow2 *q, struct bitmap_entry *b);
/* For a disk of new_size: the table's size and the bits past the end. */
int bitmap_bits_resize(const struct qcow2 *q, struct bitmap_entry *b,
                       uint64_t new_size);
/* Cluster k of b's data holds no set bit. */
bool bitmap_bits_cluster_zero(const struct qcow2 *q,
                              const struct bitmap_entry *b, uint64_t k);

/* ---- Keeping enabled bitmaps up to date -------------------------------- */
/* Before guest data is first written (once per open image): load every
 * auto bitmap not in use and mark it in_use on disk, durably; from then
 * on bitmap_track() sets its bits, and the close stores it (txn.h). */
int bitmap_track_begin(qimg_image *img);
void bitmap_track(qimg_image *img, uint64_t off, uint64_t len);
/* While held, writes neither begin keeping bitmaps nor set bits (a
 * resize zeroing what the disk gains). */
void bitmap_track_hold(qimg_image *img, bool hold);
/* The bitmaps being kept up to date (NULL: none); ownership passes, and
 * the next guest write begins keeping them again. */
struct bitmap_set *bitmap_track_take(qimg_image *img);
void bitmap_track_free(qimg_image *img);

#endif
