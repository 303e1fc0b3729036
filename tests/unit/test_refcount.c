/*
 * test_refcount.c - refcount.c: entry encodings of every width (qcow2-format
 * §4, QEMU's bytes), allocation, growth of blocks and the table.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

/* §4: a fresh QEMU image's refcount block, six clusters at refcount 1. */
static void check_encoding(unsigned order, const uint8_t *expect, size_t n)
{
    uint8_t rb[64] = {0};

    for (unsigned i = 0; i < 6; i++)
        refblock_set(rb, i, order, 1);
    assert_memory_equal(rb, expect, n);
    for (unsigned i = 0; i < 6; i++)
        assert_int_equal(refblock_get(rb, i, order), 1);
    assert_int_equal(refblock_get(rb, 6, order), 0);
}

static void test_refblock_encodings_match_qemu(void **state)
{
    static const uint8_t w1[] = {0x3f, 0x00}, w2[] = {0x55, 0x05},
                         w4[] = {0x11, 0x11, 0x11}, w8[] = {1, 1, 1, 1, 1, 1},
                         w16[] = {0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0};

    (void)state;
    check_encoding(0, w1, sizeof w1);
    check_encoding(1, w2, sizeof w2);
    check_encoding(2, w4, sizeof w4);
    check_encoding(3, w8, sizeof w8);
    check_encoding(4, w16, sizeof w16);
}

static void test_refblock_set_keeps_neighbours(void **state)
{
    (void)state;
    for (unsigned order = 0; order <= 6; order++) {
        uint8_t rb[128];
        uint64_t max = order == 6 ? UINT64_MAX : (1ull << (1u << order)) - 1;
        memset(rb, 0xff, sizeof rb);
        refblock_set(rb, 5, order, 0);
        assert_int_equal(refblock_get(rb, 4, order), max);
        assert_int_equal(refblock_get(rb, 5, order), 0);
        assert_int_equal(refblock_get(rb, 6, order), max);
        refblock_set(rb, 5, order, max);
        assert_int_equal(refblock_get(rb, 5, order), max);
    }
}

static qimg_image *mem_image(uint32_t cluster_size, uint32_t refcount_bits,
                             uint64_t size)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;
    struct qimg_io io;
    qimg_image *img = NULL;

    o.cluster_size = cluster_size;
    o.refcount_bits = refcount_bits;
    o.size = size;
    assert_int_equal(io_mem_open(&io, NULL, 0), 0);
    assert_int_equal(qcow2_create(&img, &io, "mem", &o), 0);
    return img;
}

static void test_refcount_alloc_is_first_fit_after_l1(void **state)
{
    qimg_image *img = mem_image(65536, 16, 1 << 30);
    uint64_t off, rc;

    (void)state;
    /* QEMU's layout: header, reftable, refblock, L1 in clusters 0-3. */
    assert_int_equal(img->q->hdr.l1_table_offset, 3 * 65536);
    assert_int_equal(refcount_alloc(img, 2, &off), 0);
    assert_int_equal(off, 4 * 65536);
    assert_int_equal(refcount_get(img, 5, &rc), 0);
    assert_int_equal(rc, 1);
    assert_int_equal(refcount_get(img, 6, &rc), 0);
    assert_int_equal(rc, 0);
    qimg_image_close(img);
}

static void test_refcount_alloc_grows_blocks_and_table(void **state)
{
    /* 512-byte clusters, 64-bit refcounts: 64 clusters per block and 64
     * blocks per table cluster, so a few thousand clusters force both a
     * new block (describing itself) and a bigger table. */
    qimg_image *img = mem_image(512, 64, 64 << 20);
    uint64_t off, rc, total = 0;

    (void)state;
    for (int i = 0; i < 5000; i++) {
        assert_int_equal(refcount_alloc(img, 1, &off), 0);
        total++;
    }
    assert_true(img->q->hdr.refcount_table_clusters > 1);
    assert_int_equal(refcount_get(img, off / 512, &rc), 0);
    assert_int_equal(rc, 1);
    assert_int_equal(qcow2_flush(img), 0);
    /* Every reftable entry names a block whose own refcount is 1. */
    for (uint64_t i = 0; i < img->q->rc->rt_entries; i++) {
        uint64_t b = be64_load(img->q->rc->rt + i * 8) & RT_OFFSET_MASK;
        if (!b)
            continue;
        assert_int_equal(refcount_get(img, b / 512, &rc), 0);
        assert_int_equal(rc, 1);
    }
    qimg_image_close(img);
}

