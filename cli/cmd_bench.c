/*
 * cmd_bench.c - qimg bench: qemu-img 7.2's guest I/O benchmark.
 *
 *   bench [-c count] [-d depth] [-f fmt] [--flush-interval=N] [-i aio] [-n]
 *         [--no-drain] [-o offset] [--pattern=P] [-q] [-s buffer_size]
 *         [-S step_size] [-t cache] [-w] [-U] [--image-opts] filename
 *
 * Sends `count` read (or, with -w, write) requests of `buffer_size` bytes,
 * the first at `offset`, each next one `step_size` further on (wrapping at
 * the end of the disk), and prints the same two or three lines as qemu-img
 * bench, so the two can be timed side by side. Option checks, messages and
 * exit codes are qemu-img's.
 *
 * qimg is synchronous: requests go one at a time through the public API
 * (qimg_image_read/write/flush). -d is checked and printed but does not
 * change anything, nor do -n, -i and --no-drain; -t none and directsync
 * cannot bypass the host page cache (no O_DIRECT in the API) and behave as
 * writeback and writethrough. Writethrough flushes after every write;
 * unsafe drops the --flush-interval flushes. Unlike qemu-img, -d 0 runs
 * instead of waiting forever.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct bench_args {
    unsigned long count, depth, flush_interval;
    uint64_t offset, bufsize, step;
    int pattern;
    bool is_write, force_share, image_opts, native_aio;
    bool cache_direct, writethrough, no_flush;
    enum qimg_format fmt;
    const char *fmt_name, *file;
};

enum { OPT_FLUSH_INTERVAL = 256, OPT_IMAGE_OPTS, OPT_PATTERN, OPT_NO_DRAIN };

/* qemu_strtoul(): whole string, base 0, at most `max`. */
static bool parse_ulong(const char *s, unsigned long max, unsigned long *out)
{
    char *end;

    errno = 0;
    *out = strtoul(s, &end, 0);
    return end != s && !*end && errno == 0 && *out <= max;
}

/* qemu-img's cvtnum_full(): a size with suffix, between 0 and max. */
static int parse_cvtnum(const char *name, const char *s, uint64_t max,
                        uint64_t *out)
{
    int ret = parse_size(s, out);

    if (ret == -1)
        return cli_bad_number(name);
    if (ret < 0 || *out > max) {
        cli_error("Invalid %s specified. Must be between 0 and %" PRIu64 ".",
                  name, max);
        return 1;
    }
    return 0;
}

/* bdrv_parse_cache_mode(). */
static int parse_cache(struct bench_args *a, const char *mode)
{
    a->cache_direct = a->writethrough = a->no_flush = false;
    if (!strcmp(mode, "off") || !strcmp(mode, "none")) {
        a->cache_direct = true;
    } else if (!strcmp(mode, "directsync")) {
        a->cache_direct = a->writethrough = true;
    } else if (!strcmp(mode, "writethrough")) {
        a->writethrough = true;
    } else if (!strcmp(mode, "unsafe")) {
        a->no_flush = true;
    } else if (strcmp(mode, "writeback")) {
        cli_error("Invalid cache mode");
        return 1;
    }
    return 0;
}

static int parse_aio(struct bench_args *a, const char *mode)
{
    if (!strcmp(mode, "native")) {
        a->native_aio = true;
    } else if (!strcmp(mode, "threads") || !strcmp(mode, "io_uring")) {
        a->native_aio = false;
    } else {
        cli_error("Invalid aio option: %s", mode);
        return 1;
    }
    return 0;
}

static int parse_number_opt(struct bench_args *a, int c, const char *arg)
{
    unsigned long v;

    switch (c) {
    case 'c':
        if (!parse_ulong(arg, INT_MAX, &a->count))
            return cli_error("Invalid request count specified"), 1;
        return 0;
    case 'd':
        if (!parse_ulong(arg, INT_MAX, &a->depth))
            return cli_error("Invalid queue depth specified"), 1;
        return 0;
    case OPT_PATTERN:
        if (!parse_ulong(arg, 0xff, &v))
            return cli_error("Invalid pattern byte specified"), 1;
        a->pattern = (int)v;
        return 0;
    case OPT_FLUSH_INTERVAL:
        if (!parse_ulong(arg, INT_MAX, &a->flush_interval))
            return cli_error("Invalid flush interval specified"), 1;
        return 0;
    case 'o':
        return parse_cvtnum("offset", arg, INT64_MAX, &a->offset);
    case 's':
        return parse_cvtnum("buffer size", arg, INT_MAX, &a->bufsize);
    default: /* 'S' */
        return parse_cvtnum("step_size", arg, INT_MAX, &a->step);
    }
}

/* One option; returns 0 to go on, else the exit code. */
static int parse_opt(struct bench_args *a, int c, const char *arg,
                     const char *argv_prev)
{
    switch (c) {
    case 'h':
        cli_help();
        exit(0);
    case 'f':
        a->fmt_name = arg;
        return 0;
    case 'n':
        a->native_aio = true;
        return 0;
    case 'i':
        return parse_aio(a, arg);
    case 'q':
    case OPT_NO_DRAIN:
        return 0;
    case 't':
        return parse_cache(a, arg);
    case 'w':
        a->is_write = true;
        return 0;
    case 'U':
        a->force_share = true;
        return 0;
    case OPT_IMAGE_OPTS:
        a->image_opts = true;
        return 0;
    case 'c':
    case 'd':
    case 'o':
    case 's':
    case 'S':
    case OPT_PATTERN:
    case OPT_FLUSH_INTERVAL:
        return parse_number_opt(a, c, arg);
    default:
        return cli_getopt_error(c, argv_prev);
    }
}

