/*
 * test_cache.c - cache.c: lookups, least-recently-used eviction of clean
 * unpinned entries only, reuse before growth while recycling, the
 * make_room hook of a full cache, drop and clear.
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

#define CS 512

/* What a make_room hook saw and does. */
struct room {
    struct mcache *c;
    int calls;
    bool clean; /* clear dirty on every entry, as a flush would */
    int ret;
};

static int make_room(void *ctx)
{
    struct room *r = ctx;

    r->calls++;
    if (r->clean)
        for (size_t i = 0; i < r->c->cap; i++)
            r->c->e[i].dirty = false;
    return r->ret;
}

/* Insert off, fill its buffer with a byte derived from it, unpin it. */
static struct mcache_entry *put(struct mcache *c, uint64_t off, bool dirty)
{
    struct mcache_entry *e = mcache_insert(c, off);

    assert_non_null(e);
    assert_int_equal(e->off, off);
    assert_non_null(e->buf);
    memset(e->buf, (int)(off / CS) + 1, CS);
    e->dirty = dirty;
    mcache_unpin(e);
    return e;
}

static void check_entry(struct mcache *c, uint64_t off)
{
    struct mcache_entry *e = mcache_find(c, off);
    uint8_t expect[CS];

    assert_non_null(e);
    assert_int_equal(e->off, off);
    memset(expect, (int)(off / CS) + 1, CS);
    assert_memory_equal(e->buf, expect, CS);
}

/* Fill the cache with cap dirty entries at 0, CS, 2 CS, ... */
static void fill_dirty(struct mcache *c)
{
    for (size_t i = 0; i < c->cap; i++)
        put(c, i * CS, true);
}

/* A failure to report: an error set beforehand must be replaced. */
static void set_sentinel_error(void) { qimg_err(EINVAL, "sentinel"); }

static void test_mcache_insert_then_find(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *e;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 8), 0);
    assert_null(mcache_find(&c, 0));
    e = mcache_insert(&c, 3 * CS);
    assert_non_null(e);
    assert_int_equal(e->off, 3 * CS);
    assert_int_equal(e->pins, 1);
    assert_false(e->dirty);
    memset(e->buf, 4, CS);
    assert_ptr_equal(mcache_find(&c, 3 * CS), e);
    mcache_unpin(e);
    for (uint64_t i = 10; i < 17; i++)
        put(&c, i * CS, false);
    check_entry(&c, 3 * CS);
    for (uint64_t i = 10; i < 17; i++)
        check_entry(&c, i * CS);
    assert_null(mcache_find(&c, 4 * CS));
    assert_null(mcache_find(&c, 17 * CS));
    mcache_destroy(&c);
}

/* 64 entries at scattered offsets in 128 buckets: some share one. Every
 * entry is found, and dropping entries from the middle of a bucket's
 * chain keeps the rest. */
static void test_mcache_find_and_drop_in_shared_buckets(void **state)
{
    struct mcache c = {0};
    uint64_t off[64];
    size_t chained = 0;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 64), 0);
    for (uint64_t i = 0; i < 64; i++) {
        /* Distinct offsets below 32 MiB * CS, spread by a multiplier. */
        off[i] = ((i * 0x9e3779b97f4a7c15ull) >> 39) * CS;
        put(&c, off[i], false);
    }
    for (uint64_t i = 0; i < 64; i++)
        check_entry(&c, off[i]);
    /* Drop each entry that has a successor in its bucket, one at a time:
     * every other entry must stay reachable. */
    for (uint64_t i = 0; i < 64; i++) {
        if (!mcache_find(&c, off[i])->hnext)
            continue;
        chained++;
        mcache_drop(&c, off[i]);
        assert_null(mcache_find(&c, off[i]));
        for (uint64_t j = 0; j < 64; j++)
            if (j != i)
                check_entry(&c, off[j]);
        put(&c, off[i], false);
    }
    assert_true(chained > 0);
    for (uint64_t i = 0; i < 64; i += 2)
        mcache_drop(&c, off[i]);
    for (uint64_t i = 0; i < 64; i++)
        if (i % 2)
            check_entry(&c, off[i]);
        else
            assert_null(mcache_find(&c, off[i]));
    mcache_destroy(&c);
}

/* The victim is the clean unpinned entry used longest ago; a find counts
 * as a use. */
