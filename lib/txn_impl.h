/*
 * txn_impl.h - the state of a snapshot transaction, shared by the txn*.c
 * files and by nothing else. The operations themselves are declared in
 * txn.h; the notes on the design are at the top of txn.c.
 *
 * struct txn holds one part per concept, each written only by the file
 * that owns it. Other files change a part only through its file's
 * functions; they read it through the inline accessors below (the hot
 * loops of another file must not pay a call per cluster: there is no LTO),
 * except that the commit in txn.c reads the new refcount table's place
 * (place.rt_off, rt_clusters) and the end of the allocated clusters
 * (space.scan); adopt() takes the new table itself with
 * txn_place_take_table() and hands it to refcount.c.
 *
 * Calls between the files go one way: txn.c -> txn_tables.c and
 * txn_place.c -> txn_space.c -> txn_refs.c, and to txn_wbuf.c.
 *
 *   refs    txn_refs.c    the new refcounts: copies of the changed
 *                         refcount blocks, the clusters a decrement took
 *                         to 0
 *   place   txn_place.c   where the changed blocks and the new refcount
 *                         table go, and writing them there
 *   space   txn_space.c   which clusters the new metadata goes to, and
 *                         which the commit frees
 *   wb      txn_wbuf.c    new metadata coalesced into long writes
 *   tables  txn_tables.c  L1/L2 tables read so far, counting their
 *                         references, the copies made to fix COPIED
 *
 * txn_init (txn.c) zeroes the whole struct, all zeros being every part's
 * empty state, so that txn_free can run after any failure; each file's
 * init and free handle the rest of its part. img, q and cs are set by
 * txn_init and read-only after it.
 */
#ifndef QIMG_TXN_IMPL_H
#define QIMG_TXN_IMPL_H

#include "endian.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "idset.h"
#include "l1l2.h"
#include "l2runs.h"
#include "meta.h"
#include "metaset.h"
#include "refcount.h"
#include "roots.h"
#include "snaptable.h"
#include "txn.h"
#include "util.h"

/* A new L1 table the transaction writes. */
struct new_l1 {
    uint8_t *buf; /* disk order */
    uint32_t size;
    uint64_t off; /* where it is written */
};

struct txn_refs {
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
    uint64_t nb_rb;
    /* Increments count references that exist already (an L1 pointer
     * that appears names a table in use): one from 0 is damage. */
    bool existing;
};

/* Where the changed refcount blocks and the new refcount table go. */
struct txn_place {
    uint64_t *rb_loc; /* new location of block i, 0 until placed */
    uint64_t nb_loc;
    uint8_t *rt;      /* the new refcount table */
    uint64_t rt_off, rt_clusters;
};

struct txn_space {
    uint64_t scan; /* end of the clusters allocated so far (index) */
    uint64_t scan_backed, scan_any; /* txn_space_alloc's two cursors */
    uint64_t backed_short; /* no backed free run of this length left */
    bool pool_dry;       /* a single cluster found no backed run */
    uint64_t first_free; /* lowest cluster the backed search found at 0 */
    uint64_t data_lo, data_hi; /* bytes the file has blocks for (a run) */
    uint64_t nb_alloc, nb_backed; /* clusters allocated, from file blocks */
    uint64_t run_k;       /* length of the free runs singles come from */
    uint64_t ext_next;    /* where the next single may go (0: search) */
    bool ext_backed;      /* ... found by the backed search */
    uint8_t *old_rb;     /* on-disk refcount block old_idx (cached) */
    uint64_t old_idx;    /* UINT64_MAX: none cached */
    bool old_exists;
    struct idset meta_freed; /* old metadata clusters the op replaces */
    uint64_t *freed; /* (start, length) cluster runs freed by the commit */
    size_t nb_freed;
    uint64_t *alloc; /* (start, length) cluster runs allocated, in order */
    size_t nb_alloc_runs;
};

struct txn_held {
    uint64_t off;
    size_t len;
    uint8_t *data;
};

struct txn_wbuf {
    uint8_t *buf; /* contiguous new metadata, written in one go */
    uint64_t off;
    size_t len;
    /* Until every refcount is counted (txn_wbuf_release), writes are held
     * in memory, up to a cap: a refusal then finds the file untouched. */
    bool hold;
    struct txn_held *held;
    size_t nb_held, cap_held, held_bytes;
};

struct txn_tables {
    uint8_t *tmp;         /* one L2 table, read or being fixed */
    struct u64map copies; /* old L2 table offset -> its new copy */
    struct l2store l2s;   /* L2 tables read so far, kept as runs */
    /* L2 table cluster -> the refcount change the L1 pointers counted so
     * far make to it (two's complement). */
    struct u64map expect;
    /* Metadata cluster -> its refcount before the operation, as the
     * live-metadata check read it (txn_tables_old_refcount). */
    struct u64map old;
};

struct txn {
    qimg_image *img;
    struct qcow2 *q;
    uint64_t cs;
    struct txn_refs refs;     /* txn_refs.c */
    struct txn_place place;   /* txn_place.c */
    struct txn_space space;   /* txn_space.c */
    struct txn_wbuf wb;       /* txn_wbuf.c */
    struct txn_tables tables; /* txn_tables.c */
};

