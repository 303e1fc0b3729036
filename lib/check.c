/*
 * check.c - consistency check and repair of a qcow2 image.
 *
 * qcow2-format.md §4.1 (what must be counted), §4.2 (qemu-img check's
 * classification), §3.7 (COPIED), §5 (snapshot table). Verdicts, counts and
 * message lines follow qemu-img 7.2 so scripts see the same results; every
 * finding also names the structure that holds the reference involved.
 * Rebuilding refcount structures and rewriting the snapshot table are in
 * rebuild.c.
 *
 * Notes on the design:
 *  1. The image is walked into an in-memory table of reference counts
 *     (encoded like a refcount block, in the image's own width), which is
 *     then compared with the refcounts on disk.
 *  2. Pinpointing is a second, quiet walk made only when counts disagree:
 *     it records which slot (active or snapshot L1/L2 index, refcount table
 *     index, snapshot table, bitmap) references each disputed cluster.
 *  3. Repairs raise too-low refcounts and lower leaked ones in place (each
 *     direction is safe on its own), fix COPIED flags in place (only flags
 *     change), and replace broken refcount structures or the snapshot
 *     table with new copies switched in by one header write, so a power cut
 *     during repair leaves an image a second repair fixes. Two more repairs
 *     follow QEMU: an unaligned zero-allocated L2 entry becomes a plain zero
 *     entry (one entry-sized write; the guest reads zeros before and
 *     after), and a refcount block past the end of the file gets the file
 *     extended to cover it. Where QEMU's repair would write into a cluster
 *     that may hold guest data (entries of an L2 table read from an
 *     unaligned offset), qimg reports and leaves it.
 *  4. Messages are kept in the result until the check ends (the API has no
 *     callback), and at most PINPOINT_MAX disputed clusters are traced: a
 *     wrecked refcount structure on a large image disputes every cluster.
 *  5. Fast paths, with results identical to the walk above: an L2 table is
 *     first counted in a tight loop that gives up (undoing its counts) at
 *     the first entry that would need a message; a table shared by several
 *     L1 tables is counted once for all its references (if an overflow is
 *     then met, the walk starts again one reference at a time so messages
 *     come in QEMU's order); the comparison compares whole refcount blocks
 *     byte for byte; and when every refcount agrees, the COPIED check uses
 *     per-cluster bits the walk recorded instead of reading the active L2
 *     tables again.
 */
#include "check.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bitmap.h"
#include "endian.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "idset.h"
#include "l1l2.h"
#include "rebuild.h"
#include "refcount.h"
#include "snaptable.h"
#include "util.h"

/* Where a reference was found; formatted only when reported. */
enum loc_kind {
    LOC_NONE,
    LOC_HEADER,
    LOC_L1_TABLE,  /* an L1 table itself */
    LOC_L1_ENTRY,  /* L1 entry i (an L2 table) */
    LOC_L2_ENTRY,  /* L1 entry i, L2 entry j (data) */
    LOC_SNAP_TABLE,
    LOC_REFTABLE,
    LOC_REFTABLE_ENTRY, /* refcount table entry i (a refcount block) */
    LOC_BITMAP_DIR,
    LOC_BITMAP,
    LOC_CRYPTO,
};

struct loc {
    enum loc_kind kind;
    int snap; /* -1: active tree */
    int64_t i, j;
};

struct disputed {
    size_t msg;  /* index of the message it belongs to */
    uint64_t cluster;
};

struct chk {
    qimg_image *img;
    struct qcow2 *q;
    unsigned fix;
    struct qimg_check_result *res;
    uint64_t file_size, nb_clusters;
    uint8_t *refs;
    uint64_t nb_refs;
    bool rebuild, quiet;
    bool walk_fix; /* this walk may repair (first pass, -r all) */
    struct snap *snaps;
    uint32_t nb_snaps;
    uint64_t snap_off, snap_size;
    bool table_dirty; /* the snapshot table read needs rewriting */
    int64_t snap_corruptions; /* fixed by rewriting the snapshot table */
    struct loc loc;
    uint8_t *l2buf, *rbbuf;
    uint64_t rb_idx; /* refcount block in rbbuf (UINT64_MAX: none) */
    int rb_state;    /* disk_block() result for rb_idx */
    bool rb_unreadable; /* ... -EIO from a failed read, not a bad offset */
    bool signaled;   /* the corruption notice was printed */
    int64_t rc_errors; /* check errors from unusable refcount blocks */
    /* pinpointing */
    struct idset traced;
    struct u64map where; /* cluster -> index into wheres */
    char **wheres;
    size_t nb_wheres;
    struct disputed *disp;
    size_t nb_disp, disp_cap;
    size_t msg_cap; /* allocated entries of res->msgs */
    /* fast paths (note 5) */
    bool multi;         /* shared L2 tables are counted once, m times */
    bool multi_used;    /* ... and some were, in this walk */
    bool overflowed;    /* an overflow was reported in this walk */
    struct u64map l2refs; /* L2 offset -> references (total << 32 | active) */
    uint64_t *cop1, *cop0; /* clusters with active entries with/without
                            * COPIED */
    uint64_t cop_n;        /* clusters cop1 and cop0 cover */
    bool cop_ok;        /* cop1/cop0 describe every active entry */
    bool disk_equal;    /* the last comparison found nothing to report */
};

/* u64map values for L2 tables whose first walk is behind us. */
#define L2_DONE UINT64_MAX /* counted for every reference at once */
#define L2_SLOW (UINT64_MAX - 1) /* walked entry by entry at each */

/* Referrers are named for this many disputed clusters at most: the
 * pinpointing walk keeps a set and a string per cluster, and a wrecked
 * refcount structure on a large image disputes every cluster. */
#define PINPOINT_MAX 65536

/* ---- Findings ------------------------------------------------------------ */

static void loc_format(const struct chk *c, const struct loc *l, char *buf,
                       size_t n)
{
    char tree[300];

    if (l->snap < 0)
        snprintf(tree, sizeof tree, "active L1");
    else
        snprintf(tree, sizeof tree, "snapshot %.40s (%.200s) L1",
                 c->snaps[l->snap].id, c->snaps[l->snap].name);
    switch (l->kind) {
    case LOC_HEADER:
        snprintf(buf, n, "image header");
        break;
    case LOC_L1_TABLE:
        snprintf(buf, n, "%s table", tree);
        break;
    case LOC_L1_ENTRY:
        snprintf(buf, n, "%s index %" PRId64, tree, l->i);
        break;
    case LOC_L2_ENTRY:
        snprintf(buf, n, "%s index %" PRId64 ", L2 index %" PRId64, tree, l->i,
                 l->j);
        break;
    case LOC_SNAP_TABLE:
        snprintf(buf, n, "snapshot table");
        break;
    case LOC_REFTABLE:
        snprintf(buf, n, "refcount table");
        break;
    case LOC_REFTABLE_ENTRY:
        snprintf(buf, n, "refcount table index %" PRId64, l->i);
        break;
    case LOC_BITMAP_DIR:
        snprintf(buf, n, "bitmap directory");
        break;
    case LOC_BITMAP:
        snprintf(buf, n, "bitmap %" PRId64 " table%s", l->i,
                 l->j >= 0 ? " entry" : "");
        break;
    case LOC_CRYPTO:
        snprintf(buf, n, "encryption header");
        break;
    default:
        buf[0] = '\0';
    }
}

static int add_msg(struct chk *c, const char *kind, bool is_error,
                   bool with_loc, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));

