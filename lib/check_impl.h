/*
 * check_impl.h - private to the check*.c files: the state of one check and
 * what those files call in each other. Nothing else includes it.
 *
 *   check.c            entry point: set-up, the order of the stages
 *   check_findings.c   messages, locations, disputed clusters, referrers
 *   check_walk.c       expected refcounts, from walking every structure
 *   check_refcounts.c  on-disk refcounts: comparison, repair, rebuild
 *   check_copied.c     COPIED flags of the active tables
 *   check_snaptable.c  the snapshot table: read, checked, rewritten
 *
 * Notes on the design:
 *  1. One check is one struct chk. Each concept above has a sub-struct in
 *     it, written only by the file that owns the concept; the other files
 *     call that file's functions, and read only the fields marked "read by
 *     all" below. The context at the top of struct chk is set by
 *     chk_init() and then only read.
 *  2. The result (*res) is the verdict: its counters are added to by each
 *     file that finds or fixes something (the whole-result copies that
 *     undo a walk go through check_findings.c); its messages (msgs,
 *     nb_msgs and each message's fields) are written only by
 *     check_findings.c.
 *  3. Cross-file functions carry the prefix of their file's concept:
 *     findings_, walk_, disk_ (check_refcounts.c), copied_,
 *     chk_snaptable_ (snaptable_ is the table module's own prefix);
 *     chk_ for the context.
 *  4. The build has no LTO: what the per-entry and per-cluster loops of
 *     one file call in another is static inline here (walk_ref_get(),
 *     disk_block(), disk_refcount()), so those loops never call across
 *     translation units.
 */
#ifndef QIMG_CHECK_IMPL_H
#define QIMG_CHECK_IMPL_H

#include "bitmap.h"
#include "check.h"
#include "endian.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "idset.h"
#include "l1l2.h"
#include "meta.h"
#include "metaset.h"
#include "rebuild.h"
#include "refcount.h"
#include "snaptable.h"
#include "util.h"

#include <errno.h>

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

/* check_findings.c */
struct disputed {
    size_t msg;  /* index of the message it belongs to */
    uint64_t cluster;
};

struct chk_findings {
    /* Read by all: */
    bool quiet;          /* the pinpointing walk runs */
    struct idset traced; /* disputed clusters (pinpointing) */
    /* Private: */
    size_t msg_cap; /* allocated entries of res->msgs */
    /* pinpointing */
    struct u64map where; /* cluster -> index into wheres */
    char **wheres;
    size_t nb_wheres;
    struct disputed *disp;
    size_t nb_disp, disp_cap;
};

/* check_snaptable.c */
struct chk_snaptable {
    /* Read by all: */
    struct snap *snaps;
    uint32_t nb_snaps;
    uint64_t off, size;
    int64_t corruptions; /* fixed by rewriting the snapshot table */
    /* Private: */
    bool dirty; /* the snapshot table read needs rewriting */
};

/* check_walk.c */
struct chk_walk {
    /* Read by all: */
    uint8_t *refs; /* the expected refcounts (check.c, note 1) */
    uint64_t nb_refs;
    uint64_t past_end; /* first cluster after every reference found past
                        * the end of the file (0: none) */
    bool need_rebuild; /* the last walk met a refcount block to replace */
    uint64_t *cop1, *cop0; /* clusters with active entries with/without
                            * COPIED */
    uint64_t cop_n;        /* clusters cop1 and cop0 cover */
    bool cop_ok;        /* cop1/cop0 describe every active entry */
    /* Private: */
    uint64_t file_size, nb_clusters;
    bool fix; /* this walk may repair (first pass, -r all) */
    struct loc loc; /* where the walk is */
    /* fast paths (check.c, note 5) */
    bool multi;         /* shared L2 tables are counted once, m times */
    bool multi_used;    /* ... and some were, in this walk */
    bool overflowed;    /* an overflow was reported in this walk */
    struct u64map l2refs; /* L2 offset -> references (total << 32 | active) */
    /* With multi: by L1 index, the L2 table last found counted for all
     * its references there (0: none), so a snapshot that repeats it
     * skips the lookup. */
    uint64_t *done_at;
    uint32_t done_size;
    /* what this walk counted of the refcount structures (a repair drops
     * exactly that) */
    bool rt_counted;
    struct idset rb_counted;
};

