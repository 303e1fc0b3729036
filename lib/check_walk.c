/*
 * check_walk.c - the expected refcounts: every structure that references
 * clusters is walked into an in-memory table (check.c, notes 1 and 5;
 * qcow2-format.md §4.1, §3.7).
 *
 * Owns struct chk_walk: the table, the file size it covers, where the walk
 * is, and the fast paths' state. The walk counts and reports what it meets
 * on its way (entries and offsets that cannot be right); it does not read
 * the refcounts on disk (check_refcounts.c) and makes only two repairs
 * itself, with -r all (an unaligned zero-allocated L2 entry, a refcount
 * block past the end of the file).
 */
#include "check_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* u64map values for L2 tables whose first walk is behind us. */
#define L2_DONE UINT64_MAX /* counted for every reference at once */
#define L2_SLOW (UINT64_MAX - 1) /* walked entry by entry at each */

/* ---- The in-memory reference table --------------------------------------- */

/* The file is (at least) size bytes long: the table covers it. */
void walk_set_file_size(struct chk *c, uint64_t size)
{
    c->walk.file_size = MAX(c->walk.file_size, size);
    c->walk.nb_clusters = DIV_ROUND_UP(c->walk.file_size, c->q->cluster_size);
}

static int ref_grow(struct chk *c, uint64_t n)
{
    unsigned order = c->q->refcount_order;
    uint64_t old_bytes = ALIGN_UP(DIV_ROUND_UP(c->walk.nb_refs << order, 8), 8);
    uint64_t new_bytes = ALIGN_UP(DIV_ROUND_UP(n << order, 8), 8);
    uint8_t *p;

    if (n <= c->walk.nb_refs)
        return 0;
    if (new_bytes > old_bytes) {
        p = realloc(c->walk.refs, new_bytes);
        if (!p) {
            c->res->check_errors++;
            return qimg_err(ENOMEM, "Out of memory");
        }
        memset(p + old_bytes, 0, new_bytes - old_bytes);
        c->walk.refs = p;
    }
    c->walk.nb_refs = n;
    return 0;
}

/* A region is counted as a reference only if it ends less than a cluster
 * past the end of the file (QEMU's rule). */
static bool counted_region(const struct chk *c, uint64_t off, uint64_t len)
{
    return off + len <= c->walk.file_size ||
           off + len - c->walk.file_size < c->q->cluster_size;
}

/* Count one reference to every cluster [off, off+len) touches. */
static int inc_refs(struct chk *c, uint64_t off, uint64_t len)
{
    struct qcow2 *q = c->q;
    int ret;

    if (len == 0)
        return 0;
    if (!counted_region(c, off, len)) {
        if (!c->find.quiet)
            c->res->corruptions++;
        /* A bogus offset far out must not hide a truncated table's
         * (rebuild_refcounts steps over the nearer ones only). */
        if (off + len - c->walk.file_size <= REBUILD_AVOID_MAX)
            c->walk.past_end = MAX(c->walk.past_end,
                                   ((off + len - 1) >> q->cluster_bits) + 1);
        return findings_add(
            c, "beyond-eof", true, &c->walk.loc,
            "ERROR: counting reference for region exceeding the "
            "end of the file by one cluster or more: offset "
            "0x%" PRIx64 " size 0x%" PRIx64,
            off, len);
    }
    for (uint64_t k = off >> q->cluster_bits;
         k <= (off + len - 1) >> q->cluster_bits; k++) {
        uint64_t v;
        if (k >= c->walk.nb_refs && (ret = ref_grow(c, k + 1)) < 0)
            return ret;
        if (c->find.quiet && idset_has(&c->find.traced, k) &&
            (ret = findings_referrer(c, &c->walk.loc, k)) < 0)
            return ret;
        v = walk_ref_get(c, k);
        if (v == q->refcount_max) {
            c->walk.overflowed = true;
            if (!c->find.quiet)
                c->res->corruptions++;
            ret = findings_add(c, "overflow", true, &c->walk.loc,
                               "ERROR: overflow cluster offset=0x%" PRIx64,
                               k << q->cluster_bits);
            if (ret == 0)
                ret =
                    findings_add(c, "overflow", false, NULL,
                                 "Use qemu-img amend to increase the refcount "
                                 "entry width or qemu-img convert to create a "
                                 "clean copy if the image cannot be opened for "
                                 "writing");
            if (ret < 0)
                return ret;
            continue;
        }
        refblock_set(c->walk.refs, k, q->refcount_order, v + 1);
    }
    return 0;
}

