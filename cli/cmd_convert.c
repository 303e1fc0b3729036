/*
 * cmd_convert.c - qimg convert: copy images (or an internal snapshot of
 * one) into a new or existing raw or qcow2 image.
 *
 *   qimg convert [-U] [-c] [-p] [-q] [-n] [-f fmt] [-O output_fmt]
 *                [-B backing_file -F backing_fmt] [-o options]
 *                [-l snapshot_param] [-S sparse_size] [-t cache]
 *                [-T src_cache] [-m num] [-W] [-r rate] [--image-opts]
 *                [--target-is-zero] [--bitmaps [--skip-broken-bitmaps]]
 *                [--diff-from SNAPSHOT] filename [filename2 [...]] output
 *
 * Follows qemu-img 7.2 step by step, since the step decides which message
 * the user sees: option syntax; the file count; opening every source; the
 * snapshot; the target format and its -o list; backing and compression
 * checks; creating the target (or, with -n, opening it and checking its
 * size); then the copy (convert_copy.c). -p prints "    (0.00/100%)\r"
 * before the sources are opened and a newline at the end, even after an
 * error, as qemu-img does. Several sources are concatenated.
 *
 * Past its first GiB the target's data goes straight to the disk
 * (O_DIRECT: no page cache to fill and write back, about twice as fast
 * here for gigabytes) unless -t names a mode that uses the page cache
 * (writeback, writethrough, unsafe); either way the target is flushed
 * before qimg exits.
 *
 * Differences: -T, -m, -W and -r are checked and then ignored (one
 * synchronous copy), -t unsafe still flushes; --object and
 * --target-image-opts are not offered. Converting onto one
 * of the sources (or a backing file of one) is refused before the target
 * is created, with qemu-img's lock message, so the source is never
 * truncated.
 */
#include "cli.h"
#include "convert.h"
#include "create_opts.h"

#include <getopt.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define IO_BUF_SIZE (2u << 20)   /* qemu-img's default request size */
#define MAX_BUF_SIZE (16u << 20) /* and its largest */

struct conv_args {
    const char *fmt, *out_fmt, *backing, *backing_fmt;
    const char *src_cache, *dst_cache;
    char *options; /* every -o, joined with ',' */
    bool has_snapshot, sn_plain;
    char *sn_id, *sn_name;
    bool compress, copy_range, progress, quiet, skip_create, force_share;
    bool image_opts, target_is_zero, salvage, bitmaps, skip_broken;
    const char *diff_from; /* --diff-from SNAPSHOT */
    uint64_t min_sparse;
    bool explicit_sparse;
    char **srcs;
    int nb_src;
    const char *dst;
};

enum {
    OPT_OBJECT = 256,
    OPT_IMAGE_OPTS,
    OPT_TARGET_IS_ZERO,
    OPT_SALVAGE,
    OPT_BITMAPS,
    OPT_SKIP_BROKEN,
    OPT_DIFF_FROM,
};

/* "qimg: <message>"; returns -1. */
static int fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static int fail(const char *fmt, ...)
{
    char msg[4096];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cli_error("%s", msg);
    return -1;
}

/* ---- Arguments --------------------------------------------------------- */

static int bad_suffix(const char *what)
{
    cli_bad_number(what);
    return -1;
}

static int set_sparse(struct conv_args *a, const char *arg)
{
    uint64_t v;

    if (parse_size(arg, &v) < 0)
        return bad_suffix("buffer size for sparse output");
    if (v % 512 || v > MAX_BUF_SIZE) {
        cli_error("Invalid buffer size for sparse output specified. Valid "
                  "sizes are multiples of 512 up to %u. Select 0 to disable "
                  "sparse detection (fully allocates output).",
                  MAX_BUF_SIZE);
        return -1;
    }
    a->min_sparse = v;
    a->explicit_sparse = true;
    return 0;
}

static int check_coroutines(const char *arg)
{
    char *end;
    long n = strtol(arg, &end, 10);

    if (end == arg || *end || n < 1 || n > 16) {
        cli_error("Invalid number of coroutines. Allowed number of "
                  "coroutines is between 1 and 16");
        return -1;
    }
    return 0;
}

static int set_snapshot(struct conv_args *a, const char *arg)
{
    free(a->sn_id);
    free(a->sn_name);
    a->has_snapshot = true;
    return conv_parse_snapshot(arg, &a->sn_id, &a->sn_name, &a->sn_plain);
}