static int add_msg(struct chk *c, const char *kind, bool is_error,
                   bool with_loc, const char *fmt, ...)
{
    struct qimg_check_result *r = c->res;
    struct qimg_check_msg *m;
    char buf[1024], where[512] = "";
    va_list ap;

    if (c->quiet)
        return 0;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (with_loc)
        loc_format(c, &c->loc, where, sizeof where);
    if (r->nb_msgs == c->msg_cap) {
        size_t cap = MAX(c->msg_cap * 2, 16);
        m = realloc(r->msgs, cap * sizeof *m);
        if (!m)
            return qimg_err(ENOMEM, "Out of memory");
        r->msgs = m;
        c->msg_cap = cap;
    }
    m = &r->msgs[r->nb_msgs];
    memset(m, 0, sizeof *m);
    m->text = strdup(buf);
    m->kind = (char *)kind; /* a literal: never freed */
    m->is_error = is_error;
    if (where[0])
        m->where = strdup(where);
    if (!m->text || (where[0] && !m->where)) {
        free(m->text);
        free(m->where);
        return qimg_err(ENOMEM, "Out of memory");
    }
    r->nb_msgs++;
    return 0;
}

/* Remember that the last message is about `cluster`, to name its
 * referrers once the pinpointing walk has run. */
static int dispute(struct chk *c, uint64_t cluster)
{
    struct disputed *d;

    if (c->quiet || c->nb_disp >= PINPOINT_MAX)
        return 0;
    if (c->nb_disp == c->disp_cap) {
        size_t cap = MAX(c->disp_cap * 2, 16);
        d = realloc(c->disp, cap * sizeof *d);
        if (!d)
            return qimg_err(ENOMEM, "Out of memory");
        c->disp = d;
        c->disp_cap = cap;
    }
    d = &c->disp[c->nb_disp++];
    d->msg = c->res->nb_msgs - 1;
    d->cluster = cluster;
    if (idset_add(&c->traced, cluster) < 0)
        return qimg_err(ENOMEM, "Out of memory");
    return 0;
}

/* Pinpointing walk: append the current location to a disputed cluster. */
static int note_referrer(struct chk *c, uint64_t k)
{
    char where[512];
    uint64_t idx;
    char *s;

    loc_format(c, &c->loc, where, sizeof where);
    if (!u64map_get(&c->where, k, &idx)) {
        char **w = realloc(c->wheres, (c->nb_wheres + 1) * sizeof *w);
        if (!w)
            return qimg_err(ENOMEM, "Out of memory");
        c->wheres = w;
        idx = c->nb_wheres++;
        w[idx] = NULL;
        if (u64map_put(&c->where, k, idx) < 0)
            return qimg_err(ENOMEM, "Out of memory");
    }
    s = c->wheres[idx];
    if (s && strlen(s) > 600)
        return 0; /* enough referrers named */
    if (asprintf(&c->wheres[idx], "%s%s%s", s ? s : "referenced by ",
                 s ? "; " : "", where) < 0) {
        c->wheres[idx] = s;
        return qimg_err(ENOMEM, "Out of memory");
    }
    free(s);
    return 0;
}

/* ---- The in-memory reference table --------------------------------------- */

static uint64_t ref_get(const struct chk *c, uint64_t idx)
{
    if (idx >= c->nb_refs)
        return 0;
    return refblock_get(c->refs, idx, c->q->refcount_order);
}

static int ref_grow(struct chk *c, uint64_t n)
{
    unsigned order = c->q->refcount_order;
    uint64_t old_bytes = ALIGN_UP(DIV_ROUND_UP(c->nb_refs << order, 8), 8);
    uint64_t new_bytes = ALIGN_UP(DIV_ROUND_UP(n << order, 8), 8);
    uint8_t *p;

    if (n <= c->nb_refs)
        return 0;
    if (new_bytes > old_bytes) {
        p = realloc(c->refs, new_bytes);
        if (!p) {
            c->res->check_errors++;
            return qimg_err(ENOMEM, "Out of memory");
        }
        memset(p + old_bytes, 0, new_bytes - old_bytes);
        c->refs = p;
    }
    c->nb_refs = n;
    return 0;
}

/* Count one reference to every cluster [off, off+len) touches. */
static int inc_refs(struct chk *c, uint64_t off, uint64_t len)
{
    struct qcow2 *q = c->q;
    int ret;

    if (len == 0)
        return 0;
    if (off + len > c->file_size &&
        off + len - c->file_size >= q->cluster_size) {
        if (!c->quiet)
            c->res->corruptions++;
        return add_msg(c, "beyond-eof", true, true,
                       "ERROR: counting reference for region exceeding the "
                       "end of the file by one cluster or more: offset "
                       "0x%" PRIx64 " size 0x%" PRIx64,
                       off, len);
    }
    for (uint64_t k = off >> q->cluster_bits;
         k <= (off + len - 1) >> q->cluster_bits; k++) {
        uint64_t v;
        if (k >= c->nb_refs && (ret = ref_grow(c, k + 1)) < 0)
            return ret;
        if (c->quiet && idset_has(&c->traced, k) &&
            (ret = note_referrer(c, k)) < 0)
            return ret;
        v = ref_get(c, k);
        if (v == q->refcount_max) {
            c->overflowed = true;
            if (!c->quiet)
                c->res->corruptions++;
            ret = add_msg(c, "overflow", true, true,
                          "ERROR: overflow cluster offset=0x%" PRIx64,
                          k << q->cluster_bits);
            if (ret == 0)
                ret = add_msg(c, "overflow", false, false,
                              "Use qemu-img amend to increase the refcount "
                              "entry width or qemu-img convert to create a "
                              "clean copy if the image cannot be opened for "
                              "writing");
            if (ret < 0)
                return ret;
            continue;
        }
        refblock_set(c->refs, k, q->refcount_order, v + 1);
    }
    return 0;
}

static void corruption(struct chk *c)
{
    if (!c->quiet)
        c->res->corruptions++;
}

/* ---- Walking the trees ---------------------------------------------------- */