static void corruption(struct chk *c)
{
    if (!c->find.quiet)
        c->res->corruptions++;
}

/* ---- Walking the trees --------------------------------------------------- */

static int check_compressed(struct chk *c, uint64_t e, uint64_t bm, int64_t j,
                            bool frag)
{
    struct qcow2 *q = c->q;
    uint64_t coff, clen;
    int ret = 0;

    if (e & QCOW_OFLAG_COPIED) {
        corruption(c);
        ret =
            findings_add(c, "copied", true, &c->walk.loc,
                         "ERROR: coffset=0x%" PRIx64 ": copied flag must never "
                         "be set for compressed clusters",
                         e & q->coff_mask);
        e &= ~QCOW_OFLAG_COPIED;
    }
    if (ret == 0 && bm) {
        corruption(c);
        return findings_add(
            c, "l2-entry", true, &c->walk.loc,
            "ERROR compressed cluster %" PRId64 " with non-zero "
            "subcluster allocation bitmap, entry=0x%" PRIx64,
            j, e);
    }
    l2_compressed_range(q, e, &coff, &clen);
    if (ret == 0)
        ret = inc_refs(c, coff, clen);
    if (frag && !c->find.quiet) {
        c->res->allocated_clusters++;
        c->res->compressed_clusters++;
        c->res->fragmented_clusters++;
    }
    return ret;
}

/* -r all: an unaligned zero-allocated entry becomes a plain zero entry (as
 * QEMU; the guest reads zeros either way). One entry-sized write. */
static int zero_l2_entry(struct chk *c, uint64_t l2_off, uint64_t j)
{
    struct qcow2 *q = c->q;
    uint64_t bm = l2_bitmap_get(q, c->l2buf, j);
    int ret;

    bm = (bm | (bm << 32)) & L2_BITMAP_ALL_ZERO;
    l2_entry_set(q, c->l2buf, j, q->ext_l2 ? 0 : QCOW_OFLAG_ZERO, bm);
    ret = file_pwrite(c->img, c->l2buf + j * q->l2_entry_size,
                       q->l2_entry_size, l2_off + j * q->l2_entry_size);
    if (ret == 0)
        ret = file_flush(c->img);
    l2_cache_forget(c->img, l2_off);
    if (ret < 0) {
        c->res->check_errors++;
        qimg_error_clear();
        return findings_add(c, "io", true, NULL,
                            "ERROR: Failed to overwrite L2 table entry: %s",
                            strerror(-ret));
    }
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return 1;
}

/* 1: the entry was repaired and no longer references a cluster. */
static int check_unaligned(struct chk *c, uint64_t e, uint64_t bm,
                           uint64_t l2_off, uint64_t j)
{
    struct qcow2 *q = c->q;
    uint64_t off = e & L2E_OFFSET_MASK;
    bool has_data = q->ext_l2 ? (bm & L2_BITMAP_ALL_ALLOC)
                              : !(e & QCOW_OFLAG_ZERO);
    /* Not in a table read from an unaligned offset: the entry could lie
     * in the next cluster, perhaps guest data (QEMU writes it there). */
    bool fix = c->walk.fix && !has_data && IS_ALIGNED(l2_off, q->cluster_size);
    int ret;

    corruption(c);
    if (has_data)
        return findings_add(c, "l2-entry", true, &c->walk.loc,
                            "ERROR offset=%" PRIx64 ": Data cluster is not "
                            "properly aligned; L2 entry corrupted.",
                            off);
    ret = findings_add(c, "l2-entry", true, &c->walk.loc,
                       "%s offset=%" PRIx64 ": Preallocated cluster is not "
                       "properly aligned; L2 entry corrupted.",
                       fix ? "Repairing" : "ERROR", off);
    if (ret < 0 || !fix)
        return ret;
    return zero_l2_entry(c, l2_off, j);
}

