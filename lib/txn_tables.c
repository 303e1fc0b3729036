/*
 * txn_tables.c - the L1 and L2 tables of a snapshot transaction: reading
 * and validating them, counting the references an L1 pointer brings or
 * takes away, and the COPIED flags of the new active tree, with a new copy
 * of each L2 table whose flags change.
 *
 * qcow2-format.md §3 (L1, L2, COPIED), §4.1 (what is counted), §5.5. Old
 * tables are only read; the refcounts they change are txn_refs.c's, the
 * clusters their copies go to come from txn_space.c, and the copies go out
 * through the write buffer (txn_wbuf.c). Writing the new L1 tables is the
 * operation's (txn.c). State: struct txn_tables (txn_impl.h), written only
 * here.
 */
#include "txn_impl.h"

#include "bitmap.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- Reading and counting the trees ------------------------------------ */

static int check_l2_off(struct txn *t, uint64_t l2_off)
{
    if (!IS_ALIGNED(l2_off, t->cs) || l2_off + t->cs > t->q->file_size)
        return qimg_corrupt("L2 table offset %#" PRIx64 " invalid", l2_off);
    return 0;
}

/* Read and validate the L2 table at l2_off into buf. A plain table
 * (offsets and COPIED only, aligned, inside the file) is validated in one
 * pass and kept as runs in t->tables.l2s if it fits; anything else gets
 * the full check entry by entry. */
static int read_l2(struct txn *t, uint64_t l2_off, uint8_t *buf)
{
    struct qcow2 *q = t->q;
    uint64_t plain = L2E_OFFSET_MASK | QCOW_OFLAG_COPIED;
    int ret = check_l2_off(t, l2_off);

    if (ret == 0)
        ret = file_pread(t->img, buf, t->cs, l2_off);
    if (ret == 0)
        ret = l2store_scan(&t->tables.l2s, q, l2_off, buf);
    if (ret != 0)
        return ret < 0 ? ret : 0; /* 1: plain, validated */
    for (uint64_t j = 0; ret == 0 && j < q->l2_entries; j++) {
        uint64_t e = l2_entry_get(q, buf, j);
        if (!q->ext_l2 && !(e & ~plain) && IS_ALIGNED(e, t->cs) &&
            (e & L2E_OFFSET_MASK) < q->file_size)
            continue;
        /* Copied into a snapshot, such an entry would count twice as
         * corrupt: refuse it (a guest write ignores the bits, as QEMU). */
        if (!(e & QCOW_OFLAG_COMPRESSED) && (e & L2E_RESERVED_MASK))
            return qimg_corrupt("Reserved bits set in L2 entry (L2 offset: "
                                "%#" PRIx64 ", L2 index: %#" PRIx64 ")",
                                l2_off, j);
        ret = l2_entry_check(t->img, e, l2_bitmap_get(q, buf, j), l2_off, j);
    }
    return ret;
}

int txn_tables_read_l2(struct txn *t, uint64_t l2_off)
{
    return read_l2(t, l2_off, t->tables.tmp);
}

/* Host clusters one L2 entry references, each changed by delta. */
static int entry_refs(struct txn *t, uint64_t e, int64_t delta)
{
    struct qcow2 *q = t->q;
    uint64_t coff, clen;

    if (e & QCOW_OFLAG_COMPRESSED) {
        l2_compressed_range(q, e, &coff, &clen);
        return txn_refs_add_range(t, coff & ~511ull, clen + (coff & 511),
                                  delta);
    }
    if (e & L2E_OFFSET_MASK)
        return txn_refs_add(t, (e & L2E_OFFSET_MASK) >> q->cluster_bits,
                            delta);
    return 0;
}

/* The references of the table at l2_off (read or kept as runs), counted
 * in runs of consecutive clusters. */
