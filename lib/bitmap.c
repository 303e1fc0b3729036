/*
 * bitmap.c - persistent dirty bitmaps: the directory, the set of entries
 * in memory, and keeping enabled bitmaps up to date across guest writes.
 *
 * qcow2-format.md §9. Before guest data is first written, every enabled
 * (`auto`) bitmap is loaded and marked in_use on disk, as QEMU does on a
 * read-write open; writes set its bits in memory; the close stores it
 * with in_use clear, in one atomic switch (txn_bitmaps.c). A power cut
 * in between leaves it in_use: unusable, never wrong. A bitmap whose
 * table cannot be read is only marked.
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
    for (size_t i = 0; i < n; i++) {
        free(b[i].name);
        free(b[i].extra);
        free(b[i].bits);
    }
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
        b[i].extra = malloc(extra_len ? extra_len : 1);
        if (!b[i].name || !b[i].extra)
            return qimg_err(ENOMEM, "Out of memory");
        memcpy(b[i].extra, d + pos + BME_HDR_LEN, extra_len);
        b[i].extra_len = extra_len;
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
    if (ret == 0)
        ret = bitmap_dir_load(img, &b, &n);
    if (ret == -EINVAL) { /* a bad directory: visited, not followed */
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
            uint64_t off = be64_load(t + k * 8) & BTE_OFFSET_MASK;
            if (off)
                ret = fn(ctx, (int64_t)i, k, off, img->q->cluster_size);
        }
        free(t);
    }
    bitmap_dir_free(b, n);
    return ret;
}

/* QEMU's checks of an entry before it loads the bitmap. */
static int check_entry(const struct qcow2 *q, const struct bitmap_entry *b,
                       uint64_t size)
{
    if (b->type != 1 || b->granularity_bits < BME_MIN_GRAN_BITS ||
        b->granularity_bits > BME_MAX_GRAN_BITS || !b->name[0] ||
        (b->flags & ~(BME_FLAG_IN_USE | BME_FLAG_AUTO |
                      BME_FLAG_EXTRA_COMPAT)) ||
        !b->table_off || (b->table_off & (q->cluster_size - 1)) ||
        b->table_size != bitmap_table_size(q, b->granularity_bits, size) ||
        (b->extra_len && !(b->flags & BME_FLAG_EXTRA_COMPAT)))
        return qimg_err(EINVAL, "Bitmap '%s' doesn't satisfy the "
                                "constraints", b->name);
    if (b->table_off > q->file_size ||
        (uint64_t)b->table_size * 8 > q->file_size - b->table_off)
        return qimg_err(EINVAL, "Bitmap '%s': its table lies past the end "
                                "of the file", b->name);
    return 0;
}

int bitmap_set_load(qimg_image *img, struct bitmap_set *s)
{
    int ret = bitmap_dir_load(img, &s->b, &s->n);

    for (size_t i = 0; ret == 0 && i < s->n; i++)
        ret = check_entry(img->q, &s->b[i], img->size);
    for (size_t i = 0; ret == 0 && i < s->n; i++)
        for (size_t j = 0; ret == 0 && j < i; j++)
            if (!strcmp(s->b[i].name, s->b[j].name))
                ret = qimg_err(EINVAL, "Bitmap '%s' is listed twice",
                               s->b[i].name);
    if (ret < 0)
        bitmap_set_free(s);
    return ret;
}

void bitmap_set_free(struct bitmap_set *s)
{
    bitmap_dir_free(s->b, s->n);
    s->b = NULL;
    s->n = 0;
}

int bitmap_set_find(const struct bitmap_set *s, const char *name)
{
    for (size_t i = 0; i < s->n; i++)
        if (!strcmp(s->b[i].name, name))
            return (int)i;
    return -1;
}

int bitmap_set_add(qimg_image *img, struct bitmap_set *s, const char *name,
                   unsigned gran_bits, uint32_t flags)
{
    struct bitmap_entry *nb = realloc(s->b, (s->n + 1) * sizeof *nb), *b;
    uint64_t ts = bitmap_table_size(img->q, gran_bits, img->size);

    if (!nb)
        return qimg_err(ENOMEM, "Out of memory");
    s->b = nb;
    b = &nb[s->n];
    memset(b, 0, sizeof *b);
    b->type = 1;
    b->granularity_bits = (uint8_t)gran_bits;
    b->flags = flags;
    b->table_size = (uint32_t)ts;
    b->name = strdup(name);
    b->bits = calloc(ts ? ts : 1, img->q->cluster_size);
    b->rewrite = true;
    if (!b->name || !b->bits) {
        free(b->name);
        free(b->bits);
        return qimg_err(ENOMEM, "Out of memory");
    }
    s->n++;
    return 0;
}

void bitmap_set_remove(struct bitmap_set *s, size_t i)
{
    struct bitmap_entry *b = &s->b[i];

    free(b->name);
    free(b->extra);
    free(b->bits);
    memmove(b, b + 1, (s->n - i - 1) * sizeof *b);
    s->n--;
}

static uint64_t entry_len(const struct bitmap_entry *b)
{
    return ALIGN_UP(BME_HDR_LEN + (uint64_t)b->extra_len + strlen(b->name),
                    8);
}

