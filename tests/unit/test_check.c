/*
 * test_check.c - consistency check and repair (check.c, check_walk.c,
 * check_refcounts.c, check_copied.c, check_snaptable.c,
 * check_findings.c): a clean image reports nothing; damage of each kind
 * planted in an image's bytes gives qemu-img's counts and lines, with
 * the structures that hold the references; the repairs (-r leaks, -r
 * all) fix what they can, and a second check is clean.
 *
 * Images are made in memory by the library (io-mem, cio.h), then the
 * damage is written into their bytes directly.
 */
#include "cio.h"

#include <stdio.h>

#include "metaset.h"
#include "rebuild.h"

#define CS 4096u
#define DISK (16u << 20)  /* 4096 clusters, 8 L2 tables */
#define L2_SPAN (CS / 8)  /* guest clusters per L2 table */

/* ---- Images and their layout --------------------------------------------- */

/* An image's bytes and where its structures are (byte offsets). */
struct fx {
    uint8_t *d;
    size_t len;
    uint64_t l1_off, rt_off, rb_off, snap_off;
    uint32_t nb_snaps;
};

static void fill(uint8_t *buf, uint64_t g, unsigned gen)
{
    for (unsigned i = 0; i < CS; i++)
        buf[i] = (uint8_t)(g * 29 + gen * 97 + i % 241 + 1);
}

static void write_gen(qimg_image *img, uint64_t g, unsigned gen)
{
    uint8_t buf[CS];

    fill(buf, g, gen);
    assert_int_equal(qimg_image_write(img, buf, CS, g * CS), 0);
}

static qimg_image *new_image(struct cio *c)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;

    o.size = DISK;
    o.cluster_size = CS;
    return cio_create(c, &o);
}

/* Close img (made over c) and keep its bytes and layout in f. */
static void fx_take(struct fx *f, struct cio *c, qimg_image *img)
{
    assert_int_equal(qimg_image_flush(img), 0);
    f->l1_off = img->q->hdr.l1_table_offset;
    f->rt_off = img->q->hdr.refcount_table_offset;
    f->rb_off = be64_load(img->q->rc->rt) & RT_OFFSET_MASK;
    f->snap_off = img->q->hdr.snapshots_offset;
    f->nb_snaps = img->q->hdr.nb_snapshots;
    assert_int_equal(qimg_image_close(img), 0);
    f->d = cio_copy(c, &f->len);
    cio_free(c);
    /* Every test's damage stays inside refcount block 0. */
    assert_true(f->len / CS < CS * 8 / 16);
}

/* Guest clusters 0, 1, 2 (L2 table 0) and 600, 601 (table 1) hold data;
 * with snap, a snapshot "s" of them, then 601 rewritten (so its old
 * cluster is the snapshot's alone). */
static void fx_data(struct fx *f, bool snap)
{
    static const uint64_t g[] = {0, 1, 2, 600, 601};
    struct cio c;
    qimg_image *img = new_image(&c);

    for (size_t i = 0; i < ARRAY_SIZE(g); i++)
        write_gen(img, g[i], 1);
    if (snap) {
        assert_int_equal(qimg_snapshot_create(img, "s"), 0);
        write_gen(img, 601, 2);
    }
    fx_take(f, &c, img);
}

static uint64_t get64(const struct fx *f, uint64_t off)
{
    assert_true(off + 8 <= f->len);
    return be64_load(f->d + off);
}

static void put64(struct fx *f, uint64_t off, uint64_t v)
{
    assert_true(off + 8 <= f->len);
    be64_store(f->d + off, v);
}

static uint64_t rc_get(const struct fx *f, uint64_t k)
{
    return refblock_get(f->d + f->rb_off, k, 4);
}

static void rc_set(struct fx *f, uint64_t k, uint64_t v)
{
    refblock_set(f->d + f->rb_off, k, 4, v);
}

/* Byte offset of the active L1 entry i, of guest cluster g's L2 entry. */
static uint64_t l1e_at(const struct fx *f, uint64_t i)
{
    return f->l1_off + 8 * i;
}

static uint64_t l2e_at(const struct fx *f, uint64_t g)
{
    uint64_t l2 = get64(f, l1e_at(f, g / L2_SPAN)) & L1E_OFFSET_MASK;

    assert_int_not_equal(l2, 0);
    return l2 + 8 * (g % L2_SPAN);
}