static int count_table(struct txn *t, uint64_t l2_off, int64_t delta)
{
    const struct qcow2 *q = t->q;
    const uint8_t *buf = t->tables.tmp;
    const uint64_t n = q->l2_entries, step = q->l2_entry_size;
    const unsigned cbits = q->cluster_bits;
    const struct l2run *runs;
    uint64_t run_start = 0, run_len = 0;
    size_t nr;
    int ret = txn_refs_add(t, l2_off >> cbits, delta);

    if (ret == 0 && delta < 0)
        ret = txn_space_meta_freed(t, l2_off, t->cs);
    if (ret == 0 && l2store_get(&t->tables.l2s, l2_off, &runs, &nr)) {
        for (size_t i = 0; ret == 0 && i < nr; i++)
            if (runs[i].e & L2E_OFFSET_MASK)
                ret = txn_refs_add_run(t,
                                       (runs[i].e & L2E_OFFSET_MASK) >> cbits,
                                       runs[i].len, delta);
        return ret;
    }
    for (uint64_t j = 0; ret == 0 && j < n; j++) {
        uint64_t e = be64_load(buf + j * step), c;
        if ((e & QCOW_OFLAG_COMPRESSED) || !(e & L2E_OFFSET_MASK)) {
            ret = entry_refs(t, e, delta);
            continue;
        }
        c = (e & L2E_OFFSET_MASK) >> cbits;
        if (run_len && c == run_start + run_len) {
            run_len++;
            continue;
        }
        if (run_len)
            ret = txn_refs_add_run(t, run_start, run_len, delta);
        run_start = c;
        run_len = 1;
    }
    if (ret == 0 && run_len)
        ret = txn_refs_add_run(t, run_start, run_len, delta);
    return ret;
}

static int expect_change(struct txn *t, uint64_t l2_off, int64_t delta)
{
    uint64_t c = l2_off / t->cs, v = 0;

    u64map_get(&t->tables.expect, c, &v);
    return u64map_put(&t->tables.expect, c, v + (uint64_t)delta);
}

int txn_tables_old_refcount(void *ctx, uint64_t idx, uint64_t *rc)
{
    struct txn *t = ctx;
    int ret = txn_refs_loaded(t, idx, rc);

    if (ret == 0 && u64map_put(&t->tables.old, idx, *rc) < 0)
        ret = qimg_err(ENOMEM, "Out of memory");
    return ret;
}

int txn_tables_check_meta(struct txn *t)
{
    uint64_t *c, old, now, want;
    size_t n;
    int ret = meta_list_sorted(t->img, &c, &n);

    for (size_t i = 0; ret == 0 && i < n; i++) {
        want = 0;
        u64map_get(&t->tables.expect, c[i], &want);
        /* A block the operation left alone: nothing there changed (and
         * it need not be loaded). */
        if (!txn_refs_dirty(t, c[i] >> t->q->rb_bits)) {
            if (want)
                ret = meta_signal_overlap(t->img, c[i], 0);
            continue;
        }
        if (!u64map_get(&t->tables.old, c[i], &old))
            ret = refcount_get(t->img, c[i], &old);
        if (ret == 0)
            ret = txn_refs_loaded(t, c[i], &now);
        if (ret == 0 && now - old != want)
            ret = meta_signal_overlap(t->img, c[i], 0);
    }
    free(c);
    return ret;
}

/* One L1 pointer to l2_off appears (delta +1) or disappears (-1): so do
 * the table's references. A table kept as runs is counted from them
 * without reading it; otherwise it is read into t->tables.tmp. A pointer
 * that appears names a table in use, so nothing it counts may have had a
 * refcount of 0. */
int txn_tables_pointer_change(struct txn *t, uint64_t l2_off, int64_t delta)
{
    const struct l2run *runs;
    size_t nr;
    int ret = 0;

    if (!l2store_get(&t->tables.l2s, l2_off, &runs, &nr))
        ret = read_l2(t, l2_off, t->tables.tmp);
    if (ret == 0)
        ret = expect_change(t, l2_off, delta);
    txn_refs_expect_existing(t, delta > 0);
    if (ret == 0)
        ret = count_table(t, l2_off, delta);
    txn_refs_expect_existing(t, false);
    return ret;
}

/* Validate an L1 table's pointers without counting anything. */
int txn_tables_check_l1(struct txn *t, const uint8_t *l1, uint32_t size)
{
    int ret = 0;

    for (uint32_t i = 0; ret == 0 && i < size; i++) {
        uint64_t p = txn_l1_ptr(l1, size, i);
        if (p)
            ret = check_l2_off(t, p);
    }
    return ret;
}

