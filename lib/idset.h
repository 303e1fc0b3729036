/*
 * idset.h - a set of uint64 keys (cluster indices) and a uint64 -> uint64
 * map, open addressing (idset.c).
 */
#ifndef QIMG_IDSET_H
#define QIMG_IDSET_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct idset {
    uint64_t *slots; /* UINT64_MAX = empty */
    size_t cap, n;
};
int idset_add(struct idset *s, uint64_t key);
bool idset_has(const struct idset *s, uint64_t key);
void idset_del(struct idset *s, uint64_t key);
void idset_free(struct idset *s);

/* A uint64 -> uint64 map (old L2 table offset -> its new copy). */
struct u64map {
    uint64_t *keys, *vals;
    size_t cap, n;
};
int u64map_put(struct u64map *m, uint64_t key, uint64_t val);
bool u64map_get(const struct u64map *m, uint64_t key, uint64_t *val);
void u64map_free(struct u64map *m);

#endif