/* Host cluster of guest cluster g (active disk). */
static uint64_t host(const struct fx *f, uint64_t g)
{
    return (get64(f, l2e_at(f, g)) & L2E_OFFSET_MASK) / CS;
}

/* One more cluster at the end of the file; returns its index. */
static uint64_t fx_append(struct fx *f)
{
    uint64_t k = DIV_ROUND_UP(f->len, CS);

    f->d = realloc(f->d, (k + 1) * CS);
    assert_non_null(f->d);
    memset(f->d + f->len, 0, (k + 1) * CS - f->len);
    f->len = (k + 1) * CS;
    return k;
}

/* ---- Running check ------------------------------------------------------- */

/* Check the image in f (opened for check, read-write when fixing); with
 * fix, f then holds the repaired bytes. A plain check writes nothing. */
static int run_check(struct fx *f, unsigned fix, struct qimg_check_result **r)
{
    struct cio c;
    qimg_image *img = NULL;
    int ret;

    *r = NULL;
    assert_int_equal(cio_open(&c, &img, f->d, f->len, fix != 0, true), 0);
    ret = qimg_image_check(r, img, fix);
    assert_non_null(*r);
    assert_int_equal(qimg_image_close(img), 0);
    if (fix) {
        free(f->d);
        f->d = cio_copy(&c, &f->len);
    } else {
        assert_int_equal(c.count[OP_WRITE] + c.count[OP_DISCARD] +
                             c.count[OP_TRUNCATE],
                         0);
    }
    cio_free(&c);
    return ret;
}

static void print_msgs(const struct qimg_check_result *r)
{
    for (size_t i = 0; i < r->nb_msgs; i++)
        print_message("  [%s%s] %s%s%s\n", r->msgs[i].kind,
                      r->msgs[i].is_error ? ", error" : "", r->msgs[i].text,
                      r->msgs[i].where ? "  <- " : "",
                      r->msgs[i].where ? r->msgs[i].where : "");
}

/* The message whose text is `text` (printf format), of kind `kind`; the
 * test fails if there is none. */
static const struct qimg_check_msg *
msg(const struct qimg_check_result *r, const char *kind, bool is_error,
    const char *fmt, ...) __attribute__((format(printf, 4, 5)));

