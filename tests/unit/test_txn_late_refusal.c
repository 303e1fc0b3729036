/*
 * test_txn_late_refusal.c - a snapshot create refused late (a refcount
 * overflow in the last active L2 table) writes nothing.
 *
 * txn_snapshot_create() counts every new reference before it writes the
 * first L2 copy without COPIED. It once counted and copied table by table:
 * the copies of the earlier tables left the write buffer (256 KiB) before
 * a later table's overflow refused the operation. The image stayed
 * consistent (the copies went to free clusters), but the file's bytes and
 * size changed: on d209879 the refused create below wrote 262144 bytes
 * (the copies of L2 tables 0-3) at 0x170000, the old end of the file,
 * which grew from 1507328 to 1769472 bytes. refcount_bits=2 makes it
 * reachable with two snapshots; any width gets there with enough.
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
