/*
 * meta.h - which clusters hold which metadata, and the overlap check every
 * write of a host cluster goes through (meta.c).
 *
 * The map is built lazily, by metaset.c, before the first write; until
 * then the check passes everything (opening never pays for it).
 */
#ifndef QIMG_META_H
#define QIMG_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idset.h"
#include "image.h"

/* Kinds of metadata, in the order (and with the names) QEMU's overlap
 * check reports them. */
enum meta_kind {
    META_HEADER,
    META_ACTIVE_L1,
    META_ACTIVE_L2,
    META_REFCOUNT_TABLE,
    META_REFCOUNT_BLOCK,
    META_SNAPSHOT_TABLE,
    META_INACTIVE_L1,
    META_INACTIVE_L2,
    META_BITMAP_DIR,
    META_NB_KINDS
};
#define META_BIT(k) (1u << (k))

struct meta_state {
    struct idset any;                 /* every metadata cluster */
    struct idset kind[META_NB_KINDS]; /* the clusters of each kind */
    bool ready;
    struct idset avoid; /* see meta_avoid() */
    bool avoid_ready;
};

int meta_init(qimg_image *img);
void meta_free(qimg_image *img);
bool meta_ready(const qimg_image *img);
/* Start an empty map that is kept up to date from now on. */
void meta_start(qimg_image *img);
/* Forget the map (the metadata moved); built again before the next
 * write. */
void meta_reset(qimg_image *img);
/* Record host bytes [off, off+len) as metadata of a kind (no-op until
 * the map is started); -ENOMEM with no message. */
int meta_add(qimg_image *img, enum meta_kind kind, uint64_t off,
             uint64_t len);
/* Forget [off, off+len) as metadata of any kind (it was freed). */
void meta_del(qimg_image *img, uint64_t off, uint64_t len);
/* [off, off+len) is no longer metadata of kind `from` but of kind `to`
 * (an L2 table the active tree stopped using, still a snapshot's). */
int meta_retag(qimg_image *img, uint64_t off, uint64_t len,
               enum meta_kind from, enum meta_kind to);
/* The metadata clusters in file order (malloc'd; *n of them). */
int meta_list_sorted(const qimg_image *img, uint64_t **out, size_t *n);
/* -EIO (marking the image corrupt, naming what it would hit) if a write
 * to host clusters [off, off+len) would hit metadata of a kind not in
 * `allowed` (a mask of META_BIT()s; 0 for guest data). */
int meta_check_write(qimg_image *img, unsigned allowed, uint64_t off,
                     uint64_t len);
/* The same for guest data and new allocations: no metadata at all. */
int meta_overlap_check(qimg_image *img, uint64_t off, uint64_t len);
/* Signal the overlap QEMU reports for a write to metadata cluster idx. */
int meta_signal_overlap(qimg_image *img, uint64_t idx, unsigned allowed);
/* The kinds (META_BIT mask) cluster idx holds; 0 if none. */
unsigned meta_kinds(const qimg_image *img, uint64_t idx);

/* Clusters no allocation may take although their refcount is 0: L2
 * tables a snapshot's L1 table names (damage: a refcount of 0, or past the
 * end of the file, where they read as zeros) and what a bitmap names past
 * the end. Handed out, the cluster would join that tree. Filled once
 * while the image is open (metaset_build() reads every snapshot's L1
 * table for it), and kept: a cluster stepped over stays such a cluster. */
bool meta_avoid_ready(const qimg_image *img);
void meta_avoid_set_ready(qimg_image *img);
int meta_avoid_add(qimg_image *img, uint64_t idx);
/* At least one cluster is to be avoided. */
bool meta_avoid_any(const qimg_image *img);
bool meta_avoid(const qimg_image *img, uint64_t idx);

#endif
