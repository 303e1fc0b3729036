/*
 * fuzz_read.c - libFuzzer target: guest reads of the active disk and of
 * every snapshot.
 *
 * Reads (guest.c, l1l2.c, compress.c: normal, zero, compressed clusters
 * and subclusters) and walks block status over the active disk, then over
 * each of the first FUZZ_MAX_SNAPSHOTS snapshots opened as a read-only
 * view. All disks share one budget of FUZZ_READ_BUDGET guest bytes; larger
 * disks are sampled at evenly spaced offsets.
 */
#include "fuzz.h"

static void read_disk(qimg_image *img, uint64_t budget)
{
    fuzz_map_disk(img, budget);
    fuzz_read_disk(img, &budget);
}

static void read_view(const uint8_t *data, size_t size, const char *id,
                      uint64_t budget)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    qimg_image *img = NULL;

    o.snapshot = id;
    if (fuzz_open(&img, data, size, &o) < 0)
        return;
    read_disk(img, budget);
    qimg_image_close(img);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_snapshot *list = NULL;
    qimg_image *img = NULL;
    size_t count = 0, nb_views;
    uint64_t share;

    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (fuzz_open(&img, data, size, &o) < 0)
        return 0;
    if (qimg_snapshot_list(&list, &count, img) < 0)
        count = 0;
    /* The active disk and each view read an equal share. */
    nb_views = MIN(count, FUZZ_MAX_SNAPSHOTS);
    share = FUZZ_READ_BUDGET / (nb_views + 1);
    read_disk(img, share);
    qimg_image_close(img);
    for (size_t i = 0; i < nb_views; i++)
        read_view(data, size, list[i].id, share);
    qimg_snapshot_list_free(list, count);
    return 0;
}