/* One option; returns 0, or -1 when the command is to fail. */
static int take_option(struct conv_args *a, int c, const char *arg)
{
    uint64_t v;

    switch (c) {
    case 'f':
        a->fmt = arg;
        break;
    case 'O':
        a->out_fmt = arg;
        break;
    case 'B':
        a->backing = arg;
        break;
    case 'F':
        a->backing_fmt = arg;
        break;
    case 'C':
        a->copy_range = true;
        break;
    case 'c':
        a->compress = true;
        break;
    case 'o':
        return copts_append(&a->options, arg);
    case 'l':
        return set_snapshot(a, arg);
    case 'S':
        return set_sparse(a, arg);
    case 'p':
        a->progress = true;
        break;
    case 't':
        a->dst_cache = arg;
        break;
    case 'T':
        a->src_cache = arg;
        break;
    case 'q':
        a->quiet = true;
        break;
    case 'n':
        a->skip_create = true;
        break;
    case 'm':
        return check_coroutines(arg);
    case 'W':
        break;
    case 'U':
        a->force_share = true;
        break;
    case 'r':
        return parse_size(arg, &v) < 0 ? bad_suffix("rate limit") : 0;
    case OPT_OBJECT:
        break;
    case OPT_IMAGE_OPTS:
        a->image_opts = true;
        break;
    case OPT_TARGET_IS_ZERO:
        a->target_is_zero = true;
        break;
    case OPT_SALVAGE:
        a->salvage = true;
        break;
    case OPT_BITMAPS:
        a->bitmaps = true;
        break;
    case OPT_SKIP_BROKEN:
        a->skip_broken = true;
        break;
    case OPT_DIFF_FROM:
        a->diff_from = arg;
        break;
    }
    return 0;
}

/* Options; returns -1 to go on, or the exit code. */
static int parse_options(struct conv_args *a, int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {"target-is-zero", no_argument, NULL, OPT_TARGET_IS_ZERO},
        {"salvage", no_argument, NULL, OPT_SALVAGE},
        {"bitmaps", no_argument, NULL, OPT_BITMAPS},
        {"skip-broken-bitmaps", no_argument, NULL, OPT_SKIP_BROKEN},
        {"diff-from", required_argument, NULL, OPT_DIFF_FROM},
        {NULL, 0, NULL, 0},
    };
    int c;

    a->min_sparse = 8 * 512;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:O:B:Cco:l:S:pt:T:qnm:WUr:F:",
                            long_opts, NULL)) != -1) {
        if (c == 'h') {
            cli_help();
            return 0;
        }
        if (c == '?' || c == ':')
            return cli_getopt_error(c, argv[optind - 1]);
        if (take_option(a, c, optarg) < 0)
            return 1;
    }
    return -1;
}

/* The checks qemu-img makes once all options are read, up to "-o help";
 * returns -1 to go on, or the exit code. */
static int check_args(struct conv_args *a, int argc, char **argv)
{
    int ret = 0;

    if (!a->out_fmt)
        a->out_fmt = "raw";
    if (a->skip_broken && !a->bitmaps)
        ret = fail("Use of --skip-broken-bitmaps requires --bitmaps");
    else if (a->compress && a->copy_range)
        ret = fail("Cannot enable copy offloading when -c is used");
    else if (a->skip_create && a->options)
        ret = fail("-o has no effect when skipping image creation");
    else if (a->target_is_zero && !a->skip_create)
        ret = fail("--target-is-zero requires use of -n flag");
    if (ret < 0)
        return 1;
    a->nb_src = argc - optind - 1;
    a->srcs = argv + optind;
    a->dst = a->nb_src >= 1 ? argv[argc - 1] : NULL;
    if (a->options && copts_has_help(a->options))
        return copts_print_help(a->out_fmt, a->dst);
    if (a->nb_src < 1)
        ret = fail("Must specify image file name");
    else if (a->src_cache && !cache_mode_ok(a->src_cache))
        ret = fail("Invalid source cache option: %s", a->src_cache);
    else if (a->dst_cache && !cache_mode_ok(a->dst_cache))
        ret = fail("Invalid cache option: %s", a->dst_cache);
    if (ret < 0)
        return 1;
    if (a->diff_from && (a->nb_src != 1 || strcmp(a->out_fmt, "qcow2") ||
                         a->compress || a->skip_create))
        ret = fail("--diff-from needs one qcow2 source and a new qcow2 "
                   "target (-O qcow2, no -c or -n)");
    if (ret < 0)
        return 1;
    if (a->quiet)
        a->progress = false;
    return -1;
}

