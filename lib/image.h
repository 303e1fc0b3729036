/*
 * image.h - the image handle (struct qimg_image) and the qcow2 state it
 * carries (struct qcow2): types only.
 *
 * Who writes what (tests/check_layers.py checks it):
 *  - the file fields (qimg_image's io, read_write, unsynced, zero_from;
 *    qcow2's file_size): file.c;
 *  - size: roots.c (roots_set_size);
 *  - filename, fmt, backing, q, is_view: open.c, at open;
 *  - the geometry of struct qcow2: qcow2.c, once at open;
 *  - hdr and corrupt_signalled: roots.c;
 *  - bitmaps_marked, bitmaps_held, tracked: bitmap.c;
 *  - prealloc_guess: backing.c;
 *  - each state behind a pointer: the module whose header defines it
 *    (l1l2.h, refcount.h, snaptable.h, meta.h); the others read it
 *    through that header and change it through its functions.
 */
#ifndef QIMG_IMAGE_H
#define QIMG_IMAGE_H

#include <stdbool.h>
#include <stdint.h>

#include "header.h"
#include "io.h"
#include "qimg.h"

struct l1_state;   /* l1l2.h */
struct rc_state;   /* refcount.h */
struct snap_state; /* snaptable.h */
struct meta_state; /* meta.h */
struct bitmap_set; /* bitmap.h */

struct qcow2 {
    /* Geometry, derived from the header once. */
    unsigned cluster_bits;
    uint64_t cluster_size;
    unsigned l2_bits;       /* log2(entries per L2 table) */
    uint64_t l2_entries;
    unsigned l2_entry_size; /* 8, or 16 with extended L2 */
    bool ext_l2;
    unsigned sc_bits;       /* log2(subcluster size) */
    unsigned refcount_order;
    unsigned rb_bits;       /* log2(entries per refcount block) */
    uint64_t refcount_max;
    unsigned csize_shift;
    uint64_t csize_mask, coff_mask;

    uint64_t file_size; /* bytes the file covers; grows with allocation */
    struct qcow2_header hdr; /* in-memory copy of cluster 0 */
    bool corrupt_signalled;
    bool bitmaps_marked; /* in_use set on auto bitmaps before writing */
    bool bitmaps_held;   /* writes leave the bitmaps alone for now */
    struct bitmap_set *tracked; /* the bitmaps guest writes update */
    /* Whether the image looks metadata-preallocated, as QEMU guesses it
     * (0: not guessed yet, 1: no, 2: yes). */
    int prealloc_guess;

    struct l1_state *l1s;
    struct rc_state *rc;
    struct snap_state *sn;
    struct meta_state *meta;
};

struct qimg_image {
    /* The file. */
    struct qimg_io io;
    bool read_write;
    bool unsynced;      /* written since the last fdatasync */
    uint64_t zero_from; /* the file reads as zeros from here on */

    uint64_t size; /* virtual size, bytes */

    char *filename;
    enum qimg_format fmt;
    bool is_view;    /* a read-only view of an internal snapshot */
    qimg_image *backing;
    struct qcow2 *q; /* NULL for raw */
};

/* Geometry helpers. */
static inline uint64_t q_cluster_of(const struct qcow2 *q, uint64_t off)
{
    return off >> q->cluster_bits;
}
static inline uint64_t q_in_cluster(const struct qcow2 *q, uint64_t off)
{
    return off & (q->cluster_size - 1);
}

#endif