static int check_compressed(struct chk *c, uint64_t e, uint64_t bm, int64_t j,
                            bool frag)
{
    struct qcow2 *q = c->q;
    uint64_t coff, clen;
    int ret = 0;

    if (e & QCOW_OFLAG_COPIED) {
        corruption(c);
        ret = add_msg(c, "copied", true, true,
                      "ERROR: coffset=0x%" PRIx64 ": copied flag must never "
                      "be set for compressed clusters",
                      e & q->coff_mask);
        e &= ~QCOW_OFLAG_COPIED;
    }
    if (ret == 0 && bm) {
        corruption(c);
        return add_msg(c, "l2-entry", true, true,
                       "ERROR compressed cluster %" PRId64 " with non-zero "
                       "subcluster allocation bitmap, entry=0x%" PRIx64,
                       j, e);
    }
    l2_compressed_range(q, e, &coff, &clen);
    if (ret == 0)
        ret = inc_refs(c, coff, clen);
    if (frag && !c->quiet) {
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
        return add_msg(c, "io", true, false,
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
    bool fix = c->walk_fix && !has_data && IS_ALIGNED(l2_off, q->cluster_size);
    int ret;

    corruption(c);
    if (has_data)
        return add_msg(c, "l2-entry", true, true,
                       "ERROR offset=%" PRIx64 ": Data cluster is not "
                       "properly aligned; L2 entry corrupted.",
                       off);
    ret = add_msg(c, "l2-entry", true, true,
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
        ret = add_msg(c, "l2-entry", true, true,
                      "ERROR offset=%" PRIx64 ": Allocated cluster has "
                      "corrupted subcluster allocation bitmap",
                      off);
    }
    if (ret == 0 && !IS_ALIGNED(off, q->cluster_size)) {
        ret = check_unaligned(c, e, bm, l2_off, j);
        if (ret)
            return ret < 0 ? ret : 0;
    }
    if (frag && !c->quiet) {
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
            refblock_set(c->refs, k, q->refcount_order,
                         refblock_get(c->refs, k, q->refcount_order) - m);
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
    uint8_t *refs = c->refs;
    uint64_t *cop1 = c->cop1, *cop0 = c->cop0;
    uint64_t file_size = c->file_size, nb_refs = c->nb_refs;
    uint64_t cop_n = ma ? c->cop_n : 0;
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
    c->cop_ok &= cop_ok;
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
        ret = add_msg(c, "io", true, false,
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
        c->cop_ok = false;
    for (uint64_t j = 0; j < q->l2_entries && ret == 0; j++) {
        uint64_t e = l2_entry_get(q, c->l2buf, j);
        uint64_t bm = l2_bitmap_get(q, c->l2buf, j);
        enum cl_type t = l2_cluster_type(q, e);

        c->loc.kind = LOC_L2_ENTRY;
        c->loc.j = (int64_t)j;
        /* As QEMU, bit 0 is not checked with extended L2 entries. */
        if (t != CL_COMPRESSED && (e & L2E_RESERVED_MASK)) {
            corruption(c);
            ret = add_msg(c, "l2-entry", true, true,
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
            ret = add_msg(c, "l2-entry", true, true,
                          "ERROR: Unallocated cluster has non-zero subcluster "
                          "allocation map");
        }
    }
    return ret;
}

/* Count the clusters an L2 table references, for one reference to it:
 * with c->multi, a clean table is counted for all its references at its
 * first one and skipped at the others. */
static int walk_l2(struct chk *c, uint64_t l2_off, bool frag)
{
    uint64_t v = 0;
    int ret;

    if (c->multi && u64map_get(&c->l2refs, l2_off, &v) && v == L2_DONE)
        return 0;
    ret = read_l2(c, l2_off);
    if (ret < 0)
        return ret;
    if (c->multi && v && v != L2_SLOW) {
        uint64_t m = v >> 32, ma = v & 0xffffffffu;
        bool done = fast_l2(c, m, ma);
        if (u64map_put(&c->l2refs, l2_off, done ? L2_DONE : L2_SLOW) < 0)
            return qimg_err(ENOMEM, "Out of memory");
        c->multi_used |= done && m > 1;
        if (done)
            return 0;
    } else if (!c->multi && !c->quiet && fast_l2(c, 1, frag)) {
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
        ret = add_msg(c, "io", true, false,
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

    c->loc = (struct loc){LOC_L1_TABLE, snap, -1, -1};
    ret = inc_refs(c, l1_off, bytes);
    if (ret < 0 || !l1_size)
        return ret;
    ret = read_l1_for_check(c, l1_off, l1_size, &l1);
    if (ret < 0)
        return ret;
    for (uint32_t i = 0; i < l1_size && ret == 0; i++) {
        uint64_t e = l1_entry_get(l1, i), l2_off = e & L1E_OFFSET_MASK;
        if (!e)
            continue;
        c->loc = (struct loc){LOC_L1_ENTRY, snap, i, -1};
        if (e & L1E_RESERVED_MASK) {
            corruption(c);
            ret = add_msg(c, "l1-entry", true, true,
                          "ERROR found L1 entry with reserved bits set: "
                          "%" PRIx64,
                          e);
        }
        if (ret == 0)
            ret = inc_refs(c, l2_off, q->cluster_size);
        if (ret == 0 && !IS_ALIGNED(l2_off, q->cluster_size)) {
            corruption(c);
            ret = add_msg(c, "l1-entry", true, true,
                          "ERROR l2_offset=%" PRIx64 ": Table is not cluster "
                          "aligned; L1 entry corrupted",
                          l2_off);
        }
        if (ret == 0)
            ret = walk_l2(c, l2_off, frag);
    }
    free(l1);
    return ret;
}

static int check_snapshots_refs(struct chk *c)
{
    int ret = 0;

    for (uint32_t i = 0; i < c->nb_snaps && ret == 0; i++) {
        const struct snap *s = &c->snaps[i];
        c->loc = (struct loc){LOC_NONE, (int)i, -1, -1};
        if (!IS_ALIGNED(s->l1_off, c->q->cluster_size)) {
            corruption(c);
            ret = add_msg(c, "snapshot", true, false,
                          "ERROR snapshot %s (%s) l1_offset=%#" PRIx64
                          ": L1 table is not cluster aligned; snapshot table "
                          "entry corrupted",
                          s->id, s->name, s->l1_off);
            continue;
        }
        if ((uint64_t)s->l1_size > QCOW_MAX_L1_SIZE / 8) {
            corruption(c);
            ret = add_msg(c, "snapshot", true, false,
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

/* ---- Bitmaps --------------------------------------------------------------- */

static int check_bitmaps_refs(struct chk *c)
{
    const struct qcow2_header *h = &c->q->hdr;
    struct bitmap_entry *b = NULL;
    size_t n = 0;
    int ret;

    if (!h->has_bitmaps_ext || !(h->autoclear & AUTOCLEAR_BITMAPS))
        return 0;
    c->loc = (struct loc){LOC_BITMAP_DIR, -1, -1, -1};
    ret = inc_refs(c, h->bitmap_dir_offset, h->bitmap_dir_size);
    if (ret == 0 && bitmap_dir_load(c->img, &b, &n) < 0) {
        qimg_error_clear();
        return 0; /* an unreadable directory is counted, not followed */
    }
    for (size_t i = 0; i < n && ret == 0; i++) {
        uint64_t bytes = (uint64_t)b[i].table_size * 8;
        uint8_t *t;
        c->loc = (struct loc){LOC_BITMAP, -1, (int64_t)i, -1};
        ret = inc_refs(c, b[i].table_off, bytes);
        if (ret < 0 || !bytes || b[i].table_off + bytes > c->file_size)
            continue;
        t = malloc(bytes);
        if (!t) {
            ret = qimg_err(ENOMEM, "Out of memory");
            break;
        }
        ret = file_pread(c->img, t, bytes, b[i].table_off);
        c->loc.j = 0;
        for (uint32_t k = 0; k < b[i].table_size && ret == 0; k++) {
            uint64_t off = be64_load(t + k * 8) & L2E_OFFSET_MASK;
            if (off)
                ret = inc_refs(c, off, c->q->cluster_size);
        }
        free(t);
    }
    bitmap_dir_free(b, n);
    return ret;
}

/* ---- Refcount structures --------------------------------------------------- */

static uint64_t rt_raw(const struct chk *c, uint64_t i)
{
    return be64_load(c->q->rc->rt + i * 8);
}

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
        c->rebuild = true;
        return add_msg(c, "reftable", true, false,
                       "ERROR could not resize image: %s", strerror(-ret));
    }
    c->file_size = MAX(c->file_size, end);
    file_extend(c->img, end);
    c->nb_clusters = DIV_ROUND_UP(c->file_size, q->cluster_size);
    ret = ref_grow(c, c->nb_clusters);
    if (ret < 0)
        return ret;
    c->res->corruptions--;
    c->res->corruptions_fixed++;
    return inc_refs(c, off, q->cluster_size);
}

static int check_refblock(struct chk *c, uint64_t i)
{
    struct qcow2 *q = c->q;
    uint64_t e = rt_raw(c, i), off = e & RT_OFFSET_MASK;
    uint64_t cl = off >> q->cluster_bits;
    bool fix = c->walk_fix;
    int ret;

    c->loc = (struct loc){LOC_REFTABLE_ENTRY, -1, (int64_t)i, -1};
    if (e & ~RT_OFFSET_MASK) {
        corruption(c);
        c->rebuild = true;
        return add_msg(c, "reftable", true, true,
                       "ERROR refcount table entry %" PRIu64
                       " has reserved bits set",
                       i);
    }
    if (!IS_ALIGNED(off, q->cluster_size)) {
        corruption(c);
        c->rebuild = true;
        return add_msg(c, "reftable", true, true,
                       "ERROR refcount block %" PRIu64 " is not cluster "
                       "aligned; refcount table entry corrupted",
                       i);
    }
    if (cl >= c->nb_refs) {
        corruption(c);
        ret = add_msg(c, "reftable", true, true,
                      "%s refcount block %" PRIu64 " is outside image",
                      fix ? "Repairing" : "ERROR", i);
        return ret < 0 || !fix ? ret : grow_for_refblock(c, off);
    }
    if (!off)
        return 0;
    ret = inc_refs(c, off, q->cluster_size);
    if (ret == 0 && ref_get(c, cl) != 1) {
        corruption(c);
        c->rebuild = true;
        ret = add_msg(c, "reftable", true, true,
                      "ERROR refcount block %" PRIu64 " refcount=%" PRIu64, i,
                      ref_get(c, cl));
        if (ret == 0)
            ret = dispute(c, cl);
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

/* Add the references of one L1 table to c->l2refs. 1: counted; 0:
 * counts grow absurd (the shortcut is not taken); < 0: an error. */
static int count_l1_refs(struct chk *c, uint64_t l1_off, uint32_t l1_size,
                         bool active)
{
    uint64_t v;
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
        if (!u64map_get(&c->l2refs, l2_off, &v))
            v = 0;
        v += (1ull << 32) + active;
        if (v >> 63 || (v & 0xffffffffu) >= 0x80000000u)
            ret = 0;
        else if (u64map_put(&c->l2refs, l2_off, v) < 0)
            ret = -ENOMEM;
    }
    free(l1);
    if (ret == -ENOMEM)
        c->res->check_errors++;
    return ret;
}

/* How many references each L2 table has, from the L1 tables calculate()
 * walks (snapshots it refuses are skipped by both). 1: counted; 0: not
 * usable; < 0: an error. */
static int count_l2_refs(struct chk *c)
{
    const struct qcow2_header *h = &c->q->hdr;
    int ret = count_l1_refs(c, h->l1_table_offset, h->l1_size, true);

    for (uint32_t i = 0; ret == 1 && i < c->nb_snaps; i++) {
        const struct snap *s = &c->snaps[i];
        if (IS_ALIGNED(s->l1_off, c->q->cluster_size) &&
            (uint64_t)s->l1_size <= QCOW_MAX_L1_SIZE / 8)
            ret = count_l1_refs(c, s->l1_off, s->l1_size, false);
    }
    return ret;
}

static int calculate_once(struct chk *c)
{
    struct qcow2 *q = c->q;
    const struct qcow2_header *h = &q->hdr;
    int ret;

    if (c->refs)
        memset(c->refs, 0,
               ALIGN_UP(DIV_ROUND_UP(c->nb_refs << q->refcount_order, 8), 8));
    ret = ref_grow(c, MAX(c->nb_clusters, 1));
    if (ret < 0)
        return ret;
    c->loc = (struct loc){LOC_HEADER, -1, -1, -1};
    ret = inc_refs(c, 0, q->cluster_size);
    if (ret == 0)
        ret = check_l1(c, -1, h->l1_table_offset, h->l1_size, true);
    if (ret == 0)
        ret = check_snapshots_refs(c);
    c->loc = (struct loc){LOC_SNAP_TABLE, -1, -1, -1};
    if (ret == 0)
        ret = inc_refs(c, c->snap_off, c->snap_size);
    c->loc = (struct loc){LOC_REFTABLE, -1, -1, -1};
    if (ret == 0)
        ret = inc_refs(c, h->refcount_table_offset, q->rc->rt_entries * 8);
    c->loc = (struct loc){LOC_CRYPTO, -1, -1, -1};
    if (ret == 0 && h->has_crypto_ext)
        ret = inc_refs(c, h->crypto_offset, h->crypto_length);
    if (ret == 0)
        ret = check_bitmaps_refs(c);
    if (ret == 0)
        ret = check_refblocks(c);
    return ret;
}

/* Set up the fast paths' state for a walk (note 5). */
static int fast_init(struct chk *c, bool multi)
{
    uint64_t words = DIV_ROUND_UP(MAX(c->nb_refs, c->nb_clusters), 64);
    int ret = 0;

    u64map_free(&c->l2refs);
    c->multi = false;
    if (multi && !c->quiet && !c->walk_fix) {
        ret = count_l2_refs(c);
        c->multi = ret == 1;
    }
    c->multi_used = c->overflowed = false;
    free(c->cop1);
    free(c->cop0);
    c->cop1 = calloc(words, sizeof *c->cop1);
    c->cop0 = calloc(words, sizeof *c->cop0);
    c->cop_ok = c->cop1 && c->cop0; /* (without them: the slow check) */
    c->cop_n = c->cop_ok ? words * 64 : 0;
    return ret < 0 ? ret : 0;
}

/* Walk everything that references clusters into c->refs. */
static int calculate(struct chk *c)
{
    struct qimg_check_result saved = *c->res;
    size_t nb_disp = c->nb_disp;
    bool rebuild = c->rebuild;
    int ret;

    ret = fast_init(c, true);
    if (ret < 0)
        return ret;
    ret = calculate_once(c);
    if (!c->multi_used || !c->overflowed)
        return ret;
    /* Counting shared tables at once moved the point where an overflow is
     * reported: walk again one reference at a time, as QEMU does. */
    for (size_t i = saved.nb_msgs; i < c->res->nb_msgs; i++) {
        free(c->res->msgs[i].text);
        free(c->res->msgs[i].where);
    }
    saved.msgs = c->res->msgs;
    *c->res = saved;
    c->nb_disp = nb_disp;
    c->rebuild = rebuild;
    qimg_error_clear();
    ret = fast_init(c, false);
    return ret < 0 ? ret : calculate_once(c);
}

/* QEMU's notice when it meets an unusable refcount block; printed once.
 * On a writable image QEMU also sets the corrupt bit (so does qimg; a
 * successful repair clears it again). */
static void signal_corruption(struct chk *c, uint64_t off, uint64_t rt_idx)
{
    bool fatal = c->img->read_write;

    if (c->signaled || c->quiet)
        return;
    c->signaled = true;
    add_msg(c, "corrupt", true, false,
            "qcow2: %s: Refblock offset %#" PRIx64 " unaligned (reftable "
            "index: %#" PRIx64 "); further %scorruption events will be "
            "suppressed",
            fatal ? "Marking image as corrupt" : "Image is corrupt", off,
            rt_idx, fatal ? "" : "non-fatal ");
    if (fatal && rebuild_set_incompat(c->img, c->q->hdr.incompatible |
                                                  INCOMPAT_CORRUPT) < 0)
        qimg_error_clear();
}

/* Load on-disk refcount block rt_idx into c->rbbuf (kept until
 * c->rb_idx is reset): 1 if there is one, 0 if none (all zero; so is
 * a block past the end of the file), -EIO if its offset is unusable. */
static int disk_block(struct chk *c, uint64_t rt_idx)
{
    struct qcow2 *q = c->q;
    uint64_t off = rt_idx < q->rc->rt_entries ? rt_raw(c, rt_idx) & RT_OFFSET_MASK
                                          : 0;

    if (rt_idx == c->rb_idx)
        return c->rb_state;
    c->rb_idx = rt_idx;
    c->rb_unreadable = false;
    if (!off) {
        memset(c->rbbuf, 0, q->cluster_size);
        return c->rb_state = 0;
    }
    if (!IS_ALIGNED(off, q->cluster_size)) {
        signal_corruption(c, off, rt_idx);
        return c->rb_state = -EIO;
    }
    c->rb_state = file_pread(c->img, c->rbbuf, q->cluster_size, off) < 0
                      ? -EIO
                      : 1;
    if (c->rb_state < 0) {
        qimg_error_clear();
        c->rb_unreadable = true;
    }
    return c->rb_state;
}

/* The on-disk refcount of cluster k, read as QEMU reads it. */
static int disk_refcount(struct chk *c, uint64_t k, uint64_t *rc)
{
    struct qcow2 *q = c->q;

    if (disk_block(c, k >> q->rb_bits) < 0)
        return -EIO;
    *rc = refblock_get(c->rbbuf, k & ((1ull << q->rb_bits) - 1),
                       q->refcount_order);
    return 0;
}

/* For the COPIED checks: 0 with the refcount, 1 to skip the entry. QEMU
 * skips silently when it cannot get a refcount (an unusable block); a
 * failed read is reported here, as a check error. */
static int copied_refcount(struct chk *c, uint64_t k, uint64_t *rc)
{
    if (disk_refcount(c, k, rc) == 0)
        return 0;
    if (!c->rb_unreadable)
        return 1;
    c->res->check_errors++;
    return add_msg(c, "io", true, false,
                   "Can't get refcount for cluster %" PRIu64 ": %s", k,
                   "Input/output error") < 0 ? -ENOMEM : 1;
}

/* Set the on-disk refcount of cluster i from r1 to r2 (r1 > 0). */
static int repair_refcount(struct chk *c, uint64_t i, uint64_t r1, uint64_t r2)
{
    int ret = refcount_update(c->img, i, 1, (int64_t)(r2 - r1));

    if (ret == 0 && r2 == 0)
        ret = file_discard(c->img, i << c->q->cluster_bits,
                                 c->q->cluster_size);
    if (ret == 0)
        ret = refcount_flush(c->img);
    if (ret < 0) {
        /* Counted as not repaired (as QEMU), and as an error: I/O. */
        c->res->check_errors++;
        ret = add_msg(c, "io", true, false,
                      "ERROR could not repair cluster %" PRIu64 ": %s", i,
                      qimg_last_error()->message);
        return ret < 0 ? ret : 1;
    }
    return 0;
}

/* Cluster i has refcount r1 on disk but r2 references: report it, and
 * with fix, correct it (a refcount of 0 asks for a rebuild instead). */
static int mismatch(struct chk *c, uint64_t i, uint64_t r1, uint64_t r2,
                    unsigned fix)
{
    int64_t *fixed = NULL;
    int ret;

    if (r1 == 0)
        c->rebuild = true;
    else if (r1 > r2 && (fix & QIMG_CHECK_FIX_LEAKS))
        fixed = &c->res->leaks_fixed;
    else if (r1 < r2 && (fix & QIMG_CHECK_FIX_ERRORS))
        fixed = &c->res->corruptions_fixed;
    ret = add_msg(c, r1 < r2 ? "refcount" : "leak", r1 < r2, false,
                  "%s cluster %" PRIu64 " refcount=%" PRIu64
                  " reference=%" PRIu64,
                  fixed ? "Repairing" : r1 < r2 ? "ERROR" : "Leaked", i, r1,
                  r2);
    if (ret == 0)
        ret = dispute(c, i);
    if (ret == 0 && fixed)
        ret = repair_refcount(c, i, r1, r2);
    if (ret < 0)
        return ret;
    if (fixed && ret == 0)
        (*fixed)++;
    else if (r1 < r2)
        c->res->corruptions++;
    else
        c->res->leaks++;
    return 0;
}

/* The highest cluster in [start, end) with a computed reference, or
 * UINT64_MAX; whole bytes of the table are scanned from the end. */
static uint64_t last_referenced(const struct chk *c, uint64_t start,
                                uint64_t end)
{
    unsigned order = c->q->refcount_order;
    uint64_t b = (end << order) / 8, b0 = (start << order) / 8;

    for (uint64_t i = end; i > start && (i << order) % 8; i--)
        if (ref_get(c, i - 1))
            return i - 1;
    while (b > b0 && !c->refs[b - 1])
        b--;
    for (uint64_t i = MIN(end, (b * 8) >> order); i > start; i--)
        if (ref_get(c, i - 1))
            return i - 1;
    return UINT64_MAX;
}

/* Clusters [start, end) of refcount block rt_idx: true if the computed
 * counts equal the block's, byte for byte (then there is nothing to
 * report and *highest is updated). */
static bool block_equal(struct chk *c, uint64_t rt_idx, uint64_t start,
                        uint64_t end, uint64_t *highest)
{
    unsigned order = c->q->refcount_order;
    uint64_t first = (start << order) / 8, n = ((end - start) << order) / 8;
    uint64_t last;

    if (disk_block(c, rt_idx) < 0 ||
        memcmp(c->refs + first, c->rbbuf, n))
        return false;
    for (uint64_t i = start + ((n * 8) >> order); i < end; i++) {
        uint64_t r1 = refblock_get(c->rbbuf, i - start, order);
        if (r1 != ref_get(c, i))
            return false;
    }
    last = last_referenced(c, start, end);
    if (last != UINT64_MAX)
        *highest = last;
    return true;
}

/* Compare computed and on-disk refcounts; with fix, correct them. */
static int compare(struct chk *c, unsigned fix, uint64_t *highest)
{
    uint64_t per_block = 1ull << c->q->rb_bits;
    int64_t before = c->res->corruptions + c->res->leaks +
                     c->res->check_errors;
    size_t msgs = c->res->nb_msgs;
    int ret = 0;

    *highest = 0;
    c->rb_idx = UINT64_MAX;
    /* As QEMU: references up to a cluster past the end of the file grew
     * the table, and are compared too. */
    for (uint64_t i = 0; i < c->nb_refs && ret == 0; i++) {
        uint64_t r1, r2;

        if (i % per_block == 0) {
            uint64_t end = MIN(i + per_block, c->nb_refs);
            if (block_equal(c, i >> c->q->rb_bits, i, end, highest)) {
                i = end - 1;
                continue;
            }
        }
        r2 = ref_get(c, i);

        if (disk_refcount(c, i, &r1) < 0) {
            c->res->check_errors++;
            c->rc_errors += !c->rb_unreadable;
            ret = add_msg(c, "io", true, false,
                          "Can't get refcount for cluster %" PRIu64 ": %s", i,
                          "Input/output error");
            continue;
        }
        if (r1 || r2)
            *highest = i;
        if (r1 != r2)
            ret = mismatch(c, i, r1, r2, fix);
    }
    c->disk_equal = ret == 0 && c->res->nb_msgs == msgs &&
                    c->res->corruptions + c->res->leaks +
                            c->res->check_errors == before;
    return ret;
}

/* ---- COPIED flags of the active tables --------------------------------- */

static int copied_l2(struct chk *c, uint32_t i, uint64_t l2_off, bool repair)
{
    struct qcow2 *q = c->q;
    int dirty = 0, ret;

    ret = file_pread(c->img, c->l2buf, q->cluster_size, l2_off);
    if (ret < 0) {
        c->res->check_errors++;
        return add_msg(c, "io", true, false,
                       "ERROR: Could not read L2 table: %s",
                       "Input/output error") < 0 ? -ENOMEM : -EIO;
    }
    for (uint64_t j = 0; j < q->l2_entries; j++) {
        uint64_t e = l2_entry_get(q, c->l2buf, j), rc;
        enum cl_type t = l2_cluster_type(q, e);
        if (t != CL_NORMAL && t != CL_ZERO_ALLOC)
            continue;
        ret = copied_refcount(c, (e & L2E_OFFSET_MASK) >> q->cluster_bits,
                              &rc);
        if (ret < 0)
            return ret;
        if (ret)
            continue;
        if ((rc == 1) == !!(e & QCOW_OFLAG_COPIED))
            continue;
        c->res->corruptions++;
        c->loc = (struct loc){LOC_L2_ENTRY, -1, i, (int64_t)j};
        ret = add_msg(c, "copied", true, true,
                      "%s OFLAG_COPIED data cluster: l2_entry=%" PRIx64
                      " refcount=%" PRIu64,
                      repair ? "Repairing" : "ERROR", e, rc);
        if (ret < 0)
            return ret;
        if (repair) {
            e = rc == 1 ? e | QCOW_OFLAG_COPIED : e & ~QCOW_OFLAG_COPIED;
            l2_entry_set(q, c->l2buf, j, e, l2_bitmap_get(q, c->l2buf, j));
            dirty++;
        }
    }
    if (!dirty)
        return 0;
    ret = file_pwrite(c->img, c->l2buf, q->cluster_size, l2_off);
    if (ret == 0)
        ret = file_flush(c->img);
    if (ret < 0) {
        c->res->check_errors++;
        add_msg(c, "io", true, false, "ERROR: Could not write L2 table: %s",
                strerror(-ret));
        return ret;
    }
    /* The cache may hold the old table. */
    l2_cache_forget(c->img, l2_off);
    c->res->corruptions -= dirty;
    c->res->corruptions_fixed += dirty;
    return 0;
}

/* With the on-disk refcounts equal to the computed ones and every active
 * entry recorded in cop1/cop0 by the walk: true if no active data cluster
 * needs a COPIED message (COPIED exactly where the refcount is 1). */
#define BE16_ONE_2 0, 1
#define BE16_ONE_8 BE16_ONE_2, BE16_ONE_2, BE16_ONE_2, BE16_ONE_2
#define BE16_ONE_32 BE16_ONE_8, BE16_ONE_8, BE16_ONE_8, BE16_ONE_8
/* 64 big-endian 16-bit counts of 1. */
static const uint8_t be16_ones[128] = {BE16_ONE_32, BE16_ONE_32, BE16_ONE_32,
                                       BE16_ONE_32};

static bool copied_flags_agree(const struct chk *c)
{
    bool wide = c->q->refcount_order == 4;

    for (uint64_t w = 0; w < c->cop_n / 64; w++) {
        uint64_t m1 = c->cop1[w], m0 = c->cop0[w];
        if (wide && m1 == UINT64_MAX && !m0 && (w + 1) * 64 <= c->nb_refs) {
            /* 64 COPIED clusters (the usual word): all counts are 1. */
            if (memcmp(c->refs + w * 128, be16_ones, sizeof be16_ones))
                return false;
            continue;
        }
        if (wide && (m1 | m0) && (w + 1) * 64 <= c->nb_refs) {
            /* 16-bit counts (the default): all 64, without branches. */
            const uint8_t *p = c->refs + w * 128;
            uint64_t bad = 0;
            for (unsigned b = 0; b < 64; b++) {
                uint64_t one = be16_load(p + 2 * b) == 1;
                bad |= ((m1 >> b) & 1 & (one ^ 1)) | ((m0 >> b) & 1 & one);
            }
            if (bad)
                return false;
            continue;
        }
        while (m1 | m0) {
            unsigned b = (unsigned)ctz64(m1 | m0);
            uint64_t bit = 1ull << b, rc = ref_get(c, w * 64 + b);
            if (((m1 & bit) && rc != 1) || ((m0 & bit) && rc == 1))
                return false;
            m1 &= ~bit;
            m0 &= ~bit;
        }
    }
    return true;
}

static int check_copied(struct chk *c)
{
    struct qcow2 *q = c->q;
    bool repair, fast;
    int ret = 0;

    c->rb_idx = UINT64_MAX; /* refcounts may have been repaired */
    fast = c->disk_equal && c->cop_ok && copied_flags_agree(c);
    if (c->fix & QIMG_CHECK_FIX_ERRORS)
        repair = true;
    else if (c->fix & QIMG_CHECK_FIX_LEAKS)
        /* QEMU keeps the snapshot table's findings apart here. */
        repair = !c->res->check_errors && !c->res->leaks &&
                 c->res->corruptions == c->snap_corruptions;
    else
        repair = false;
    for (uint32_t i = 0; i < q->l1s->l1_size && ret == 0; i++) {
        uint64_t e = l1_entry_get(q->l1s->l1, i), l2_off = e & L1E_OFFSET_MASK, rc;
        if (!l2_off)
            continue;
        ret = copied_refcount(c, l2_off >> q->cluster_bits, &rc);
        if (ret < 0)
            return ret;
        if (ret) {
            ret = 0;
            continue;
        }
        if ((rc == 1) != !!(e & QCOW_OFLAG_COPIED)) {
            c->res->corruptions++;
            c->loc = (struct loc){LOC_L1_ENTRY, -1, i, -1};
            ret = add_msg(c, "copied", true, true,
                          "%s OFLAG_COPIED L2 cluster: l1_index=%u "
                          "l1_entry=%" PRIx64 " refcount=%" PRIu64,
                          repair ? "Repairing" : "ERROR", i, e, rc);
            if (ret == 0 && repair)
                ret = l1_write_entry(c->img, i,
                                             rc == 1 ? e | QCOW_OFLAG_COPIED
                                                     : e & ~QCOW_OFLAG_COPIED);
            if (ret < 0) {
                c->res->check_errors++;
                return ret;
            }
            if (repair) {
                c->res->corruptions--;
                c->res->corruptions_fixed++;
            }
        }
        /* As QEMU, an unaligned table is read where it points (but
         * qimg never writes there: that could hit the next cluster). */
        if (!fast)
            ret = copied_l2(c, i, l2_off,
                            repair && IS_ALIGNED(l2_off, q->cluster_size));
    }
    return ret;
}

/* ---- The snapshot table ----------------------------------------------- */

/* Table size and offset as QEMU validates them; nonzero if unusable. */
static int validate_snapshot_table(struct chk *c, uint32_t n, uint64_t off)
{
    const char *why = NULL;
    int ret;

    if (n > QCOW_MAX_SNAPSHOTS)
        why = "snapshot table too large";
    else if ((uint64_t)INT64_MAX - n * 40ull < off ||
             !IS_ALIGNED(off, c->q->cluster_size))
        why = "snapshot table offset invalid";
    if (!why)
        return 0;
    c->res->check_errors++;
    ret = add_msg(c, "snapshot-table-unreadable", true, false, "ERROR %s",
                  why);
    if (ret == 0 && n > QCOW_MAX_SNAPSHOTS)
        ret = add_msg(c, "snapshot-table", false, false,
                      "You can force-remove all %u overhanging snapshots "
                      "with qemu-img check -r all",
                      n - QCOW_MAX_SNAPSHOTS);
    return ret < 0 ? ret : n > QCOW_MAX_SNAPSHOTS ? -EFBIG : -EINVAL;
}

static int snapshot_table_unreadable(struct chk *c, int err)
{
    const char *msg = qimg_last_error()->message;
    int ret;

    c->res->check_errors++;
    ret = add_msg(c, "snapshot-table-unreadable", true, false,
                  "ERROR failed to read the snapshot table: %s", msg);
    if (ret == 0 && !strncmp(msg, "Too much extra metadata", 23))
        ret = add_msg(c, "snapshot-table", false, false,
                      "You can force-remove this extra metadata with "
                      "qemu-img check -r all");
    return ret < 0 ? ret : err;
}

/* What reading the table found (and, with -r all, dropped). */
static int snapshot_read_findings(struct chk *c, const struct snap_read *rd)
{
    int ret = 0;

    for (size_t i = 0; i < rd->nb_drop && ret == 0; i++) {
        /* As QEMU, the overlong extra data is cut to the known fields. */
        c->snaps[rd->drop_idx[i]].extra_size = 24;
        ret = add_msg(c, "snapshot-table", false, false,
                      "Discarding too much extra metadata in snapshot table "
                      "entry %u (%u > %u)",
                      rd->drop_idx[i], rd->drop_size[i],
                      QCOW_MAX_SNAPSHOT_EXTRA);
    }
    if (ret == 0 && rd->overhang)
        ret = add_msg(c, "snapshot-table", false, false,
                      "Discarding %u overhanging snapshots (snapshot table is "
                      "too big)",
                      rd->overhang);
    /* The discarded snapshots count as fixed at once (QEMU writes the
     * header then); the rest is fixed by rewriting the table. */
    c->res->corruptions_fixed += rd->overhang;
    c->snap_corruptions = (int64_t)rd->nb_drop;
    for (uint32_t i = 0; i < c->nb_snaps && ret == 0; i++) {
        if (c->q->hdr.version < 3 || c->snaps[i].extra_size >= 16)
            continue;
        c->snap_corruptions++;
        ret = add_msg(c, "snapshot-table", true, false,
                      "%s snapshot table entry %u is incomplete",
                      c->fix & QIMG_CHECK_FIX_ERRORS ? "Repairing" : "ERROR",
                      i);
    }
    c->res->corruptions += c->snap_corruptions;
    return ret;
}

static int read_snapshot_table(struct chk *c)
{
    struct qcow2 *q = c->q;
    struct snap_read rd = {0};
    uint32_t n = q->hdr.nb_snapshots;
    uint64_t off = q->hdr.snapshots_offset;
    int ret;

    rd.repair = c->fix & QIMG_CHECK_FIX_ERRORS;
    if (n > QCOW_MAX_SNAPSHOTS && rd.repair) {
        ret = add_msg(c, "snapshot-table", false, false,
                      "Discarding %u overhanging snapshots",
                      n - QCOW_MAX_SNAPSHOTS);
        if (ret < 0)
            return ret;
        c->res->corruptions_fixed += n - QCOW_MAX_SNAPSHOTS;
        n = QCOW_MAX_SNAPSHOTS;
    }
    ret = validate_snapshot_table(c, n, off);
    if (ret)
        return ret;
    ret = snap_table_read(c->img, off, n, &rd, &c->snaps, &c->nb_snaps,
                          &c->snap_size);
    if (ret < 0)
        return snapshot_table_unreadable(c, ret);
    c->snap_off = c->nb_snaps ? off : 0;
    c->table_dirty = rd.overhang || n != q->hdr.nb_snapshots;
    return snapshot_read_findings(c, &rd);
}

static int fix_snapshot_table(struct chk *c)
{
    struct qcow2 *q = c->q;
    bool had_table = q->sn->nb_snaps > 0;
    int ret;

    if (!(c->fix & QIMG_CHECK_FIX_ERRORS) ||
        (!c->snap_corruptions && !c->table_dirty))
        return 0;
    for (uint32_t i = 0; i < c->nb_snaps; i++) {
        if (q->hdr.version < 3 || c->snaps[i].extra_size >= 16)
            continue;
        /* As QEMU: the known fields, with this disk's size. */
        c->snaps[i].disk_size = c->img->size;
        c->snaps[i].icount = UINT64_MAX;
    }
    ret = rebuild_snapshot_table(c->img, c->snaps, c->nb_snaps);
    /* Opened for check, the library had not loaded the old table, so it
     * is freed here, once the header no longer points at it. */
    if (ret == 0 && !had_table && c->snap_size && c->snap_off)
        ret = refcount_dec_later(c->img, c->snap_off, c->snap_size, true);
    if (ret == 0 && !had_table)
        ret = qcow2_flush(c->img);
    if (ret < 0) {
        c->res->check_errors++;
        qimg_error_clear();
        add_msg(c, "snapshot-table", true, false,
                "ERROR failed to update snapshot table: %s", strerror(-ret));
        return ret;
    }
    c->res->corruptions -= c->snap_corruptions;
    c->res->corruptions_fixed += c->snap_corruptions;
    c->snap_corruptions = 0;
    return 0;
}

/* ---- Refcounts: calculate, compare, repair ------------------------------- */

/* Subtract what the old refcount structures add to the computed table:
 * after a rebuild they are no longer referenced. */
static void drop_old_structures(struct chk *c)
{
    struct qcow2 *q = c->q;
    uint64_t first = q->hdr.refcount_table_offset >> q->cluster_bits;
    uint64_t last = (q->hdr.refcount_table_offset + q->rc->rt_entries * 8 - 1) >>
                    q->cluster_bits;

    for (uint64_t k = first; q->rc->rt_entries && k <= last; k++)
        if (ref_get(c, k))
            refblock_set(c->refs, k, q->refcount_order, ref_get(c, k) - 1);
    for (uint64_t i = 0; i < q->rc->rt_entries; i++) {
        uint64_t e = rt_raw(c, i), k = (e & RT_OFFSET_MASK) >> q->cluster_bits;
        /* Only the blocks check_refblock() counted. */
        if (!(e & RT_OFFSET_MASK) || (e & ~RT_OFFSET_MASK) ||
            !IS_ALIGNED(e, q->cluster_size) || k >= c->nb_refs ||
            !ref_get(c, k))
            continue;
        refblock_set(c->refs, k, q->refcount_order, ref_get(c, k) - 1);
    }
}

/* After a rebuild, compare against the new structure as QEMU does: with
 * -r leaks, counting only leaks that could not be fixed ("fresh" ones);
 * what else the comparison finds is printed but not counted (except, unlike
 * QEMU, refcounts it could not read: an I/O error stays an error). */
static int recheck_rebuilt(struct chk *c, uint64_t *highest, int64_t *fresh)
{
    struct qimg_check_result saved = *c->res, *r = c->res;
    int ret;

    r->corruptions = r->leaks = r->check_errors = 0;
    r->corruptions_fixed = r->leaks_fixed = 0;
    ret = compare(c, QIMG_CHECK_FIX_LEAKS, highest);
    if (ret == 0 && c->rebuild)
        ret = add_msg(c, "rebuild", true, false,
                      "ERROR rebuilt refcount structure is still broken");
    *fresh = r->leaks;
    saved.check_errors += r->check_errors;
    saved.msgs = r->msgs;
    saved.nb_msgs = r->nb_msgs;
    *r = saved;
    return ret;
}

/* Replace the refcount structures by ones built from the computed table,
 * then recount (as QEMU does, reporting what the walk finds again). */
static int rebuild(struct chk *c, uint64_t *highest)
{
    struct qimg_check_result *r = c->res;
    /* Snapshot table findings are counted apart, as QEMU does: the recount
     * does not see them, so they must not be mistaken for fixed. */
    int64_t snap = c->snap_corruptions;
    int64_t old_corruptions = r->corruptions - snap, old_leaks = r->leaks;
    int64_t fresh = 0;
    int ret;

    ret = add_msg(c, "rebuild", false, false, "Rebuilding refcount structure");
    if (ret < 0)
        return ret;
    drop_old_structures(c);
    ret = rebuild_refcounts(c->img, c->refs, c->nb_refs);
    if (ret < 0) {
        r->check_errors++;
        add_msg(c, "rebuild-failed", true, false, "ERROR %s",
                qimg_last_error()->message);
        return ret;
    }
    /* Unusable refcount blocks (bad offsets) are replaced: no longer an
     * error. Failed reads stay errors. */
    r->check_errors -= c->rc_errors;
    c->rc_errors = 0;
    r->corruptions = 0;
    r->leaks = 0;
    c->rebuild = false;
    c->file_size = MAX(c->file_size, c->q->file_size);
    c->nb_clusters = DIV_ROUND_UP(c->file_size, c->q->cluster_size);
    ret = calculate(c);
    if (ret == 0)
        ret = recheck_rebuilt(c, highest, &fresh);
    if (ret < 0)
        return ret;
    if (r->corruptions < old_corruptions)
        r->corruptions_fixed += old_corruptions - r->corruptions;
    if (r->leaks < old_leaks)
        r->leaks_fixed += old_leaks - r->leaks;
    r->leaks += fresh;
    r->corruptions += snap;
    return 0;
}

static int check_refcounts(struct chk *c)
{
    struct qimg_check_result pre;
    uint64_t highest = 0;
    int ret;

    c->res->total_clusters =
        (int64_t)DIV_ROUND_UP(c->img->size, c->q->cluster_size);
    c->walk_fix = c->fix & QIMG_CHECK_FIX_ERRORS;
    ret = calculate(c);
    c->walk_fix = false;
    if (ret < 0)
        return ret;
    pre = *c->res;
    ret = compare(c, 0, &highest);
    if (ret < 0)
        return ret;
    if (c->rebuild && (c->fix & QIMG_CHECK_FIX_ERRORS)) {
        ret = rebuild(c, &highest);
    } else if (c->fix) {
        if (c->rebuild) {
            c->res->check_errors++;
            add_msg(c, "rebuild", true, false,
                    "ERROR need to rebuild refcount structures");
            return -EIO;
        }
        if (c->res->leaks || c->res->corruptions) {
            int64_t errors = c->res->check_errors;
            pre.msgs = c->res->msgs;
            pre.nb_msgs = c->res->nb_msgs;
            *c->res = pre;
            ret = compare(c, c->fix, &highest);
            /* A read that failed only the first time is still an error. */
            c->res->check_errors = MAX(c->res->check_errors, errors);
        }
    }
    if (ret == 0)
        ret = check_copied(c);
    c->res->image_end_offset = (int64_t)((highest + 1) * c->q->cluster_size);
    return ret;
}

/* Name the referrers of every disputed cluster (a quiet second walk). A
 * failure there is still an error of the check. */
static int pinpoint(struct chk *c)
{
    struct qimg_check_result keep = *c->res;
    uint64_t idx;
    int ret;

    if (!c->nb_disp)
        return 0;
    c->quiet = true;
    ret = calculate(c);
    c->quiet = false;
    keep.msgs = c->res->msgs;
    keep.nb_msgs = c->res->nb_msgs;
    *c->res = keep;
    if (ret < 0) {
        c->res->check_errors++;
        add_msg(c, "io", true, false, "ERROR naming referrers: %s",
                qimg_last_error()->message);
        return ret;
    }
    for (size_t i = 0; i < c->nb_disp; i++) {
        struct qimg_check_msg *m = &c->res->msgs[c->disp[i].msg];
        if (m->where || !u64map_get(&c->where, c->disp[i].cluster, &idx))
            continue;
        m->where = strdup(c->wheres[idx]);
    }
    return 0;
}

static int mark_clean(struct chk *c)
{
    struct qcow2 *q = c->q;
    uint64_t bits = INCOMPAT_DIRTY | INCOMPAT_CORRUPT;

    if (!(q->hdr.incompatible & bits) || q->hdr.version < 3)
        return 0;
    return rebuild_set_incompat(c->img, q->hdr.incompatible & ~bits);
}

static void chk_free(struct chk *c)
{
    for (uint32_t i = 0; i < c->nb_snaps; i++)
        snap_free(&c->snaps[i]);
    free(c->snaps);
    free(c->refs);
    free(c->l2buf);
    free(c->rbbuf);
    idset_free(&c->traced);
    u64map_free(&c->where);
    for (size_t i = 0; i < c->nb_wheres; i++)
        free(c->wheres[i]);
    free(c->wheres);
    free(c->disp);
    u64map_free(&c->l2refs);
    free(c->cop1);
    free(c->cop0);
}

void qimg_check_result_free(struct qimg_check_result *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->nb_msgs; i++) {
        free(r->msgs[i].text);
        free(r->msgs[i].where);
    }
    free(r->msgs);
    free(r);
}

static int chk_init(struct chk *c, qimg_image *img, unsigned fix,
                    struct qimg_check_result *res)
{
    memset(c, 0, sizeof *c);
    c->img = img;
    c->q = img->q;
    c->fix = fix;
    c->res = res;
    if (fix && !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (file_get_size(img, &c->file_size) < 0) {
        res->check_errors++;
        return qimg_err(EIO, "Could not get the image size");
    }
    /* Lengths count whole 512-byte sectors (QEMU measures files so). */
    c->file_size = ALIGN_UP(c->file_size, 512);
    file_extend(c->img, c->file_size);
    c->nb_clusters = DIV_ROUND_UP(c->file_size, c->q->cluster_size);
    c->rb_idx = UINT64_MAX;
    c->l2buf = malloc(c->q->cluster_size);
    c->rbbuf = malloc(c->q->cluster_size);
    if (!c->l2buf || !c->rbbuf)
        return qimg_err(ENOMEM, "Out of memory");
    if (fix)
        return qcow2_flush(img);
    return 0;
}

int qimg_image_check(struct qimg_check_result **out, qimg_image *img,
                     unsigned fix)
{
    struct qimg_check_result *res = calloc(1, sizeof *res);
    struct chk c;
    int ret;

    *out = res;
    if (!res)
        return qimg_err(ENOMEM, "Out of memory");
    if (img->fmt != QIMG_FMT_QCOW2)
        return qimg_err(ENOTSUP, "This image format does not support checks");
    if (fix & QIMG_CHECK_FIX_ERRORS)
        fix |= QIMG_CHECK_FIX_LEAKS;
    ret = chk_init(&c, img, fix, res);
    if (ret == 0)
        ret = read_snapshot_table(&c);
    if (ret == 0)
        ret = check_refcounts(&c);
    if (ret == 0)
        ret = fix_snapshot_table(&c);
    if (ret == 0)
        ret = pinpoint(&c);
    if (ret == 0 && fix && !res->check_errors && !res->corruptions)
        ret = mark_clean(&c);
    chk_free(&c);
    return ret;
}

int check_repair_dirty(qimg_image *img)
{
    struct qimg_check_result *r = NULL;
    int ret = qimg_image_check(&r, img, QIMG_CHECK_FIX_ERRORS);

    if (ret == 0 && r->check_errors)
        ret = -EIO;
    qimg_check_result_free(r);
    if (ret < 0)
        return qimg_err(-ret, "Could not repair dirty image: %s",
                        strerror(-ret));
    return 0;
}
