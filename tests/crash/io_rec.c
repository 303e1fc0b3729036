/*
 * io_rec.c - test io backends: a recorder of every write, flush, discard and
 * truncate (for crash-state replay), and a fault injector that fails the
 * N-th call of a kind.
 *
 * Both sit on top of an io-mem file. Crash states are rebuilt from the
 * base bytes plus a chosen subset of the recorded operations.
 */
#include "crash.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static struct rec *rec_of(void *ctx)
{
    return ctx;
}

static int log_op(struct rec *r, enum rec_kind k, const void *buf,
                  uint64_t off, uint64_t len)
{
    struct rec_op *op;

    if (!r->recording)
        return 0;
    if (r->nb_ops == r->cap_ops) {
        size_t cap = r->cap_ops ? r->cap_ops * 2 : 64;
        struct rec_op *p = realloc(r->ops, cap * sizeof *p);
        if (!p)
            return -ENOMEM;
        r->ops = p;
        r->cap_ops = cap;
    }
    op = &r->ops[r->nb_ops];
    memset(op, 0, sizeof *op);
    op->kind = k;
    op->off = off;
    op->len = len;
    if (k == REC_WRITE) {
        op->data = malloc(len ? len : 1);
        if (!op->data)
            return -ENOMEM;
        memcpy(op->data, buf, len);
    }
    r->nb_ops++;
    return 0;
}

/* Fault injection: fail the fault_n-th call of fault_kind. */
static int maybe_fail(struct rec *r, enum rec_kind k)
{
    if (r->fault_kind != k || !r->fault_n)
        return 0;
    if (++r->fault_count == r->fault_n) {
        r->fault_hit = true;
        return -r->fault_errno;
    }
    return 0;
}

static int rec_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    struct rec *r = rec_of(ctx);
    int ret = maybe_fail(r, REC_READ);

    return ret ? ret : r->inner.ops->pread(r->inner.ctx, buf, len, off);
}

static int rec_pwrite(void *ctx, const void *buf, size_t len, uint64_t off)
{
    struct rec *r = rec_of(ctx);
    int ret = maybe_fail(r, REC_WRITE);

    if (ret == 0)
        ret = r->inner.ops->pwrite(r->inner.ctx, buf, len, off);
    if (ret == 0)
        ret = log_op(r, REC_WRITE, buf, off, len);
    return ret;
}

static int rec_flush(void *ctx)
{
    struct rec *r = rec_of(ctx);
    int ret = maybe_fail(r, REC_FLUSH);

    return ret ? ret : log_op(r, REC_FLUSH, NULL, 0, 0);
}

static int rec_discard(void *ctx, uint64_t off, uint64_t len)
{
    struct rec *r = rec_of(ctx);
    int ret = maybe_fail(r, REC_DISCARD);

    if (ret == 0)
        ret = r->inner.ops->discard(r->inner.ctx, off, len);
    if (ret == 0)
        ret = log_op(r, REC_DISCARD, NULL, off, len);
    return ret;
}

static int rec_truncate(void *ctx, uint64_t size)
{
    struct rec *r = rec_of(ctx);
    int ret = maybe_fail(r, REC_TRUNCATE);

    if (ret == 0)
        ret = r->inner.ops->truncate(r->inner.ctx, size);
    if (ret == 0)
        ret = log_op(r, REC_TRUNCATE, NULL, size, 0);
    return ret;
}

static int rec_get_size(void *ctx, uint64_t *out)
{
    struct rec *r = rec_of(ctx);

    return r->inner.ops->get_size(r->inner.ctx, out);
}

static void rec_close(void *ctx)
{
    struct rec *r = rec_of(ctx);

    /* The recorder outlives the image: only mark it closed. */
    r->closed = true;
}

static const struct qimg_io_ops rec_ops = {
    .pread = rec_pread,
    .pwrite = rec_pwrite,
    .flush = rec_flush,
    .discard = rec_discard,
    .truncate = rec_truncate,
    .get_size = rec_get_size,
    .close = rec_close,
};

int rec_init(struct rec *r, const struct bytes *base)
{
    memset(r, 0, sizeof *r);
    return io_mem_open(&r->inner, base->data, base->len);
}

