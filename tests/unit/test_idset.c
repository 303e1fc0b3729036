/*
 * test_idset.c - idset.c: the open-addressing set of uint64 keys and the
 * uint64 -> uint64 map, against sorted reference arrays; deletion inside
 * collision chains, wrapped ones included.
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

/* splitmix64: full 64-bit keys, the same on every libc. */
static uint64_t next_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* Sort and deduplicate keys[0..n); the count left. */
static size_t sort_unique(uint64_t *keys, size_t n)
{
    size_t k = 0;

    qsort(keys, n, sizeof *keys, cmp_u64);
    for (size_t i = 0; i < n; i++)
        if (k == 0 || keys[k - 1] != keys[i])
            keys[k++] = keys[i];
    return k;
}

static bool in_ref(const uint64_t *ref, size_t n, uint64_t key)
{
    return bsearch(&key, ref, n, sizeof *ref, cmp_u64) != NULL;
}

/* The slot a key lands in when alone in a new set (its home slot). */
static size_t home_of(uint64_t key)
{
    struct idset s = {0};
    size_t home = SIZE_MAX;

    assert_int_equal(idset_add(&s, key), 1);
    assert_int_equal(s.cap, 64);
    for (size_t i = 0; i < s.cap; i++)
        if (s.slots[i] == key)
            home = i;
    assert_true(home != SIZE_MAX);
    idset_free(&s);
    return home;
}

/* The first n keys from `from` on whose home slot (capacity 64) is home. */
static void keys_with_home(uint64_t *out, size_t n, size_t home, uint64_t from)
{
    for (uint64_t k = from; n; k++)
        if (home_of(k) == home) {
            *out++ = k;
            n--;
        }
}

static void test_idset_empty_finds_nothing(void **state)
{
    struct idset s = {0};
    struct u64map m = {0};
    uint64_t v = 0;

    (void)state;
    assert_false(idset_has(&s, 0));
    assert_false(idset_has(&s, 42));
    idset_del(&s, 42);
    assert_int_equal(s.n, 0);
    assert_false(u64map_get(&m, 0, &v));
    idset_free(&s);
    u64map_free(&m);
    assert_null(s.slots);
    assert_null(m.keys);
}

static void test_idset_add_has_del_one_key(void **state)
{
    struct idset s = {0};

    (void)state;
    assert_int_equal(idset_add(&s, 7), 1);
    assert_int_equal(s.n, 1);
    assert_int_equal(idset_add(&s, 7), 0);
    assert_int_equal(s.n, 1);
    assert_true(idset_has(&s, 7));
    assert_false(idset_has(&s, 8));
    assert_false(idset_has(&s, 0));
    idset_del(&s, 8);
    assert_int_equal(s.n, 1);
    assert_true(idset_has(&s, 7));
    idset_del(&s, 7);
    assert_int_equal(s.n, 0);
    assert_false(idset_has(&s, 7));
    idset_del(&s, 7);
    assert_int_equal(s.n, 0);
    idset_free(&s);
}

static void test_idset_delete_then_readd(void **state)
{
    struct idset s = {0};

    (void)state;
    for (uint64_t k = 0; k < 1000; k++)
        assert_int_equal(idset_add(&s, k * 3), 1);
    for (uint64_t k = 0; k < 1000; k += 2)
        idset_del(&s, k * 3);
    assert_int_equal(s.n, 500);
    for (uint64_t k = 0; k < 1000; k++)
        assert_int_equal(idset_add(&s, k * 3), k % 2 == 0);
    assert_int_equal(s.n, 1000);
    for (uint64_t k = 0; k < 3000; k++)
        assert_int_equal(idset_has(&s, k), k % 3 == 0);
    idset_free(&s);
    assert_int_equal(s.n, 0);
    /* A freed set is empty and usable again. */
    assert_false(idset_has(&s, 3));
    assert_int_equal(idset_add(&s, 3), 1);
    assert_true(idset_has(&s, 3));
    idset_free(&s);
}

/* idset.c: UINT64_MAX marks an empty slot and cannot be stored; every
 * other value is a key, 0 and UINT64_MAX - 1 included. */
