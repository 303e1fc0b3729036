/*
 * crash_sim.c - simulated power loss at every point of every mutating
 * operation, and every I/O call failed in turn.
 *
 * Each scenario builds an image in memory, runs one operation through a
 * recording io backend, and replays crash states: everything up to a
 * completed flush plus any subset of the writes issued after it (all
 * subsets up to 8 writes, otherwise random ones), and single writes torn at
 * 512-byte sectors. The judge, for every distinct state:
 *  - qimg check and `qemu-img check` find no corruption (no leaks either
 *    for snapshot operations, which commit with one header-sector write);
 *  - the active disk reads entirely as before or entirely as after;
 *    snapshots read as they must (the one being created exists complete or
 *    not at all, the one being deleted is intact or gone, others unchanged);
 *  - after `check -r leaks` both tools find the image clean;
 *  - the next guest writes (to every cluster the active tables would
 *    write in place) leave every snapshot as it was and the image free
 *    of corruption.
 * The fault sweep fails the N-th read, write, flush, discard or truncate
 * (EIO, and ENOSPC for writes and truncates) for N = 1, 2, ... and checks
 * the error is reported, nothing is corrupted, a refused operation that
 * wrote nothing left the file byte-identical, and a retry succeeds.
 * The refusals run operations the library must refuse with no fault at
 * all (missing or clashing snapshots, damaged snapshot tables, refcounts
 * already at their maximum, read-only images, bad requests) and check the
 * errno, the message, that nothing was written, discarded or truncated
 * (but the corrupt bit where QEMU sets it) and that the file is
 * byte-identical.
 *
 * usage: crash_sim [states|faults|mallocs|refusals] [scale [stride]]
 *   scale multiplies the random and torn states; stride N runs each
 *   operation on every N-th image variant (rotating per operation).
 *   Seed from CRASH_SEED; CRASH_ONLY=substring selects scenarios.
 */
#include "crash.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <malloc.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <spawn.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

extern char **environ;
static posix_spawn_file_actions_t spawn_actions;

#define MAX_SNAPS 8

enum kind {
    K_GUEST,
    K_CREATE_SNAP,
    K_APPLY,
    K_DELETE,
    K_REPAIR,
    K_CREATE,
    K_EMPTY,  /* qimg_image_make_empty: old disk, or all unallocated */
    K_BACKING, /* qimg_image_set_backing: the old name or the new, whole */
    K_RESIZE,  /* qimg_image_resize: the old disk or the new, snapshots kept */
    K_AMEND,   /* qimg_image_amend: the old format or the new, whole */
    K_RENAME,  /* qimg_snapshot_rename: the old name or the new */
    K_BITMAP,  /* qimg_bitmap_change: the old bitmaps or the new, whole */
    K_COMPACT  /* qimg_image_compact: every disk as it was */
};

struct scenario {
    const char *name;
    enum kind kind;
    uint32_t cluster_size, refcount_bits;
    int compat;
    bool extended_l2;
    uint64_t size;
    void (*setup)(qimg_image *img);
    int (*op)(qimg_image *img);
    const char *target; /* snapshot ID the operation names; for a create,
                           "metadata" preallocates */
    bool failed_write;  /* judging the result of a failed guest write */
};

/* A persistent bitmap as a crash state must keep it: its bits only count
 * while it is not in use. */
#define MAX_BMS 4
struct bm_state {
    char name[16];
    uint32_t flags;
    unsigned gran;
    uint64_t sig; /* hash of the bits (0 in use) */
};

/* A disk that equals one of the reference disks it was read against
 * points at that disk's bytes (own false) instead of a copy. */
struct image_state {
    bool valid;
    uint64_t size;
    const uint8_t *active;
    bool own_active;
    int nb;
    char id[MAX_SNAPS][32];
    uint64_t ssize[MAX_SNAPS];
    const uint8_t *sdata[MAX_SNAPS];
    bool own[MAX_SNAPS];
    int nbm;
    bool bm_bad; /* the directory or a table could not be read */
    struct bm_state bm[MAX_BMS];
};

static unsigned long long seed = 1;
static unsigned scale = 1;
static unsigned stride = 1; /* every stride-th variant of each operation */
static unsigned long states_total, failures;

static void failf(const struct scenario *sc, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void failf(const struct scenario *sc, const char *fmt, ...)
{
    va_list ap;

    fprintf(stderr, "FAIL [%s] (seed %llu): ", sc->name, seed);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " [%s]\n", qimg_last_error()->message);
    failures++;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static uint64_t rnd(void)
{
    static uint64_t x = 0;

    if (!x)
        x = seed * 2654435761ull + 88172645463325252ull;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return x;
}

/* ---- Images from bytes --------------------------------------------------- */

static int open_bytes(qimg_image **img, const struct bytes *b, bool rw,
                      bool for_check, const char *snapshot)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_io io;

    if ((rw ? io_mem_open(&io, b->data, b->len) : io_view_open(&io, b)) < 0)
        return -ENOMEM;
    o.fmt = QIMG_FMT_QCOW2;
    o.read_write = rw;
    o.for_check = for_check;
    o.snapshot = snapshot;
    return image_open_io(img, &io, "crash", &o, 0);
}

/* Disk buffers are recycled: every crash state reads several disks of
 * megabytes, and fresh ones (page faults; mmap and munmap under ASan)
 * cost more than the reading. */
#define NDISKBUF 24

static struct {
    uint8_t *p;
    uint64_t size;
} diskbuf[NDISKBUF];

static uint8_t *disk_alloc(uint64_t size)
{
    uint8_t *p;

    for (int i = 0; i < NDISKBUF; i++)
        if (diskbuf[i].p && diskbuf[i].size == size) {
            p = diskbuf[i].p;
            diskbuf[i].p = NULL;
            return p;
        }
    p = malloc(size ? size : 1);
    if (!p)
        abort();
    return p;
}

static void disk_free(const uint8_t *p, uint64_t size)
{
    int slot = -1;

    if (!p)
        return;
    for (int i = 0; i < NDISKBUF && slot < 0; i++)
        if (!diskbuf[i].p)
            slot = i;
    if (slot < 0) {
        free((void *)p);
        return;
    }
    diskbuf[slot].p = (uint8_t *)p;
    diskbuf[slot].size = size;
}

static void disk_pool_free(void)
{
    for (int i = 0; i < NDISKBUF; i++) {
        free(diskbuf[i].p);
        diskbuf[i].p = NULL;
    }
}

static void state_free(struct image_state *s)
{
    if (s->own_active)
        disk_free(s->active, s->size);
    for (int i = 0; i < s->nb; i++)
        if (s->own[i])
            disk_free(s->sdata[i], s->ssize[i]);
    memset(s, 0, sizeof *s);
}

static int find_snap(const struct image_state *s, const char *id);

/* Read a disk of img. It is compared, a chunk at a time while the chunk
 * is in the cache, with each candidate disk of its size: if it equals
 * one, *out points at that one's bytes; otherwise at an owned copy. (Most
 * crash states read disks equal to those before or after the operation:
 * reading them whole and comparing them afterwards cost most of a state's
 * time.) */
#define READ_CHUNK (256u << 10)
#define MAX_CAND (2 * (MAX_SNAPS + 1))

static int read_disk(qimg_image *img, uint64_t size,
                     const uint8_t *const *cand, int nc,
                     const uint8_t **out, bool *own)
{
    static uint8_t chunk[READ_CHUNK];
    bool alive[MAX_CAND];
    int nalive = 0, ret = 0;
    uint8_t *p;

    for (int k = 0; k < nc; k++) {
        alive[k] = cand[k] != NULL;
        for (int j = 0; j < k && alive[k]; j++)
            alive[k] = cand[j] != cand[k]; /* the same disk twice */
        nalive += alive[k];
    }
    for (uint64_t off = 0; off < size && nalive && ret == 0;
         off += READ_CHUNK) {
        size_t n = (size_t)MIN(READ_CHUNK, size - off);
        ret = qimg_image_read(img, chunk, n, off);
        for (int k = 0; k < nc && ret == 0; k++)
            if (alive[k] && memcmp(chunk, cand[k] + off, n)) {
                alive[k] = false;
                nalive--;
            }
    }
    for (int k = 0; k < nc && ret == 0; k++)
        if (alive[k]) {
            *out = cand[k];
            *own = false;
            return 0;
        }
    p = disk_alloc(size);
    *out = p;
    *own = true;
    return ret < 0 ? ret : qimg_image_read(img, p, size, 0);
}

static uint64_t hash_mem(const uint8_t *d, size_t len)
{
    uint64_t h = 1469598103934665603ull ^ len;

    for (size_t i = 0; i < len; i++)
        h = (h ^ d[i]) * 1099511628211ull;
    return h | 1;
}

static void capture_bitmaps(qimg_image *img, struct image_state *s)
{
    struct bitmap_set set = {0};

    if (bitmap_set_load(img, &set) < 0) {
        s->bm_bad = true;
        qimg_error_clear();
        return;
    }
    for (size_t i = 0; i < set.n && i < MAX_BMS; i++) {
        struct bitmap_entry *b = &set.b[i];
        struct bm_state *m = &s->bm[i];
        snprintf(m->name, sizeof m->name, "%s", b->name);
        m->flags = b->flags;
        m->gran = b->granularity_bits;
        if (b->flags & BME_FLAG_IN_USE)
            continue;
        if (bitmap_bits_load(img, b) < 0) {
            s->bm_bad = true;
            qimg_error_clear();
        } else {
            m->sig = hash_mem(b->bits,
                              (size_t)b->table_size * img->q->cluster_size);
        }
    }
    s->nbm = (int)MIN(set.n, MAX_BMS);
    bitmap_set_free(&set);
}

/* Everything a guest can see: every snapshot, and the active disk unless
 * only the snapshots matter (then s->active stays NULL). Disks are read
 * against the disks of the same name in refs (the active disk also
 * against their snapshots: an apply makes it one). */
static int capture_ex(const struct bytes *b, struct image_state *s,
                      bool active, const struct image_state *const *refs,
                      int nrefs)
{
    const uint8_t *cand[MAX_CAND] = {0};
    struct qimg_snapshot *l = NULL;
    qimg_image *img;
    size_t n = 0;
    int ret, nc = 0;

    memset(s, 0, sizeof *s);
    ret = open_bytes(&img, b, false, false, NULL);
    if (ret < 0)
        return ret;
    s->size = qimg_image_size(img);
    for (int k = 0; active && k < nrefs; k++) {
        if (refs[k]->active && refs[k]->size == s->size && nc < MAX_CAND)
            cand[nc++] = refs[k]->active;
        for (int j = 0; j < refs[k]->nb; j++)
            if (refs[k]->ssize[j] == s->size && nc < MAX_CAND)
                cand[nc++] = refs[k]->sdata[j];
    }
    if (active)
        ret = read_disk(img, s->size, cand, nc, &s->active, &s->own_active);
    if (ret == 0)
        ret = qimg_snapshot_list(&l, &n, img);
    if (ret == 0)
        capture_bitmaps(img, s);
    qimg_image_close(img);
    for (size_t i = 0; ret == 0 && i < n && i < MAX_SNAPS; i++) {
        qimg_image *v;
        snprintf(s->id[i], sizeof s->id[i], "%s", l[i].id);
        ret = open_bytes(&v, b, false, false, l[i].id);
        if (ret < 0)
            break;
        s->ssize[i] = qimg_image_size(v);
        nc = 0;
        for (int k = 0; k < nrefs; k++) {
            int j = find_snap(refs[k], s->id[i]);
            if (j >= 0 && refs[k]->ssize[j] == s->ssize[i] && nc < MAX_CAND)
                cand[nc++] = refs[k]->sdata[j];
        }
        ret = read_disk(v, s->ssize[i], cand, nc, &s->sdata[i], &s->own[i]);
        qimg_image_close(v);
        s->nb = (int)i + 1;
    }
    qimg_snapshot_list_free(l, n);
    s->valid = ret == 0;
    return ret;
}