static void test_mcache_evicts_least_recently_used(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *a, *b, *cc, *e;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 4), 0);
    a = put(&c, 0, false);
    b = put(&c, CS, false);
    cc = put(&c, 2 * CS, false);
    put(&c, 3 * CS, false);
    assert_ptr_equal(mcache_find(&c, 0), a); /* a is now the newest */
    e = mcache_insert(&c, 10 * CS);
    assert_ptr_equal(e, b);
    assert_null(mcache_find(&c, CS));
    mcache_unpin(e);
    check_entry(&c, 0);
    check_entry(&c, 3 * CS); /* order of use now: c, e, a, d */
    assert_ptr_equal(mcache_find(&c, 10 * CS), e);
    e = mcache_insert(&c, 11 * CS);
    assert_ptr_equal(e, cc);
    assert_null(mcache_find(&c, 2 * CS));
    check_entry(&c, 0);
    check_entry(&c, 3 * CS);
    assert_non_null(mcache_find(&c, 10 * CS));
    mcache_destroy(&c);
}

static void test_mcache_never_evicts_dirty_or_pinned(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *a, *b, *cc;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 3), 0);
    a = put(&c, 0, true);        /* oldest, dirty */
    b = mcache_insert(&c, CS);   /* pinned */
    cc = put(&c, 2 * CS, false); /* newest, clean */
    assert_non_null(b);
    /* The only candidate is the newest. */
    assert_ptr_equal(mcache_insert(&c, 5 * CS), cc);
    assert_null(mcache_find(&c, 2 * CS));
    /* Now every slot is dirty or pinned. */
    assert_null(mcache_insert(&c, 6 * CS));
    assert_null(mcache_find(&c, 6 * CS));
    assert_ptr_equal(mcache_find(&c, 0), a);
    assert_true(a->dirty);
    assert_ptr_equal(mcache_find(&c, CS), b);
    assert_ptr_equal(mcache_find(&c, 5 * CS), cc);
    /* A dirty entry stays even when it is the only unpinned one. */
    mcache_unpin(cc);
    cc->dirty = true;
    assert_null(mcache_insert(&c, 6 * CS));
    /* Unpinning b makes it the victim. */
    mcache_unpin(b);
    assert_ptr_equal(mcache_insert(&c, 6 * CS), b);
    assert_ptr_equal(mcache_find(&c, 0), a);
    assert_ptr_equal(mcache_find(&c, 5 * CS), cc);
    mcache_destroy(&c);
}

/* While recycling, the oldest clean unpinned entry is taken before an
 * empty slot, whose buffer stays unallocated; with none, an empty slot. */
static void test_mcache_recycle_reuses_before_growing(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *a, *b, *e;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 8), 0);
    a = put(&c, 0, true);       /* oldest, dirty */
    b = put(&c, CS, false);     /* clean */
    put(&c, 2 * CS, false);
    c.recycle = true;
    e = mcache_insert(&c, 7 * CS);
    assert_ptr_equal(e, b); /* skips the dirty one, reuses b's buffer */
    assert_null(mcache_find(&c, CS));
    mcache_unpin(e);
    check_entry(&c, 2 * CS);
    assert_ptr_equal(mcache_find(&c, 0), a);
    for (size_t i = 0; i < c.cap; i++) /* 5 slots never had a buffer */
        if (c.e[i].off == UINT64_MAX)
            assert_null(c.e[i].buf);
    /* Every occupied entry dirty or pinned: an empty slot is used. */
    mcache_find(&c, 2 * CS)->dirty = true;
    mcache_find(&c, 7 * CS)->dirty = true;
    e = mcache_insert(&c, 9 * CS);
    assert_non_null(e);
    assert_ptr_not_equal(e, a);
    assert_int_equal(e->off, 9 * CS);
    assert_non_null(e->buf);
    mcache_unpin(e);
    /* Not recycling: an empty slot even when a clean entry could go. */
    e->dirty = false;
    c.recycle = false;
    e = mcache_insert(&c, 10 * CS);
    assert_non_null(mcache_find(&c, 9 * CS));
    mcache_unpin(e);
    mcache_destroy(&c);
}

/* A recycling insert looks at the 8 oldest entries only (writes may have
 * made many dirty): a clean one past them leaves an empty slot taken. */
