/*
 * cmd_commit.c - qimg commit: qemu-img 7.2's `commit`.
 *
 * Copies what the image (and the images between it and the base) define
 * into the base, by block status: data as data, ranges that read as
 * zeros as zero writes (the base stays sparse), the rest not at all.
 * Then, unless -d (or -b, which implies it), empties the image with one
 * atomic switch, so that it reads through to the base. The base is
 * written with guest writes: a power cut during the copy leaves it with
 * part of the data committed and the image unchanged.
 *
 * The image is opened twice: first whole, to find the base; then the base
 * read-write and the image with its chain cut above the base (QEMU's
 * locks belong to each open file, so one process cannot hold the base
 * both read-only, as a backing file, and read-write).
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define COMMIT_BUF (2u << 20)
#define RATE_CHUNK (512u << 10) /* QEMU's commit job buffer */

struct commit_args {
    const char *file, *fmt, *base, *cache;
    bool drop, progress, quiet, image_opts;
    uint64_t rate; /* -r: bytes per second committed; 0: no limit */
};

static int parse_args(int argc, char **argv, struct commit_args *a)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, 'B'},
        {"image-opts", no_argument, NULL, 'I'},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:ht:b:dpqr:", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            a->fmt = optarg;
            break;
        case 't':
            a->cache = optarg;
            break;
        case 'b':
            a->base = optarg;
            a->drop = true; /* as qemu-img: -b implies -d */
            break;
        case 'd':
            a->drop = true;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'r':
            if (parse_size(optarg, &a->rate) < 0 || a->rate > INT64_MAX) {
                return cli_bad_number("rate limit");
            }
            break;
        case 'I':
            a->image_opts = true;
            break;
        case 'B':
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (a->quiet)
        a->progress = false;
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->file = argv[optind];
    return 0;
}

/* Open the image read-write; layers > 0 opens that many backing images
 * at most, 0 none, -1 all. */
static int open_top(const struct commit_args *a, int layers, qimg_image **img)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;

    o.read_write = true;
    o.no_backing = layers == 0;
    o.backing_layers = layers > 0 ? layers : 0;
    return cli_open(img, a->file, a->fmt, a->image_opts, &o);
}

/* Whether name (as given to -b) names image b, whose overlay stores the
 * name `stored`: the same string, or the same file. */
static bool names(const char *name, qimg_image *b, const char *stored)
{
    char *x, *y;
    bool same;

    if (stored && !strcmp(name, stored))
        return true;
    x = realpath(name, NULL);
    y = realpath(qimg_image_filename(b), NULL);
    same = x && y && !strcmp(x, y);
    free(x);
    free(y);
    return same;
}

/* The depth (1: the backing file) of the base in img's chain, and its
 * file name (malloc'd); 0 with a message if there is none. */
static int find_base(const struct commit_args *a, qimg_image *img,
                     char **base_path)
{
    qimg_image *cur = img, *b;
    struct qimg_info *info = NULL;
    int depth = 0;

    while ((b = qimg_image_backing(cur))) {
        char *stored = NULL;
        bool hit;
        depth++;
        if (qimg_image_info(&info, cur) == 0 && info->backing_file)
            stored = strdup(info->backing_file);
        qimg_info_free(info);
        hit = !a->base || names(a->base, b, stored);
        free(stored);
        if (hit) {
            *base_path = strdup(qimg_image_filename(b));
            return *base_path ? depth : 0;
        }
        cur = b;
    }
    if (a->base)
        cli_error("Did not find '%s' in the backing chain of '%s'", a->base,
                  a->file);
    else
        cli_error("Image does not have a backing file");
    return 0;
}

static int open_base(const char *path, enum qimg_format fmt,
                     qimg_image **img)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;

    o.read_write = true;
    o.fmt = fmt;
    if (qimg_image_open(img, path, &o) == 0)
        return 0;
    cli_lib_error("Could not open '%s': ", path);
    return -1;
}

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* -r: before the next chunk, wait until the `done` bytes committed so
 * far have taken at least done / rate seconds since `start` (as QEMU's
 * block job limit averages it: no wait after the last chunk; ranges the
 * chain does not allocate cost nothing). */
