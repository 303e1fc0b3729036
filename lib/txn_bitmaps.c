/*
 * txn_bitmaps.c - a new set of persistent bitmaps, as part of a
 * transaction: the old directory, and the tables and data of the bitmaps
 * that change or go, are released; the new ones are written beside them;
 * the commit switches the bitmaps extension in the same write of header
 * sector 0 as every other root.
 *
 * qcow2-format.md §9 (layout), §13 item 10 (a new directory, never the old
 * one rewritten). A bitmap whose bits did not change keeps its table and
 * data where they are; one that changed gets a new table, and a data
 * cluster for each cluster of bits that is not all zeros (an all-zero
 * cluster is table entry 0, as QEMU stores it).
 */
#include "txn_impl.h"

#include <errno.h>
#include <stdlib.h>

#include "bitmap.h"

static bool kept(const struct bitmap_set *s, uint64_t table_off)
{
    for (size_t i = 0; i < s->n; i++)
        if (!s->b[i].rewrite && s->b[i].table_off == table_off)
            return true;
    return false;
}

static int release(struct txn *t, uint64_t off, uint64_t len)
{
    int ret = len ? txn_refs_add_range(t, off, len, -1) : 0;

    return ret < 0 || !len ? ret : txn_space_meta_freed(t, off, len);
}

/* An old bitmap's data clusters and its table; every entry checked
 * before the first is released. */
static int release_bitmap(struct txn *t, const struct bitmap_entry *b)
{
    const uint64_t cs = t->cs, bytes = (uint64_t)b->table_size * 8;
    uint8_t *table = NULL;
    int ret = bytes ? file_read_table(t->img, &table, b->table_off,
                                      (size_t)bytes, "Bitmap table")
                    : 0;

    for (uint32_t k = 0; ret == 0 && k < b->table_size; k++) {
        uint64_t e = be64_load(table + (size_t)k * 8);
        uint64_t off = e & BTE_OFFSET_MASK;
        if ((e & BTE_RESERVED_MASK) || (off & (cs - 1)) ||
            off >= t->q->file_size)
            ret = qimg_err(EINVAL, "Bitmap '%s' has an invalid table entry "
                                   "%#" PRIx64,
                           b->name, e);
    }
    for (uint32_t k = 0; ret == 0 && k < b->table_size; k++) {
        uint64_t off = be64_load(table + (size_t)k * 8) & BTE_OFFSET_MASK;
        if (off)
            ret = release(t, off, cs);
    }
    free(table);
    return ret < 0 ? ret : release(t, b->table_off, bytes);
}

/* The old directory, and every old bitmap s does not keep as it is. */
static int release_old(struct txn *t, const struct bitmap_set *s)
{
    const struct qcow2_header *h = &t->q->hdr;
    struct bitmap_entry *old = NULL;
    size_t n = 0;
    int ret;

    if (!h->has_bitmaps_ext || !(h->autoclear & AUTOCLEAR_BITMAPS))
        return 0; /* untrusted: QEMU drops them, their clusters leak */
    ret = bitmap_dir_load(t->img, &old, &n);
    if (ret == 0)
        ret = release(t, h->bitmap_dir_offset, h->bitmap_dir_size);
    for (size_t i = 0; ret == 0 && i < n; i++)
        if (!kept(s, old[i].table_off))
            ret = release_bitmap(t, &old[i]);
    bitmap_dir_free(old, n);
    return ret;
}

uint64_t txn_bitmaps_room(const struct txn *t, const struct bitmap_set *s)
{
    uint64_t n = 1, dir = 0;

    for (size_t i = 0; i < s->n; i++) {
        dir += 32 + s->b[i].extra_len + strlen(s->b[i].name);
        if (s->b[i].rewrite)
            n += s->b[i].table_size +
                 DIV_ROUND_UP((uint64_t)s->b[i].table_size * 8, t->cs);
    }
    return n + DIV_ROUND_UP(dir, t->cs);
}

static int write_new(struct txn *t, const void *buf, uint64_t len,
                     uint64_t *off)
{
    int ret = txn_space_alloc(t, DIV_ROUND_UP(len, t->cs), off);

    return ret < 0 ? ret : txn_wbuf_write(t, buf, len, *off);
}

/* b's data clusters and its table. */
static int write_bitmap(struct txn *t, struct bitmap_entry *b)
{
    uint8_t *table = calloc(b->table_size ? b->table_size : 1, 8);
    uint64_t off;
    int ret = table ? 0 : qimg_err(ENOMEM, "Out of memory");

    for (uint32_t k = 0; ret == 0 && k < b->table_size; k++) {
        if (bitmap_bits_cluster_zero(t->q, b, k))
            continue;
        ret = write_new(t, b->bits + (uint64_t)k * t->cs, t->cs, &off);
        be64_store(table + (size_t)k * 8, off);
    }
    if (ret == 0)
        ret = write_new(t, table, (uint64_t)b->table_size * 8,
                        &b->table_off);
    free(table);
    return ret;
}

int txn_bitmaps_stage(struct txn *t, struct bitmap_set *s,
                      struct roots_bitmaps *out)
{
    uint8_t *dir = NULL;
    int ret;

    if (s->n > BME_MAX_BITMAPS)
        return qimg_err(EFBIG, "Too many bitmaps");
    /* The header is rewritten (its extensions move): nothing else may
     * live in its cluster. */
    if (meta_kinds(t->img, 0) & ~META_BIT(META_HEADER))
        return roots_signal_corruption(
            t->img, "Metadata lies in the header cluster; the bitmaps "
                    "extension cannot be rewritten");
    ret = release_old(t, s);
    for (size_t i = 0; ret == 0 && i < s->n; i++)
        if (s->b[i].rewrite)
            ret = write_bitmap(t, &s->b[i]);
    *out = (struct roots_bitmaps){(uint32_t)s->n, 0, 0};
    if (ret == 0 && s->n)
        ret = bitmap_dir_encode(s, &dir, &out->dir_size);
    if (ret == 0 && s->n)
        ret = write_new(t, dir, out->dir_size, &out->dir_off);
    free(dir);
    return ret;
}