/* Everything a guest can see, read against one reference state (or
 * none: ref NULL). */
static int capture(const struct bytes *b, struct image_state *s,
                   const struct image_state *ref)
{
    return capture_ex(b, s, true, &ref, ref ? 1 : 0);
}

static int find_snap(const struct image_state *s, const char *id)
{
    for (int i = 0; i < s->nb; i++)
        if (!strcmp(s->id[i], id))
            return i;
    return -1;
}

static bool same_disk(uint64_t sa, const uint8_t *a, uint64_t sb,
                      const uint8_t *b)
{
    return sa == sb && (a == b || !memcmp(a, b, sa));
}

static bool snap_equal(const struct image_state *x, int i,
                       const struct image_state *y, int j)
{
    return same_disk(x->ssize[i], x->sdata[i], y->ssize[j], y->sdata[j]);
}

/* ---- The judge -------------------------------------------------------------- */

static int qimg_check_bytes(const struct bytes *b, int64_t *corr,
                            int64_t *leaks)
{
    struct qimg_check_result *r = NULL;
    qimg_image *img;
    int ret = open_bytes(&img, b, false, true, NULL);

    if (ret < 0)
        return ret;
    ret = qimg_image_check(&r, img, 0);
    if (ret == 0 && r->check_errors)
        ret = -EIO;
    if (r) {
        *corr = r->corruptions;
        *leaks = r->leaks;
    }
    qimg_check_result_free(r);
    qimg_image_close(img);
    return ret;
}

/* `qemu-img check` runs in the background, a few at a time, each on its
 * own sparse file in /dev/shm; failures are reported when reaped. */
#define NPOOL 3

struct pending {
    pid_t pid;
    char path[64];
    const struct scenario *sc;
    bool leaks_ok;
    char what[48];
};

static struct pending pool[NPOOL];
static char tmpdir[32];

static int write_sparse(const char *path, const struct bytes *b)
{
    static const uint8_t zero[4096];
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    if (fd < 0 || ftruncate(fd, (off_t)b->len) < 0) {
        if (fd >= 0)
            close(fd);
        return -1;
    }
    /* Only the 4 KiB blocks holding something are written. */
    for (size_t o = 0; o < b->len; o += 4096) {
        size_t n = b->len - o < 4096 ? b->len - o : 4096;
        if (memcmp(b->data + o, zero, n) &&
            pwrite(fd, b->data + o, n, (off_t)o) != (ssize_t)n) {
            close(fd);
            return -1;
        }
    }
    return close(fd);
}

static void reap(struct pending *p, int st)
{
    int rc = WIFEXITED(st) ? WEXITSTATUS(st) : -1;

    if (rc != 0 && !(rc == 3 && p->leaks_ok))
        failf(p->sc, "qemu-img check exit %d (%s)", rc, p->what);
    p->pid = 0;
}

static struct pending *wait_one(void)
{
    int st;
    pid_t pid = waitpid(-1, &st, 0);

    for (int i = 0; i < NPOOL; i++)
        if (pool[i].pid && pool[i].pid == pid) {
            reap(&pool[i], st);
            return &pool[i];
        }
    return NULL;
}

/* Wait for every background check (before a scenario goes away). */
static void drain(void)
{
    for (int i = 0; i < NPOOL; i++)
        if (pool[i].pid) {
            int st;
            if (waitpid(pool[i].pid, &st, 0) == pool[i].pid)
                reap(&pool[i], st);
        }
}

static void qemu_check_async(const struct scenario *sc, const struct bytes *b,
                             bool leaks_ok, const char *what)
{
    struct pending *p = NULL;
    char *argv[] = {"qemu-img", "check", "-q", "-f", "qcow2", NULL, NULL};

    for (int i = 0; i < NPOOL && !p; i++)
        if (!pool[i].pid)
            p = &pool[i];
    while (!p)
        p = wait_one();
    snprintf(p->path, sizeof p->path, "%s/state%d.qcow2", tmpdir,
             (int)(p - pool));
    if (write_sparse(p->path, b) < 0) {
        failf(sc, "cannot write %s", p->path);
        return;
    }
    argv[5] = p->path;
    p->sc = sc;
    p->leaks_ok = leaks_ok;
    snprintf(p->what, sizeof p->what, "%s", what);
    if (posix_spawnp(&p->pid, "qemu-img", &spawn_actions, NULL, argv,
                     environ) != 0) {
        p->pid = 0;
        failf(sc, "cannot run qemu-img");
    }
}

/* Repair leaks with qimg, then both tools must call the image clean. */
static void judge_repair(const struct scenario *sc, const struct bytes *b)
{
    struct qimg_check_result *r = NULL;
    struct bytes fixed = {0};
    struct qimg_io io;
    qimg_image *img;
    int64_t corr = 0, leaks = 0;
    size_t len;

    if (io_mem_open(&io, b->data, b->len) < 0)
        return;
    {
        struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
        o.fmt = QIMG_FMT_QCOW2;
        o.read_write = true;
        o.for_check = true;
        if (image_open_io(&img, &io, "crash", &o, 0) < 0) {
            failf(sc, "cannot open for repair");
            return;
        }
    }
    if (qimg_image_check(&r, img, QIMG_CHECK_FIX_LEAKS) < 0)
        failf(sc, "check -r leaks failed");
    qimg_check_result_free(r);
    qimg_image_flush(img);
    {
        const uint8_t *d = io_mem_data(&img->io, &len);
        bytes_set(&fixed, d, len);
    }
    qimg_image_close(img);
    if (qimg_check_bytes(&fixed, &corr, &leaks) < 0 || corr || leaks)
        failf(sc, "not clean after check -r leaks (%lld corruptions, %lld "
                  "leaks)",
              (long long)corr, (long long)leaks);
    else
        qemu_check_async(sc, &fixed, false, "after qimg check -r leaks");
    bytes_free(&fixed);
}

/* A repair interrupted anywhere: a second `check -r all` must leave an
 * image both tools call clean, with every guest byte as before. */
static void judge_rerepair(const struct scenario *sc, const struct bytes *b,
                           const struct image_state *before)
{
    struct qimg_check_result *r = NULL;
    struct bytes fixed = {0};
    struct image_state s;
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_io io;
    qimg_image *img;
    int64_t corr = 0, leaks = 0;
    size_t len;

    if (io_mem_open(&io, b->data, b->len) < 0)
        return;
    o.fmt = QIMG_FMT_QCOW2;
    o.read_write = true;
    o.for_check = true;
    if (image_open_io(&img, &io, "crash", &o, 0) < 0) {
        failf(sc, "cannot open for the second repair");
        return;
    }
    if (qimg_image_check(&r, img, QIMG_CHECK_FIX_ERRORS) < 0)
        failf(sc, "second check -r all failed");
    qimg_check_result_free(r);
    qimg_image_flush(img);
    {
        const uint8_t *d = io_mem_data(&img->io, &len);
        bytes_set(&fixed, d, len);
    }
    qimg_image_close(img);
    if (qimg_check_bytes(&fixed, &corr, &leaks) < 0 || corr || leaks)
        failf(sc, "second repair left %lld corruptions, %lld leaks",
              (long long)corr, (long long)leaks);
    else
        qemu_check_async(sc, &fixed, false, "after a second repair");
    if (capture(&fixed, &s, before) == 0) {
        if (!same_disk(s.size, s.active, before->size, before->active) ||
            s.nb != before->nb)
            failf(sc, "repair changed guest data");
        for (int i = 0; i < s.nb && i < before->nb; i++)
            if (!snap_equal(&s, i, before, i))
                failf(sc, "repair changed snapshot %s", s.id[i]);
        state_free(&s);
    }
    bytes_free(&fixed);
}

/* Write 0xee over every guest cluster the active L2 tables mark COPIED
 * (written in place: the ones a wrong flag would let a write corrupt). */
static int write_copied_clusters(qimg_image *img, uint8_t *buf)
{
    struct qcow2 *q = img->q;
    uint8_t *l2 = malloc(q->cluster_size);
    int ret = l2 ? 0 : -ENOMEM;

    memset(buf, 0xee, q->cluster_size);
    for (uint32_t i = 0; i < q->l1s->l1_size && ret == 0; i++) {
        uint64_t l2_off = l1_entry_get(q->l1s->l1, i) & L1E_OFFSET_MASK;
        if (!l2_off)
            continue;
        ret = file_pread(img, l2, q->cluster_size, l2_off);
        for (uint64_t j = 0; j < q->l2_entries && ret == 0; j++) {
            uint64_t e = l2_entry_get(q, l2, j);
            uint64_t g = (((uint64_t)i << q->l2_bits) + j) << q->cluster_bits;
            if (!(e & QCOW_OFLAG_COPIED) || (e & QCOW_OFLAG_COMPRESSED) ||
                g >= img->size)
                continue;
            ret = qimg_image_write(img, buf,
                                   MIN(q->cluster_size, img->size - g), g);
        }
    }
    free(l2);
    return ret;
}

/* The next guest write after the crash (QEMU 7.2 has an apply crash state
 * where it lands in a snapshot's clusters): every cluster written in place
 * is rewritten through qimg; every snapshot must read as in the crash
 * state and the image must stay free of corruption. */
static void judge_next_write(const struct scenario *sc, const struct bytes *b,
                             const struct image_state *s)
{
    struct bytes after = {0};
    struct image_state t;
    qimg_image *img;
    int64_t corr = 0, leaks = 0;
    uint8_t *buf;
    size_t len;
    int ret;

    if (open_bytes(&img, b, true, false, NULL) < 0) {
        failf(sc, "cannot open for the next write");
        return;
    }
    buf = malloc(img->q->cluster_size);
    ret = buf ? write_copied_clusters(img, buf) : -ENOMEM;
    if (ret == 0)
        ret = qimg_image_flush(img);
    if (ret == 0) {
        const uint8_t *d = io_mem_data(&img->io, &len);
        bytes_set(&after, d, len);
    }
    qimg_image_close(img);
    free(buf);
    if (ret < 0) {
        failf(sc, "the next guest write failed");
    } else if (qimg_check_bytes(&after, &corr, &leaks) < 0 || corr) {
        failf(sc, "the next guest write left %lld corruptions",
              (long long)corr);
    } else if (capture_ex(&after, &t, false, &s, 1) == 0) {
        if (t.nb != s->nb)
            failf(sc, "the next guest write changed the snapshot table");
        for (int i = 0; i < t.nb && i < s->nb; i++)
            if (!snap_equal(&t, i, s, i))
                failf(sc, "the next guest write changed snapshot %s",
                      s->id[i]);
        state_free(&t);
    } else {
        failf(sc, "cannot read the image after the next write");
    }
    bytes_free(&after);
}

static bool snapshots_ok(const struct scenario *sc, const struct image_state *s,
                         const struct image_state *before,
                         const struct image_state *after)
{
    /* Every snapshot that existed before and is not the target: same. */
    for (int i = 0; i < before->nb; i++) {
        int j = find_snap(s, before->id[i]);
        bool is_target = sc->target && !strcmp(before->id[i], sc->target);
        if (j < 0 && is_target && sc->kind == K_DELETE)
            continue; /* deleted */
        if (j < 0 || !snap_equal(before, i, s, j))
            return false;
    }
    /* A snapshot being created exists complete or not at all. */
    for (int j = 0; j < s->nb; j++) {
        int a = find_snap(after, s->id[j]);
        if (find_snap(before, s->id[j]) >= 0)
            continue;
        if (sc->kind != K_CREATE_SNAP || a < 0 || !snap_equal(after, a, s, j))
            return false;
    }
    return true;
}

