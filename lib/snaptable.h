/*
 * snaptable.h - the snapshot table: entry codec, the live table, lookups
 * (snaptable.c). qcow2-format.md §5.1-§5.3.
 */
#ifndef QIMG_SNAPTABLE_H
#define QIMG_SNAPTABLE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"

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

/* Written by snaptable.c only; others read it. */
struct snap_state {
    struct snap *snaps;
    uint32_t nb_snaps;
    uint64_t snap_table_size; /* bytes, as walked */
};

/* Read the image's snapshot table (load: false leaves it empty, for check,
 * which reads the table its own way). */
int snaptable_init(qimg_image *img, bool load);
void snaptable_free(qimg_image *img);
/* A new table is on disk and named by the header: take its entries
 * (ownership passes) and byte size. */
void snaptable_adopt(qimg_image *img, struct snap *snaps, uint32_t n,
                     uint64_t size);

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
/* Parse qemu-nbd/qemu-img -l spellings into an index, or -1. */
int snap_lookup(const struct qcow2 *q, const char *spec);
/* Check a snapshot's L1 table location before anything reads it. */
int snap_check_l1(qimg_image *img, const struct snap *s);

#endif
