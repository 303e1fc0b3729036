/*
 * test_txn.c - the snapshot transaction (txn.c, txn_refs.c, txn_place.c,
 * txn_space.c, txn_tables.c, txn_wbuf.c): the references create, apply
 * and delete add or drop, cluster by cluster; where new metadata goes
 * (clusters free in the old state and counted in the new one, past the
 * end of the file when there are none, clusters freed by an operation
 * only for the next one); refusals that write nothing; and the commit,
 * one write of header sector 0 before which the old image is intact.
 *
 * Images are built in memory (io-mem) under a recording io (cio.h).
 * The first tests drive the transaction's parts directly (txn_impl.h);
 * the others go through the public API.
 */
#include "cio.h"

#include "txn_impl.h"

#include <stdio.h>

#define CS 4096u
#define DISK (16u << 20)          /* 4096 clusters, 8 L2 tables */
#define L2_SPAN (CS / 8)          /* guest clusters per L2 table */

/* Guest clusters the tests write: in L2 tables 0, 1, 2, 5 and 7. */
static const uint64_t guest[] = {0, 1, 2, 600, 601, 1500, 3000, 4095};
#define NB_GUEST ARRAY_SIZE(guest)

static void fill(uint8_t *buf, uint64_t g, unsigned gen)
{
    for (unsigned i = 0; i < CS; i++)
        buf[i] = (uint8_t)(g * 31 + gen * 101 + i % 251 + 1);
}

static struct qimg_create_opts opts(uint32_t refcount_bits)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;

    o.size = DISK;
    o.cluster_size = CS;
    o.refcount_bits = refcount_bits;
    return o;
}

static void write_gen(qimg_image *img, uint64_t g, unsigned gen)
{
    uint8_t buf[CS];

    fill(buf, g, gen);
    assert_int_equal(qimg_image_write(img, buf, CS, g * CS), 0);
}

/* Write generation gen into every guest cluster of the list. */
static void populate(qimg_image *img, unsigned gen)
{
    for (size_t i = 0; i < NB_GUEST; i++)
        write_gen(img, guest[i], gen);
    assert_int_equal(qimg_image_flush(img), 0);
}

/* Guest cluster g reads as generation gen (0: zeros). */
static void assert_gen(qimg_image *img, uint64_t g, unsigned gen)
{
    uint8_t buf[CS], want[CS];

    if (gen)
        fill(want, g, gen);
    else
        memset(want, 0, CS);
    assert_int_equal(qimg_image_read(img, buf, CS, g * CS), 0);
    assert_memory_equal(buf, want, CS);
}

static void assert_all_gen(qimg_image *img, unsigned gen)
{
    for (size_t i = 0; i < NB_GUEST; i++)
        assert_gen(img, guest[i], gen);
    assert_gen(img, 100, 0);
}

/* The L2 entry of guest cluster g (0 if its L2 table is missing). */
static uint64_t entry_of(qimg_image *img, uint64_t g, uint64_t *l2_off)
{
    struct l2_slot s;

    assert_int_equal(l2_lookup(img, g * CS, &s), 0);
    if (l2_off)
        *l2_off = s.l2_off;
    return s.entry;
}

static uint64_t host_of(qimg_image *img, uint64_t g)
{
    return (entry_of(img, g, NULL) & L2E_OFFSET_MASK) / CS;
}

/* A snapshot's L1 table, read from the file (caller frees). */
static uint8_t *snap_l1(qimg_image *img, int idx)
{
    const struct snap *s = &img->q->sn->snaps[idx];
    uint8_t *l1 = malloc((size_t)s->l1_size * 8 + 8);

    assert_non_null(l1);
    assert_int_equal(file_pread(img, l1, (size_t)s->l1_size * 8, s->l1_off),
                     0);
    return l1;
}

static void assert_image_clean(struct cio *c)
{
    size_t len;
    const uint8_t *d = cio_bytes(c, &len);

    assert_bytes_clean(d, len);
}

/* ---- The transaction's parts, driven directly ---------------------------- */

/* What txn_init() and txn_free() in txn.c do, for tests that work the
 * parts by hand: the image is flushed, every live metadata cluster is
 * found counted, and each part is set up. */
static void t_begin(struct txn *t, qimg_image *img, bool preload)
{
    memset(t, 0, sizeof *t);
    t->img = img;
    t->q = img->q;
    t->cs = img->q->cluster_size;
    txn_space_init(t);
    assert_int_equal(qcow2_flush(img), 0);
    assert_int_equal(
        metaset_check_counted(img, preload ? txn_refs_loaded : NULL, t), 0);
    assert_int_equal(txn_tables_init(t), 0);
    assert_int_equal(txn_space_setup(t), 0);
    assert_int_equal(txn_wbuf_init(t), 0);
}

static void t_end(struct txn *t)
{
    txn_refs_free(t);
    txn_place_free(t);
    txn_space_free(t);
    txn_wbuf_free(t);
    txn_tables_free(t);
}

static uint64_t t_rc(struct txn *t, uint64_t idx)
{
    uint64_t rc = UINT64_MAX;

    assert_int_equal(txn_refs_get(t, idx, &rc), 0);
    return rc;
}

static bool t_zero_hit(struct txn *t, uint64_t idx)
{
    uint64_t per = 1ull << t->q->rb_bits;

    return txn_refs_zero_hit_at(txn_refs_zhit(t, idx / per), idx % per);
}

/* Counting changes the operation's copies of the refcount blocks only:
 * the image's refcounts stay, nothing is written, and a decrement to 0 is
 * remembered. Leaving a refcount's range is refused. */