/* The header names no backing file (as before) or exactly the new one
 * with its format, never a mix or a torn name. */
static void judge_backing(const struct scenario *sc, const struct bytes *b)
{
    struct qimg_info *info = NULL;
    qimg_image *img;

    if (open_bytes(&img, b, false, false, NULL) < 0 ||
        qimg_image_info(&info, img) < 0) {
        failf(sc, "cannot read the header");
        return;
    }
    if (info->backing_file &&
        (strcmp(info->backing_file, sc->target) || !info->backing_fmt ||
         strcmp(info->backing_fmt, "raw")))
        failf(sc, "the header names '%s' (%s)", info->backing_file,
              info->backing_fmt ? info->backing_fmt : "no format");
    else if (!info->backing_file && info->backing_fmt)
        failf(sc, "a backing format without a backing file");
    qimg_info_free(info);
    qimg_image_close(img);
}

/* Snapshot 1 is named "one" (before) or "renamed" (after), never a mix;
 * the others keep their names. */
static void judge_rename(const struct scenario *sc, const struct bytes *b)
{
    struct qimg_snapshot *l = NULL;
    qimg_image *img;
    size_t n = 0;

    if (open_bytes(&img, b, false, false, NULL) < 0 ||
        qimg_snapshot_list(&l, &n, img) < 0) {
        failf(sc, "cannot read the snapshot table");
        return;
    }
    for (size_t i = 0; i < n; i++)
        if (!strcmp(l[i].id, "1") ? strcmp(l[i].name, "one") &&
                                        strcmp(l[i].name, "renamed")
                                  : !strcmp(l[i].name, "renamed"))
            failf(sc, "snapshot %s is named '%s'", l[i].id, l[i].name);
    qimg_snapshot_list_free(l, n);
    qimg_image_close(img);
}

/* The format of an amend's target (sc->target "width": the refcount width
 * and lazy refcounts; "compat": the version, at 16-bit refcounts). */
static void amend_target(const struct scenario *sc, int *version,
                         uint32_t *bits, bool *lazy)
{
    bool width = !strcmp(sc->target, "width");

    *version = width ? sc->compat : sc->compat == 3 ? 2 : 3;
    *bits = width && sc->refcount_bits == 16 ? 4 : 16;
    *lazy = width;
}

/* The header holds the old format or the new, never a mix. */
static void judge_format(const struct scenario *sc, const struct bytes *b)
{
    struct qimg_info *info = NULL;
    qimg_image *img;
    uint32_t bits;
    int version;
    bool lazy;

    if (open_bytes(&img, b, false, false, NULL) < 0 ||
        qimg_image_info(&info, img) < 0) {
        failf(sc, "cannot read the header");
        return;
    }
    amend_target(sc, &version, &bits, &lazy);
    if (!(info->version == sc->compat &&
          info->refcount_bits == sc->refcount_bits && !info->lazy_refcounts) &&
        !(info->version == version && info->refcount_bits == bits &&
          info->lazy_refcounts == lazy))
        failf(sc, "format v%d, %u-bit refcounts, lazy %d: neither old nor new",
              info->version, info->refcount_bits, info->lazy_refcounts);
    qimg_info_free(info);
    qimg_image_close(img);
}

static bool bm_same(const struct bm_state *x, const struct bm_state *y)
{
    return !strcmp(x->name, y->name) && x->flags == y->flags &&
           x->gran == y->gran && x->sig == y->sig;
}

static bool bms_same(const struct image_state *x, const struct image_state *y)
{
    if (x->nbm != y->nbm)
        return false;
    for (int i = 0; i < x->nbm; i++)
        if (!bm_same(&x->bm[i], &y->bm[i]))
            return false;
    return true;
}

/* The bitmaps are the old ones or the new ones; after a guest write each
 * enabled one may also be the old one marked in use (the write began,
 * the close did not store it). */
static bool bitmaps_ok(const struct scenario *sc, const struct image_state *s,
                       const struct image_state *before,
                       const struct image_state *after)
{
    if (s->bm_bad)
        return false;
    if (bms_same(s, before) || bms_same(s, after))
        return true;
    if (sc->kind != K_GUEST || s->nbm != before->nbm)
        return false;
    for (int i = 0; i < s->nbm; i++) {
        const struct bm_state *x = &s->bm[i], *o = &before->bm[i];
        bool marked = !strcmp(x->name, o->name) && x->gran == o->gran &&
                      (o->flags & BME_FLAG_AUTO) &&
                      x->flags == (o->flags | BME_FLAG_IN_USE);
        if (!marked && !bm_same(x, o) &&
            !(i < after->nbm && bm_same(x, &after->bm[i])))
            return false;
    }
    return true;
}

static void judge(const struct scenario *sc, const struct bytes *b,
                  const struct image_state *before,
                  const struct image_state *after)
{
    struct image_state s;
    /* A crash in the middle of an image create may leak too: the image
     * was not there before. */
    bool leaks_ok = sc->kind == K_GUEST || sc->kind == K_REPAIR ||
                    sc->kind == K_CREATE;
    int64_t corr = 0, leaks = 0;

    states_total++;
    if (sc->kind == K_REPAIR) {
        judge_rerepair(sc, b, before);
        return;
    }
    if (qimg_check_bytes(b, &corr, &leaks) < 0) {
        if (sc->kind == K_CREATE)
            return; /* a half-created file need not open at all */
        failf(sc, "qimg check could not run");
        return;
    }
    if (corr || (leaks && !leaks_ok)) {
        failf(sc, "qimg check: %lld corruptions, %lld leaks", (long long)corr,
              (long long)leaks);
        return;
    }
    qemu_check_async(sc, b, leaks_ok, "crash state");
    if (capture_ex(b, &s, true, (const struct image_state *[]){before, after},
                   2) < 0) {
        failf(sc, "cannot read the image");
        return;
    }
    if (sc->kind == K_CREATE) {
        for (uint64_t i = 0; i < s.size; i++)
            if (s.active[i])
                failf(sc, "created image not zero");
    } else if (sc->kind == K_APPLY) {
        int t = find_snap(before, sc->target);
        if (!same_disk(s.size, s.active, before->size, before->active) &&
            !same_disk(s.size, s.active, before->ssize[t], before->sdata[t]))
            failf(sc, "active disk is neither the old one nor the snapshot");
    } else if (!same_disk(s.size, s.active, before->size, before->active) &&
               !same_disk(s.size, s.active, after->size, after->active) &&
               !(sc->kind == K_GUEST && sc->failed_write)) {
        /* (A guest write that failed may have landed in part, as on any
         * disk; only a crash must not tear it.) */
        failf(sc, "active disk is neither entirely old nor entirely new");
    }
    if (sc->kind == K_BACKING)
        judge_backing(sc, b);
    if (sc->kind == K_AMEND)
        judge_format(sc, b);
    if (sc->kind == K_RENAME)
        judge_rename(sc, b);
    if (sc->kind != K_CREATE && !bitmaps_ok(sc, &s, before, after))
        failf(sc, "bitmaps are neither the old ones nor the new ones");
    if (sc->kind != K_CREATE && !snapshots_ok(sc, &s, before, after))
        failf(sc, "snapshots differ from what they must be");
    else if (sc->kind != K_CREATE && s.nb)
        judge_next_write(sc, b, &s);
    if (leaks)
        judge_repair(sc, b);
    state_free(&s);
}

/* ---- Crash-state enumeration ----------------------------------------------- */

struct seen {
    uint64_t *h;
    size_t n, cap;
};

static uint64_t hash_bytes(const struct bytes *b)
{
    uint64_t h = 1469598103934665603ull ^ b->len, w;
    size_t i;

    for (i = 0; i + 8 <= b->len; i += 8) {
        memcpy(&w, b->data + i, 8);
        h = (h ^ w) * 0x100000001b3ull;
        h ^= h >> 29;
    }
    for (; i < b->len; i++)
        h = (h ^ b->data[i]) * 1099511628211ull;
    return h;
}

static bool seen_add(struct seen *s, uint64_t h)
{
    for (size_t i = 0; i < s->n; i++)
        if (s->h[i] == h)
            return false;
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 256;
        s->h = realloc(s->h, s->cap * sizeof *s->h);
        if (!s->h)
            abort();
    }
    s->h[s->n++] = h;
    return true;
}

/* One crash state: prefix + the selected ops of the epoch (+ a torn one). */
static void try_state(const struct scenario *sc, const struct bytes *prefix,
                      const struct rec_op *const *ops, size_t n,
                      uint64_t mask, size_t torn, const uint8_t *sectors,
                      struct seen *seen, const struct image_state *before,
                      const struct image_state *after)
{
    struct bytes b = {0};

    bytes_set(&b, prefix->data, prefix->len);
    for (size_t i = 0; i < n; i++) {
        if (i == torn)
            bytes_apply(&b, ops[i], sectors);
        else if (mask & (1ull << i))
            bytes_apply(&b, ops[i], NULL);
    }
    if (seen_add(seen, hash_bytes(&b)))
        judge(sc, &b, before, after);
    bytes_free(&b);
}

/* Torn variants: each multi-sector write of the epoch applied in part,
 * on top of a random subset of the others. */
static void torn_states(const struct scenario *sc, const struct bytes *prefix,
                        const struct rec_op *const *ops, size_t n,
                        struct seen *seen, const struct image_state *before,
                        const struct image_state *after)
{
    for (size_t w = 0; w < n; w++) {
        uint64_t nsec;
        uint8_t *sectors;
        if (ops[w]->kind != REC_WRITE)
            continue;
        nsec = (ops[w]->off + ops[w]->len + 511) / 512 - ops[w]->off / 512;
        if (nsec < 2)
            continue;
        sectors = calloc(nsec / 8 + 1, 1);
        for (unsigned v = 0; v < 16 * scale; v++) {
            uint64_t mask = n >= 64 ? rnd() : rnd() & ((1ull << n) - 1);
            for (uint64_t k = 0; k < nsec; k++)
                sectors[k / 8] = (uint8_t)((sectors[k / 8] & ~(1u << (k % 8))) |
                                           ((v == 0 ? k < nsec / 2
                                                    : rnd() % 2)
                                            << (k % 8)));
            try_state(sc, prefix, ops, n, mask, w, sectors, seen, before,
                      after);
        }
        free(sectors);
    }
}

/* Sector k of op (a write) would change b. */
static bool sector_changes(const struct bytes *b, const struct rec_op *op,
                           uint64_t k)
{
    uint64_t s = op->off / 512 + k;
    uint64_t lo = MAX(s * 512, op->off), hi = MIN((s + 1) * 512,
                                                  op->off + op->len);

    for (uint64_t o = lo; o < hi; o++)
        if (op->data[o - op->off] != (o < b->len ? b->data[o] : 0))
            return true;
    return false;
}

/* Power lost in the middle of a write issued in order: the writes before
 * it landed, and it landed up to a sector boundary. Every boundary between
 * sectors that change something (at most 32 * scale of them, evenly
 * spread, per write). */