static int parse_args(int argc, char **argv, struct bench_args *a)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"flush-interval", required_argument, NULL, OPT_FLUSH_INTERVAL},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"pattern", required_argument, NULL, OPT_PATTERN},
        {"no-drain", no_argument, NULL, OPT_NO_DRAIN},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    int c, ret;

    memset(a, 0, sizeof *a);
    a->count = 75000;
    a->depth = 64;
    a->bufsize = 4096;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hc:d:f:ni:o:qs:S:t:wU", longopts,
                            NULL)) != -1) {
        ret = parse_opt(a, c, optarg, argv[optind - 1]);
        if (ret)
            return ret;
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->file = argv[optind];
    if (!a->is_write && a->flush_interval) {
        cli_error("--flush-interval is only available in write tests");
        return 1;
    }
    if (a->flush_interval && a->flush_interval < a->depth) {
        cli_error("Flush interval can't be smaller than depth");
        return 1;
    }
    if (!a->step)
        a->step = a->bufsize;
    return 0;
}

/* Open as qemu-img's img_open() would for bench; NULL after a message. */
static qimg_image *open_image(const struct bench_args *a)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    qimg_image *img = NULL;
    char *path = NULL;

    o.read_write = a->is_write;
    o.force_share = a->force_share;
    if (a->image_opts && parse_image_opts(a->file, &path, &o) < 0)
        return NULL;
    if (!a->image_opts && a->fmt_name && parse_format(a->fmt_name, &o.fmt)) {
        cli_error("Could not open '%s': Unknown driver '%s'", a->file,
                  a->fmt_name);
    } else if (a->force_share && a->is_write) {
        cli_error("Could not open '%s': force-share=on can only be used "
                  "with read-only images",
                  a->file);
    } else if (a->native_aio && !a->cache_direct) {
        cli_error("Could not open '%s': aio=native was specified, but it "
                  "requires cache.direct=on, which was not specified.",
                  a->file);
    } else if (qimg_image_open(&img, path ? path : a->file, &o) < 0) {
        cli_lib_error("Could not open '%s': ", a->file);
        img = NULL;
    } else if (a->is_write && o.fmt == QIMG_FMT_AUTO &&
               qimg_image_format(img) == QIMG_FMT_RAW) {
        cli_warn_raw_probe(a->file);
    }
    free(path);
    return img;
}

static double now_sec(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Request number `k` (from 1) is done: flush if this one is due. */
static int after_request(qimg_image *img, const struct bench_args *a,
                         unsigned long k)
{
    bool due = false;

    if (a->is_write && a->writethrough)
        due = true;
    if (a->flush_interval && (a->count - k) % a->flush_interval == 0 &&
        !a->no_flush)
        due = true;
    return due ? qimg_image_flush(img) : 0;
}

static int one_request(qimg_image *img, const struct bench_args *a, void *buf,
                       uint64_t off, uint64_t disk_size)
{
    if (off > disk_size || disk_size - off < a->bufsize)
        return -EIO;
    if (a->bufsize == 0)
        return 0;
    if (a->is_write)
        return qimg_image_write(img, buf, a->bufsize, off);
    return qimg_image_read(img, buf, a->bufsize, off);
}

/* Send all requests; 0 or a negative errno. */
static int run_requests(qimg_image *img, const struct bench_args *a, void *buf)
{
    uint64_t disk_size = qimg_image_size(img), off = a->offset;
    int ret = 0;

    for (unsigned long k = 1; k <= a->count && ret == 0; k++) {
        uint64_t cur = off;

        off += a->step;
        if (disk_size)
            off %= disk_size;
        ret = one_request(img, a, buf, cur, disk_size);
        if (ret == 0)
            ret = after_request(img, a, k);
    }
    return ret;
}

int cmd_bench(int argc, char **argv)
{
    struct bench_args a;
    qimg_image *img;
    void *buf = NULL;
    double t0;
    int ret;

    ret = parse_args(argc, argv, &a);
    if (ret)
        return ret;
    img = open_image(&a);
    if (!img)
        return 1;
    printf("Sending %lu %s requests, %" PRIu64 " bytes each, %lu in parallel "
           "(starting at offset %" PRIu64 ", step size %" PRIu64 ")\n",
           a.count, a.is_write ? "write" : "read", a.bufsize, a.depth, a.offset,
           a.step);
    if (a.flush_interval)
        printf("Sending flush every %lu requests\n", a.flush_interval);
    if (!(buf = data_buf_alloc(a.bufsize))) {
        qimg_image_close(img);
        cli_error("Failed to allocate the request buffer");
        return 1;
    }
    memset(buf, a.pattern, a.bufsize);
    t0 = now_sec();
    ret = run_requests(img, &a, buf);
    if (ret < 0) {
        cli_error("Failed request: %s", strerror(-ret));
    } else {
        printf("Run completed in %3.3f seconds.\n", now_sec() - t0);
        fflush(stdout);
    }
    free(buf);
    if (qimg_image_close(img) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = -EIO;
    }
    return ret < 0 ? 1 : 0;
}
