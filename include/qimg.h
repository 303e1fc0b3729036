/*
 * qimg.h - libqimg, qcow2 disk images and their internal snapshots.
 *
 * The only public header. Conventions:
 *  - Functions return 0 (or a count) on success and a negative errno on
 *    failure; qimg_last_error() then holds a one-line message.
 *  - Out parameters come first and are named `out`. An object returned
 *    through `**out` belongs to the caller and is released with the matching
 *    *_free()/close function; passing NULL to those does nothing.
 *  - A returned `const char *` is borrowed from its parent object.
 *  - The library never prints, exits or aborts.
 *  - Offsets and sizes are bytes (uint64_t); buffer lengths are size_t.
 */
#ifndef QIMG_H
#define QIMG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(QIMG_BUILDING) && defined(__GNUC__)
#define QIMG_API __attribute__((visibility("default")))
#else
#define QIMG_API
#endif

/* ---- Errors ------------------------------------------------------------ */

struct qimg_error {
    int errnum;         /* EINVAL, EIO, ENOSPC...; 0 if none */
    char message[4096]; /* one line, qemu-img wording, no "qimg: " prefix */
    char where[64];     /* "refcount.c:412" when set by a corruption check */
};

/* This thread's last failure. Never NULL; errnum is 0 if nothing failed. */
QIMG_API const struct qimg_error *qimg_last_error(void);
/* Forget this thread's last failure. */
QIMG_API void qimg_error_clear(void);
/* Library version string, e.g. "0.1.0". */
QIMG_API const char *qimg_version(void);

/* ---- Images ------------------------------------------------------------ */

typedef struct qimg_image qimg_image;

enum qimg_format {
    QIMG_FMT_AUTO = 0, /* probe: qcow2 magic, else raw */
    QIMG_FMT_QCOW2,
    QIMG_FMT_RAW,
};

struct qimg_open_opts {
    enum qimg_format fmt;
    bool read_write;
    bool no_backing;  /* do not open the backing chain */
    bool force_share; /* -U: do not take the shared "write" lock */
    bool no_locking;  /* file.locking=off */
    /* Open this internal snapshot (ID or name; "snapshot.id=" and
     * "snapshot.name=" prefixes accepted) read-only instead of the active
     * disk. NULL: the active disk. */
    const char *snapshot;
    /* Open for qimg_image_check(): tolerate the damage check reports
     * (the snapshot table is read by the check, a dirty image is not
     * repaired on open, a corrupt image may be opened read-write). */
    bool for_check;
    /* Once a GiB has been written through the page cache, write long
     * runs of data that are aligned in memory and in the file straight to
     * the disk (O_DIRECT): for bulk copies such as convert's target.
     * Metadata and short writes stay buffered; durability still comes
     * from the flush. */
    bool direct_data;
    /* Open read-only for qimg_image_info() and qimg_snapshot_list() only,
     * as `qemu-img info` does: an AES-encrypted image and one whose data
     * lies in an external data file open too, though their data cannot
     * be read. */
    bool no_io;
    /* More than 0: open at most this many images of the backing chain
     * (the lowest one opened then reads as if it had no backing file).
     * qemu-img commit keeps the image it commits into out of the chain
     * so that it can open it for writing. */
    int backing_layers;
};
#define QIMG_OPEN_OPTS_INIT                                                    \
    {QIMG_FMT_AUTO, false, false, false, false, NULL, false, false, false, 0}

/* Open `path`. Backing files are opened read-only, relative names resolved
 * against the directory of the image naming them. */
QIMG_API int qimg_image_open(qimg_image **out, const char *path,
                             const struct qimg_open_opts *o);
/* Flush (if writable), release locks and free. Returns the flush result;
 * the image is freed either way. */
QIMG_API int qimg_image_close(qimg_image *img);

enum qimg_prealloc {
    QIMG_PREALLOC_OFF = 0,
    QIMG_PREALLOC_METADATA,
    QIMG_PREALLOC_FALLOC,
    QIMG_PREALLOC_FULL,
};

struct qimg_create_opts {
    enum qimg_format fmt;   /* QIMG_FMT_QCOW2 or QIMG_FMT_RAW */
    uint64_t size;          /* virtual size, bytes (rounded up to 512) */
    uint32_t cluster_size;  /* 512 .. 2 MiB, power of two */
    int compat;             /* 2 (0.10) or 3 (1.1) */
    uint32_t refcount_bits; /* 1, 2, 4, 8, 16, 32, 64 */
    bool lazy_refcounts;
    bool extended_l2;
    int compression_type;   /* 0 zlib, 1 zstd */
    enum qimg_prealloc prealloc;
    const char *backing_file; /* stored as given */
    const char *backing_fmt;  /* "qcow2", "raw" or NULL */
};
#define QIMG_CREATE_OPTS_INIT                                                  \
    {QIMG_FMT_QCOW2, 0, 65536, 3, 16, false, false, 0, QIMG_PREALLOC_OFF,      \
     NULL, NULL}