static void prefix_tears(const struct scenario *sc, const struct bytes *prefix,
                         const struct rec_op *const *ops, size_t n,
                         struct seen *seen, const struct image_state *before,
                         const struct image_state *after)
{
    struct bytes cur = {0};

    bytes_set(&cur, prefix->data, prefix->len);
    for (size_t w = 0; w < n; w++) {
        uint64_t nsec, *eff, ne = 0, cap = 32 * scale;
        uint8_t *sectors;
        if (ops[w]->kind != REC_WRITE)
            goto next;
        nsec = (ops[w]->off + ops[w]->len + 511) / 512 - ops[w]->off / 512;
        if (nsec < 2)
            goto next;
        eff = malloc(nsec * sizeof *eff);
        sectors = calloc(nsec / 8 + 1, 1);
        if (!eff || !sectors)
            abort();
        for (uint64_t k = 0; k < nsec; k++)
            if (sector_changes(&cur, ops[w], k))
                eff[ne++] = k;
        /* A tear after the last changing sector is the whole write. */
        for (uint64_t j = 0; j + 1 < ne; j++) {
            uint64_t pick = ne - 1 <= cap ? j : j * (ne - 1) / cap, last;
            if (ne - 1 > cap && j >= cap)
                break;
            last = eff[pick];
            memset(sectors, 0, nsec / 8 + 1);
            for (uint64_t k = 0; k <= last; k++)
                sectors[k / 8] |= (uint8_t)(1u << (k % 8));
            try_state(sc, prefix, ops, n, (1ull << w) - 1, w, sectors, seen,
                      before, after);
        }
        free(eff);
        free(sectors);
    next:
        bytes_apply(&cur, ops[w], NULL);
    }
    bytes_free(&cur);
}

static void replay(const struct scenario *sc, const struct bytes *base,
                   const struct rec *r, const struct image_state *before,
                   const struct image_state *after, struct seen *seen)
{
    struct bytes prefix = {0};
    const struct rec_op **ep = malloc((r->nb_ops + 1) * sizeof *ep);
    size_t i = 0;

    bytes_set(&prefix, base->data, base->len);
    while (i <= r->nb_ops) {
        size_t n = 0;
        for (; i < r->nb_ops && r->ops[i].kind != REC_FLUSH; i++)
            ep[n++] = &r->ops[i];
        if (n <= 8) {
            for (uint64_t m = 0; m < (1ull << n); m++)
                try_state(sc, &prefix, ep, n, m, SIZE_MAX, NULL, seen,
                          before, after);
        } else {
            try_state(sc, &prefix, ep, n, 0, SIZE_MAX, NULL, seen, before,
                      after);
            try_state(sc, &prefix, ep, n, ~0ull, SIZE_MAX, NULL, seen,
                      before, after);
            for (unsigned k = 0; k < 500 * scale; k++)
                try_state(sc, &prefix, ep, n > 64 ? 64 : n, rnd(), SIZE_MAX,
                          NULL, seen, before, after);
        }
        torn_states(sc, &prefix, ep, n > 64 ? 64 : n, seen, before, after);
        prefix_tears(sc, &prefix, ep, n > 64 ? 64 : n, seen, before, after);
        for (size_t k = 0; k < n; k++)
            bytes_apply(&prefix, ep[k], NULL);
        i++; /* past the flush */
    }
    free(ep);
    bytes_free(&prefix);
}

/* ---- Scenarios ---------------------------------------------------------------- */

static void fill(qimg_image *img, uint64_t off, uint64_t len, uint8_t v)
{
    uint8_t *b = malloc(len);

    memset(b, v, len);
    if (qimg_image_write(img, b, len, off) < 0)
        abort();
    free(b);
}

static void setup_data(qimg_image *img)
{
    fill(img, 0, 3 * 65536 + 1000, 0x11);
    fill(img, 512 * 1024, 4096, 0x22);
    /* Touch many L2 ranges (512-byte clusters: one per 32 KiB). */
    for (uint64_t o = 1 << 20; o < (3u << 20); o += 96 * 1024)
        fill(img, o, 1024, (uint8_t)(o >> 16));
}

static void setup_snaps(qimg_image *img)
{
    setup_data(img);
    if (qimg_snapshot_create(img, "one") < 0)
        abort();
    fill(img, 0, 70000, 0x33);
    if (qimg_snapshot_create(img, "two") < 0)
        abort();
    fill(img, 100000, 20000, 0x44);
}

/* Four snapshots over data that changes between them: each L2 range is
 * shared by a different set of trees, with refcounts from 1 to 5, some
 * clusters only in snapshots (overwritten or unmapped since) and some
 * only in the active disk. */
static void setup_many(qimg_image *img)
{
    setup_snaps(img);
    if (qimg_snapshot_create(img, "three") < 0)
        abort();
    /* Every other touched L2 range of setup_data, in part. */
    for (uint64_t o = (1 << 20) + 48 * 1024; o < (3u << 20); o += 192 * 1024)
        fill(img, o, 512, 0x55);
    if (qimg_image_write_zeroes(img, 512 * 1024, 4096, QIMG_ZERO_UNMAP) < 0)
        abort();
    if (qimg_snapshot_create(img, "four") < 0)
        abort();
    fill(img, 3u << 20, 40 * 1024, 0x66);
    fill(img, 30000, 1000, 0x77);
}

/* Operations allocate nothing themselves: the allocation-failure sweep
 * must only hit the library. */
static uint8_t op_buf[4 << 20];

static void setup_leaky(qimg_image *img)
{
    uint64_t off;

    setup_snaps(img);
    /* Two clusters with a refcount and no reference: leaks to repair.
     * They are written, so the file covers them (neither tool counts
     * leaks past its end). */
    if (refcount_alloc(img, 2, &off) < 0 ||
        file_pwrite(img, op_buf, 2 * img->q->cluster_size, off) < 0 ||
        qcow2_flush(img) < 0)
        abort();
}

static int op_write_alloc(qimg_image *img)
{
    uint8_t b[3000];

    memset(b, 0x5a, sizeof b);
    /* A cluster the setup left unallocated. */
    return qimg_image_write(img, b, sizeof b,
                            qimg_image_size(img) -
                                MAX(2 * img->q->cluster_size, 8192) + 1000);
}

static int op_write_new_l2(qimg_image *img)
{
    uint8_t b[512];

    memset(b, 0x6b, sizeof b);
    return qimg_image_write(img, b, sizeof b, qimg_image_size(img) - 4096);
}

static int op_write_cow(qimg_image *img)
{
    uint8_t b[700];

    /* A cluster shared with both snapshots (an in-place write to a
     * cluster of its own would not be atomic on any disk). */
    memset(b, 0x7c, sizeof b);
    return qimg_image_write(img, b, sizeof b,
                            MAX(512 * 1024, img->q->cluster_size) + 100);
}

/* Guest operations stay within one L2 table, whose entries for the range
 * share one sector: each is then atomic for the guest. */
static void setup_full(qimg_image *img)
{
    /* With 512-byte clusters and 64-bit refcounts one table cluster covers
     * 2 MiB: filling 1.9 MiB brings the next allocations to the edge of
     * refcount block and refcount table growth. */
    fill(img, 0, 1900 * 1024, 0x21);
}


static int op_write_many(qimg_image *img)
{
    memset(op_buf, 0x3d, 20 * 1024);
    return qimg_image_write(img, op_buf, 20 * 1024, 3 << 20);
}

static int op_zero(qimg_image *img)
{
    return qimg_image_write_zeroes(img, 0, 2 * img->q->cluster_size,
                                   QIMG_ZERO_UNMAP);
}

static int op_zero_keep(qimg_image *img)
{
    return qimg_image_write_zeroes(img, img->q->cluster_size,
                                   img->q->cluster_size, 0);
}

static int op_discard(qimg_image *img)
{
    return qimg_image_discard(img, 0, 4 * img->q->cluster_size);
}

static int op_compress(qimg_image *img)
{
    uint32_t cs = img->q->cluster_size;

    for (uint32_t i = 0; i < cs; i++)
        op_buf[i] = (uint8_t)(i / 100);
    return qimg_image_write_compressed(img, op_buf, cs,
                                       qimg_image_size(img) - 3 * cs);
}

static int op_snap_create(qimg_image *img)
{
    return qimg_snapshot_create(img, "new");
}

static int op_snap_apply1(qimg_image *img)
{
    return qimg_snapshot_apply(img, "1");
}

static int op_make_empty(qimg_image *img)
{
    return qimg_image_make_empty(img);
}

/* Backing names of an empty raw file, so the disk reads the same: one
 * that fits in header sector 0, and one that does not (/dev/././...). */
#define SHORT_BACKING "/dev/null"
static char long_backing[5 + 2 * 300 + 5];

/* amend: a new refcount width (16 -> 4, else -> 16) with lazy refcounts;
 * a new version (v3 -> v2 at 16-bit refcounts, v2 -> v3). */
static int op_amend_width(qimg_image *img)
{
    struct qimg_amend_opts o = QIMG_AMEND_OPTS_INIT;

    o.refcount_bits = img->q->refcount_order == 4 ? 4 : 16;
    o.lazy_refcounts = 1;
    return qimg_image_amend(img, &o);
}

static int op_amend_compat(qimg_image *img)
{
    struct qimg_amend_opts o = QIMG_AMEND_OPTS_INIT;

    o.compat = img->q->hdr.version == 3 ? 2 : 3;
    o.refcount_bits = 16;
    return qimg_image_amend(img, &o);
}

static int op_amend_narrow(qimg_image *img)
{
    struct qimg_amend_opts o = QIMG_AMEND_OPTS_INIT;

    o.refcount_bits = 1;
    return qimg_image_amend(img, &o);
}

static int op_amend_lazy(qimg_image *img)
{
    struct qimg_amend_opts o = QIMG_AMEND_OPTS_INIT;

    o.lazy_refcounts = 1;
    return qimg_image_amend(img, &o);
}

/* Persistent bitmaps over the snapshots: an enabled one with set bits,
 * a disabled one, and an empty enabled one at another granularity. */
static void setup_bitmaps(qimg_image *img)
{
    const struct qimg_bitmap_action add[] = {
        {QIMG_BITMAP_ADD, "full", 0, NULL, NULL},
        {QIMG_BITMAP_ADD, "off", 4096, NULL, NULL},
        {QIMG_BITMAP_DISABLE, "off", 0, NULL, NULL},
        {QIMG_BITMAP_ADD, "fine", 512, NULL, NULL},
    };
    const struct qimg_bitmap_action clear = {QIMG_BITMAP_CLEAR, "fine", 0,
                                             NULL, NULL};

    setup_snaps(img);
    if (qimg_bitmap_change(img, add, 4, NULL) < 0)
        abort();
    fill(img, 0, 5000, 0x66);
    fill(img, 2 << 20, 70000, 0x67);
    /* Stores "full" and "fine" with the writes' bits; "fine" empty. */
    if (qimg_bitmap_change(img, &clear, 1, NULL) < 0)
        abort();
}

static int op_bitmap_add_missing(qimg_image *img)
{
    const struct qimg_bitmap_action a[] = {
        {QIMG_BITMAP_ADD, "new", 0, NULL, NULL},
        {QIMG_BITMAP_MERGE, "new", 0, "nope", NULL},
    };

    return qimg_bitmap_change(img, a, 2, NULL);
}

static int op_bitmap_clear_full(qimg_image *img)
{
    const struct qimg_bitmap_action a = {QIMG_BITMAP_CLEAR, "full", 0, NULL,
                                         NULL};

    return qimg_bitmap_change(img, &a, 1, NULL);
}

static int op_bitmap_add_one(qimg_image *img)
{
    const struct qimg_bitmap_action a = {QIMG_BITMAP_ADD, "one", 0, NULL,
                                         NULL};

    return qimg_bitmap_change(img, &a, 1, NULL);
}