/* ---- Sources ----------------------------------------------------------- */

/* Open one source, with `snapshot` (a library snapshot spec) or not. */
static int open_source(const struct conv_args *a, int i, const char *snapshot,
                       qimg_image **out)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    const char *name = a->srcs[i];
    char *path = NULL;

    o.force_share = a->force_share;
    o.snapshot = snapshot;
    if (a->image_opts && parse_image_opts(name, &path, &o) < 0)
        return -1;
    if (!a->image_opts && a->fmt && parse_format(a->fmt, &o.fmt) < 0) {
        cli_error("Could not open '%s': Unknown driver '%s'", name, a->fmt);
        return -1;
    }
    if (qimg_image_open(out, path ? path : name, &o) < 0) {
        if (snapshot)
            cli_lib_error("Failed to load snapshot: ");
        else
            cli_lib_error("Could not open '%s': ", name);
        free(path);
        return -1;
    }
    free(path);
    return 0;
}

static uint64_t cluster_of(qimg_image *img)
{
    struct qimg_info *info;
    uint64_t cs = 512;

    if (qimg_image_info(&info, img) == 0) {
        if (info->cluster_size > cs)
            cs = info->cluster_size;
        qimg_info_free(info);
    }
    return cs;
}

static int open_sources(struct conv_job *job, const struct conv_args *a)
{
    job->src = calloc((size_t)a->nb_src, sizeof *job->src);
    if (!job->src)
        return fail("Out of memory");
    job->nb_src = (size_t)a->nb_src;
    for (int i = 0; i < a->nb_src; i++) {
        struct conv_src *s = &job->src[i];
        s->name = a->srcs[i];
        if (open_source(a, i, NULL, &s->img) < 0)
            return -1;
        s->size = (qimg_image_size(s->img) + 511) / 512 * 512;
        s->avail = qimg_image_size(s->img);
        s->start = job->total;
        s->align = cluster_of(s->img);
        job->total += s->size;
    }
    return 0;
}

/* "snapshot.id=..,snapshot.name=.." for the library, or NULL when an ID
 * or name holds a comma (the library's spec cannot carry one): then the
 * snapshot is looked up here and named by its ID alone. */
static char *snapshot_spec(const struct conv_args *a, qimg_image *img)
{
    const char *id = a->sn_id, *name = a->sn_name;
    struct qimg_snapshot *l = NULL;
    size_t n = 0, i = 0;
    char *spec;

    if (a->sn_plain)
        return strdup(a->sn_id);
    if ((id && strchr(id, ',')) || (name && strchr(name, ','))) {
        if (qimg_snapshot_list(&l, &n, img) < 0)
            n = 0;
        while (i < n && !((!id || !strcmp(l[i].id, id)) &&
                          (!name || !strcmp(l[i].name, name))))
            i++;
        id = i < n ? l[i].id : "";
        name = NULL;
    }
    spec = malloc(strlen(id ? id : "") + strlen(name ? name : "") + 32);
    if (spec)
        sprintf(spec, "%s%s%s%s%s", id ? "snapshot.id=" : "", id ? id : "",
                id && name ? "," : "", name ? "snapshot.name=" : "",
                name ? name : "");
    qimg_snapshot_list_free(l, n);
    return spec;
}

/* -l: reopen the first source as a view of the snapshot. */
static int load_snapshot(struct conv_job *job, const struct conv_args *a)
{
    struct conv_src *s = &job->src[0];
    char *spec;
    int ret;

    if (!a->has_snapshot)
        return 0;
    if (a->sn_plain && a->nb_src > 1)
        return fail("No support for concatenating multiple snapshot");
    spec = snapshot_spec(a, s->img);
    if (!spec)
        return fail("Out of memory");
    qimg_image_close(s->img);
    s->img = NULL;
    ret = open_source(a, 0, spec, &s->img);
    free(spec);
    if (ret < 0)
        return -1;
    /* qemu-img keeps the active disk's size for a snapshot of another
     * size: a longer one is cut, a shorter one reads on from the backing
     * file or as zeros. */
    s->avail = MIN(qimg_image_size(s->img), s->size);
    return 0;
}

/* ---- Target ------------------------------------------------------------ */

/* Is `dst` one of the files the sources read (backing files included)?
 * QEMU would find it locked. */
