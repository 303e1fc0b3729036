/*
 * cmd_rebase.c - qimg rebase: qemu-img 7.2's `rebase`.
 *
 * Safe mode: wherever the image does not allocate a range itself, what
 * its old backing chain reads there is compared with what the new one
 * reads, and each run of differing 512-byte sectors is written into the
 * image (a run of zeros as a zero write), so that it reads the same
 * afterwards; ranges both chains read as zeros are not read, nor, when
 * the new backing file is a file of the old chain (rebasing onto a base
 * further down), ranges no image above it allocates: the old chain reads
 * the new backing file there. Then the
 * header switches to the new name, atomically (qimg_image_set_backing).
 * -u changes only the header. A power cut during the copy leaves the
 * image reading as before (its writes are the data it already showed).
 */
#include "cli.h"
#include "reader.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#define REBASE_BUF (2u << 20) /* as qemu-img's IO_BUF_SIZE */
#define SECTOR 512u

struct rebase_args {
    const char *file, *fmt, *backing, *backing_fmt, *cache, *src_cache;
    bool unsafe, progress, quiet, force_share, image_opts;
};

static int parse_args(int argc, char **argv, struct rebase_args *a)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, 'B'},
        {"image-opts", no_argument, NULL, 'I'},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:F:b:upt:T:qU", longopts,
                            NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            a->fmt = optarg;
            break;
        case 'F':
            a->backing_fmt = optarg;
            break;
        case 'b':
            a->backing = optarg;
            break;
        case 'u':
            a->unsafe = true;
            break;
        case 'p':
            a->progress = true;
            break;
        case 't':
            a->cache = optarg;
            break;
        case 'T':
            a->src_cache = optarg;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'U':
            a->force_share = true;
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
    if (!a->unsafe && !a->backing)
        return cli_usage_error("Must specify backing file (-b) or use unsafe "
                               "mode (-u)");
    a->file = argv[optind];
    return 0;
}

/* qemu-img's checks before it opens anything; 0 to go on. */
static int check_args(const struct rebase_args *a, enum qimg_format *bfmt)
{
    if (a->backing_fmt && parse_format(a->backing_fmt, bfmt) < 0) {
        cli_error("Invalid format name: '%s'", a->backing_fmt);
        return 1;
    }
    if (a->cache && !cache_mode_ok(a->cache)) {
        cli_error("Invalid cache option: %s", a->cache);
        return 1;
    }
    if (a->src_cache && !cache_mode_ok(a->src_cache)) {
        cli_error("Invalid source cache option: %s", a->src_cache);
        return 1;
    }
    return 0;
}

static int open_image(const struct rebase_args *a, qimg_image **img)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;

    o.read_write = true;
    o.no_backing = a->unsafe;
    if (cli_open(img, a->file, a->fmt, a->image_opts, &o) < 0)
        return -1;
    if (o.fmt == QIMG_FMT_AUTO && qimg_image_format(*img) == QIMG_FMT_RAW)
        cli_warn_raw_probe(a->file);
    return 0;
}

/* The new backing file, named relative to the image as in its header. */
static int open_new_backing(const struct rebase_args *a, qimg_image *img,
                            enum qimg_format fmt, qimg_image **out)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    char *path = cli_backing_path(qimg_image_filename(img), a->backing);
    int ret;

    if (!path) {
        cli_error("Out of memory");
        return -1;
    }
    o.fmt = fmt;
    o.force_share = a->force_share;
    ret = qimg_image_open(out, path, &o);
    free(path);
    if (ret < 0)
        cli_lib_error("Could not open new backing file '%s': ", a->backing);
    return ret;
}

struct chain {
    qimg_image *img; /* NULL: reads as zeros */
    uint64_t size;
    uint8_t *buf;
    /* old chain: its image that is the new backing file (same file, same
     * format), or NULL */
    qimg_image *base;
};

static qimg_image *find_base(qimg_image *old, qimg_image *new)
{
    for (qimg_image *b = old; new && b; b = qimg_image_backing(b))
        if (qimg_image_format(b) == qimg_image_format(new) &&
            cli_same_file(qimg_image_filename(b), qimg_image_filename(new)))
            return b;
    return NULL;
}

/* Whether c reads [off, off + *n) from its base: no image above it
 * allocates there and each reaches past it (a shorter one reads zeros
 * past its end). *n shrinks to where the answer is known. */
static bool reads_base(struct chain *c, uint64_t off, uint64_t *n)
{
    if (!c->base)
        return false;
    for (qimg_image *b = c->img; b != c->base; b = qimg_image_backing(b)) {
        struct qimg_extent x;
        if (qimg_image_size(b) < off + *n ||
            qimg_image_block_status(b, off, *n, &x) < 0)
            return false;
        *n = x.len < *n ? x.len : *n;
        if (x.flags & QIMG_BS_ALLOCATED)
            return false;
    }
    return true;
}

/* The bytes of [off, off+len) inside c; the rest of c->buf is zeroed. */
static uint64_t inside(struct chain *c, uint64_t off, uint64_t len)
{
    uint64_t n = off < c->size ? c->size - off : 0;

    n = n < len ? n : len;
    memset(c->buf + n, 0, len - n);
    return n;
}

/* Read [off, off+len) of both chains into their buffers, the old one on
 * the helper thread. qemu-img's messages (without the cause); the old
 * chain's error is the one reported, as qemu-img reads it first. */