/* ---- txn_bitmaps.c: a new set of persistent bitmaps ----------------------- */
struct bitmap_set;
/* At most how many clusters staging s allocates. */
uint64_t txn_bitmaps_room(const struct txn *t, const struct bitmap_set *s);
/* Release the old bitmaps s does not keep and the old directory; write
 * the bitmaps of s that changed (their table_off updated) and a new
 * directory, which *out names. */
int txn_bitmaps_stage(struct txn *t, struct bitmap_set *s,
                      struct roots_bitmaps *out);

/* ---- txn_refs.c: the new refcounts --------------------------------------- */
/* Add delta to the refcount of cluster idx, of n clusters from idx, or
 * of the clusters bytes [off, off + len) touch; checked. */
int txn_refs_add(struct txn *t, uint64_t idx, int64_t delta);
/* From now on increments are of existing references (or not). */
void txn_refs_expect_existing(struct txn *t, bool on);
int txn_refs_add_run(struct txn *t, uint64_t idx, uint64_t n, int64_t delta);
int txn_refs_add_range(struct txn *t, uint64_t off, uint64_t len,
                       int64_t delta);
/* For metaset_check_counted: loads the blocks it reads. */
int txn_refs_loaded(void *ctx, uint64_t idx, uint64_t *rc);
/* No refcount changed. */
bool txn_refs_unchanged(const struct txn *t);
void txn_refs_free(struct txn *t);

/* ---- txn_place.c --------------------------------------------------------- */
/* Place the changed blocks and the new table (place.rt, rt_off,
 * rt_clusters), then write them all and flush the write buffer. */
int txn_place_refcounts(struct txn *t);
/* Before the first write: refuse if the refcount table could outgrow its
 * limit once the operation has allocated up to `clusters` more. */
int txn_place_room(const struct txn *t, uint64_t clusters);
int txn_place_write(struct txn *t);
/* The new refcount table, to hand over once committed (ownership
 * passes). */
uint8_t *txn_place_take_table(struct txn *t);
void txn_place_free(struct txn *t);

/* The operation's copy of refcount block rt_idx, NULL if it has none
 * (the block is as on disk). */
static inline const uint8_t *txn_refs_block(const struct txn *t,
                                            uint64_t rt_idx)
{
    return rt_idx < t->refs.nb_rb ? t->refs.rb[rt_idx] : NULL;
}

/* Bitmap of the clusters of block rt_idx a decrement took to 0, NULL if
 * none. */
static inline const uint8_t *txn_refs_zhit(const struct txn *t,
                                           uint64_t rt_idx)
{
    return rt_idx < t->refs.nb_rb ? t->refs.zhit[rt_idx] : NULL;
}

static inline bool txn_refs_zero_hit_at(const uint8_t *z, uint64_t i)
{
    return z && (z[i / 8] >> (i % 8) & 1);
}

/* Whether the operation changed block rt_idx; blocks past txn_refs_nb
 * are unchanged. */
static inline bool txn_refs_dirty(const struct txn *t, uint64_t rt_idx)
{
    return rt_idx < t->refs.nb_rb && t->refs.rb_dirty[rt_idx];
}

static inline uint64_t txn_refs_nb(const struct txn *t)
{
    return t->refs.nb_rb;
}

/* The new refcount of cluster idx. */
static inline int txn_refs_get(struct txn *t, uint64_t idx, uint64_t *out)
{
    const uint8_t *rb = txn_refs_block(t, idx >> t->q->rb_bits);

    if (rb) {
        *out = refblock_get(rb, idx & ((1ull << t->q->rb_bits) - 1),
                            t->q->refcount_order);
        return 0;
    }
    return refcount_get(t->img, idx, out);
}

/* ---- txn_space.c: free clusters ------------------------------------------ */
void txn_space_init(struct txn *t);
int txn_space_setup(struct txn *t);
void txn_space_free(struct txn *t);
/* n contiguous clusters free in both the old and the new state, counted
 * once in the new state. */
int txn_space_alloc(struct txn *t, uint64_t n, uint64_t *off);
/* n contiguous clusters past the end of the file and of every cluster
 * allocated so far, counted once: they read as zeros (preallocation). */
int txn_space_alloc_end(struct txn *t, uint64_t n, uint64_t *off);
/* Remember an old metadata cluster range this operation replaces. */
int txn_space_meta_freed(struct txn *t, uint64_t off, uint64_t len);
/* Before the commit: list the clusters it frees. After it: discard them
 * (or some of them; see txn_space.c). */
int txn_space_find_freed(struct txn *t);
void txn_space_discard_freed(struct txn *t);
/* Once every count is made, the refcount structures' own too: one past
 * the last cluster the new state uses (where the file may end). */
int txn_space_find_end(struct txn *t, uint64_t *end);
/* The first cluster of [c, c + n) the commit frees, or UINT64_MAX. */
uint64_t txn_space_first_freed(const struct txn *t, uint64_t c, uint64_t n);
/* Whether the operation allocated a cluster of [c, c + n). */
bool txn_space_allocated(const struct txn *t, uint64_t c, uint64_t n);

