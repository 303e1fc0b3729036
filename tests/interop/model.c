/*
 * model.c - randomized model test of guest I/O and internal snapshots.
 *
 * A long random sequence of writes, write-zeroes, discards, compressed
 * writes, snapshot create/apply/delete/rename and compaction is applied
 * to one image
 * through libqimg, and to an in-memory model of what the active disk and
 * every snapshot must contain; between them the changed ranges of two
 * trees (qimg_snapshot_diff) must cover every byte the model says
 * differs, and the space per tree must add up. After every operation qimg's own check must find
 * the image clean; every few operations the active disk and all snapshots
 * are read back and compared with the model; at random points (and at the
 * end) `qemu-img check` must report the image clean too.
 *
 * usage: model FILE SEED OPS [create options: cluster_size compat
 *        refcount_bits extended_l2 compression_type]
 * Prints the seed on failure; exit 0 on success.
 */
#include "qimg.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DISK (4u << 20)
#define MAX_SNAPS 12

struct snapshot {
    char name[32];
    char id[32];
    uint8_t *data;
};

static unsigned long long seed, seed0;
static const char *path;
static uint8_t *active;
static struct snapshot snaps[MAX_SNAPS];
static int nb_snaps;
static uint32_t cluster_size;
static int compat;

static void fail(const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "model: FAILED (seed %llu): ", seed0);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " [last library error: %s]\n", qimg_last_error()->message);
    exit(1);
}

static uint64_t rnd(void)
{
    seed ^= seed << 13;
    seed ^= seed >> 7;
    seed ^= seed << 17;
    return seed;
}

static qimg_image *open_rw(void)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    qimg_image *img;

    o.read_write = true;
    if (qimg_image_open(&img, path, &o) < 0)
        fail("open");
    return img;
}

static void qimg_check_clean(qimg_image *img, const char *after)
{
    struct qimg_check_result *r = NULL;

    if (qimg_image_flush(img) < 0)
        fail("flush after %s", after);
    if (qimg_image_check(&r, img, 0) < 0)
        fail("check failed after %s", after);
    if (r->corruptions || r->leaks || r->check_errors) {
        for (size_t i = 0; i < r->nb_msgs; i++)
            fprintf(stderr, "  %s%s%s\n", r->msgs[i].text,
                    r->msgs[i].where ? " -- " : "",
                    r->msgs[i].where ? r->msgs[i].where : "");
        fail("qimg check after %s: %lld corruptions, %lld leaks", after,
             (long long)r->corruptions, (long long)r->leaks);
    }
    qimg_check_result_free(r);
}

static void qemu_check_clean(void)
{
    char cmd[4200];

    snprintf(cmd, sizeof cmd, "qemu-img check -q '%s' >/dev/null", path);
    if (system(cmd) != 0)
        fail("qemu-img check is not clean");
}

static void verify(qimg_image *img)
{
    uint8_t *buf = malloc(DISK);

    if (qimg_image_read(img, buf, DISK, 0) < 0)
        fail("read active");
    for (uint32_t i = 0; i < DISK; i++)
        if (buf[i] != active[i])
            fail("active disk differs at byte %u", i);
    for (int s = 0; s < nb_snaps; s++) {
        struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
        qimg_image *v;
        o.snapshot = snaps[s].id;
        o.force_share = true;
        if (qimg_image_open(&v, path, &o) < 0)
            fail("open snapshot %s", snaps[s].id);
        if (qimg_image_read(v, buf, DISK, 0) < 0)
            fail("read snapshot %s", snaps[s].id);
        for (uint32_t i = 0; i < DISK; i++)
            if (buf[i] != snaps[s].data[i])
                fail("snapshot %s differs at byte %u", snaps[s].id, i);
        qimg_image_close(v);
    }
    free(buf);
}

static bool cluster_unallocated(qimg_image *img, uint64_t off)
{
    struct qimg_extent e;

    if (qimg_image_block_status(img, off, cluster_size, &e) < 0)
        fail("block status");
    return !(e.flags & QIMG_BS_ALLOCATED) ||
           ((e.flags & QIMG_BS_ZERO) && !(e.flags & QIMG_BS_OFFSET));
}

static void op_write(qimg_image *img)
{
    uint64_t off = rnd() % DISK, len = 1 + rnd() % (3 * cluster_size + 100);
    uint8_t *buf;

    len = len > DISK - off ? DISK - off : len;
    buf = malloc(len);
    memset(buf, (int)(rnd() & 0xff), len);
    if (getenv("MODEL_TRACE"))
        fprintf(stderr, "  write %llu+%llu = %02x\n", (unsigned long long)off,
                (unsigned long long)len, buf[0]);
    if (qimg_image_write(img, buf, len, off) < 0)
        fail("write %llu+%llu", (unsigned long long)off,
             (unsigned long long)len);
    memcpy(active + off, buf, len);
    free(buf);
}

