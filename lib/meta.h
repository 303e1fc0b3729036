/*
 * meta.h - the set of clusters that hold metadata, and the overlap check
 * every write of a host cluster goes through (meta.c).
 *
 * The set is built lazily, by metaset.c, before the first write; until
 * then the check passes everything (opening never pays for it).
 */
#ifndef QIMG_META_H
#define QIMG_META_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idset.h"
#include "image.h"

struct meta_state {
    struct idset set; /* metadata cluster indices */
    bool ready;
    /* Which structure cluster idx belongs to, in QEMU's words (installed
     * by the opener: the answer needs the tables above this layer). */
    const char *(*describe)(qimg_image *img, uint64_t idx);
};

int meta_init(qimg_image *img,
              const char *(*describe)(qimg_image *, uint64_t));
void meta_free(qimg_image *img);
bool meta_ready(const qimg_image *img);
/* Start an empty set that is kept up to date from now on. */
void meta_start(qimg_image *img);
/* Forget the set (the metadata moved); built again before the next
 * write. */
void meta_reset(qimg_image *img);
/* Record or forget host bytes [off, off+len) as metadata (no-op until the
 * set is started). */
int meta_add(qimg_image *img, uint64_t off, uint64_t len);
void meta_del(qimg_image *img, uint64_t off, uint64_t len);
/* The metadata clusters in file order (malloc'd; *n of them). */
int meta_list_sorted(const qimg_image *img, uint64_t **out, size_t *n);
/* -EIO (marking the image corrupt) if a write to host clusters
 * [off, off+len) would hit metadata. */
int meta_overlap_check(qimg_image *img, uint64_t off, uint64_t len);
/* Signal the overlap QEMU reports for a write to metadata cluster idx. */
int meta_signal_overlap(qimg_image *img, uint64_t idx);

#endif
