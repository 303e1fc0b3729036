/*
 * test_l2runs.c - l2runs.c: which L2 tables are kept as runs, that a kept
 * table comes back byte for byte, and the limits on what is kept.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

/* Most tests use 512-byte clusters: 64 entries, kept with up to 4 runs. */
#define CS 512u
#define N (CS / 8)

static struct qcow2 fake_image(unsigned cluster_bits)
{
    struct qcow2 q;

    memset(&q, 0, sizeof q);
    q.cluster_bits = cluster_bits;
    q.cluster_size = 1u << cluster_bits;
    q.l2_entries = q.cluster_size / 8;
    q.l2_entry_size = 8;
    q.file_size = 1000 * CS;
    return q;
}

static void put(uint8_t *l2, unsigned i, uint64_t e)
{
    be64_store(l2 + 8 * i, e);
}

/* Whether the store keeps the table at l2_off. */
static bool kept(const struct l2store *s, uint64_t l2_off)
{
    const struct l2run *r;
    size_t n;

    return l2store_get(s, l2_off, &r, &n);
}

/* A table as a guest writes it: runs of consecutive clusters with and
 * without COPIED, unallocated stretches, one cluster mapped twice. */
static void typical_table(uint8_t *l2, size_t size)
{
    memset(l2, 0, size);
    for (unsigned i = 0; i < 20; i++)
        put(l2, i, (100 + i) * size | QCOW_OFLAG_COPIED);
    for (unsigned i = 30; i < 40; i++)
        put(l2, i, (200 + i) * size);
    put(l2, 40, 300 * size);
    put(l2, 41, 300 * size);
    put(l2, 63, 999 * size | QCOW_OFLAG_COPIED);
}

static void test_kept_table_comes_back_identical(void **state)
{
    struct qcow2 q = fake_image(12);
    struct l2store s = {0};
    uint8_t l2[4096], out[4096];
    const struct l2run *r;
    size_t n;

    (void)state;
    q.file_size = 1000 * 4096;
    typical_table(l2, sizeof l2);
    assert_int_equal(l2store_scan(&s, &q, 7 * CS, l2), 1);
    assert_true(l2store_get(&s, 7 * CS, &r, &n));
    /* 20 COPIED, 10 zeros, 10 clusters, 300, 300 again, 21 zeros, 999,
     * zeros to the end. */
    assert_int_equal(n, 8);
    assert_int_equal(r[0].e, 100 * 4096 | QCOW_OFLAG_COPIED);
    assert_int_equal(r[0].len, 20);
    assert_int_equal(r[1].e, 0);
    assert_int_equal(r[1].len, 10);
    assert_int_equal(r[4].e, 300 * 4096);
    assert_int_equal(r[4].len, 1);
    memset(out, 0xaa, sizeof out);
    l2runs_emit(r, n, 4096, 0, out);
    assert_memory_equal(out, l2, sizeof l2);
    assert_false(kept(&s, 8 * CS));
    l2store_free(&s);
}

/* Anything but 0 or an aligned in-file offset with COPIED is left to the
 * caller's entry-by-entry check, and nothing is kept for it. */
static void test_non_plain_tables_are_not_kept(void **state)
{
    static const uint64_t odd[] = {
        QCOW_OFLAG_ZERO,                    /* zero cluster */
        100 * CS | QCOW_OFLAG_ZERO,         /* preallocated zero */
        QCOW_OFLAG_COMPRESSED | 100 * CS,   /* compressed */
        100 * CS + 512 / 2,                 /* not cluster aligned */
        1000 * CS,                          /* at the end of the file */
        (uint64_t)1 << 56 | 100 * CS,       /* reserved bit */
    };
    struct qcow2 q = fake_image(9);
    struct l2store s = {0};
    uint8_t l2[CS];

    (void)state;
    for (unsigned k = 0; k < sizeof odd / sizeof *odd; k++) {
        memset(l2, 0, CS);
        put(l2, 50, odd[k]);
        assert_int_equal(l2store_scan(&s, &q, CS * (k + 1), l2), 0);
        assert_false(kept(&s, CS * (k + 1)));
    }
    assert_int_equal(s.nb, 0);
    q.ext_l2 = true;
    memset(l2, 0, CS);
    assert_int_equal(l2store_scan(&s, &q, CS, l2), 0);
    l2store_free(&s);
}

/* Four runs: clusters 10-19, zeros, clusters 50-59, zeros (N / 16 = 4 is
 * the most runs a table is kept with). */
static void four_runs(uint8_t *l2)
{
    memset(l2, 0, CS);
    for (unsigned i = 0; i < 10; i++) {
        put(l2, i, (uint64_t)(10 + i) * CS);
        put(l2, 20 + i, (uint64_t)(50 + i) * CS);
    }
}

/* A table with more runs than that is validated (1) but not kept: its
 * user reads it again. */
static void test_fragmented_table_is_valid_but_not_kept(void **state)
{
    struct qcow2 q = fake_image(9);
    struct l2store s = {0};
    uint8_t l2[CS];
    const struct l2run *r;
    size_t n;

    (void)state;
    for (unsigned i = 0; i < N; i++)
        put(l2, i, (uint64_t)(N - i) * CS); /* descending: one run each */
    assert_int_equal(l2store_scan(&s, &q, CS, l2), 1);
    assert_false(kept(&s, CS));
    assert_int_equal(s.nb, 0);
    four_runs(l2);
    assert_int_equal(l2store_scan(&s, &q, 2 * CS, l2), 1);
    assert_true(l2store_get(&s, 2 * CS, &r, &n));
    assert_int_equal(n, 4);
    put(l2, N - 1, 900 * CS);
    assert_int_equal(l2store_scan(&s, &q, 3 * CS, l2), 1);
    assert_false(kept(&s, 3 * CS));
    assert_int_equal(s.nb, 4);
    l2store_free(&s);
}

/* The store stops keeping tables at its memory budget (16 MiB of runs);
 * what it kept before stays intact. */
static void test_store_stops_at_its_budget(void **state)
{
    struct qcow2 q = fake_image(9);
    struct l2store s = {0};
    uint8_t l2[CS], out[CS];
    const struct l2run *r;
    size_t n;
    uint64_t t;

    (void)state;
    four_runs(l2);
    for (t = 1;; t++) {
        assert_int_equal(l2store_scan(&s, &q, t * CS, l2), 1);
        if (!kept(&s, t * CS))
            break;
    }
    assert_int_equal(s.nb * sizeof(struct l2run), 16u << 20);
    assert_int_equal(t - 1, (16u << 20) / sizeof(struct l2run) / 4);
    for (uint64_t k = 1; k < t; k += t / 7) {
        assert_true(l2store_get(&s, k * CS, &r, &n));
        memset(out, 0xaa, sizeof out);
        l2runs_emit(r, n, CS, 0, out);
        assert_memory_equal(out, l2, CS);
    }
    l2store_free(&s);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_kept_table_comes_back_identical),
        cmocka_unit_test(test_non_plain_tables_are_not_kept),
        cmocka_unit_test(test_fragmented_table_is_valid_but_not_kept),
        cmocka_unit_test(test_store_stops_at_its_budget),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