static int check_allocated(struct chk *c, uint64_t e, uint64_t bm,
                           uint64_t l2_off, uint64_t j, bool frag,
                           uint64_t *next_contig)
{
    struct qcow2 *q = c->q;
    uint64_t off = e & L2E_OFFSET_MASK;
    int ret = 0;

    if ((bm >> 32) & bm) {
        corruption(c);
        ret = findings_add(c, "l2-entry", true, &c->walk.loc,
                           "ERROR offset=%" PRIx64 ": Allocated cluster has "
                           "corrupted subcluster allocation bitmap",
                           off);
    }
    if (ret == 0 && !IS_ALIGNED(off, q->cluster_size)) {
        ret = check_unaligned(c, e, bm, l2_off, j);
        if (ret)
            return ret < 0 ? ret : 0;
    }
    if (frag && !c->find.quiet) {
        c->res->allocated_clusters++;
        if (*next_contig && off != *next_contig)
            c->res->fragmented_clusters++;
        *next_contig = off + q->cluster_size;
    }
    return ret < 0 ? ret : inc_refs(c, off, q->cluster_size);
}

/* Take back m references to each cluster counted by fast_l2() from the
 * first n entries of c->l2buf. */
static void fast_l2_undo(struct chk *c, uint64_t n, uint64_t m)
{
    struct qcow2 *q = c->q;

    for (uint64_t j = 0; j < n; j++) {
        uint64_t k = (l2_entry_get(q, c->l2buf, j) & L2E_OFFSET_MASK) >>
                     q->cluster_bits;
        if (k)
            refblock_set(c->walk.refs, k, q->refcount_order,
                         refblock_get(c->walk.refs, k, q->refcount_order) - m);
    }
}

/* Count the L2 table in c->l2buf for m references at once (ma of them
 * from the active L1) when no entry needs a message: plain or zero
 * entries, aligned, inside the file and the count table, no reserved
 * bits, no compressed clusters, no overflow. False (with nothing
 * counted) when the table needs the entry-by-entry walk. Inlined with
 * constant `order` and `esize` for the common layouts. */
static inline __attribute__((always_inline)) bool
fast_l2_body(struct chk *c, uint64_t m, uint64_t ma, unsigned order,
             unsigned esize)
{
    struct qcow2 *q = c->q;
    const uint8_t *buf = c->l2buf;
    unsigned bits = q->cluster_bits;
    uint64_t cs = q->cluster_size, max = q->refcount_max, n = q->l2_entries;
    uint64_t next = 0, alloc = 0, frag = 0, j;
    /* Locals: stores through refs (bytes) could alias any field of c. */
    uint8_t *refs = c->walk.refs;
    uint64_t *cop1 = c->walk.cop1, *cop0 = c->walk.cop0;
    uint64_t file_size = c->walk.file_size, nb_refs = c->walk.nb_refs;
    uint64_t cop_n = ma ? c->walk.cop_n : 0;
    bool cop_ok = true;

    for (j = 0; j < n; j++) {
        uint64_t e = be64_load(buf + j * esize), off = e & L2E_OFFSET_MASK;
        uint64_t k = off >> bits, v;
        if (e & (QCOW_OFLAG_COMPRESSED | L2E_RESERVED_MASK))
            break;
        if (esize == 16) {
            uint64_t bm = be64_load(buf + j * 16 + 8);
            if (off ? (bm >> 32) & bm : bm & L2_BITMAP_ALL_ALLOC)
                break;
        }
        if (!off)
            continue;
        if ((off & (cs - 1)) || off >= file_size || k >= nb_refs)
            break;
        v = refblock_get(refs, k, order);
        if (v > max - m)
            break;
        refblock_set(refs, k, order, v + m);
        if (k < cop_n)
            (e & QCOW_OFLAG_COPIED ? cop1 : cop0)[k / 64] |= 1ull << (k % 64);
        else if (ma)
            cop_ok = false;
        alloc++;
        frag += next && off != next;
        next = off + cs;
    }
    if (j < n) {
        fast_l2_undo(c, j, m);
        return false;
    }
    c->walk.cop_ok &= cop_ok;
    c->res->allocated_clusters += (int64_t)(ma * alloc);
    c->res->fragmented_clusters += (int64_t)(ma * frag);
    return true;
}

static bool fast_l2(struct chk *c, uint64_t m, uint64_t ma)
{
    unsigned order = c->q->refcount_order, esize = c->q->l2_entry_size;

    if (order == 4 && esize == 8)
        return fast_l2_body(c, m, ma, 4, 8);
    return fast_l2_body(c, m, ma, order, esize);
}

