/*
 * bitmap.c - persistent dirty bitmaps: kept and refcounted, not
 * interpreted.
 *
 * qcow2-format.md §9. Reads the bitmap directory for `info` and the overlap
 * check; before guest data is first written, marks every `auto` bitmap
 * in_use (option (b) of §9: unusable but never wrong), as QEMU itself does
 * for bitmaps it cannot keep up to date.
 */
#include "bitmap.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "endian.h"
#include "error.h"
#include "file.h"
#include "meta.h"
#include "util.h"

/* §9: the offset bits of a bitmap table entry */
#define BME_TABLE_OFFSET_MASK 0x00fffffffffffe00ull

/* §9 directory entry offsets */
enum {
    BME_TABLE_OFF = 0,
    BME_TABLE_SIZE = 8,
    BME_FLAGS = 12,
    BME_TYPE = 16,
    BME_GRAN = 17,
    BME_NAME_LEN = 18,
    BME_EXTRA_LEN = 20,
    BME_HDR_LEN = 24,
};

#define MAX_BITMAP_DIR (1024ull * 65535)

void bitmap_dir_free(struct bitmap_entry *b, size_t n)
{
    if (!b)
        return;
    for (size_t i = 0; i < n; i++)
        free(b[i].name);
    free(b);
}

static int parse_dir(const uint8_t *d, uint64_t size, uint32_t nb,
                     struct bitmap_entry *b)
{
    uint64_t pos = 0;

    for (uint32_t i = 0; i < nb; i++) {
        uint32_t name_len, extra_len;
        if (pos + BME_HDR_LEN > size)
            return qimg_err(EINVAL, "Bitmap directory is truncated");
        b[i].table_off = be64_load(d + pos + BME_TABLE_OFF);
        b[i].table_size = be32_load(d + pos + BME_TABLE_SIZE);
        b[i].flags = be32_load(d + pos + BME_FLAGS);
        b[i].type = d[pos + BME_TYPE];
        b[i].granularity_bits = d[pos + BME_GRAN];
        name_len = be16_load(d + pos + BME_NAME_LEN);
        extra_len = be32_load(d + pos + BME_EXTRA_LEN);
        if (pos + BME_HDR_LEN + (uint64_t)extra_len + name_len > size)
            return qimg_err(EINVAL, "Bitmap directory is truncated");
        b[i].name = malloc(name_len + 1);
        if (!b[i].name)
            return qimg_err(ENOMEM, "Out of memory");
        memcpy(b[i].name, d + pos + BME_HDR_LEN + extra_len, name_len);
        b[i].name[name_len] = '\0';
        b[i].dir_pos = pos;
        pos = ALIGN_UP(pos + BME_HDR_LEN + extra_len + name_len, 8);
    }
    return 0;
}

int bitmap_dir_load(qimg_image *img, struct bitmap_entry **out, size_t *n)
{
    const struct qcow2_header *h = &img->q->hdr;
    struct bitmap_entry *b = NULL;
    uint8_t *d = NULL;
    int ret;

    *out = NULL;
    *n = 0;
    if (!h->has_bitmaps_ext || !(h->autoclear & AUTOCLEAR_BITMAPS) ||
        h->nb_bitmaps == 0)
        return 0;
    if (h->bitmap_dir_size > MAX_BITMAP_DIR || h->nb_bitmaps > 65535)
        return qimg_err(EINVAL, "Bitmap directory is too large");
    ret = file_read_table(img, &d, h->bitmap_dir_offset,
                          (size_t)h->bitmap_dir_size, "Bitmap directory");
    if (ret < 0)
        return ret;
    b = calloc(h->nb_bitmaps, sizeof *b);
    if (!b) {
        free(d);
        return qimg_err(ENOMEM, "Out of memory");
    }
    ret = parse_dir(d, h->bitmap_dir_size, h->nb_bitmaps, b);
    free(d);
    if (ret < 0) {
        bitmap_dir_free(b, h->nb_bitmaps);
        return ret;
    }
    *out = b;
    *n = h->nb_bitmaps;
    return 0;
}

