/*
 * amend.h - the format changes of qemu-img amend (amend.c): version,
 * refcount width, lazy refcounts.
 */
#ifndef QIMG_AMEND_H
#define QIMG_AMEND_H

#include <stdbool.h>
#include <stdint.h>

#include "image.h"

/* The header properties an amend leads to. */
struct amend_plan {
    uint32_t version;        /* 2 or 3 */
    unsigned refcount_order; /* 0..6 */
    bool lazy;               /* lazy refcounts */
    bool expand;             /* a downgrade must rewrite zero clusters */
};

/* qemu-img's refusals of the plan for an image whose virtual size will
 * be size, made before anything is written. */
int amend_check(qimg_image *img, const struct amend_plan *p, uint64_t size);
/* A downgrade: read every table; refuse what v2 cannot hold (zstd
 * compressed clusters), note in p->expand whether zero clusters must be
 * rewritten. */
int amend_check_tables(qimg_image *img, struct amend_plan *p);
/* Switch the image to the plan with one write of header sector 0 (a new
 * refcount structure written and synced before it). The handle's state
 * is stale afterwards: the caller reopens it (qcow2_reopen). 1: the image
 * already was as planned, nothing written. */
int amend_format(qimg_image *img, const struct amend_plan *p);

#endif
