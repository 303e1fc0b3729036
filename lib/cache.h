/*
 * cache.h - a write-back cache of metadata clusters (L2 tables, refcount
 * blocks) keyed by host offset (cache.c). No I/O of its own: when every
 * slot is dirty or pinned, it asks the hook its owner installed to write
 * dirty entries back (the flush order, flush.c).
 */
#ifndef QIMG_CACHE_H
#define QIMG_CACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct mcache_entry {
    uint64_t off; /* host offset; UINT64_MAX when the slot is empty */
    uint8_t *buf;
    bool dirty;
    unsigned pins;
    struct mcache_entry *hnext; /* hash chain; the free list when empty */
    struct mcache_entry *older, *newer; /* recency list, when occupied */
};

struct mcache {
    size_t cs;  /* bytes per entry (cluster size) */
    size_t cap; /* entries */
    struct mcache_entry *e;
    struct mcache_entry **hash;
    size_t hmask;
    struct mcache_entry *oldest, *newest; /* occupied slots by last use */
    struct mcache_entry *free;            /* empty slots */
    /* Set by the owner while it reads clusters once each in order (a
     * scan): a clean entry is reused before an empty slot gets a buffer. */
    bool recycle;
    /* Called when no slot can be freed; makes dirty entries clean. */
    int (*make_room)(void *ctx);
    void *room_ctx;
};

int mcache_init(struct mcache *c, size_t cs, size_t cap);
void mcache_destroy(struct mcache *c);
void mcache_set_hook(struct mcache *c, int (*make_room)(void *), void *ctx);
struct mcache_entry *mcache_find(struct mcache *c, uint64_t off);
/* A slot for `off` (not present), pinned: a free slot or the least recently
 * used clean unpinned one (that one first while `recycle` is set, if it is
 * among the 8 oldest). NULL if every slot is dirty or pinned. */
struct mcache_entry *mcache_insert(struct mcache *c, uint64_t off);
/* As mcache_insert, calling the make_room hook once when it finds no slot;
 * -errno (message set) if there is still none. */
int mcache_insert_room(struct mcache *c, uint64_t off,
                       struct mcache_entry **out);
void mcache_pin(struct mcache *c, struct mcache_entry *e);
void mcache_unpin(struct mcache_entry *e);
/* Forget a cached cluster (it was freed); its dirty contents are dropped. */
void mcache_drop(struct mcache *c, uint64_t off);
bool mcache_has_dirty(const struct mcache *c);
/* Forget every cached cluster (buffers are kept for reuse). */
void mcache_clear(struct mcache *c);

#endif