/* "full" in use: its flag set in place, as a crash leaves it. */
static void setup_bitmap_in_use(qimg_image *img)
{
    const struct qcow2_header *h;
    uint8_t f[4];

    setup_bitmaps(img);
    h = &img->q->hdr;
    /* "full" is the first entry: flags at byte 12 */
    if (file_pread(img, f, 4, h->bitmap_dir_offset + 12) < 0)
        abort();
    f[3] |= 1;
    if (file_pwrite(img, f, 4, h->bitmap_dir_offset + 12) < 0)
        abort();
}

/* Holes near the start (a deleted snapshot's clusters) and data past
 * them, some of it shared by a snapshot through a shared L2 table (512-
 * byte clusters) or from two tables (larger ones); with `more`, also a
 * compressed cluster and (v3) bitmaps with bits set, stored before the
 * holes were made (so past them). */
static void make_holes(qimg_image *img, bool more)
{
    const struct qimg_bitmap_action add[] = {
        {QIMG_BITMAP_ADD, "b", 512, NULL, NULL},
        {QIMG_BITMAP_ADD, "c", 0, NULL, NULL},
    };
    uint64_t cs = img->q->cluster_size;
    bool bitmaps = more && img->q->hdr.version >= 3;

    fill(img, 0, 16 * cs, 0x11);
    if (qimg_snapshot_create(img, "old") < 0)
        abort();
    fill(img, 0, 16 * cs, 0x12);
    fill(img, 3u << 20, 3 * cs, 0x13);
    if (qimg_snapshot_create(img, "keep") < 0)
        abort();
    fill(img, 1u << 20, cs / 2, 0x14);
    if (bitmaps && qimg_bitmap_change(img, &add[0], 1, NULL) < 0)
        abort();
    if (more && op_compress(img) < 0)
        abort();
    fill(img, 2u << 20, 4096, 0x79);
    /* (Adding "c" stores "b" with the bits of the writes.) */
    if (bitmaps && qimg_bitmap_change(img, &add[1], 1, NULL) < 0)
        abort();
    if (qimg_snapshot_delete(img, "old") < 0)
        abort();
}

static void setup_holes_more(qimg_image *img)
{
    make_holes(img, true);
}

static int op_compact(qimg_image *img)
{
    struct qimg_compact_result r;

    return qimg_image_compact(img, NULL, NULL, &r);
}

static int op_snap_rename_missing(qimg_image *img)
{
    return qimg_snapshot_rename(img, "9", "renamed");
}

static int op_snap_rename(qimg_image *img)
{
    return qimg_snapshot_rename(img, "1", "renamed");
}

/* Every kind of change in one commit. */
static int op_bitmap_change(qimg_image *img)
{
    const struct qimg_bitmap_action a[] = {
        {QIMG_BITMAP_ADD, "new", 0, NULL, NULL},
        {QIMG_BITMAP_MERGE, "new", 0, "full", NULL},
        {QIMG_BITMAP_MERGE, "off", 0, "full", NULL},
        {QIMG_BITMAP_REMOVE, "fine", 0, NULL, NULL},
        {QIMG_BITMAP_CLEAR, "full", 0, NULL, NULL},
        {QIMG_BITMAP_ENABLE, "off", 0, NULL, NULL},
    };

    return qimg_bitmap_change(img, a, 6, NULL);
}

/* A guest write the enabled bitmaps record (stored by the close): one
 * sector, which no power cut tears where it overwrites in place. */
static int op_write_bitmaps(qimg_image *img)
{
    memset(op_buf, 0x68, 512);
    return qimg_image_write(img, op_buf, 512, 3 << 20);
}

static void setup_zeroed(qimg_image *img)
{
    setup_snaps(img);
    uint64_t cs = img->q->cluster_size, keep = (512 * 1024) / cs * cs;

    /* Whole clusters, so that they become zero entries: one unmapped, one
     * keeping its (shared) cluster. */
    if (qimg_image_write_zeroes(img, 0, cs, QIMG_ZERO_UNMAP) < 0 ||
        (keep && qimg_image_write_zeroes(img, keep, cs, 0) < 0))
        abort();
}

/* A v2 snapshot table as QEMU before 1.x wrote it: entries without extra
 * data (v3 wants 16 bytes: an upgrade must rewrite the table). Written
 * over the table in place; the handle is closed after the setup. */
static void setup_old_table(qimg_image *img)
{
    struct qcow2 *q;
    uint8_t *t;
    size_t pos = 0, len;

    setup_snaps(img);
    q = img->q;
    len = (size_t)q->sn->snap_table_size;
    t = calloc(1, len);
    if (!t)
        abort();
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++) {
        const struct snap *sn = &q->sn->snaps[i];
        size_t il = strlen(sn->id), nl = strlen(sn->name);
        be64_store(t + pos, sn->l1_off);
        be32_store(t + pos + 8, sn->l1_size);
        be16_store(t + pos + 12, (uint16_t)il);
        be16_store(t + pos + 14, (uint16_t)nl);
        be32_store(t + pos + 16, sn->date_sec);
        be32_store(t + pos + 20, sn->date_nsec);
        be64_store(t + pos + 24, sn->vm_clock_nsec);
        be32_store(t + pos + 32, sn->vm_state_size32);
        be32_store(t + pos + 36, 0);
        memcpy(t + pos + 40, sn->id, il);
        memcpy(t + pos + 40 + il, sn->name, nl);
        pos = (pos + 40 + il + nl + 7) & ~(size_t)7;
    }
    if (file_pwrite(img, t, len, q->hdr.snapshots_offset) < 0 ||
        file_flush(img) < 0)
        abort();
    free(t);
}

static int op_set_backing_short(qimg_image *img)
{
    return qimg_image_set_backing(img, SHORT_BACKING, "raw");
}

static void init_long_backing(void)
{
    strcpy(long_backing, "/dev/");
    for (int i = 0; i < 300; i++)
        strcat(long_backing, "./");
    strcat(long_backing, "null");
}

static int op_set_backing_long(qimg_image *img)
{
    return qimg_image_set_backing(img, long_backing, "raw");
}

/* Grow past the L2 tables the L1 table names (it grows too); shrink
 * through the data, inside a cluster; grow preallocated, past a cluster
 * boundary. */
static int op_resize_grow(qimg_image *img)
{
    return qimg_image_resize(img, qimg_image_size(img) * 8 + 1536,
                             QIMG_PREALLOC_OFF);
}

static int op_resize_shrink(qimg_image *img)
{
    return qimg_image_resize(img, (1u << 20) + 1536, QIMG_PREALLOC_OFF);
}

static int op_resize_prealloc(qimg_image *img)
{
    struct qimg_info *info = NULL;
    uint64_t cs;

    if (qimg_image_info(&info, img) < 0)
        return -1;
    cs = info->cluster_size;
    qimg_info_free(info);
    /* (Zeros written in full: a few clusters of the largest sizes.) */
    return qimg_image_resize(
        img, qimg_image_size(img) + MAX(2 * cs, MIN(40 * cs, 512u << 10)) + 512,
        QIMG_PREALLOC_FULL);
}

static int op_snap_delete1(qimg_image *img)
{
    return qimg_snapshot_delete(img, "1");
}

static int op_snap_delete2(qimg_image *img)
{
    return qimg_snapshot_delete(img, "2");
}

static int op_snap_apply3(qimg_image *img)
{
    return qimg_snapshot_apply(img, "3");
}

static int op_snap_delete3(qimg_image *img)
{
    return qimg_snapshot_delete(img, "3");
}

static int op_snap_delete_first(qimg_image *img)
{
    return qimg_snapshot_delete(img, "one");
}

/* Write the in-memory snapshot table over the one on disk (it must fit in
 * the clusters the old one has). */
static void rewrite_snaps(qimg_image *img)
{
    struct qcow2 *q = img->q;
    uint8_t *buf;
    uint64_t len;

    if (snap_table_encode(q, q->sn->snaps, q->sn->nb_snaps, &buf, &len) < 0 ||
        len > ALIGN_UP(q->sn->snap_table_size, q->cluster_size) ||
        file_pwrite(img, buf, len, q->hdr.snapshots_offset) < 0 ||
        file_flush(img) < 0)
        abort();
    free(buf);
}

static void setup_resized(qimg_image *img)
{
    setup_snaps(img);
    /* Snapshot 1 claims a bigger disk: applying it grows the image. */
    img->q->sn->snaps[0].disk_size = 12 << 20;
    rewrite_snaps(img);
}

static int op_repair_leaks(qimg_image *img)
{
    struct qimg_check_result *r = NULL;
    int ret = qimg_image_check(&r, img, QIMG_CHECK_FIX_LEAKS);

    if (ret == 0 && r->check_errors)
        ret = qimg_err(EIO, "check had errors");
    qimg_check_result_free(r);
    return ret;
}

static int op_repair_all(qimg_image *img)
{
    struct qimg_check_result *r = NULL;
    int ret = qimg_image_check(&r, img, QIMG_CHECK_FIX_ERRORS);

    if (ret == 0 && r->check_errors)
        ret = qimg_err(EIO, "check had errors");
    qimg_check_result_free(r);
    return ret;
}

static void setup_lowered(qimg_image *img)
{
    struct qimg_extent e;

    setup_snaps(img);
    /* A data cluster's refcount lowered to 0: check -r all rebuilds. The
     * cluster written last (at 100000) is referenced once. */
    if (qimg_image_block_status(img, 100000, 1, &e) < 0 ||
        !(e.flags & QIMG_BS_OFFSET) ||
        refcount_update(img, e.host_off >> img->q->cluster_bits, 1, -1) <
            0 ||
        qcow2_flush(img) < 0)
        abort();
}

struct op_def {
    const char *name;
    enum kind kind;
    void (*setup)(qimg_image *img);
    int (*op)(qimg_image *img);
    const char *target;
    unsigned needs; /* NEED_* */
};

#define NEED_V3 1u       /* zero flag */
#define NEED_REFCOUNT4 2u /* three references per cluster */
#define NEED_STD_L2 4u
/* Clusters of at most 64 KiB: with 2 MiB clusters the disk is 16 MiB and
 * five trees to read make a crash state cost a third of a second. */
#define NEED_SMALL 8u
/* Crash states only: the fault and allocation sweeps of the same
 * operation on setup_snaps already take every error path; what four
 * snapshots add is more orderings of writes. */
#define STATES_ONLY 16u
/* Clusters of 2 KiB or more: a 605-byte backing name goes past sector 0. */
#define NEED_2K 32u
#define NEED_V2 64u       /* an upgrade */
/* Crash states on every other variant (rotating; the stride doubled):
 * the fault and allocation sweeps still take every variant the stride
 * gives. */
#define HALF_STATES 128u