static bool dst_in_use(const struct conv_job *job, const char *dst)
{
    for (size_t i = 0; i < job->nb_src; i++) {
        qimg_image *img = job->src[i].img;
        if (cli_same_file(job->src[i].name, dst))
            return true;
        for (; img; img = qimg_image_backing(img)) {
            struct qimg_info *info;
            bool hit = false;
            if (qimg_image_info(&info, img) < 0)
                break;
            hit = info->full_backing_file &&
                  cli_same_file(info->full_backing_file, dst);
            qimg_info_free(info);
            if (hit)
                return true;
        }
    }
    return false;
}

/* What qemu-img says when the target's lock is held (by its sources). */
static void lock_error(const char *lead, const char *dst)
{
    cli_error("%sFailed to get \"write\" lock", lead);
    fprintf(stderr, "Is another process using the image [%s]?\n", dst);
}

/* -o, -B, -F: the creation options. Returns 0 or -1 (printed). */
static int creation_options(struct conv_create *cc, const struct conv_args *a,
                            const struct conv_job *job)
{
    if (parse_format(a->out_fmt, &cc->fmt) < 0)
        return fail("Unknown file format '%s'", a->out_fmt);
    if (a->options && conv_opts_parse(cc, a->options) < 0)
        return -1;
    if (a->backing && cc->fmt == QIMG_FMT_RAW)
        return fail("Backing file not supported for file format '%s'",
                    a->out_fmt);
    if (a->backing_fmt && cc->fmt == QIMG_FMT_RAW)
        return fail("Backing file format not supported for file "
                    "format '%s'",
                    a->out_fmt);
    if (a->backing)
        conv_opts_set(cc, CO_BACKING_FILE, a->backing);
    if (a->backing_fmt)
        conv_opts_set(cc, CO_BACKING_FMT, a->backing_fmt);
    if (job->nb_src > 1 && cc->val[CO_BACKING_FILE])
        return fail("Having a backing file for the target makes no "
                    "sense when concatenating multiple input images");
    if (cc->val[CO_BACKING_FILE] && !cc->val[CO_BACKING_FMT])
        return fail("Use of backing file requires explicit backing "
                    "format");
    if (a->compress && cc->fmt == QIMG_FMT_RAW)
        return fail("Compression not supported for this file format");
    if (a->compress && cc->val[CO_PREALLOC] &&
        strcmp(cc->val[CO_PREALLOC], "off"))
        return fail("Compression and preallocation not supported at "
                    "the same time");
    return 0;
}

static int create_target(const struct conv_args *a, struct conv_job *job,
                         bool *has_backing)
{
    struct conv_create cc = {0};
    struct qimg_create_opts o;
    int ret = -1;

    if (creation_options(&cc, a, job) < 0)
        goto out;
    *has_backing = cc.val[CO_BACKING_FILE] != NULL;
    if (dst_in_use(job, a->dst)) {
        char lead[4096];
        snprintf(lead, sizeof lead, "%s: error while converting %s: ", a->dst,
                 a->out_fmt);
        lock_error(lead, a->dst);
        goto out;
    }
    if (conv_opts_to_lib(&cc, job->total, a->dst, &o) < 0)
        goto out;
    if (qimg_image_create(a->dst, &o) < 0)
        cli_lib_error("%s: error while converting %s: ", a->dst, a->out_fmt);
    else
        ret = 0;
out:
    conv_opts_free(&cc);
    return ret;
}

/* Whether the -t cache mode (default: none) bypasses the page cache. */
static bool direct_cache_mode(const char *m)
{
    return !m || !strcmp(m, "none") || !strcmp(m, "off") ||
           !strcmp(m, "directsync");
}

static int open_target(const struct conv_args *a, struct conv_job *job)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;

    o.read_write = true;
    o.direct_data = direct_cache_mode(a->dst_cache);
    if (parse_format(a->out_fmt, &o.fmt) < 0) {
        cli_error("Could not open '%s': Unknown driver '%s'", a->dst,
                  a->out_fmt);
        return -1;
    }
    if (a->skip_create && dst_in_use(job, a->dst)) {
        char lead[4096];
        snprintf(lead, sizeof lead, "Could not open '%s': ", a->dst);
        lock_error(lead, a->dst);
        return -1;
    }
    if (qimg_image_open(&job->dst, a->dst, &o) < 0) {
        cli_lib_error("Could not open '%s': ", a->dst);
        return -1;
    }
    return 0;
}

