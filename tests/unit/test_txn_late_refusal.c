/*
 * test_txn_late_refusal.c - NOT BUILT (not in meson.build): it fails on
 * the current lib/ and documents a bug for whoever fixes it, who then
 * adds 'test_txn_late_refusal' to unit_tests in tests/unit/meson.build.
 *
 * A snapshot create refused for a refcount overflow writes to the file
 * before refusing, on an image that is not damaged at all.
 *
 * txn_snapshot_create() (txn.c) validates every active L2 table in a
 * first loop, but counts the new references and writes the L2 copies
 * without COPIED in one second loop, table by table:
 * txn_tables_pointer_change(+1) then txn_tables_clear_copied(), whose
 * copies go to the write buffer (txn_wbuf.c), which sends them to the
 * file once it holds 256 KiB. If a later table's pointer_change overflows
 * a refcount, the copies of the earlier tables have already been written.
 * They went to clusters free in the old state, so the image stays
 * consistent (check is clean), but the file's bytes and size change:
 * the refusal is not "before anything is written". txn.c's note 4 calls
 * this out for damaged images; it is reachable on a clean one with
 * refcount_bits=2 (or any width, with enough snapshots): a late L2 table
 * whose clusters the snapshots already share up to the maximum.
 *
 * Seen on d209879: the refused create below writes 262144 bytes (the
 * copies of L2 tables 0-3, 64 KiB each) at 0x170000, the old end of the
 * file, which grows from 1507328 to 1769472 bytes; check stays clean.
 * Build it by hand to see it:
 *   cc -std=c17 -Iinclude -Ilib tests/unit/test_txn_late_refusal.c \
 *      build/lib/libqimg_internal.a -lcmocka -lz -lzstd -lpthread
 *
 * A fix: count every pointer change first, and make the copies in a loop
 * after it (a table not kept as runs must then be read again, since
 * clear_copied relies on it still being in t->tables.tmp).
 */
#include "cio.h"

#define CS 65536u
#define L2_SPAN ((uint64_t)CS / 8 * CS) /* guest bytes per L2 table */
#define NB_L2 8

static void fill(uint8_t *buf, unsigned seed)
{
    for (unsigned i = 0; i < CS; i++)
        buf[i] = (uint8_t)(seed * 37 + i % 253 + 1);
}

static void test_txn_late_overflow_writes_nothing(void **state)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;
    struct cio c;
    qimg_image *img;
    uint8_t *buf = malloc(CS), *before;
    size_t len, len2;
    const uint8_t *after;

    (void)state;
    assert_non_null(buf);
    o.size = NB_L2 * L2_SPAN; /* 4 GiB, sparse: 8 L2 tables */
    o.cluster_size = CS;
    o.refcount_bits = 2; /* at most 3 references */
    img = cio_create(&c, &o);
    /* The last L2 table and its data cluster: 3 references each after
     * two snapshots. */
    fill(buf, 7);
    assert_int_equal(qimg_image_write(img, buf, CS, 7 * L2_SPAN), 0);
    assert_int_equal(qimg_snapshot_create(img, "a"), 0);
    assert_int_equal(qimg_snapshot_create(img, "b"), 0);
    /* Then one cluster in each of the first seven tables: new tables at
     * refcount 1, with COPIED, so a snapshot copies them. */
    for (unsigned i = 0; i < NB_L2 - 1; i++) {
        fill(buf, i);
        assert_int_equal(qimg_image_write(img, buf, CS, i * L2_SPAN), 0);
    }
    assert_int_equal(qimg_image_flush(img), 0);
    before = cio_copy(&c, &len);
    cio_reset(&c);

    assert_int_equal(qimg_snapshot_create(img, "c"), -EINVAL);
    assert_non_null(strstr(qimg_last_error()->message,
                           "would exceed its maximum of 3"));
    assert_int_equal(img->q->sn->nb_snaps, 2);

    after = cio_bytes(&c, &len2);
    for (size_t i = 0; i < c.nb_ops; i++)
        if (c.ops[i].kind == OP_WRITE)
            print_message("written after all: %" PRIu64 " bytes at %#" PRIx64
                          "\n",
                          c.ops[i].len, c.ops[i].off);
    print_message("file size %zu -> %zu\n", len, len2);
    /* The image is consistent either way (the writes went to free
     * clusters) ... */
    assert_bytes_clean(after, len2);
    /* ... but a refusal must not have written anything at all. */
    assert_int_equal(c.count[OP_WRITE], 0);
    assert_int_equal(c.count[OP_TRUNCATE], 0);
    assert_int_equal(len2, len);
    assert_memory_equal(after, before, len);
    assert_int_equal(qimg_image_close(img), 0);
    cio_free(&c);
    free(before);
    free(buf);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_txn_late_overflow_writes_nothing),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
