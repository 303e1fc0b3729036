/*
 * cio.h - a counting, recording io for the transaction and check tests:
 * an io backend over io-mem that counts and records every write, flush,
 * discard and truncate, can fail the writes to header sector 0, and keeps
 * a copy of the file as it was just before the first of them. Plus
 * helpers to open images over it and to judge a file's bytes.
 * Header-only: each test program includes it once.
 */
#ifndef QIMG_TEST_CIO_H
#define QIMG_TEST_CIO_H

#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

/* Not every file that includes this uses every helper. */
#define CIO_FN static __attribute__((unused))

enum op_kind { OP_WRITE, OP_FLUSH, OP_DISCARD, OP_TRUNCATE, OP_NB };

struct op {
    enum op_kind kind;
    uint64_t off, len; /* truncate: off is the new size */
};

struct cio {
    struct qimg_io inner; /* io-mem: the file's bytes */
    struct op *ops;
    size_t nb_ops, cap_ops;
    size_t count[OP_NB];
    bool fail_sector0; /* writes touching bytes [0, 512) fail with EIO */
    /* The file just before the first write to sector 0 since the last
     * cio_reset (NULL: none yet). */
    uint8_t *pre_hdr;
    size_t pre_hdr_len;
};

CIO_FN void cio_log(struct cio *c, enum op_kind k, uint64_t off, uint64_t len)
{
    if (c->nb_ops == c->cap_ops) {
        c->cap_ops = c->cap_ops ? 2 * c->cap_ops : 64;
        c->ops = realloc(c->ops, c->cap_ops * sizeof *c->ops);
        assert_non_null(c->ops);
    }
    c->ops[c->nb_ops++] = (struct op){k, off, len};
    c->count[k]++;
}

CIO_FN int cio_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    struct cio *c = ctx;

    return c->inner.ops->pread(c->inner.ctx, buf, len, off);
}

CIO_FN int cio_pwrite(void *ctx, const void *buf, size_t len, uint64_t off)
{
    struct cio *c = ctx;
    int ret;

    if (off < 512 && len) {
        if (!c->pre_hdr) {
            const uint8_t *d = io_mem_data(&c->inner, &c->pre_hdr_len);
            c->pre_hdr = malloc(c->pre_hdr_len ? c->pre_hdr_len : 1);
            assert_non_null(c->pre_hdr);
            memcpy(c->pre_hdr, d, c->pre_hdr_len);
        }
        if (c->fail_sector0)
            return -EIO;
    }
    ret = c->inner.ops->pwrite(c->inner.ctx, buf, len, off);
    if (ret == 0)
        cio_log(c, OP_WRITE, off, len);
    return ret;
}

CIO_FN int cio_flush(void *ctx)
{
    cio_log(ctx, OP_FLUSH, 0, 0);
    return 0;
}

CIO_FN int cio_discard(void *ctx, uint64_t off, uint64_t len)
{
    struct cio *c = ctx;
    int ret = c->inner.ops->discard(c->inner.ctx, off, len);

    if (ret == 0)
        cio_log(c, OP_DISCARD, off, len);
    return ret;
}

CIO_FN int cio_truncate(void *ctx, uint64_t size)
{
    struct cio *c = ctx;
    int ret = c->inner.ops->truncate(c->inner.ctx, size);

    if (ret == 0)
        cio_log(c, OP_TRUNCATE, size, 0);
    return ret;
}

CIO_FN int cio_get_size(void *ctx, uint64_t *out)
{
    struct cio *c = ctx;

    return c->inner.ops->get_size(c->inner.ctx, out);
}

CIO_FN void cio_close(void *ctx)
{
    (void)ctx; /* the bytes outlive the image: cio_free() */
}

static const struct qimg_io_ops cio_ops __attribute__((unused)) = {
    .pread = cio_pread,
    .pwrite = cio_pwrite,
    .flush = cio_flush,
    .discard = cio_discard,
    .truncate = cio_truncate,
    .get_size = cio_get_size,
    .close = cio_close,
};

/* Forget what was recorded so far. */
CIO_FN void cio_reset(struct cio *c)
{
    c->nb_ops = 0;
    memset(c->count, 0, sizeof c->count);
    free(c->pre_hdr);
    c->pre_hdr = NULL;
    c->pre_hdr_len = 0;
}

CIO_FN void cio_init(struct cio *c, const uint8_t *data, size_t len)
{
    memset(c, 0, sizeof *c);
    assert_int_equal(io_mem_open(&c->inner, data, len), 0);
}

CIO_FN struct qimg_io cio_io(struct cio *c)
{
    struct qimg_io io = {&cio_ops, c};

    return io;
}

CIO_FN void cio_free(struct cio *c)
{
    cio_reset(c);
    free(c->ops);
    c->inner.ops->close(c->inner.ctx);
    memset(c, 0, sizeof *c);
}

/* The file's current bytes (borrowed). */
CIO_FN const uint8_t *cio_bytes(struct cio *c, size_t *len)
{
    return io_mem_data(&c->inner, len);
}

/* A copy of the file's current bytes. */
CIO_FN uint8_t *cio_copy(struct cio *c, size_t *len)
{
    const uint8_t *d = cio_bytes(c, len);
    uint8_t *p = malloc(*len ? *len : 1);

    assert_non_null(p);
    memcpy(p, d, *len);
    return p;
}

/* A new qcow2 image over a fresh cio. */
CIO_FN qimg_image *cio_create(struct cio *c,
                              const struct qimg_create_opts *o)
{
    struct qimg_io io;
    qimg_image *img = NULL;

    cio_init(c, NULL, 0);
    io = cio_io(c);
    assert_int_equal(qcow2_create(&img, &io, "mem", o), 0);
    return img;
}

/* Open a copy of bytes over a fresh cio: read-write, read-only, or for
 * qimg_image_check(). Returns the result; *out is NULL on failure. */
CIO_FN int cio_open(struct cio *c, qimg_image **out, const uint8_t *d,
                    size_t len, bool rw, bool for_check)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_io io;

    cio_init(c, d, len);
    io = cio_io(c);
    o.fmt = QIMG_FMT_QCOW2;
    o.read_write = rw;
    o.for_check = for_check;
    return image_open_io(out, &io, "mem", &o, 0);
}

/* Check the image in bytes d (as `qemu-img check`): it must be clean. */
CIO_FN void assert_bytes_clean(const uint8_t *d, size_t len)
{
    struct qimg_check_result *r = NULL;
    qimg_image *img = NULL;
    struct cio c;

    assert_int_equal(cio_open(&c, &img, d, len, false, true), 0);
    assert_int_equal(qimg_image_check(&r, img, 0), 0);
    for (size_t i = 0; i < r->nb_msgs; i++)
        print_error("unexpected: %s\n", r->msgs[i].text);
    assert_int_equal(r->nb_msgs, 0);
    assert_int_equal(r->corruptions, 0);
    assert_int_equal(r->leaks, 0);
    assert_int_equal(r->check_errors, 0);
    qimg_check_result_free(r);
    assert_int_equal(qimg_image_close(img), 0);
    assert_int_equal(c.count[OP_WRITE] + c.count[OP_DISCARD] +
                         c.count[OP_TRUNCATE],
                     0);
    cio_free(&c);
}

/* Refcount of cluster idx as the live image has it. */
CIO_FN uint64_t rc_of(qimg_image *img, uint64_t idx)
{
    uint64_t rc = UINT64_MAX;

    assert_int_equal(refcount_get(img, idx, &rc), 0);
    return rc;
}

#endif
