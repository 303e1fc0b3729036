/*
 * fuzz_open.c - libFuzzer target: open an input as a qcow2 image and
 * describe it.
 *
 * Covers the open paths (header and extension decoding, table validation,
 * the snapshot table load, a dirty image repaired on a read-write open)
 * and qimg_image_info(). Each input is opened three ways: read-only, for
 * check, and read-write (which may write: the repair of a dirty image, the
 * flush on close). Guest data is not read here (fuzz_read.c does).
 */
#include "fuzz.h"

static void open_and_describe(const uint8_t *data, size_t size,
                              const struct qimg_open_opts *o)
{
    struct qimg_info *info = NULL;
    qimg_image *img = NULL;

    if (fuzz_open(&img, data, size, o) < 0)
        return;
    if (qimg_image_info(&info, img) == 0) {
        if (info->virtual_size != qimg_image_size(img))
            fuzz_fail("info virtual size %" PRIu64 " != image size %" PRIu64,
                      info->virtual_size, qimg_image_size(img));
        if (info->nb_bitmaps && !info->bitmaps)
            fuzz_fail("%zu bitmaps but no array", info->nb_bitmaps);
    }
    qimg_info_free(info);
    qimg_image_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;

    if (size > FUZZ_MAX_INPUT)
        return 0;
    open_and_describe(data, size, &o);
    o.for_check = true;
    open_and_describe(data, size, &o);
    o.for_check = false;
    o.read_write = true;
    open_and_describe(data, size, &o);
    return 0;
}