static int read_l2(struct chk *c, uint64_t l2_off)
{
    int ret = file_pread(c->img, c->l2buf, c->q->cluster_size, l2_off);

    if (ret < 0) {
        /* As QEMU, the check stops: a table not walked would make its
         * clusters look leaked, and a repair would free them. */
        c->res->check_errors++;
        ret = findings_add(c, "io", true, NULL,
                           "ERROR: I/O error in check_refcounts_l2");
        return ret < 0 ? ret : -EIO;
    }
    return 0;
}

/* The entry-by-entry walk of the L2 table in c->l2buf. */
static int check_l2(struct chk *c, uint64_t l2_off, bool frag)
{
    struct qcow2 *q = c->q;
    uint64_t next_contig = 0;
    int ret = 0;

    if (frag)
        c->walk.cop_ok = false;
    for (uint64_t j = 0; j < q->l2_entries && ret == 0; j++) {
        uint64_t e = l2_entry_get(q, c->l2buf, j);
        uint64_t bm = l2_bitmap_get(q, c->l2buf, j);
        enum cl_type t = l2_cluster_type(q, e);

        c->walk.loc.kind = LOC_L2_ENTRY;
        c->walk.loc.j = (int64_t)j;
        /* As QEMU, bit 0 is not checked with extended L2 entries. */
        if (t != CL_COMPRESSED && (e & L2E_RESERVED_MASK)) {
            corruption(c);
            ret = findings_add(c, "l2-entry", true, &c->walk.loc,
                               "ERROR found l2 entry with reserved bits set: "
                               "%" PRIx64,
                               e);
            if (ret < 0)
                break;
        }
        if (t == CL_COMPRESSED)
            ret = check_compressed(c, e, bm, (int64_t)j, frag);
        else if (t == CL_NORMAL || t == CL_ZERO_ALLOC)
            ret = check_allocated(c, e, bm, l2_off, j, frag, &next_contig);
        else if (t == CL_UNALLOC && (bm & L2_BITMAP_ALL_ALLOC)) {
            corruption(c);
            ret = findings_add(
                c, "l2-entry", true, &c->walk.loc,
                "ERROR: Unallocated cluster has non-zero subcluster "
                "allocation map");
        }
    }
    return ret;
}

/* Count the clusters an L2 table references, for one reference to it:
 * with c->walk.multi, a clean table is counted for all its references at
 * its first one and skipped at the others. */
static int walk_l2(struct chk *c, uint64_t l2_off, bool frag, bool *done)
{
    uint64_t v = 0;
    int ret;

    *done = false;
    if (c->walk.multi && u64map_get(&c->walk.l2refs, l2_off, &v) &&
        v == L2_DONE) {
        *done = true;
        return 0;
    }
    ret = read_l2(c, l2_off);
    if (ret < 0)
        return ret;
    if (c->walk.multi && v && v != L2_SLOW) {
        uint64_t m = v >> 32, ma = v & 0xffffffffu;
        *done = fast_l2(c, m, ma);
        if (u64map_put(&c->walk.l2refs, l2_off,
                       *done ? L2_DONE : L2_SLOW) < 0)
            return qimg_err(ENOMEM, "Out of memory");
        c->walk.multi_used |= *done && m > 1;
        if (*done)
            return 0;
    } else if (!c->walk.multi && !c->find.quiet && fast_l2(c, 1, frag)) {
        return 0;
    }
    return check_l2(c, l2_off, frag);
}

/* Read an L1 table of l1_size (> 0) entries for counting; a failure is a
 * check error (with QEMU's message for a failed read). */
static int read_l1_for_check(struct chk *c, uint64_t l1_off, uint32_t l1_size,
                             uint8_t **out)
{
    uint64_t bytes = (uint64_t)l1_size * 8;
    int ret;

    *out = malloc(bytes);
    if (!*out) {
        c->res->check_errors++;
        return qimg_err(ENOMEM, "Out of memory");
    }
    if (file_pread(c->img, *out, bytes, l1_off) < 0) {
        free(*out);
        *out = NULL;
        c->res->check_errors++;
        ret = findings_add(c, "io", true, NULL,
                           "ERROR: I/O error in check_refcounts_l1");
        return ret < 0 ? ret : -EIO;
    }
    return 0;
}