static const struct op_def ops_list[] = {
    {"write-alloc", K_GUEST, setup_data, op_write_alloc, NULL, 0},
    {"write-new-l2", K_GUEST, setup_data, op_write_new_l2, NULL, 0},
    {"write-refblocks", K_GUEST, setup_full, op_write_many, NULL, 0},
    {"write-cow", K_GUEST, setup_snaps, op_write_cow, NULL, NEED_REFCOUNT4},
    {"zero-unmap", K_GUEST, setup_snaps, op_zero, NULL, NEED_REFCOUNT4},
    {"zero-keep", K_GUEST, setup_data, op_zero_keep, NULL, 0},
    {"discard", K_GUEST, setup_snaps, op_discard, NULL,
     NEED_REFCOUNT4 | NEED_V3},
    {"compressed", K_GUEST, setup_data, op_compress, NULL, 0},
    {"snapshot-create", K_CREATE_SNAP, setup_snaps, op_snap_create, NULL,
     NEED_REFCOUNT4},
    {"snapshot-apply", K_APPLY, setup_snaps, op_snap_apply1, "1",
     NEED_REFCOUNT4},
    {"snapshot-apply-resize", K_APPLY, setup_resized, op_snap_apply1, "1",
     NEED_REFCOUNT4 | NEED_V3},
    {"snapshot-delete", K_DELETE, setup_snaps, op_snap_delete1, "1",
     NEED_REFCOUNT4},
    {"snapshot-delete-last", K_DELETE, setup_snaps, op_snap_delete2, "2",
     NEED_REFCOUNT4},
    {"check-r-leaks", K_REPAIR, setup_leaky, op_repair_leaks, NULL,
     NEED_REFCOUNT4},
    {"check-r-all", K_REPAIR, setup_lowered, op_repair_all, NULL,
     NEED_REFCOUNT4 | NEED_STD_L2},
    /* Image create over an empty file (op unused, see exec_op). */
    {"create", K_CREATE, NULL, NULL, NULL, 0},
    {"create-prealloc", K_CREATE, NULL, NULL, "metadata", 0},
    /* Last, so the sanitizer build's sweeps keep their rotation of the
     * operations above over the variants. */
    {"snapshot-create-5th", K_CREATE_SNAP, setup_many, op_snap_create, NULL,
     NEED_REFCOUNT4 | NEED_SMALL | STATES_ONLY},
    {"snapshot-apply-3of4", K_APPLY, setup_many, op_snap_apply3, "3",
     NEED_REFCOUNT4 | NEED_SMALL | STATES_ONLY},
    {"snapshot-delete-3of4", K_DELETE, setup_many, op_snap_delete3, "3",
     NEED_REFCOUNT4 | NEED_SMALL | STATES_ONLY},
    {"snapshot-delete-1of4", K_DELETE, setup_many, op_snap_delete_first, "1",
     NEED_REFCOUNT4 | NEED_SMALL | STATES_ONLY},
    /* commit's last step: the image emptied, its snapshots kept. */
    {"make-empty", K_EMPTY, setup_snaps, op_make_empty, NULL, NEED_REFCOUNT4},
    {"make-empty-no-snapshots", K_EMPTY, setup_data, op_make_empty, NULL, 0},
    /* rebase's header switch (target: the name it must end with). */
    {"set-backing", K_BACKING, setup_snaps, op_set_backing_short,
     SHORT_BACKING, 0},
    {"set-backing-long-name", K_BACKING, setup_data, op_set_backing_long,
     long_backing, NEED_2K},
    /* resize: one header write switches sizes (v2 images with snapshots
     * cannot be resized). */
    /* (Growing the L1 table takes the error paths snapshot-apply-resize
     * takes: crash states only.) */
    {"resize-grow", K_RESIZE, setup_snaps, op_resize_grow, NULL,
     NEED_REFCOUNT4 | NEED_V3 | STATES_ONLY},
    {"resize-shrink", K_RESIZE, setup_snaps, op_resize_shrink, NULL,
     NEED_REFCOUNT4 | NEED_V3},
    {"resize-prealloc", K_RESIZE, setup_data, op_resize_prealloc, NULL, 0},
    /* amend: one header write switches the format, after a new refcount
     * structure is written past the end of the file. */
    {"amend-refcount-width", K_AMEND, setup_snaps, op_amend_width, "width",
     NEED_REFCOUNT4 | NEED_V3},
    {"amend-compat", K_AMEND, setup_snaps, op_amend_compat, "compat",
     NEED_REFCOUNT4 | NEED_STD_L2},
    /* A downgrade rewrites zero clusters (tables, L1 tables, snapshot
     * table and refcounts new past the end). */
    {"amend-compat-zero", K_AMEND, setup_zeroed, op_amend_compat, "compat",
     NEED_REFCOUNT4 | NEED_STD_L2 | NEED_V3},
    /* An upgrade that first rewrites a snapshot table without extra data
     * (itself atomic), then switches the header. */
    {"amend-upgrade-old-table", K_AMEND, setup_old_table, op_amend_compat,
     "compat", NEED_V2},
    /* A new snapshot table with one name changed, switched in. */
    {"snapshot-rename", K_RENAME, setup_snaps, op_snap_rename, NULL, 0},
    /* Bitmaps: a new directory, tables and data switched with the header. */
    {"bitmap-change", K_BITMAP, setup_bitmaps, op_bitmap_change, NULL,
     NEED_V3 | NEED_SMALL},
    {"write-bitmaps", K_GUEST, setup_bitmaps, op_write_bitmaps, NULL,
     NEED_V3 | NEED_SMALL},
    {"resize-bitmaps", K_RESIZE, setup_bitmaps, op_resize_shrink, NULL,
     NEED_REFCOUNT4 | NEED_V3 | NEED_SMALL},
    /* compact: data (compressed too), tables and refcounts moved into
     * holes below a bitmap, one header write, then the tail cut
     * (advisory). */
    {"compact", K_COMPACT, setup_holes_more, op_compact, NULL,
     NEED_REFCOUNT4 | NEED_SMALL | HALF_STATES},
};

struct variant {
    const char *name;
    uint32_t cluster_size, refcount_bits;
    int compat;
    bool extended_l2;
};

static const struct variant variants[] = {
    {"64k", 65536, 16, 3, false},
    {"512-rb64", 512, 64, 3, false},
    {"4k-v2", 4096, 16, 2, false},
    {"16k-extl2-rb8", 16384, 8, 3, true},
    {"64k-rb2", 65536, 2, 3, false},
    {"512", 512, 16, 3, false},
    {"2m-rb32", 2 << 20, 32, 3, false},
    {"4k-rb4", 4096, 4, 3, false},
    {"1k", 1024, 16, 3, false},
    {"32k-extl2-rb64", 32768, 64, 3, true},
    {"2k-rb32", 2048, 32, 3, false},
    {"8k-v2", 8192, 16, 2, false},
};

static bool applies(const struct op_def *o, const struct variant *v)
{
    if ((o->needs & NEED_V3) && v->compat < 3)
        return false;
    if ((o->needs & NEED_REFCOUNT4) && v->refcount_bits < 4)
        return false;
    if ((o->needs & NEED_STD_L2) && v->extended_l2)
        return false;
    if ((o->needs & NEED_SMALL) && v->cluster_size > 65536)
        return false;
    if ((o->needs & NEED_2K) && v->cluster_size < 2048)
        return false;
    if ((o->needs & NEED_V2) && v->compat != 2)
        return false;
    return true;
}

static struct scenario make_scenario(const struct op_def *o,
                                     const struct variant *v, char *name,
                                     size_t n)
{
    struct scenario sc = {0};

    snprintf(name, n, "%s/%s", o->name, v->name);
    sc.name = name;
    sc.kind = o->kind;
    sc.cluster_size = v->cluster_size;
    sc.refcount_bits = v->refcount_bits;
    sc.compat = v->compat;
    sc.extended_l2 = v->extended_l2;
    sc.size = v->cluster_size > 65536 ? 8 * (uint64_t)v->cluster_size
                                      : 4 << 20;
    /* Preallocating writes every L2 table: 128 clusters (two L2 tables of
     * 512-byte clusters, several new refcount blocks) are plenty. */
    if (o->kind == K_CREATE && o->target)
        sc.size = MIN(sc.size, 128 * (uint64_t)v->cluster_size);
    sc.setup = o->setup;
    sc.op = o->op;
    sc.target = o->target;
    return sc;
}

/* ---- Running scenarios ------------------------------------------------------ */

static void create_opts(const struct scenario *sc, struct qimg_create_opts *o)
{
    o->size = sc->size;
    o->cluster_size = sc->cluster_size;
    o->refcount_bits = sc->refcount_bits;
    o->compat = sc->compat;
    o->extended_l2 = sc->extended_l2;
}

static int make_base(const struct scenario *sc, struct bytes *base);

/* The base image and what a guest sees in it (nothing before a create). */
static int start_state(const struct scenario *sc, struct bytes *base,
                       struct image_state *before)
{
    if (make_base(sc, base) < 0)
        return -1;
    if (sc->kind == K_CREATE) {
        memset(before, 0, sizeof *before);
        return 0;
    }
    return capture(base, before, NULL);
}

/* Run the scenario's operation over io (consumed): open and operate, or
 * create the image. */
static int exec_op(const struct scenario *sc, struct qimg_io *io,
                   bool for_check)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    qimg_image *img;
    int ret;

    if (sc->kind == K_CREATE) {
        struct qimg_create_opts co = QIMG_CREATE_OPTS_INIT;
        create_opts(sc, &co);
        if (sc->target && !strcmp(sc->target, "metadata"))
            co.prealloc = QIMG_PREALLOC_METADATA;
        ret = qcow2_create(&img, io, "crash", &co);
        if (ret < 0)
            return ret;
        return qimg_image_close(img) < 0 ? -EIO : 0;
    }
    o.fmt = QIMG_FMT_QCOW2;
    o.read_write = true;
    o.for_check = for_check;
    ret = image_open_io(&img, io, "crash", &o, 0);
    if (ret < 0)
        return ret;
    ret = sc->op(img);
    if (qimg_image_close(img) < 0 && ret == 0)
        ret = -EIO;
    return ret;
}

static int make_base(const struct scenario *sc, struct bytes *base)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;
    struct qimg_io io;
    qimg_image *img;
    size_t len;

    if (sc->kind == K_CREATE) {
        bytes_set(base, NULL, 0); /* an empty file */
        return 0;
    }
    create_opts(sc, &o);
    if (io_mem_open(&io, NULL, 0) < 0 || qcow2_create(&img, &io, "base", &o) < 0)
        return -1;
    if (sc->setup)
        sc->setup(img);
    if (qimg_image_flush(img) < 0)
        return -1;
    {
        const uint8_t *d = io_mem_data(&img->io, &len);
        bytes_set(base, d, len);
    }
    return qimg_image_close(img);
}

/* Run the scenario's operation on base through a recorder. */
static int run_op(const struct scenario *sc, const struct bytes *base,
                  struct rec *r, bool for_check)
{
    struct qimg_io io;

    if (rec_init(r, base) < 0)
        return -ENOMEM;
    rec_io(r, &io);
    r->recording = true;
    return exec_op(sc, &io, for_check);
}

static void run_states(const struct scenario *sc)
{
    struct bytes base = {0}, after_b = {0};
    struct image_state before, after;
    struct seen seen = {0};
    struct rec r;
    unsigned long n0 = states_total;
    double t0 = now();

    if (start_state(sc, &base, &before) < 0) {
        failf(sc, "setup failed");
        return;
    }
    if (run_op(sc, &base, &r, sc->kind == K_REPAIR) < 0) {
        failf(sc, "operation failed");
        rec_free(&r);
        return;
    }
    rec_contents(&r, &after_b);
    if (capture(&after_b, &after, &before) < 0)
        failf(sc, "cannot read the result");
    replay(sc, &base, &r, &before, &after, &seen);
    drain();
    printf("%-28s %5lu distinct crash states (%zu writes/flushes recorded, "
           "%.1f s)\n",
           sc->name, states_total - n0, r.nb_ops, now() - t0);
    fflush(stdout);
    rec_free(&r);
    state_free(&before);
    state_free(&after);
    bytes_free(&base);
    bytes_free(&after_b);
    free(seen.h);
}