static const struct qimg_check_msg *msg(const struct qimg_check_result *r,
                                        const char *kind, bool is_error,
                                        const char *fmt, ...)
{
    char text[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    for (size_t i = 0; i < r->nb_msgs; i++)
        if (!strcmp(r->msgs[i].text, text)) {
            assert_string_equal(r->msgs[i].kind, kind);
            assert_int_equal(r->msgs[i].is_error, is_error);
            return &r->msgs[i];
        }
    print_msgs(r);
    fail_msg("no message \"%s\"", text);
    return NULL;
}

static void counts(const struct qimg_check_result *r, int64_t corruptions,
                   int64_t leaks, int64_t check_errors)
{
    if (r->corruptions != corruptions || r->leaks != leaks ||
        r->check_errors != check_errors)
        print_msgs(r);
    assert_int_equal(r->corruptions, corruptions);
    assert_int_equal(r->leaks, leaks);
    assert_int_equal(r->check_errors, check_errors);
}

static void fixed(const struct qimg_check_result *r, int64_t corruptions,
                  int64_t leaks)
{
    assert_int_equal(r->corruptions_fixed, corruptions);
    assert_int_equal(r->leaks_fixed, leaks);
}

/* A second, plain check finds nothing. */
static void assert_clean(struct fx *f)
{
    struct qimg_check_result *r;

    assert_int_equal(run_check(f, 0, &r), 0);
    if (r->nb_msgs)
        print_msgs(r);
    assert_int_equal(r->nb_msgs, 0);
    counts(r, 0, 0, 0);
    fixed(r, 0, 0);
    qimg_check_result_free(r);
}

static void fx_free(struct fx *f)
{
    free(f->d);
    f->d = NULL;
}

/* ---- Clean images -------------------------------------------------------- */

static void test_check_fresh_image_is_clean(void **state)
{
    struct qimg_check_result *r;
    struct cio c;
    struct fx f;

    (void)state;
    fx_take(&f, &c, new_image(&c));
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_int_equal(r->nb_msgs, 0);
    counts(r, 0, 0, 0);
    fixed(r, 0, 0);
    assert_int_equal(r->total_clusters, DISK / CS);
    assert_int_equal(r->allocated_clusters, 0);
    assert_int_equal(r->fragmented_clusters, 0);
    assert_int_equal(r->compressed_clusters, 0);
    /* Everything the file holds is in use. */
    assert_int_equal(r->image_end_offset, ALIGN_UP(f.len, CS));
    qimg_check_result_free(r);
    /* A repair of a clean image changes nothing. */
    {
        uint8_t *before = malloc(f.len);
        size_t len = f.len;
        assert_non_null(before);
        memcpy(before, f.d, len);
        assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
        assert_int_equal(r->nb_msgs, 0);
        fixed(r, 0, 0);
        assert_int_equal(f.len, len);
        assert_memory_equal(f.d, before, len);
        free(before);
        qimg_check_result_free(r);
    }
    fx_free(&f);
}

/* Data, snapshots, compressed clusters: nothing to report, and the
 * allocation statistics of qemu-img check. */
static void test_check_used_image_is_clean_with_statistics(void **state)
{
    struct qimg_check_result *r;
    uint8_t buf[2 * CS];
    struct cio c;
    qimg_image *img = new_image(&c);
    struct fx f;

    (void)state;
    /* Guest 5 before 4: entry 5's cluster does not follow entry 4's. */
    write_gen(img, 5, 1);
    write_gen(img, 4, 1);
    write_gen(img, 6, 1);
    write_gen(img, 1500, 1);
    memset(buf, 'z', sizeof buf);
    assert_int_equal(qimg_image_write_compressed(img, buf, 2 * CS, 3000 * CS),
                     0);
    assert_int_equal(qimg_snapshot_create(img, "a"), 0);
    write_gen(img, 4, 2);
    assert_int_equal(qimg_snapshot_create(img, "b"), 0);
    assert_int_equal(qimg_snapshot_delete(img, "a"), 0);
    fx_take(&f, &c, img);
    assert_int_equal(run_check(&f, 0, &r), 0);
    assert_int_equal(r->nb_msgs, 0);
    counts(r, 0, 0, 0);
    assert_int_equal(r->total_clusters, DISK / CS);
    assert_int_equal(r->allocated_clusters, 6);
    assert_int_equal(r->compressed_clusters, 2);
    /* Entry 4 rewritten: now after 6, and 5 after nothing it follows;
     * compressed clusters always count. */
    assert_int_equal(r->fragmented_clusters, 2 + 2);
    qimg_check_result_free(r);
    fx_free(&f);
}

/* ---- Refcounts ----------------------------------------------------------- */

/* A cluster counted but used by nothing: a leak, not an error. */
static void test_check_leaked_cluster(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t k;

    (void)state;
    fx_data(&f, false);
    k = fx_append(&f);
    rc_set(&f, k, 1);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 0, 1, 0);
    assert_int_equal(r->nb_msgs, 1);
    assert_null(msg(r, "leak", false,
                    "Leaked cluster %" PRIu64 " refcount=1 reference=0", k)
                    ->where);
    assert_int_equal(r->image_end_offset, (int64_t)(k + 1) * CS);
    qimg_check_result_free(r);

    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_LEAKS, &r), 0);
    counts(r, 0, 0, 0);
    fixed(r, 0, 1);
    msg(r, "leak", false, "Repairing cluster %" PRIu64
                          " refcount=1 reference=0", k);
    qimg_check_result_free(r);
    assert_int_equal(rc_get(&f, k), 0);
    assert_clean(&f);
    fx_free(&f);
}

/* Refcount 2, one reference: a leak of one, and COPIED (set, as for a
 * refcount of 1) now wrong. -r leaks fixes both. */
static void test_check_refcount_too_high(void **state)
{
    struct qimg_check_result *r;
    const struct qimg_check_msg *m;
    struct fx f;
    uint64_t k, e;

    (void)state;
    fx_data(&f, false);
    k = host(&f, 1);
    e = get64(&f, l2e_at(&f, 1));
    assert_true(e & QCOW_OFLAG_COPIED);
    assert_int_equal(rc_get(&f, k), 1);
    rc_set(&f, k, 2);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 1, 0);
    assert_int_equal(r->nb_msgs, 2);
    m = msg(r, "leak", false, "Leaked cluster %" PRIu64
                              " refcount=2 reference=1", k);
    assert_non_null(m->where);
    assert_string_equal(m->where, "referenced by active L1 index 0, L2 "
                                  "index 1");
    m = msg(r, "copied", true, "ERROR OFLAG_COPIED data cluster: l2_entry=%"
                               PRIx64 " refcount=2", e);
    assert_string_equal(m->where, "active L1 index 0, L2 index 1");
    qimg_check_result_free(r);

    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_LEAKS, &r), 0);
    counts(r, 0, 0, 0);
    fixed(r, 0, 1);
    qimg_check_result_free(r);
    assert_int_equal(rc_get(&f, k), 1);
    assert_clean(&f);
    fx_free(&f);
}

