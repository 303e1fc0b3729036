/*
 * roots.h - header cluster 0 of a live qcow2 image (roots.c): reading and
 * validating it, the in-memory copy (struct qcow2's hdr), and every write
 * to it. Header sector 0 holds every root pointer: the virtual size, the
 * active L1 table, the refcount table and the snapshot table.
 */
#ifndef QIMG_ROOTS_H
#define QIMG_ROOTS_H

#include <stdbool.h>
#include <stdint.h>

#include "image.h"

/* Read cluster 0 into q->hdr and check it as QEMU does on open (version,
 * cluster size, lengths, features); read_write refuses a corrupt image,
 * no_io accepts an AES-encrypted image and one with an external data file
 * (their metadata can be shown, their data not read). */
int roots_load(qimg_image *img, bool read_write, bool no_io);

/* The virtual size of this handle (a snapshot view has its own). */
void roots_set_size(qimg_image *img, uint64_t size);

/* Rewrite cluster 0 from q->hdr in one write, then fdatasync. */
int roots_write_header(qimg_image *img);
/* Image creation: the size and the active L1 table, in memory only (the
 * caller then writes the header). */
void roots_set_disk(qimg_image *img, uint64_t size, uint64_t l1_off,
                    uint32_t l1_size);

/* The root pointers a snapshot operation switches. */
struct qcow2_roots {
    uint64_t size;
    bool has_l1; /* the active L1 table changes */
    uint64_t l1_off;
    uint32_t l1_size;
    uint64_t rt_off;
    uint32_t rt_clusters;
    uint32_t nb_snaps;
    uint64_t snap_off;
};
/* fdatasync, one 512-byte write of header sector 0 with the new roots
 * (unknown autoclear bits cleared), fdatasync. */
int roots_commit(qimg_image *img, const struct qcow2_roots *r);
/* The bitmaps extension a commit switches to (nb 0: none). */
struct roots_bitmaps {
    uint32_t nb;
    uint64_t dir_size, dir_off;
};
/* roots_commit with a new bitmaps extension: cluster 0 rewritten as
 * roots_set_format does, atomically. */
int roots_commit_bitmaps(qimg_image *img, const struct qcow2_roots *r,
                         const struct roots_bitmaps *b);
/* Point the image at another backing file (name NULL: none; fmt NULL: no
 * format extension), atomically: the name is written where the old
 * header does not look, then sector 0 switches to it in one write,
 * fdatasync around. The feature-name table is left out so that the
 * extensions fit in sector 0; -ENOSPC where they still do not. */
int roots_set_backing(qimg_image *img, const char *name, const char *fmt);
/* The format fields of header sector 0 a format change (qemu-img amend)
 * switches; a version below 3 implies 16-bit refcounts, no feature bits
 * and no bitmaps extension (the caller frees the bitmaps). */
struct roots_format {
    uint32_t version;
    uint32_t refcount_order;
    uint64_t rt_off;
    uint32_t rt_clusters;
    uint64_t l1_off;   /* the active L1 table (its size unchanged) */
    uint64_t snap_off; /* the snapshot table (its count unchanged) */
    uint64_t incompatible, compatible;
};
/* Rewrite cluster 0 with these fields, atomically as roots_set_backing
 * (the feature-name table left out); the caller made every structure the
 * new header names durable. */
int roots_set_format(qimg_image *img, const struct roots_format *f);
/* The committed roots in memory (cannot fail). */
void roots_adopt(qimg_image *img, const struct qcow2_roots *r);

/* Header bytes 48-59 (refcount table offset and clusters) in one write
 * between two fdatasyncs. The caller made the new table durable. */
int roots_switch_refcount_table(qimg_image *img, uint64_t off,
                                uint32_t clusters);
/* Header bytes 60-71 (nb_snapshots and snapshots_offset) in one write
 * between two fdatasyncs. */
int roots_switch_snapshot_table(qimg_image *img, uint32_t n, uint64_t off);
/* The incompatible feature bits (dirty, corrupt) in one write between two
 * fdatasyncs. */
int roots_set_incompat(qimg_image *img, uint64_t bits);

/* Before the first guest write: clear the autoclear bits qimg cannot
 * maintain, as QEMU does on a read-write open. */
int roots_clear_autoclear(qimg_image *img);
/* The image is marked corrupt, or a corruption was signalled. */
bool roots_is_corrupt(const qimg_image *img);

/* Set the corrupt bit after finding metadata that would make a write
 * destructive; returns -EIO with the message set. */
int roots_signal_corruption(qimg_image *img, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* A write operation failed with ret: if it met damaged metadata (a
 * qimg_corrupt() error) set the corrupt bit, as QEMU does, and frame the
 * message QEMU's way. Returns ret. */
int roots_write_failed(qimg_image *img, int ret);

#endif
