/*
 * txn_space.c - where a snapshot transaction puts its new metadata, and
 * what its commit frees: clusters free in both the old and the new state,
 * those the file has blocks for first; then the clusters only the old
 * state used, punched or left for the next operation to fill.
 *
 * qcow2-format.md §5.5. A cluster is free in both states if the on-disk
 * refcount block says 0 (read here, one block cached) and, where the
 * operation holds a copy of the block (txn_refs.c), the copy says 0 and
 * no decrement took it there. Counting the clusters handed out is
 * txn_refs.c's job. State: struct txn_space (txn_impl.h), written only
 * here.
 */
#include "txn_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* ---- Finding free clusters ---------------------------------------------- */

/* The on-disk refcount block rt_idx, cached in t->space.old_rb. */
static int old_block(struct txn *t, uint64_t rt_idx)
{
    struct txn_space *sp = &t->space;
    int ret;

    if (sp->old_idx == rt_idx)
        return 0;
    sp->old_idx = UINT64_MAX;
    ret = refcount_read_block(t->img, rt_idx, sp->old_rb, &sp->old_exists);
    if (ret == 0)
        sp->old_idx = rt_idx;
    return ret;
}

/* Whether the 64 bytes at p hold a zero lane of type T, tested 16 bytes
 * at a time with the compiler's vector types (SSE2 on x86-64). */
#define ZERO_IN_64(name, T)                                                  \
    static bool name(const uint8_t *p)                                       \
    {                                                                        \
        typedef T vec __attribute__((vector_size(16)));                      \
        vec a, b, c, d;                                                      \
        uint64_t w[2];                                                       \
        memcpy(&a, p, 16);                                                   \
        memcpy(&b, p + 16, 16);                                              \
        memcpy(&c, p + 32, 16);                                              \
        memcpy(&d, p + 48, 16);                                              \
        __typeof__(a == 0) m = (a == 0) | (b == 0) | (c == 0) | (d == 0);    \
        memcpy(w, &m, 16);                                                   \
        return w[0] | w[1];                                                  \
    }
ZERO_IN_64(zero_in_64_8, uint8_t)
ZERO_IN_64(zero_in_64_16, uint16_t)
ZERO_IN_64(zero_in_64_32, uint32_t)
ZERO_IN_64(zero_in_64_64, uint64_t)

/* Index of the first zero entry of rb in [from, n), or n. Byte-wide and
 * wider entries are tested 64 bytes at a time. */
static uint64_t first_zero(const uint8_t *rb, uint64_t from, uint64_t n,
                           unsigned order)
{
    bool (*zero_in_64)(const uint8_t *) =
        order == 3 ? zero_in_64_8
        : order == 4 ? zero_in_64_16
        : order == 5 ? zero_in_64_32 : zero_in_64_64;
    uint64_t per = order < 3 ? 0 : 512 >> order, i = from; /* in 64 bytes */

    for (; i < n && (!per || i % per); i++)
        if (!refblock_get(rb, i, order))
            return i;
    for (; per && i + per <= n; i += per)
        if (zero_in_64(rb + (i << order) / 8))
            break;
    for (; i < n; i++)
        if (!refblock_get(rb, i, order))
            return i;
    return n;
}

/* Whole clusters in the file as the operation found it. */
static uint64_t file_clusters(const struct txn *t)
{
    return t->q->file_size / t->cs;
}

/* Whether clusters [c, c+n) are backed by the file (written, not a hole),
 * so that reusing them costs the file system no allocation; if not, *next
 * is a cluster after c where looking on makes sense. A backend that
 * cannot tell, or a failed query, says yes: this only steers a choice. */