/* check_refcounts.c */
struct chk_disk {
    /* Read by all: */
    bool rb_unreadable; /* disk_block() -EIO from a failed read, not a bad
                         * offset */
    bool equal; /* the last comparison found nothing to report */
    /* Read by disk_block() and disk_refcount() below: */
    uint8_t *rbbuf;
    uint64_t rb_idx; /* refcount block in rbbuf (UINT64_MAX: none) */
    int rb_state;    /* disk_block() result for rb_idx */
    /* Private: */
    bool signaled;   /* the corruption notice was printed */
    int64_t rc_errors; /* check errors from unusable refcount blocks */
    bool rebuild; /* a comparison met a referenced cluster of refcount 0 */
};

struct chk {
    /* Context: set by chk_init() (check.c), read by all. */
    qimg_image *img;
    struct qcow2 *q;
    unsigned fix;
    struct qimg_check_result *res; /* note 2 */
    /* One cluster, into which the walk and the COPIED check each read the
     * L2 table they are at; no stage expects its contents to outlive it. */
    uint8_t *l2buf;
    struct chk_findings find;
    struct chk_snaptable snaptab;
    struct chk_walk walk;
    struct chk_disk disk;
};

/* ---- check.c ------------------------------------------------------------- */

static inline uint64_t chk_rt_raw(const struct chk *c, uint64_t i)
{
    return be64_load(c->q->rc->rt + i * 8);
}

/* ---- check_findings.c ---------------------------------------------------- */

/* Append a message (none while quiet); `at`, if not NULL, is where. */
int findings_add(struct chk *c, const char *kind, bool is_error,
                 const struct loc *at, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
int findings_dispute(struct chk *c, uint64_t cluster);
int findings_referrer(struct chk *c, const struct loc *at, uint64_t k);

/* What findings_rollback() returns to. */
struct findings_mark {
    struct qimg_check_result res;
    size_t nb_disp;
};
void findings_save(const struct chk *c, struct findings_mark *m);
void findings_rollback(struct chk *c, const struct findings_mark *m);
void findings_restore_counts(struct chk *c,
                             const struct qimg_check_result *saved);
/* Naming the referrers of disputed clusters takes a quiet second walk
 * (check.c drives it): start_quiet is false if nothing is disputed;
 * name_referrers takes the counts from before the walk and its result (a
 * failure there is still an error of the check). */
bool findings_start_quiet(struct chk *c);
int findings_name_referrers(struct chk *c,
                            const struct qimg_check_result *keep, int ret);
void findings_free(struct chk *c);

/* ---- check_snaptable.c --------------------------------------------------- */

int chk_snaptable_read(struct chk *c);
/* 1 if it rewrote the table (freeing the old one's clusters). */
int chk_snaptable_fix(struct chk *c);
void chk_snaptable_free(struct chk *c);

/* ---- check_walk.c -------------------------------------------------------- */

int walk_calculate(struct chk *c, bool repair);
void walk_set_file_size(struct chk *c, uint64_t size);
void walk_drop_old_structures(struct chk *c);
void walk_free(struct chk *c);

static inline uint64_t walk_ref_get(const struct chk *c, uint64_t idx)
{
    if (idx >= c->walk.nb_refs)
        return 0;
    return refblock_get(c->walk.refs, idx, c->q->refcount_order);
}

/* ---- check_refcounts.c --------------------------------------------------- */

int disk_init(struct chk *c);
int disk_check(struct chk *c);
void disk_forget(struct chk *c);
void disk_free(struct chk *c);
int disk_block_load(struct chk *c, uint64_t rt_idx);
/* Take the census of live metadata a new refcount structure is checked
 * against (none if the image does not allow one). */
int check_census(qimg_image *img);

/* Load on-disk refcount block rt_idx into c->disk.rbbuf (kept until
 * c->disk.rb_idx is reset): 1 if there is one, 0 if none (all zero; so is
 * a block past the end of the file), -EIO if its offset is unusable. */
static inline int disk_block(struct chk *c, uint64_t rt_idx)
{
    if (rt_idx == c->disk.rb_idx)
        return c->disk.rb_state;
    return disk_block_load(c, rt_idx);
}

/* The on-disk refcount of cluster k, read as QEMU reads it. */
static inline int disk_refcount(struct chk *c, uint64_t k, uint64_t *rc)
{
    struct qcow2 *q = c->q;

    if (disk_block(c, k >> q->rb_bits) < 0)
        return -EIO;
    *rc = refblock_get(c->disk.rbbuf, k & ((1ull << q->rb_bits) - 1),
                       q->refcount_order);
    return 0;
}

/* ---- check_copied.c ------------------------------------------------------ */

int copied_check(struct chk *c);

#endif
