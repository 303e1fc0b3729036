/*
 * bitmapapi.c - the public bitmap API: qemu-img bitmap's actions.
 *
 * qcow2-format.md §9. The actions are applied in order to the directory
 * in memory, each checked as QEMU checks it (its messages); then one
 * transaction (txn.h) writes what changed beside the old and switches the
 * header. qemu-img stores after each action that succeeds, so a failing
 * one leaves the earlier ones done; here a failure writes nothing.
 */
#include "qimg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "error.h"
#include "image.h"
#include "qcow2.h"
#include "roots.h"
#include "txn.h"
#include "util.h"

/* QEMU names the node it cannot store to by a generated name. */
#define NODE_NAME "#block101"

static int not_found(const char *name)
{
    return qimg_err(ENOENT, "Dirty bitmap '%s' not found", name);
}

static int inconsistent(const struct bitmap_entry *b)
{
    return qimg_err(EBUSY, "Bitmap '%s' is inconsistent and cannot be used",
                    b->name);
}

/* The bitmap the action names, usable (not in use) unless `any`. */
static int lookup(const struct bitmap_set *s, const char *name, bool any,
                  struct bitmap_entry **out)
{
    int i = bitmap_set_find(s, name);

    if (i < 0)
        return not_found(name);
    *out = &s->b[i];
    if (!any && ((*out)->flags & BME_FLAG_IN_USE))
        return inconsistent(*out);
    return 0;
}

/* QEMU's default: the cluster size, within 4 KiB .. 64 KiB. */
static uint32_t default_granularity(const qimg_image *img)
{
    return (uint32_t)MIN(MAX(img->q->cluster_size, 4096), 65536);
}

static int add(qimg_image *img, struct bitmap_set *s,
               const struct qimg_bitmap_action *a)
{
    uint32_t g = a->granularity;

    if (!a->name[0])
        return qimg_err(EINVAL, "Bitmap name cannot be empty");
    if (!g)
        g = img->q ? default_granularity(img) : 65536;
    if (g < 512 || (g & (g - 1)))
        return qimg_err(EINVAL, "Granularity must be power of 2 and at "
                                "least 512");
    if (!img->q)
        return qimg_err(ENOTSUP, "Can't store persistent bitmaps to %s: "
                                 "Operation not supported",
                        NODE_NAME);
    /* (QEMU adds it, then cannot store a table of no entries.) */
    if (img->size == 0)
        return qimg_err(EINVAL, "Can't make bitmap '%s' persistent in '%s': "
                                "The disk is empty",
                        a->name, NODE_NAME);
    if (img->q->hdr.version < 3)
        return qimg_err(ENOTSUP, "Can't make bitmap '%s' persistent in '%s': "
                                 "Cannot store dirty bitmaps in qcow2 v2 "
                                 "files",
                        a->name, NODE_NAME);
    if (strlen(a->name) > BME_MAX_NAME)
        return qimg_err(EINVAL, "Can't make bitmap '%s' persistent in '%s': "
                                "Name length exceeds maximum (%u characters)",
                        a->name, NODE_NAME, BME_MAX_NAME);
    if (s->n >= BME_MAX_BITMAPS)
        return qimg_err(EFBIG, "Can't make bitmap '%s' persistent in '%s': "
                               "Maximum number of persistent bitmaps is "
                               "already reached",
                        a->name, NODE_NAME);
    if (bitmap_set_find(s, a->name) >= 0)
        return qimg_err(EEXIST, "Bitmap already exists: %s", a->name);
    return bitmap_set_add(img, s, a->name, (unsigned)__builtin_ctz(g),
                          BME_FLAG_AUTO);
}

/* The source of a merge, loaded: in s, or in another image (src, its set
 * loaded into *other). */
static int merge(qimg_image *img, struct bitmap_set *s,
                 const struct qimg_bitmap_action *a, qimg_image *src,
                 struct bitmap_set *other)
{
    struct bitmap_entry *dst = NULL, *from = NULL;
    int ret;