/* Refcount 1, two references (active and snapshot): an error, and the
 * active entry's COPIED (clear, as for a shared cluster) now wrong. -r
 * leaks does not touch errors; -r all raises the refcount. */
static void test_check_refcount_too_low(void **state)
{
    struct qimg_check_result *r;
    const struct qimg_check_msg *m;
    struct fx f;
    uint64_t k, e;

    (void)state;
    fx_data(&f, true);
    k = host(&f, 2);
    e = get64(&f, l2e_at(&f, 2));
    assert_false(e & QCOW_OFLAG_COPIED);
    assert_int_equal(rc_get(&f, k), 2);
    rc_set(&f, k, 1);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 2, 0, 0);
    m = msg(r, "refcount", true, "ERROR cluster %" PRIu64
                                 " refcount=1 reference=2", k);
    assert_string_equal(m->where, "referenced by active L1 index 0, L2 index "
                                  "2; snapshot 1 (s) L1 index 0, L2 index 2");
    msg(r, "copied", true, "ERROR OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                           " refcount=1", e);
    qimg_check_result_free(r);

    /* -r leaks compares again (QEMU prints the line twice), fixing
     * nothing; COPIED is left alone while anything else is wrong. */
    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_LEAKS, &r), 0);
    counts(r, 2, 0, 0);
    fixed(r, 0, 0);
    msg(r, "copied", true, "ERROR OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                           " refcount=1", e);
    qimg_check_result_free(r);
    assert_int_equal(rc_get(&f, k), 1);

    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
    counts(r, 0, 0, 0);
    fixed(r, 1, 0);
    msg(r, "refcount", true, "Repairing cluster %" PRIu64
                             " refcount=1 reference=2", k);
    qimg_check_result_free(r);
    assert_int_equal(rc_get(&f, k), 2);
    assert_clean(&f);
    fx_free(&f);
}

/* A referenced cluster at refcount 0: the refcount structure cannot be
 * trusted. -r leaks refuses to touch it; -r all rebuilds it. */
static void test_check_refcount_zero_needs_rebuild(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t k, e;

    (void)state;
    fx_data(&f, false);
    k = host(&f, 600);
    e = get64(&f, l2e_at(&f, 600));
    rc_set(&f, k, 0);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 2, 0, 0);
    msg(r, "refcount", true, "ERROR cluster %" PRIu64
                             " refcount=0 reference=1", k);
    msg(r, "copied", true, "ERROR OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                           " refcount=0", e);
    qimg_check_result_free(r);

    /* The check stops there: no COPIED finding, no referrers. */
    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_LEAKS, &r), -EIO);
    counts(r, 1, 0, 1);
    fixed(r, 0, 0);
    msg(r, "rebuild", true, "ERROR need to rebuild refcount structures");
    qimg_check_result_free(r);
    assert_int_equal(rc_get(&f, k), 0);

    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
    msg(r, "rebuild", false, "Rebuilding refcount structure");
    counts(r, 0, 0, 0);
    fixed(r, 1, 0);
    qimg_check_result_free(r);
    assert_clean(&f);
    {
        /* The data is still there. */
        struct cio c;
        qimg_image *img = NULL;
        uint8_t buf[CS], want[CS];
        assert_int_equal(cio_open(&c, &img, f.d, f.len, false, false), 0);
        assert_int_equal(qimg_image_read(img, buf, CS, 600 * CS), 0);
        fill(want, 600, 1);
        assert_memory_equal(buf, want, CS);
        assert_int_equal(qimg_image_close(img), 0);
        cio_free(&c);
    }
    fx_free(&f);
}

/* ---- L1 and L2 entries --------------------------------------------------- */