void rec_io(struct rec *r, struct qimg_io *io)
{
    io->ops = &rec_ops;
    io->ctx = r;
    r->closed = false;
}

void rec_contents(struct rec *r, struct bytes *out)
{
    size_t len;
    const uint8_t *d = io_mem_data(&r->inner, &len);

    bytes_set(out, d, len);
}

void rec_free(struct rec *r)
{
    for (size_t i = 0; i < r->nb_ops; i++)
        free(r->ops[i].data);
    free(r->ops);
    if (r->inner.ops)
        r->inner.ops->close(r->inner.ctx);
    memset(r, 0, sizeof *r);
}

void bytes_set(struct bytes *b, const uint8_t *d, size_t len)
{
    free(b->data);
    b->data = malloc(len ? len : 1);
    if (!b->data)
        abort();
    if (len)
        memcpy(b->data, d, len);
    b->len = len;
}

void bytes_free(struct bytes *b)
{
    free(b->data);
    b->data = NULL;
    b->len = 0;
}

/* Apply one recorded operation to b; a torn write applies only the
 * sectors whose bit is set in `sectors` (NULL: all). */
void bytes_apply(struct bytes *b, const struct rec_op *op,
                 const uint8_t *sectors)
{
    uint64_t end = op->off + op->len;

    switch (op->kind) {
    case REC_WRITE:
        if (end > b->len) {
            b->data = realloc(b->data, end);
            if (!b->data)
                abort();
            memset(b->data + b->len, 0, end - b->len);
            b->len = end;
        }
        if (!sectors) {
            memcpy(b->data + op->off, op->data, op->len);
            break;
        }
        /* Sector i of the write covers file sector (off / 512) + i. */
        for (uint64_t s = op->off / 512; s * 512 < end; s++) {
            uint64_t lo = s * 512 > op->off ? s * 512 : op->off;
            uint64_t hi = (s + 1) * 512 < end ? (s + 1) * 512 : end;
            uint64_t k = s - op->off / 512;
            if (sectors[k / 8] & (1u << (k % 8)))
                memcpy(b->data + lo, op->data + (lo - op->off), hi - lo);
        }
        break;
    case REC_DISCARD:
        if (op->off < b->len)
            memset(b->data + op->off, 0,
                   (end < b->len ? end : b->len) - op->off);
        break;
    case REC_TRUNCATE:
        if (op->off > b->len) {
            b->data = realloc(b->data, op->off);
            if (!b->data)
                abort();
            memset(b->data + b->len, 0, op->off - b->len);
        }
        b->len = op->off;
        break;
    default:
        break;
    }
}

/* A read-only io backend over borrowed bytes (no copy). */
struct view {
    const struct bytes *b;
};

static int view_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    const struct bytes *b = ((struct view *)ctx)->b;
    size_t n = off < b->len ? (b->len - off < len ? b->len - off : len) : 0;

    memcpy(buf, b->data + off, n);
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

static int view_pwrite(void *ctx, const void *buf, size_t len, uint64_t off)
{
    (void)ctx;
    (void)buf;
    (void)len;
    (void)off;
    return -EROFS;
}

static int view_flush(void *ctx)
{
    (void)ctx;
    return 0;
}

static int view_discard(void *ctx, uint64_t off, uint64_t len)
{
    (void)ctx;
    (void)off;
    (void)len;
    return -EROFS;
}

static int view_truncate(void *ctx, uint64_t size)
{
    (void)ctx;
    (void)size;
    return -EROFS;
}

static int view_get_size(void *ctx, uint64_t *out)
{
    *out = ((struct view *)ctx)->b->len;
    return 0;
}

static void view_close(void *ctx)
{
    free(ctx);
}

static const struct qimg_io_ops view_ops = {
    .pread = view_pread,
    .pwrite = view_pwrite,
    .flush = view_flush,
    .discard = view_discard,
    .truncate = view_truncate,
    .get_size = view_get_size,
    .close = view_close,
};

int io_view_open(struct qimg_io *io, const struct bytes *b)
{
    struct view *v = malloc(sizeof *v);

    if (!v)
        return -ENOMEM;
    v->b = b;
    io->ops = &view_ops;
    io->ctx = v;
    return 0;
}