static int file_backed(struct txn *t, uint64_t c, uint64_t n, uint64_t *next)
{
    struct txn_space *sp = &t->space;
    const struct qimg_io *io = &t->img->io;
    uint64_t off = c * t->cs, end;
    bool data;

    /* Backed up to the start of the run's last cluster: a table written
     * short (an 8-byte L1) has only its first block. */
    if (off >= sp->data_lo && off + (n - 1) * t->cs < sp->data_hi)
        return 1; /* inside the data run found last time */
    if (!io->ops->seek_data ||
        io->ops->seek_data(io->ctx, off, &data, &end) < 0)
        return 1;
    if (data) {
        sp->data_lo = off;
        sp->data_hi = end;
    }
    if (data && end > off + (n - 1) * t->cs)
        return 1;
    *next = MAX(c + 1, data ? DIV_ROUND_UP(end, t->cs) : end / t->cs);
    return 0;
}

/* First fit from *cursor: n contiguous clusters free in both the old and
 * the new state. backed: only clusters inside the file that it has
 * blocks for; 1 if there are none. */
static int alloc_scan(struct txn *t, uint64_t n, bool backed, uint64_t *cursor,
                      uint64_t *start)
{
    struct qcow2 *q = t->q;
    struct txn_space *sp = &t->space;
    uint64_t per = 1ull << q->rb_bits, idx = *cursor, run = 0, next;
    uint64_t limit = file_clusters(t);
    int ret;

    while (run < n) {
        uint64_t rt_idx = idx / per, i = idx % per;
        const uint8_t *rb = txn_refs_block(t, rt_idx);
        const uint8_t *z = rb ? txn_refs_zhit(t, rt_idx) : NULL;
        bool exists = true;

        if (backed && idx - run + n > limit)
            return 1;
        /* A block the operation holds: a cluster is free in both states
         * if it is 0 now and no decrement took it there. Any other block
         * is as on disk. */
        if (!rb) {
            ret = old_block(t, rt_idx);
            if (ret < 0)
                return ret;
            rb = sp->old_rb;
            exists = sp->old_exists;
        }
        if (run == 0 && exists) {
            /* Skip straight to the next cluster at 0. */
            uint64_t zi = first_zero(rb, i, per, q->refcount_order);
            idx += zi - i;
            i = zi;
            if (i == per)
                continue;
        }
        if (backed && run == 0)
            sp->first_free = MIN(sp->first_free, idx);
        for (; i < per && run < n; i++, idx++) {
            if ((exists && refblock_get(rb, i, q->refcount_order)) ||
                txn_refs_zero_hit_at(z, i) || idx == 0 ||
                meta_avoid(t->img, idx)) {
                /* In use (or too short a run): skip to the next cluster
                 * at 0 again. */
                run = 0;
                idx++;
                break;
            }
            run++;
        }
        if (run == n && backed) {
            if (idx > limit)
                return 1;
            if (!file_backed(t, idx - n, n, &next)) {
                run = 0;
                idx = next;
            }
        }
    }
    *start = idx - n;
    *cursor = idx;
    return 0;
}

/* Whether cluster c is free in both the old and the new state. */
static int cluster_free(struct txn *t, uint64_t c)
{
    struct qcow2 *q = t->q;
    uint64_t rt_idx = c >> q->rb_bits, i = c & ((1ull << q->rb_bits) - 1);
    const uint8_t *rb = txn_refs_block(t, rt_idx);
    int ret;

    if (meta_avoid(t->img, c))
        return 0;
    if (rb)
        return !refblock_get(rb, i, q->refcount_order) &&
               !txn_refs_zero_hit_at(txn_refs_zhit(t, rt_idx), i);
    if ((ret = old_block(t, rt_idx)) < 0)
        return ret;
    return !t->space.old_exists ||
           !refblock_get(t->space.old_rb, i, q->refcount_order);
}

/* The cluster after the last single, if it is still free (and, when the
 * run was found among backed clusters, backed): 0 if so, 1 if not. */
static int ext_take(struct txn *t, uint64_t *s)
{
    struct txn_space *sp = &t->space;
    uint64_t c = sp->ext_next, next;
    int ret = cluster_free(t, c);

    if (ret > 0 && sp->ext_backed)
        ret = c < file_clusters(t) && file_backed(t, c, 1, &next);
    if (ret <= 0) {
        sp->ext_next = 0;
        return ret < 0 ? ret : 1;
    }
    *s = c;
    return 0;
}

