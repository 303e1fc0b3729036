/*
 * convert_diff.c - qimg convert [-l TO] --diff-from FROM: a target holding
 * only the ranges of TO (a snapshot, or the active disk) that changed
 * since snapshot FROM (qimg_snapshot_diff), each written whole: data as
 * data, ranges that read as zeros as zeros (marked zero, so that they do
 * not read through a backing file). Everything else stays unallocated:
 * put on top of an export of FROM (rebase -u, or -B at conversion), the
 * target reads as TO.
 */
#include "cli.h"
#include "convert.h"

#include <stdlib.h>
#include <string.h>

#define DIFF_BUF (2u << 20)

static int copy_extent(struct conv_job *job, const struct qimg_diff_extent *e,
                       uint8_t *buf)
{
    qimg_image *src = job->src[0].img;

    if (e->zero)
        return qimg_image_write_zeroes(job->dst, e->start, e->length, 0);
    for (uint64_t o = e->start; o < e->start + e->length; o += DIFF_BUF) {
        size_t n = (size_t)MIN(DIFF_BUF, e->start + e->length - o);
        if (qimg_image_read(src, buf, n, o) < 0 ||
            qimg_image_write(job->dst, buf, n, o) < 0)
            return -1;
    }
    return 0;
}

int conv_diff_copy(struct conv_job *job, const char *file, const char *fmt,
                   const char *from, const char *to)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct qimg_diff_extent *e = NULL;
    qimg_image *img = NULL;
    uint8_t *buf = data_buf_alloc(DIFF_BUF);
    size_t n = 0;
    int ret = buf ? 0 : -1;

    o.force_share = true; /* the source is open already, read-only */
    if (ret == 0 && cli_open(&img, file, fmt, false, &o) < 0)
        ret = -2;
    if (ret == 0 && qimg_snapshot_diff(img, from, to, &e, &n) < 0)
        ret = -1;
    for (size_t i = 0; ret == 0 && i < n; i++) {
        ret = copy_extent(job, &e[i], buf);
        progress_print((float)(100.0 * (double)(i + 1) / (double)n), 0);
    }
    if (ret == -1)
        cli_lib_error("%s", "");
    qimg_diff_free(e);
    qimg_image_close(img);
    free(buf);
    return ret < 0 ? -1 : 0;
}