int bitmap_each_ref(qimg_image *img, uint64_t end, bitmap_ref_fn *fn,
                    void *ctx)
{
    const struct qcow2_header *h = &img->q->hdr;
    struct bitmap_entry *b = NULL;
    size_t n = 0;
    int ret;

    if (!h->has_bitmaps_ext || !(h->autoclear & AUTOCLEAR_BITMAPS))
        return 0;
    ret = fn(ctx, -1, -1, h->bitmap_dir_offset, h->bitmap_dir_size);
    if (ret == 0 && bitmap_dir_load(img, &b, &n) < 0) {
        qimg_error_clear();
        return 0;
    }
    for (size_t i = 0; i < n && ret == 0; i++) {
        uint64_t bytes = (uint64_t)b[i].table_size * 8;
        uint8_t *t;
        ret = fn(ctx, (int64_t)i, -1, b[i].table_off, bytes);
        if (ret != 0 || !bytes || b[i].table_off > end ||
            bytes > end - b[i].table_off)
            continue;
        t = malloc(bytes);
        if (!t) {
            ret = qimg_err(ENOMEM, "Out of memory");
            break;
        }
        ret = file_pread(img, t, bytes, b[i].table_off);
        for (uint32_t k = 0; k < b[i].table_size && ret == 0; k++) {
            uint64_t off = be64_load(t + k * 8) & BME_TABLE_OFFSET_MASK;
            if (off)
                ret = fn(ctx, (int64_t)i, k, off, img->q->cluster_size);
        }
        free(t);
    }
    bitmap_dir_free(b, n);
    return ret;
}

int bitmap_mark_in_use(qimg_image *img)
{
    const struct qcow2_header *h = &img->q->hdr;
    struct bitmap_entry *b;
    size_t n;
    bool wrote = false;
    int ret;

    if (img->q->bitmaps_marked || !h->has_bitmaps_ext)
        return 0;
    ret = bitmap_dir_load(img, &b, &n);
    if (ret < 0)
        return ret;
    /* Every flag's place is checked before the first is written. */
    for (size_t i = 0; i < n && ret == 0; i++)
        if ((b[i].flags & BME_FLAG_AUTO) && !(b[i].flags & BME_FLAG_IN_USE))
            ret = meta_check_write(img, META_BIT(META_BITMAP_DIR),
                                   h->bitmap_dir_offset + b[i].dir_pos +
                                       BME_FLAGS,
                                   4);
    for (size_t i = 0; i < n && ret == 0; i++) {
        uint8_t f[4];
        if (!(b[i].flags & BME_FLAG_AUTO) || (b[i].flags & BME_FLAG_IN_USE))
            continue;
        /* One 4-byte write inside a sector: atomic on a power cut. */
        be32_store(f, b[i].flags | BME_FLAG_IN_USE);
        ret = file_pwrite(img, f, 4,
                           h->bitmap_dir_offset + b[i].dir_pos + BME_FLAGS);
        wrote = true;
    }
    /* The flags are durable before any guest data changes. */
    if (ret == 0 && wrote)
        ret = file_flush(img);
    bitmap_dir_free(b, n);
    if (ret == 0)
        img->q->bitmaps_marked = true;
    return ret;
}

int bitmap_check_resize(qimg_image *img, uint64_t size)
{
    struct bitmap_entry *b;
    size_t n;
    int ret = bitmap_dir_load(img, &b, &n);

    for (size_t i = 0; ret == 0 && i < n; i++) {
        uint64_t cs = img->q->cluster_size, bits, clusters;
        if (b[i].flags & BME_FLAG_IN_USE) {
            ret = qimg_err(EINVAL, "Bitmap '%s' is inconsistent and cannot "
                                   "be used", b[i].name);
            break;
        }
        if (b[i].granularity_bits > 63)
            continue; /* not read: QEMU refuses such a bitmap on open */
        bits = DIV_ROUND_UP(size, 1ull << b[i].granularity_bits);
        clusters = DIV_ROUND_UP(DIV_ROUND_UP(bits, 8), cs);
        if (clusters > b[i].table_size)
            ret = qimg_err(ENOTSUP, "Bitmap '%s' would need a larger table "
                                    "for this size; qimg cannot grow "
                                    "bitmap tables yet", b[i].name);
    }
    bitmap_dir_free(b, n);
    return ret;
}