/* Count an L1 table (active: snap = -1), its L2 tables and their data. */
static int check_l1(struct chk *c, int snap, uint64_t l1_off, uint32_t l1_size,
                    bool frag)
{
    struct qcow2 *q = c->q;
    uint64_t bytes = (uint64_t)l1_size * 8;
    uint8_t *l1;
    int ret;

    c->walk.loc = (struct loc){LOC_L1_TABLE, snap, -1, -1};
    ret = inc_refs(c, l1_off, bytes);
    if (ret < 0 || !l1_size)
        return ret;
    ret = read_l1_for_check(c, l1_off, l1_size, &l1);
    if (ret < 0)
        return ret;
    for (uint32_t i = 0; i < l1_size && ret == 0; i++) {
        uint64_t e = l1_entry_get(l1, i), l2_off = e & L1E_OFFSET_MASK;
        bool done;
        if (!e)
            continue;
        c->walk.loc = (struct loc){LOC_L1_ENTRY, snap, i, -1};
        if (e & L1E_RESERVED_MASK) {
            corruption(c);
            ret = findings_add(c, "l1-entry", true, &c->walk.loc,
                               "ERROR found L1 entry with reserved bits set: "
                               "%" PRIx64,
                               e);
        }
        if (ret == 0)
            ret = inc_refs(c, l2_off, q->cluster_size);
        if (ret == 0 && !IS_ALIGNED(l2_off, q->cluster_size)) {
            corruption(c);
            ret = findings_add(
                c, "l1-entry", true, &c->walk.loc,
                "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                "aligned; L1 entry corrupted",
                l2_off);
        }
        if (ret == 0 && l2_off && i < c->walk.done_size &&
            c->walk.done_at[i] == l2_off)
            continue; /* counted for all its references already */
        if (ret == 0)
            ret = walk_l2(c, l2_off, frag, &done);
        if (ret == 0 && done && i < c->walk.done_size)
            c->walk.done_at[i] = l2_off;
    }
    free(l1);
    return ret;
}

static int check_snapshots_refs(struct chk *c)
{
    int ret = 0;

    for (uint32_t i = 0; i < c->snaptab.nb_snaps && ret == 0; i++) {
        const struct snap *s = &c->snaptab.snaps[i];
        c->walk.loc = (struct loc){LOC_NONE, (int)i, -1, -1};
        if (!IS_ALIGNED(s->l1_off, c->q->cluster_size)) {
            corruption(c);
            ret = findings_add(
                c, "snapshot", true, NULL,
                "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
                ": L1 table is not cluster aligned; snapshot table "
                "entry corrupted",
                s->id, s->name, s->l1_off);
            continue;
        }
        if ((uint64_t)s->l1_size > QCOW_MAX_L1_SIZE / 8) {
            corruption(c);
            ret = findings_add(c, "snapshot", true, NULL,
                               "ERROR snapshot %s (%s) l1_size=%#" PRIx32
                               ": L1 table is too large; snapshot table entry "
                               "corrupted",
                               s->id, s->name, s->l1_size);
            continue;
        }
        ret = check_l1(c, (int)i, s->l1_off, s->l1_size, false);
    }
    return ret;
}

/* ---- Bitmaps ------------------------------------------------------------- */

static int count_bitmap_ref(void *ctx, int64_t bitmap, int64_t entry,
                            uint64_t off, uint64_t len)
{
    struct chk *c = ctx;

    if (bitmap < 0)
        c->walk.loc = (struct loc){LOC_BITMAP_DIR, -1, -1, -1};
    else
        c->walk.loc = (struct loc){LOC_BITMAP, -1, bitmap, entry < 0 ? -1 : 0};
    return inc_refs(c, off, len);
}

static int check_bitmaps_refs(struct chk *c)
{
    return bitmap_each_ref(c->img, c->walk.file_size, count_bitmap_ref, c);
}

/* ---- Refcount structures ------------------------------------------------- */

/* -r all and a refcount block past the end of the file: extend the file
 * to cover it (as QEMU; it then reads as zeros and forces a rebuild). */
