/*
 * l2runs.h - standard L2 tables held as runs of entries (l2runs.c): the
 * tables a snapshot operation has read, kept so they need not be read
 * twice.
 */
#ifndef QIMG_L2RUNS_H
#define QIMG_L2RUNS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "idset.h"
#include "image.h"

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

#endif
