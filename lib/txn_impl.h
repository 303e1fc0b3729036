/*
 * txn_impl.h - the state of a snapshot transaction, shared by the txn*.c
 * files and by nothing else. The operations themselves are declared in
 * internal.h; the notes on the design are at the top of txn.c.
 *
 * struct txn holds one part per concept, each written only by the file
 * that owns it; other files read a part's fields, or change it through
 * its file's functions below:
 *
 *   wb      txn_wbuf.c    new metadata coalesced into long writes
 *
 * txn_init zeroes the whole struct: all zeros is every part's empty state.
 */
#ifndef QIMG_TXN_IMPL_H
#define QIMG_TXN_IMPL_H

#include "internal.h"

struct txn_wbuf {
    uint8_t *buf; /* contiguous new metadata, written in one go */
    uint64_t off;
    size_t len;
};

struct txn {
    qimg_image *img;
    struct qcow2 *q;
    uint64_t cs;
    /* New refcount blocks by reftable index (NULL: unchanged), carved
     * from 2 MiB chunks in reftable order, so neighbours are written in
     * one request. */
    uint8_t **rb;
    uint8_t **chunks;
    size_t nb_chunks, chunk_used;
    /* Per block: changed by the operation (only those are written), and a
     * bitmap of the clusters a decrement took to 0 (NULL: none). Those
     * are the only clusters that can be counted in the old state and free
     * in the new one: nothing needs the old block read back. */
    bool *rb_dirty;
    uint8_t **zhit;
    uint64_t *rb_loc; /* their new locations, 0 until placed */
    uint64_t nb_rb;
    uint64_t scan; /* end of the clusters allocated so far (index) */
    uint64_t scan_backed, scan_any; /* txn_alloc's two cursors */
    uint64_t backed_short; /* no backed free run of this length left */
    bool pool_dry;       /* a single cluster found no backed run */
    uint64_t first_free; /* lowest cluster the backed search found at 0 */
    uint64_t data_lo, data_hi; /* bytes the file has blocks for (a run) */
    uint64_t nb_alloc, nb_backed; /* clusters allocated, from file blocks */
    uint64_t run_k;       /* length of the free runs singles come from */
    uint64_t ext_next;    /* where the next single may go (0: search) */
    bool ext_backed;      /* ... found by the backed search */
    uint8_t *tmp;
    uint8_t *old_rb;     /* on-disk refcount block old_idx (cached) */
    uint64_t old_idx;    /* UINT64_MAX: none cached */
    bool old_exists;
    struct txn_wbuf wb;      /* txn_wbuf.c */
    struct idset meta_freed; /* old metadata clusters the op replaces */
    struct u64map copies; /* old L2 table offset -> its new copy */
    struct l2store l2s;   /* L2 tables read so far, kept as runs */
    uint8_t *rt;          /* the new refcount table */
    uint64_t rt_off, rt_clusters;
    uint64_t *freed; /* (start, length) cluster runs freed by the commit */
    size_t nb_freed;
};

/* ---- txn_wbuf.c: the write buffer ---------------------------------------- */
int txn_wbuf_init(struct txn *t);
void txn_wbuf_free(struct txn *t);
int txn_wbuf_write(struct txn *t, const void *data, size_t len, uint64_t off);
int txn_wbuf_flush(struct txn *t);
int txn_wbuf_slot(struct txn *t, uint8_t **slot);
int txn_wbuf_put(struct txn *t, uint64_t off);

#endif
