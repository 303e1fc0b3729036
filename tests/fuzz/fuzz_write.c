/*
 * fuzz_write.c - libFuzzer target: a read-write open that takes a
 * snapshot, writes, reverts and deletes it.
 *
 * On a private copy of the input: create snapshot "fuzz-snap", write a
 * pattern, zero or discard another range, apply the snapshot, delete it,
 * write again, flush. Where the image refuses a snapshot (refcount width 1,
 * active dirty bitmaps), only the writes run. Offsets and lengths come from
 * a hash of the input.
 * Asserted, when every step succeeded:
 *  1. a write reads back, and a zeroed range reads as zeros;
 *  2. the new snapshot's L1 table does not overlap the active one (the
 *     overlap check must stop that even on a damaged image);
 *  3. if a read-only check of the input found no corruption, applying the
 *     snapshot brings back what the disk held when it was taken (on a
 *     damaged image qemu-img too may hand out a cluster still in use);
 *  4. if that check found the input clean (and no stale refcount lies past
 *     the end of the file), it finds the result clean too.
 */
#include "fuzz.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define SNAP_NAME "fuzz-snap"
#define MAX_WRITE 8192u
#define MAX_ZERO (64u << 10)

struct plan {
    uint64_t off, zero_off;
    size_t len, zero_len;
    uint8_t pattern;
    bool discard, unmap;
    bool check_restore; /* assertion 3 applies */
};

static void plan_ops(struct plan *p, uint64_t h, uint64_t size)
{
    p->off = h % size;
    if (h & (1ull << 63))
        p->off = ALIGN_DOWN(p->off, 512);
    p->len = (size_t)MIN(1 + (h >> 16) % MAX_WRITE, size - p->off);
    p->zero_off = (h >> 24) % size;
    p->zero_len = (size_t)MIN(1 + (h >> 36) % MAX_ZERO, size - p->zero_off);
    p->pattern = (uint8_t)(h >> 8) | 1;
    p->discard = h & (1ull << 61);
    p->unmap = h & (1ull << 62);
}

/* Whether the image suits this target: SNAP_NAME unused as a snapshot ID
 * and name. */
static bool suits(qimg_image *img)
{
    struct qimg_snapshot *list = NULL;
    size_t count = 0;
    bool ok = true;

    if (qimg_snapshot_list(&list, &count, img) < 0)
        return false;
    for (size_t i = 0; i < count; i++)
        if (!strcmp(list[i].id, SNAP_NAME) || !strcmp(list[i].name, SNAP_NAME))
            ok = false;
    qimg_snapshot_list_free(list, count);
    return ok;
}

/* Whether every refcount past the end of the file (as far as the file may
 * grow) is zero. Check does not look there, nor does qemu-img's, but a
 * write that grows the file turns a stale refcount there into a leak, so
 * an image with one is not "clean" for assertion 4. */
static bool no_refcounts_past_eof(qimg_image *img)
{
    const struct qcow2 *q = img->q;
    uint64_t size, idx, end, v;

    if (file_get_size(img, &size) < 0)
        return false;
    end = MIN(q->rc->rt_entries << q->rb_bits, FUZZ_MAX_FILE / q->cluster_size);
    for (idx = DIV_ROUND_UP(size, q->cluster_size); idx < end; idx++) {
        if (refcount_get(img, idx, &v) < 0 || v)
            return false;
    }
    return true;
}

/* Write and read back. */
static int write_pattern(qimg_image *img, const struct plan *p, uint8_t *buf)
{
    int ret;

    memset(buf, p->pattern, p->len);
    ret = qimg_image_write(img, buf, p->len, p->off);
    if (ret == 0)
        ret = qimg_image_read(img, buf, p->len, p->off);
    if (ret == 0 && (buf[0] != p->pattern ||
                     memcmp(buf, buf + 1, p->len - 1) != 0))
        fuzz_fail("write of %zu bytes at %" PRIu64 " did not read back",
                  p->len, p->off);
    return ret;
}

static int zero_or_discard(qimg_image *img, const struct plan *p,
                           uint8_t *buf)
{
    int ret;

    if (p->discard)
        return qimg_image_discard(img, p->zero_off, p->zero_len);
    ret = qimg_image_write_zeroes(img, p->zero_off, p->zero_len,
                                  p->unmap ? QIMG_ZERO_UNMAP : 0);
    if (ret == 0)
        ret = qimg_image_read(img, buf, p->zero_len, p->zero_off);
    if (ret == 0 && (buf[0] || memcmp(buf, buf + 1, p->zero_len - 1)))
        fuzz_fail("zeroes at %" PRIu64 " (%zu bytes) did not read back",
                  p->zero_off, p->zero_len);
    return ret;
}

