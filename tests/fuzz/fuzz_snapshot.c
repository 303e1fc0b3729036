/*
 * fuzz_snapshot.c - libFuzzer target: the internal snapshot table.
 *
 * Lists the snapshots of a read-only open (snaptable.c's table decoding and
 * validation), then opens each of the first FUZZ_MAX_SNAPSHOTS as a
 * read-only view, by ID and by name (snap_lookup, the snapshot L1 table
 * checks). Asserted: a view has the virtual size the list gave for the
 * first snapshot with that ID (or name).
 * Reading the views is fuzz_read.c's job.
 */
#include "fuzz.h"

#include <stdio.h>
#include <string.h>

static void open_view(const uint8_t *data, size_t size, const char *spec,
                      const struct qimg_snapshot *s)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    qimg_image *img = NULL;

    o.snapshot = spec;
    if (fuzz_open(&img, data, size, &o) < 0)
        return;
    if (qimg_image_size(img) != s->disk_size)
        fuzz_fail("snapshot '%s' opened with size %" PRIu64
                  ", listed with %" PRIu64,
                  spec, qimg_image_size(img), s->disk_size);
    qimg_image_close(img);
}

static void check_list(const struct qimg_snapshot *list, size_t count)
{
    for (size_t i = 0; i < count; i++) {
        if (!list[i].id || !list[i].name)
            fuzz_fail("snapshot %zu has no ID or name", i);
    }
}

/* The first snapshot with the ID (or name) of list[i]: the one a lookup
 * finds. */
static const struct qimg_snapshot *
first_with(const struct qimg_snapshot *list, size_t i, bool by_name)
{
    for (size_t j = 0; j < i; j++) {
        if (by_name ? !strcmp(list[j].name, list[i].name)
                    : !strcmp(list[j].id, list[i].id))
            return &list[j];
    }
    return &list[i];
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_snapshot *list = NULL;
    qimg_image *img = NULL;
    size_t count = 0;
    char spec[300];

    if (size > FUZZ_MAX_INPUT)
        return 0;
    if (fuzz_open(&img, data, size, &o) < 0)
        return 0;
    if (qimg_snapshot_list(&list, &count, img) < 0) {
        qimg_image_close(img);
        return 0;
    }
    qimg_image_close(img);
    check_list(list, count);
    for (size_t i = 0; i < count && i < FUZZ_MAX_SNAPSHOTS; i++) {
        snprintf(spec, sizeof spec, "snapshot.id=%s", list[i].id);
        open_view(data, size, spec, first_with(list, i, false));
        snprintf(spec, sizeof spec, "snapshot.name=%s", list[i].name);
        open_view(data, size, spec, first_with(list, i, true));
    }
    qimg_snapshot_list_free(list, count);
    return 0;
}