/* An L2 entry pointing a cluster or more past the end of the file. */
static void test_check_l2_entry_past_eof(void **state)
{
    struct qimg_check_result *r;
    const struct qimg_check_msg *m;
    struct fx f;
    uint64_t far;

    (void)state;
    fx_data(&f, false);
    far = ALIGN_UP(f.len, CS) + 10 * CS;
    assert_int_equal(get64(&f, l2e_at(&f, 7)), 0);
    put64(&f, l2e_at(&f, 7), far);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 0, 0);
    assert_int_equal(r->nb_msgs, 1);
    m = msg(r, "beyond-eof", true,
            "ERROR: counting reference for region exceeding the end of the "
            "file by one cluster or more: offset %#" PRIx64 " size %#x",
            far, CS);
    assert_string_equal(m->where, "active L1 index 0, L2 index 7");
    qimg_check_result_free(r);
    /* No repair for it (as QEMU): it stays. */
    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
    counts(r, 1, 0, 0);
    fixed(r, 0, 0);
    qimg_check_result_free(r);
    assert_int_equal(get64(&f, l2e_at(&f, 7)), far);
    fx_free(&f);
}

/* An L2 entry pointing at the active L1 table: two references to a
 * cluster counted once, both structures named. */
static void test_check_overlap_with_metadata(void **state)
{
    struct qimg_check_result *r;
    const struct qimg_check_msg *m;
    struct fx f;
    uint64_t l1c;

    (void)state;
    fx_data(&f, false);
    l1c = f.l1_off / CS;
    put64(&f, l2e_at(&f, 9), l1c * CS | QCOW_OFLAG_COPIED);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 0, 0);
    assert_int_equal(r->nb_msgs, 1);
    m = msg(r, "refcount", true, "ERROR cluster %" PRIu64
                                 " refcount=1 reference=2", l1c);
    assert_string_equal(m->where, "referenced by active L1 table; active L1 "
                                  "index 0, L2 index 9");
    qimg_check_result_free(r);
    fx_free(&f);
}

/* Two L2 entries mapping one cluster counted once. -r all counts it
 * twice and clears COPIED on both entries (it is shared now). */
static void test_check_overlap_between_entries(void **state)
{
    struct qimg_check_result *r;
    const struct qimg_check_msg *m;
    struct fx f;
    uint64_t k, e;

    (void)state;
    fx_data(&f, false);
    k = host(&f, 600);
    e = get64(&f, l2e_at(&f, 600));
    put64(&f, l2e_at(&f, 700), e);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 0, 0);
    m = msg(r, "refcount", true, "ERROR cluster %" PRIu64
                                 " refcount=1 reference=2", k);
    assert_string_equal(m->where, "referenced by active L1 index 1, L2 index "
                                  "88; active L1 index 1, L2 index 188");
    qimg_check_result_free(r);

    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
    counts(r, 0, 0, 0);
    fixed(r, 3, 0);
    msg(r, "copied", true, "Repairing OFLAG_COPIED data cluster: l2_entry=%"
                           PRIx64 " refcount=2", e);
    qimg_check_result_free(r);
    assert_int_equal(rc_get(&f, k), 2);
    assert_false(get64(&f, l2e_at(&f, 600)) & QCOW_OFLAG_COPIED);
    assert_false(get64(&f, l2e_at(&f, 700)) & QCOW_OFLAG_COPIED);
    assert_clean(&f);
    fx_free(&f);
}

/* COPIED wrong on an L2 entry (clear at refcount 1), on an L1 entry
 * (clear at refcount 1) and on a shared cluster (set at refcount 2). */