/* ---- COPIED flags of the new active tree --------------------------------- */

/* Rewrite the entries of the L2 table in buf so COPIED says "refcount 1"
 * under the new refcounts. Returns 1 if anything changed. */
static int fix_entries(struct txn *t, uint8_t *buf)
{
    /* Locals: stores through buf could alias anything reached through t. */
    const struct qcow2 *q = t->q;
    const uint64_t n = q->l2_entries, step = q->l2_entry_size;
    const unsigned cbits = q->cluster_bits, rbits = q->rb_bits;
    const unsigned order = q->refcount_order;
    const uint64_t mask = (1ull << rbits) - 1;
    uint64_t cur = UINT64_MAX;
    const uint8_t *rb = NULL;
    bool changed = false;

    for (uint64_t j = 0; j < n; j++) {
        uint64_t e = be64_load(buf + j * step), want = 0, rc, c;
        if (!(e & QCOW_OFLAG_COMPRESSED) && (e & L2E_OFFSET_MASK)) {
            c = (e & L2E_OFFSET_MASK) >> cbits;
            if (c >> rbits != cur) {
                cur = c >> rbits;
                rb = txn_refs_block(t, cur);
            }
            if (rb) {
                rc = order == 4 ? be16_load(rb + 2 * (c & mask))
                                : refblock_get(rb, c & mask, order);
            } else {
                int ret = txn_refs_get(t, c, &rc);
                if (ret < 0)
                    return ret;
            }
            want = rc == 1 ? QCOW_OFLAG_COPIED : 0;
        }
        if ((e & QCOW_OFLAG_COPIED) != want) {
            be64_store(buf + j * step, e ^ QCOW_OFLAG_COPIED);
            changed = true;
        }
    }
    return changed;
}

/* Write the fixed table in buf (NULL: the write buffer's slot) as the
 * copy of old table p. */
static int write_copy(struct txn *t, uint64_t p, const uint8_t *buf)
{
    uint64_t copy;
    int ret = txn_space_alloc(t, 1, &copy);

    if (ret == 0)
        ret = buf ? txn_wbuf_write(t, buf, t->cs, copy)
                  : txn_wbuf_put(t, copy);
    if (ret == 0)
        ret = txn_space_meta_freed(t, p, t->cs);
    if (ret == 0)
        ret = txn_refs_add(t, copy / t->cs, -1); /* counted per pointer later */
    return ret < 0 ? ret : u64map_put(&t->tables.copies, p, copy);
}

/* Build in out the table runs stand for, with COPIED set where the new
 * refcount is 1 (what fix_entries does, without reading the table).
 * Returns 1 if that differs from the table on disk. */
static int fix_runs(struct txn *t, const struct l2run *r, size_t n,
                    uint8_t *out)
{
    const struct qcow2 *q = t->q;
    const unsigned cbits = q->cluster_bits, rbits = q->rb_bits;
    const unsigned order = q->refcount_order;
    const uint64_t per = 1ull << rbits, cs = t->cs;
    bool changed = false;

    for (size_t i = 0; i < n; i++) {
        uint64_t e = r[i].e & ~QCOW_OFLAG_COPIED, len = r[i].len, c;
        bool had = r[i].e & QCOW_OFLAG_COPIED;
        if (!(e & L2E_OFFSET_MASK)) {
            for (uint64_t k = 0; k < len; k++, out += 8)
                be64_store(out, e);
            changed |= had;
            continue;
        }
        for (c = e >> cbits; len; ) {
            uint64_t j = c & (per - 1), cnt = MIN(len, per - j), ones = 0;
            const uint8_t *rb = txn_refs_block(t, c >> rbits);
            for (uint64_t k = 0; k < cnt; k++, out += 8, e += cs) {
                uint64_t rc;
                if (rb && order == 4) {
                    rc = be16_load(rb + 2 * (j + k));
                } else if (rb) {
                    rc = refblock_get(rb, j + k, order);
                } else {
                    int ret = txn_refs_get(t, c + k, &rc);
                    if (ret < 0)
                        return ret;
                }
                ones += rc == 1;
                be64_store(out, e | (uint64_t)(rc == 1) << 63);
            }
            changed |= had ? ones != cnt : ones != 0;
            c += cnt;
            len -= cnt;
        }
    }
    return changed;
}

