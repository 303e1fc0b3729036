/*
 * info.c - qimg_image_info(): what `qemu-img info` reports about an image.
 *
 * Reads only what the open image already decoded, plus the bitmap
 * directory and the host file's allocation.
 */
#include "qimg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "backing.h"
#include "bitmap.h"
#include "error.h"
#include "file.h"
#include "image.h"
#include "util.h"

void qimg_info_free(struct qimg_info *info)
{
    if (!info)
        return;
    free(info->backing_file);
    free(info->full_backing_file);
    free(info->backing_fmt);
    free(info->data_file);
    for (size_t i = 0; i < info->nb_bitmaps; i++)
        free(info->bitmaps[i].name);
    free(info->bitmaps);
    free(info);
}

static int fill_bitmaps(struct qimg_info *info, qimg_image *img)
{
    struct bitmap_entry *b;
    size_t n;
    int ret = bitmap_dir_load(img, &b, &n);

    if (ret < 0)
        return ret;
    info->bitmaps = calloc(n ? n : 1, sizeof *info->bitmaps);
    if (!info->bitmaps) {
        bitmap_dir_free(b, n);
        return qimg_err(ENOMEM, "Out of memory");
    }
    for (size_t i = 0; i < n; i++) {
        info->bitmaps[i].name = b[i].name;
        b[i].name = NULL;
        info->bitmaps[i].granularity = 1u << MIN(b[i].granularity_bits, 31);
        info->bitmaps[i].in_use = b[i].flags & BME_FLAG_IN_USE;
        info->bitmaps[i].is_auto = b[i].flags & BME_FLAG_AUTO;
    }
    info->nb_bitmaps = n;
    bitmap_dir_free(b, n);
    return 0;
}

static int fill_qcow2(struct qimg_info *info, qimg_image *img)
{
    const struct qcow2_header *h = &img->q->hdr;

    info->cluster_size = 1u << h->cluster_bits;
    info->version = (int)h->version;
    info->lazy_refcounts = h->compatible & COMPAT_LAZY_REFCOUNTS;
    info->corrupt = h->incompatible & INCOMPAT_CORRUPT;
    info->extended_l2 = h->incompatible & INCOMPAT_EXTL2;
    info->is_dirty = h->incompatible & INCOMPAT_DIRTY;
    info->compression_type = h->compression_type;
    info->refcount_bits = 1u << h->refcount_order;
    info->crypt_method = (int)h->crypt_method;
    info->has_data_file = h->incompatible & INCOMPAT_DATA_FILE;
    info->data_file_raw = h->autoclear & AUTOCLEAR_DATA_FILE_RAW;
    if (h->data_file && !(info->data_file = strdup(h->data_file)))
        return qimg_err(ENOMEM, "Out of memory");
    info->has_bitmaps_ext = h->has_bitmaps_ext &&
                            (h->autoclear & AUTOCLEAR_BITMAPS);
    if (h->backing_file) {
        info->backing_file = strdup(h->backing_file);
        info->full_backing_file = backing_full_path(img->filename,
                                                    h->backing_file);
        if (!info->backing_file || !info->full_backing_file)
            return qimg_err(ENOMEM, "Out of memory");
    }
    if (h->backing_fmt && !(info->backing_fmt = strdup(h->backing_fmt)))
        return qimg_err(ENOMEM, "Out of memory");
    return info->has_bitmaps_ext ? fill_bitmaps(info, img) : 0;
}

int qimg_image_info(struct qimg_info **out, qimg_image *img)
{
    struct qimg_info *info = calloc(1, sizeof *info);
    int ret = 0;

    *out = NULL;
    if (!info)
        return qimg_err(ENOMEM, "Out of memory");
    info->fmt = img->fmt;
    info->virtual_size = img->size;
    if (file_get_allocated(img, &info->actual_size) < 0)
        info->actual_size = 0;
    if (img->fmt == QIMG_FMT_QCOW2)
        ret = fill_qcow2(info, img);
    if (ret < 0) {
        qimg_info_free(info);
        return ret;
    }
    *out = info;
    return 0;
}
