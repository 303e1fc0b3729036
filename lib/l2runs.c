/*
 * l2runs.c - standard L2 tables kept in memory as runs of entries.
 *
 * A snapshot operation needs some L2 tables twice: once to validate and
 * count them, and again, once every count is known, to decide their
 * COPIED flags and write copies. Holding the tables themselves would cost
 * 128 MiB on a fully allocated 1 TiB image; reading them twice costs a
 * second pass over the file. Most tables are a few runs of consecutive
 * clusters (or of unallocated entries), so they are kept as runs instead:
 * run (e, len) stands for the entries e, e + c, ..., e + (len - 1) * c,
 * where c is the cluster size if e holds an offset and 0 if not.
 *
 * Only plain tables are kept (qcow2-format.md §3.3: every entry 0 or a
 * cluster offset inside the file with at most COPIED set); a table with
 * more runs than an eighth of its own size, or one past the store's
 * budget, is validated but not kept, and its user reads it again.
 */
#include "internal.h"

#include <errno.h>
#include <stdlib.h>

#define L2RUNS_BUDGET ((16u << 20) / sizeof(struct l2run))

/* Make room for n more runs; false if that would pass the budget. */
static bool reserve(struct l2store *s, size_t n)
{
    size_t cap;
    struct l2run *r;

    if (s->nb + n <= s->cap)
        return true;
    if (s->nb + n > L2RUNS_BUDGET)
        return false;
    cap = MIN(MAX(s->cap * 2, s->nb + n), L2RUNS_BUDGET);
    r = realloc(s->runs, cap * sizeof *r);
    if (!r)
        return false;
    s->runs = r;
    s->cap = cap;
    return true;
}

int l2store_scan(struct l2store *s, const struct qcow2 *q, uint64_t l2_off,
                 const uint8_t *buf)
{
    const uint64_t cs = q->cluster_size, n = q->l2_entries;
    const uint64_t bad = ~(L2E_OFFSET_MASK | QCOW_OFLAG_COPIED) | (cs - 1);
    const size_t limit = MAX(n / 16, 1), first = s->nb;
    uint64_t acc = 0, hi = 0, next = 0;
    size_t nb = 0;
    bool keep;

    if (q->ext_l2)
        return 0;
    keep = reserve(s, limit);
    for (uint64_t j = 0; j < n; j++) {
        uint64_t e = be64_load(buf + 8 * j), o = e & L2E_OFFSET_MASK;
        acc |= e & bad;
        hi = o > hi ? o : hi;
        if (j && e == next) {
            if (keep)
                s->runs[first + nb - 1].len++;
            next += o ? cs : 0;
            continue;
        }
        next = e + (o ? cs : 0);
        if (keep && nb < limit)
            s->runs[first + nb++] = (struct l2run){e, 1};
        else
            keep = false;
    }
    if (acc || hi >= q->file_size)
        return 0;
    if (keep) {
        int ret = u64map_put(&s->idx, l2_off, (uint64_t)first << 32 | nb);
        if (ret < 0)
            return ret;
        s->nb = first + nb;
    }
    return 1;
}

bool l2store_get(const struct l2store *s, uint64_t l2_off,
                 const struct l2run **runs, size_t *n)
{
    uint64_t v;

    if (!u64map_get(&s->idx, l2_off, &v))
        return false;
    *runs = s->runs + (v >> 32);
    *n = (size_t)(v & 0xffffffffu);
    return true;
}

void l2runs_emit(const struct l2run *r, size_t n, uint64_t cs, uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t e = r[i].e, len = r[i].len;
        uint64_t step = e & L2E_OFFSET_MASK ? cs : 0;
        for (uint64_t k = 0; k < len; k++, e += step, out += 8)
            be64_store(out, e);
    }
}

void l2store_free(struct l2store *s)
{
    free(s->runs);
    u64map_free(&s->idx);
}
