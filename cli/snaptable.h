/*
 * snaptable.h - the snapshot table as `qemu-img info` and
 * `qemu-img snapshot -l` print it.
 */
#ifndef QIMG_CLI_SNAPTABLE_H
#define QIMG_CLI_SNAPTABLE_H

#include <stddef.h>
#include <stdio.h>

#include "qimg.h"

/* QEMU keeps at most this many bytes of a snapshot's ID and name for
 * listing (its fixed-size id_str[128] and name[256] buffers). */
#define SNAPTABLE_MAX_ID 127
#define SNAPTABLE_MAX_NAME 255

/* The column header line, without the newline. */
void snaptable_print_header(FILE *f);
/* One snapshot's line, without the newline. */
void snaptable_print_row(FILE *f, const struct qimg_snapshot *sn);
/* "Snapshot list:", the header and one line per snapshot, each ending in
 * a newline; nothing at all when `count` is 0. */
void snaptable_print(FILE *f, const struct qimg_snapshot *list,
                     size_t count);

#endif
