/*
 * fuzz_check.c - libFuzzer target: qimg_image_check() and its repair.
 *
 * The input is checked read-only, then a copy is opened read-write and
 * repaired (QIMG_CHECK_FIX_ERRORS). Asserted: a repair that reports
 * nothing left to fix (no corruption, leak or error remaining) leaves an
 * image that a fresh read-only check finds clean. A repair whose rebuilt
 * refcount structure is "still broken" says so only in a message, not in
 * the counts (as qemu-img 7.2 does); it claims nothing.
 */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

static void check_read_only(const uint8_t *data, size_t size)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_check_result *r = NULL;
    qimg_image *img = NULL;

    o.for_check = true;
    if (fuzz_open(&img, data, size, &o) < 0)
        return;
    qimg_image_check(&r, img, 0);
    qimg_check_result_free(r);
    qimg_image_close(img);
}

/* Whether the repair's result admits a rebuild that did not fix it. */
static bool rebuild_failed(const struct qimg_check_result *r)
{
    for (size_t i = 0; i < r->nb_msgs; i++) {
        if (r->msgs[i].is_error && !strcmp(r->msgs[i].kind, "rebuild"))
            return true;
    }
    return false;
}

/* Repair a copy; the repaired file goes to *out (malloc'd) when the repair
 * says the image is now clean. */
static void repair(const uint8_t *data, size_t size, uint8_t **out,
                   size_t *out_len)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_check_result *r = NULL;
    qimg_image *img = NULL;
    const uint8_t *file;
    bool clean;

    *out = NULL;
    o.for_check = true;
    o.read_write = true;
    if (fuzz_open(&img, data, size, &o) < 0)
        return;
    clean = qimg_image_check(&r, img, QIMG_CHECK_FIX_ERRORS) == 0 &&
            fuzz_check_clean(r) && !rebuild_failed(r);
    qimg_check_result_free(r);
    if (qimg_image_flush(img) == 0 && clean) {
        file = fuzz_file_data(img, out_len);
        *out = malloc(*out_len ? *out_len : 1);
        if (*out)
            memcpy(*out, file, *out_len);
    }
    qimg_image_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *fixed;
    size_t fixed_len;

    if (size > FUZZ_MAX_INPUT)
        return 0;
    check_read_only(data, size);
    repair(data, size, &fixed, &fixed_len);
    if (fixed)
        fuzz_require_clean(fixed, fixed_len,
                           "after a check -r all that reported success");
    free(fixed);
    return 0;
}
