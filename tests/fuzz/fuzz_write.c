/*
 * fuzz_write.c - libFuzzer target: a read-write open that takes a
 * snapshot, writes, reverts and deletes it.
 *
 * On a private copy of the input: create snapshot "fuzz-snap", write a
 * pattern, zero or discard another range, apply the snapshot, delete it,
 * write again, flush. Where the image refuses a snapshot (refcount width 1,
 * active dirty bitmaps), only the writes run. Offsets and lengths come from
 * a hash of the input.
 * Asserted of every mutating step (snapshot create, apply and delete,
 * guest write, zero or discard, the final flush), by the oracle below:
 *  A. a step that fails leaves the file byte-identical (length included),
 *     but for what QEMU too would have written by then: the corrupt bit
 *     (v3: byte 79, bit 1, set), and on a guest write, zero or discard the
 *     first-write changes of prepare_write() in guest.c: cluster 0
 *     rewritten with unknown autoclear bits cleared (roots_clear_autoclear;
 *     exactly as predicted from the header before the step) and auto
 *     bitmaps flagged in_use in the bitmap directory (bitmap_track_begin).
 *     qimg never sets or clears the dirty bit on a write (a dirty image is
 *     repaired at open, before the first step), so that bit is not
 *     allowed. Not asserted where the backend failed a call during the
 *     step (the FUZZ_MAX_FILE cap, io-mem out of memory: an I/O error,
 *     not a refusal), nor of the flush;
 *  B. a step that succeeds does not raise the number of corruptions a
 *     read-only check finds in the file (as it is, caches not flushed),
 *     nor leave a file the check cannot finish when it could before; nor
 *     does the flush before the next step. Counted once per piece of
 *     damage (distinct_corruptions()); not asserted while a snapshot has
 *     an L1 table the library refuses (snapshot_l1s_valid()), nor on a
 *     file where guest data lies on metadata (data_on_metadata()): damage
 *     the check cannot see, which a legitimate step may make visible.
 * Each step starts from a flushed cache, so what a failed step wrote is
 * its own doing.
 * Asserted, when every step succeeded:
 *  1. a write reads back, and a zeroed range reads as zeros;
 *  2. the new snapshot's L1 table does not overlap the active one (the
 *     overlap check must stop that even on a damaged image);
 *  3. if a read-only check of the input found no corruption, applying the
 *     snapshot brings back what the disk held when it was taken (on a
 *     damaged image qemu-img too may hand out a cluster still in use);
 *  4. if that check found the input clean (and no stale refcount lies past
 *     the end of the file), it finds the result clean too.
 */
#include "fuzz.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SNAP_NAME "fuzz-snap"
#define MAX_WRITE 8192u
#define MAX_ZERO (64u << 10)

/* ---- The oracle around each mutating step ------------------------------ */

enum op_kind { OP_SNAPSHOT, OP_GUEST, OP_FLUSH };

struct oracle {
    qimg_image *img;
    enum op_kind kind;
    uint8_t *before; /* the file before the step */
    size_t len, cap;
    bool count_valid;    /* count and count_known describe `before` */
    bool count_known;    /* the check ran to its end */
    int64_t count;       /* the corruptions it found */
    /* The count before the file last changed between steps (op_begin's
     * flush; a failed step's allowed changes): that must not raise it
     * either. */
    bool flushed_known;
    int64_t flushed_count;
    uint64_t io_failures; /* backend failures before the step */
    bool trees_valid;    /* every snapshot L1 table passes snap_check_l1 */
    /* What a first guest write may change (OP_GUEST): */
    uint8_t *header;     /* cluster 0 rewritten, or NULL */
    size_t header_len;
    struct bm_flags {
        uint64_t off;    /* file offset of an auto bitmap's flags */
        uint32_t flags;  /* their value now, without in_use */
    } *bm;
    size_t nb_bm;
};