/* Create (or truncate and overwrite) an image file. */
QIMG_API int qimg_image_create(const char *path,
                               const struct qimg_create_opts *o);

QIMG_API uint64_t qimg_image_size(const qimg_image *img);
QIMG_API enum qimg_format qimg_image_format(const qimg_image *img);
/* The file name the image was opened by (backing files: resolved against
 * the overlay's directory). Borrowed. */
QIMG_API const char *qimg_image_filename(const qimg_image *img);
/* Backing image, or NULL. Borrowed. */
QIMG_API qimg_image *qimg_image_backing(qimg_image *img);

/* Guest I/O at any byte offset and length within the virtual size. */
QIMG_API int qimg_image_read(qimg_image *img, void *buf, size_t len,
                             uint64_t off);
QIMG_API int qimg_image_write(qimg_image *img, const void *buf, size_t len,
                              uint64_t off);
/* Compress whole clusters; `off` cluster-aligned, `len` a multiple of the
 * cluster size or ending at the end of the disk; the clusters must be
 * unallocated (as QEMU requires). */
QIMG_API int qimg_image_write_compressed(qimg_image *img, const void *buf,
                                         size_t len, uint64_t off);

#define QIMG_ZERO_UNMAP 1u /* may deallocate instead of keeping space */
/* Fail with -ENOTSUP, writing nothing, where zeroing would mean writing
 * zeros rather than marking clusters zero (qemu-io's write -z -n). */
#define QIMG_ZERO_NO_FALLBACK 2u
QIMG_API int qimg_image_write_zeroes(qimg_image *img, uint64_t off,
                                     uint64_t len, unsigned flags);
QIMG_API int qimg_image_discard(qimg_image *img, uint64_t off, uint64_t len);
QIMG_API int qimg_image_flush(qimg_image *img);
/* Clusters a flush could not free since the last call: on a damaged image
 * (a refcount already 0, a bad refcount block) qimg leaks such a cluster
 * and goes on, as QEMU does. Returns how many, and in *err the errno of
 * the last (EINVAL for a refcount already 0, as QEMU reports it). */
QIMG_API unsigned qimg_image_take_free_failures(qimg_image *img, int *err);

/* Allocation status of [off, off+len): the answer covers *out->len bytes
 * from `off` (at least 1 byte, at most len) that share one status. */
#define QIMG_BS_ALLOCATED 1u /* defined by this layer, not the backing */
#define QIMG_BS_ZERO 2u      /* reads as zeros */
#define QIMG_BS_DATA 4u      /* has host data (offset valid if not compressed) */
#define QIMG_BS_COMPRESSED 8u
#define QIMG_BS_OFFSET 16u /* host_off is valid */
struct qimg_extent {
    uint64_t len;
    unsigned flags;
    uint64_t host_off; /* with QIMG_BS_OFFSET */
    int depth;         /* layer answering: 0 this image, 1 its backing... */
};
/* Status in this layer only (backing not consulted). */
QIMG_API int qimg_image_block_status(qimg_image *img, uint64_t off,
                                     uint64_t len, struct qimg_extent *out);
/* Status through the backing chain (depth says which layer answered);
 * data over a hole of the host file is also reported as ZERO, as QEMU
 * does. */
QIMG_API int qimg_image_map(qimg_image *img, uint64_t off, uint64_t len,
                            struct qimg_extent *out);

/* Change the virtual size (qemu-img resize). A smaller size drops what
 * lies past it; a larger one reads as zeros there and, with prealloc,
 * has it mapped (qcow2: metadata, falloc, full) or reserved (raw: falloc,
 * full). qcow2 sizes are multiples of 512. qcow2: atomic, one write of
 * header sector 0 switches from the old size to the new; internal
 * snapshots keep their own sizes. */
QIMG_API int qimg_image_resize(qimg_image *img, uint64_t size,
                               enum qimg_prealloc prealloc);

/* qemu-img amend's qcow2 options; a zero (lazy_refcounts: negative)
 * field leaves that property as it is. */
struct qimg_amend_opts {
    int compat;             /* 2 (0.10) or 3 (1.1) */
    unsigned refcount_bits; /* 1, 2, 4, ..., 64 */
    int lazy_refcounts;     /* 0 off, 1 on */
    uint64_t size;          /* a new virtual size, as resize (shrinking) */
};
#define QIMG_AMEND_OPTS_INIT {.lazy_refcounts = -1}
/* Change the image's format options (qcow2 only), everything qemu-img
 * refuses refused before anything is written. The version, the refcount
 * width and the feature bits switch with one write of header sector 0,
 * after a new refcount structure of the new width has been written beside
 * the old; a size changes as qimg_image_resize does (before a downgrade,
 * after any other change). */
