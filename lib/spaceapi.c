/*
 * spaceapi.c - qimg_snapshot_space(): the host space each snapshot and the
 * active disk take, what each holds alone, and the image's totals.
 *
 * One pass over the tables, no data read (qcow2-format.md §3, §4.1):
 *  1. every tree's L1 table (the active one and each snapshot's): which
 *     trees name each L2 table (one tree, or several), and the distinct
 *     tables of each tree;
 *  2. every distinct L2 table once: the host bytes it maps (compressed
 *     clusters by the sectors they occupy), and which trees name each
 *     data cluster (those naming the tables that map it);
 *  3. the refcounts of the file's clusters, and which of the free ones
 *     the file system still holds.
 * A tree's referenced bytes are its L2 tables and what they map; its
 * exclusive bytes the host clusters no other tree names (what deleting a
 * snapshot gives back, but its own L1 table and snapshot-table entry);
 * shared the difference. Compressed data counts by its sectors, and is
 * one tree's alone if every host cluster it lies in is (deleting the tree
 * then frees those whole clusters).
 */
#include "qimg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "file.h"
#include "image.h"
#include "l1l2.h"
#include "refcount.h"
#include "snaptable.h"
#include "util.h"

#define SHARED UINT32_MAX /* named by more than one tree */

struct space {
    qimg_image *img;
    const struct qcow2 *q;
    uint64_t nclusters;  /* clusters the file covers */
    uint32_t ntrees;     /* snapshots, then the active disk */
    uint32_t *owner;     /* per cluster: 0 none, tree + 1, or SHARED */
    uint32_t *seen;      /* per cluster: the last tree that listed it */
    uint64_t *mapped;    /* per cluster (L2 tables): bytes they map */
    uint64_t **tables;   /* per tree: its distinct L2 tables (clusters) */
    uint32_t *ntables;
    uint8_t *zip;        /* per cluster: holds compressed data */
    struct stream *streams; /* compressed data, as each table maps it */
    size_t nstreams, capstreams;
};

/* Compressed data one L2 table (cluster `table`) maps: its sectors, in
 * host clusters [first, last]. */
struct stream {
    uint64_t first, last, bytes, table;
};

static void own(struct space *s, uint64_t c, uint32_t tree_plus_1)
{
    if (!s->owner[c])
        s->owner[c] = tree_plus_1;
    else if (s->owner[c] != tree_plus_1)
        s->owner[c] = SHARED;
}

/* The cluster of a table offset the image can use (aligned, in the file),
 * or UINT64_MAX. */
static uint64_t table_cluster(const struct space *s, uint64_t off)
{
    if (!off || (off & (s->q->cluster_size - 1)))
        return UINT64_MAX;
    off >>= s->q->cluster_bits;
    return off < s->nclusters ? off : UINT64_MAX;
}

/* Step 1 for one tree. */
static int walk_l1(struct space *s, uint32_t tree, const uint8_t *l1,
                   uint32_t size)
{
    uint64_t *t = malloc((size ? size : 1) * sizeof *t);
    uint32_t n = 0;

    if (!t)
        return qimg_err(ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < size; i++) {
        uint64_t c = table_cluster(s, l1_entry_get(l1, i) & L1E_OFFSET_MASK);
        if (c == UINT64_MAX || s->seen[c] == tree + 1)
            continue;
        s->seen[c] = tree + 1;
        own(s, c, tree + 1);
        t[n++] = c;
    }
    s->tables[tree] = t;
    s->ntables[tree] = n;
    return 0;
}

static int add_stream(struct space *s, uint64_t first, uint64_t last,
                      uint64_t bytes, uint64_t table)
{
    if (s->nstreams == s->capstreams) {
        size_t cap = s->capstreams ? s->capstreams * 2 : 256;
        struct stream *n = realloc(s->streams, cap * sizeof *n);
        if (!n)
            return qimg_err(ENOMEM, "Out of memory");
        s->streams = n;
        s->capstreams = cap;
    }
    s->streams[s->nstreams++] = (struct stream){first, last, bytes, table};
    return 0;
}