static void save_before(struct oracle *o, const uint8_t *file, size_t len)
{
    if (len > o->cap) {
        uint8_t *p = realloc(o->before, len);
        if (!p)
            fuzz_fail("out of memory saving %zu bytes", len);
        o->before = p;
        o->cap = len;
    }
    memcpy(o->before, file, len);
    o->len = len;
}

/* prepare_write() (guest.c), on the first guest write: if there are
 * autoclear bits to clear, roots_clear_autoclear() rewrites cluster 0 from
 * the in-memory header; then bitmap_track_begin() sets in_use on the auto
 * bitmaps of a directory the header still names. Predicted from the state
 * before the step, without writing. */
static void predict_first_write(struct oracle *o)
{
    const struct qcow2 *q = o->img->q;
    struct qcow2_header h = q->hdr; /* shallow: header_encode only reads */
    struct bitmap_entry *b;
    size_t n;

    if ((h.autoclear & ~AUTOCLEAR_MASK) ||
        (h.has_bitmaps_ext && !(h.autoclear & AUTOCLEAR_BITMAPS))) {
        h.autoclear &= AUTOCLEAR_MASK;
        if (!(h.autoclear & AUTOCLEAR_BITMAPS))
            h.has_bitmaps_ext = false;
        o->header = malloc(q->cluster_size);
        if (o->header && header_encode(&h, o->header, q->cluster_size) == 0) {
            o->header_len = q->cluster_size;
        } else {
            free(o->header);
            o->header = NULL;
        }
    }
    if (q->bitmaps_marked || !h.has_bitmaps_ext)
        return;
    if (bitmap_dir_load(o->img, &b, &n) < 0) {
        qimg_error_clear();
        return;
    }
    o->bm = calloc(n ? n : 1, sizeof *o->bm);
    for (size_t i = 0; o->bm && i < n; i++)
        if ((b[i].flags & BME_FLAG_AUTO) && !(b[i].flags & BME_FLAG_IN_USE))
            o->bm[o->nb_bm++] = (struct bm_flags){
                .off = h.bitmap_dir_offset + b[i].dir_pos + 12,
                .flags = b[i].flags,
            };
    bitmap_dir_free(b, n);
}

/* Whether the library would use every snapshot's L1 table (open, apply
 * and delete refuse one that is misplaced or too large). The check walks
 * such a table anyway, wherever it lies: one at offset 0 reads the header
 * as L1 entries, and the tables they name as L2 tables, so a legitimate
 * change of the header or the active L1 table shows up there as new
 * damage. Assertion B is not made on such an image. */
static bool snapshot_l1s_valid(qimg_image *img)
{
    const struct snap_state *sn = img->q->sn;

    for (uint32_t i = 0; i < sn->nb_snaps; i++)
        if (snap_check_l1(img, &sn->snaps[i]) < 0) {
            qimg_error_clear();
            return false;
        }
    return true;
}

/* Before a step: flush what earlier steps left in the caches (not before
 * OP_FLUSH, the step that does it), keep the file. */
static int op_begin(struct oracle *o, enum op_kind kind)
{
    const uint8_t *file;
    size_t len;
    int ret;

    if (kind != OP_FLUSH && (ret = qimg_image_flush(o->img)) < 0)
        return ret;
    file = fuzz_file_data(o->img, &len);
    if (!o->count_valid || len != o->len || memcmp(file, o->before, len)) {
        o->flushed_known = o->count_valid && o->count_known;
        o->flushed_count = o->count;
        save_before(o, file, len);
        o->count_valid = false;
    }
    o->kind = kind;
    o->io_failures = fuzz_io_failures(o->img);
    o->trees_valid = snapshot_l1s_valid(o->img);
    free(o->header);
    free(o->bm);
    o->header = NULL;
    o->bm = NULL;
    o->nb_bm = 0;
    if (kind == OP_GUEST)
        predict_first_write(o);
    return 0;
}

/* The file as the step may leave it on failure: `before`, with cluster 0
 * rewritten if `rewrite`, bitmap flags and the corrupt bit set where the
 * file after has them. Returns its length; *out is malloc'ed. */
