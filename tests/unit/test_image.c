/*
 * test_image.c - guest I/O on an in-memory qcow2 image against a flat
 * reference buffer (guest.c, l1l2.c, compress.c).
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

static qimg_image *mem_image(const struct qimg_create_opts *o)
{
    struct qimg_io io;
    qimg_image *img = NULL;

    assert_int_equal(io_mem_open(&io, NULL, 0), 0);
    assert_int_equal(qcow2_create(&img, &io, "mem", o), 0);
    return img;
}

static void check_equal(qimg_image *img, const uint8_t *ref, uint64_t size)
{
    uint8_t *buf = malloc(size);

    assert_int_equal(qimg_image_read(img, buf, size, 0), 0);
    assert_memory_equal(buf, ref, size);
    free(buf);
}

/* Random writes, zeroes and discards, compared to a flat buffer. */
static void random_ops(const struct qimg_create_opts *o, unsigned seed)
{
    uint64_t size = o->size;
    uint8_t *ref = calloc(1, size), *buf = malloc(1 << 18);
    qimg_image *img = mem_image(o);

    srand(seed);
    for (int i = 0; i < 400; i++) {
        uint64_t off = (uint64_t)rand() % size;
        uint64_t len = 1 + (uint64_t)rand() % MIN(size - off, 1 << 18);
        int op = rand() % 4;
        if (op <= 1) {
            memset(buf, rand() & 0xff, len);
            assert_int_equal(qimg_image_write(img, buf, len, off), 0);
            memcpy(ref + off, buf, len);
        } else if (op == 2) {
            assert_int_equal(
                qimg_image_write_zeroes(img, off, len,
                                        rand() % 2 ? QIMG_ZERO_UNMAP : 0),
                0);
            memset(ref + off, 0, len);
        } else {
            /* Discard: a v3 image without backing reads zeros after it;
             * partial clusters are left alone. */
            uint64_t a = ALIGN_UP(off, o->cluster_size);
            uint64_t b = ALIGN_DOWN(off + len, o->cluster_size);
            assert_int_equal(qimg_image_discard(img, off, len), 0);
            if (b > a)
                memset(ref + a, 0, b - a);
        }
        if (i % 100 == 99)
            assert_int_equal(qimg_image_flush(img), 0);
    }
    check_equal(img, ref, size);
    assert_int_equal(qimg_image_close(img), 0);
    free(ref);
    free(buf);
}

static void test_image_random_ops_64k(void **state)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;

    (void)state;
    o.size = 8 << 20;
    random_ops(&o, 1);
}

static void test_image_random_ops_512_byte_clusters(void **state)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;

    (void)state;
    o.size = 4 << 20;
    o.cluster_size = 512;
    o.refcount_bits = 64;
    random_ops(&o, 2);
}

static void test_image_random_ops_extended_l2(void **state)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;

    (void)state;
    o.size = 8 << 20;
    o.cluster_size = 32768;
    o.extended_l2 = true;
    random_ops(&o, 3);
}

static void test_image_compressed_roundtrip(void **state)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;
    uint8_t *data = malloc(4 * 65536), *back = malloc(4 * 65536);

    (void)state;
    for (int type = 0; type <= 1; type++) {
        qimg_image *img;
        o.size = 1 << 20;
        o.compression_type = type;
        img = mem_image(&o);
        for (int i = 0; i < 4 * 65536; i++)
            data[i] = (uint8_t)(i / 1000);
        assert_int_equal(qimg_image_write_compressed(img, data, 4 * 65536, 0),
                         0);
        assert_int_equal(qimg_image_read(img, back, 4 * 65536, 0), 0);
        assert_memory_equal(back, data, 4 * 65536);
        /* Overwrite part of a compressed cluster: copy-on-write. */
        memset(data + 70000, 0x5a, 1000);
        assert_int_equal(qimg_image_write(img, data + 70000, 1000, 70000), 0);
        assert_int_equal(qimg_image_read(img, back, 4 * 65536, 0), 0);
        assert_memory_equal(back, data, 4 * 65536);
        assert_int_equal(qimg_image_close(img), 0);
    }
    free(data);
    free(back);
}

static void test_image_write_out_of_range_fails(void **state)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;
    qimg_image *img;
    uint8_t b[16] = {0};

    (void)state;
    o.size = 1 << 20;
    img = mem_image(&o);
    assert_int_equal(qimg_image_write(img, b, 16, (1 << 20) - 8), -EINVAL);
    assert_int_equal(qimg_image_read(img, b, 16, 1 << 20), -EINVAL);
    assert_int_equal(qimg_image_close(img), 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_image_random_ops_64k),
        cmocka_unit_test(test_image_random_ops_512_byte_clusters),
        cmocka_unit_test(test_image_random_ops_extended_l2),
        cmocka_unit_test(test_image_compressed_roundtrip),
        cmocka_unit_test(test_image_write_out_of_range_fails),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