/* Target properties the copy depends on; checks -n targets. */
static int setup_job(const struct conv_args *a, struct conv_job *job,
                     bool has_backing)
{
    enum qimg_format fmt = qimg_image_format(job->dst);
    qimg_image *backing = qimg_image_backing(job->dst);
    uint64_t sparse_sectors = a->min_sparse / 512, align = 1;

    if (a->compress && fmt != QIMG_FMT_QCOW2)
        return fail("Compression not supported for this file format");
    if (a->skip_create &&
        (qimg_image_size(job->dst) + 511) / 512 * 512 < job->total)
        return fail("output file is smaller than input file");
    if (a->skip_create)
        has_backing = a->backing != NULL;
    job->dst_has_backing = has_backing;
    job->dst_backing_size = has_backing && !a->skip_create && backing
                                ? qimg_image_size(backing)
                                : UINT64_MAX;
    job->dst_zero_init =
        a->target_is_zero || (!a->skip_create && a->min_sparse && !has_backing);
    job->compressed = a->compress;
    job->dst_cluster = fmt == QIMG_FMT_QCOW2 ? cluster_of(job->dst) : 512;
    job->buf_size = MIN(MAX_BUF_SIZE, MAX(IO_BUF_SIZE, job->dst_cluster));
    if (job->compressed)
        job->buf_size = job->dst_cluster;
    job->min_sparse = a->min_sparse;
    job->salvage = a->salvage;
    job->quiet = a->quiet;
    while (align * 2 <= sparse_sectors)
        align *= 2;
    job->align = align * 512;
    return 0;
}

/* --diff-from names a snapshot of the source (an ID or a name): checked
 * before the target is made. */
static bool has_snapshot(qimg_image *img, const char *spec)
{
    struct qimg_snapshot *l = NULL;
    size_t n = 0;
    bool found = false;

    if (qimg_snapshot_list(&l, &n, img) < 0)
        return false;
    for (size_t i = 0; i < n && !found; i++)
        found = !strcmp(l[i].id, spec) || !strcmp(l[i].name, spec);
    qimg_snapshot_list_free(l, n);
    return found;
}

/* Everything after the argument checks; returns 0 or -1. */
static int run(const struct conv_args *a, struct conv_job *job)
{
    bool has_backing = false;

    if (open_sources(job, a) < 0 || load_snapshot(job, a) < 0)
        return -1;
    if (a->bitmaps && conv_bitmaps_check_source(job, a->skip_broken) < 0)
        return -1;
    if (a->diff_from && !has_snapshot(job->src[0].img, a->diff_from))
        return fail("Snapshot '%s' not found", a->diff_from);
    /* The delta has TO's size (a snapshot's own, not the active disk's as
     * a plain convert -l keeps). */
    if (a->diff_from) {
        job->src[0].size = (qimg_image_size(job->src[0].img) + 511) / 512 *
                           512;
        job->src[0].avail = qimg_image_size(job->src[0].img);
        job->total = job->src[0].size;
    }
    if (!a->skip_create && create_target(a, job, &has_backing) < 0)
        return -1;
    if (open_target(a, job) < 0 || setup_job(a, job, has_backing) < 0)
        return -1;
    if (a->bitmaps && conv_bitmaps_check_target(job->dst, a->out_fmt) < 0)
        return -1;
    if (a->diff_from
            ? conv_diff_copy(job, a->srcs[0], a->fmt, a->diff_from,
                             a->sn_name ? a->sn_name : a->sn_id)
            : conv_copy(job))
        return -1;
    if (a->bitmaps && conv_bitmaps_copy(job->src[0].img, job->dst) < 0)
        return -1;
    if (qimg_image_close(job->dst) < 0) {
        job->dst = NULL;
        cli_lib_error("%s", "");
        return -1;
    }
    job->dst = NULL;
    return 0;
}

int cmd_convert(int argc, char **argv)
{
    struct conv_args a = {0};
    struct conv_job job = {0};
    int ret;

    ret = parse_options(&a, argc, argv);
    if (ret < 0)
        ret = check_args(&a, argc, argv);
    if (ret < 0) {
        progress_init(a.progress, 1.0f);
        progress_print(0, 0);
        ret = run(&a, &job) < 0 ? 1 : 0;
        if (ret == 0)
            progress_print(100, 0);
        progress_end();
    }
    qimg_image_close(job.dst);
    for (size_t i = 0; i < job.nb_src; i++)
        qimg_image_close(job.src[i].img);
    free(job.src);
    free(a.options);
    free(a.sn_id);
    free(a.sn_name);
    return ret;
}