/* How long a free run must be for single clusters to be taken from it:
 * long enough that the L2 copies and refcount blocks an operation may
 * write (one cluster each) fit in about 8 runs, up to 1 MiB. They then
 * go out in long writes rather than filling scattered free clusters one
 * at a time (as qemu-img leaves the L2 tables of a preallocated image,
 * one per 512 MiB, once they are copied), while a small operation still
 * fills the few short runs an earlier one left. */
static uint64_t single_run(const struct qcow2 *q)
{
    uint64_t n = 0, max = MAX(1, (1ull << 20) >> q->cluster_bits);

    for (uint64_t i = 0; i < q->l1s->l1_size; i++)
        n += (l1_entry_get(q->l1s->l1, i) & L1E_OFFSET_MASK) != 0;
    for (uint64_t i = 0; i < q->rc->rt_entries; i++)
        n += (be64_load(q->rc->rt + i * 8) & RT_OFFSET_MASK) != 0;
    return MIN(max, MAX(1, n / 8));
}

/* Remember [s, s + n) as allocated (runs are few: metadata). */
static int note_alloc(struct txn *t, uint64_t s, uint64_t n)
{
    struct txn_space *sp = &t->space;
    uint64_t *a;

    if (sp->nb_alloc_runs &&
        sp->alloc[2 * sp->nb_alloc_runs - 2] +
                sp->alloc[2 * sp->nb_alloc_runs - 1] == s) {
        sp->alloc[2 * sp->nb_alloc_runs - 1] += n;
        return 0;
    }
    a = realloc(sp->alloc, (sp->nb_alloc_runs + 1) * 2 * sizeof *a);
    if (!a)
        return qimg_err(ENOMEM, "Out of memory");
    sp->alloc = a;
    a[2 * sp->nb_alloc_runs] = s;
    a[2 * sp->nb_alloc_runs + 1] = n;
    sp->nb_alloc_runs++;
    return 0;
}

bool txn_space_allocated(const struct txn *t, uint64_t c, uint64_t n)
{
    const struct txn_space *sp = &t->space;

    for (size_t i = 0; i < sp->nb_alloc_runs; i++)
        if (sp->alloc[2 * i] < c + n && c < sp->alloc[2 * i] + sp->alloc[2 * i + 1])
            return true;
    return false;
}

/* n contiguous clusters free in both the old and the new state, counted
 * once in the new state. Clusters the file has blocks for come first:
 * metadata an earlier operation freed is left in place
 * (txn_space_discard_freed), and filling it again is cheaper than filling
 * a hole; only when there is none does the search start again from the
 * front, holes included. Single clusters are taken one after another from
 * a run (single_run). */
int txn_space_alloc(struct txn *t, uint64_t n, uint64_t *off)
{
    struct txn_space *sp = &t->space;
    uint64_t s = 0, k = n;
    bool backed = false;
    int ret = 1;

    if (n == 1 && sp->ext_next) {
        ret = ext_take(t, &s);
        backed = sp->ext_backed;
    }
    if (ret > 0 && n == 1)
        k = sp->run_k;
    if (ret > 0 && k < sp->backed_short) {
        ret = alloc_scan(t, k, true, &sp->scan_backed, &s);
        if (ret > 0)
            sp->backed_short = k; /* no backed run this long is left */
        backed = ret == 0;
    }
    sp->pool_dry |= ret > 0 && n == 1;
    if (ret > 0) {
        /* Everything before the first free cluster the backed search
         * saw was in use then, and still is. */
        sp->scan_any = MAX(sp->scan_any, MIN(sp->first_free, file_clusters(t)));
        ret = alloc_scan(t, k, false, &sp->scan_any, &s);
        backed = false;
    }
    if (ret < 0)
        return ret;
    if (n == 1) {
        sp->ext_next = s + 1;
        sp->ext_backed = backed; /* unchanged if s came from ext_take */
    }
    if (backed)
        sp->nb_backed += n;
    sp->nb_alloc += n;
    if ((ret = note_alloc(t, s, n)) < 0)
        return ret;
    *off = s * t->cs;
    sp->scan = MAX(sp->scan, s + n);
    for (uint64_t c = s; c < s + n; c++)
        if ((ret = txn_refs_add(t, c, 1)) < 0)
            return ret;
    return 0;
}