static size_t expected(const struct oracle *o, bool rewrite,
                       const uint8_t *after, size_t after_len, uint8_t **out)
{
    size_t len = MAX(o->len, rewrite ? o->header_len : 0);
    uint8_t *e = calloc(1, len ? len : 1);

    if (!e)
        fuzz_fail("out of memory");
    memcpy(e, o->before, o->len);
    if (rewrite)
        memcpy(e, o->header, o->header_len);
    for (size_t i = 0; i < o->nb_bm; i++) {
        uint8_t f[4];
        if (o->bm[i].off + 4 > MIN(len, after_len))
            continue;
        be32_store(f, o->bm[i].flags | BME_FLAG_IN_USE);
        if (!memcmp(after + o->bm[i].off, f, 4))
            memcpy(e + o->bm[i].off, f, 4);
    }
    if (o->img->q->hdr.version >= 3 && len > 79 && after_len > 79 &&
        (after[79] & 2) && (after[79] ^ e[79]) == 2)
        e[79] |= 2;
    *out = e;
    return len;
}

/* Assertion A. */
static void require_unchanged(const struct oracle *o, int ret,
                              const char *what)
{
    size_t len, elen, i, ndiff = 0;
    const uint8_t *file = fuzz_file_data(o->img, &len);
    uint8_t *e;

    if (len == o->len && !memcmp(file, o->before, len))
        return;
    if (o->header) {
        elen = expected(o, true, file, len, &e);
        if (elen == len && !memcmp(e, file, len)) {
            free(e);
            return;
        }
        free(e);
    }
    elen = expected(o, false, file, len, &e);
    if (elen == len && !memcmp(e, file, len)) {
        free(e);
        return;
    }
    for (i = 0; i < MIN(len, elen); i++)
        ndiff += e[i] != file[i];
    for (i = 0; i < MIN(len, elen) && e[i] == file[i]; i++)
        ;
    free(e);
    fuzz_fail("%s failed (%d) but changed the file: size %zu -> %zu, %zu "
              "bytes differ, the first at %#zx",
              what, ret, o->len, len, ndiff, i);
}

/* The part of a finding's place that names a table entry, without the
 * tree ("active L1", "snapshot ID (NAME) L1") it was reached from; NULL
 * if the place is not in a tree. */
static const char *place_in_tree(const char *where)
{
    const char *p, *last = NULL;

    if (!where)
        return NULL;
    if (!strncmp(where, "active L1", 9))
        return where + 9;
    if (strncmp(where, "snapshot ", 9))
        return NULL;
    for (p = where; (p = strstr(p, ") L1")); p++)
        last = p + 4;
    return last;
}

static int cmp_findings(const void *a, const void *b)
{
    const struct qimg_check_msg *x = *(const struct qimg_check_msg *const *)a;
    const struct qimg_check_msg *y = *(const struct qimg_check_msg *const *)b;
    int d = strcmp(x->kind ? x->kind : "", y->kind ? y->kind : "");

    return d ? d : strcmp(place_in_tree(x->where), place_in_tree(y->where));
}

/* A refcount finding: "ERROR cluster N refcount=R reference=F". */
struct rc_finding {
    uint64_t cluster, refs;
};

static int cmp_rc(const void *a, const void *b)
{
    const struct rc_finding *x = a, *y = b;

    return (x->cluster > y->cluster) - (x->cluster < y->cluster);
}

/* Whether a COPIED finding only follows from a wrong refcount: the
 * check judges COPIED by the refcount on disk, so an entry whose COPIED
 * flag agrees with the references the check counted, on a cluster whose
 * refcount it reports wrong, is that refcount finding again. */
