/*
 * bitmap_bits.c - a persistent bitmap's bits in memory: read from its
 * table, set by guest writes, merged, cleared, resized.
 *
 * qcow2-format.md §9. Bit k covers guest bytes [k << g, (k + 1) << g);
 * it is bit k % 8 (least significant first) of byte k / 8, and the bits
 * are laid out over table_size clusters, one per table entry. Bits past
 * the end of the disk stay clear.
 */
#include "bitmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "endian.h"
#include "error.h"
#include "file.h"
#include "util.h"

static uint64_t nb_bits(unsigned gran_bits, uint64_t size)
{
    return DIV_ROUND_UP(size, 1ull << gran_bits);
}

uint64_t bitmap_table_size(const struct qcow2 *q, unsigned gran_bits,
                           uint64_t size)
{
    return DIV_ROUND_UP(DIV_ROUND_UP(nb_bits(gran_bits, size), 8),
                        q->cluster_size);
}

static void set_bits(uint8_t *d, uint64_t first, uint64_t last)
{
    while (first <= last && (first & 7)) {
        d[first / 8] |= (uint8_t)(1u << (first & 7));
        first++;
    }
    if (first + 8 <= last + 1) {
        uint64_t n = (last + 1 - first) / 8;
        memset(d + first / 8, 0xff, n);
        first += n * 8;
    }
    for (; first <= last; first++)
        d[first / 8] |= (uint8_t)(1u << (first & 7));
}

/* Clear every bit from `from` to the end of the buffer (len bytes). */
static void clear_from(uint8_t *d, uint64_t len, uint64_t from)
{
    if (from >= len * 8)
        return;
    if (from & 7) {
        d[from / 8] &= (uint8_t)((1u << (from & 7)) - 1);
        from = ALIGN_UP(from, 8);
    }
    if (from / 8 < len)
        memset(d + from / 8, 0, len - from / 8);
}

int bitmap_bits_load(qimg_image *img, struct bitmap_entry *b)
{
    const struct qcow2 *q = img->q;
    const uint64_t cs = q->cluster_size;
    uint8_t *t = NULL, *bits;
    int ret = 0;

    if (b->bits)
        return 0;
    bits = calloc(b->table_size ? b->table_size : 1, cs);
    if (!bits)
        return qimg_err(ENOMEM, "Out of memory");
    if (b->table_size)
        ret = file_read_table(img, &t, b->table_off,
                              (size_t)b->table_size * 8, "Bitmap table");
    for (uint32_t k = 0; ret == 0 && k < b->table_size; k++) {
        uint64_t e = be64_load(t + (size_t)k * 8), off = e & BTE_OFFSET_MASK;
        if ((e & BTE_RESERVED_MASK) || (off & (cs - 1)) ||
            (off && (e & BTE_ALL_ONES)) ||
            (off && (off > q->file_size || cs > q->file_size - off)))
            ret = qimg_err(EINVAL, "Bitmap '%s' has an invalid table entry "
                                   "%#" PRIx64,
                           b->name, e);
        else if (off)
            ret = file_pread(img, bits + k * cs, cs, off);
        else if (e & BTE_ALL_ONES)
            memset(bits + k * cs, 0xff, cs);
    }
    free(t);
    if (ret < 0) {
        free(bits);
        return ret;
    }
    clear_from(bits, b->table_size * cs, nb_bits(b->granularity_bits,
                                                 img->size));
    b->bits = bits;
    return 0;
}

void bitmap_bits_mark(struct bitmap_entry *b, uint64_t off, uint64_t len,
                      uint64_t size)
{
    uint64_t end = MIN(off + len, size);

    if (!b->bits || len == 0 || off >= end)
        return;
    set_bits(b->bits, off >> b->granularity_bits,
             (end - 1) >> b->granularity_bits);
}

void bitmap_bits_merge(struct bitmap_entry *dst,
                       const struct bitmap_entry *src, uint64_t size)
{
    const unsigned gs = src->granularity_bits;
    const uint64_t n = nb_bits(gs, size), bytes = DIV_ROUND_UP(n, 8);

    if (gs == dst->granularity_bits) {
        for (uint64_t i = 0; i < bytes; i++)
            dst->bits[i] |= src->bits[i];
        return;
    }
    for (uint64_t i = 0; i < bytes; i++) {
        if (!src->bits[i])
            continue;
        for (unsigned k = 0; k < 8 && i * 8 + k < n; k++)
            if (src->bits[i] & (1u << k))
                bitmap_bits_mark(dst, (i * 8 + k) << gs, 1ull << gs, size);
    }
}

void bitmap_bits_clear(const struct qcow2 *q, struct bitmap_entry *b)
{
    memset(b->bits, 0, (size_t)b->table_size * q->cluster_size);
}

int bitmap_bits_resize(const struct qcow2 *q, struct bitmap_entry *b,
                       uint64_t new_size)
{
    const uint64_t cs = q->cluster_size;
    uint64_t ts = bitmap_table_size(q, b->granularity_bits, new_size);
    uint8_t *bits = realloc(b->bits, (ts ? ts : 1) * cs);

    if (!bits)
        return qimg_err(ENOMEM, "Out of memory");
    if (ts > b->table_size)
        memset(bits + b->table_size * cs, 0, (ts - b->table_size) * cs);
    clear_from(bits, ts * cs, nb_bits(b->granularity_bits, new_size));
    b->bits = bits;
    b->table_size = (uint32_t)ts;
    b->rewrite = true;
    return 0;
}

bool bitmap_bits_cluster_zero(const struct qcow2 *q,
                              const struct bitmap_entry *b, uint64_t k)
{
    const uint8_t *d = b->bits + k * q->cluster_size;

    return d[0] == 0 && !memcmp(d, d + 1, q->cluster_size - 1);
}