static int grow_for_refblock(struct chk *c, uint64_t off)
{
    struct qcow2 *q = c->q;
    uint64_t end = off + q->cluster_size;
    int ret = -EINVAL;

    if (off <= INT64_MAX - q->cluster_size)
        ret = file_truncate(c->img, end);
    if (ret == 0)
        ret = file_flush(c->img);
    if (ret < 0) {
        qimg_error_clear();
        c->walk.need_rebuild = true;
        return findings_add(c, "reftable", true, NULL,
                            "ERROR could not resize image: %s", strerror(-ret));
    }
    walk_set_file_size(c, end);
    file_extend(c->img, end);
    ret = ref_grow(c, c->walk.nb_clusters);
    if (ret < 0)
        return ret;
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    if (idset_add(&c->walk.rb_counted, off >> q->cluster_bits) < 0)
        return -ENOMEM;
    return inc_refs(c, off, q->cluster_size);
}

static int check_refblock(struct chk *c, uint64_t i)
{
    struct qcow2 *q = c->q;
    uint64_t e = chk_rt_raw(c, i), off = e & RT_OFFSET_MASK;
    uint64_t cl = off >> q->cluster_bits;
    bool fix = c->walk.fix;
    int ret;

    c->walk.loc = (struct loc){LOC_REFTABLE_ENTRY, -1, (int64_t)i, -1};
    if (e & ~RT_OFFSET_MASK) {
        corruption(c);
        c->walk.need_rebuild = true;
        return findings_add(c, "reftable", true, &c->walk.loc,
                            "ERROR refcount table entry %" PRIu64
                            " has reserved bits set",
                            i);
    }
    if (!IS_ALIGNED(off, q->cluster_size)) {
        corruption(c);
        c->walk.need_rebuild = true;
        return findings_add(c, "reftable", true, &c->walk.loc,
                            "ERROR refcount block %" PRIu64 " is not cluster "
                            "aligned; refcount table entry corrupted",
                            i);
    }
    if (cl >= c->walk.nb_refs) {
        corruption(c);
        ret = findings_add(c, "reftable", true, &c->walk.loc,
                           "%s refcount block %" PRIu64 " is outside image",
                           fix ? "Repairing" : "ERROR", i);
        return ret < 0 || !fix ? ret : grow_for_refblock(c, off);
    }
    if (!off)
        return 0;
    if (counted_region(c, off, q->cluster_size) &&
        idset_add(&c->walk.rb_counted, cl) < 0)
        return -ENOMEM;
    ret = inc_refs(c, off, q->cluster_size);
    if (ret == 0 && walk_ref_get(c, cl) != 1) {
        corruption(c);
        c->walk.need_rebuild = true;
        ret = findings_add(c, "reftable", true, &c->walk.loc,
                           "ERROR refcount block %" PRIu64 " refcount=%" PRIu64,
                           i, walk_ref_get(c, cl));
        if (ret == 0)
            ret = findings_dispute(c, cl);
    }
    return ret;
}

static int check_refblocks(struct chk *c)
{
    int ret = 0;

    for (uint64_t i = 0; i < c->q->rc->rt_entries && ret == 0; i++)
        ret = check_refblock(c, i);
    return ret;
}

/* Add n references (active: of the active L1 table) to L2 table l2_off
 * in c->walk.l2refs. 1: counted; 0: counts grow absurd (the shortcut is
 * not taken); -ENOMEM. */
static int add_l2_refs(struct chk *c, uint64_t l2_off, uint64_t n,
                       bool active)
{
    uint64_t v;

    if (!u64map_get(&c->walk.l2refs, l2_off, &v))
        v = 0;
    if (n >= 1u << 30 || (v >> 32) + n >= 1u << 31)
        return 0;
    v += (n << 32) + active;
    if ((v & 0xffffffffu) >= 0x80000000u)
        return 0;
    return u64map_put(&c->walk.l2refs, l2_off, v) < 0 ? -ENOMEM : 1;
}

/* References held back while consecutive snapshots repeat the entry at
 * an L1 index (most do): one map update per run instead of one per
 * entry. */
struct l2ref_runs {
    uint64_t *off;
    uint64_t *n;
    uint32_t size;
};
#define L2REF_RUNS_MAX (1u << 20) /* L1 indexes followed */

static int runs_flush(struct chk *c, struct l2ref_runs *r, uint32_t i)
{
    int ret = r->off[i] ? add_l2_refs(c, r->off[i], r->n[i], false) : 1;

    r->off[i] = 0;
    r->n[i] = 0;
    return ret;
}

