/*
 * crash.h - shared pieces of the crash-state and fault-injection suites.
 */
#ifndef QIMG_TEST_CRASH_H
#define QIMG_TEST_CRASH_H

#include "internal.h"

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct bytes {
    uint8_t *data;
    size_t len;
};

enum rec_kind { REC_NONE, REC_READ, REC_WRITE, REC_FLUSH, REC_DISCARD,
                REC_TRUNCATE };

struct rec_op {
    enum rec_kind kind;
    uint64_t off, len; /* truncate: off is the new size */
    uint8_t *data;
};

struct rec {
    struct qimg_io inner; /* io-mem holding the current bytes */
    bool recording, closed;
    struct rec_op *ops;
    size_t nb_ops, cap_ops;
    /* fault injection */
    enum rec_kind fault_kind;
    unsigned fault_n, fault_count;
    int fault_errno;
    bool fault_hit;
};

int rec_init(struct rec *r, const struct bytes *base);
/* An io backend over the recorder (valid while r lives). */
void rec_io(struct rec *r, struct qimg_io *io);
void rec_contents(struct rec *r, struct bytes *out);
void rec_free(struct rec *r);

/* Read-only io over borrowed bytes (they must outlive the image). */
int io_view_open(struct qimg_io *io, const struct bytes *b);

void bytes_set(struct bytes *b, const uint8_t *d, size_t len);
void bytes_free(struct bytes *b);
void bytes_apply(struct bytes *b, const struct rec_op *op,
                 const uint8_t *sectors);

/* malloc_fail.c: fail the malloc_fail_at-th allocation (0: never). */
extern unsigned long malloc_fail_at, malloc_count;
extern bool malloc_failed;

#endif