int txn_space_alloc_end(struct txn *t, uint64_t n, uint64_t *off)
{
    struct txn_space *sp = &t->space;
    uint64_t cur = MAX(DIV_ROUND_UP(t->q->file_size, t->cs), sp->scan), s;
    int ret = alloc_scan(t, n, false, &cur, &s);

    if (ret < 0)
        return ret;
    sp->nb_alloc += n;
    sp->scan = MAX(sp->scan, s + n);
    *off = s * t->cs;
    ret = note_alloc(t, s, n);
    return ret < 0 ? ret : txn_refs_add_run(t, s, n, 1);
}

/* ---- What the commit frees ---------------------------------------------- */

/* Remember an old metadata cluster range this operation replaces. */
int txn_space_meta_freed(struct txn *t, uint64_t off, uint64_t len)
{
    for (uint64_t c = off / t->cs; len && c <= (off + len - 1) / t->cs; c++)
        if (idset_add(&t->space.meta_freed, c) < 0)
            return -ENOMEM;
    return 0;
}

/* Record a run of clusters only the old state uses. */
static int add_freed(struct txn *t, uint64_t start, uint64_t len)
{
    struct txn_space *sp = &t->space;
    uint64_t *f;

    if (!len)
        return 0;
    if (sp->nb_freed && sp->freed[2 * sp->nb_freed - 2] +
                                sp->freed[2 * sp->nb_freed - 1] == start) {
        sp->freed[2 * sp->nb_freed - 1] += len;
        return 0;
    }
    f = realloc(sp->freed, (sp->nb_freed + 1) * 2 * sizeof *f);
    if (!f)
        return qimg_err(ENOMEM, "Out of memory");
    sp->freed = f;
    f[2 * sp->nb_freed] = start;
    f[2 * sp->nb_freed + 1] = len;
    sp->nb_freed++;
    return 0;
}

/* Before the commit: which clusters the new state frees (so nothing has
 * to be read once the header is switched): those a decrement took to 0
 * that are still 0. */
int txn_space_find_freed(struct txn *t)
{
    struct qcow2 *q = t->q;
    const uint64_t per = 1ull << q->rb_bits;
    int ret = 0;

    for (uint64_t i = 0; i < txn_refs_nb(t) && ret == 0; i++) {
        const uint8_t *z = txn_refs_zhit(t, i), *rb = txn_refs_block(t, i);
        if (!txn_refs_dirty(t, i) || !z)
            continue;
        for (uint64_t j = 0; ret == 0 && j < per; j++) {
            if (!z[j / 8]) {
                j |= 7; /* skip the byte */
                continue;
            }
            if (txn_refs_zero_hit_at(z, j) &&
                !refblock_get(rb, j, q->refcount_order))
                ret = add_freed(t, i * per + j, 1);
        }
    }
    return ret;
}

/* The first cluster of [c, c + n) the commit frees, or UINT64_MAX (after
 * txn_space_find_freed, which lists the runs in ascending order). */
uint64_t txn_space_first_freed(const struct txn *t, uint64_t c, uint64_t n)
{
    const struct txn_space *sp = &t->space;
    size_t lo = 0, hi = sp->nb_freed;

    while (lo < hi) { /* the first run that ends after c */
        size_t mid = lo + (hi - lo) / 2;
        if (sp->freed[2 * mid] + sp->freed[2 * mid + 1] <= c)
            lo = mid + 1;
        else
            hi = mid;
    }
    if (lo == sp->nb_freed ||
        (sp->freed[2 * lo] > c && sp->freed[2 * lo] - c >= n))
        return UINT64_MAX;
    return MAX(c, sp->freed[2 * lo]);
}

