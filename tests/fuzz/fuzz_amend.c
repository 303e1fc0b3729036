/*
 * fuzz_amend.c - libFuzzer target: qemu-img amend's format changes.
 *
 * On private read-write copies of the input, one per plan: a new refcount
 * width (narrower and wider), a downgrade to v2 (zero clusters and
 * bitmaps rewritten), an upgrade to v3, lazy refcounts on. Asserted:
 *  A. an amend that fails leaves the file byte-identical (but the corrupt
 *     bit, which the library sets where QEMU would), unless the backend
 *     failed a call (the FUZZ_MAX_FILE cap: an I/O error, not a refusal);
 *  B. one that succeeds leaves an image whose read-only check finds it
 *     clean if it was clean before (a width change or a downgrade refuses
 *     an image the check finds broken), with the same guest data (read
 *     back within the read budget, compared byte for byte) and the version
 *     and refcount width asked for.
 */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#define SAMPLE (1u << 20) /* guest bytes compared per plan */

struct plan {
    int compat;
    unsigned refcount_bits;
    int lazy;
};

static const struct plan plans[] = {
    {0, 4, -1}, {0, 64, -1}, {2, 16, -1}, {3, 0, -1}, {0, 0, 1},
};

static void run_plan(const uint8_t *data, size_t size, const struct plan *p,
                     bool clean)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_amend_opts a = QIMG_AMEND_OPTS_INIT;
    struct qimg_info *info = NULL;
    qimg_image *img = NULL;
    uint8_t *before, *after = NULL, *file;
    const uint8_t *cur;
    size_t len, flen;
    int ret;

    o.read_write = true;
    if (fuzz_open(&img, data, size, &o) < 0)
        return;
    before = fuzz_sample(img, SAMPLE);
    /* (The open may have repaired a dirty image: compare with that.) */
    if (qcow2_flush(img) < 0) {
        free(before);
        qimg_image_close(img);
        return;
    }
    cur = fuzz_file_data(img, &len);
    file = malloc(len + 1);
    if (!file)
        abort();
    memcpy(file, cur, len);
    a.compat = p->compat;
    a.refcount_bits = p->refcount_bits;
    a.lazy_refcounts = p->lazy;
    ret = qimg_image_amend(img, &a);
    if (ret < 0) {
        const uint8_t *now = fuzz_file_data(img, &flen);
        if (!fuzz_io_failures(img) &&
            !fuzz_same_but_corrupt_bit(file, len, now, flen))
            fuzz_fail("amend (compat %d, %u bits, lazy %d) failed (%s) "
                      "and changed the file",
                      p->compat, p->refcount_bits, p->lazy,
                      qimg_last_error()->message);
    } else {
        after = fuzz_sample(img, SAMPLE);
        if (before && after && memcmp(before, after, SAMPLE))
            fuzz_fail("amend (compat %d, %u bits, lazy %d) changed the "
                      "guest data",
                      p->compat, p->refcount_bits, p->lazy);
        if (qimg_image_info(&info, img) == 0) {
            if ((p->compat && info->version != p->compat) ||
                (p->refcount_bits && info->refcount_bits != p->refcount_bits))
                fuzz_fail("amend succeeded: v%d, %u-bit refcounts",
                          info->version, info->refcount_bits);
            qimg_info_free(info);
        }
        if (clean && qcow2_flush(img) == 0) {
            const uint8_t *now = fuzz_file_data(img, &flen);
            fuzz_require_clean(now, flen, "after amend");
        }
    }
    free(before);
    free(after);
    free(file);
    qimg_image_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    bool intact = false, clean;

    if (size > FUZZ_MAX_INPUT)
        return 0;
    clean = fuzz_image_clean(data, size, &intact);
    for (size_t i = 0; i < sizeof plans / sizeof plans[0]; i++)
        run_plan(data, size, &plans[i], clean);
    return 0;
}