static bool copied_follows(const struct qimg_check_msg *m, unsigned bits,
                           const struct rc_finding *rc, size_t nb_rc)
{
    uint64_t e, rcv;
    unsigned idx;
    struct rc_finding key, *f;

    if (sscanf(m->text, "ERROR OFLAG_COPIED data cluster: l2_entry=%" SCNx64
                        " refcount=%" SCNu64, &e, &rcv) != 2 &&
        sscanf(m->text, "ERROR OFLAG_COPIED L2 cluster: l1_index=%u "
                        "l1_entry=%" SCNx64 " refcount=%" SCNu64,
               &idx, &e, &rcv) != 3)
        return false;
    key.cluster = (e & L2E_OFFSET_MASK) >> bits;
    f = bsearch(&key, rc, nb_rc, sizeof *rc, cmp_rc);
    return f && (f->refs == 1) == !!(e & QCOW_OFLAG_COPIED);
}

/* The corruptions a check counted, each piece of damage once:
 *  - the walk reports a damaged L2 entry once per L1 table that reaches
 *    its L2 table, so a snapshot sharing the table counts the damage
 *    again (qemu-img check too), and a step that changes such an entry
 *    (write zeroes sets the zero flag, keeping the reserved bits) turns
 *    the two reports into different texts: a finding of the same kind at
 *    the same L1 and L2 index of another tree is not counted again;
 *  - a COPIED finding that follows from a refcount finding (above) is not
 *    counted. */
static int64_t distinct_corruptions(const struct qimg_check_result *r,
                                    unsigned cluster_bits)
{
    const struct qimg_check_msg **m = malloc((r->nb_msgs + 1) * sizeof *m);
    struct rc_finding *rc = malloc((r->nb_msgs + 1) * sizeof *rc);
    int64_t n = r->corruptions;
    size_t k = 0, nb_rc = 0;

    if (!m || !rc)
        fuzz_fail("out of memory");
    for (size_t i = 0; i < r->nb_msgs; i++) {
        const struct qimg_check_msg *x = &r->msgs[i];
        uint64_t rcv;
        if (!x->is_error)
            continue;
        /* Found by the walk at one place (a refcount finding names
         * every referrer of its cluster instead). */
        if (place_in_tree(x->where) && x->kind &&
            strcmp(x->kind, "refcount") && !strchr(x->where, ';'))
            m[k++] = x;
        if (sscanf(x->text, "ERROR cluster %" SCNu64 " refcount=%" SCNu64
                            " reference=%" SCNu64,
                   &rc[nb_rc].cluster, &rcv, &rc[nb_rc].refs) == 3)
            nb_rc++;
    }
    qsort(m, k, sizeof *m, cmp_findings);
    for (size_t i = 1; i < k; i++)
        if (cmp_findings(&m[i - 1], &m[i]) == 0)
            n--;
    qsort(rc, nb_rc, sizeof *rc, cmp_rc);
    for (size_t i = 0; nb_rc && i < r->nb_msgs; i++)
        if (r->msgs[i].is_error && r->msgs[i].kind &&
            !strcmp(r->msgs[i].kind, "copied") &&
            copied_follows(&r->msgs[i], cluster_bits, rc, nb_rc))
            n--;
    free(m);
    free(rc);
    return n;
}

/* ---- Data on metadata: damage the check cannot see --------------------- */

/* The clusters of one file: which hold metadata. */
struct alias_scan {
    const uint8_t *f;
    size_t len;
    unsigned bits;
    unsigned l2_entry_size;
    uint64_t nb;  /* clusters the file covers */
    uint8_t *meta; /* one byte per cluster: 1 if metadata */
};

static uint64_t load64(const struct alias_scan *a, uint64_t off)
{
    return off + 8 <= a->len ? be64_load(a->f + off) : 0;
}

static void mark_meta(struct alias_scan *a, uint64_t off, uint64_t bytes)
{
    uint64_t end;

    if (bytes == 0 || off >= a->len)
        return;
    end = MIN((off + bytes - 1) >> a->bits, a->nb - 1);
    for (uint64_t k = off >> a->bits; k <= end; k++)
        a->meta[k] = 1;
}