static void test_txn_refs_count_in_memory_only(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint64_t d, l2, next;
    struct txn t;

    (void)state;
    populate(img, 1);
    d = host_of(img, 600);
    entry_of(img, 600, &l2);
    l2 /= CS;
    assert_int_equal(rc_of(img, d), 1);
    t_begin(&t, img, true);
    cio_reset(&c);
    assert_true(txn_refs_unchanged(&t));
    assert_int_equal(txn_refs_add(&t, d, 1), 0);
    assert_int_equal(txn_refs_add(&t, l2, 3), 0);
    assert_false(txn_refs_unchanged(&t));
    assert_int_equal(t_rc(&t, d), 2);
    assert_int_equal(t_rc(&t, l2), 4);
    assert_int_equal(rc_of(img, d), 1);
    assert_int_equal(rc_of(img, l2), 1);
    assert_int_equal(txn_refs_add(&t, d, -2), 0);
    assert_int_equal(t_rc(&t, d), 0);
    assert_true(t_zero_hit(&t, d));
    assert_false(t_zero_hit(&t, l2));
    /* Below 0: the image's refcount is lower than its references. */
    assert_int_equal(txn_refs_add(&t, d, -1), -EIO);
    assert_non_null(strstr(qimg_last_error()->message,
                           "is lower than its references"));
    assert_int_equal(t_rc(&t, d), 0);
    /* A byte range counts every cluster it touches, once. */
    next = t_rc(&t, l2 + 1);
    assert_int_equal(txn_refs_add_range(&t, l2 * CS + CS - 1, 2, 1), 0);
    assert_int_equal(t_rc(&t, l2), 5);
    assert_int_equal(t_rc(&t, l2 + 1), next + 1);
    assert_int_equal(c.nb_ops, 0);
    t_end(&t);
    assert_int_equal(rc_of(img, d), 1);
    assert_int_equal(qimg_image_close(img), 0);
    assert_int_equal(c.count[OP_WRITE], 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Counting a run of clusters across a refcount block boundary, 16-bit
 * entries four at a time: a refcount at its maximum (or at 0, for -1)
 * anywhere in the run is refused, naming that cluster. */
static void test_txn_refs_run_limits(void **state)
{
    static const uint64_t at[] = {0, 2, 5, 12, 13, 14, 21, 39};
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint64_t per, start;
    char want[128];
    struct txn t;

    (void)state;
    populate(img, 1);
    per = 1ull << img->q->rb_bits;
    assert_int_equal(per, CS * 8 / 16);
    start = per - 13; /* runs of 40 span blocks 0 and 1; all at 0 */
    assert_true(start > img->q->file_size / CS);
    cio_reset(&c);

    /* +1 and -1 go four entries at a time, other deltas one by one: a
     * count taken to 0 either way is remembered as freed. */
    for (int64_t d = 1; d <= 3; d++) {
        t_begin(&t, img, false);
        assert_int_equal(txn_refs_add_run(&t, start, 40, d), 0);
        for (uint64_t k = start - 1; k <= start + 40; k++)
            assert_int_equal(t_rc(&t, k),
                             k >= start && k < start + 40 ? d : 0);
        assert_int_equal(txn_refs_add_run(&t, start, 40, -d), 0);
        for (uint64_t k = start - 1; k <= start + 40; k++) {
            assert_int_equal(t_rc(&t, k), 0);
            assert_int_equal(t_zero_hit(&t, k), k >= start && k < start + 40);
        }
        t_end(&t);
    }

    for (size_t i = 0; i < ARRAY_SIZE(at); i++) {
        t_begin(&t, img, false);
        assert_int_equal(txn_refs_add(&t, start + at[i], 0xfffe), 0);
        assert_int_equal(txn_refs_add_run(&t, start, 40, 1), 0);
        assert_int_equal(t_rc(&t, start + at[i]), 0xffff);
        assert_int_equal(txn_refs_add_run(&t, start, 40, 1), -EINVAL);
        assert_int_equal(t_rc(&t, start + at[i]), 0xffff);
        snprintf(want, sizeof want,
                 "Refcount of cluster %" PRIu64
                 " would exceed its maximum of 65535",
                 start + at[i]);
        assert_string_equal(qimg_last_error()->message, want);
        t_end(&t);

        t_begin(&t, img, false);
        assert_int_equal(txn_refs_add_run(&t, start, 40, 1), 0);
        assert_int_equal(txn_refs_add(&t, start + at[i], -1), 0);
        assert_int_equal(txn_refs_add_run(&t, start, 40, -1), -EIO);
        snprintf(want, sizeof want,
                 "Refcount of cluster %" PRIu64
                 " is lower than its references",
                 start + at[i]);
        assert_string_equal(qimg_last_error()->message, want);
        t_end(&t);
    }
    assert_int_equal(c.count[OP_WRITE], 0);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* The same limits for every entry width: +1 over the maximum and -1
 * under 0 are refused, by cluster and by run. */
static void test_txn_refs_limits_every_width(void **state)
{
    static const uint32_t bits[] = {1, 2, 4, 8, 16, 32, 64};

    (void)state;
    for (size_t b = 0; b < ARRAY_SIZE(bits); b++) {
        struct qimg_create_opts o = opts(bits[b]);
        struct cio c;
        qimg_image *img = cio_create(&c, &o);
        uint64_t d, max = img->q->refcount_max;
        struct txn t;

        populate(img, 1);
        d = host_of(img, 3000);
        t_begin(&t, img, true);
        cio_reset(&c);
        for (uint64_t need = max - 1; need;) {
            int64_t step = need > INT64_MAX ? INT64_MAX : (int64_t)need;
            assert_int_equal(txn_refs_add(&t, d, step), 0);
            need -= (uint64_t)step;
        }
        assert_int_equal(t_rc(&t, d), max);
        assert_int_equal(txn_refs_add(&t, d, 1), -EINVAL);
        assert_int_equal(txn_refs_add_run(&t, d - 1, 3, 1), -EINVAL);
        assert_int_equal(t_rc(&t, d), max);
        assert_int_equal(rc_of(img, d), 1);
        t_end(&t);
        t_begin(&t, img, true);
        assert_int_equal(txn_refs_add_run(&t, d, 1, -1), 0);
        assert_int_equal(txn_refs_add_run(&t, d, 1, -1), -EIO);
        assert_true(t_zero_hit(&t, d));
        t_end(&t);
        assert_int_equal(c.count[OP_WRITE], 0);
        assert_int_equal(qimg_image_close(img), 0);
        cio_free(&c);
    }
}

/* New metadata goes only where the old state has refcount 0 and the new
 * one has no reference yet: a hole inside the file first, past the end of
 * the file when there is none; never to a cluster this operation took to
 * 0 (the old state still uses it until the commit). Each cluster handed
 * out is counted once. */
static void test_txn_space_alloc_free_in_both_states(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint64_t hole, dropped, end, off, got[64];
    struct txn t;

    (void)state;
    populate(img, 1);
    /* A hole: guest cluster 1's host cluster, discarded. */
    hole = host_of(img, 1);
    assert_int_equal(qimg_image_discard(img, 1 * CS, CS), 0);
    assert_int_equal(qimg_image_flush(img), 0);
    assert_int_equal(rc_of(img, hole), 0);
    dropped = host_of(img, 2);
    end = img->q->file_size / CS;
    for (uint64_t k = 1; k < end; k++)
        if (k != hole)
            assert_int_not_equal(rc_of(img, k), 0); /* the only hole */
    t_begin(&t, img, true);
    cio_reset(&c);
    /* The operation drops the last reference to another cluster. */
    assert_int_equal(txn_refs_add(&t, dropped, -1), 0);
    assert_int_equal(txn_space_alloc(&t, 1, &off), 0);
    assert_int_equal(off, hole * CS);
    assert_int_equal(t_rc(&t, hole), 1);
    assert_int_equal(rc_of(img, hole), 0);
    /* Nothing is free inside the file any more: past its end, each new
     * cluster counted once. */
    for (size_t i = 0; i < ARRAY_SIZE(got); i++) {
        assert_int_equal(txn_space_alloc(&t, 1, &off), 0);
        got[i] = off / CS;
        assert_true(got[i] >= end);
        assert_int_not_equal(got[i], dropped);
        assert_int_equal(t_rc(&t, got[i]), 1);
        for (size_t j = 0; j < i; j++)
            assert_int_not_equal(got[j], got[i]);
    }
    assert_int_equal(txn_space_end(&t), got[ARRAY_SIZE(got) - 1] + 1);
    /* Several at once: contiguous, all new. */
    assert_int_equal(txn_space_alloc(&t, 5, &off), 0);
    for (uint64_t k = off / CS; k < off / CS + 5; k++) {
        assert_true(k >= end);
        assert_int_equal(t_rc(&t, k), 1);
        for (size_t j = 0; j < ARRAY_SIZE(got); j++)
            assert_int_not_equal(got[j], k);
    }
    assert_int_equal(t_rc(&t, dropped), 0);
    assert_int_equal(rc_of(img, dropped), 1);
    /* Allocating wrote nothing. */
    assert_int_equal(c.nb_ops, 0);
    t_end(&t);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* A cluster handed out must be free in the old state also where the
 * operation holds no copy of the refcount block: here singles are taken
 * one after another up to the end of block 0, whose next cluster (block 1,
 * never loaded) is in use. */
static void test_txn_space_alloc_checks_blocks_not_held(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint64_t per, nb_free = 0, off, got[8];
    struct txn t;

    (void)state;
    per = 1ull << img->q->rb_bits;
    /* Fill more than one refcount block's worth of clusters. */
    for (uint64_t g = 0; g < per + 256; g++)
        write_gen(img, g, 1);
    assert_int_equal(qimg_image_flush(img), 0);
    assert_true(img->q->file_size / CS > per + 8);
    /* Free the data clusters among the last few of block 0. */
    for (uint64_t g = 0; g < per + 256; g++) {
        uint64_t h = host_of(img, g);
        if (h >= per - 6 && h < per) {
            assert_int_equal(qimg_image_discard(img, g * CS, CS), 0);
            nb_free++;
        }
    }
    assert_int_equal(qimg_image_flush(img), 0);
    assert_true(nb_free >= 3);
    assert_int_equal(rc_of(img, per - 1), 0);
    assert_int_not_equal(rc_of(img, per), 0);
    for (uint64_t k = 1; k < per - 6; k++)
        assert_int_not_equal(rc_of(img, k), 0);
    t_begin(&t, img, false); /* as apply: no block loaded */
    assert_null(txn_refs_block(&t, 1));
    for (size_t i = 0; i < ARRAY_SIZE(got); i++) {
        assert_int_equal(txn_space_alloc(&t, 1, &off), 0);
        got[i] = off / CS;
        assert_int_equal(rc_of(img, got[i]), 0);
        assert_int_equal(t_rc(&t, got[i]), 1);
        if (i < nb_free)
            assert_true(got[i] >= per - 6 && got[i] < per);
        else
            assert_true(got[i] >= img->q->file_size / CS);
    }
    t_end(&t);
    assert_int_equal(qimg_image_close(img), 0);
    cio_free(&c);
}

/* The write buffer: new metadata for consecutive clusters goes out in one
 * request when flushed; a write elsewhere sends what it holds first. */
static void test_txn_wbuf_coalesces(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint8_t a[CS], b[CS], back[CS];
    uint64_t off, far;
    struct txn t;

    (void)state;
    populate(img, 1);
    memset(a, 0xa5, CS);
    memset(b, 0x5a, CS);
    t_begin(&t, img, true);
    assert_int_equal(txn_space_alloc(&t, 2, &off), 0);
    assert_int_equal(txn_space_alloc(&t, 1, &far), 0); /* a gap */
    assert_int_equal(txn_space_alloc(&t, 1, &far), 0);
    assert_int_not_equal(far, off + 2 * CS);
    /* Held until every count is made: nothing reaches the file before
     * txn_wbuf_release, which writes it all in order. */
    cio_reset(&c);
    assert_int_equal(txn_wbuf_write(&t, a, CS, off), 0);
    assert_int_equal(txn_wbuf_write(&t, b, CS, far), 0);
    assert_int_equal(txn_wbuf_flush(&t), 0);
    assert_int_equal(c.count[OP_WRITE], 0);
    assert_int_equal(txn_wbuf_release(&t), 0);
    assert_int_equal(c.count[OP_WRITE], 2);
    assert_int_equal(c.ops[0].off, off);
    assert_int_equal(c.ops[1].off, far);
    assert_int_equal(file_pread(img, back, CS, far), 0);
    assert_memory_equal(back, b, CS);
    /* Released: writes coalesce and go out as the buffer fills. */
    cio_reset(&c);
    assert_int_equal(txn_wbuf_write(&t, a, CS, off), 0);
    assert_int_equal(txn_wbuf_write(&t, b, CS, off + CS), 0);
    assert_int_equal(c.count[OP_WRITE], 0);
    assert_int_equal(txn_wbuf_write(&t, a, CS, far), 0);
    assert_int_equal(c.count[OP_WRITE], 1);
    assert_int_equal(c.ops[0].off, off);
    assert_int_equal(c.ops[0].len, 2 * CS);
    assert_int_equal(txn_wbuf_flush(&t), 0);
    assert_int_equal(c.count[OP_WRITE], 2);
    assert_int_equal(c.ops[1].off, far);
    assert_int_equal(c.ops[1].len, CS);
    assert_int_equal(txn_wbuf_flush(&t), 0); /* empty: nothing */
    assert_int_equal(c.count[OP_WRITE], 2);
    assert_int_equal(file_pread(img, back, CS, off + CS), 0);
    assert_memory_equal(back, b, CS);
    t_end(&t);
    /* Nothing the image uses was written: it is as it was. */
    assert_all_gen(img, 1);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* A new structure may never land on live metadata of the old state: the
 * write buffer checks every write against the overlap map and refuses
 * (corruption, QEMU's words) without writing. The allocator never hands
 * out such a cluster; this is the net under it. */
static void test_txn_wbuf_refuses_live_metadata(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint8_t a[CS];
    uint64_t l1 = img->q->hdr.l1_table_offset;
    uint64_t rt = img->q->hdr.refcount_table_offset;
    struct txn t;

    (void)state;
    populate(img, 1);
    memset(a, 0xa5, CS);
    t_begin(&t, img, true);
    cio_reset(&c);
    assert_int_equal(txn_wbuf_write(&t, a, CS, l1), 0); /* buffered */
    assert_int_equal(txn_wbuf_flush(&t), -EIO);
    assert_non_null(strstr(qimg_last_error()->message,
                           "overlaps with active L1 table"));
    assert_int_equal(txn_wbuf_direct(&t, a, CS, rt), -EIO);
    assert_int_equal(txn_wbuf_direct(&t, a, CS, 0), -EIO);
    assert_int_equal(c.count[OP_WRITE] , 1); /* only the corrupt bit */
    assert_int_equal(c.ops[0].off, 72);
    t_end(&t);
    assert_all_gen(img, 1);
    qimg_image_close(img);
    cio_free(&c);
}

/* ---- Counting, through the public API ------------------------------------ */

/* Create: one more L1 points at every active L2 table, so each table and
 * each cluster it maps gains one reference; the active tables lose their
 * COPIED flags (new copies, shared by both L1 tables, replace them). */
static void test_txn_create_adds_one_reference_per_cluster(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint64_t host[NB_GUEST], old_l2[8] = {0}, old_l1;
    uint32_t l1_size;
    uint8_t *sl1;

    (void)state;
    populate(img, 1);
    l1_size = img->q->l1s->l1_size;
    assert_int_equal(l1_size, 8);
    old_l1 = img->q->hdr.l1_table_offset / CS;
    for (size_t i = 0; i < NB_GUEST; i++) {
        uint64_t e = entry_of(img, guest[i], NULL);
        host[i] = host_of(img, guest[i]);
        assert_true(e & QCOW_OFLAG_COPIED);
        assert_int_equal(rc_of(img, host[i]), 1);
    }
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t e = l1_entry_get(img->q->l1s->l1, i);
        old_l2[i] = (e & L1E_OFFSET_MASK) / CS;
        if (old_l2[i]) {
            assert_true(e & QCOW_OFLAG_COPIED);
            assert_int_equal(rc_of(img, old_l2[i]), 1);
        }
    }
    assert_true(old_l2[0] && old_l2[1] && old_l2[2] && old_l2[5] && old_l2[7]);
    assert_false(old_l2[3] || old_l2[4] || old_l2[6]);

    assert_int_equal(qimg_snapshot_create(img, "s1"), 0);
    assert_int_equal(img->q->sn->nb_snaps, 1);
    assert_int_equal(img->q->sn->snaps[0].l1_size, l1_size);
    assert_int_equal(img->q->l1s->l1_size, l1_size);
    sl1 = snap_l1(img, 0);
    for (uint32_t i = 0; i < l1_size; i++) {
        uint64_t a = l1_entry_get(img->q->l1s->l1, i);
        uint64_t s = l1_entry_get(sl1, i);
        uint64_t l2 = (a & L1E_OFFSET_MASK) / CS;
        assert_int_equal(a, s & L1E_OFFSET_MASK); /* the same table */
        assert_false(a & QCOW_OFLAG_COPIED);
        assert_int_equal(l2 != 0, old_l2[i] != 0);
        if (!l2)
            continue;
        assert_int_not_equal(l2, old_l2[i]); /* a copy without COPIED */
        assert_int_equal(rc_of(img, l2), 2);
        assert_int_equal(rc_of(img, old_l2[i]), 0);
    }
    free(sl1);
    for (size_t i = 0; i < NB_GUEST; i++) {
        uint64_t e = entry_of(img, guest[i], NULL);
        assert_int_equal((e & L2E_OFFSET_MASK) / CS, host[i]);
        assert_false(e & QCOW_OFLAG_COPIED);
        assert_int_equal(rc_of(img, host[i]), 2);
    }
    /* The old active L1 table went; the new one, the snapshot's and the
     * snapshot table are counted once. */
    assert_int_equal(rc_of(img, old_l1), 0);
    assert_int_equal(rc_of(img, img->q->hdr.l1_table_offset / CS), 1);
    assert_int_equal(rc_of(img, img->q->sn->snaps[0].l1_off / CS), 1);
    assert_int_equal(rc_of(img, img->q->hdr.snapshots_offset / CS), 1);
    assert_all_gen(img, 1);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Delete drops what the snapshot's L1 added: shared clusters go back to
 * 1 and get COPIED again, clusters only the snapshot used are freed. */
static void test_txn_delete_drops_one_reference_per_cluster(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint64_t host[NB_GUEST], snap_l1c, snap_tab, l2;

    (void)state;
    populate(img, 1);
    assert_int_equal(qimg_snapshot_create(img, "s1"), 0);
    for (size_t i = 0; i < NB_GUEST; i++)
        host[i] = host_of(img, guest[i]);
    /* Guest cluster 600 is rewritten: the snapshot alone keeps its old
     * cluster, and the L2 table of guest 600 and 601 is copied. */
    write_gen(img, 600, 2);
    assert_int_equal(qimg_image_flush(img), 0);
    assert_int_not_equal(host_of(img, 600), host[3]);
    assert_int_equal(rc_of(img, host[3]), 1);
    assert_int_equal(rc_of(img, host_of(img, 600)), 1);
    assert_int_equal(rc_of(img, host[4]), 2);
    snap_l1c = img->q->sn->snaps[0].l1_off / CS;
    snap_tab = img->q->hdr.snapshots_offset / CS;

    assert_int_equal(qimg_snapshot_delete(img, "s1"), 0);
    assert_int_equal(img->q->sn->nb_snaps, 0);
    assert_int_equal(img->q->hdr.nb_snapshots, 0);
    assert_int_equal(rc_of(img, host[3]), 0);
    assert_int_equal(rc_of(img, snap_l1c), 0);
    assert_int_equal(rc_of(img, snap_tab), 0);
    for (size_t i = 0; i < NB_GUEST; i++) {
        uint64_t e = entry_of(img, guest[i], &l2);
        assert_true(e & QCOW_OFLAG_COPIED);
        assert_int_equal(rc_of(img, (e & L2E_OFFSET_MASK) / CS), 1);
        assert_int_equal(rc_of(img, l2 / CS), 1);
        if (i != 3)
            assert_int_equal((e & L2E_OFFSET_MASK) / CS, host[i]);
    }
    for (uint32_t i = 0; i < img->q->l1s->l1_size; i++) {
        uint64_t e = l1_entry_get(img->q->l1s->l1, i);
        if (e)
            assert_true(e & QCOW_OFLAG_COPIED);
    }
    assert_gen(img, 600, 2);
    assert_gen(img, 601, 1);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Apply: only L1 pointers that differ change counts. Clusters the active
 * disk gained since the snapshot are freed, the snapshot's come back;
 * applying it again changes nothing and writes nothing. */
static void test_txn_apply_counts_only_changed_pointers(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint64_t host[NB_GUEST], cow, fresh, fresh_l2;

    (void)state;
    populate(img, 1);
    assert_int_equal(qimg_snapshot_create(img, "s1"), 0);
    for (size_t i = 0; i < NB_GUEST; i++)
        host[i] = host_of(img, guest[i]);
    write_gen(img, 1500, 2);          /* copy-on-write */
    write_gen(img, 4 * L2_SPAN, 2);   /* a new L2 table */
    assert_int_equal(qimg_image_flush(img), 0);
    cow = host_of(img, 1500);
    fresh = host_of(img, 4 * L2_SPAN);
    entry_of(img, 4 * L2_SPAN, &fresh_l2);
    fresh_l2 /= CS;
    assert_int_equal(rc_of(img, cow), 1);
    assert_int_equal(rc_of(img, fresh), 1);
    assert_int_equal(rc_of(img, fresh_l2), 1);
    assert_int_equal(rc_of(img, host[5]), 1);

    assert_int_equal(qimg_snapshot_apply(img, "s1"), 0);
    assert_int_equal(rc_of(img, cow), 0);
    assert_int_equal(rc_of(img, fresh), 0);
    assert_int_equal(rc_of(img, fresh_l2), 0);
    assert_int_equal(l1_entry_get(img->q->l1s->l1, 4), 0);
    for (size_t i = 0; i < NB_GUEST; i++) {
        assert_int_equal(host_of(img, guest[i]), host[i]);
        assert_int_equal(rc_of(img, host[i]), 2);
    }
    assert_all_gen(img, 1);
    assert_gen(img, 4 * L2_SPAN, 0);
    assert_int_equal(qimg_image_flush(img), 0);

    cio_reset(&c);
    assert_int_equal(qimg_snapshot_apply(img, "1"), 0);
    assert_int_equal(c.count[OP_WRITE] + c.count[OP_DISCARD] +
                         c.count[OP_TRUNCATE],
                     0);
    assert_all_gen(img, 1);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Half noise, half zeros: compresses to a bit over half a cluster. */
static void fill_half_noise(uint8_t *buf, uint32_t seed)
{
    memset(buf, 0, CS);
    for (unsigned i = 0; i < CS / 2 + CS / 16; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (uint8_t)(seed >> 16);
    }
}

/* Compressed clusters count per stream and per host cluster a stream
 * touches: two streams packed from the start of a host cluster, the
 * second running into the next one, give the first cluster refcount 2
 * and the next 1; each snapshot adds one reference per stream. */
static void test_txn_counts_compressed_streams(void **state)
{
    static const int64_t rc_h[] = {2, 4, 6, 4, 2}, rc_h1[] = {1, 2, 3, 2, 1};
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    uint8_t buf[CS], back[CS];
    uint64_t e0, e1, c0, l0, c1, l1, h;

    (void)state;
    for (unsigned g = 8; g < 10; g++) {
        fill_half_noise(buf, g);
        assert_int_equal(qimg_image_write_compressed(img, buf, CS, g * CS), 0);
    }
    assert_int_equal(qimg_image_flush(img), 0);
    e0 = entry_of(img, 8, NULL);
    e1 = entry_of(img, 9, NULL);
    assert_true(e0 & QCOW_OFLAG_COMPRESSED);
    assert_true(e1 & QCOW_OFLAG_COMPRESSED);
    l2_compressed_range(img->q, e0, &c0, &l0);
    l2_compressed_range(img->q, e1, &c1, &l1);
    h = c0 / CS;
    assert_int_equal(c0 % CS, 0);
    assert_int_equal(c1 / CS, h);            /* packed after the first */
    assert_int_equal((c1 + l1 - 1) / CS, h + 1); /* and runs over */
    for (int step = 0; step < 5; step++) {
        switch (step) {
        case 1:
            assert_int_equal(qimg_snapshot_create(img, "a"), 0);
            break;
        case 2:
            assert_int_equal(qimg_snapshot_create(img, "b"), 0);
            break;
        case 3:
            assert_int_equal(qimg_snapshot_delete(img, "a"), 0);
            break;
        case 4:
            assert_int_equal(qimg_snapshot_delete(img, "b"), 0);
            break;
        }
        assert_int_equal(rc_of(img, h), rc_h[step]);
        assert_int_equal(rc_of(img, h + 1), rc_h1[step]);
        /* COPIED is never set on compressed entries. */
        assert_false(entry_of(img, 8, NULL) & QCOW_OFLAG_COPIED);
        assert_false(entry_of(img, 9, NULL) & QCOW_OFLAG_COPIED);
    }
    for (unsigned g = 8; g < 10; g++) {
        fill_half_noise(buf, g);
        assert_int_equal(qimg_image_read(img, back, CS, g * CS), 0);
        assert_memory_equal(back, buf, CS);
    }
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Create and delete count the same at every refcount width that holds
 * two references. */
static void test_txn_counts_every_width(void **state)
{
    static const uint32_t bits[] = {2, 4, 8, 32, 64};

    (void)state;
    for (size_t b = 0; b < ARRAY_SIZE(bits); b++) {
        struct qimg_create_opts o = opts(bits[b]);
        struct cio c;
        qimg_image *img = cio_create(&c, &o);
        uint64_t host[NB_GUEST];

        populate(img, 1);
        for (size_t i = 0; i < NB_GUEST; i++)
            host[i] = host_of(img, guest[i]);
        assert_int_equal(qimg_snapshot_create(img, "s"), 0);
        for (size_t i = 0; i < NB_GUEST; i++)
            assert_int_equal(rc_of(img, host[i]), 2);
        assert_int_equal(qimg_snapshot_delete(img, "s"), 0);
        for (size_t i = 0; i < NB_GUEST; i++) {
            assert_int_equal(rc_of(img, host[i]), 1);
            assert_true(entry_of(img, guest[i], NULL) & QCOW_OFLAG_COPIED);
        }
        assert_all_gen(img, 1);
        assert_int_equal(qimg_image_close(img), 0);
        assert_image_clean(&c);
        cio_free(&c);
    }
}

/* ---- Where new metadata goes, and the commit ----------------------------- */

enum txn_op { OP_CREATE, OP_APPLY, OP_DELETE };

static int do_op(qimg_image *img, enum txn_op op, const char *arg)
{
    switch (op) {
    case OP_CREATE:
        return qimg_snapshot_create(img, arg);
    case OP_APPLY:
        return qimg_snapshot_apply(img, arg);
    default:
        return qimg_snapshot_delete(img, arg);
    }
}

struct op_result {
    uint64_t old_end, new_end; /* file size, clusters */
    uint64_t written, past_eof; /* clusters written before the switch */
    uint64_t reused;            /* ... of them in `prev_freed` */
    bool *freed;                /* clusters only the old state used */
};

/* Run one snapshot operation and hold it to the transaction's rules:
 *  - before the switch it writes only clusters the old state has at
 *    refcount 0 (or past the end of the file), each counted in the new
 *    state; no discard, no truncate;
 *  - then exactly one write of header sector 0, 512 bytes at 0, with a
 *    flush on either side; the file as it was before it is the old image,
 *    intact and clean, with its old snapshot count and guest data;
 *  - after it nothing is written; a discard only gives back clusters that
 *    only the old state used.
 * prev_freed (may be NULL): clusters an earlier operation freed. */
static void run_op(struct cio *c, qimg_image *img, enum txn_op op,
                   const char *arg, const bool *prev_freed,
                   uint64_t prev_n, struct op_result *res)
{
    uint64_t *rc_old, n_old, hdr = SIZE_MAX, nb_hdr = 0;
    uint32_t snaps_before = img->q->sn->nb_snaps;
    uint8_t *guest_before, buf[CS];
    size_t len;

    memset(res, 0, sizeof *res);
    assert_int_equal(qimg_image_flush(img), 0);
    guest_before = malloc((NB_GUEST + 1) * CS);
    assert_non_null(guest_before);
    for (size_t i = 0; i <= NB_GUEST; i++)
        assert_int_equal(qimg_image_read(img, guest_before + i * CS, CS,
                                         (i < NB_GUEST ? guest[i]
                                                       : 4 * L2_SPAN) *
                                             CS),
                         0);
    cio_bytes(c, &len);
    n_old = DIV_ROUND_UP(len, CS);
    rc_old = calloc(n_old, sizeof *rc_old);
    res->freed = calloc(n_old, sizeof *res->freed);
    assert_non_null(rc_old);
    assert_non_null(res->freed);
    for (uint64_t k = 0; k < n_old; k++)
        rc_old[k] = rc_of(img, k);
    cio_reset(c);
    assert_int_equal(do_op(img, op, arg), 0);

    for (size_t i = 0; i < c->nb_ops; i++)
        if (c->ops[i].kind == OP_WRITE && c->ops[i].off < 512) {
            hdr = i;
            nb_hdr++;
        }
    assert_int_equal(nb_hdr, 1);
    assert_int_equal(c->ops[hdr].off, 0);
    assert_int_equal(c->ops[hdr].len, 512);
    assert_true(hdr > 0 && c->ops[hdr - 1].kind == OP_FLUSH);
    assert_true(hdr + 1 < c->nb_ops && c->ops[hdr + 1].kind == OP_FLUSH);
    for (size_t i = 0; i < c->nb_ops; i++) {
        const struct op *p = &c->ops[i];
        if (i == hdr || p->kind == OP_FLUSH)
            continue;
        assert_int_not_equal(p->kind, OP_TRUNCATE);
        if (i < hdr) {
            assert_int_equal(p->kind, OP_WRITE);
            for (uint64_t k = p->off / CS; k <= (p->off + p->len - 1) / CS;
                 k++) {
                assert_int_not_equal(k, 0);
                if (k < n_old && rc_old[k] != 0)
                    fail_msg("cluster %" PRIu64 " (refcount %" PRIu64
                             ") written before the switch",
                             k, rc_old[k]);
                assert_true(rc_of(img, k) >= 1);
                res->written++;
                res->past_eof += k >= n_old;
                res->reused += k < prev_n && prev_freed && prev_freed[k];
            }
        } else {
            assert_int_equal(p->kind, OP_DISCARD);
            for (uint64_t k = p->off / CS; k <= (p->off + p->len - 1) / CS;
                 k++) {
                assert_true(k < n_old && rc_old[k] >= 1);
                assert_int_equal(rc_of(img, k), 0);
            }
        }
    }
    for (uint64_t k = 0; k < n_old; k++)
        res->freed[k] = rc_old[k] && !rc_of(img, k);
    res->old_end = n_old;
    cio_bytes(c, &len);
    res->new_end = DIV_ROUND_UP(len, CS);

    /* The file just before the switch: the old image, clean. */
    {
        struct cio old;
        qimg_image *oi = NULL;
        assert_non_null(c->pre_hdr);
        assert_int_equal(
            cio_open(&old, &oi, c->pre_hdr, c->pre_hdr_len, false, false), 0);
        assert_int_equal(oi->q->sn->nb_snaps, snaps_before);
        for (size_t i = 0; i <= NB_GUEST; i++) {
            uint64_t g = i < NB_GUEST ? guest[i] : 4 * L2_SPAN;
            assert_int_equal(qimg_image_read(oi, buf, CS, g * CS), 0);
            assert_memory_equal(buf, guest_before + i * CS, CS);
        }
        assert_int_equal(qimg_image_close(oi), 0);
        cio_free(&old);
        assert_bytes_clean(c->pre_hdr, c->pre_hdr_len);
    }
    assert_image_clean(c);
    free(guest_before);
    free(rc_old);
}

/* A sequence of operations, each held to run_op's rules, the guest data
 * checked after each. */
static void test_txn_ops_write_free_clusters_then_switch_once(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    struct op_result r;

    (void)state;
    populate(img, 1);
    run_op(&c, img, OP_CREATE, "one", NULL, 0, &r);
    free(r.freed);
    populate(img, 2);
    run_op(&c, img, OP_CREATE, "two", NULL, 0, &r);
    free(r.freed);
    assert_all_gen(img, 2);
    write_gen(img, 3000, 3);
    write_gen(img, 4 * L2_SPAN, 3);
    run_op(&c, img, OP_APPLY, "one", NULL, 0, &r);
    free(r.freed);
    assert_all_gen(img, 1);
    assert_gen(img, 4 * L2_SPAN, 0);
    run_op(&c, img, OP_DELETE, "one", NULL, 0, &r);
    free(r.freed);
    assert_all_gen(img, 1);
    run_op(&c, img, OP_APPLY, "two", NULL, 0, &r);
    free(r.freed);
    assert_all_gen(img, 2);
    run_op(&c, img, OP_DELETE, "2", NULL, 0, &r);
    free(r.freed);
    assert_all_gen(img, 2);
    assert_int_equal(img->q->sn->nb_snaps, 0);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* An image with no free cluster inside the file: everything new goes past
 * its end, and the file grows. */
static void test_txn_create_places_past_eof(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    struct op_result r;

    (void)state;
    populate(img, 1);
    for (uint64_t k = 0; k < img->q->file_size / CS; k++)
        assert_int_not_equal(rc_of(img, k), 0);
    run_op(&c, img, OP_CREATE, "s", NULL, 0, &r);
    assert_true(r.written > 0);
    assert_int_equal(r.past_eof, r.written);
    assert_true(r.new_end >= r.old_end + r.written);
    assert_true(img->q->file_size >= r.new_end * CS - CS + 1);
    free(r.freed);
    assert_int_equal(qimg_image_close(img), 0);
    cio_free(&c);
}

/* Clusters an operation frees are not reused by it (the old state needs
 * them until the switch) but are by the next one. */
static void test_txn_freed_clusters_reused_by_next_op(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    struct op_result r1, r2;
    uint64_t nb_freed = 0;

    (void)state;
    populate(img, 1);
    run_op(&c, img, OP_CREATE, "s1", NULL, 0, &r1);
    for (uint64_t k = 0; k < r1.old_end; k++)
        nb_freed += r1.freed[k];
    /* The old active L1 table, the five L2 tables whose copies lost
     * COPIED, the old refcount table and the refcount block it replaced. */
    assert_int_equal(nb_freed, 8);
    run_op(&c, img, OP_CREATE, "s2", r1.freed, r1.old_end, &r2);
    assert_true(r2.reused > 0);
    assert_all_gen(img, 1);
    free(r1.freed);
    free(r2.freed);
    assert_int_equal(qimg_image_close(img), 0);
    cio_free(&c);
}

/* The commit's one header write failing leaves the old image; the handle
 * stays usable and the operation can be made again. */
static void test_txn_failed_switch_leaves_old_image(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c, old;
    qimg_image *img = cio_create(&c, &o), *oi = NULL;
    const uint8_t *d;
    uint8_t *before;
    size_t len;

    (void)state;
    populate(img, 1);
    before = cio_copy(&c, &len);
    cio_reset(&c);
    c.fail_sector0 = true;
    assert_true(qimg_snapshot_create(img, "s") < 0);
    c.fail_sector0 = false;
    assert_int_equal(img->q->sn->nb_snaps, 0);
    /* Header sector unchanged; the file opens as the old image. */
    assert_memory_equal(cio_bytes(&c, &len), before, 512);
    d = cio_bytes(&c, &len);
    assert_int_equal(cio_open(&old, &oi, d, len, false, false), 0);
    assert_int_equal(oi->q->sn->nb_snaps, 0);
    assert_all_gen(oi, 1);
    assert_int_equal(qimg_image_close(oi), 0);
    cio_free(&old);
    assert_image_clean(&c);
    assert_all_gen(img, 1);
    assert_int_equal(qimg_snapshot_create(img, "s"), 0);
    assert_int_equal(img->q->sn->nb_snaps, 1);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    free(before);
    cio_free(&c);
}

/* ---- Refusals write nothing ---------------------------------------------- */

/* Run a refused operation: it fails with errnum and the message, writes,
 * discards and truncates nothing, and leaves the bytes as they were. */
static void assert_refused(struct cio *c, qimg_image *img, enum txn_op op,
                           const char *arg, int errnum, const char *msg)
{
    uint32_t nb = img->q->sn->nb_snaps;
    const uint8_t *after;
    uint8_t *before;
    size_t len, len2;

    assert_int_equal(qimg_image_flush(img), 0);
    before = cio_copy(c, &len);
    cio_reset(c);
    assert_int_equal(do_op(img, op, arg), -errnum);
    if (msg)
        assert_string_equal(qimg_last_error()->message, msg);
    assert_int_equal(c->count[OP_WRITE], 0);
    assert_int_equal(c->count[OP_DISCARD], 0);
    assert_int_equal(c->count[OP_TRUNCATE], 0);
    assert_int_equal(img->q->sn->nb_snaps, nb);
    after = cio_bytes(c, &len2);
    assert_int_equal(len2, len);
    assert_memory_equal(after, before, len);
    free(before);
}

/* refcount_bits=1: a snapshot would give every cluster a second
 * reference. */
static void test_txn_refuses_refcount_overflow(void **state)
{
    struct qimg_create_opts o = opts(1);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);

    (void)state;
    populate(img, 1);
    assert_refused(&c, img, OP_CREATE, "s", EINVAL, NULL);
    assert_non_null(strstr(qimg_last_error()->message,
                           "would exceed its maximum of 1"));
    /* Not marked corrupt: the image is fine and still writable. */
    assert_false(img->q->hdr.incompatible & INCOMPAT_CORRUPT);
    write_gen(img, 5, 1);
    assert_gen(img, 5, 1);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);

    /* An empty disk has nothing to share: a snapshot of it is fine. */
    img = cio_create(&c, &o);
    assert_int_equal(qimg_snapshot_create(img, "empty"), 0);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Replace the snapshot table with n entries without L1 tables (a repair's
 * write, so the image stays consistent); their IDs from ids, else 1..n. */
static void set_snapshots(qimg_image *img, uint32_t n, const char *const *ids)
{
    struct snap *s = calloc(n, sizeof *s);
    char buf[32];

    assert_non_null(s);
    for (uint32_t i = 0; i < n; i++) {
        snprintf(buf, sizeof buf, "%u", i + 1);
        s[i].id = strdup(ids ? ids[i] : buf);
        s[i].name = strdup(buf);
        assert_non_null(s[i].id);
        assert_non_null(s[i].name);
        s[i].disk_size = img->size;
    }
    assert_int_equal(rebuild_snapshot_table(img, s, n), 0);
    for (uint32_t i = 0; i < n; i++)
        snap_free(&s[i]);
    free(s);
}

/* 65536 snapshots is the limit: one more is refused before anything. */
static void test_txn_refuses_too_many_snapshots(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);

    (void)state;
    populate(img, 1);
    set_snapshots(img, QCOW_MAX_SNAPSHOTS - 1, NULL);
    assert_int_equal(qimg_snapshot_create(img, "last"), 0);
    assert_int_equal(img->q->sn->nb_snaps, QCOW_MAX_SNAPSHOTS);
    assert_string_equal(img->q->sn->snaps[QCOW_MAX_SNAPSHOTS - 1].id,
                        "65536");
    assert_refused(&c, img, OP_CREATE, "one too many", EFBIG,
                   "Too many snapshots");
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* A name may repeat (as in QEMU: IDs are unique, names need not be); an
 * ID that would repeat is refused before anything is written. */
static void test_txn_names_may_repeat_ids_may_not(void **state)
{
    static const char *const ids[] = {"18446744073709551615", "0"};
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);

    (void)state;
    populate(img, 1);
    assert_int_equal(qimg_snapshot_create(img, "same"), 0);
    assert_int_equal(qimg_snapshot_create(img, "same"), 0);
    assert_int_equal(img->q->sn->nb_snaps, 2);
    assert_string_equal(img->q->sn->snaps[0].id, "1");
    assert_string_equal(img->q->sn->snaps[1].id, "2");
    assert_string_equal(img->q->sn->snaps[1].name, "same");
    /* By name, the first is deleted. */
    assert_int_equal(qimg_snapshot_delete(img, "same"), 0);
    assert_string_equal(img->q->sn->snaps[0].id, "2");
    assert_int_equal(qimg_snapshot_delete(img, "same"), 0);
    assert_image_clean(&c);
    /* The next ID after the largest wraps to one that exists. */
    set_snapshots(img, 2, ids);
    assert_refused(&c, img, OP_CREATE, "x", EIO,
                   "Snapshot ID 0 already exists");
    assert_false(img->q->hdr.incompatible & INCOMPAT_CORRUPT);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Snapshot entries a repair could have written but no operation can use:
 * an L1 table over QEMU's limit, a disk too large for any L1 table. */
static void test_txn_refuses_l1_too_large(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img = cio_create(&c, &o);
    struct snap s[2];

    (void)state;
    populate(img, 1);
    assert_int_equal(qimg_snapshot_create(img, "good"), 0);
    assert_int_equal(snap_copy(&s[0], &img->q->sn->snaps[0]), 0);
    assert_int_equal(snap_copy(&s[1], &img->q->sn->snaps[0]), 0);
    free(s[1].id);
    s[1].id = strdup("2");
    s[1].l1_off = 0;
    s[1].l1_size = QCOW_MAX_L1_SIZE / 8 + 1;
    assert_int_equal(rebuild_snapshot_table(img, s, 2), 0);
    /* Every operation checks every snapshot's L1 table first. */
    assert_refused(&c, img, OP_APPLY, "2", EFBIG,
                   "Snapshot L1 table too large");
    assert_refused(&c, img, OP_CREATE, "new", EFBIG,
                   "Snapshot L1 table too large");
    assert_refused(&c, img, OP_DELETE, "1", EFBIG,
                   "Snapshot L1 table too large");
    /* Its L1 would fit, its disk would not: at 4 KiB clusters one L1
     * table maps at most 4 Mi * 2 MiB = 8 TiB. */
    s[1].l1_size = 0;
    s[1].disk_size = 16ull << 40;
    assert_int_equal(rebuild_snapshot_table(img, s, 2), 0);
    assert_refused(&c, img, OP_APPLY, "2", EFBIG,
                   "Failed to grow the L1 table: File too large");
    s[1].disk_size = 1ull << 63;
    assert_int_equal(rebuild_snapshot_table(img, s, 2), 0);
    assert_refused(&c, img, OP_APPLY, "2", EINVAL,
                   "Image size cannot be negative");
    /* The rest still works. */
    assert_refused(&c, img, OP_APPLY, "nope", ENOENT, NULL);
    assert_int_equal(qimg_snapshot_delete(img, "2"), 0);
    assert_int_equal(qimg_snapshot_apply(img, "good"), 0);
    assert_all_gen(img, 1);
    snap_free(&s[0]);
    snap_free(&s[1]);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* A v2 image cannot be resized by applying a snapshot of another size. */
static void test_txn_refuses_v2_resize(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c;
    qimg_image *img;
    struct snap s;

    (void)state;
    o.compat = 2;
    img = cio_create(&c, &o);
    populate(img, 1);
    assert_int_equal(qimg_snapshot_create(img, "s"), 0);
    assert_int_equal(snap_copy(&s, &img->q->sn->snaps[0]), 0);
    s.disk_size = DISK / 2;
    assert_int_equal(rebuild_snapshot_table(img, &s, 1), 0);
    assert_refused(&c, img, OP_APPLY, "s", ENOTSUP,
                   "Can't resize a v2 image which has snapshots");
    snap_free(&s);
    assert_int_equal(qimg_image_close(img), 0);
    assert_image_clean(&c);
    cio_free(&c);
}

/* Nothing is done on a read-only handle. */
static void test_txn_refuses_read_only(void **state)
{
    struct qimg_create_opts o = opts(16);
    struct cio c, ro;
    qimg_image *img = cio_create(&c, &o), *ri = NULL;
    const uint8_t *d;
    size_t len;

    (void)state;
    populate(img, 1);
    assert_int_equal(qimg_snapshot_create(img, "s"), 0);
    assert_int_equal(qimg_image_close(img), 0);
    d = cio_bytes(&c, &len);
    assert_int_equal(cio_open(&ro, &ri, d, len, false, false), 0);
    assert_refused(&ro, ri, OP_CREATE, "t", EACCES, "Image is read-only");
    assert_refused(&ro, ri, OP_APPLY, "s", EACCES, "Image is read-only");
    assert_refused(&ro, ri, OP_DELETE, "s", EACCES, "Image is read-only");
    assert_int_equal(qimg_image_close(ri), 0);
    cio_free(&ro);
    cio_free(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txn_refs_count_in_memory_only),
        cmocka_unit_test(test_txn_refs_run_limits),
        cmocka_unit_test(test_txn_refs_limits_every_width),
        cmocka_unit_test(test_txn_space_alloc_free_in_both_states),
        cmocka_unit_test(test_txn_space_alloc_checks_blocks_not_held),
        cmocka_unit_test(test_txn_wbuf_coalesces),
        cmocka_unit_test(test_txn_wbuf_refuses_live_metadata),
        cmocka_unit_test(test_txn_create_adds_one_reference_per_cluster),
        cmocka_unit_test(test_txn_delete_drops_one_reference_per_cluster),
        cmocka_unit_test(test_txn_apply_counts_only_changed_pointers),
        cmocka_unit_test(test_txn_counts_compressed_streams),
        cmocka_unit_test(test_txn_counts_every_width),
        cmocka_unit_test(test_txn_ops_write_free_clusters_then_switch_once),
        cmocka_unit_test(test_txn_create_places_past_eof),
        cmocka_unit_test(test_txn_freed_clusters_reused_by_next_op),
        cmocka_unit_test(test_txn_failed_switch_leaves_old_image),
        cmocka_unit_test(test_txn_refuses_refcount_overflow),
        cmocka_unit_test(test_txn_refuses_too_many_snapshots),
        cmocka_unit_test(test_txn_names_may_repeat_ids_may_not),
        cmocka_unit_test(test_txn_refuses_l1_too_large),
        cmocka_unit_test(test_txn_refuses_v2_resize),
        cmocka_unit_test(test_txn_refuses_read_only),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
