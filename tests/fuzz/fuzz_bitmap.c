/*
 * fuzz_bitmap.c - libFuzzer target: persistent bitmaps changed, kept up
 * to date by guest writes, and resized.
 *
 * On private read-write copies of the input, one per plan: (1) the
 * actions of `qimg bitmap` in one commit (add, merge the image's first
 * bitmap into it and into the second, clear the first, disable the new
 * one, remove the last); (2) a guest write, then the close's store of the
 * enabled bitmaps; (3) a resize to twice the size; (4) to half of it.
 * Asserted:
 *  A. a change or resize that fails leaves the file byte-identical (but
 *     the corrupt bit, which the library sets where QEMU would), unless
 *     the backend failed a call (the FUZZ_MAX_FILE cap: an I/O error);
 *  B. whatever succeeds leaves an image whose read-only check finds it
 *     clean if it was clean before (but for leaks the input had past its
 *     end, which a longer file shows), and (1) leaves the guest data as
 *     it was.
 */
#include "fuzz.h"

#include <stdlib.h>
#include <string.h>

#define SAMPLE (1u << 20) /* guest bytes compared */

/* The names of the first and last bitmaps (NULL: none). */
static void names(qimg_image *img, char **first, char **last)
{
    struct qimg_info *info = NULL;

    *first = *last = NULL;
    if (qimg_image_info(&info, img) < 0) {
        qimg_error_clear();
        return;
    }
    if (info->nb_bitmaps) {
        *first = strdup(info->bitmaps[0].name);
        *last = strdup(info->bitmaps[info->nb_bitmaps - 1].name);
    }
    qimg_info_free(info);
}

/* The input (before, blen) was clean as far as its end; the result
 * (after, alen) must be, but for leaks the input already had past its
 * end, which a longer file shows: the input is judged at the result's
 * length (zeros appended). */
static void no_worse(const uint8_t *before, size_t blen, const uint8_t *after,
                     size_t alen, int plan)
{
    struct qimg_check_result *r = NULL, *b = NULL;
    uint8_t *padded;

    if (fuzz_check_bytes(after, alen, &r) < 0)
        fuzz_fail("bitmap plan %d left an image the check cannot finish",
                  plan);
    if (fuzz_check_clean(r)) {
        qimg_check_result_free(r);
        return;
    }
    padded = calloc(1, alen > blen ? alen : blen);
    if (!padded)
        abort();
    memcpy(padded, before, blen);
    if (fuzz_check_bytes(padded, alen > blen ? alen : blen, &b) < 0 ||
        r->corruptions > b->corruptions || r->leaks > b->leaks ||
        r->check_errors > b->check_errors)
        fuzz_fail("bitmap plan %d left %lld corruptions, %lld leaks, %lld "
                  "errors on a clean image",
                  plan, (long long)r->corruptions, (long long)r->leaks,
                  (long long)r->check_errors);
    qimg_check_result_free(r);
    qimg_check_result_free(b);
    free(padded);
}

static int change(qimg_image *img)
{
    struct qimg_bitmap_action a[8];
    char *first, *last;
    size_t n = 0;
    int ret;

    names(img, &first, &last);
    a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_ADD, "fuzz", 0, NULL,
                                         NULL};
    if (first) {
        a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_MERGE, "fuzz", 0,
                                             first, NULL};
        a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_MERGE, last, 0,
                                             first, NULL};
        a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_CLEAR, first, 0,
                                             NULL, NULL};
    }
    a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_DISABLE, "fuzz", 0,
                                         NULL, NULL};
    if (last && strcmp(first, last))
        a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_REMOVE, last, 0,
                                             NULL, NULL};
    ret = qimg_bitmap_change(img, a, n, NULL);
    free(first);
    free(last);
    return ret;
}

/* Twice the size (plan 2) or half of it (plan 3). */
static int resize(qimg_image *img, int plan)
{
    uint64_t size = qimg_image_size(img);

    size = plan == 2 ? size * 2 : size / 2 / 512 * 512;
    return qimg_image_resize(img, size, QIMG_PREALLOC_OFF);
}

static void run_plan(const uint8_t *data, size_t size, int plan, bool clean)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    qimg_image *img = NULL;
    uint8_t *before, *after = NULL, *file;
    const uint8_t *cur;
    size_t len, flen;
    int ret;

    o.read_write = true;
    if (fuzz_open(&img, data, size, &o) < 0)
        return;
    before = fuzz_sample(img, SAMPLE);
    if (qimg_image_flush(img) < 0) {
        free(before);
        qimg_image_close(img);
        return;
    }
    cur = fuzz_file_data(img, &len);
    file = malloc(len + 1);
    if (!file)
        abort();
    memcpy(file, cur, len);
    if (plan == 0) {
        ret = change(img);
    } else if (plan == 1) {
        static const uint8_t pattern[4096] = {0x5a};
        uint64_t off = qimg_image_size(img) / 3 / 512 * 512;
        ret = qimg_image_size(img) >= off + sizeof pattern
                  ? qimg_image_write(img, pattern, sizeof pattern, off)
                  : 0;
        /* The store happens at the close: flush there and judge it. */
        if (ret == 0)
            ret = qimg_image_flush(img);
        if (ret == 0)
            ret = qcow2_store_bitmaps(img);
    } else {
        ret = resize(img, plan);
    }
    if (ret < 0 && plan != 1) {
        const uint8_t *now = fuzz_file_data(img, &flen);
        if (!fuzz_io_failures(img) &&
            !fuzz_same_but_corrupt_bit(file, len, now, flen))
            fuzz_fail("bitmap plan %d failed (%s) and changed the file", plan,
                      qimg_last_error()->message);
    } else if (ret == 0) {
        after = fuzz_sample(img, SAMPLE);
        if (plan == 0 && before && after && memcmp(before, after, SAMPLE))
            fuzz_fail("a bitmap change changed the guest data");
        if (clean && qimg_image_flush(img) == 0) {
            const uint8_t *now = fuzz_file_data(img, &flen);
            no_worse(file, len, now, flen, plan);
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
    for (int plan = 0; plan < 4; plan++)
        run_plan(data, size, plan, clean);
    return 0;
}