/* Assertion 2, on the snapshot just created. */
static void check_snapshot_l1(qimg_image *img)
{
    const struct qcow2 *q = img->q;
    struct qimg_snapshot *list = NULL;
    uint64_t a0 = q_cluster_of(q, q->hdr.l1_table_offset), a1, b0, b1;
    size_t count = 0;

    if (q->l1s->l1_size == 0 || qimg_snapshot_list(&list, &count, img) < 0)
        return;
    a1 = q_cluster_of(q, q->hdr.l1_table_offset + q->l1s->l1_size * 8ull - 1);
    for (size_t i = 0; i < count; i++) {
        if (strcmp(list[i].name, SNAP_NAME) || list[i].l1_size == 0)
            continue;
        b0 = q_cluster_of(q, list[i].l1_table_offset);
        b1 = q_cluster_of(q, list[i].l1_table_offset +
                                 list[i].l1_size * 8ull - 1);
        if (b0 <= a1 && a0 <= b1)
            fuzz_fail("snapshot L1 table at %#" PRIx64 " overlaps the "
                      "active L1 table at %#" PRIx64,
                      list[i].l1_table_offset, q->hdr.l1_table_offset);
    }
    qimg_snapshot_list_free(list, count);
}

/* Revert to the snapshot taken before the changes (where the image allows
 * it: not with active dirty bitmaps, nor a v2 image resized since) and
 * check the range is back (assertion 3); delete the snapshot. */
static int revert_and_delete(qimg_image *img, const struct plan *p,
                             const uint8_t *before, uint8_t *buf)
{
    int ret;

    if (qimg_snapshot_apply(img, SNAP_NAME) == 0 && p->check_restore) {
        ret = qimg_image_read(img, buf, p->len, p->off);
        if (ret < 0)
            return ret;
        if (memcmp(buf, before, p->len) != 0)
            fuzz_fail("snapshot apply did not restore %zu bytes at %" PRIu64,
                      p->len, p->off);
    }
    return qimg_snapshot_delete(img, SNAP_NAME);
}

/* Snapshot (where the image allows one), change, revert, delete, write.
 * Returns 0 if every step after the snapshot worked. */
static int run_ops(qimg_image *img, const struct plan *p)
{
    uint8_t *before = malloc(p->len), *buf = malloc(MAX_ZERO);
    bool has_snap = false;
    int ret = -ENOMEM;

    if (!before || !buf)
        goto out;
    ret = qimg_image_read(img, before, p->len, p->off);
    if (ret == 0)
        has_snap = qimg_snapshot_create(img, SNAP_NAME) == 0;
    if (has_snap)
        check_snapshot_l1(img);
    if (ret == 0)
        ret = write_pattern(img, p, buf);
    if (ret == 0)
        ret = zero_or_discard(img, p, buf);
    if (ret == 0 && has_snap)
        ret = revert_and_delete(img, p, before, buf);
    if (ret == 0)
        ret = write_pattern(img, p, buf);
    if (ret == 0)
        ret = qimg_image_flush(img);
out:
    free(before);
    free(buf);
    return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    qimg_image *img = NULL;
    const uint8_t *file;
    size_t file_len;
    struct plan p;
    bool was_clean, intact;

    if (size > FUZZ_MAX_INPUT)
        return 0;
    was_clean = fuzz_image_clean(data, size, &intact);
    o.read_write = true;
    if (fuzz_open(&img, data, size, &o) < 0)
        return 0;
    if (qimg_image_size(img) == 0 || !suits(img)) {
        qimg_image_close(img);
        return 0;
    }
    was_clean = was_clean && no_refcounts_past_eof(img);
    plan_ops(&p, fuzz_hash(data, size), qimg_image_size(img));
    p.check_restore = intact;
    if (run_ops(img, &p) == 0 && was_clean) {
        file = fuzz_file_data(img, &file_len);
        fuzz_require_clean(file, file_len,
                           "after snapshot create/write/apply/delete on a "
                           "clean image");
    }
    qimg_image_close(img);
    return 0;
}