static void op_zero(qimg_image *img)
{
    uint64_t off = rnd() % DISK, len = 1 + rnd() % (4 * cluster_size);
    unsigned flags = rnd() % 2 ? QIMG_ZERO_UNMAP : 0;

    len = len > DISK - off ? DISK - off : len;
    if (getenv("MODEL_TRACE"))
        fprintf(stderr, "  zero %llu+%llu unmap=%u\n", (unsigned long long)off,
                (unsigned long long)len, flags);
    if (qimg_image_write_zeroes(img, off, len, flags) < 0)
        fail("write zeroes");
    memset(active + off, 0, len);
}

static void op_discard(qimg_image *img)
{
    uint64_t off = (rnd() % (DISK / cluster_size)) * cluster_size;
    uint64_t len = (1 + rnd() % 4) * cluster_size;

    len = len > DISK - off ? DISK - off : len;
    if (compat < 3)
        return; /* v2: discarded clusters would read from nowhere else,
                 * but zero semantics differ; covered by the v3 runs */
    if (qimg_image_discard(img, off, len) < 0)
        fail("discard");
    memset(active + off, 0, len);
}

static void op_compressed(qimg_image *img)
{
    uint64_t off = (rnd() % (DISK / cluster_size)) * cluster_size;
    uint8_t *buf;

    if (!cluster_unallocated(img, off))
        return;
    buf = malloc(cluster_size);
    for (uint32_t i = 0; i < cluster_size; i++)
        buf[i] = (uint8_t)((i / 64) ^ (rnd() % 3 == 0));
    /* A cluster with a host offset (extended L2: even if its first
     * subcluster is unallocated) refuses compression, as in QEMU. */
    if (qimg_image_write_compressed(img, buf, cluster_size, off) < 0) {
        if (qimg_last_error()->errnum != EIO || qimg_last_error()->where[0])
            fail("compressed write");
        qimg_error_clear();
    } else {
        memcpy(active + off, buf, cluster_size);
    }
    free(buf);
}

static void op_create(qimg_image *img)
{
    struct qimg_snapshot *l;
    size_t n;
    struct snapshot *s;

    if (nb_snaps == MAX_SNAPS)
        return;
    s = &snaps[nb_snaps];
    snprintf(s->name, sizeof s->name, "s%llu", (unsigned long long)(rnd() % 8));
    if (qimg_snapshot_create(img, s->name) < 0) {
        /* Narrow refcounts overflow, as in QEMU; nothing may change. */
        if (qimg_last_error()->errnum != EINVAL)
            fail("snapshot create");
        qimg_error_clear();
        return;
    }
    if (qimg_snapshot_list(&l, &n, img) < 0)
        fail("snapshot list");
    snprintf(s->id, sizeof s->id, "%s", l[n - 1].id);
    qimg_snapshot_list_free(l, n);
    s->data = malloc(DISK);
    memcpy(s->data, active, DISK);
    nb_snaps++;
}

static void op_apply(qimg_image *img)
{
    int i;

    if (!nb_snaps)
        return;
    i = (int)(rnd() % (uint64_t)nb_snaps);
    if (qimg_snapshot_apply(img, snaps[i].id) < 0) {
        if (qimg_last_error()->errnum != EINVAL)
            fail("snapshot apply %s", snaps[i].id);
        qimg_error_clear();
        return;
    }
    memcpy(active, snaps[i].data, DISK);
}

static void op_delete(qimg_image *img)
{
    char spec[64];
    int i;

    if (!nb_snaps)
        return;
    i = (int)(rnd() % (uint64_t)nb_snaps);
    /* Delete takes a name first; IDs never look like our names. */
    snprintf(spec, sizeof spec, "%s", snaps[i].id);
    if (qimg_snapshot_delete(img, spec) < 0)
        fail("snapshot delete %s", spec);
    free(snaps[i].data);
    memmove(&snaps[i], &snaps[i + 1], (size_t)(nb_snaps - i - 1) *
                                          sizeof *snaps);
    nb_snaps--;
}

/* Rename a random snapshot: the list must show the new name. */
static void op_rename(qimg_image *img)
{
    struct qimg_snapshot *l;
    size_t n;
    int i;

    if (!nb_snaps)
        return;
    i = (int)(rnd() % (uint64_t)nb_snaps);
    snprintf(snaps[i].name, sizeof snaps[i].name, "r%llu",
             (unsigned long long)(rnd() % 8));
    if (qimg_snapshot_rename(img, snaps[i].id, snaps[i].name) < 0)
        fail("snapshot rename %s", snaps[i].id);
    if (qimg_snapshot_list(&l, &n, img) < 0)
        fail("snapshot list");
    for (size_t k = 0; k < n; k++)
        if (!strcmp(l[k].id, snaps[i].id) && strcmp(l[k].name, snaps[i].name))
            fail("snapshot %s is named %s after a rename to %s", l[k].id,
                 l[k].name, snaps[i].name);
    qimg_snapshot_list_free(l, n);
}