static void test_check_copied_flags(void **state)
{
    struct qimg_check_result *r;
    const struct qimg_check_msg *m;
    struct fx f;
    uint64_t e0, e1, l1e, es;

    (void)state;
    fx_data(&f, true);
    /* After the snapshot, 601 was rewritten: its table and cluster are
     * the active disk's alone; 0 is still shared. */
    e1 = get64(&f, l2e_at(&f, 601)) & ~QCOW_OFLAG_COPIED;
    put64(&f, l2e_at(&f, 601), e1);
    l1e = get64(&f, l1e_at(&f, 1));
    assert_true(l1e & QCOW_OFLAG_COPIED);
    l1e &= ~QCOW_OFLAG_COPIED;
    put64(&f, l1e_at(&f, 1), l1e);
    e0 = get64(&f, l2e_at(&f, 600));
    assert_false(e0 & QCOW_OFLAG_COPIED);
    es = e0 | QCOW_OFLAG_COPIED;
    put64(&f, l2e_at(&f, 600), es);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 3, 0, 0);
    assert_int_equal(r->nb_msgs, 3);
    m = msg(r, "copied", true, "ERROR OFLAG_COPIED L2 cluster: l1_index=1 "
                               "l1_entry=%" PRIx64 " refcount=1", l1e);
    assert_string_equal(m->where, "active L1 index 1");
    m = msg(r, "copied", true, "ERROR OFLAG_COPIED data cluster: l2_entry=%"
                               PRIx64 " refcount=1", e1);
    assert_string_equal(m->where, "active L1 index 1, L2 index 89");
    m = msg(r, "copied", true, "ERROR OFLAG_COPIED data cluster: l2_entry=%"
                               PRIx64 " refcount=2", es);
    assert_string_equal(m->where, "active L1 index 1, L2 index 88");
    qimg_check_result_free(r);

    /* With nothing else wrong, -r leaks repairs them too (as QEMU). */
    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_LEAKS, &r), 0);
    counts(r, 0, 0, 0);
    fixed(r, 3, 0);
    qimg_check_result_free(r);
    assert_int_equal(get64(&f, l1e_at(&f, 1)), l1e | QCOW_OFLAG_COPIED);
    assert_int_equal(get64(&f, l2e_at(&f, 601)), e1 | QCOW_OFLAG_COPIED);
    assert_int_equal(get64(&f, l2e_at(&f, 600)), e0);
    assert_clean(&f);
    fx_free(&f);
}

/* Reserved bits in an L1 entry and an L2 entry. */
static void test_check_reserved_bits(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t l1e, l2e;

    (void)state;
    fx_data(&f, false);
    l1e = get64(&f, l1e_at(&f, 0)) | (1ull << 56);
    put64(&f, l1e_at(&f, 0), l1e);
    l2e = get64(&f, l2e_at(&f, 600)) | 0x2;
    put64(&f, l2e_at(&f, 600), l2e);
    assert_int_equal(run_check(&f, 0, &r), 0);
    msg(r, "l1-entry", true, "ERROR found L1 entry with reserved bits set: %"
                             PRIx64, l1e);
    msg(r, "l2-entry", true, "ERROR found l2 entry with reserved bits set: %"
                             PRIx64, l2e);
    counts(r, 2, 0, 0);
    assert_int_equal(r->nb_msgs, 2);
    qimg_check_result_free(r);
    fx_free(&f);
}

/* ---- The snapshot table -------------------------------------------------- */

/* An image whose only snapshot is of an empty disk: its L1 table is the
 * snapshot's only cluster. */
static void fx_empty_snapshot(struct fx *f)
{
    struct cio c;
    qimg_image *img = new_image(&c);

    assert_int_equal(qimg_snapshot_create(img, "s"), 0);
    fx_take(f, &c, img);
    assert_int_equal(f->nb_snaps, 1);
}

/* The snapshot's L1 table offset (table entry field 0) unaligned: the
 * entry is reported, and the table it named is no longer referenced. */
static void test_check_snapshot_l1_unaligned(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t l1;

    (void)state;
    fx_empty_snapshot(&f);
    l1 = get64(&f, f.snap_off);
    put64(&f, f.snap_off, l1 + 512);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 1, 0);
    msg(r, "snapshot", true, "ERROR snapshot 1 (s) l1_offset=%#" PRIx64
                             ": L1 table is not cluster aligned; snapshot "
                             "table entry corrupted", l1 + 512);
    msg(r, "leak", false, "Leaked cluster %" PRIu64 " refcount=1 reference=0",
        l1 / CS);
    qimg_check_result_free(r);
    fx_free(&f);
}

/* The snapshot's L1 size (field at byte 8) over QEMU's limit. */
static void test_check_snapshot_l1_too_large(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t l1;
    uint32_t n = QCOW_MAX_L1_SIZE / 8 + 1;

    (void)state;
    fx_empty_snapshot(&f);
    l1 = get64(&f, f.snap_off);
    be32_store(f.d + f.snap_off + 8, n);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 1, 0);
    msg(r, "snapshot", true, "ERROR snapshot 1 (s) l1_size=%#" PRIx32
                             ": L1 table is too large; snapshot table entry "
                             "corrupted", n);
    msg(r, "leak", false, "Leaked cluster %" PRIu64 " refcount=1 reference=0",
        l1 / CS);
    qimg_check_result_free(r);
    fx_free(&f);
}