static int read_chains(struct reader *r, struct chain *old, struct chain *new,
                       uint64_t off, uint64_t len)
{
    uint64_t n_old = inside(old, off, len), n_new = inside(new, off, len);
    bool helper = n_old && reader_start(r, old->img, old->buf, n_old, off);
    int ret_old = 0, ret_new;

    if (n_old && !helper)
        ret_old = qimg_image_read(old->img, old->buf, n_old, off);
    ret_new = ret_old < 0 || !n_new
                  ? 0
                  : qimg_image_read(new->img, new->buf, n_new, off);
    if (helper)
        ret_old = reader_wait(r);
    if (ret_old < 0 || ret_new < 0) {
        cli_error("error while reading from %s backing file",
                  ret_old < 0 ? "old" : "new");
        return -1;
    }
    return 0;
}

/* Whether [off, off+len) of c reads as zeros by its block status alone. */
static bool reads_zero(struct chain *c, uint64_t off, uint64_t len)
{
    struct qimg_extent x;

    if (!c->img || off >= c->size)
        return true;
    return qimg_image_map(c->img, off, c->size - off, &x) == 0 &&
           (x.flags & QIMG_BS_ZERO) && x.len >= len;
}

/* Write into img each run of sectors where old and new differ. */
static int write_differences(qimg_image *img, uint64_t off, uint64_t len,
                             const uint8_t *old, const uint8_t *new)
{
    uint64_t i = 0;

    while (i < len) {
        uint64_t s = len - i < SECTOR ? len - i : SECTOR, j;
        if (!memcmp(old + i, new + i, s)) {
            i += s;
            continue;
        }
        for (j = i + s; j < len; j += s) {
            s = len - j < SECTOR ? len - j : SECTOR;
            if (!memcmp(old + j, new + j, s))
                break;
        }
        if ((buf_is_zero(old + i, j - i)
                 ? qimg_image_write_zeroes(img, off + i, j - i, 0)
                 : qimg_image_write(img, old + i, j - i, off + i)) < 0) {
            cli_lib_error("Error while writing image: ");
            return -1;
        }
        i = j;
    }
    return 0;
}

/* Make img read the same over `new` as it does over `old`. */
static int copy_differences(qimg_image *img, struct chain *old,
                            struct chain *new, struct reader *r)
{
    uint64_t size = qimg_image_size(img), off = 0;
    float step = 100.0f / (float)((size + REBASE_BUF - 1) / REBASE_BUF);

    while (off < size) {
        struct qimg_extent x;
        uint64_t n;
        if (qimg_image_block_status(img, off, size - off, &x) < 0) {
            cli_lib_error("error while reading image metadata: ");
            return -1;
        }
        n = x.len < REBASE_BUF ? x.len : REBASE_BUF;
        if (!(x.flags & QIMG_BS_ALLOCATED)) {
            if (!reads_base(old, off, &n) &&
                !(reads_zero(old, off, n) && reads_zero(new, off, n)) &&
                (read_chains(r, old, new, off, n) < 0 ||
                 write_differences(img, off, n, old->buf, new->buf) < 0))
                return -1;
            progress_print(step, 100);
        }
        off += n;
    }
    return qimg_image_flush(img) < 0 ? (cli_lib_error("%s", ""), -1) : 0;
}

static int rebase(const struct rebase_args *a, enum qimg_format bfmt)
{
    struct chain old = {0}, new = {0};
    struct reader r = {0};
    qimg_image *img = NULL;
    const char *name = a->backing && *a->backing ? a->backing : NULL;
    int ret = 1;

    if (open_image(a, &img) < 0)
        return 1;
    progress_init(a->progress, 2.0f);
    progress_print(0, 100);
    /* qemu-img finds this out after copying; qimg before. */
    if (qimg_image_format(img) != QIMG_FMT_QCOW2) {
        cli_error("Could not change the backing file to '%s': Operation not "
                  "supported",
                  a->backing ? a->backing : "");
        goto out;
    }
    if (name && !a->backing_fmt) {
        cli_error("Could not change the backing file to '%s': backing "
                  "format must be specified",
                  name);
        goto out;
    }
    if (!a->unsafe) {
        old.img = qimg_image_backing(img);
        old.size = old.img ? qimg_image_size(old.img) : 0;
        if (name && open_new_backing(a, img, bfmt, &new.img) < 0)
            goto out;
        new.size = new.img ? qimg_image_size(new.img) : 0;
        old.base = find_base(old.img, new.img);
        old.buf = data_buf_alloc(REBASE_BUF);
        new.buf = data_buf_alloc(REBASE_BUF);
        if (!old.buf || !new.buf) {
            cli_error("Out of memory");
            goto out;
        }
        if (copy_differences(img, &old, &new, &r) < 0)
            goto out;
    }
    if (qimg_image_set_backing(img, name, name ? a->backing_fmt : NULL) < 0) {
        cli_lib_error("Could not change the backing file to '%s': ",
                      a->backing ? a->backing : "");
        goto out;
    }
    progress_print(100, 0);
    ret = 0;
out:
    reader_stop(&r);
    free(old.buf);
    free(new.buf);
    if (new.img)
        qimg_image_close(new.img);
    if (qimg_image_close(img) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = 1;
    }
    progress_end();
    return ret;
}

int cmd_rebase(int argc, char **argv)
{
    struct rebase_args a;
    enum qimg_format bfmt = QIMG_FMT_AUTO;
    int ret = parse_args(argc, argv, &a);

    if (ret == 0)
        ret = check_args(&a, &bfmt);
    return ret ? ret : rebase(&a, bfmt);
}
