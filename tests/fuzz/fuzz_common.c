/*
 * fuzz_common.c - the helpers of fuzz.h: an in-memory image capped in
 * size, bounded reads and block-status walks, check verdicts.
 *
 * The capped backend forwards to io-mem and refuses to grow the file past
 * FUZZ_MAX_FILE, so a header pointing the allocator far out costs an error,
 * not gigabytes. It counts the calls it failed (the cap, or io-mem out of
 * memory), so a target can tell an I/O failure from a refusal. It does not
 * check what the library does with the bytes: the targets do.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Capped in-memory backend ------------------------------------------ */

struct cap_ctx {
    struct qimg_io mem;
    uint64_t failures; /* calls that returned an error */
};

static int cap_count(struct cap_ctx *c, int ret)
{
    if (ret < 0)
        c->failures++;
    return ret;
}

static bool cap_exceeded(uint64_t off, uint64_t len)
{
    return off > FUZZ_MAX_FILE || len > FUZZ_MAX_FILE - off;
}

/* Only the part of a read within the file reaches io-mem, which forms
 * data + off for any offset (undefined behaviour past the end, and for an
 * empty file; in lib-requests.md). The rest reads as zeros, as io.h says. */
static int cap_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    struct cap_ctx *c = ctx;
    uint64_t size;
    size_t n = 0;
    int ret = c->mem.ops->get_size(c->mem.ctx, &size);

    if (ret < 0)
        return cap_count(c, ret);
    if (off < size)
        n = (size_t)MIN(len, size - off);
    memset((uint8_t *)buf + n, 0, len - n);
    return n ? cap_count(c, c->mem.ops->pread(c->mem.ctx, buf, n, off)) : 0;
}

static int cap_pwrite(void *ctx, const void *buf, size_t len, uint64_t off)
{
    struct cap_ctx *c = ctx;

    if (cap_exceeded(off, len))
        return cap_count(c, -EFBIG);
    return cap_count(c, c->mem.ops->pwrite(c->mem.ctx, buf, len, off));
}

static int cap_flush(void *ctx)
{
    struct cap_ctx *c = ctx;

    return cap_count(c, c->mem.ops->flush(c->mem.ctx));
}

static int cap_discard(void *ctx, uint64_t off, uint64_t len)
{
    struct cap_ctx *c = ctx;

    return cap_count(c, c->mem.ops->discard(c->mem.ctx, off, len));
}

static int cap_truncate(void *ctx, uint64_t size)
{
    struct cap_ctx *c = ctx;

    if (cap_exceeded(size, 0))
        return cap_count(c, -EFBIG);
    return cap_count(c, c->mem.ops->truncate(c->mem.ctx, size));
}

static int cap_get_size(void *ctx, uint64_t *out)
{
    struct cap_ctx *c = ctx;

    return cap_count(c, c->mem.ops->get_size(c->mem.ctx, out));
}

static void cap_close(void *ctx)
{
    struct cap_ctx *c = ctx;

    c->mem.ops->close(c->mem.ctx);
    free(c);
}

static const struct qimg_io_ops cap_ops = {
    .pread = cap_pread,
    .pwrite = cap_pwrite,
    .flush = cap_flush,
    .discard = cap_discard,
    .truncate = cap_truncate,
    .get_size = cap_get_size,
    .close = cap_close,
};

static int cap_open(struct qimg_io *out, const uint8_t *data, size_t len)
{
    struct cap_ctx *c = calloc(1, sizeof *c);
    int ret;

    if (!c)
        return -ENOMEM;
    ret = io_mem_open(&c->mem, data, len);
    if (ret < 0) {
        free(c);
        return ret;
    }
    out->ops = &cap_ops;
    out->ctx = c;
    return 0;
}

int fuzz_open(qimg_image **out, const uint8_t *data, size_t len,
              const struct qimg_open_opts *o)
{
    struct qimg_open_opts fo = *o;
    struct qimg_io io;
    int ret;

    *out = NULL;
    if (len > FUZZ_MAX_FILE)
        return -EFBIG;
    ret = cap_open(&io, data, len);
    if (ret < 0)
        return ret;
    fo.fmt = QIMG_FMT_QCOW2;
    fo.no_backing = true;
    fo.no_locking = true;
    return image_open_io(out, &io, "fuzz.qcow2", &fo, 0);
}

const uint8_t *fuzz_file_data(qimg_image *img, size_t *len)
{
    struct cap_ctx *c = img->io.ctx;

    return io_mem_data(&c->mem, len);
}

uint64_t fuzz_io_failures(qimg_image *img)
{
    return ((struct cap_ctx *)img->io.ctx)->failures;
}

/* ---- Bounded guest reads and walks --------------------------------------- */

#define READ_CHUNK (64u << 10)

