/*
 * internal.h - struct qimg_image and the prototypes shared between lib/
 * files, grouped by the file that defines them. cli/ never includes this.
 */
#ifndef QIMG_INTERNAL_H
#define QIMG_INTERNAL_H

#include "qimg.h"

#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "endian.h"
#include "header.h"
#include "io.h"
#include "util.h"

#ifndef QIMG_VERSION
#define QIMG_VERSION "0.0.0"
#endif

/* ---- error.c ----------------------------------------------------------- */
int qimg_err(int errnum, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* As qimg_err, with ": strerror(errnum)" appended. */
int qimg_err_errno(int errnum, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void qimg_err_prefix(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
/* Make sure a failure has a message (strerror) without replacing one. */
int qimg_err_keep(int ret);
int qimg_corrupt_at(const char *where, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define QIMG_STR2(x) #x
#define QIMG_STR(x) QIMG_STR2(x)
/* Untrusted on-disk value found bad: message, -EIO, where it fired. */
#define qimg_corrupt(...)                                                      \
    qimg_corrupt_at(__FILE__ ":" QIMG_STR(__LINE__), __VA_ARGS__)

/* ---- idset.c: a set of uint64 keys (cluster indices) ------------------- */
struct idset {
    uint64_t *slots; /* UINT64_MAX = empty */
    size_t cap, n;
};
int idset_add(struct idset *s, uint64_t key);
bool idset_has(const struct idset *s, uint64_t key);
void idset_del(struct idset *s, uint64_t key);
void idset_free(struct idset *s);

/* A uint64 -> uint64 map (old L2 table offset -> its new copy). */
struct u64map {
    uint64_t *keys, *vals;
    size_t cap, n;
};
int u64map_put(struct u64map *m, uint64_t key, uint64_t val);
bool u64map_get(const struct u64map *m, uint64_t key, uint64_t *val);
void u64map_free(struct u64map *m);

/* ---- l2runs.c: standard L2 tables held as runs of entries ------------- */
struct qcow2;
struct l2run {
    uint64_t e;   /* first entry: e, e + cluster, ... (0, 0, ... if no offset) */
    uint64_t len; /* entries */
};
struct l2store {
    struct l2run *runs;
    size_t nb, cap;
    struct u64map idx; /* L2 table offset -> first run << 32 | runs */
};
/* 1 if the L2 table in buf is plain (every entry 0 or an in-file cluster
 * offset with at most COPIED), keeping it as runs if they fit; 0 if not
 * plain (the caller checks it entry by entry); -errno on failure. */
int l2store_scan(struct l2store *s, const struct qcow2 *q, uint64_t l2_off,
                 const uint8_t *buf);
bool l2store_get(const struct l2store *s, uint64_t l2_off,
                 const struct l2run **runs, size_t *n);
/* Write the table n runs stand for into out (cluster size cs), with the
 * flag bits in clear cleared. */
void l2runs_emit(const struct l2run *r, size_t n, uint64_t cs, uint64_t clear,
                 uint8_t *out);
void l2store_free(struct l2store *s);

/* ---- cache.c: metadata cluster cache (L2 tables, refcount blocks) ------ */
struct mcache_entry {
    uint64_t off; /* host offset; UINT64_MAX when the slot is empty */
    uint8_t *buf;
    bool dirty;
    unsigned pins;
    uint64_t stamp;
    struct mcache_entry *hnext;
};

struct mcache {
    size_t cs;  /* bytes per entry (cluster size) */
    size_t cap; /* entries */
    struct mcache_entry *e;
    struct mcache_entry **hash;
    size_t hmask;
    uint64_t clock;
};

int mcache_init(struct mcache *c, size_t cs, size_t cap);
void mcache_destroy(struct mcache *c);
struct mcache_entry *mcache_find(struct mcache *c, uint64_t off);
/* A slot for `off` (not present), pinned: a free slot or the least recently
 * used clean unpinned one. NULL if every slot is dirty or pinned. */
struct mcache_entry *mcache_insert(struct mcache *c, uint64_t off);
void mcache_pin(struct mcache *c, struct mcache_entry *e);
void mcache_unpin(struct mcache_entry *e);
/* Forget a cached cluster (it was freed); its dirty contents are dropped. */
void mcache_drop(struct mcache *c, uint64_t off);
bool mcache_has_dirty(const struct mcache *c);
/* Forget every cached cluster (buffers are kept for reuse). */
void mcache_clear(struct mcache *c);

/* ---- The image --------------------------------------------------------- */

/* A decoded snapshot table entry (qcow2-format.md §5.1, §5.2). */
struct snap {
    uint64_t l1_off;
    uint32_t l1_size;
    char *id, *name;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint32_t vm_state_size32;
    uint64_t vm_state_size; /* large field if present, else 32-bit one */
    uint64_t disk_size;
    uint64_t icount;
    uint32_t extra_size; /* as found on disk */
    uint8_t *extra;      /* extra_size bytes, preserved verbatim */
};

/* A refcount decrement waiting for the metadata that dropped the
 * reference to become durable (qcow2-format.md §13 rule 3). */
struct pending_dec {
    uint64_t idx;   /* cluster index */
    bool do_discard; /* punch the cluster if it becomes free */
};

struct qcow2 {
    struct qcow2_header hdr;
    uint64_t file_size; /* bytes; grows as clusters are allocated */

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

    /* Active L1 table, disk byte order; entries [lo, hi) dirty. */
    uint8_t *l1;
    uint32_t l1_size;
    uint32_t l1_dirty_lo, l1_dirty_hi;

    /* Refcount table, disk byte order; entries [lo, hi) dirty. */
    uint8_t *rt;
    uint64_t rt_entries;
    uint64_t rt_dirty_lo, rt_dirty_hi;

    struct mcache l2c, rbc;
    uint64_t free_hint; /* no free cluster below this index */
    struct pending_dec *dec;
    size_t nb_dec, cap_dec;
    bool applying; /* refcount_apply_pending() is running */
    uint64_t free_byte_off; /* compressed-write byte allocator; 0: none */

    struct snap *snaps;
    uint32_t nb_snaps;
    uint64_t snap_table_size; /* bytes, as walked */

    struct idset meta; /* metadata clusters, for the overlap check */
    bool meta_ready;
    bool corrupt_signalled;
    bool bitmaps_marked; /* in_use set on auto bitmaps before writing */
    bool is_snapshot_view;
};

struct qimg_image {
    struct qimg_io io;
    char *filename;
    enum qimg_format fmt;
    bool read_write;
    bool unsynced; /* written since the last fdatasync */
    uint64_t zero_from; /* the file reads as zeros from here on */
    uint64_t size; /* virtual size, bytes */
    qimg_image *backing;
    struct qcow2 *q; /* NULL for raw */
    int lock_fd;     /* -1 when not locking */
    uint64_t lock_perm, lock_shared;
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

/* ---- image.c: open/close, probing, format dispatch ---------------------- */
/* Open over an io backend (consumed, even on failure); depth counts the
 * backing files above this one. */
int image_open_io(qimg_image **out, struct qimg_io *io, const char *filename,
                  const struct qimg_open_opts *o, int depth);
int image_pread(qimg_image *img, void *buf, size_t len, uint64_t off);
int image_pwrite(qimg_image *img, const void *buf, size_t len, uint64_t off);
int image_flush_file(qimg_image *img);
int image_discard_file(qimg_image *img, uint64_t off, uint64_t len);

/* ---- qcow2.c: open/validate, header updates, flush, corrupt bit -------- */
int qcow2_open(qimg_image *img, const struct qimg_open_opts *o);
void qcow2_close(qimg_image *img);
/* Write all dirty metadata in crash-safe order (§13), then fdatasync. */
int qcow2_flush(qimg_image *img);
/* Rewrite cluster 0 from q->hdr in one write. */
int qcow2_write_header(qimg_image *img);
/* Set the corrupt bit after finding metadata that would make a write
 * destructive; returns -EIO with the message set. */
int qcow2_signal_corruption(qimg_image *img, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A write operation failed with ret: if it met damaged metadata (a
 * qimg_corrupt() error) set the corrupt bit, as QEMU does, and frame the
 * message QEMU's way. Returns ret. */
int qcow2_write_failed(qimg_image *img, int ret);
/* -EIO (marking the image corrupt) if a write to host clusters
 * [off, off+len) would hit metadata. */
int qcow2_overlap_check(qimg_image *img, uint64_t off, uint64_t len);
int qcow2_meta_check_counted(qimg_image *img,
                             int (*get)(void *, uint64_t, uint64_t *),
                             void *ctx);
int qcow2_meta_add(struct qcow2 *q, uint64_t off, uint64_t len);
void qcow2_meta_del(struct qcow2 *q, uint64_t off, uint64_t len);
/* Before the first guest write: clear unknown autoclear bits, mark bitmaps. */
int qcow2_prepare_write(qimg_image *img);
/* Read a table of n bytes at off, checking it lies within the file. */
int qcow2_read_table(qimg_image *img, uint8_t **out, uint64_t off, size_t n,
                     const char *what);

/* ---- refcount.c: refcount table, blocks, allocation -------------------- */
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

int refcount_get(qimg_image *img, uint64_t idx, uint64_t *out);
/* Add delta to clusters [idx, idx+n); fails (changing nothing) on overflow
 * or underflow. Written back by refcount_flush(). */
int refcount_update(qimg_image *img, uint64_t idx, uint64_t n, int64_t delta);
/* Allocate n contiguous free clusters with refcount 1. */
int refcount_alloc(qimg_image *img, uint64_t n, uint64_t *host_off);
/* Queue a -1 on [off, off+len)'s clusters until the metadata dropping the
 * reference is durable. */
int refcount_dec_later(qimg_image *img, uint64_t off, uint64_t len,
                       bool do_discard);
int refcount_apply_pending(qimg_image *img);
/* Write dirty refcount blocks and table entries (no fdatasync). */
int refcount_flush(qimg_image *img);
int refcount_load_table(qimg_image *img);
/* Copy refcount block rt_idx of the on-disk state into buf (cluster size);
 * zeros and *exists = false if there is none. */
int refcount_read_block(qimg_image *img, uint64_t rt_idx, uint8_t *buf,
                        bool *exists);
int refcount_cache_init(qimg_image *img);

/* ---- l1l2.c: guest offset -> host cluster ------------------------------ */
#define L1E_OFFSET_MASK 0x00fffffffffffe00ull
#define L1E_RESERVED_MASK 0x7f000000000001ffull
#define L2E_OFFSET_MASK 0x00fffffffffffe00ull
#define L2E_RESERVED_MASK 0x3f000000000001feull
#define QCOW_OFLAG_COPIED (1ull << 63)
#define QCOW_OFLAG_COMPRESSED (1ull << 62)
#define QCOW_OFLAG_ZERO 1ull
#define L2_BITMAP_ALL_ALLOC 0x00000000ffffffffull
#define L2_BITMAP_ALL_ZERO 0xffffffff00000000ull
#define RT_OFFSET_MASK 0xfffffffffffffe00ull

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

int l1_load(qimg_image *img);
int l1_write_dirty(qimg_image *img);
int l2_load(qimg_image *img, uint64_t l2_off, struct mcache_entry **out);
int l2_write_dirty(qimg_image *img);
/* Entry for guest cluster containing guest_off; zeros if unmapped. */
int l2_lookup(qimg_image *img, uint64_t guest_off, struct l2_slot *out);
/* The L2 table covering guest_off, made writable: allocated if missing,
 * copied if shared. Returned pinned; *idx is the entry index in it. */
int l2_get_writable(qimg_image *img, uint64_t guest_off,
                    struct mcache_entry **out, uint64_t *idx);
/* Validate one L2 entry (entry l2_idx of the table at l2_off); -EIO
 * (corrupt) if bad. */
int l2_entry_check(qimg_image *img, uint64_t entry, uint64_t bitmap,
                   uint64_t l2_off, uint64_t l2_idx);
enum cl_type l2_subcluster_type(const struct qcow2 *q, uint64_t entry,
                                uint64_t bitmap, unsigned sc);
enum cl_type l2_cluster_type(const struct qcow2 *q, uint64_t entry);
/* Host bytes a compressed entry touches. */
void l2_compressed_range(const struct qcow2 *q, uint64_t entry,
                         uint64_t *coff, uint64_t *clen);

/* ---- guest.c: guest reads, writes, zeroes, discard, block status ------- */
int guest_read(qimg_image *img, void *buf, size_t len, uint64_t off);
int guest_write(qimg_image *img, const void *buf, size_t len, uint64_t off);
int guest_write_compressed(qimg_image *img, const void *buf, size_t len,
                           uint64_t off);
int guest_zero(qimg_image *img, uint64_t off, uint64_t len, bool unmap);
int guest_discard(qimg_image *img, uint64_t off, uint64_t len);
int guest_block_status(qimg_image *img, uint64_t off, uint64_t len,
                       struct qimg_extent *out);

/* ---- compress.c -------------------------------------------------------- */
/* Decompress exactly dst_len bytes from src; -EIO if that is impossible. */
int compress_decode(int type, uint8_t *dst, size_t dst_len,
                    const uint8_t *src, size_t src_len);
/* Compress into dst (dst_cap bytes); returns the length, or -ENOSPC if it
 * does not fit. */
int64_t compress_encode(int type, uint8_t *dst, size_t dst_cap,
                        const uint8_t *src, size_t src_len);

/* ---- backing.c --------------------------------------------------------- */
int backing_open(qimg_image *img, const struct qimg_open_opts *o, int depth);
/* Read guest bytes [off, off+len) from the backing chain (zeros without
 * one, or past its end). */
int backing_read(qimg_image *img, void *buf, size_t len, uint64_t off);
/* Resolve a backing name against the directory of `base`. */
char *backing_full_path(const char *base, const char *name);

/* ---- snapshot.c: snapshot table codec and lookups ---------------------- */
#define QCOW_MAX_SNAPSHOTS 65536
#define QCOW_MAX_SNAPSHOT_EXTRA 1024
#define QCOW_MAX_SNAPSHOTS_SIZE (1024ull * QCOW_MAX_SNAPSHOTS)
#define QCOW_MAX_L1_SIZE (32ull * 1024 * 1024)
int snap_table_load(qimg_image *img);
/* How a damaged table is read for check -r all (as QEMU's repair reads
 * it): extra data over 1024 bytes is cut, entries past 64 MiB dropped. */
#define SNAP_READ_MAX_DROP 64
struct snap_read {
    bool repair;
    uint32_t drop_idx[SNAP_READ_MAX_DROP], drop_size[SNAP_READ_MAX_DROP];
    size_t nb_drop;
    uint32_t overhang;
};
int snap_table_read(qimg_image *img, uint64_t off, uint32_t n,
                    struct snap_read *rd, struct snap **out, uint32_t *nb_out,
                    uint64_t *size);
/* Encode snaps[0..n) into a new buffer; *len set to its byte size. */
int snap_table_encode(const struct qcow2 *q, const struct snap *snaps,
                      uint32_t n, uint8_t **out, uint64_t *len);
uint64_t snap_table_size(const struct qcow2 *q, const struct snap *snaps,
                         uint32_t n);
void snap_free(struct snap *s);
int snap_copy(struct snap *dst, const struct snap *src);
/* Index of the snapshot, or -1. */
int snap_find_by_id(const struct qcow2 *q, const char *id);
int snap_find_by_name(const struct qcow2 *q, const char *name);
/* Parse qemu-nbd/qemu-img -l spellings into an index, or -ENOENT. */
int snap_lookup(const struct qcow2 *q, const char *spec);
int snap_open_view(qimg_image *img, const char *spec);
int snap_check_l1(qimg_image *img, const struct snap *s);

/* ---- txn.c: atomic snapshot operations ---------------------------------- */
int txn_snapshot_create(qimg_image *img, const char *name);
int txn_snapshot_apply(qimg_image *img, int snap_idx);
int txn_snapshot_delete(qimg_image *img, int snap_idx);

/* ---- lock.c: QEMU-compatible image locks ------------------------------ */
/* Take the locks QEMU takes for this kind of open and fail with QEMU's
 * message if another process's locks conflict. No-op without a file
 * descriptor, with no_locking, or where the file system cannot lock. */
int lock_image(struct qimg_io *io, bool read_write,
               const struct qimg_open_opts *o, const char *path);

/* ---- rebuild.c: the writes of a repair ---------------------------------- */
/* New refcount structure from a computed table (refblock encoding, one
 * entry per cluster), placed past the end of the file; one header write
 * switches to it. */
int rebuild_refcounts(qimg_image *img, const uint8_t *refs, uint64_t nb_refs);
int rebuild_write_l1_entry(qimg_image *img, uint32_t i, uint64_t e);
int rebuild_set_incompat(qimg_image *img, uint64_t bits);
int rebuild_snapshot_table(qimg_image *img, const struct snap *snaps,
                           uint32_t n);

/* ---- create.c ---------------------------------------------------------- */
int qcow2_create(qimg_image **out, struct qimg_io *io, const char *filename,
                 const struct qimg_create_opts *o);

/* ---- bitmap.c: persistent dirty bitmaps (kept, not interpreted) --------- */
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
int bitmap_mark_in_use(qimg_image *img);

#endif