/* Add the references of one L1 table (to c->walk.l2refs, or for a
 * snapshot's to the runs r, if any). 1: counted; 0: counts grow absurd
 * (the shortcut is not taken); < 0: an error. */
static int count_l1_refs(struct chk *c, uint64_t l1_off, uint32_t l1_size,
                         bool active, struct l2ref_runs *r)
{
    uint8_t *l1;
    int ret;

    if (!l1_size)
        return 1;
    ret = read_l1_for_check(c, l1_off, l1_size, &l1);
    if (ret < 0)
        return ret;
    ret = 1;
    for (uint32_t i = 0; ret == 1 && i < l1_size; i++) {
        uint64_t l2_off = l1_entry_get(l1, i) & L1E_OFFSET_MASK;
        if (!l2_off || !IS_ALIGNED(l2_off, c->q->cluster_size))
            continue; /* walked at each reference */
        if (active || !r || i >= r->size) {
            ret = add_l2_refs(c, l2_off, 1, active);
        } else if (r->off[i] == l2_off) {
            r->n[i]++;
        } else {
            ret = runs_flush(c, r, i);
            r->off[i] = l2_off;
            r->n[i] = 1;
        }
    }
    free(l1);
    return ret;
}

/* How many references each L2 table has, from the L1 tables calculate()
 * walks (snapshots it refuses are skipped by both). 1: counted; 0: not
 * usable; < 0: an error. */
static int count_l2_refs(struct chk *c)
{
    const struct qcow2_header *h = &c->q->hdr;
    struct l2ref_runs r = {0};
    int ret = count_l1_refs(c, h->l1_table_offset, h->l1_size, true, NULL);

    for (uint32_t i = 0; i < c->snaptab.nb_snaps; i++)
        r.size = MAX(r.size, MIN(c->snaptab.snaps[i].l1_size,
                                 L2REF_RUNS_MAX));
    r.off = calloc(r.size ? r.size : 1, sizeof *r.off);
    r.n = calloc(r.size ? r.size : 1, sizeof *r.n);
    for (uint32_t i = 0; ret == 1 && i < c->snaptab.nb_snaps; i++) {
        const struct snap *s = &c->snaptab.snaps[i];
        if (IS_ALIGNED(s->l1_off, c->q->cluster_size) &&
            (uint64_t)s->l1_size <= QCOW_MAX_L1_SIZE / 8)
            ret = count_l1_refs(c, s->l1_off, s->l1_size, false,
                                r.off && r.n ? &r : NULL);
    }
    for (uint32_t i = 0; ret == 1 && r.off && r.n && i < r.size; i++)
        ret = runs_flush(c, &r, i);
    if (ret == -ENOMEM)
        c->res->check_errors++;
    free(r.off);
    free(r.n);
    return ret;
}

static int calculate_once(struct chk *c)
{
    struct qcow2 *q = c->q;
    const struct qcow2_header *h = &q->hdr;
    int ret;

    if (c->walk.refs)
        memset(
            c->walk.refs, 0,
            ALIGN_UP(DIV_ROUND_UP(c->walk.nb_refs << q->refcount_order, 8), 8));
    idset_free(&c->walk.rb_counted);
    ret = ref_grow(c, MAX(c->walk.nb_clusters, 1));
    if (ret < 0)
        return ret;
    c->walk.loc = (struct loc){LOC_HEADER, -1, -1, -1};
    ret = inc_refs(c, 0, q->cluster_size);
    if (ret == 0)
        ret = check_l1(c, -1, h->l1_table_offset, h->l1_size, true);
    if (ret == 0)
        ret = check_snapshots_refs(c);
    c->walk.loc = (struct loc){LOC_SNAP_TABLE, -1, -1, -1};
    if (ret == 0)
        ret = inc_refs(c, c->snaptab.off, c->snaptab.size);
    c->walk.loc = (struct loc){LOC_REFTABLE, -1, -1, -1};
    c->walk.rt_counted = q->rc->rt_entries &&
                         counted_region(c, h->refcount_table_offset,
                                        q->rc->rt_entries * 8);
    if (ret == 0)
        ret = inc_refs(c, h->refcount_table_offset, q->rc->rt_entries * 8);
    c->walk.loc = (struct loc){LOC_CRYPTO, -1, -1, -1};
    if (ret == 0 && h->has_crypto_ext)
        ret = inc_refs(c, h->crypto_offset, h->crypto_length);
    if (ret == 0)
        ret = check_bitmaps_refs(c);
    if (ret == 0)
        ret = check_refblocks(c);
    return ret;
}

