/*
 * io-mem.c - struct qimg_io_ops over a growable memory buffer.
 *
 * For unit tests and fuzzing: an image that never touches the disk.
 */
#include "io.h"

#include "error.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

struct mem_ctx {
    uint8_t *data;
    size_t len, cap;
};

static int mem_reserve(struct mem_ctx *m, uint64_t len)
{
    size_t cap;
    uint8_t *p;

    if (len > (uint64_t)1 << 40)
        return -EFBIG;
    if (len <= m->cap)
        return 0;
    cap = m->cap ? m->cap : 65536;
    while (cap < len)
        cap *= 2;
    p = realloc(m->data, cap);
    if (!p)
        return -ENOMEM;
    memset(p + m->cap, 0, cap - m->cap);
    m->data = p;
    m->cap = cap;
    return 0;
}

static int mem_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    struct mem_ctx *m = ctx;
    size_t n = 0;

    if (off < m->len) {
        n = MIN(len, m->len - off);
        memcpy(buf, m->data + off, n);
    }
    memset((uint8_t *)buf + n, 0, len - n);
    return 0;
}

static int mem_pwrite(void *ctx, const void *buf, size_t len, uint64_t off)
{
    struct mem_ctx *m = ctx;
    int ret;

    if (off + len < off)
        return -EFBIG;
    ret = mem_reserve(m, off + len);
    if (ret < 0)
        return ret;
    memcpy(m->data + off, buf, len);
    if (off + len > m->len)
        m->len = off + len;
    return 0;
}

static int mem_flush(void *ctx)
{
    (void)ctx;
    return 0;
}

static int mem_discard(void *ctx, uint64_t off, uint64_t len)
{
    struct mem_ctx *m = ctx;

    if (off >= m->len)
        return 0;
    memset(m->data + off, 0, MIN(len, m->len - off));
    return 0;
}

static int mem_truncate(void *ctx, uint64_t size)
{
    struct mem_ctx *m = ctx;
    int ret = mem_reserve(m, size);

    if (ret < 0)
        return ret;
    if (size < m->len)
        memset(m->data + size, 0, m->len - size);
    m->len = size;
    return 0;
}

static int mem_get_size(void *ctx, uint64_t *out)
{
    *out = ((struct mem_ctx *)ctx)->len;
    return 0;
}

static void mem_close(void *ctx)
{
    struct mem_ctx *m = ctx;

    free(m->data);
    free(m);
}

static const struct qimg_io_ops mem_ops = {
    .pread = mem_pread,
    .pwrite = mem_pwrite,
    .flush = mem_flush,
    .discard = mem_discard,
    .truncate = mem_truncate,
    .get_size = mem_get_size,
    .close = mem_close,
};

int io_mem_open(struct qimg_io *out, const void *data, size_t len)
{
    struct mem_ctx *m = calloc(1, sizeof *m);
    int ret;

    if (!m)
        return -ENOMEM;
    ret = mem_reserve(m, len);
    if (ret < 0) {
        free(m);
        return ret;
    }
    if (len)
        memcpy(m->data, data, len);
    m->len = len;
    out->ops = &mem_ops;
    out->ctx = m;
    return 0;
}

const uint8_t *io_mem_data(struct qimg_io *io, size_t *len)
{
    struct mem_ctx *m = io->ctx;

    *len = m->len;
    return m->data;
}
