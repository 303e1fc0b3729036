/*
 * test_bitmap.c - bitmap_bits.c: setting ranges, merging across
 * granularities, resizing, against a reference of one byte per bit.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static struct bitmap_entry make(const struct qcow2 *q, unsigned g,
                                uint64_t size)
{
    struct bitmap_entry b = {0};

    b.granularity_bits = (uint8_t)g;
    b.table_size = (uint32_t)bitmap_table_size(q, g, size);
    b.bits = calloc(b.table_size ? b.table_size : 1, q->cluster_size);
    assert_non_null(b.bits);
    return b;
}

static bool bit(const struct bitmap_entry *b, uint64_t k)
{
    return b->bits[k / 8] >> (k % 8) & 1;
}

/* Every bit equals the reference; none is set past the last one. */
static void same(const struct qcow2 *q, const struct bitmap_entry *b,
                 const uint8_t *ref, uint64_t nbits)
{
    for (uint64_t k = 0; k < (uint64_t)b->table_size * q->cluster_size * 8;
         k++)
        assert_int_equal(bit(b, k), k < nbits ? ref[k] : 0);
}

static void mark_ref(uint8_t *ref, unsigned g, uint64_t off, uint64_t len,
                     uint64_t size)
{
    uint64_t end = off + len < size ? off + len : size;

    for (uint64_t k = off >> g; len && off < end && k <= (end - 1) >> g; k++)
        ref[k] = 1;
}

static void test_table_size(void **state)
{
    struct qcow2 q = {.cluster_size = 65536};

    (void)state;
    /* qcow2-format.md §9: ceil(ceil(size / 2^g) / 8 / cs) */
    assert_int_equal(bitmap_table_size(&q, 16, 64 << 20), 1);
    assert_int_equal(bitmap_table_size(&q, 16, 100ull << 30), 4);
    assert_int_equal(bitmap_table_size(&q, 12, 100ull << 30), 50);
    q.cluster_size = 512;
    assert_int_equal(bitmap_table_size(&q, 12, 64 << 20), 4);
    assert_int_equal(bitmap_table_size(&q, 9, 512), 1);
}

/* Random ranges, some past the end, across byte and cluster edges. */
static void test_mark(void **state)
{
    struct qcow2 q = {.cluster_size = 512};
    uint64_t seed = 7, size = 3 * 512 * 8 * 4096 + 12345;
    struct bitmap_entry b = make(&q, 12, size);
    uint64_t nbits = (size + 4095) / 4096;
    uint8_t *ref = calloc(nbits, 1);

    (void)state;
    assert_non_null(ref);
    for (int i = 0; i < 300; i++) {
        uint64_t off = next_rand(&seed) % (size + 10000);
        uint64_t len = next_rand(&seed) % (i % 3 ? 70000 : 5000000);
        bitmap_bits_mark(&b, off, len, size);
        mark_ref(ref, 12, off, len, size);
        if (i % 50 == 0)
            same(&q, &b, ref, nbits);
    }
    same(&q, &b, ref, nbits);
    bitmap_bits_clear(&q, &b);
    memset(ref, 0, nbits);
    same(&q, &b, ref, nbits);
    for (uint64_t k = 0; k < b.table_size; k++)
        assert_true(bitmap_bits_cluster_zero(&q, &b, k));
    free(ref);
    free(b.bits);
}

/* A finer source sets each coarse bit it touches; a coarser one sets
 * every fine bit it covers (as QEMU merges). */
static void test_merge(void **state)
{
    struct qcow2 q = {.cluster_size = 4096};
    uint64_t size = 10 * 1048576 + 512, seed = 3;
    unsigned gs[] = {9, 12, 16, 20};

    (void)state;
    for (size_t i = 0; i < 4; i++)
        for (size_t j = 0; j < 4; j++) {
            struct bitmap_entry src = make(&q, gs[i], size);
            struct bitmap_entry dst = make(&q, gs[j], size);
            uint64_t nd = (size + (1ull << gs[j]) - 1) >> gs[j];
            uint8_t *ref = calloc(nd, 1);
            assert_non_null(ref);
            for (int k = 0; k < 40; k++) {
                uint64_t off = next_rand(&seed) % size;
                uint64_t len = next_rand(&seed) % 300000 + 1;
                bitmap_bits_mark(&src, off, len, size);
                /* what the source's bits cover, in the destination */
                uint64_t a = off >> gs[i] << gs[i];
                uint64_t e = (((off + len - 1) >> gs[i]) + 1) << gs[i];
                mark_ref(ref, gs[j], a, e - a, size);
            }
            bitmap_bits_mark(&dst, 5000, 1, size);
            mark_ref(ref, gs[j], 5000, 1, size);
            bitmap_bits_merge(&dst, &src, size);
            same(&q, &dst, ref, nd);
            free(ref);
            free(src.bits);
            free(dst.bits);
        }
}

/* Growing keeps the bits and adds clear ones; shrinking drops the bits
 * past the end for good. */
static void test_resize(void **state)
{
    struct qcow2 q = {.cluster_size = 512};
    uint64_t size = 4 << 20;
    struct bitmap_entry b = make(&q, 10, size);

    (void)state;
    bitmap_bits_mark(&b, 0, 1, size);
    bitmap_bits_mark(&b, size - 1, 1, size);
    assert_int_equal(bitmap_bits_resize(&q, &b, 64 << 20), 0);
    assert_int_equal(b.table_size, bitmap_table_size(&q, 10, 64 << 20));
    assert_true(b.rewrite);
    assert_true(bit(&b, 0) && bit(&b, (size - 1) >> 10));
    assert_false(bit(&b, size >> 10));
    bitmap_bits_mark(&b, 60 << 20, 4096, 64 << 20);
    assert_int_equal(bitmap_bits_resize(&q, &b, size - 1536), 0);
    assert_true(bit(&b, 0));
    assert_false(bit(&b, (size - 1) >> 10)); /* past the new end */
    assert_int_equal(bitmap_bits_resize(&q, &b, 64 << 20), 0);
    assert_false(bit(&b, (size - 1) >> 10));
    assert_false(bit(&b, (60 << 20) >> 10));
    free(b.bits);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table_size),
        cmocka_unit_test(test_mark),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_resize),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
