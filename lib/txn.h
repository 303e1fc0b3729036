/*
 * txn.h - atomic snapshot operations (txn.c and the txn_*.c it is split
 * into): each builds the new image state beside the old and switches to it
 * with one write of header sector 0.
 */
#ifndef QIMG_TXN_H
#define QIMG_TXN_H

#include "image.h"

int txn_snapshot_create(qimg_image *img, const char *name);
int txn_snapshot_apply(qimg_image *img, int snap_idx);
int txn_snapshot_delete(qimg_image *img, int snap_idx);
/* Write the snapshot table again, every entry with the extra data QEMU
 * writes (at least 24 bytes), and switch to it. */
int txn_snapshot_rewrite(qimg_image *img);
/* The same, snapshot idx named `name` (cut to 255 bytes, as a create). */
int txn_snapshot_rename(qimg_image *img, int idx, const char *name);
/* Every cluster of the active disk unallocated (it reads through to the
 * backing file); snapshots keep theirs. */
int txn_make_empty(qimg_image *img);
/* The active disk at a new size (qemu-img resize): past a smaller size
 * nothing stays allocated; what a larger one adds is mapped to zeroed
 * clusters as prealloc asks, and with zero marked as reading zeros (v3)
 * rather than through to the backing file, from the first cluster past
 * the old size. Snapshots keep their sizes. bm (or NULL): the bitmaps,
 * resized, stored in the same switch. */
struct bitmap_set;
int txn_resize(qimg_image *img, uint64_t size, enum qimg_prealloc prealloc,
               bool zero, struct bitmap_set *bm);
/* Write the bitmaps of s that changed, and a directory of s, and switch
 * to it; the old directory and the bitmaps s no longer keeps are freed. */
int txn_bitmaps_store(qimg_image *img, struct bitmap_set *s);

#endif