static const struct {
    enum rec_kind kind;
    int err;
    const char *name;
} faults[] = {
    {REC_READ, EIO, "read EIO"},        {REC_WRITE, EIO, "write EIO"},
    {REC_WRITE, ENOSPC, "write ENOSPC"}, {REC_FLUSH, EIO, "flush EIO"},
    {REC_DISCARD, EIO, "discard EIO"},  {REC_TRUNCATE, ENOSPC, "truncate ENOSPC"},
};

/* The bytes after the scenario's operation ran on base (faults as set in
 * r before the call); returns the operation's result. */
static int run_faulty(const struct scenario *sc, const struct bytes *base,
                      struct rec *r, int f, unsigned n)
{
    struct qimg_io io;

    if (rec_init(r, base) < 0)
        return -ENOMEM;
    r->fault_kind = faults[f].kind;
    r->fault_n = n;
    r->fault_errno = faults[f].err;
    rec_io(r, &io);
    r->recording = true;
    return exec_op(sc, &io, sc->kind == K_REPAIR);
}

/* Fail the n-th call of one kind; judge the result; a retry must work.
 * Returns false once the operation no longer reaches call n. */
static bool fault_once(const struct scenario *sc, const struct bytes *base,
                       const struct image_state *before,
                       const struct image_state *after, int f, unsigned n)
{
    struct bytes res = {0};
    struct image_state s;
    struct scenario relaxed = *sc;
    struct rec r, r2;
    bool wrote = false, done;
    int ret;

    qimg_error_clear();
    ret = run_faulty(sc, base, &r, f, n);
    if (!r.fault_hit) {
        rec_free(&r);
        return false;
    }
    states_total++;
    /* Advisory: giving space back (discard), and cutting the file's tail
     * after a shrink or a compaction has committed (QEMU only warns when
     * it cannot). */
    if (ret == 0 && faults[f].kind != REC_DISCARD &&
        !(faults[f].kind == REC_TRUNCATE &&
          (sc->kind == K_RESIZE || sc->kind == K_COMPACT)))
        failf(sc, "%s #%u not reported", faults[f].name, n);
    else if (ret < 0 && !qimg_last_error()->message[0])
        failf(sc, "%s #%u: error without a message", faults[f].name, n);
    rec_contents(&r, &res);
    for (size_t i = 0; i < r.nb_ops; i++)
        wrote |= r.ops[i].kind != REC_FLUSH;
    if (!wrote && (res.len != base->len || memcmp(res.data, base->data, res.len)))
        failf(sc, "%s #%u: refused operation changed the file", faults[f].name,
              n);
    /* Never corrupt; a failed guest write or repair may leak. */
    relaxed.failed_write = ret < 0;
    judge(&relaxed, &res, before, after);
    /* Unless it completed after all, the same operation now succeeds. */
    done = capture(&res, &s, after) == 0 && sc->kind != K_REPAIR &&
           same_disk(s.size, s.active, after->size, after->active) &&
           s.nb == after->nb;
    if (s.valid)
        state_free(&s);
    if (!done && sc->kind != K_REPAIR) {
        if (run_op(sc, &res, &r2, false) < 0)
            failf(sc, "%s #%u: retry failed", faults[f].name, n);
        rec_free(&r2);
    }
    bytes_free(&res);
    rec_free(&r);
    return true;
}

/* The N-th allocation of the operation fails: a clean error, nothing
 * corrupted, nothing leaked (ASan), and a retry succeeds. */
static bool malloc_once(const struct scenario *sc, const struct bytes *base,
                        const struct image_state *before,
                        const struct image_state *after, unsigned long n)
{
    struct scenario relaxed = *sc;
    struct bytes res = {0};
    struct qimg_io io;
    struct rec r, r2;
    int ret;

    qimg_error_clear();
    if (rec_init(&r, base) < 0)
        return false;
    rec_io(&r, &io);
    malloc_failed = false;
    malloc_count = 0;
    malloc_fail_at = n;
    ret = exec_op(sc, &io, sc->kind == K_REPAIR);
    malloc_fail_at = 0;
    if (!malloc_failed) {
        rec_free(&r);
        return false;
    }
    states_total++;
    /* Recovering (e.g. a cache slot it could do without) is fine too:
     * the judge then sees the finished operation. */
    if (ret < 0 && !qimg_last_error()->message[0])
        failf(sc, "allocation #%lu: error without a message", n);
    rec_contents(&r, &res);
    relaxed.failed_write = ret < 0;
    judge(&relaxed, &res, before, after);
    if (sc->kind != K_REPAIR && ret < 0) {
        struct image_state s;
        bool done = capture(&res, &s, after) == 0 &&
                    same_disk(s.size, s.active, after->size, after->active) &&
                    s.nb == after->nb;
        if (s.valid)
            state_free(&s);
        if (!done && run_op(sc, &res, &r2, false) < 0)
            failf(sc, "allocation #%lu: retry failed", n);
        if (!done)
            rec_free(&r2);
    }
    bytes_free(&res);
    rec_free(&r);
    return true;
}

/* Fail the 1st, 2nd, ... I/O call of each kind (or allocation), until the
 * operation no longer reaches the N-th. */
static void run_sweep(const struct scenario *sc, bool mallocs)
{
    struct bytes base = {0}, after_b = {0};
    struct image_state before, after;
    unsigned long n0 = states_total;
    struct rec r;

    if (start_state(sc, &base, &before) < 0) {
        failf(sc, "setup failed");
        return;
    }
    if (run_op(sc, &base, &r, sc->kind == K_REPAIR) < 0 ||
        (rec_contents(&r, &after_b), capture(&after_b, &after, &before)) <
            0) {
        failf(sc, "operation failed");
        rec_free(&r);
        return;
    }
    rec_free(&r);
    if (mallocs)
        for (unsigned long n = 1;
             n < 1000000 && malloc_once(sc, &base, &before, &after, n); n++)
            ;
    else
        for (size_t f = 0; f < sizeof faults / sizeof faults[0]; f++)
            for (unsigned n = 1;
                 n < 100000 &&
                 fault_once(sc, &base, &before, &after, (int)f, n);
                 n++)
                ;
    drain();
    printf("%-28s %5lu %s\n", sc->name, states_total - n0,
           mallocs ? "failed allocations" : "injected faults");
    fflush(stdout);
    state_free(&before);
    state_free(&after);
    bytes_free(&base);
    bytes_free(&after_b);
}

/* ---- Refusals ------------------------------------------------------------ */

/* Images the library must refuse to change. Each damages setup_snaps'
 * snapshot table in place. */
static void setup_id_wrap(qimg_image *img)
{
    struct snap *sn;

    setup_snaps(img);
    /* The next ID is the largest one plus 1, which wraps to 0: taken. */
    sn = img->q->sn->snaps;
    free(sn[0].id);
    free(sn[1].id);
    sn[0].id = strdup("18446744073709551615");
    sn[1].id = strdup("0");
    if (!sn[0].id || !sn[1].id)
        abort();
    rewrite_snaps(img);
}

static void setup_absurd_l1_size(qimg_image *img)
{
    setup_snaps(img);
    img->q->sn->snaps[0].l1_size = 1u << 28; /* 2 GiB of L1 table */
    rewrite_snaps(img);
}

static void setup_l1_past_eof(qimg_image *img)
{
    struct qcow2 *q;

    setup_snaps(img);
    q = img->q;
    q->sn->snaps[0].l1_off =
        ALIGN_UP(q->file_size, q->cluster_size) + 4 * q->cluster_size;
    rewrite_snaps(img);
}

static void setup_shared_l1(qimg_image *img)
{
    struct snap *sn;

    setup_snaps(img);
    sn = img->q->sn->snaps;
    sn[1].l1_off = sn[0].l1_off;
    sn[1].l1_size = sn[0].l1_size;
    rewrite_snaps(img);
}

static void setup_l1_is_active(qimg_image *img)
{
    struct qcow2 *q;

    setup_snaps(img);
    q = img->q;
    q->sn->snaps[0].l1_off = q->hdr.l1_table_offset;
    q->sn->snaps[0].l1_size = q->l1s->l1_size;
    rewrite_snaps(img);
}

static void setup_disk_negative(qimg_image *img)
{
    setup_snaps(img);
    img->q->sn->snaps[0].disk_size = 1ull << 63;
    rewrite_snaps(img);
}

static void setup_disk_huge(qimg_image *img)
{
    setup_snaps(img);
    img->q->sn->snaps[0].disk_size = 1ull << 62; /* an L1 table of PiBs */
    rewrite_snaps(img);
}

static void setup_corrupt_flag(qimg_image *img)
{
    uint8_t b[8];

    setup_snaps(img);
    be64_store(b, img->q->hdr.incompatible | INCOMPAT_CORRUPT);
    if (file_pwrite(img, b, 8, HDR_INCOMPAT) < 0 || file_flush(img) < 0)
        abort();
}

static int op_snap_apply_missing(qimg_image *img)
{
    return qimg_snapshot_apply(img, "9");
}

static int op_snap_delete_missing(qimg_image *img)
{
    return qimg_snapshot_delete(img, "9");
}

static int op_snap_apply2(qimg_image *img)
{
    return qimg_snapshot_apply(img, "2");
}

static int op_write_past_end(qimg_image *img)
{
    memset(op_buf, 0x5e, 1024);
    return qimg_image_write(img, op_buf, 1024, qimg_image_size(img) - 512);
}

static int op_compress_unaligned(qimg_image *img)
{
    memset(op_buf, 0, img->q->cluster_size);
    return qimg_image_write_compressed(img, op_buf, img->q->cluster_size,
                                       256);
}

static int op_compress_allocated(qimg_image *img)
{
    memset(op_buf, 0, img->q->cluster_size);
    return qimg_image_write_compressed(img, op_buf, img->q->cluster_size, 0);
}

static int op_zero_no_fallback(qimg_image *img)
{
    /* Part of the first cluster, which holds data. */
    return qimg_image_write_zeroes(img, 100, 200, QIMG_ZERO_NO_FALLBACK);
}

#define RF_READ_ONLY 1u    /* opened read-only */
#define RF_CORRUPT_BIT 2u  /* v3: sets the corrupt bit and writes nothing
                              else, as QEMU does */
#define RF_V2 4u           /* only v2 variants */

struct refusal {
    const char *name;
    void (*setup)(qimg_image *img);
    int (*op)(qimg_image *img); /* NULL: the read-write open refuses */
    int err;                    /* the errno it refuses with */
    unsigned flags;             /* RF_* */
    unsigned needs;             /* NEED_* */
    uint32_t refcount_bits;     /* 0: the variant's; else v3 only */
};