QIMG_API int qimg_image_amend(qimg_image *img,
                              const struct qimg_amend_opts *o);

/* Give free space back in place (qcow2): the clusters in use near the
 * end of the file move into free clusters nearer the start, the tables
 * naming them are written anew beside the old ones, one write of header
 * sector 0 switches to the new state, and only then are free clusters
 * punched and the file cut after the last cluster in use. Every snapshot,
 * bitmap and the backing link are kept; a power cut leaves the old image
 * or the new one. Leaks are repaired first; an image the check finds
 * errors in is refused. The file system needs free space for what is
 * moved (at most the bytes past the new end) until the file is cut.
 * progress (may be NULL) is called with clusters done of total. */
struct qimg_compact_result {
    uint64_t old_file_size, new_file_size; /* bytes */
    uint64_t moved_bytes;                  /* data copied */
    int64_t leaks_repaired;                /* clusters */
};
typedef void qimg_progress_fn(void *opaque, uint64_t done, uint64_t total);
QIMG_API int qimg_image_compact(qimg_image *img, qimg_progress_fn *progress,
                                void *opaque,
                                struct qimg_compact_result *res);

/* ---- Image information ----------------------------------------------- */

struct qimg_bitmap_info {
    char *name;
    uint32_t granularity;
    bool in_use, is_auto;
};

struct qimg_info {
    enum qimg_format fmt;
    uint64_t virtual_size;
    uint64_t actual_size;  /* bytes allocated on the host file system */
    uint32_t cluster_size; /* qcow2 only */
    char *backing_file;    /* as stored; NULL if none */
    char *full_backing_file;
    char *backing_fmt;     /* NULL if not recorded */
    bool is_dirty;
    /* qcow2 format-specific */
    int version;           /* 2 or 3 */
    bool lazy_refcounts, corrupt, extended_l2;
    int compression_type;  /* 0 zlib, 1 zstd */
    uint32_t refcount_bits;
    bool has_bitmaps_ext;
    struct qimg_bitmap_info *bitmaps;
    size_t nb_bitmaps;
    char *data_file;       /* the data file's name as stored; NULL if none */
    bool has_data_file;    /* the external-data-file feature bit */
    bool data_file_raw;
    int crypt_method;      /* 0 none, 1 AES, 2 LUKS */
};

QIMG_API int qimg_image_info(struct qimg_info **out, qimg_image *img);
QIMG_API void qimg_info_free(struct qimg_info *info);

/* ---- Internal snapshots ------------------------------------------------ */

struct qimg_snapshot {
    char *id;
    char *name;
    uint64_t vm_state_size;
    uint32_t date_sec, date_nsec;
    uint64_t vm_clock_nsec;
    uint64_t disk_size;
    uint64_t icount; /* UINT64_MAX: unknown */
    uint64_t l1_table_offset;
    uint32_t l1_size;
};

/* All snapshots in table order. *out is freed with qimg_snapshot_list_free. */
QIMG_API int qimg_snapshot_list(struct qimg_snapshot **out, size_t *count,
                                qimg_image *img);
QIMG_API void qimg_snapshot_list_free(struct qimg_snapshot *list,
                                      size_t count);

/* Create a snapshot of the active disk named `name` (cut to 255 bytes);
 * its ID is one more than the largest numeric ID. Commits atomically. */
QIMG_API int qimg_snapshot_create(qimg_image *img, const char *name);
/* Revert the active disk to the snapshot (looked up by ID, then name).
 * Commits atomically. */
QIMG_API int qimg_snapshot_apply(qimg_image *img, const char *id_or_name);
/* Delete the snapshot (looked up by name, then ID). Commits atomically. */
QIMG_API int qimg_snapshot_delete(qimg_image *img, const char *name_or_id);
/* Rename a snapshot (looked up by ID, then name) to `new_name`, cut to
 * 255 bytes as a create cuts it (names need not be unique, as in QEMU).
 * The snapshot table is written anew and switched in with one header
 * write: a power cut leaves the old name or the new. */
QIMG_API int qimg_snapshot_rename(qimg_image *img, const char *id_or_name,
                                  const char *new_name);
/* Host space per tree (a snapshot or the active disk), in bytes of the
 * file: its L2 tables and the clusters they map (compressed ones by the
 * sectors they occupy); exclusive: the host clusters no other tree names,
 * what deleting the snapshot gives back (but its own L1 table and
 * snapshot-table entry); shared: the rest. */