static void rate_wait(uint64_t rate, double start, uint64_t done)
{
    double left = start + (double)done / (double)rate - now();

    if (rate && left > 0) {
        struct timespec ts = {(time_t)left,
                              (long)((left - (double)(time_t)left) * 1e9)};
        nanosleep(&ts, NULL);
    }
}

/* Copy what top's opened chain allocates into base, at most `rate` bytes
 * per second (0: no limit). */
static int copy(qimg_image *top, qimg_image *base, uint8_t *buf,
                uint64_t rate)
{
    uint64_t size = qimg_image_size(top), off = 0, done = 0;
    const double start = now();

    while (off < size) {
        struct qimg_extent x;
        uint64_t len;
        if (qimg_image_map(top, off, size - off, &x) < 0)
            return -1;
        len = x.len;
        /* Under a rate limit, in QEMU's commit chunks, zero ranges too. */
        if (rate && (x.flags & QIMG_BS_ALLOCATED)) {
            len = len < RATE_CHUNK ? len : RATE_CHUNK;
            rate_wait(rate, start, done);
            done += len;
        }
        if ((x.flags & QIMG_BS_ALLOCATED) && (x.flags & QIMG_BS_ZERO)) {
            if (qimg_image_write_zeroes(base, off, len, QIMG_ZERO_UNMAP) < 0)
                return -1;
        } else if (x.flags & QIMG_BS_ALLOCATED) {
            len = len < COMMIT_BUF ? len : COMMIT_BUF;
            if (qimg_image_read(top, buf, len, off) < 0 ||
                qimg_image_write(base, buf, len, off) < 0)
                return -1;
        }
        off += len;
        progress_print((float)(100.0 * (double)off / (double)size), 0);
    }
    return qimg_image_flush(base);
}

static enum qimg_format base_format(qimg_image *img, int depth)
{
    while (depth-- > 0)
        img = qimg_image_backing(img);
    return qimg_image_format(img);
}

static int commit(const struct commit_args *a)
{
    qimg_image *top = NULL, *base = NULL;
    char *base_path = NULL;
    enum qimg_format fmt = QIMG_FMT_AUTO;
    uint8_t *buf = NULL;
    int depth, ret = 1;

    if (open_top(a, -1, &top) < 0)
        return 1;
    progress_init(a->progress, 1.0f);
    progress_print(0, 100);
    depth = find_base(a, top, &base_path);
    if (depth > 0)
        fmt = base_format(top, depth);
    qimg_image_close(top);
    top = NULL;
    if (depth <= 0)
        goto out;
    if (open_base(base_path, fmt, &base) < 0 ||
        open_top(a, depth - 1, &top) < 0)
        goto out;
    /* As qemu-img: a base shorter than the image grows to its size. */
    if (qimg_image_size(top) > qimg_image_size(base) &&
        qimg_image_resize(base, qimg_image_size(top), QIMG_PREALLOC_OFF) < 0) {
        cli_lib_error("%s", "");
        goto out;
    }
    buf = data_buf_alloc(COMMIT_BUF);
    if (!buf) {
        cli_error("Out of memory");
        goto out;
    }
    if (copy(top, base, buf, a->rate) < 0 ||
        (!a->drop && qimg_image_make_empty(top) < 0)) {
        cli_lib_error("%s", "");
        goto out;
    }
    progress_print(100, 0);
    ret = 0;
out:
    free(buf);
    free(base_path);
    if (top && qimg_image_close(top) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = 1;
    }
    if (base && qimg_image_close(base) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = 1;
    }
    progress_end();
    return ret;
}

int cmd_commit(int argc, char **argv)
{
    struct commit_args a;
    int ret = parse_args(argc, argv, &a);

    if (ret)
        return ret;
    if (a.cache && !cache_mode_ok(a.cache)) {
        cli_error("Invalid cache option: %s", a.cache);
        return 1;
    }
    ret = commit(&a);
    if (ret == 0 && !a.quiet)
        printf("Image committed.\n");
    return ret;
}