static void test_refcount_update_refuses_overflow(void **state)
{
    qimg_image *img = mem_image(65536, 2, 1 << 20);
    uint64_t off, rc;

    (void)state;
    assert_int_equal(refcount_alloc(img, 1, &off), 0);
    assert_int_equal(refcount_update(img, off / 65536, 1, 2), 0);
    assert_int_equal(refcount_update(img, off / 65536, 1, 1), -EINVAL);
    assert_int_equal(refcount_get(img, off / 65536, &rc), 0);
    assert_int_equal(rc, 3);
    assert_int_equal(refcount_update(img, off / 65536, 1, -4), -EIO);
    qimg_image_close(img);
}

static void test_refcount_decrement_waits_for_flush(void **state)
{
    qimg_image *img = mem_image(65536, 16, 1 << 20);
    uint64_t off, rc;

    (void)state;
    assert_int_equal(refcount_alloc(img, 1, &off), 0);
    assert_int_equal(refcount_dec_later(img, off, 65536, false), 0);
    assert_int_equal(refcount_get(img, off / 65536, &rc), 0);
    assert_int_equal(rc, 1);
    assert_int_equal(qcow2_flush(img), 0);
    assert_int_equal(refcount_get(img, off / 65536, &rc), 0);
    assert_int_equal(rc, 0);
    qimg_image_close(img);
}

static void test_refblock_offset_near_2_64_is_corruption(void **state)
{
    /* A reftable entry whose offset plus a cluster wraps past 2^64 must
     * be refused as lying beyond the end of the file, not read. */
    qimg_image *img = mem_image(512, 16, 1 << 20);
    uint64_t rc;

    (void)state;
    be64_store(img->q->rc->rt + 8, 0xfffffffffffffe00ull);
    assert_int_equal(refcount_get(img, 256, &rc), -EIO);
    assert_non_null(strstr(qimg_last_error()->message,
                           "Refblock offset 0xfffffffffffffe00 beyond end "
                           "of file"));
    be64_store(img->q->rc->rt + 8, 0);
    qimg_image_close(img);
}

static void test_io_mem_reads_past_end_as_zeros(void **state)
{
    struct qimg_io io;
    uint8_t buf[8];

    (void)state;
    assert_int_equal(io_mem_open(&io, NULL, 0), 0);
    memset(buf, 0xaa, sizeof buf);
    assert_int_equal(io.ops->pread(io.ctx, buf, sizeof buf, 0), 0);
    assert_int_equal(buf[0] | buf[7], 0);
    memset(buf, 0xaa, sizeof buf);
    assert_int_equal(
        io.ops->pread(io.ctx, buf, sizeof buf, 0xfffffffffffffe00ull), 0);
    assert_int_equal(buf[0] | buf[7], 0);
    io.ops->close(io.ctx);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_refblock_encodings_match_qemu),
        cmocka_unit_test(test_refblock_set_keeps_neighbours),
        cmocka_unit_test(test_refcount_alloc_is_first_fit_after_l1),
        cmocka_unit_test(test_refcount_alloc_grows_blocks_and_table),
        cmocka_unit_test(test_refcount_update_refuses_overflow),
        cmocka_unit_test(test_refcount_decrement_waits_for_flush),
        cmocka_unit_test(test_refblock_offset_near_2_64_is_corruption),
        cmocka_unit_test(test_io_mem_reads_past_end_as_zeros),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
