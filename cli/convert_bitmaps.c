/*
 * convert_bitmaps.c - qimg convert --bitmaps [--skip-broken-bitmaps]: the
 * source's persistent bitmaps copied into the target after the data, as
 * qemu-img 7.2 copies them (names, order, granularity, enabled or not,
 * every bit).
 *
 * qemu-img walks the bitmaps last to first, so the bitmap its messages
 * name is the last one of the directory that fails; here too. Unlike
 * qemu-img, which stores each bitmap as it copies it, the target gets all
 * of them in one commit, or none.
 */
#include "cli.h"
#include "convert.h"

#include <stdlib.h>
#include <string.h>

/* A qcow2 v3 image (the one format that stores bitmaps). */
static bool has_bitmap_support(qimg_image *img, struct qimg_info **info)
{
    *info = NULL;
    if (qimg_image_format(img) != QIMG_FMT_QCOW2 ||
        qimg_image_info(info, img) < 0)
        return false;
    return (*info)->version >= 3;
}

int conv_bitmaps_check_source(const struct conv_job *job, bool skip_broken)
{
    struct qimg_info *info;
    int ret = 0;

    if (job->nb_src > 1) {
        cli_error("Copying bitmaps only possible with single source");
        return -1;
    }
    if (!has_bitmap_support(job->src[0].img, &info)) {
        qimg_info_free(info);
        cli_error("Source lacks bitmap support");
        return -1;
    }
    for (size_t i = info->nb_bitmaps; !skip_broken && i-- > 0;)
        if (info->bitmaps[i].in_use) {
            cli_error("Cannot copy inconsistent bitmap '%s'",
                      info->bitmaps[i].name);
            fprintf(stderr, "Try --skip-broken-bitmaps, or use '%s bitmap "
                            "--remove' to delete it\n",
                    cli_prog);
            ret = -1;
            break;
        }
    qimg_info_free(info);
    return ret;
}

int conv_bitmaps_check_target(qimg_image *dst, const char *out_fmt)
{
    struct qimg_info *info;
    bool ok = has_bitmap_support(dst, &info);

    qimg_info_free(info);
    if (!ok)
        cli_error("Format driver '%s' does not support bitmaps", out_fmt);
    return ok ? 0 : -1;
}

/* The actions that make bitmap b of src in dst: add, disable, merge. */
static size_t copy_actions(const struct qimg_bitmap_info *b, qimg_image *src,
                           struct qimg_bitmap_action *a)
{
    size_t n = 0;

    a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_ADD, b->name,
                                         b->granularity, NULL, NULL};
    if (!b->is_auto)
        a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_DISABLE, b->name, 0,
                                             NULL, NULL};
    a[n++] = (struct qimg_bitmap_action){QIMG_BITMAP_MERGE, b->name, 0,
                                         b->name, src};
    return n;
}

int conv_bitmaps_copy(qimg_image *src, qimg_image *dst)
{
    struct qimg_info *si = NULL, *di = NULL;
    struct qimg_bitmap_action *acts = NULL;
    const char **owner = NULL;
    size_t n = 0, failed = 0;
    int ret = -1;

    if (qimg_image_info(&si, src) < 0 || qimg_image_info(&di, dst) < 0) {
        cli_lib_error("%s", "");
        goto out;
    }
    acts = calloc(si->nb_bitmaps * 3 + 1, sizeof *acts);
    owner = calloc(si->nb_bitmaps * 3 + 1, sizeof *owner);
    if (!acts || !owner) {
        cli_error("Out of memory");
        goto out;
    }
    /* The warnings (in use: skipped, or the source was refused before the
     * target was made) and the first clash, last bitmap first. */
    for (size_t i = si->nb_bitmaps; i-- > 0;) {
        const struct qimg_bitmap_info *b = &si->bitmaps[i];
        if (b->in_use) {
            cli_error("warning: Skipping inconsistent bitmap '%s'", b->name);
            continue;
        }
        for (size_t j = 0; j < di->nb_bitmaps; j++)
            if (!strcmp(di->bitmaps[j].name, b->name)) {
                cli_error("Failed to create bitmap %s: Bitmap already "
                          "exists: %s",
                          b->name, b->name);
                goto out;
            }
    }
    for (size_t i = 0; i < si->nb_bitmaps; i++) {
        size_t k = n;
        if (si->bitmaps[i].in_use)
            continue;
        n += copy_actions(&si->bitmaps[i], src, acts + n);
        for (; k < n; k++)
            owner[k] = si->bitmaps[i].name;
    }
    ret = n ? qimg_bitmap_change(dst, acts, n, &failed) : 0;
    if (ret < 0)
        cli_lib_error("Failed to %s bitmap %s: ",
                      acts[failed].op == QIMG_BITMAP_MERGE ? "populate"
                                                           : "create",
                      owner[failed]);
out:
    qimg_info_free(si);
    qimg_info_free(di);
    free(acts);
    free(owner);
    return ret < 0 ? -1 : 0;
}