/* End of the clusters allocated so far (index). */
static inline uint64_t txn_space_end(const struct txn *t)
{
    return t->space.scan;
}

/* On-disk refcount block rt_idx if the free-cluster search has it cached,
 * else NULL. */
static inline const uint8_t *txn_space_cached(const struct txn *t,
                                              uint64_t rt_idx)
{
    return t->space.old_idx == rt_idx ? t->space.old_rb : NULL;
}

/* ---- txn_wbuf.c: the write buffer ---------------------------------------- */
int txn_wbuf_init(struct txn *t);
void txn_wbuf_free(struct txn *t);
int txn_wbuf_write(struct txn *t, const void *data, size_t len, uint64_t off);
int txn_wbuf_flush(struct txn *t);
/* Write what was held back; from now on writes go straight out. */
int txn_wbuf_release(struct txn *t);
/* Write at once, unbuffered (checked like the rest). */
int txn_wbuf_direct(struct txn *t, const void *data, size_t len,
                    uint64_t off);
int txn_wbuf_slot(struct txn *t, uint8_t **slot);
int txn_wbuf_put(struct txn *t, uint64_t off);

/* ---- txn_tables.c: L1 and L2 tables -------------------------------------- */
int txn_tables_init(struct txn *t);
void txn_tables_free(struct txn *t);
/* Validate an L1 table's pointers, or read and validate one L2 table
 * (into tables.tmp). */
/* After counting: the old state's metadata changed its refcounts only as
 * the counted L1 pointers say (a data entry naming a metadata cluster, or
 * a table naming itself, shows as a change no pointer made). */
int txn_tables_check_meta(struct txn *t);
/* metaset_check_counted's get: txn_refs_loaded, the value remembered for
 * txn_tables_check_meta (so the blocks are not read again). */
int txn_tables_old_refcount(void *ctx, uint64_t idx, uint64_t *rc);
int txn_tables_check_l1(struct txn *t, const uint8_t *l1, uint32_t size);
int txn_tables_read_l2(struct txn *t, uint64_t l2_off);
/* One L1 pointer to l2_off appears (+1) or disappears (-1). */
int txn_tables_pointer_change(struct txn *t, uint64_t l2_off, int64_t delta);
/* Copy the L2 table at p if its COPIED flags change: clear them all
 * (create), or set them from the new refcounts (the table at index i of
 * a new active L1). */
int txn_tables_clear_copied(struct txn *t, uint64_t p);
int txn_tables_inspect(struct txn *t, const uint8_t *l1, uint32_t size,
                       uint64_t i);
/* Point a new L1 table at the copies made; set its COPIED flags. */
int txn_tables_redirect(struct txn *t, struct new_l1 *l1);
int txn_tables_set_l1_flags(struct txn *t, struct new_l1 *l1);
/* Before the commit: nothing it frees is still named by a bitmap (unless
 * the operation replaces them: bitmaps false), a snapshot's L1 table or, for the delete of snapshot `deleted` (else
 * UINT32_MAX), by the active tree, which a delete does not count (l1: the
 * new active L1 table). */
int txn_tables_check_freed(struct txn *t, uint32_t deleted, bool bitmaps,
                           const uint8_t *l1, uint32_t l1_size);

/* Resize. Shrink: entries from `from` on leave the table at p; counts
 * the references they took and builds the table without them in buf (one
 * cluster). Growth: entries [from, to) of the table at p (0: a new, empty
 * table) that name no host cluster; *n says how many. With host, buf gets
 * them mapped to clusters from *host on (advanced); with zero (and no
 * host), marked as reading zeros; with neither, buf is only read. */
int txn_tables_cut(struct txn *t, uint64_t p, uint64_t from, uint8_t *buf);
int txn_tables_fill(struct txn *t, uint64_t p, uint64_t from, uint64_t to,
                    uint8_t *buf, uint64_t *host, bool zero, uint64_t *n);
/* Resize and other operations that keep the active tree without counting
 * it, before the commit: no entry the new active tree keeps (the
 * tables at L1 index < n; in table cut_idx only the entries before
 * cut_from) names a cluster the commit frees or the operation allocated.
 * On a sound image none can; a data entry naming metadata, or a cluster
 * in use at refcount 0, would otherwise end up naming freed or new
 * metadata (a resize counts no table, so it has not seen them). */
int txn_tables_check_kept(struct txn *t, uint32_t n, uint64_t cut_idx,
                          uint64_t cut_from);
/* Write an edited table once every count is made: as the copy of p, which
 * the new active L1 is redirected to, or (p 0) as a new table at *off. */
int txn_tables_write_edit(struct txn *t, uint64_t p, const uint8_t *buf,
                          uint64_t *off);

/* The L2 table offset in entry i of an L1 table of size entries (0 past
 * its end). */
static inline uint64_t txn_l1_ptr(const uint8_t *l1, uint32_t size,
                                  uint64_t i)
{
    return i < size ? l1_entry_get(l1, i) & L1E_OFFSET_MASK : 0;
}

#endif