    if (src && src->q && !other->b && src->q->hdr.version >= 3) {
        ret = bitmap_set_load(src, other);
        if (ret < 0)
            return ret;
    }
    ret = lookup(s, a->name, true, &dst);
    if (ret == 0)
        ret = lookup(src ? other : s, a->source, true, &from);
    if (ret == 0 && (dst->flags & BME_FLAG_IN_USE))
        ret = inconsistent(dst);
    if (ret == 0 && (from->flags & BME_FLAG_IN_USE))
        ret = inconsistent(from);
    if (ret == 0 && src && src->size != img->size)
        ret = qimg_err(EINVAL, "Bitmaps are of different sizes (destination "
                               "size is %" PRIu64 ", source size is %" PRIu64
                               ") and can't be merged",
                       img->size, src->size);
    if (ret == 0)
        ret = bitmap_bits_load(img, dst);
    if (ret == 0)
        ret = bitmap_bits_load(src ? src : img, from);
    if (ret < 0)
        return ret;
    bitmap_bits_merge(dst, from, img->size);
    dst->rewrite = true;
    return 0;
}

static int act(qimg_image *img, struct bitmap_set *s,
               const struct qimg_bitmap_action *a, struct bitmap_set *other)
{
    struct bitmap_entry *b = NULL;
    int ret;

    switch (a->op) {
    case QIMG_BITMAP_ADD:
        return add(img, s, a);
    case QIMG_BITMAP_REMOVE:
        ret = lookup(s, a->name, true, &b);
        if (ret == 0)
            bitmap_set_remove(s, (size_t)(b - s->b));
        return ret;
    case QIMG_BITMAP_CLEAR:
        ret = lookup(s, a->name, false, &b);
        if (ret == 0)
            ret = bitmap_bits_load(img, b);
        if (ret == 0) {
            bitmap_bits_clear(img->q, b);
            b->rewrite = true;
        }
        return ret;
    case QIMG_BITMAP_ENABLE:
    case QIMG_BITMAP_DISABLE:
        ret = lookup(s, a->name, false, &b);
        if (ret == 0 && a->op == QIMG_BITMAP_ENABLE)
            b->flags |= BME_FLAG_AUTO;
        else if (ret == 0)
            b->flags &= ~BME_FLAG_AUTO;
        return ret;
    case QIMG_BITMAP_MERGE:
        return merge(img, s, a, a->source_image, other);
    }
    return qimg_err(EINVAL, "Unknown bitmap operation");
}

int qimg_bitmap_change(qimg_image *img, const struct qimg_bitmap_action *a,
                       size_t n, size_t *failed)
{
    struct bitmap_set s = {0}, other = {0};
    qimg_image *other_img = NULL;
    size_t i = 0;
    int ret = 0;

    if (failed)
        *failed = 0;
    if (img->is_view || !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (img->q && (img->q->hdr.incompatible &
                   (INCOMPAT_CORRUPT | INCOMPAT_DIRTY)))
        return qimg_err(EIO, "Image is corrupt or dirty; repair it first");
    /* What guest writes of this session set is stored first. A raw image
     * has no bitmaps (every action fails). */
    if (img->q)
        ret = qcow2_store_bitmaps(img);
    if (ret == 0 && img->q)
        ret = bitmap_set_load(img, &s);
    for (; ret == 0 && i < n; i++) {
        /* One other image's set at a time (qemu-img has one -b). */
        if (a[i].source_image != other_img) {
            bitmap_set_free(&other);
            other_img = a[i].source_image;
        }
        ret = act(img, &s, &a[i], &other);
        if (ret < 0 && failed)
            *failed = i;
    }
    bitmap_set_free(&other);
    if (ret == 0 && img->q)
        ret = roots_write_failed(img, txn_bitmaps_store(img, &s));
    bitmap_set_free(&s);
    return ret;
}