/* Create: every table the active L1 points at gains a reference, so every
 * cluster they map ends with a refcount of 2 or more and no COPIED flag
 * may stay. Called once every reference has been counted (which validated
 * the table); a table not kept as runs is read again. */
int txn_tables_clear_copied(struct txn *t, uint64_t p)
{
    struct qcow2 *q = t->q;
    const struct l2run *runs;
    uint64_t copy;
    bool changed = false;
    size_t n;
    int ret;

    if (u64map_get(&t->tables.copies, p, &copy))
        return 0;
    if (l2store_get(&t->tables.l2s, p, &runs, &n)) {
        uint8_t *slot;
        for (size_t i = 0; i < n; i++)
            changed |= (runs[i].e & QCOW_OFLAG_COPIED) != 0;
        if (!changed)
            return 0;
        ret = txn_wbuf_slot(t, &slot);
        if (ret < 0)
            return ret;
        l2runs_emit(runs, n, t->cs, QCOW_OFLAG_COPIED, slot);
        return write_copy(t, p, NULL);
    }
    ret = file_pread(t->img, t->tables.tmp, t->cs, p);
    if (ret < 0)
        return ret;
    if (!q->ext_l2) {
        /* Standard entries: clear bit 63 of every big-endian word. */
        uint64_t flag = htobe64(QCOW_OFLAG_COPIED), seen = 0, w;
        for (uint64_t j = 0; j < q->l2_entries; j++) {
            memcpy(&w, t->tables.tmp + 8 * j, 8);
            seen |= w;
            w &= ~flag;
            memcpy(t->tables.tmp + 8 * j, &w, 8);
        }
        changed = (seen & flag) != 0;
    }
    for (uint64_t j = 0; q->ext_l2 && j < q->l2_entries; j++) {
        uint64_t e = l2_entry_get(q, t->tables.tmp, j);
        if (e & QCOW_OFLAG_COPIED) {
            l2_entry_set(q, t->tables.tmp, j, e & ~QCOW_OFLAG_COPIED,
                         l2_bitmap_get(q, t->tables.tmp, j));
            changed = true;
        }
    }
    return changed ? write_copy(t, p, t->tables.tmp) : 0;
}

/* The table at index i of the new active L1 may need new COPIED flags; if
 * so, write a copy (once per old table) and record it in
 * t->tables.copies. A table kept as runs is built in the write buffer's
 * slot; any other is read again (it was validated when its references
 * were counted). */
int txn_tables_inspect(struct txn *t, const uint8_t *l1, uint32_t size,
                       uint64_t i)
{
    uint64_t p = txn_l1_ptr(l1, size, i), copy;
    const struct l2run *runs;
    uint8_t *slot;
    size_t n;
    int ret;

    if (!p || u64map_get(&t->tables.copies, p, &copy))
        return 0;
    if (l2store_get(&t->tables.l2s, p, &runs, &n)) {
        ret = txn_wbuf_slot(t, &slot);
        if (ret == 0)
            ret = fix_runs(t, runs, n, slot);
        return ret <= 0 ? ret : write_copy(t, p, NULL);
    }
    ret = file_pread(t->img, t->tables.tmp, t->cs, p);
    if (ret == 0)
        ret = fix_entries(t, t->tables.tmp);
    return ret <= 0 ? ret : write_copy(t, p, t->tables.tmp);
}

/* Point every entry of a new L1 table at the copies made, moving the
 * references; then set COPIED on L1 entries from the new refcounts (only
 * meaningful for the active table). */