static void test_idset_extreme_keys(void **state)
{
    static const uint64_t keys[] = {
        0, 1, UINT64_MAX - 1, 1ull << 63, UINT32_MAX, (uint64_t)UINT32_MAX + 1};
    const size_t nk = sizeof keys / sizeof keys[0];
    struct idset s = {0};
    struct u64map m = {0};
    uint64_t v;

    (void)state;
    for (size_t i = 0; i < nk; i++) {
        assert_int_equal(idset_add(&s, keys[i]), 1);
        assert_int_equal(u64map_put(&m, keys[i], ~keys[i]), 0);
    }
    assert_int_equal(s.n, nk);
    assert_int_equal(m.n, nk);
    for (size_t i = 0; i < nk; i++) {
        assert_true(idset_has(&s, keys[i]));
        assert_true(u64map_get(&m, keys[i], &v));
        assert_int_equal(v, ~keys[i]);
    }
    /* The empty-slot marker is never reported as a member. */
    assert_false(idset_has(&s, UINT64_MAX));
    assert_false(u64map_get(&m, UINT64_MAX, &v));
    idset_del(&s, 0);
    idset_del(&s, UINT64_MAX - 1);
    assert_int_equal(s.n, nk - 2);
    assert_false(idset_has(&s, 0));
    assert_false(idset_has(&s, UINT64_MAX - 1));
    for (size_t i = 0; i < nk; i++)
        assert_int_equal(idset_has(&s, keys[i]),
                         keys[i] != 0 && keys[i] != UINT64_MAX - 1);
    idset_free(&s);
    u64map_free(&m);
}

/* 100,000 random keys (many growths) against a sorted reference array,
 * then half of them deleted. */
static void test_idset_random_keys_match_reference(void **state)
{
    const size_t n = 100000;
    uint64_t *keys = malloc(n * sizeof *keys), *ref = malloc(n * sizeof *ref);
    uint64_t rs = 1, probe = 2;
    struct idset s = {0};
    size_t nref, added = 0;

    (void)state;
    assert_non_null(keys);
    assert_non_null(ref);
    for (size_t i = 0; i < n; i++) {
        /* Small keys too, so that duplicates occur. */
        keys[i] = i % 4 ? next_rand(&rs) : next_rand(&rs) % 10000;
        if (keys[i] == UINT64_MAX)
            keys[i] = 0;
        added += (size_t)idset_add(&s, keys[i]);
    }
    memcpy(ref, keys, n * sizeof *ref);
    nref = sort_unique(ref, n);
    assert_true(nref < n); /* duplicates were offered */
    assert_int_equal(added, nref);
    assert_int_equal(s.n, nref);
    assert_true(s.cap >= 2 * nref);
    for (size_t i = 0; i < n; i++)
        assert_true(idset_has(&s, keys[i]));
    for (size_t i = 0; i < n; i++) {
        uint64_t k = next_rand(&probe);
        assert_int_equal(idset_has(&s, k), in_ref(ref, nref, k));
    }
    /* Delete the reference's even-indexed keys. */
    for (size_t i = 0; i < nref; i += 2)
        idset_del(&s, ref[i]);
    assert_int_equal(s.n, nref / 2);
    for (size_t i = 0; i < nref; i++)
        assert_int_equal(idset_has(&s, ref[i]), i % 2 == 1);
    idset_free(&s);
    free(keys);
    free(ref);
}

/* Sequential keys, every other one deleted: a deletion that left a hole
 * in a probe chain would hide the keys stored past it. */
static void test_idset_delete_every_other_keeps_others(void **state)
{
    const uint64_t n = 100000;
    struct idset s = {0};

    (void)state;
    for (uint64_t k = 0; k < n; k++)
        assert_int_equal(idset_add(&s, k), 1);
    for (uint64_t k = 0; k < n; k += 2)
        idset_del(&s, k);
    assert_int_equal(s.n, n / 2);
    for (uint64_t k = 0; k < n; k++)
        assert_int_equal(idset_has(&s, k), k % 2 == 1);
    for (uint64_t k = 1; k < n; k += 4)
        idset_del(&s, k);
    assert_int_equal(s.n, n / 4);
    for (uint64_t k = 0; k < n; k++)
        assert_int_equal(idset_has(&s, k), k % 4 == 3);
    idset_free(&s);
}

/* One collision chain that wraps past the last slot: keys whose home is
 * slot 62, 63 and 0 of a 64-slot set, interleaved. Deleting any one key
 * must leave every other one reachable, and so must deleting them one by
 * one in any of several orders. */