int fuzz_read_disk(qimg_image *img, uint64_t *budget)
{
    static uint8_t buf[READ_CHUNK];
    uint64_t size = qimg_image_size(img);
    uint64_t nb_chunks = *budget / READ_CHUNK, stride = READ_CHUNK, off;
    int ret, first;

    if (size == 0 || nb_chunks == 0)
        return 0;
    /* First a request aligned to nothing: partial sectors and clusters. */
    off = size > 1300 ? 300 : 0;
    first = qimg_image_read(img, buf, (size_t)MIN(size - off, 1000u), off);
    if (DIV_ROUND_UP(size, READ_CHUNK) > nb_chunks)
        stride = MAX(ALIGN_UP(size / nb_chunks, 512), READ_CHUNK);
    for (off = 0; off < size && *budget > 0; off += stride) {
        size_t n = (size_t)MIN(MIN(READ_CHUNK, size - off), *budget);
        ret = qimg_image_read(img, buf, n, off);
        if (ret < 0 && first == 0)
            first = ret;
        *budget -= n;
        if (off > UINT64_MAX - stride)
            break;
    }
    return first;
}

int fuzz_map_disk(qimg_image *img, uint64_t limit)
{
    uint64_t size = MIN(qimg_image_size(img), limit);
    uint64_t off = 0;
    struct qimg_extent e;

    for (int i = 0; i < FUZZ_MAP_STEPS && off < size; i++) {
        int ret = qimg_image_map(img, off, size - off, &e);
        if (ret < 0)
            return ret;
        if (e.len == 0 || e.len > size - off)
            fuzz_fail("map at %" PRIu64 " answered %" PRIu64
                      " bytes of %" PRIu64,
                      off, e.len, size - off);
        off += e.len;
    }
    return 0;
}

/* ---- Verdicts ------------------------------------------------------------ */

bool fuzz_check_clean(const struct qimg_check_result *r)
{
    return r && !r->corruptions && !r->leaks && !r->check_errors;
}

int fuzz_check_bytes(const uint8_t *data, size_t len,
                     struct qimg_check_result **out)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_check_result *r = NULL;
    qimg_image *img = NULL;
    int ret;

    *out = NULL;
    o.for_check = true;
    ret = fuzz_open(&img, data, len, &o);
    if (ret == 0)
        ret = qimg_image_check(&r, img, 0);
    if (ret == 0)
        *out = r;
    else
        qimg_check_result_free(r);
    if (img)
        qimg_image_close(img);
    return ret;
}

bool fuzz_image_clean(const uint8_t *data, size_t len, bool *intact)
{
    struct qimg_check_result *r;
    bool clean = false;

    *intact = false;
    if (fuzz_check_bytes(data, len, &r) == 0) {
        *intact = !r->corruptions && !r->check_errors;
        clean = fuzz_check_clean(r);
    }
    qimg_check_result_free(r);
    return clean;
}

void fuzz_require_clean(const uint8_t *data, size_t len, const char *when)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_check_result *r = NULL;
    qimg_image *img = NULL;
    int ret;

    o.for_check = true;
    ret = fuzz_open(&img, data, len, &o);
    if (ret == 0)
        ret = qimg_image_check(&r, img, 0);
    if (ret < 0 || !fuzz_check_clean(r))
        fuzz_fail("%s, check returns %d with %" PRId64 " corruptions, %" PRId64
                  " leaks, %" PRId64 " errors; first finding: %s",
                  when, ret, r ? r->corruptions : 0, r ? r->leaks : 0,
                  r ? r->check_errors : 0,
                  r && r->nb_msgs ? r->msgs[0].text : "none");
    qimg_check_result_free(r);
    qimg_image_close(img);
}

uint64_t fuzz_hash(const uint8_t *data, size_t len)
{
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a */

    for (size_t i = 0; i < len; i++)
        h = (h ^ data[i]) * 0x100000001b3ull;
    return h;
}

void fuzz_fail(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "fuzz: invariant failed: ");
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (last error: %s)\n", qimg_last_error()->message);
    abort();
}

uint8_t *fuzz_sample(qimg_image *img, size_t n)
{
    uint64_t size = qimg_image_size(img);
    uint8_t *buf = calloc(1, n);

    if (size > n)
        size = n;
    if (buf && qimg_image_read(img, buf, (size_t)size, 0) < 0) {
        free(buf);
        return NULL;
    }
    return buf;
}

bool fuzz_same_but_corrupt_bit(const uint8_t *a, size_t alen,
                               const uint8_t *b, size_t blen)
{
    if (alen != blen)
        return false;
    for (size_t i = 0; i < alen; i++)
        if (a[i] != b[i] && !(i == 79 && (a[i] ^ b[i]) == 2 && (b[i] & 2)))
            return false;
    return true;
}