int txn_tables_redirect(struct txn *t, struct new_l1 *l1)
{
    int ret = 0;

    for (uint32_t i = 0; ret == 0 && i < l1->size; i++) {
        uint64_t p = txn_l1_ptr(l1->buf, l1->size, i), copy;
        if (p && u64map_get(&t->tables.copies, p, &copy)) {
            ret = txn_refs_add(t, p / t->cs, -1);
            if (ret == 0)
                ret = txn_refs_add(t, copy / t->cs, 1);
            l1_entry_set(l1->buf, i, copy);
        }
    }
    return ret;
}

int txn_tables_set_l1_flags(struct txn *t, struct new_l1 *l1)
{
    for (uint32_t i = 0; i < l1->size; i++) {
        uint64_t p = txn_l1_ptr(l1->buf, l1->size, i), rc;
        int ret;
        if (!p) {
            l1_entry_set(l1->buf, i, 0);
            continue;
        }
        ret = txn_refs_get(t, p / t->cs, &rc);
        if (ret < 0)
            return ret;
        l1_entry_set(l1->buf, i, p | (rc == 1 ? QCOW_OFLAG_COPIED : 0));
    }
    return 0;
}

/* ---- Resizing the active tree ------------------------------------------ */

int txn_tables_cut(struct txn *t, uint64_t p, uint64_t from, uint8_t *buf)
{
    const struct qcow2 *q = t->q;
    int ret = read_l2(t, p, buf);

    for (uint64_t j = from; ret == 0 && j < q->l2_entries; j++) {
        ret = entry_refs(t, l2_entry_get(q, buf, j), -1);
        l2_entry_set(q, buf, j, 0, 0);
    }
    return ret;
}

int txn_tables_fill(struct txn *t, uint64_t p, uint64_t from, uint64_t to,
                    uint8_t *buf, uint64_t *host, bool zero, uint64_t *n)
{
    const struct qcow2 *q = t->q;
    const bool set = host || zero;
    uint64_t need = 0;
    int ret = 0;

    if (p)
        ret = read_l2(t, p, buf);
    else
        memset(buf, 0, t->cs);
    for (uint64_t j = from; ret == 0 && j < to; j++) {
        uint64_t e = l2_entry_get(q, buf, j);
        if ((e & QCOW_OFLAG_COMPRESSED) || (e & L2E_OFFSET_MASK))
            continue;
        need++;
        if (!set)
            continue;
        /* Extended L2: a mapped cluster's subclusters still read as
         * unallocated, as QEMU leaves them, unless they must read as
         * zeros over a backing file. */
        if (host)
            l2_entry_set(q, buf, j, *host | QCOW_OFLAG_COPIED,
                         zero ? L2_BITMAP_ALL_ZERO : 0);
        else
            l2_entry_set(q, buf, j, q->ext_l2 ? 0 : QCOW_OFLAG_ZERO,
                         L2_BITMAP_ALL_ZERO);
        if (host)
            *host += t->cs;
    }
    *n = need;
    return ret;
}

/* Whether the clusters [c, c + n) are freed or new: a hit. */
static bool kept_hit(const struct txn *t, uint64_t c, uint64_t n)
{
    return c && (txn_space_first_freed(t, c, n) != UINT64_MAX ||
                 txn_space_allocated(t, c, n));
}

int txn_tables_check_kept(struct txn *t, uint32_t n, uint64_t cut_idx,
                          uint64_t cut_from)
{
    const struct qcow2 *q = t->q;
    const unsigned cbits = q->cluster_bits;
    const uint64_t step = q->l2_entry_size;
    uint64_t coff, clen, c, start = 0, run = 0;
    int ret = 0;

    /* Only the size changes: nothing to hit. */
    if (!kept_hit(t, 1, UINT64_MAX - 1))
        return 0;
    for (uint32_t i = 0; ret == 0 && i < MIN(n, q->l1s->l1_size); i++) {
        uint64_t p = txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i);
        uint64_t end = i == cut_idx ? cut_from : q->l2_entries;
        bool hit = false;
        if (!p)
            continue;
        /* Read as it is, not validated: only compared. */
        if ((ret = check_l2_off(t, p)) < 0 ||
            (ret = file_pread(t->img, t->tables.tmp, t->cs, p)) < 0)
            break;
        /* Consecutive clusters checked as one run. */
        for (uint64_t j = 0; !hit && j <= end; j++) {
            uint64_t e = j < end ? be64_load(t->tables.tmp + j * step) : 0;
            c = (e & L2E_OFFSET_MASK) >> cbits;
            if (!(e & QCOW_OFLAG_COMPRESSED) && c && run &&
                c == start + run) {
                run++;
                continue;
            }
            if (run)
                hit = kept_hit(t, start, run);
            run = 0;
            if (e & QCOW_OFLAG_COMPRESSED) {
                l2_compressed_range(q, e, &coff, &clen);
                c = coff >> cbits;
                hit = hit ||
                      kept_hit(t, c, ((coff + clen - 1) >> cbits) - c + 1);
            } else if (c) {
                start = c;
                run = 1;
            }
        }
        if (hit)
            ret = roots_signal_corruption(
                t->img, "Active L2 table %#" PRIx64 " names a cluster the "
                        "operation would free or reuse (it names metadata, "
                        "or a refcount is too low)", p);
    }
    return ret;
}