/* Mark an L1 table and the L2 tables it names (as far as the file
 * reaches); with `check`, instead report whether an L2 entry maps guest
 * data onto a metadata cluster. */
static bool scan_tree(struct alias_scan *a, uint64_t l1_off, uint64_t l1_size,
                      bool check)
{
    uint64_t cs = 1ull << a->bits, per_l2 = cs / a->l2_entry_size;

    l1_size = MIN(l1_size, a->len / 8);
    if (!check)
        mark_meta(a, l1_off, l1_size * 8);
    for (uint64_t i = 0; i < l1_size && l1_off + i * 8 < a->len; i++) {
        uint64_t l2 = load64(a, l1_off + i * 8) & L1E_OFFSET_MASK;
        if (!l2 || l2 >= a->len)
            continue;
        if (!check) {
            mark_meta(a, l2, cs);
            continue;
        }
        for (uint64_t j = 0; j < per_l2; j++) {
            uint64_t e = load64(a, l2 + j * a->l2_entry_size);
            uint64_t k = (e & L2E_OFFSET_MASK) >> a->bits;
            if (!(e & QCOW_OFLAG_COMPRESSED) && (e & L2E_OFFSET_MASK) &&
                k < a->nb && a->meta[k])
                return true;
        }
    }
    return false;
}

/* Walk the active tree and every snapshot's: mark (check false) or test
 * (check true). */
static bool scan_trees(struct alias_scan *a, bool check)
{
    const uint8_t *f = a->f;
    uint64_t snap = be64_load(f + 64);
    uint32_t nb_snaps = be32_load(f + 60);

    if (scan_tree(a, be64_load(f + 40), be32_load(f + 36), check))
        return true;
    for (uint32_t i = 0; i < MIN(nb_snaps, 65536u); i++) {
        uint64_t next;
        if (snap + 40 > a->len)
            break;
        next = ALIGN_UP(snap + 40 + be32_load(f + snap + 36) +
                            be16_load(f + snap + 12) + be16_load(f + snap + 14),
                        8);
        if (!check)
            mark_meta(a, snap, next - snap);
        if (scan_tree(a, be64_load(f + snap), be32_load(f + snap + 8), check))
            return true;
        snap = next;
    }
    return false;
}

/* Whether an L2 entry of the file f[0..len) (active or snapshot tree)
 * maps guest data onto a cluster that holds metadata: the header, an L1
 * or L2 table, the refcount table or a block, the snapshot table. The
 * check cannot see that when the refcount covers both uses, and a
 * legitimate step then turns it into a finding (copying such an L2 table
 * drops its own reference, leaving the data one without COPIED at
 * refcount 1; qemu-img does the same). Assertion B is not made on such a
 * file. */
static bool data_on_metadata(const uint8_t *f, size_t len)
{
    struct alias_scan a = {.f = f, .len = len};
    uint64_t rt, rt_len;
    bool found;

    if (len < HDR_V3_LEN || be32_load(f + 20) < 9 || be32_load(f + 20) > 21)
        return false;
    a.bits = be32_load(f + 20);
    a.l2_entry_size =
        be32_load(f + 4) >= 3 && (be64_load(f + 72) & INCOMPAT_EXTL2) ? 16 : 8;
    a.nb = DIV_ROUND_UP(len, 1ull << a.bits);
    a.meta = calloc(a.nb, 1);
    if (!a.meta)
        fuzz_fail("out of memory");
    mark_meta(&a, 0, 1);
    rt = be64_load(f + 48);
    rt_len = MIN((uint64_t)be32_load(f + 56) << a.bits, len);
    mark_meta(&a, rt, rt_len);
    /* Refcount blocks by their offset bits alone: one with a reserved bit
     * set is still where it is. */
    for (uint64_t i = 0; rt < len && i < rt_len / 8; i++)
        mark_meta(&a, load64(&a, rt + i * 8) & L1E_OFFSET_MASK,
                  1ull << a.bits);
    scan_trees(&a, false);
    found = scan_trees(&a, true);
    free(a.meta);
    return found;
}