static void test_mcache_recycle_looks_at_the_oldest_only(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *first, *ninth, *e;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 16), 0);
    first = put(&c, 0, true);
    for (uint64_t k = 1; k < 8; k++)
        put(&c, k * CS, true);
    ninth = put(&c, 8 * CS, false);
    c.recycle = true;
    e = mcache_insert(&c, 20 * CS);
    assert_non_null(e);
    assert_ptr_not_equal(e, ninth);
    assert_ptr_equal(mcache_find(&c, 8 * CS), ninth);
    mcache_unpin(e);
    first->dirty = false; /* now the oldest clean one is in reach */
    e = mcache_insert(&c, 21 * CS);
    assert_ptr_equal(e, first);
    assert_null(mcache_find(&c, 0));
    mcache_unpin(e);
    mcache_destroy(&c);
}

/* Pins nest: an entry pinned twice needs two unpins. */
static void test_mcache_pins_nest(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *e;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 1), 0);
    e = mcache_insert(&c, 0);
    assert_non_null(e);
    mcache_pin(&c, e);
    assert_int_equal(e->pins, 2);
    mcache_unpin(e);
    assert_null(mcache_insert(&c, CS));
    mcache_unpin(e);
    assert_int_equal(e->pins, 0);
    mcache_unpin(e); /* no underflow */
    assert_int_equal(e->pins, 0);
    mcache_unpin(NULL);
    assert_ptr_equal(mcache_insert(&c, CS), e);
    assert_null(mcache_find(&c, 0));
    mcache_destroy(&c);
}

static void test_mcache_insert_room_no_hook_call_when_room(void **state)
{
    struct mcache c = {0};
    struct room r = {&c, 0, true, 0};
    struct mcache_entry *e = NULL;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 2), 0);
    mcache_set_hook(&c, make_room, &r);
    put(&c, 0, true);
    assert_int_equal(mcache_insert_room(&c, CS, &e), 0);
    assert_non_null(e);
    assert_int_equal(e->off, CS);
    assert_int_equal(r.calls, 0);
    assert_true(mcache_find(&c, 0)->dirty);
    mcache_destroy(&c);
}

/* Full of dirty entries: the hook is called once; it makes them clean
 * (the cache never clears dirty itself but on drop), and the least
 * recently used one gives its slot. */
static void test_mcache_insert_room_after_hook_cleans(void **state)
{
    struct mcache c = {0};
    struct room r = {&c, 0, true, 0};
    struct mcache_entry *e = NULL;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 3), 0);
    mcache_set_hook(&c, make_room, &r);
    fill_dirty(&c);
    assert_true(mcache_has_dirty(&c));
    check_entry(&c, 0); /* CS is now the least recently used */
    assert_int_equal(mcache_insert_room(&c, 9 * CS, &e), 0);
    assert_int_equal(r.calls, 1);
    assert_non_null(e);
    assert_int_equal(e->off, 9 * CS);
    assert_int_equal(e->pins, 1);
    assert_false(e->dirty);
    assert_ptr_equal(mcache_find(&c, 9 * CS), e);
    assert_null(mcache_find(&c, CS));
    check_entry(&c, 0);
    check_entry(&c, 2 * CS);
    assert_false(mcache_has_dirty(&c));
    mcache_destroy(&c);
}

static void test_mcache_insert_room_fails_if_hook_frees_nothing(void **state)
{
    struct mcache c = {0};
    struct room r = {&c, 0, false, 0};
    struct mcache_entry *e = (struct mcache_entry *)&r;
    const struct qimg_error *err;
    int ret;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 2), 0);
    mcache_set_hook(&c, make_room, &r);
    fill_dirty(&c);
    set_sentinel_error();
    ret = mcache_insert_room(&c, 9 * CS, &e);
    assert_true(ret < 0);
    assert_int_equal(r.calls, 1);
    assert_null(e);
    err = qimg_last_error();
    assert_int_equal(err->errnum, -ret);
    assert_string_not_equal(err->message, "sentinel");
    assert_true(err->message[0] != '\0');
    /* Nothing was evicted. */
    assert_null(mcache_find(&c, 9 * CS));
    check_entry(&c, 0);
    check_entry(&c, CS);
    assert_true(mcache_find(&c, 0)->dirty);
    assert_true(mcache_find(&c, CS)->dirty);
    mcache_destroy(&c);
}

/* The hook's error is returned as it is, after one call. */
static void test_mcache_insert_room_returns_hook_error(void **state)
{
    struct mcache c = {0};
    struct room r = {&c, 0, false, -EIO};
    struct mcache_entry *e = NULL;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 2), 0);
    mcache_set_hook(&c, make_room, &r);
    fill_dirty(&c);
    assert_int_equal(mcache_insert_room(&c, 9 * CS, &e), -EIO);
    assert_int_equal(r.calls, 1);
    assert_null(e);
    /* Even if it cleaned the entries first. */
    r.clean = true;
    r.ret = -ENOSPC;
    assert_int_equal(mcache_insert_room(&c, 9 * CS, &e), -ENOSPC);
    assert_int_equal(r.calls, 2);
    assert_null(mcache_find(&c, 9 * CS));
    mcache_destroy(&c);
}