static const struct refusal refusals[] = {
    {"apply-missing-id", setup_snaps, op_snap_apply_missing, ENOENT, 0,
     NEED_REFCOUNT4, 0},
    {"delete-missing-id", setup_snaps, op_snap_delete_missing, ENOENT, 0,
     NEED_REFCOUNT4, 0},
    {"create-next-id-taken", setup_id_wrap, op_snap_create, EIO, 0,
     NEED_REFCOUNT4, 0},
    {"create-absurd-l1-size", setup_absurd_l1_size, op_snap_create, EFBIG, 0,
     NEED_REFCOUNT4, 0},
    {"apply-absurd-l1-size", setup_absurd_l1_size, op_snap_apply1, EFBIG, 0,
     NEED_REFCOUNT4, 0},
    {"delete-beside-absurd-l1", setup_absurd_l1_size, op_snap_delete2, EFBIG,
     0, NEED_REFCOUNT4, 0},
    {"apply-l1-past-eof", setup_l1_past_eof, op_snap_apply1, EINVAL, 0,
     NEED_REFCOUNT4, 0},
    {"create-shared-l1", setup_shared_l1, op_snap_create, EINVAL, 0,
     NEED_REFCOUNT4, 0},
    {"apply-shared-l1", setup_shared_l1, op_snap_apply2, EINVAL, 0,
     NEED_REFCOUNT4, 0},
    {"delete-shared-l1", setup_shared_l1, op_snap_delete1, EINVAL, 0,
     NEED_REFCOUNT4, 0},
    {"apply-l1-is-active", setup_l1_is_active, op_snap_apply1, EIO,
     RF_CORRUPT_BIT, NEED_REFCOUNT4, 0},
    {"apply-size-negative", setup_disk_negative, op_snap_apply1, EINVAL, 0,
     NEED_REFCOUNT4 | NEED_V3, 0},
    {"apply-size-huge", setup_disk_huge, op_snap_apply1, EFBIG, 0,
     NEED_REFCOUNT4 | NEED_V3, 0},
    {"apply-resize-v2", setup_resized, op_snap_apply1, ENOTSUP, RF_V2,
     NEED_REFCOUNT4, 0},
    /* A snapshot adds a reference no refcount can hold. */
    {"create-refcount-full", setup_data, op_snap_create, EINVAL, 0, 0, 1},
    {"create-refcount-full", setup_snaps, op_snap_create, EINVAL, 0, 0, 2},
    {"open-rw-corrupt", setup_corrupt_flag, NULL, EACCES, 0,
     NEED_REFCOUNT4 | NEED_V3, 0},
    {"write-read-only", setup_snaps, op_write_alloc, EACCES, RF_READ_ONLY,
     NEED_REFCOUNT4, 0},
    {"zero-read-only", setup_snaps, op_zero, EACCES, RF_READ_ONLY,
     NEED_REFCOUNT4, 0},
    {"discard-read-only", setup_snaps, op_discard, EACCES, RF_READ_ONLY,
     NEED_REFCOUNT4, 0},
    {"compressed-read-only", setup_data, op_compress, EACCES, RF_READ_ONLY, 0,
     0},
    {"create-read-only", setup_snaps, op_snap_create, EACCES, RF_READ_ONLY,
     NEED_REFCOUNT4, 0},
    {"apply-read-only", setup_snaps, op_snap_apply1, EACCES, RF_READ_ONLY,
     NEED_REFCOUNT4, 0},
    {"delete-read-only", setup_snaps, op_snap_delete1, EACCES, RF_READ_ONLY,
     NEED_REFCOUNT4, 0},
    {"write-past-end", setup_data, op_write_past_end, EINVAL, 0, 0, 0},
    {"compressed-unaligned", setup_data, op_compress_unaligned, EINVAL, 0, 0,
     0},
    {"compressed-allocated", setup_data, op_compress_allocated, EIO, 0, 0, 0},
    {"zero-no-fallback", setup_data, op_zero_no_fallback, ENOTSUP, 0, 0, 0},
    /* amend: a 1-bit width cannot hold the snapshots' references; v2
     * takes no lazy refcounts. */
    {"amend-width-too-narrow", setup_snaps, op_amend_narrow, EINVAL, 0,
     NEED_REFCOUNT4 | NEED_V3, 0},
    {"amend-v2-lazy", setup_snaps, op_amend_lazy, EINVAL, RF_V2,
     NEED_REFCOUNT4, 0},
    {"amend-read-only", setup_snaps, op_amend_width, EACCES, RF_READ_ONLY,
     NEED_REFCOUNT4 | NEED_V3, 0},
    /* bitmaps: the add before a failing merge is not stored either (as
     * qemu-img stores it); a bitmap in use cannot be cleared; v2 has
     * none. */
    {"bitmap-add-then-missing", setup_bitmaps, op_bitmap_add_missing, ENOENT,
     0, NEED_V3, 0},
    {"bitmap-clear-in-use", setup_bitmap_in_use, op_bitmap_clear_full, EBUSY,
     0, NEED_V3, 0},
    {"bitmap-add-v2", setup_data, op_bitmap_add_one, ENOTSUP, RF_V2, 0, 0},
    {"rename-missing", setup_snaps, op_snap_rename_missing, ENOENT, 0, 0, 0},
    {"compact-damaged", setup_lowered, op_compact, EINVAL, 0,
     NEED_REFCOUNT4 | NEED_STD_L2, 0},
};

static bool refusal_applies(const struct refusal *rf, const struct variant *v)
{
    struct op_def o = {.needs = rf->needs};

    if ((rf->flags & RF_V2) && v->compat != 2)
        return false;
    if (rf->refcount_bits && v->compat < 3)
        return false;
    if (rf->refcount_bits && v->refcount_bits >= 4)
        o.needs &= ~NEED_REFCOUNT4;
    return applies(&o, v);
}

/* Run one refusal: the call fails with the right errno and a message, and
 * neither it nor the close wrote, discarded or truncated anything (but
 * the corrupt bit where QEMU sets it): the file is byte-identical. */
static void run_refusal(const struct refusal *rf, const struct variant *v)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct op_def od = {rf->name, K_GUEST, rf->setup, rf->op, NULL, 0};
    struct bytes base = {0}, res = {0};
    struct scenario sc;
    char name[96];
    struct qimg_io io;
    qimg_image *img;
    struct rec r;
    bool corrupt_bit = (rf->flags & RF_CORRUPT_BIT) && v->compat >= 3;
    int ret;

    sc = make_scenario(&od, v, name, sizeof name);
    if (rf->refcount_bits) {
        snprintf(name, sizeof name, "%s/%s as rb%u", rf->name, v->name,
                 (unsigned)rf->refcount_bits);
        sc.refcount_bits = rf->refcount_bits;
    }
    states_total++;
    if (make_base(&sc, &base) < 0 || rec_init(&r, &base) < 0) {
        failf(&sc, "setup failed");
        bytes_free(&base);
        return;
    }
    rec_io(&r, &io);
    r.recording = true;
    qimg_error_clear();
    o.fmt = QIMG_FMT_QCOW2;
    o.read_write = !(rf->flags & RF_READ_ONLY);
    ret = image_open_io(&img, &io, "crash", &o, 0);
    if (ret == 0 && !rf->op) {
        failf(&sc, "opened read-write");
        qimg_image_close(img);
    } else if (ret == 0) {
        ret = rf->op(img);
        qimg_image_close(img);
    } else if (rf->op) {
        failf(&sc, "cannot open");
    }
    if (ret >= 0)
        failf(&sc, "not refused");
    else if (ret != -rf->err)
        failf(&sc, "refused with %s, not %s", strerror(-ret),
              strerror(rf->err));
    else if (!qimg_last_error()->message[0])
        failf(&sc, "refused without a message");
    for (size_t i = 0; i < r.nb_ops; i++) {
        const struct rec_op *op = &r.ops[i];
        if (op->kind == REC_FLUSH || op->kind == REC_READ)
            continue;
        if (corrupt_bit && op->kind == REC_WRITE && op->off == HDR_INCOMPAT &&
            op->len == 8 &&
            be64_load(op->data) ==
                (be64_load(base.data + HDR_INCOMPAT) | INCOMPAT_CORRUPT))
            continue;
        if (op->kind == REC_TRUNCATE)
            failf(&sc, "refusal truncated the file to %" PRIu64 " bytes",
                  op->off);
        else
            failf(&sc, "refusal %s %" PRIu64 " bytes at %#" PRIx64,
                  op->kind == REC_WRITE ? "wrote" : "discarded", op->len,
                  op->off);
    }
    rec_contents(&r, &res);
    if (corrupt_bit)
        be64_store(base.data + HDR_INCOMPAT,
                   be64_load(base.data + HDR_INCOMPAT) | INCOMPAT_CORRUPT);
    if (res.len != base.len || memcmp(res.data, base.data, res.len))
        failf(&sc, "refusal changed the file%s",
              corrupt_bit ? " (or did not set the corrupt bit)" : "");
    printf("%-36s refused: %s\n", sc.name, qimg_last_error()->message);
    fflush(stdout);
    rec_free(&r);
    bytes_free(&res);
    bytes_free(&base);
}

int main(int argc, char **argv)
{
    bool faults_mode = argc > 1 && !strcmp(argv[1], "faults");
    bool malloc_mode = argc > 1 && !strcmp(argv[1], "mallocs");
    bool refusal_mode = argc > 1 && !strcmp(argv[1], "refusals");
    const char *only = getenv("CRASH_ONLY");

    init_long_backing();
    /* Keep big buffers in the heap: no mmap/munmap per crash state. */
    mallopt(M_MMAP_THRESHOLD, 256 << 20);
    mallopt(M_TRIM_THRESHOLD, 512 << 20);
    if (getenv("CRASH_SEED"))
        seed = strtoull(getenv("CRASH_SEED"), NULL, 0);
    if (argc > 2)
        scale = (unsigned)atoi(argv[2]);
    if (argc > 3)
        stride = (unsigned)atoi(argv[3]);
    if (!stride)
        stride = 1;
    snprintf(tmpdir, sizeof tmpdir, "%s/qimg-crash-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(tmpdir))
        return 2;
    posix_spawn_file_actions_init(&spawn_actions);
    posix_spawn_file_actions_addopen(&spawn_actions, 1, "/dev/null", O_WRONLY,
                                     0);
    posix_spawn_file_actions_addopen(&spawn_actions, 2, "/dev/null", O_WRONLY,
                                     0);
    printf("crash_sim %s, seed %llu, scale %u\n",
           refusal_mode  ? "refusals"
           : malloc_mode ? "mallocs"
           : faults_mode ? "faults"
                         : "states",
           seed, scale);
    for (size_t i = 0; refusal_mode && i < sizeof refusals / sizeof *refusals;
         i++)
        for (size_t j = 0; j < sizeof variants / sizeof variants[0]; j++)
            if (refusal_applies(&refusals[i], &variants[j]) &&
                (!only || strstr(refusals[i].name, only)))
                run_refusal(&refusals[i], &variants[j]);
    for (size_t i = 0;
         !refusal_mode && i < sizeof ops_list / sizeof ops_list[0]; i++) {
        const size_t nv = sizeof variants / sizeof variants[0];
        size_t first = nv, taken = 0;
        unsigned st = stride * ((ops_list[i].needs & HALF_STATES) &&
                                        !malloc_mode && !faults_mode
                                    ? 2
                                    : 1);
        if ((malloc_mode || faults_mode) && (ops_list[i].needs & STATES_ONLY))
            continue;
        for (size_t j = 0; j < nv; j++)
            if (applies(&ops_list[i], &variants[j])) {
                first = MIN(first, j);
                taken += (i + j) % st == 0;
            }
        for (size_t j = 0; j < nv; j++) {
            char name[96];
            struct scenario sc;
            /* Every stride-th variant, rotating; the first that applies
             * if the stride leaves none. */
            if (!applies(&ops_list[i], &variants[j]) ||
                ((i + j) % st && !(taken == 0 && j == first)))
                continue;
            sc = make_scenario(&ops_list[i], &variants[j], name, sizeof name);
            if (only && !strstr(sc.name, only))
                continue;
            if (malloc_mode || faults_mode)
                run_sweep(&sc, malloc_mode);
            else
                run_states(&sc);
        }
    }
    drain();
    disk_pool_free();
    for (int i = 0; i < NPOOL; i++) {
        char path[80];
        snprintf(path, sizeof path, "%s/state%d.qcow2", tmpdir, i);
        unlink(path);
    }
    rmdir(tmpdir);
    printf("total: %lu %s checked, %lu failures\n", states_total,
           refusal_mode  ? "refusals"
           : malloc_mode ? "failed allocations"
           : faults_mode ? "injected faults"
                         : "distinct crash states",
           failures);
    return failures ? 1 : 0;
}