int bitmap_dir_encode(const struct bitmap_set *s, uint8_t **out,
                      uint64_t *len)
{
    uint64_t n = 0, pos = 0;
    uint8_t *d;

    for (size_t i = 0; i < s->n; i++)
        n += entry_len(&s->b[i]);
    if (n > MAX_BITMAP_DIR)
        return qimg_err(EFBIG, "Bitmap directory is too large");
    d = calloc(n ? n : 1, 1);
    if (!d)
        return qimg_err(ENOMEM, "Out of memory");
    for (size_t i = 0; i < s->n; i++) {
        const struct bitmap_entry *b = &s->b[i];
        size_t name_len = strlen(b->name);
        be64_store(d + pos + BME_TABLE_OFF, b->table_off);
        be32_store(d + pos + BME_TABLE_SIZE, b->table_size);
        be32_store(d + pos + BME_FLAGS, b->flags);
        d[pos + BME_TYPE] = b->type;
        d[pos + BME_GRAN] = b->granularity_bits;
        be16_store(d + pos + BME_NAME_LEN, (uint16_t)name_len);
        be32_store(d + pos + BME_EXTRA_LEN, b->extra_len);
        if (b->extra_len)
            memcpy(d + pos + BME_HDR_LEN, b->extra, b->extra_len);
        memcpy(d + pos + BME_HDR_LEN + b->extra_len, b->name, name_len);
        pos += entry_len(b);
    }
    *out = d;
    *len = n;
    return 0;
}

/* ---- Keeping enabled bitmaps up to date -------------------------------- */

/* The entries to keep up to date: auto and not in use, their bits
 * loadable. The others QEMU could not keep either: in use already, or
 * marked so here (unusable, never wrong). */
static bool trackable(const struct bitmap_entry *b)
{
    return (b->flags & BME_FLAG_AUTO) && !(b->flags & BME_FLAG_IN_USE);
}

int bitmap_track_begin(qimg_image *img)
{
    const struct qcow2_header *h = &img->q->hdr;
    struct bitmap_set *s;
    uint64_t dir = h->bitmap_dir_offset;
    bool wrote = false;
    int ret;

    if (img->q->bitmaps_marked || img->q->bitmaps_held ||
        !h->has_bitmaps_ext ||
        !(h->autoclear & AUTOCLEAR_BITMAPS))
        return 0;
    s = calloc(1, sizeof *s);
    if (!s)
        return qimg_err(ENOMEM, "Out of memory");
    ret = bitmap_dir_load(img, &s->b, &s->n);
    for (size_t i = 0; ret == 0 && i < s->n; i++) {
        struct bitmap_entry *b = &s->b[i];
        if (!trackable(b))
            continue;
        /* A bitmap that cannot be kept is only marked; one that could
         * not be read for another reason (I/O) fails the write. */
        ret = check_entry(img->q, b, img->size);
        if (ret == 0)
            ret = bitmap_bits_load(img, b);
        b->rewrite = ret == 0;
        if (ret == -EINVAL) {
            qimg_error_clear();
            ret = 0;
        }
        /* Every flag's place is checked before the first is written. */
        if (ret == 0)
            ret = meta_check_write(img, META_BIT(META_BITMAP_DIR),
                                   dir + b->dir_pos + BME_FLAGS, 4);
    }
    for (size_t i = 0; ret == 0 && i < s->n; i++) {
        struct bitmap_entry *b = &s->b[i];
        uint8_t f[4];
        if (!trackable(b))
            continue;
        /* One 4-byte write inside a sector: atomic on a power cut. */
        be32_store(f, b->flags | BME_FLAG_IN_USE);
        ret = file_pwrite(img, f, 4, dir + b->dir_pos + BME_FLAGS);
        if (!b->rewrite)
            b->flags |= BME_FLAG_IN_USE;
        wrote = true;
    }
    /* The flags are durable before any guest data changes. */
    if (ret == 0 && wrote)
        ret = file_flush(img);
    if (ret == 0) {
        img->q->bitmaps_marked = true;
        img->q->tracked = s;
        for (size_t i = 0; i < s->n; i++)
            if (s->b[i].rewrite)
                return 0;
        img->q->tracked = NULL; /* nothing to store at the close */
    }
    bitmap_set_free(s);
    free(s);
    return ret;
}

void bitmap_track_hold(qimg_image *img, bool hold)
{
    img->q->bitmaps_held = hold;
}

void bitmap_track(qimg_image *img, uint64_t off, uint64_t len)
{
    struct bitmap_set *s = img->q->bitmaps_held ? NULL : img->q->tracked;

    for (size_t i = 0; s && i < s->n; i++)
        if (s->b[i].rewrite)
            bitmap_bits_mark(&s->b[i], off, len, img->size);
}

struct bitmap_set *bitmap_track_take(qimg_image *img)
{
    struct bitmap_set *s = img->q->tracked;

    img->q->tracked = NULL;
    img->q->bitmaps_marked = false; /* later writes begin again */
    return s;
}

void bitmap_track_free(qimg_image *img)
{
    struct bitmap_set *s = bitmap_track_take(img);

    if (s)
        bitmap_set_free(s);
    free(s);
}

int bitmap_check_resize(qimg_image *img)
{
    struct bitmap_entry *b;
    size_t n;
    int ret = bitmap_dir_load(img, &b, &n);

    for (size_t i = 0; ret == 0 && i < n; i++)
        if (b[i].flags & BME_FLAG_IN_USE)
            ret = qimg_err(EINVAL, "Bitmap '%s' is inconsistent and cannot "
                                   "be used", b[i].name);
    bitmap_dir_free(b, n);
    return ret;
}