static void test_mcache_insert_room_without_hook_fails(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *e = NULL;
    int ret;

    (void)state;
    /* c starts zeroed, as its owners calloc theirs: mcache_init leaves
     * make_room as it finds it. */
    assert_int_equal(mcache_init(&c, CS, 2), 0);
    fill_dirty(&c);
    set_sentinel_error();
    ret = mcache_insert_room(&c, 9 * CS, &e);
    assert_true(ret < 0);
    assert_null(e);
    assert_int_equal(qimg_last_error()->errnum, -ret);
    assert_string_not_equal(qimg_last_error()->message, "sentinel");
    mcache_destroy(&c);
}

/* A dropped entry is forgotten with its dirty contents; its slot is free
 * and taken before any clean entry is evicted. */
static void test_mcache_drop_forgets_entry(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *a;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 3), 0);
    put(&c, 0, false);
    a = put(&c, CS, true);
    put(&c, 2 * CS, false);
    assert_true(mcache_has_dirty(&c));
    mcache_drop(&c, CS);
    assert_null(mcache_find(&c, CS));
    assert_false(mcache_has_dirty(&c));
    mcache_drop(&c, 7 * CS); /* absent: nothing happens */
    check_entry(&c, 0);
    check_entry(&c, 2 * CS);
    assert_ptr_equal(mcache_insert(&c, 5 * CS), a);
    check_entry(&c, 0);
    check_entry(&c, 2 * CS);
    mcache_destroy(&c);
}

/* clear forgets every entry, dirty ones too, and keeps the buffers. */
static void test_mcache_clear_keeps_buffers(void **state)
{
    struct mcache c = {0};
    uint8_t *bufs[4];
    struct mcache_entry *e;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 4), 0);
    for (size_t i = 0; i < 4; i++)
        bufs[i] = put(&c, i * CS, i % 2)->buf;
    assert_true(mcache_has_dirty(&c));
    mcache_clear(&c);
    assert_false(mcache_has_dirty(&c));
    for (size_t i = 0; i < 4; i++) {
        assert_null(mcache_find(&c, i * CS));
        assert_ptr_equal(c.e[i].buf, bufs[i]);
    }
    /* Every slot is free again, none dirty or pinned. */
    for (size_t i = 0; i < 4; i++) {
        e = mcache_insert(&c, (i + 20) * CS);
        assert_non_null(e);
        assert_false(e->dirty);
        assert_ptr_equal(e->buf, bufs[i]);
    }
    mcache_destroy(&c);
}

static void test_mcache_has_dirty(void **state)
{
    struct mcache c = {0};
    struct mcache_entry *e;

    (void)state;
    assert_int_equal(mcache_init(&c, CS, 4), 0);
    assert_false(mcache_has_dirty(&c));
    put(&c, 0, false);
    e = put(&c, CS, false);
    assert_false(mcache_has_dirty(&c));
    e->dirty = true;
    assert_true(mcache_has_dirty(&c));
    e->dirty = false;
    assert_false(mcache_has_dirty(&c));
    mcache_destroy(&c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_mcache_insert_then_find),
        cmocka_unit_test(test_mcache_find_and_drop_in_shared_buckets),
        cmocka_unit_test(test_mcache_evicts_least_recently_used),
        cmocka_unit_test(test_mcache_never_evicts_dirty_or_pinned),
        cmocka_unit_test(test_mcache_recycle_reuses_before_growing),
        cmocka_unit_test(test_mcache_recycle_looks_at_the_oldest_only),
        cmocka_unit_test(test_mcache_pins_nest),
        cmocka_unit_test(test_mcache_insert_room_no_hook_call_when_room),
        cmocka_unit_test(test_mcache_insert_room_after_hook_cleans),
        cmocka_unit_test(test_mcache_insert_room_fails_if_hook_frees_nothing),
        cmocka_unit_test(test_mcache_insert_room_returns_hook_error),
        cmocka_unit_test(test_mcache_insert_room_without_hook_fails),
        cmocka_unit_test(test_mcache_drop_forgets_entry),
        cmocka_unit_test(test_mcache_clear_keeps_buffers),
        cmocka_unit_test(test_mcache_has_dirty),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