int txn_tables_write_edit(struct txn *t, uint64_t p, const uint8_t *buf,
                          uint64_t *off)
{
    int ret;

    if (p) {
        *off = p; /* redirected to its copy with the rest */
        return write_copy(t, p, buf);
    }
    ret = txn_space_alloc(t, 1, off);
    return ret < 0 ? ret : txn_wbuf_write(t, buf, t->cs, *off);
}

/* ---- What the commit frees ---------------------------------------------- */

/* A cluster the commit frees that an entry of the table at p names, or
 * UINT64_MAX in *hit. */
static int table_frees(struct txn *t, uint64_t p, uint64_t *hit)
{
    const struct qcow2 *q = t->q;
    const unsigned cbits = q->cluster_bits;
    const struct l2run *runs;
    uint64_t c, n, coff, clen;
    size_t nr;
    int ret = 0;

    *hit = UINT64_MAX;
    if (l2store_get(&t->tables.l2s, p, &runs, &nr)) {
        for (size_t i = 0; *hit == UINT64_MAX && i < nr; i++)
            if ((c = (runs[i].e & L2E_OFFSET_MASK) >> cbits))
                *hit = txn_space_first_freed(t, c, runs[i].len);
        return 0;
    }
    ret = file_pread(t->img, t->tables.tmp, t->cs, p);
    for (uint64_t j = 0; ret == 0 && *hit == UINT64_MAX && j < q->l2_entries;
         j++) {
        uint64_t e = l2_entry_get(q, t->tables.tmp, j);
        if (e & QCOW_OFLAG_COMPRESSED) {
            l2_compressed_range(q, e, &coff, &clen);
            c = coff >> cbits;
            n = ((coff + clen - 1) >> cbits) - c + 1;
        } else {
            c = (e & L2E_OFFSET_MASK) >> cbits;
            n = 1;
        }
        if (c)
            *hit = txn_space_first_freed(t, c, n);
    }
    return ret;
}

/* Whether the active L1 table names, without COPIED, a table the commit
 * frees and did not replace by a copy: on a sound image such a table has
 * a refcount of 2 or more, so one pointer less cannot free it. */
static bool shared_table_freed(const struct txn *t)
{
    const struct l1_state *l1 = t->q->l1s;
    uint64_t copy;

    for (uint32_t i = 0; i < l1->l1_size; i++) {
        uint64_t e = l1_entry_get(l1->l1, i), p = e & L1E_OFFSET_MASK;
        if (p && !(e & QCOW_OFLAG_COPIED) &&
            txn_space_first_freed(t, p >> t->q->cluster_bits, 1) !=
                UINT64_MAX &&
            !u64map_get(&t->tables.copies, p, &copy))
            return true;
    }
    return false;
}

struct bitmap_hit {
    const struct txn *t;
    uint64_t hit;
    int64_t bitmap;
};

static int freed_bitmap_ref(void *ctx, int64_t bitmap, int64_t entry,
                            uint64_t off, uint64_t len)
{
    struct bitmap_hit *b = ctx;
    const unsigned cbits = b->t->q->cluster_bits;

    (void)entry;
    if (!len || off + len < off)
        return 0;
    b->hit = txn_space_first_freed(b->t, off >> cbits,
                                   ((off + len - 1) >> cbits) -
                                       (off >> cbits) + 1);
    b->bitmap = bitmap;
    return b->hit != UINT64_MAX;
}

