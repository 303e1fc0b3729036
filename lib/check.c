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
 *
 * The files, one concept each (check_impl.h: their shared state and who
 * writes what): this file, the entry point and the order of the stages;
 * check_findings.c, messages and referrers (notes 2 and 4);
 * check_walk.c, the walk and its fast paths (notes 1 and 5);
 * check_refcounts.c, the comparison and the refcount repairs (notes 1 and
 * 3); check_copied.c, COPIED; check_snaptable.c, the snapshot table.
 */
#include "check_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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
    chk_snaptable_free(c);
    walk_free(c);
    free(c->l2buf);
    disk_free(c);
    findings_free(c);
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
    uint64_t file_size;

    memset(c, 0, sizeof *c);
    c->img = img;
    c->q = img->q;
    c->fix = fix;
    c->res = res;
    if (fix && !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (file_get_size(img, &file_size) < 0) {
        res->check_errors++;
        return qimg_err(EIO, "Could not get the image size");
    }
    /* Lengths count whole 512-byte sectors (QEMU measures files so). */
    file_size = ALIGN_UP(file_size, 512);
    file_extend(img, file_size);
    walk_set_file_size(c, file_size);
    c->l2buf = malloc(c->q->cluster_size);
    if (disk_init(c) < 0 || !c->l2buf)
        return qimg_err(ENOMEM, "Out of memory");
    if (fix)
        return qcow2_flush(img);
    return 0;
}

/* Name the referrers of every disputed cluster: a quiet second walk. */
static int pinpoint(struct chk *c)
{
    struct qimg_check_result keep = *c->res;

    if (!findings_start_quiet(c))
        return 0;
    return findings_name_referrers(c, &keep, walk_calculate(c, false));
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
        ret = chk_snaptable_read(&c);
    if (ret == 0)
        ret = disk_check(&c);
    if (ret == 0)
        ret = copied_check(&c);
    if (ret == 0)
        ret = chk_snaptable_fix(&c);
    /* The old table's clusters are free now; one that data shared (a
     * table running over a data cluster) may now need COPIED. QEMU's
     * repair leaves that flag wrong. */
    if (ret == 1)
        ret = copied_check(&c);
    if (ret == 0)
        ret = pinpoint(&c);
    if (ret == 0 && fix && !res->check_errors && !res->corruptions)
        ret = mark_clean(&c);
    chk_free(&c);
    if (fix) /* the census a rebuild took describes the old image */
        meta_reset(img);
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
