/*
 * l1l2.h - guest offset -> host cluster: the active L1 table, the L2 cache,
 * and the L1/L2 entry codec (l1l2.c).
 */
#ifndef QIMG_L1L2_H
#define QIMG_L1L2_H

#include <stdbool.h>
#include <stdint.h>

#include "cache.h"
#include "endian.h"
#include "image.h"

#define L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define L1E_RESERVED_MASK 0x7f000000000001ffull
#define L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_RESERVED_MASK 0x3f000000000001feull
#define QCOW_OFLAG_COPIED (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO 1ull
#define L2_BITMAP_ALL_ALLOC 0x00000000ffffffffull
#define L2_BITMAP_ALL_ZERO 0xffffffff00000000ull

static inline uint64_t l1_entry_get(const uint8_t *l1, uint64_t i)
{
    return be64_load(l1 + i * 8);
}
static inline void l1_entry_set(uint8_t *l1, uint64_t i, uint64_t v)
{
    be64_store(l1 + i * 8, v);
}
static inline uint64_t l2_entry_get(const struct qcow2 *q, const uint8_t *l2,
                                    uint64_t i)
{
    return be64_load(l2 + i * q->l2_entry_size);
}
static inline uint64_t l2_bitmap_get(const struct qcow2 *q, const uint8_t *l2,
                                     uint64_t i)
{
    return q->ext_l2 ? be64_load(l2 + i * 16 + 8) : 0;
}
static inline void l2_entry_set(const struct qcow2 *q, uint8_t *l2,
                                uint64_t i, uint64_t e, uint64_t bm)
{
    be64_store(l2 + i * q->l2_entry_size, e);
    if (q->ext_l2)
        be64_store(l2 + i * 16 + 8, bm);
}

/* Cluster (or subcluster) types, qcow2-format.md §3.3 and §3.5. */
enum cl_type {
    CL_UNALLOC,      /* reads from backing / zeros */
    CL_ZERO_PLAIN,   /* zeros, no host cluster */
    CL_ZERO_ALLOC,   /* zeros, host cluster reserved */
    CL_NORMAL,       /* data at host offset */
    CL_COMPRESSED,
    CL_UNALLOC_ALLOC, /* ext L2: unallocated subcluster of a host cluster */
};

/* What one L2 entry says about a guest cluster. */
struct l2_slot {
    uint64_t entry, bitmap;
    uint64_t l2_off; /* 0 if the L1 entry is empty */
};

/* Written by l1l2.c only; others read l1 and l1_size. */
struct l1_state {
    uint8_t *l1; /* the active L1 table (or a snapshot's in a view), disk
                  * byte order */
    uint32_t l1_size;
    uint32_t dirty_lo, dirty_hi; /* entries [lo, hi) not yet written */
    struct mcache l2c;
    uint64_t scan_next;   /* the L1 index a scan of reads reaches next */
    unsigned scan_tables; /* tables that scan has gone through in order */
};

/* Load the active L1 table as QEMU reads it, zeros past the end of the
 * file (writes are refused then: metaset_build), and set up the L2 cache. */
int l1_init(qimg_image *img);
void l1_free(qimg_image *img);
/* The hook that writes dirty metadata back when the L2 cache is full. */
void l1_set_hook(qimg_image *img, int (*make_room)(void *));
/* Use l1 (size entries; ownership passes) as the table guest offsets go
 * through: a snapshot's table for a read-only view, or a new active table
 * a creation or snapshot operation made durable (NULL: keep the table).
 * Cached L2 tables are forgotten. */
void l1_adopt(qimg_image *img, uint8_t *l1, uint32_t size);
/* Write L1 entry i now (a repair), then fdatasync. */
int l1_write_entry(qimg_image *img, uint32_t i, uint64_t e);
bool l1_has_dirty(const qimg_image *img);
int l1_write_dirty(qimg_image *img);

int l2_load(qimg_image *img, uint64_t l2_off, struct mcache_entry **out);
/* A read goes through L1 entry l1_idx. Once reads have gone through
 * enough tables in guest order (a scan: convert, compare, map), the L2
 * cache reuses its oldest buffers instead of growing. */
void l2_note_read(qimg_image *img, uint64_t l1_idx);
bool l2_has_dirty(const qimg_image *img);
int l2_write_dirty(qimg_image *img);
/* A cluster is no longer an L2 table this image reads (freed, or
 * rewritten on disk by a repair): drop any cached copy. */
void l2_cache_forget(qimg_image *img, uint64_t off);
/* Entry for guest cluster containing guest_off before a write changes it
 * (checked as the write will need it: the table inside the file and on
 * no other structure, the entry valid); zeros if unmapped. */
int l2_lookup(qimg_image *img, uint64_t guest_off, struct l2_slot *out);
/* The L2 table covering guest_off, made writable: allocated if missing,
 * copied if shared. Returned pinned; *idx is the entry index in it. */
int l2_get_writable(qimg_image *img, uint64_t guest_off,
                    struct mcache_entry **out, uint64_t *idx);
/* Validate one L2 entry (entry l2_idx of the table at l2_off) before it
 * is written or counted; -EIO (corrupt) if bad. */
int l2_entry_check(qimg_image *img, uint64_t entry, uint64_t bitmap,
                   uint64_t l2_off, uint64_t l2_idx);
/* The same for a read, which takes a cluster past the end of the file as
 * QEMU does: it reads as zeros (a compressed one fails to decompress). */
int l2_entry_check_read(qimg_image *img, uint64_t entry, uint64_t bitmap,
                        uint64_t l2_off, uint64_t l2_idx);
enum cl_type l2_subcluster_type(const struct qcow2 *q, uint64_t entry,
                                uint64_t bitmap, unsigned sc);
enum cl_type l2_cluster_type(const struct qcow2 *q, uint64_t entry);
/* Host bytes a compressed entry touches. */
void l2_compressed_range(const struct qcow2 *q, uint64_t entry,
                         uint64_t *coff, uint64_t *clen);

#endif