/* Step 2 for one table: the bytes it maps, its data's owners. Each data
 * cluster is counted once per table (an entry naming one twice counts
 * once). */
static int walk_l2(struct space *s, uint64_t c, uint8_t *buf)
{
    const struct qcow2 *q = s->q;
    uint64_t bytes = 0;
    int ret = file_pread(s->img, buf, q->cluster_size, c << q->cluster_bits);

    if (ret < 0)
        return ret;
    for (uint64_t j = 0; j < q->l2_entries; j++) {
        uint64_t e = l2_entry_get(q, buf, j), first, last, off, len;
        switch (l2_cluster_type(q, e)) {
        case CL_COMPRESSED:
            l2_compressed_range(q, e, &off, &len);
            first = off >> q->cluster_bits;
            last = (off + len - 1) >> q->cluster_bits;
            ret = add_stream(s, first, last,
                             ALIGN_UP(off + len, 512) - ALIGN_DOWN(off, 512),
                             c);
            if (ret < 0)
                return ret;
            bytes += s->streams[s->nstreams - 1].bytes;
            for (uint64_t k = first; k <= last && k < s->nclusters; k++)
                s->zip[k] = 1;
            break;
        case CL_NORMAL:
        case CL_ZERO_ALLOC:
            first = last = (e & L2E_OFFSET_MASK) >> q->cluster_bits;
            bytes += q->cluster_size;
            break;
        default:
            continue;
        }
        for (uint64_t k = first; k <= last && k < s->nclusters; k++)
            own(s, k, s->owner[c]);
    }
    s->mapped[c] = bytes;
    return 0;
}

static int trees(struct space *s)
{
    const struct qcow2 *q = s->q;
    int ret = 0;

    for (uint32_t i = 0; ret == 0 && i < q->sn->nb_snaps; i++) {
        const struct snap *sn = &q->sn->snaps[i];
        uint8_t *l1 = NULL;
        if (sn->l1_size)
            ret = file_read_table(s->img, &l1, sn->l1_off,
                                  (size_t)sn->l1_size * 8,
                                  "Snapshot L1 table");
        if (ret == 0)
            ret = walk_l1(s, i, l1, l1 ? sn->l1_size : 0);
        free(l1);
    }
    if (ret == 0)
        ret = walk_l1(s, q->sn->nb_snaps, q->l1s->l1, q->l1s->l1_size);
    return ret;
}

static int tables(struct space *s)
{
    uint8_t *buf = malloc(s->q->cluster_size);
    int ret = buf ? 0 : qimg_err(ENOMEM, "Out of memory");

    /* Owners of the tables are final (step 1 done): each table once. */
    memset(s->seen, 0, s->nclusters * sizeof *s->seen);
    for (uint32_t t = 0; ret == 0 && t < s->ntrees; t++)
        for (uint32_t k = 0; ret == 0 && k < s->ntables[t]; k++) {
            uint64_t c = s->tables[t][k];
            if (s->seen[c])
                continue;
            s->seen[c] = 1;
            ret = walk_l2(s, c, buf);
        }
    free(buf);
    return ret;
}

static void usage(const struct space *s, uint32_t t, const uint64_t *excl,
                  struct qimg_space_usage *u)
{
    uint64_t ref = 0;

    for (uint32_t k = 0; k < s->ntables[t]; k++)
        ref += s->q->cluster_size + s->mapped[s->tables[t][k]];
    u->referenced_bytes = ref;
    u->exclusive_bytes = excl[t];
    u->shared_bytes = ref > excl[t] ? ref - excl[t] : 0;
}