static void test_idset_delete_in_wrapped_chain(void **state)
{
    uint64_t keys[12];
    const size_t nk = sizeof keys / sizeof keys[0];

    (void)state;
    keys_with_home(keys, 5, 62, 0);
    keys_with_home(keys + 5, 3, 63, 0);
    keys_with_home(keys + 8, 4, 0, 0);
    for (size_t order = 0; order < 2 * nk; order++) {
        struct idset s = {0};
        bool gone[12] = {false};

        /* Insertion order: homes interleaved, so later keys sit past
         * earlier ones of a different home. */
        for (size_t i = 0; i < nk; i++)
            assert_int_equal(idset_add(&s, keys[(i * 5) % nk]), 1);
        assert_int_equal(s.cap, 64);
        for (size_t step = 0; step < nk; step++) {
            /* order < nk: start at key `order`, then walk; else stride 7. */
            size_t d =
                order < nk ? (order + step) % nk : (order + step * 7) % nk;
            idset_del(&s, keys[d]);
            gone[d] = true;
            assert_int_equal(s.n, nk - step - 1);
            for (size_t i = 0; i < nk; i++)
                assert_int_equal(idset_has(&s, keys[i]), !gone[i]);
        }
        idset_free(&s);
    }
}

static void test_u64map_put_overwrites(void **state)
{
    struct u64map m = {0};
    uint64_t v = 0;

    (void)state;
    assert_int_equal(u64map_put(&m, 5, 100), 0);
    assert_int_equal(m.n, 1);
    assert_true(u64map_get(&m, 5, &v));
    assert_int_equal(v, 100);
    assert_int_equal(u64map_put(&m, 5, 200), 0);
    assert_int_equal(m.n, 1);
    assert_true(u64map_get(&m, 5, &v));
    assert_int_equal(v, 200);
    /* Values are not markers: UINT64_MAX and 0 are values like others. */
    assert_int_equal(u64map_put(&m, 6, UINT64_MAX), 0);
    assert_int_equal(u64map_put(&m, 0, 0), 0);
    assert_true(u64map_get(&m, 6, &v));
    assert_int_equal(v, UINT64_MAX);
    assert_true(u64map_get(&m, 0, &v));
    assert_int_equal(v, 0);
    assert_false(u64map_get(&m, 4, &v));
    assert_false(u64map_get(&m, 7, &v));
    assert_int_equal(m.n, 3);
    u64map_free(&m);
    assert_int_equal(m.n, 0);
    assert_false(u64map_get(&m, 5, &v));
}

/* 100,000 random keys through many growths, each value a function of its
 * key; then every value overwritten. */
static void test_u64map_grows_and_keeps_values(void **state)
{
    const size_t n = 100000;
    uint64_t *keys = malloc(n * sizeof *keys), *ref = malloc(n * sizeof *ref);
    uint64_t rs = 3, probe = 4, v;
    struct u64map m = {0};
    size_t nref;

    (void)state;
    assert_non_null(keys);
    assert_non_null(ref);
    for (size_t i = 0; i < n; i++) {
        keys[i] = i % 3 ? next_rand(&rs) : next_rand(&rs) % 5000;
        if (keys[i] == UINT64_MAX)
            keys[i] = 0;
        assert_int_equal(u64map_put(&m, keys[i], keys[i] * 7 + 1), 0);
    }
    memcpy(ref, keys, n * sizeof *ref);
    nref = sort_unique(ref, n);
    assert_true(nref < n);
    assert_int_equal(m.n, nref);
    for (size_t i = 0; i < nref; i++) {
        v = 0;
        assert_true(u64map_get(&m, ref[i], &v));
        assert_int_equal(v, ref[i] * 7 + 1);
    }
    for (size_t i = 0; i < n; i++) {
        uint64_t k = next_rand(&probe);
        assert_int_equal(u64map_get(&m, k, &v), in_ref(ref, nref, k));
    }
    for (size_t i = 0; i < nref; i++)
        assert_int_equal(u64map_put(&m, ref[i], i), 0);
    assert_int_equal(m.n, nref);
    for (size_t i = 0; i < nref; i++) {
        assert_true(u64map_get(&m, ref[i], &v));
        assert_int_equal(v, i);
    }
    u64map_free(&m);
    free(keys);
    free(ref);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_idset_empty_finds_nothing),
        cmocka_unit_test(test_idset_add_has_del_one_key),
        cmocka_unit_test(test_idset_delete_then_readd),
        cmocka_unit_test(test_idset_extreme_keys),
        cmocka_unit_test(test_idset_random_keys_match_reference),
        cmocka_unit_test(test_idset_delete_every_other_keeps_others),
        cmocka_unit_test(test_idset_delete_in_wrapped_chain),
        cmocka_unit_test(test_u64map_put_overwrites),
        cmocka_unit_test(test_u64map_grows_and_keeps_values),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
