/*
 * cmd_diff.c - qimg diff: the guest ranges that changed between two
 * internal snapshots, or a snapshot and the active disk (no qemu-img
 * command does this).
 *
 *   qimg diff [--output=human|json] [--exact] [-f fmt] [-U] FILE FROM [TO]
 *
 * The library finds the ranges from the tables alone (equal mappings are
 * equal content); --exact then reads both sides where the mappings differ
 * and drops the clusters whose bytes are equal. JSON as qemu-img map
 * prints it: one object per line, {"start", "length", "zero"}, where zero
 * says the range reads as zeros in TO.
 */
#include "cli.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct diff_args {
    const char *file, *from, *to, *fmt;
    bool json, exact, force_share;
};

static int parse_args(int argc, char **argv, struct diff_args *a)
{
    enum { OPT_OUTPUT = 256, OPT_EXACT };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"exact", no_argument, NULL, OPT_EXACT},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            a->fmt = optarg;
            break;
        case 'U':
            a->force_share = true;
            break;
        case OPT_OUTPUT:
            if (cli_output_json(optarg, &a->json))
                return 1;
            break;
        case OPT_EXACT:
            a->exact = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (argc - optind < 2 || argc - optind > 3)
        return cli_usage_error("Expecting an image file name, a snapshot "
                               "and optionally a second one");
    a->file = argv[optind];
    a->from = argv[optind + 1];
    a->to = argc - optind == 3 ? argv[optind + 2] : NULL;
    return 0;
}

/* A read-only view of snapshot `spec` (NULL: the active disk). */
static int open_view(const struct diff_args *a, const char *spec,
                     qimg_image **out)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;

    o.force_share = a->force_share;
    o.snapshot = spec;
    return cli_open(out, a->file, a->fmt, false, &o);
}

/* --exact: keep the clusters of e whose bytes differ (appended to *out). */
static int refine(qimg_image *vf, qimg_image *vt, uint64_t cs,
                  const struct qimg_diff_extent *e,
                  struct qimg_diff_extent **out, size_t *n, size_t *cap)
{
    uint8_t *x = malloc(cs), *y = malloc(cs);
    uint64_t fsize = qimg_image_size(vf);
    int ret = x && y ? 0 : -1;

    for (uint64_t g = e->start; ret == 0 && g < e->start + e->length;
         g += cs) {
        uint64_t len = e->start + e->length - g < cs
                           ? e->start + e->length - g
                           : cs;
        bool differ = g + len > fsize;
        if (!differ) {
            if (qimg_image_read(vf, x, len, g) < 0 ||
                qimg_image_read(vt, y, len, g) < 0) {
                ret = -1;
                break;
            }
            differ = memcmp(x, y, len) != 0;
        }
        if (!differ)
            continue;
        if (*n && (*out)[*n - 1].start + (*out)[*n - 1].length == g &&
            (*out)[*n - 1].zero == e->zero) {
            (*out)[*n - 1].length += len;
            continue;
        }
        if (*n == *cap) {
            struct qimg_diff_extent *r =
                realloc(*out, (*cap = *cap ? *cap * 2 : 64) * sizeof *r);
            if (!r) {
                ret = -1;
                break;
            }
            *out = r;
        }
        (*out)[(*n)++] = (struct qimg_diff_extent){g, len, e->zero};
    }
    free(x);
    free(y);
    return ret;
}

static int exact(const struct diff_args *a, qimg_image *img,
                 struct qimg_diff_extent **ext, size_t *n)
{
    struct qimg_diff_extent *out = NULL;
    size_t m = 0, cap = 0;
    qimg_image *vf = NULL, *vt = NULL;
    struct qimg_info *info = NULL;
    uint64_t cs = 65536;
    int ret = 0;

    if (qimg_image_info(&info, img) == 0 && info->cluster_size)
        cs = info->cluster_size;
    qimg_info_free(info);
    if (open_view(a, a->from, &vf) < 0 ||
        (a->to && open_view(a, a->to, &vt) < 0))
        ret = -1;
    for (size_t i = 0; ret == 0 && i < *n; i++)
        ret = refine(vf, vt ? vt : img, cs, &(*ext)[i], &out, &m, &cap);
    if (ret < 0 && qimg_last_error()->message[0])
        cli_lib_error("%s", "");
    qimg_image_close(vf);
    qimg_image_close(vt);
    qimg_diff_free(*ext);
    *ext = out;
    *n = m;
    return ret;
}

static void print(const struct diff_args *a, const struct qimg_diff_extent *e,
                  size_t n)
{
    if (!a->json) {
        printf("%-16s%-16s%s\n", "Offset", "Length", "Zero");
        for (size_t i = 0; i < n; i++)
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%s\n", e[i].start,
                   e[i].length, e[i].zero ? "yes" : "no");
        return;
    }
    putchar('[');
    for (size_t i = 0; i < n; i++)
        printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
               ", \"zero\": %s}%s",
               e[i].start, e[i].length, e[i].zero ? "true" : "false",
               i + 1 < n ? ",\n" : "");
    puts("]");
}

int cmd_diff(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct qimg_diff_extent *e = NULL;
    struct diff_args a;
    qimg_image *img = NULL;
    size_t n = 0;
    int ret = parse_args(argc, argv, &a);

    if (ret)
        return ret;
    o.force_share = a.force_share;
    if (cli_open(&img, a.file, a.fmt, false, &o) < 0)
        return 1;
    ret = qimg_snapshot_diff(img, a.from, a.to, &e, &n);
    if (ret < 0)
        cli_lib_error("%s", "");
    if (ret == 0 && a.exact)
        ret = exact(&a, img, &e, &n);
    if (ret == 0)
        print(&a, e, n);
    qimg_diff_free(e);
    qimg_image_close(img);
    return ret < 0 ? 1 : 0;
}