/* Replace the snapshot table's one entry by a raw entry with xlen bytes of
 * extra data (the known fields where they fit), id "1" and name "s". */
static void put_raw_entry(struct fx *f, uint32_t xlen, uint64_t l1_off,
                          uint32_t l1_size)
{
    uint8_t *p = f->d + f->snap_off;

    assert_true(40 + xlen + 2 <= CS);
    memset(p, 0, CS);
    be64_store(p, l1_off);
    be32_store(p + 8, l1_size);
    be16_store(p + 12, 1);
    be16_store(p + 14, 1);
    be32_store(p + 36, xlen);
    if (xlen >= 16)
        be64_store(p + 40 + 8, DISK);
    p[40 + xlen] = '1';
    p[40 + xlen + 1] = 's';
}

/* v3 entries must hold at least 16 bytes of extra data; -r all rewrites
 * the table with the known fields. */
static void test_check_snapshot_entry_incomplete(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t l1;
    uint32_t l1_size;

    (void)state;
    fx_empty_snapshot(&f);
    l1 = get64(&f, f.snap_off);
    l1_size = be32_load(f.d + f.snap_off + 8);
    put_raw_entry(&f, 8, l1, l1_size);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 0, 0);
    assert_int_equal(r->nb_msgs, 1);
    msg(r, "snapshot-table", true,
        "ERROR snapshot table entry 0 is incomplete");
    qimg_check_result_free(r);

    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
    counts(r, 0, 0, 0);
    fixed(r, 1, 0);
    msg(r, "snapshot-table", true,
        "Repairing snapshot table entry 0 is incomplete");
    qimg_check_result_free(r);
    assert_clean(&f);
    fx_free(&f);
}

/* Over 1024 bytes of extra data: the table cannot be read (a check
 * error); -r all cuts it to the known fields. */
static void test_check_snapshot_too_much_extra(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t l1;
    uint32_t l1_size;

    (void)state;
    fx_empty_snapshot(&f);
    l1 = get64(&f, f.snap_off);
    l1_size = be32_load(f.d + f.snap_off + 8);
    put_raw_entry(&f, 2000, l1, l1_size);
    assert_int_equal(run_check(&f, 0, &r), -EFBIG);
    counts(r, 0, 0, 1);
    msg(r, "snapshot-table-unreadable", true,
        "ERROR failed to read the snapshot table: Too much extra metadata in "
        "snapshot table entry 0");
    msg(r, "snapshot-table", false,
        "You can force-remove this extra metadata with qemu-img check -r all");
    qimg_check_result_free(r);

    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
    counts(r, 0, 0, 0);
    fixed(r, 1, 0);
    msg(r, "snapshot-table", false,
        "Discarding too much extra metadata in snapshot table entry 0 "
        "(2000 > 1024)");
    qimg_check_result_free(r);
    assert_clean(&f);
    fx_free(&f);
}

/* Header fields of the snapshot table QEMU refuses to follow. */
static void test_check_snapshot_table_header(void **state)
{
    struct qimg_check_result *r;
    struct fx f;

    (void)state;
    fx_empty_snapshot(&f);
    be32_store(f.d + HDR_NB_SNAPSHOTS, QCOW_MAX_SNAPSHOTS + 1);
    assert_int_equal(run_check(&f, 0, &r), -EFBIG);
    counts(r, 0, 0, 1);
    msg(r, "snapshot-table-unreadable", true,
        "ERROR snapshot table too large");
    msg(r, "snapshot-table", false,
        "You can force-remove all 1 overhanging snapshots with qemu-img "
        "check -r all");
    qimg_check_result_free(r);

    be32_store(f.d + HDR_NB_SNAPSHOTS, 1);
    be64_store(f.d + HDR_SNAPSHOTS_OFF, f.snap_off + 8);
    assert_int_equal(run_check(&f, 0, &r), -EINVAL);
    counts(r, 0, 0, 1);
    msg(r, "snapshot-table-unreadable", true,
        "ERROR snapshot table offset invalid");
    qimg_check_result_free(r);

    be64_store(f.d + HDR_SNAPSHOTS_OFF, f.snap_off);
    assert_clean(&f);
    fx_free(&f);
}

/* ---- Refcount structures ------------------------------------------------- */