/* Assertion B: the corruptions a check finds in the file now, against
 * those it found before the step (counted once, then carried over). */
static void require_no_new_corruption(struct oracle *o, const char *what)
{
    struct qimg_check_result *r;
    size_t len;
    const uint8_t *file = fuzz_file_data(o->img, &len);
    unsigned bits = o->img->q->cluster_bits;
    int64_t n;
    bool known;
    int ret;

    if (o->count_valid && len == o->len && !memcmp(file, o->before, len))
        return;
    if (!o->count_valid) {
        o->count_known = fuzz_check_bytes(o->before, o->len, &r) == 0 &&
                         !r->check_errors;
        o->count = r ? distinct_corruptions(r, bits) : 0;
        o->count_valid = true;
        qimg_check_result_free(r);
        if (o->trees_valid && o->flushed_known &&
            (!o->count_known || o->count > o->flushed_count) &&
            !data_on_metadata(o->before, o->len))
            fuzz_fail("the file changed before %s (a flush, or what a "
                      "failed step may leave) and the check's corruptions "
                      "went from %" PRId64 " to %" PRId64 " (complete: %d)",
                      what, o->flushed_count, o->count, o->count_known);
    }
    ret = fuzz_check_bytes(file, len, &r);
    known = ret == 0 && !r->check_errors;
    n = r ? distinct_corruptions(r, bits) : 0;
    if (o->trees_valid && o->count_known && (!known || n > o->count) &&
        !data_on_metadata(o->before, o->len)) {
        const char *first = "none";
        for (size_t i = 0; r && i < r->nb_msgs; i++)
            if (r->msgs[i].is_error) {
                first = r->msgs[i].text;
                break;
            }
        fuzz_fail("%s succeeded but the check now returns %d with %" PRId64
                  " distinct corruptions and %" PRId64 " errors (%" PRId64
                  " corruptions before); first finding: %s",
                  what, ret, n, r ? r->check_errors : 0, o->count, first);
    }
    save_before(o, file, len);
    o->count = n;
    o->count_known = known;
    o->count_valid = true;
    qimg_check_result_free(r);
}

/* After a step that returned ret. */
static int op_end(struct oracle *o, int ret, const char *what)
{
    if (ret == 0)
        require_no_new_corruption(o, what);
    else if (o->kind != OP_FLUSH &&
             fuzz_io_failures(o->img) == o->io_failures)
        require_unchanged(o, ret, what);
    return ret;
}

static void oracle_free(struct oracle *o)
{
    free(o->before);
    free(o->header);
    free(o->bm);
}

/* ---- The steps ----------------------------------------------------------- */

struct plan {
    uint64_t off, zero_off;
    size_t len, zero_len;
    uint8_t pattern;
    bool discard, unmap;
    bool check_restore; /* assertion 3 applies */
};

static void plan_ops(struct plan *p, uint64_t h, uint64_t size)
{
    p->off = h % size;
    if (h & (1ull << 63))
        p->off = ALIGN_DOWN(p->off, 512);
    p->len = (size_t)MIN(1 + (h >> 16) % MAX_WRITE, size - p->off);
    p->zero_off = (h >> 24) % size;
    p->zero_len = (size_t)MIN(1 + (h >> 36) % MAX_ZERO, size - p->zero_off);
    p->pattern = (uint8_t)(h >> 8) | 1;
    p->discard = h & (1ull << 61);
    p->unmap = h & (1ull << 62);
}

/* Whether the image suits this target: SNAP_NAME unused as a snapshot ID
 * and name. */
static bool suits(qimg_image *img)
{
    struct qimg_snapshot *list = NULL;
    size_t count = 0;
    bool ok = true;

    if (qimg_snapshot_list(&list, &count, img) < 0)
        return false;
    for (size_t i = 0; i < count; i++)
        if (!strcmp(list[i].id, SNAP_NAME) || !strcmp(list[i].name, SNAP_NAME))
            ok = false;
    qimg_snapshot_list_free(list, count);
    return ok;
}