/* 3 of 3: the switch is durable; punch what only the old state used.
 * Discarding is advisory: a failure here cannot harm the new state, and
 * a punch lost in a crash only leaves free clusters allocated, so it
 * needs no flush. Data is punched. Old copies of metadata the operation
 * replaced are partly left in place: punching costs about as much as
 * writing, and the next operation, which replaces the same tables,
 * would only fill the holes again (filling a hole costs the file system
 * an allocation too); txn_space_alloc takes such blocks first.
 * How many stay is bounded: as many as this operation took from that
 * pool (so it does not grow), or, when the pool ran dry, as many as it
 * allocated. Runs too short for txn_space_alloc's single clusters (such
 * as qemu-img's L2 tables, one per 512 MiB of a preallocated image)
 * stay too, up to as many as the operation allocated: punching them
 * costs the file system one extent each (2 s for the 32,768 of a 64 GiB
 * image with 4 KiB clusters, where writing their copies takes 0.3 s);
 * the guest writes' allocator takes them first (refcount.c). So free
 * clusters left allocated stay within about two copies of the metadata. */
void txn_space_discard_freed(struct txn *t)
{
    const struct txn_space *sp = &t->space;
    uint64_t keep = sp->pool_dry ? sp->nb_alloc : sp->nb_backed;
    uint64_t keep_short = sp->nb_alloc;

    for (size_t i = 0; i < sp->nb_freed; i++) {
        uint64_t start = sp->freed[2 * i], len = sp->freed[2 * i + 1], k;
        bool meta = true;
        for (uint64_t c = start; meta && c < start + len; c++)
            meta = idset_has(&sp->meta_freed, c);
        uint64_t *pool = len >= sp->run_k ? &keep : &keep_short;
        k = meta ? MIN(len, *pool) : 0;
        *pool -= k;
        if (len > k)
            file_discard_quiet(t->img, (start + k) * t->cs,
                               (len - k) * t->cs);
    }
}

/* ---- Where the file may end ------------------------------------------ */

int txn_space_find_end(struct txn *t, uint64_t *end)
{
    const struct qcow2 *q = t->q;
    const uint64_t per = 1ull << q->rb_bits;
    uint64_t n = MAX(txn_refs_nb(t), q->rc->rt_entries);
    int ret;

    for (uint64_t i = n; i-- > 0;) {
        const uint8_t *rb = txn_refs_block(t, i);
        if (!rb) {
            /* (Most indexes past the end have no block at all.) */
            if (i >= q->rc->rt_entries ||
                !(be64_load(q->rc->rt + i * 8) & RT_OFFSET_MASK))
                continue;
            if ((ret = old_block(t, i)) < 0)
                return ret;
            if (!t->space.old_exists)
                continue;
            rb = t->space.old_rb;
        }
        for (uint64_t j = per; j-- > 0;)
            if (refblock_get(rb, j, q->refcount_order)) {
                *end = i * per + j + 1;
                return 0;
            }
    }
    *end = 0;
    return 0;
}

/* ---- Life cycle ---------------------------------------------------------- */

/* Before anything reads a refcount (txn_refs.c's preload asks whether a
 * block is cached). */
void txn_space_init(struct txn *t)
{
    t->space.old_idx = UINT64_MAX;
}

/* After the live-metadata check, before the first allocation. */
int txn_space_setup(struct txn *t)
{
    struct txn_space *sp = &t->space;

    sp->old_rb = malloc(t->cs);
    if (!sp->old_rb)
        return qimg_err(ENOMEM, "Out of memory");
    sp->scan = sp->scan_backed = sp->scan_any = 1;
    sp->backed_short = sp->first_free = UINT64_MAX;
    sp->run_k = single_run(t->q);
    return 0;
}

void txn_space_free(struct txn *t)
{
    free(t->space.old_rb);
    idset_free(&t->space.meta_freed);
    free(t->space.freed);
    free(t->space.alloc);
}