/* Counting is exact on a sound image. Where a refcount is too low, a
 * cluster the operation takes to 0 can still be in use by what it did not
 * count: the bitmaps, the active tree (delete), or another snapshot's L1
 * table, read only when the active L1 table's flags say a freed table was
 * shared (reading every snapshot's L1 table costs a random read each).
 * Freeing it would leave that user on a free cluster; QEMU does so. */
int txn_tables_check_freed(struct txn *t, uint32_t deleted, bool bitmaps,
                           const uint8_t *l1, uint32_t l1_size)
{
    const bool active_tree = deleted != UINT32_MAX;
    const struct qcow2 *q = t->q;
    const unsigned cbits = q->cluster_bits;
    struct bitmap_hit bh = {t, UINT64_MAX, -1};
    uint64_t hit = UINT64_MAX, p;
    char user[96];
    int ret = 0;

    if (txn_space_first_freed(t, 0, UINT64_MAX) == UINT64_MAX)
        return 0;
    if (bitmaps)
        ret = bitmap_each_ref(t->img, q->file_size, freed_bitmap_ref, &bh);
    if (ret > 0) {
        ret = 0;
        hit = bh.hit;
        if (bh.bitmap < 0)
            snprintf(user, sizeof user, "the bitmap directory");
        else
            snprintf(user, sizeof user, "bitmap %" PRId64, bh.bitmap);
    }
    for (uint32_t i = 0, n = shared_table_freed(t) ? q->sn->nb_snaps : 0;
         ret == 0 && hit == UINT64_MAX && i < n; i++) {
        const struct snap *s = &q->sn->snaps[i];
        uint8_t *sl1 = NULL;
        if (i == deleted || !s->l1_size)
            continue;
        ret = file_read_table(t->img, &sl1, s->l1_off, (size_t)s->l1_size * 8,
                              "Snapshot L1 table");
        for (uint32_t j = 0; ret == 0 && hit == UINT64_MAX &&
                             j < s->l1_size; j++)
            if ((p = txn_l1_ptr(sl1, s->l1_size, j)))
                hit = txn_space_first_freed(t, p >> cbits, 1);
        if (hit != UINT64_MAX)
            snprintf(user, sizeof user, "the L1 table of snapshot %s",
                     s->id);
        free(sl1);
    }
    for (uint32_t i = 0; active_tree && ret == 0 && hit == UINT64_MAX &&
                         i < l1_size; i++)
        if ((p = txn_l1_ptr(l1, l1_size, i)) &&
            (hit = txn_space_first_freed(t, p >> cbits, 1)) != UINT64_MAX)
            snprintf(user, sizeof user, "the active L1 table");
    for (uint32_t i = 0; active_tree && ret == 0 && hit == UINT64_MAX &&
                         i < q->l1s->l1_size; i++)
        if ((p = txn_l1_ptr(q->l1s->l1, q->l1s->l1_size, i)) &&
            (ret = table_frees(t, p, &hit)) == 0 && hit != UINT64_MAX)
            snprintf(user, sizeof user, "active L2 table %#" PRIx64, p);
    if (ret < 0 || hit == UINT64_MAX)
        return ret;
    return roots_signal_corruption(
        t->img, "Cluster %#" PRIx64 " would be freed while %s uses it (its "
                "refcount is too low)",
        hit << cbits, user);
}

/* ---- Life cycle ---------------------------------------------------------- */

int txn_tables_init(struct txn *t)
{
    t->tables.tmp = malloc(t->cs);
    return t->tables.tmp ? 0 : qimg_err(ENOMEM, "Out of memory");
}

void txn_tables_free(struct txn *t)
{
    free(t->tables.tmp);
    u64map_free(&t->tables.copies);
    u64map_free(&t->tables.expect);
    u64map_free(&t->tables.old);
    l2store_free(&t->tables.l2s);
}