/* Whether every refcount past the end of the file (as far as the file may
 * grow) is zero. Check does not look there, nor does qemu-img's, but a
 * write that grows the file turns a stale refcount there into a leak, so
 * an image with one is not "clean" for assertion 4. */
static bool no_refcounts_past_eof(qimg_image *img)
{
    const struct qcow2 *q = img->q;
    uint64_t size, idx, end, v;

    if (file_get_size(img, &size) < 0)
        return false;
    end = MIN(q->rc->rt_entries << q->rb_bits, FUZZ_MAX_FILE / q->cluster_size);
    for (idx = DIV_ROUND_UP(size, q->cluster_size); idx < end; idx++) {
        if (refcount_get(img, idx, &v) < 0 || v)
            return false;
    }
    return true;
}

/* Write and read back. */
static int write_pattern(qimg_image *img, const struct plan *p, uint8_t *buf,
                         struct oracle *o)
{
    int ret;

    memset(buf, p->pattern, p->len);
    ret = op_begin(o, OP_GUEST);
    if (ret == 0)
        ret = op_end(o, qimg_image_write(img, buf, p->len, p->off),
                     "guest write");
    if (ret == 0)
        ret = qimg_image_read(img, buf, p->len, p->off);
    if (ret == 0 && (buf[0] != p->pattern ||
                     memcmp(buf, buf + 1, p->len - 1) != 0))
        fuzz_fail("write of %zu bytes at %" PRIu64 " did not read back",
                  p->len, p->off);
    return ret;
}

static int zero_or_discard(qimg_image *img, const struct plan *p,
                           uint8_t *buf, struct oracle *o)
{
    int ret = op_begin(o, OP_GUEST);

    if (ret == 0 && p->discard)
        return op_end(o, qimg_image_discard(img, p->zero_off, p->zero_len),
                      "discard");
    if (ret == 0)
        ret = op_end(o,
                     qimg_image_write_zeroes(img, p->zero_off, p->zero_len,
                                             p->unmap ? QIMG_ZERO_UNMAP : 0),
                     "write zeroes");
    if (ret == 0)
        ret = qimg_image_read(img, buf, p->zero_len, p->zero_off);
    if (ret == 0 && (buf[0] || memcmp(buf, buf + 1, p->zero_len - 1)))
        fuzz_fail("zeroes at %" PRIu64 " (%zu bytes) did not read back",
                  p->zero_off, p->zero_len);
    return ret;
}

/* Assertion 2, on the snapshot just created. */
static void check_snapshot_l1(qimg_image *img)
{
    const struct qcow2 *q = img->q;
    struct qimg_snapshot *list = NULL;
    uint64_t a0 = q_cluster_of(q, q->hdr.l1_table_offset), a1, b0, b1;
    size_t count = 0;

    if (q->l1s->l1_size == 0 || qimg_snapshot_list(&list, &count, img) < 0)
        return;
    a1 = q_cluster_of(q, q->hdr.l1_table_offset + q->l1s->l1_size * 8ull - 1);
    for (size_t i = 0; i < count; i++) {
        if (strcmp(list[i].name, SNAP_NAME) || list[i].l1_size == 0)
            continue;
        b0 = q_cluster_of(q, list[i].l1_table_offset);
        b1 = q_cluster_of(q, list[i].l1_table_offset +
                                 list[i].l1_size * 8ull - 1);
        if (b0 <= a1 && a0 <= b1)
            fuzz_fail("snapshot L1 table at %#" PRIx64 " overlaps the "
                      "active L1 table at %#" PRIx64,
                      list[i].l1_table_offset, q->hdr.l1_table_offset);
    }
    qimg_snapshot_list_free(list, count);
}

/* Revert to the snapshot taken before the changes (where the image allows
 * it: not with active dirty bitmaps, nor a v2 image resized since) and
 * check the range is back (assertion 3); delete the snapshot. */
