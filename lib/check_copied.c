/*
 * check_copied.c - the COPIED flags of the active L1 and L2 tables:
 * checked against the on-disk refcounts, and repaired in place (check.c,
 * notes 3 and 5; qcow2-format.md §3.7).
 *
 * No state of its own: it reads the refcounts on disk through
 * check_refcounts.c, and the COPIED bits the walk recorded from
 * check_walk.c. Snapshot tables carry no COPIED flags to check.
 */
#include "check_impl.h"

#include <errno.h>
#include <string.h>

/* For the COPIED checks: 0 with the refcount, 1 to skip the entry. QEMU
 * skips silently when it cannot get a refcount (an unusable block); a
 * failed read is reported here, as a check error. */
static int copied_refcount(struct chk *c, uint64_t k, uint64_t *rc)
{
    if (disk_refcount(c, k, rc) == 0)
        return 0;
    if (!c->disk.rb_unreadable)
        return 1;
    c->res->check_errors++;
    return findings_add(c, "io", true, NULL,
                        "Can't get refcount for cluster %" PRIu64 ": %s", k,
                        "Input/output error") < 0 ? -ENOMEM : 1;
}

static int copied_l2(struct chk *c, uint32_t i, uint64_t l2_off, bool repair)
{
    struct qcow2 *q = c->q;
    struct loc at;
    int dirty = 0, ret;

    ret = file_pread(c->img, c->l2buf, q->cluster_size, l2_off);
    if (ret < 0) {
        c->res->check_errors++;
        return findings_add(c, "io", true, NULL,
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
        at = (struct loc){LOC_L2_ENTRY, -1, i, (int64_t)j};
        ret = findings_add(c, "copied", true, &at,
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
        findings_add(c, "io", true, NULL, "ERROR: Could not write L2 table: %s",
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
    /* Locals: fewer reloads through c around each memcmp() call. */
    const uint64_t *cop1 = c->walk.cop1, *cop0 = c->walk.cop0;
    const uint8_t *refs = c->walk.refs;
    uint64_t nb_refs = c->walk.nb_refs, nb_words = c->walk.cop_n / 64;

    for (uint64_t w = 0; w < nb_words; w++) {
        uint64_t m1 = cop1[w], m0 = cop0[w];
        if (wide && m1 == UINT64_MAX && !m0 &&
            (w + 1) * 64 <= nb_refs) {
            /* 64 COPIED clusters (the usual word): all counts are 1. */
            if (memcmp(refs + w * 128, be16_ones, sizeof be16_ones))
                return false;
            continue;
        }
        if (wide && (m1 | m0) && (w + 1) * 64 <= nb_refs) {
            /* 16-bit counts (the default): all 64, without branches. */
            const uint8_t *p = refs + w * 128;
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
            uint64_t bit = 1ull << b, rc = walk_ref_get(c, w * 64 + b);
            if (((m1 & bit) && rc != 1) || ((m0 & bit) && rc == 1))
                return false;
            m1 &= ~bit;
            m0 &= ~bit;
        }
    }
    return true;
}

int copied_check(struct chk *c)
{
    struct qcow2 *q = c->q;
    struct loc at;
    bool repair, fast;
    int ret = 0;

    disk_forget(c); /* refcounts may have been repaired */
    fast = c->disk.equal && c->walk.cop_ok && copied_flags_agree(c);
    if (c->fix & QIMG_CHECK_FIX_ERRORS)
        repair = true;
    else if (c->fix & QIMG_CHECK_FIX_LEAKS)
        /* QEMU keeps the snapshot table's findings apart here. */
        repair = !c->res->check_errors && !c->res->leaks &&
                 c->res->corruptions == c->snaptab.corruptions;
    else
        repair = false;
    for (uint32_t i = 0; i < q->l1s->l1_size && ret == 0; i++) {
        uint64_t e = l1_entry_get(q->l1s->l1, i), l2_off = e & L1E_OFFSET_MASK,
                 rc;
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
            at = (struct loc){LOC_L1_ENTRY, -1, i, -1};
            ret = findings_add(c, "copied", true, &at,
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