struct qimg_space_usage {
    uint64_t exclusive_bytes, shared_bytes, referenced_bytes;
};
struct qimg_space {
    struct qimg_space_usage *snapshots; /* in snapshot-table order */
    size_t nb_snapshots;
    struct qimg_space_usage active;
    uint64_t data_bytes;        /* data clusters in use (whole clusters) */
    uint64_t metadata_bytes;    /* every other cluster in use */
    uint64_t free_held_bytes;   /* free clusters the file still holds */
    uint64_t reclaimable_bytes; /* what compacting would give back */
};
/* One pass over the tables (no data read). Free with qimg_space_free. */
QIMG_API int qimg_snapshot_space(struct qimg_space **out, qimg_image *img);
QIMG_API void qimg_space_free(struct qimg_space *s);
/* A guest range that may differ between two trees; zero: it reads as
 * zeros in the newer one. */
struct qimg_diff_extent {
    uint64_t start, length;
    bool zero;
};
/* The ranges of snapshot `to` (NULL: the active disk) that may differ
 * from snapshot `from` (each an ID or a name), from the tables alone,
 * merged into maximal runs: a superset of the ranges whose bytes differ
 * (a cluster whose mappings differ but whose bytes are equal is in it).
 * Ranges past the end of `from`'s disk are in it. Free with
 * qimg_diff_free. */
QIMG_API int qimg_snapshot_diff(qimg_image *img, const char *from,
                                const char *to,
                                struct qimg_diff_extent **out, size_t *count);
QIMG_API void qimg_diff_free(struct qimg_diff_extent *e);
/* Point a qcow2 image at another backing file, stored as given (NULL:
 * none), with a format extension (fmt NULL: none), changing nothing
 * else: qemu-img rebase -u. Atomic: one write of header sector 0 switches
 * from the old name to the new. The open image goes on reading through
 * the chain it was opened with. */
QIMG_API int qimg_image_set_backing(qimg_image *img, const char *name,
                                    const char *fmt);
/* Empty the active disk: every cluster unallocated, so that it reads
 * through to the backing file (qemu-img commit's last step); internal
 * snapshots keep their data. Commits atomically. */
QIMG_API int qimg_image_make_empty(qimg_image *img);

/* ---- Persistent dirty bitmaps ------------------------------------------ */

/* qemu-img bitmap's actions. */
enum qimg_bitmap_op {
    QIMG_BITMAP_ADD,     /* a new, empty, enabled bitmap */
    QIMG_BITMAP_REMOVE,
    QIMG_BITMAP_CLEAR,   /* every bit clear */
    QIMG_BITMAP_ENABLE,  /* guest writes set its bits */
    QIMG_BITMAP_DISABLE,
    QIMG_BITMAP_MERGE,   /* set the bits `source` has set */
};
struct qimg_bitmap_action {
    enum qimg_bitmap_op op;
    const char *name;          /* the bitmap acted on */
    uint32_t granularity;      /* ADD: bytes, a power of two >= 512; 0:
                                * QEMU's default */
    const char *source;        /* MERGE: the bitmap merged in */
    qimg_image *source_image;  /* MERGE: the image holding it (NULL: img) */
};
/* Apply the actions in order, each refused as qemu-img refuses it, then
 * commit them all at once, atomically (one header write). On failure
 * nothing is written and *failed (if not NULL) is the index of the action
 * that failed. Bitmaps the guest writes of this session kept up to date
 * are stored first. */
QIMG_API int qimg_bitmap_change(qimg_image *img,
                                const struct qimg_bitmap_action *a, size_t n,
                                size_t *failed);

/* ---- Consistency check and repair ------------------------------------- */

#define QIMG_CHECK_FIX_LEAKS 1u  /* -r leaks */
#define QIMG_CHECK_FIX_ERRORS 2u /* -r all (with FIX_LEAKS) */

/* One finding, in the order qemu-img prints its stderr lines. */
struct qimg_check_msg {
    char *text;  /* qemu-img's line, e.g. "Leaked cluster 7 refcount=1
                  * reference=0" */
    char *where; /* the structures holding the references involved, or
                  * NULL, e.g. "active L1 index 0, L2 index 5" */
    char *kind;  /* "leak", "refcount", "copied", "l2-entry", ... */
    bool is_error;  /* counted as a corruption (or check error) */
};

struct qimg_check_result {
    int64_t corruptions, leaks, check_errors;
    int64_t corruptions_fixed, leaks_fixed;
    int64_t image_end_offset;
    int64_t total_clusters, allocated_clusters, fragmented_clusters,
        compressed_clusters;
    struct qimg_check_msg *msgs;
    size_t nb_msgs;
};

/* Check (and with `fix`, repair) a qcow2 image opened with for_check
 * (read-write when fixing). Fills *out even when the check had to stop:
 * then a negative errno is returned as well. -ENOTSUP for raw images. */
QIMG_API int qimg_image_check(struct qimg_check_result **out,
                              qimg_image *img, unsigned fix);
QIMG_API void qimg_check_result_free(struct qimg_check_result *r);

#ifdef __cplusplus
}
#endif

#endif /* QIMG_H */
