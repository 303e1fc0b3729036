/*
 * refcount.h - refcount table, refcount blocks and cluster allocation of a
 * live image (refcount.c); the entry codec every refcount user shares.
 */
#ifndef QIMG_REFCOUNT_H
#define QIMG_REFCOUNT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cache.h"
#include "endian.h"
#include "image.h"

#define RT_OFFSET_MASK 0xfffffffffffffe00ull

/* Entry i of a refcount block of width 2^order bits (qcow2-format.md §4):
 * sub-byte widths LSB first, wider ones big-endian. */
static inline uint64_t refblock_get(const uint8_t *rb, uint64_t i, unsigned order)
{
    switch (order) {
    case 0:
        return (rb[i / 8] >> (i % 8)) & 1;
    case 1:
        return (rb[i / 4] >> (2 * (i % 4))) & 3;
    case 2:
        return (rb[i / 2] >> (4 * (i % 2))) & 15;
    case 3:
        return rb[i];
    case 4:
        return be16_load(rb + 2 * i);
    case 5:
        return be32_load(rb + 4 * i);
    default:
        return be64_load(rb + 8 * i);
    }
}

static inline void refblock_set(uint8_t *rb, uint64_t i, unsigned order, uint64_t v)
{
    unsigned shift, bits;

    switch (order) {
    case 0:
    case 1:
    case 2:
        bits = 1u << order;
        shift = (unsigned)(i % (8 >> order)) * bits;
        rb[i >> (3 - order)] =
            (uint8_t)((rb[i >> (3 - order)] & ~(((1u << bits) - 1) << shift)) |
                      (v << shift));
        return;
    case 3:
        rb[i] = (uint8_t)v;
        return;
    case 4:
        be16_store(rb + 2 * i, (uint16_t)v);
        return;
    case 5:
        be32_store(rb + 4 * i, (uint32_t)v);
        return;
    default:
        be64_store(rb + 8 * i, v);
    }
}

/* A refcount decrement waiting for the metadata that dropped the
 * reference to become durable (qcow2-format.md §13 rule 3). */
struct pending_dec {
    uint64_t idx;    /* cluster index */
    bool do_discard; /* punch the cluster if it becomes free */
};

/* Written by refcount.c only; others read rt and rt_entries. */
struct rc_state {
    uint8_t *rt; /* refcount table, disk byte order */
    uint64_t rt_entries;
    struct mcache rbc; /* refcount blocks */
    uint64_t free_hint; /* no free cluster below this index */
    struct pending_dec *dec;
    size_t nb_dec, cap_dec;
    bool applying;          /* refcount_apply_pending() is running */
    unsigned failed_frees;  /* decrements dropped since last asked */
    int failed_err;         /* errno of the last one */
    uint64_t free_byte_off; /* compressed-write byte allocator; 0: none */
    /* Called for each cluster whose refcount drops to 0. */
    void (*on_free)(qimg_image *img, uint64_t off);
};

/* Load the refcount table as QEMU reads it, zeros past the end of the file
 * (writes are refused then: metaset_build), and set up the block cache. */
int refcount_init(qimg_image *img);
void refcount_free(qimg_image *img);
/* Hooks the opener installs: make_room writes dirty metadata back when the
 * block cache is full; on_free hears of every cluster freed. */
void refcount_set_hooks(qimg_image *img, int (*make_room)(void *),
                        void (*on_free)(qimg_image *, uint64_t));

int refcount_get(qimg_image *img, uint64_t idx, uint64_t *out);
/* Add delta to clusters [idx, idx+n); fails (changing nothing) on overflow
 * or underflow. Written back by refcount_flush(). */
int refcount_update(qimg_image *img, uint64_t idx, uint64_t n, int64_t delta);
/* Allocate n contiguous free clusters with refcount 1. */
int refcount_alloc(qimg_image *img, uint64_t n, uint64_t *host_off);
/* Place a compressed stream of len bytes, packing streams byte by byte as
 * QEMU does; each host cluster touched gains one reference. */
int refcount_alloc_bytes(qimg_image *img, uint64_t len, uint64_t *coff);
/* Queue a -1 on [off, off+len)'s clusters until the metadata dropping the
 * reference is durable. A cluster whose refcount is already 0 (damage) is
 * not queued but leaked at once, counted as refcount_apply_pending() does:
 * queued, it could meet the cluster handed out again by then. */
int refcount_dec_later(qimg_image *img, uint64_t off, uint64_t len,
                       bool do_discard);
bool refcount_has_pending(const qimg_image *img);
/* Apply the queued decrements. One the image's damage refuses (a refcount
 * already 0, a bad refcount block) is dropped, the cluster leaked, as QEMU
 * does ("qcow2_free_clusters failed"), and counted for
 * refcount_take_failed_frees(); an I/O error leaves the rest queued. */
int refcount_apply_pending(qimg_image *img);
unsigned refcount_take_failed_frees(qimg_image *img, int *err);
/* Write dirty refcount blocks (no fdatasync). */
int refcount_flush(qimg_image *img);
/* Copy refcount block rt_idx of the on-disk state into buf (cluster size);
 * zeros and *exists = false if there is none. */
int refcount_read_block(qimg_image *img, uint64_t rt_idx, uint8_t *buf,
                        bool *exists);
/* A new refcount structure is on disk and named by the header: take its
 * table (entries long; ownership passes) and forget cached blocks and
 * allocation hints. */
void refcount_adopt_table(qimg_image *img, uint8_t *rt, uint64_t entries);

#endif