/* The changed ranges between two trees (a snapshot, and another one or
 * the active disk) cover every byte that differs in the model; a range
 * said to read as zeros does. Space: referenced = exclusive + shared. */
static void op_diff(qimg_image *img)
{
    struct qimg_diff_extent *e;
    struct qimg_space *sp;
    const uint8_t *from, *to;
    uint8_t *covered;
    size_t n;
    int i, j;

    if (!nb_snaps)
        return;
    i = (int)(rnd() % (uint64_t)nb_snaps);
    j = (int)(rnd() % (uint64_t)(nb_snaps + 1)); /* nb_snaps: active */
    from = snaps[i].data;
    to = j < nb_snaps ? snaps[j].data : active;
    if (qimg_image_flush(img) < 0 ||
        qimg_snapshot_diff(img, snaps[i].id, j < nb_snaps ? snaps[j].id : NULL,
                           &e, &n) < 0)
        fail("diff %s", snaps[i].id);
    covered = calloc(1, DISK);
    for (size_t k = 0; k < n; k++) {
        if (e[k].start + e[k].length > DISK)
            fail("diff range past the disk");
        memset(covered + e[k].start, 1, e[k].length);
        for (uint64_t b = 0; e[k].zero && b < e[k].length; b++)
            if (to[e[k].start + b])
                fail("diff: range said zero holds data at %llu",
                     (unsigned long long)(e[k].start + b));
    }
    for (uint32_t b = 0; b < DISK; b++)
        if (from[b] != to[b] && !covered[b])
            fail("diff %s..%s missed a change at byte %u", snaps[i].id,
                 j < nb_snaps ? snaps[j].id : "active", b);
    free(covered);
    qimg_diff_free(e);
    if (qimg_snapshot_space(&sp, img) < 0)
        fail("space");
    for (size_t k = 0; k <= sp->nb_snapshots; k++) {
        const struct qimg_space_usage *u =
            k < sp->nb_snapshots ? &sp->snapshots[k] : &sp->active;
        if (u->referenced_bytes != u->exclusive_bytes + u->shared_bytes)
            fail("space: referenced != exclusive + shared");
    }
    qimg_space_free(sp);
}

/* Compact: every tree reads as before (verified at once), the file does
 * not grow, and the handle goes on working. */
static void op_compact(qimg_image *img)
{
    struct qimg_compact_result r;

    if (qimg_image_compact(img, NULL, NULL, &r) < 0)
        fail("compact");
    if (r.new_file_size > r.old_file_size)
        fail("compact grew the file: %llu -> %llu",
             (unsigned long long)r.old_file_size,
             (unsigned long long)r.new_file_size);
    verify(img);
}

int main(int argc, char **argv)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;
    static const char *names[] = {"write",      "zero",   "discard",
                                  "compressed", "create", "apply",
                                  "delete",     "rename", "diff",
                                  "compact"};
    void (*ops[])(qimg_image *) = {op_write,      op_zero,   op_discard,
                                   op_compressed, op_create, op_apply,
                                   op_delete,     op_rename, op_diff,
                                   op_compact};
    static const int weights[] = {30, 8, 6, 4, 8, 6, 6, 3, 4, 3};
    qimg_image *img;
    int nops;

    if (argc < 4) {
        fprintf(stderr, "usage: model FILE SEED OPS [cs compat rbits "
                        "extl2 ctype]\n");
        return 2;
    }
    path = argv[1];
    seed0 = strtoull(argv[2], NULL, 0);
    seed = seed0 * 2654435761ull + 1;
    nops = atoi(argv[3]);
    o.size = DISK;
    if (argc > 8) {
        o.cluster_size = (uint32_t)atoi(argv[4]);
        o.compat = atoi(argv[5]);
        o.refcount_bits = (uint32_t)atoi(argv[6]);
        o.extended_l2 = atoi(argv[7]);
        o.compression_type = atoi(argv[8]);
    }
    cluster_size = o.cluster_size;
    compat = o.compat;
    if (qimg_image_create(path, &o) < 0)
        fail("create");
    active = calloc(1, DISK);
    img = open_rw();
    for (int n = 0; n < nops; n++) {
        int w = (int)(rnd() % 78), k = 0;
        while (w >= weights[k])
            w -= weights[k++];
        if (getenv("MODEL_TRACE"))
            fprintf(stderr, "op %d: %s\n", n, names[k]);
        ops[k](img);
        qimg_check_clean(img, names[k]);
        if (getenv("MODEL_VERIFY_ALL"))
            verify(img);
        if (n % 25 == 24)
            verify(img);
        if (rnd() % 60 == 0) {
            if (qimg_image_close(img) < 0)
                fail("close");
            qemu_check_clean();
            img = open_rw();
        }
    }
    verify(img);
    if (qimg_image_close(img) < 0)
        fail("close");
    qemu_check_clean();
    printf("model: %d operations OK, %d snapshots at the end\n", nops,
           nb_snaps);
    return 0;
}