/* Set up the fast paths' state for a walk (check.c, note 5). */
static int fast_init(struct chk *c, bool multi)
{
    struct chk_walk *w = &c->walk;
    uint64_t words = DIV_ROUND_UP(MAX(w->nb_refs, w->nb_clusters), 64);
    int ret = 0;

    u64map_free(&w->l2refs);
    free(w->done_at);
    w->done_at = NULL;
    w->done_size = 0;
    w->multi = false;
    if (multi && !c->find.quiet && !w->fix) {
        ret = count_l2_refs(c);
        w->multi = ret == 1;
    }
    if (w->multi) {
        uint32_t n = c->q->hdr.l1_size;
        for (uint32_t i = 0; i < c->snaptab.nb_snaps; i++)
            n = MAX(n, c->snaptab.snaps[i].l1_size);
        n = MIN(n, L2REF_RUNS_MAX);
        w->done_at = calloc(n ? n : 1, sizeof *w->done_at);
        w->done_size = w->done_at ? n : 0;
    }
    w->multi_used = w->overflowed = false;
    free(w->cop1);
    free(w->cop0);
    w->cop1 = calloc(words, sizeof *w->cop1);
    w->cop0 = calloc(words, sizeof *w->cop0);
    w->cop_ok = w->cop1 && w->cop0; /* (without them: the slow check) */
    w->cop_n = w->cop_ok ? words * 64 : 0;
    return ret < 0 ? ret : 0;
}

/* Walk everything that references clusters into c->walk.refs. */
static int calculate(struct chk *c)
{
    struct findings_mark mark;
    int ret;

    findings_save(c, &mark);
    c->walk.need_rebuild = false;
    ret = fast_init(c, true);
    if (ret < 0)
        return ret;
    ret = calculate_once(c);
    if (!c->walk.multi_used || !c->walk.overflowed)
        return ret;
    /* Counting shared tables at once moved the point where an overflow is
     * reported: walk again one reference at a time, as QEMU does. */
    findings_rollback(c, &mark);
    c->walk.need_rebuild = false;
    qimg_error_clear();
    ret = fast_init(c, false);
    return ret < 0 ? ret : calculate_once(c);
}

/* calculate(); with repair, the walk may repair what it meets (-r all, on
 * the first pass). */
int walk_calculate(struct chk *c, bool repair)
{
    int ret;

    c->walk.fix = repair;
    ret = calculate(c);
    c->walk.fix = false;
    return ret;
}

/* Subtract what the old refcount structures added to the computed table
 * (what the walk counted of them): after a rebuild they are no longer
 * referenced. */
void walk_drop_old_structures(struct chk *c)
{
    struct qcow2 *q = c->q;
    uint64_t first = q->hdr.refcount_table_offset >> q->cluster_bits;
    uint64_t last =
        (q->hdr.refcount_table_offset + q->rc->rt_entries * 8 - 1) >>
        q->cluster_bits;

    for (uint64_t k = first; c->walk.rt_counted && k <= last; k++)
        if (walk_ref_get(c, k))
            refblock_set(c->walk.refs, k, q->refcount_order,
                         walk_ref_get(c, k) - 1);
    for (uint64_t i = 0; i < q->rc->rt_entries; i++) {
        uint64_t e = chk_rt_raw(c, i),
                 k = (e & RT_OFFSET_MASK) >> q->cluster_bits;
        /* Only the blocks check_refblock() counted. */
        if (!(e & RT_OFFSET_MASK) || (e & ~RT_OFFSET_MASK) ||
            !IS_ALIGNED(e, q->cluster_size) ||
            !idset_has(&c->walk.rb_counted, k) || !walk_ref_get(c, k))
            continue;
        refblock_set(c->walk.refs, k, q->refcount_order,
                     walk_ref_get(c, k) - 1);
    }
}

void walk_free(struct chk *c)
{
    free(c->walk.refs);
    u64map_free(&c->walk.l2refs);
    free(c->walk.done_at);
    idset_free(&c->walk.rb_counted);
    free(c->walk.cop1);
    free(c->walk.cop0);
}