/* A repair writes no structure over live metadata: an active L2 table
 * named right at the end of the file is in the census, and a new
 * refcount structure placed there (without stepping over what entries
 * name past the end: avoid 0) is refused, the image marked corrupt and
 * nothing else written. */
static void test_check_rebuild_refuses_live_metadata(void **state)
{
    struct fx f;
    struct cio c;
    qimg_image *img = NULL;
    const uint8_t *after;
    uint8_t *before, *refs;
    uint64_t end;
    size_t len, len2;

    (void)state;
    fx_data(&f, false);
    end = ALIGN_UP(f.len, CS);
    assert_int_equal(get64(&f, l1e_at(&f, 3)), 0);
    put64(&f, l1e_at(&f, 3), end);
    assert_int_equal(cio_open(&c, &img, f.d, f.len, true, true), 0);
    assert_int_equal(metaset_build(img), 0);
    refs = calloc(end / CS + 4, 2);
    assert_non_null(refs);
    before = cio_copy(&c, &len);
    cio_reset(&c);
    assert_int_equal(rebuild_refcounts(img, refs, end / CS, 0), -EIO);
    assert_non_null(strstr(qimg_last_error()->message,
                           "overlaps with active L2 table"));
    after = cio_bytes(&c, &len2);
    assert_int_equal(len2, len);
    assert_true(be64_load(after + 72) & INCOMPAT_CORRUPT);
    assert_memory_equal(after, before, 72);
    assert_memory_equal(after + 80, before + 80, len - 80);
    assert_int_equal(qimg_image_close(img), 0);
    free(before);
    free(refs);
    cio_free(&c);
    fx_free(&f);
}
/* A refcount table entry naming a block past the end of the file: -r all
 * extends the file to cover it, and the rebuilt structure is clean. */
static void test_check_refcount_block_outside_image(void **state)
{
    struct qimg_check_result *r;
    struct fx f;
    uint64_t far;

    (void)state;
    fx_data(&f, false);
    assert_int_equal(get64(&f, f.rt_off + 8), 0);
    far = ALIGN_UP(f.len, CS) + 100 * CS;
    put64(&f, f.rt_off + 8, far);
    assert_int_equal(run_check(&f, 0, &r), 0);
    counts(r, 1, 0, 0);
    assert_int_equal(r->nb_msgs, 1);
    assert_string_equal(msg(r, "reftable", true,
                            "ERROR refcount block 1 is outside image")->where,
                        "refcount table index 1");
    qimg_check_result_free(r);

    /* The block then reads as zeros (cluster far itself at refcount 0),
     * so the structure is rebuilt: two fixes. */
    assert_int_equal(run_check(&f, QIMG_CHECK_FIX_ERRORS, &r), 0);
    msg(r, "reftable", true, "Repairing refcount block 1 is outside image");
    msg(r, "refcount", true, "ERROR cluster %" PRIu64 " refcount=0 "
                             "reference=1", far / CS);
    msg(r, "rebuild", false, "Rebuilding refcount structure");
    counts(r, 0, 0, 0);
    fixed(r, 2, 0);
    qimg_check_result_free(r);
    assert_true(f.len >= far + CS);
    assert_clean(&f);
    fx_free(&f);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_check_fresh_image_is_clean),
        cmocka_unit_test(test_check_used_image_is_clean_with_statistics),
        cmocka_unit_test(test_check_leaked_cluster),
        cmocka_unit_test(test_check_refcount_too_high),
        cmocka_unit_test(test_check_refcount_too_low),
        cmocka_unit_test(test_check_refcount_zero_needs_rebuild),
        cmocka_unit_test(test_check_l2_entry_past_eof),
        cmocka_unit_test(test_check_overlap_with_metadata),
        cmocka_unit_test(test_check_overlap_between_entries),
        cmocka_unit_test(test_check_copied_flags),
        cmocka_unit_test(test_check_reserved_bits),
        cmocka_unit_test(test_check_snapshot_l1_unaligned),
        cmocka_unit_test(test_check_snapshot_l1_too_large),
        cmocka_unit_test(test_check_snapshot_entry_incomplete),
        cmocka_unit_test(test_check_snapshot_too_much_extra),
        cmocka_unit_test(test_check_snapshot_table_header),
        cmocka_unit_test(test_check_refcount_block_outside_image),
        cmocka_unit_test(test_check_rebuild_refuses_live_metadata),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
