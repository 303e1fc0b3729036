/*
 * cache.c - a write-back cache of metadata clusters (L2 tables, refcount
 * blocks), keyed by host offset.
 *
 * The cache only holds buffers; it never does I/O. Callers (l1l2.c,
 * refcount.c) load entries, mark them dirty and write them back in the
 * order qcow2-format.md §13 demands; the flush order (flush.c) drives it,
 * reached through the make_room hook the opener installs.
 * Notes on the design:
 *  1. An entry returned by mcache_insert() or pinned by mcache_pin() is not
 *     evicted until mcache_unpin(); callers pin across calls that may load
 *     other clusters.
 *  2. Dirty entries are never evicted: when no clean unpinned slot is left
 *     mcache_insert_room() calls the make_room hook (a flush of all
 *     metadata) and retries.
 *  3. Buffers are allocated on first use, so a large cache costs memory
 *     only as it fills.
 *  4. Occupied slots are kept in a list by last use, empty ones in a free
 *     list: finding a slot costs no scan of the whole cache (which, with
 *     8,192 slots, was a tenth of a snapshot create reading 32,768 L2
 *     tables), only a walk past dirty or pinned entries.
 *  5. While the owner scans (`recycle`), the least recently used clean
 *     buffer (among the 8 oldest) is reused rather than a new one
 *     allocated: a table read once would otherwise cost a fresh buffer
 *     and its page faults (two thirds of a compare of two 100 GiB images
 *     with 200 tables each).
 */
#include "cache.h"

#include "error.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>

/* Entries a recycling insert looks at, oldest first, for a clean one. */
#define RECYCLE_LOOK 8

static size_t hash_of(const struct mcache *c, uint64_t off)
{
    uint64_t k = off / c->cs;

    k ^= k >> 29;
    k *= 0x9e3779b97f4a7c15ull;
    return (size_t)(k >> 17) & c->hmask;
}

int mcache_init(struct mcache *c, size_t cs, size_t cap)
{
    size_t hcap = 16;

    c->cs = cs;
    c->cap = cap;
    c->oldest = c->newest = c->free = NULL;
    c->make_room = NULL; /* mcache_set_hook() installs one */
    c->recycle = false;
    c->room_ctx = NULL;
    while (hcap < cap * 2)
        hcap *= 2;
    c->hmask = hcap - 1;
    c->e = calloc(cap, sizeof *c->e);
    c->hash = calloc(hcap, sizeof *c->hash);
    if (!c->e || !c->hash) {
        mcache_destroy(c);
        return qimg_err(ENOMEM, "Out of memory");
    }
    for (size_t i = cap; i-- > 0;) {
        c->e[i].off = UINT64_MAX;
        c->e[i].hnext = c->free;
        c->free = &c->e[i];
    }
    return 0;
}

void mcache_destroy(struct mcache *c)
{
    if (c->e)
        for (size_t i = 0; i < c->cap; i++)
            free(c->e[i].buf);
    free(c->e);
    free(c->hash);
    c->e = NULL;
    c->hash = NULL;
    c->cap = 0;
    c->oldest = c->newest = c->free = NULL;
}

static void list_remove(struct mcache *c, struct mcache_entry *e)
{
    *(e->older ? &e->older->newer : &c->oldest) = e->newer;
    *(e->newer ? &e->newer->older : &c->newest) = e->older;
    e->older = e->newer = NULL;
}

static void list_push_newest(struct mcache *c, struct mcache_entry *e)
{
    e->older = c->newest;
    e->newer = NULL;
    *(c->newest ? &c->newest->newer : &c->oldest) = e;
    c->newest = e;
}

struct mcache_entry *mcache_find(struct mcache *c, uint64_t off)
{
    struct mcache_entry *e;

    if (!c->cap)
        return NULL;
    for (e = c->hash[hash_of(c, off)]; e; e = e->hnext)
        if (e->off == off) {
            if (e != c->newest) {
                list_remove(c, e);
                list_push_newest(c, e);
            }
            return e;
        }
    return NULL;
}

static void unlink_entry(struct mcache *c, struct mcache_entry *e)
{
    struct mcache_entry **pp = &c->hash[hash_of(c, e->off)];

    while (*pp && *pp != e)
        pp = &(*pp)->hnext;
    if (*pp)
        *pp = e->hnext;
    list_remove(c, e);
    e->off = UINT64_MAX;
    e->dirty = false;
    e->hnext = c->free;
    c->free = e;
}

/* The least recently used clean unpinned entry among the `look` oldest. */
static struct mcache_entry *oldest_clean(struct mcache *c, size_t look)
{
    for (struct mcache_entry *e = c->oldest; e && look; e = e->newer, look--)
        if (!e->dirty && !e->pins)
            return e;
    return NULL;
}

struct mcache_entry *mcache_insert(struct mcache *c, uint64_t off)
{
    struct mcache_entry *victim = NULL;
    size_t h;

    if (c->recycle) /* a short look: writes may have made the old end dirty */
        victim = oldest_clean(c, RECYCLE_LOOK);
    if (!victim)
        victim = c->free;
    if (!victim)
        victim = oldest_clean(c, SIZE_MAX);
    if (!victim)
        return NULL;
    if (!victim->buf) {
        victim->buf = malloc(c->cs);
        if (!victim->buf)
            return NULL;
    }
    if (victim->off != UINT64_MAX)
        unlink_entry(c, victim);
    c->free = victim->hnext; /* it heads the free list now */
    h = hash_of(c, off);
    victim->off = off;
    victim->dirty = false;
    victim->pins = 1;
    victim->hnext = c->hash[h];
    c->hash[h] = victim;
    list_push_newest(c, victim);
    return victim;
}

void mcache_set_hook(struct mcache *c, int (*make_room)(void *), void *ctx)
{
    c->make_room = make_room;
    c->room_ctx = ctx;
}

int mcache_insert_room(struct mcache *c, uint64_t off,
                       struct mcache_entry **out)
{
    int ret;

    *out = mcache_insert(c, off);
    if (*out)
        return 0;
    if (c->make_room) {
        ret = c->make_room(c->room_ctx);
        if (ret < 0)
            return ret;
        *out = mcache_insert(c, off);
    }
    return *out ? 0 : qimg_err(ENOMEM, "Out of memory");
}

void mcache_pin(struct mcache *c, struct mcache_entry *e)
{
    (void)c;
    e->pins++;
}

void mcache_unpin(struct mcache_entry *e)
{
    if (e && e->pins)
        e->pins--;
}

void mcache_drop(struct mcache *c, uint64_t off)
{
    struct mcache_entry *e = mcache_find(c, off);

    if (e)
        unlink_entry(c, e);
}

bool mcache_has_dirty(const struct mcache *c)
{
    for (size_t i = 0; i < c->cap; i++)
        if (c->e[i].off != UINT64_MAX && c->e[i].dirty)
            return true;
    return false;
}

void mcache_clear(struct mcache *c)
{
    for (size_t i = c->cap; i-- > 0;) /* the free list in slot order */
        if (c->e[i].off != UINT64_MAX)
            unlink_entry(c, &c->e[i]);
}