static int revert_and_delete(qimg_image *img, const struct plan *p,
                             const uint8_t *before, uint8_t *buf,
                             struct oracle *o)
{
    int ret = op_begin(o, OP_SNAPSHOT);

    if (ret < 0)
        return ret;
    ret = op_end(o, qimg_snapshot_apply(img, SNAP_NAME), "snapshot apply");
    if (ret == 0 && p->check_restore) {
        ret = qimg_image_read(img, buf, p->len, p->off);
        if (ret < 0)
            return ret;
        if (memcmp(buf, before, p->len) != 0)
            fuzz_fail("snapshot apply did not restore %zu bytes at %" PRIu64,
                      p->len, p->off);
    }
    ret = op_begin(o, OP_SNAPSHOT);
    if (ret == 0)
        ret = op_end(o, qimg_snapshot_delete(img, SNAP_NAME),
                     "snapshot delete");
    return ret;
}

/* Snapshot (where the image allows one), change, revert, delete, write.
 * Returns 0 if every step after the snapshot worked. */
static int run_ops(qimg_image *img, const struct plan *p, struct oracle *o)
{
    uint8_t *before = malloc(p->len), *buf = malloc(MAX_ZERO);
    bool has_snap = false;
    int ret = -ENOMEM;

    if (!before || !buf)
        goto out;
    ret = qimg_image_read(img, before, p->len, p->off);
    if (ret == 0)
        ret = op_begin(o, OP_SNAPSHOT);
    if (ret == 0)
        has_snap = op_end(o, qimg_snapshot_create(img, SNAP_NAME),
                          "snapshot create") == 0;
    if (has_snap)
        check_snapshot_l1(img);
    if (ret == 0)
        ret = write_pattern(img, p, buf, o);
    if (ret == 0)
        ret = zero_or_discard(img, p, buf, o);
    if (ret == 0 && has_snap)
        ret = revert_and_delete(img, p, before, buf, o);
    if (ret == 0)
        ret = write_pattern(img, p, buf, o);
    if (ret == 0)
        ret = op_begin(o, OP_FLUSH);
    if (ret == 0)
        ret = op_end(o, qimg_image_flush(img), "flush");
out:
    free(before);
    free(buf);
    return ret;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;
    struct qimg_check_result *r;
    struct oracle orc = {0};
    qimg_image *img = NULL;
    const uint8_t *file;
    size_t file_len;
    struct plan p;
    bool was_clean = false, intact = false, known;

    if (size > FUZZ_MAX_INPUT)
        return 0;
    known = fuzz_check_bytes(data, size, &r) == 0;
    if (known) {
        intact = !r->corruptions && !r->check_errors;
        was_clean = fuzz_check_clean(r);
    }
    o.read_write = true;
    if (fuzz_open(&img, data, size, &o) < 0) {
        qimg_check_result_free(r);
        return 0;
    }
    if (qimg_image_size(img) == 0 || !suits(img)) {
        qimg_check_result_free(r);
        qimg_image_close(img);
        return 0;
    }
    /* The input's check is the count before the first step, unless the
     * open changed the file (repairing a dirty image). */
    orc.img = img;
    file = fuzz_file_data(img, &file_len);
    if (file_len == size && !memcmp(file, data, size)) {
        save_before(&orc, data, size);
        orc.count_valid = true;
        orc.count_known = known && !r->check_errors;
        orc.count = known ? distinct_corruptions(r, img->q->cluster_bits) : 0;
    }
    qimg_check_result_free(r);
    was_clean = was_clean && no_refcounts_past_eof(img);
    plan_ops(&p, fuzz_hash(data, size), qimg_image_size(img));
    p.check_restore = intact;
    if (run_ops(img, &p, &orc) == 0 && was_clean) {
        file = fuzz_file_data(img, &file_len);
        fuzz_require_clean(file, file_len,
                           "after snapshot create/write/apply/delete on a "
                           "clean image");
    }
    oracle_free(&orc);
    qimg_image_close(img);
    return 0;
}