/* Step 3 and the sums. */
static int totals(struct space *s, struct qimg_space *out)
{
    const uint64_t cs = s->q->cluster_size;
    uint64_t *excl = calloc(s->ntrees, sizeof *excl), allocated = 0;
    int ret = excl ? 0 : qimg_err(ENOMEM, "Out of memory");

    for (uint64_t c = 0; ret == 0 && c < s->nclusters; c++) {
        uint64_t rc = 0;
        struct qimg_extent e;
        /* (Compressed data counts by its sectors, below.) */
        if (s->owner[c] && s->owner[c] != SHARED && !s->zip[c])
            excl[s->owner[c] - 1] += cs;
        ret = refcount_get(s->img, c, &rc);
        if (ret < 0)
            break;
        if (rc) {
            allocated += cs;
            if (s->owner[c] && s->seen[c] != 1) /* data, not an L2 table */
                out->data_bytes += cs;
            continue;
        }
        /* The parts of the cluster the file system holds blocks for. */
        for (uint64_t o = c * cs, end = MIN((c + 1) * cs,
                                            s->q->file_size);
             ret == 0 && o < end; o += e.len) {
            ret = file_block_status(s->img, o, end - o, &e);
            if (ret == 0 && !e.len)
                break;
            if (ret == 0 && (e.flags & QIMG_BS_DATA))
                out->free_held_bytes += MIN(e.len, end - o);
        }
    }
    /* A compressed stream is one tree's alone if every host cluster it
     * lies in is. */
    for (size_t i = 0; ret == 0 && i < s->nstreams; i++) {
        const struct stream *z = &s->streams[i];
        uint32_t o = s->owner[z->table];
        bool alone = o && o != SHARED && z->last < s->nclusters;
        for (uint64_t k = z->first; alone && k <= z->last; k++)
            alone = s->owner[k] == o;
        if (alone)
            excl[o - 1] += z->bytes;
    }
    for (uint32_t t = 0; ret == 0 && t < s->ntrees; t++)
        usage(s, t, excl,
              t + 1 < s->ntrees ? &out->snapshots[t] : &out->active);
    out->metadata_bytes = allocated - out->data_bytes;
    out->reclaimable_bytes = out->free_held_bytes;
    free(excl);
    return ret;
}

void qimg_space_free(struct qimg_space *s)
{
    if (!s)
        return;
    free(s->snapshots);
    free(s);
}

int qimg_snapshot_space(struct qimg_space **out, qimg_image *img)
{
    struct space s = {img, img->q, 0,    0,    NULL, NULL, NULL,
                      NULL, NULL, NULL, NULL, 0,    0};
    struct qimg_space *r;
    int ret = 0;

    *out = NULL;
    if (!img->q)
        return qimg_err(ENOTSUP, "This image format does not support "
                                 "snapshots");
    s.nclusters = DIV_ROUND_UP(img->q->file_size, img->q->cluster_size);
    s.ntrees = img->q->sn->nb_snaps + 1;
    r = calloc(1, sizeof *r);
    s.owner = calloc(s.nclusters + 1, sizeof *s.owner);
    s.seen = calloc(s.nclusters + 1, sizeof *s.seen);
    s.mapped = calloc(s.nclusters + 1, sizeof *s.mapped);
    s.zip = calloc(s.nclusters + 1, 1);
    s.tables = calloc(s.ntrees, sizeof *s.tables);
    s.ntables = calloc(s.ntrees, sizeof *s.ntables);
    if (r)
        r->snapshots = calloc(s.ntrees, sizeof *r->snapshots);
    if (!r || !r->snapshots || !s.owner || !s.seen || !s.mapped ||
        !s.tables || !s.ntables || !s.zip)
        ret = qimg_err(ENOMEM, "Out of memory");
    if (ret == 0)
        ret = trees(&s);
    if (ret == 0)
        ret = tables(&s);
    if (ret == 0) {
        r->nb_snapshots = s.ntrees - 1;
        ret = totals(&s, r);
    }
    for (uint32_t t = 0; s.tables && t < s.ntrees; t++)
        free(s.tables[t]);
    free(s.tables);
    free(s.ntables);
    free(s.owner);
    free(s.seen);
    free(s.mapped);
    free(s.zip);
    free(s.streams);
    if (ret < 0) {
        qimg_space_free(r);
        return ret;
    }
    *out = r;
    return 0;
}
