/*
 * idset.c - an open-addressing hash set of uint64 keys.
 *
 * Holds cluster indices: the metadata clusters of the overlap check, the
 * clusters a transaction has already claimed. UINT64_MAX marks an empty
 * slot and cannot be stored.
 */
#include "idset.h"

#include "error.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static size_t slot_of(uint64_t key, size_t cap)
{
    key ^= key >> 33;
    key *= 0xff51afd7ed558ccdull;
    key ^= key >> 33;
    return (size_t)key & (cap - 1);
}

static int grow(struct idset *s)
{
    size_t cap = s->cap ? s->cap * 2 : 64;
    uint64_t *slots = malloc(cap * sizeof *slots);

    if (!slots)
        return qimg_err(ENOMEM, "Out of memory");
    for (size_t i = 0; i < cap; i++)
        slots[i] = UINT64_MAX;
    for (size_t i = 0; i < s->cap; i++) {
        size_t j;
        if (s->slots[i] == UINT64_MAX)
            continue;
        for (j = slot_of(s->slots[i], cap); slots[j] != UINT64_MAX;)
            j = (j + 1) & (cap - 1);
        slots[j] = s->slots[i];
    }
    free(s->slots);
    s->slots = slots;
    s->cap = cap;
    return 0;
}

int idset_add(struct idset *s, uint64_t key)
{
    size_t j;
    int ret;

    if ((s->n + 1) * 2 > s->cap) {
        ret = grow(s);
        if (ret < 0)
            return ret;
    }
    for (j = slot_of(key, s->cap); s->slots[j] != UINT64_MAX;
         j = (j + 1) & (s->cap - 1))
        if (s->slots[j] == key)
            return 0;
    s->slots[j] = key;
    s->n++;
    return 1;
}

bool idset_has(const struct idset *s, uint64_t key)
{
    if (!s->cap)
        return false;
    for (size_t j = slot_of(key, s->cap); s->slots[j] != UINT64_MAX;
         j = (j + 1) & (s->cap - 1))
        if (s->slots[j] == key)
            return true;
    return false;
}

void idset_del(struct idset *s, uint64_t key)
{
    size_t j, k;

    if (!s->cap)
        return;
    for (j = slot_of(key, s->cap); s->slots[j] != key; j = (j + 1) & (s->cap - 1))
        if (s->slots[j] == UINT64_MAX)
            return;
    /* Backward-shift deletion keeps probe chains intact. */
    s->slots[j] = UINT64_MAX;
    s->n--;
    for (k = (j + 1) & (s->cap - 1); s->slots[k] != UINT64_MAX;
         k = (k + 1) & (s->cap - 1)) {
        uint64_t v = s->slots[k];
        size_t home = slot_of(v, s->cap);
        bool movable = (j <= k) ? (home <= j || home > k)
                                : (home <= j && home > k);
        if (movable) {
            s->slots[j] = v;
            s->slots[k] = UINT64_MAX;
            j = k;
        }
    }
}

void idset_free(struct idset *s)
{
    free(s->slots);
    s->slots = NULL;
    s->cap = s->n = 0;
}

/* ---- u64map: uint64 -> uint64, same scheme -------------------------- */

static int map_grow(struct u64map *m)
{
    size_t cap = m->cap ? m->cap * 2 : 64;
    uint64_t *k = malloc(cap * sizeof *k), *v = malloc(cap * sizeof *v);

    if (!k || !v) {
        free(k);
        free(v);
        return qimg_err(ENOMEM, "Out of memory");
    }
    for (size_t i = 0; i < cap; i++)
        k[i] = UINT64_MAX;
    for (size_t i = 0; i < m->cap; i++) {
        size_t j;
        if (m->keys[i] == UINT64_MAX)
            continue;
        for (j = slot_of(m->keys[i], cap); k[j] != UINT64_MAX;)
            j = (j + 1) & (cap - 1);
        k[j] = m->keys[i];
        v[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = k;
    m->vals = v;
    m->cap = cap;
    return 0;
}

int u64map_put(struct u64map *m, uint64_t key, uint64_t val)
{
    size_t j;
    int ret;

    if ((m->n + 1) * 2 > m->cap && (ret = map_grow(m)) < 0)
        return ret;
    for (j = slot_of(key, m->cap); m->keys[j] != UINT64_MAX;
         j = (j + 1) & (m->cap - 1))
        if (m->keys[j] == key) {
            m->vals[j] = val;
            return 0;
        }
    m->keys[j] = key;
    m->vals[j] = val;
    m->n++;
    return 0;
}

bool u64map_get(const struct u64map *m, uint64_t key, uint64_t *val)
{
    if (!m->cap)
        return false;
    for (size_t j = slot_of(key, m->cap); m->keys[j] != UINT64_MAX;
         j = (j + 1) & (m->cap - 1))
        if (m->keys[j] == key) {
            *val = m->vals[j];
            return true;
        }
    return false;
}

void u64map_free(struct u64map *m)
{
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}
