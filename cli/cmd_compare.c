/*
 * cmd_compare.c - qimg compare: qemu-img 7.2's `compare`.
 *
 * Walks both disks with qimg_image_map() (status through each backing
 * chain). A range that reads as zeros on both sides, or that neither
 * chain allocates, is never read; where one side allocates and the other
 * does not, only the allocated side is read and must be zeros. The first
 * mismatch is reported by its 512-byte sector, as qemu-img reports it.
 * Exit codes: 0 identical, 1 different, 2 an image would not open,
 * 3 a block-status query failed, 4 a read failed.
 * Where both sides are read, the second image is read on a helper thread
 * (reader.c) while this one reads the first.
 */
#include "cli.h"
#include "reader.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#define CMP_BUF (2u << 20) /* bytes read at once, as qemu-img */
#define SECTOR 512u

struct cmp_args {
    const char *file[2];
    const char *fmt[2];
    const char *cache;
    bool progress, quiet, strict, force_share, image_opts;
};

struct side {
    qimg_image *img;
    const char *name;
    uint64_t size;
    uint8_t *buf;
};

static int parse_args(int argc, char **argv, struct cmp_args *a)
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
    while ((c = getopt_long(argc, argv, ":hf:F:T:pqsU", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
        case 'F':
            a->fmt[c == 'F'] = optarg;
            break;
        case 'T':
            a->cache = optarg;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 's':
            a->strict = true;
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
    if (optind != argc - 2)
        return cli_usage_error("Expecting two image file names");
    a->file[0] = argv[optind];
    a->file[1] = argv[optind + 1];
    return 0;
}

/* Messages qemu-img prints unless -q. */
static void say(const struct cmp_args *a, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void say(const struct cmp_args *a, const char *fmt, ...)
{
    va_list ap;

    if (a->quiet)
        return;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
}

static int open_side(const struct cmp_args *a, int i, struct side *s)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;

    o.force_share = a->force_share;
    s->name = a->file[i];
    if (cli_open(&s->img, a->file[i], a->fmt[i], a->image_opts, &o) < 0)
        return -1;
    s->size = qimg_image_size(s->img);
    s->buf = data_buf_alloc(CMP_BUF);
    if (!s->buf) {
        cli_error("Out of memory");
        return -1;
    }
    return 0;
}

static int status(struct side *s, uint64_t off, struct qimg_extent *x)
{
    if (qimg_image_map(s->img, off, s->size - off, x) == 0)
        return 0;
    cli_error("Sector allocation test failed for %s", s->name);
    return 3;
}

static int read_error(const struct side *s, uint64_t off, int errnum)
{
    cli_error("Error while reading offset %" PRIu64 " of %s: %s", off,
              s->name, strerror(errnum));
    return 4;
}

/* Read [off, off+len) of s into its buffer: 0, or the errno it failed
 * with. */
static int read_errno(struct side *s, uint64_t off, uint64_t len)
{
    int e;

    if (qimg_image_read(s->img, s->buf, len, off) == 0)
        return 0;
    e = qimg_last_error()->errnum;
    return e ? e : EIO;
}

static int read_side(struct side *s, uint64_t off, uint64_t len)
{
    int e = read_errno(s, off, len);

    return e ? read_error(s, off, e) : 0;
}

/* Read the same range of both sides (side 1 on the helper thread). */
static int read_both(struct reader *r, struct side *s, uint64_t off,
                     uint64_t len)
{
    int e0;

    if (!reader_start(r, s[1].img, s[1].buf, len, off))
        return read_side(&s[0], off, len) ? 4 : read_side(&s[1], off, len);
    e0 = read_errno(&s[0], off, len);
    if (reader_wait(r) < 0 && !e0) /* side 0's error first, as qemu-img */
        return read_error(&s[1], off, r->err.errnum ? r->err.errnum : EIO);
    return e0 ? read_error(&s[0], off, e0) : 0;
}

/* The first 512-byte sector of buf (len bytes) that is not all zeros;
 * len if there is none. */
static uint64_t first_nonzero(const uint8_t *buf, uint64_t len)
{
    if (buf_is_zero(buf, len))
        return len;
    for (uint64_t i = 0;; i += SECTOR)
        if (!buf_is_zero(buf + i, len - i < SECTOR ? len - i : SECTOR))
            return i;
}

/* The first sector where a and b differ; len if none does. */
static uint64_t first_difference(const uint8_t *a, const uint8_t *b,
                                 uint64_t len)
{
    if (!memcmp(a, b, len))
        return len;
    for (uint64_t i = 0;; i += SECTOR)
        if (memcmp(a + i, b + i, len - i < SECTOR ? len - i : SECTOR))
            return i;
}

/* Read [off, off+len) of s, which must be zeros. */
static int check_zero(const struct cmp_args *a, struct side *s, uint64_t off,
                      uint64_t len)
{
    uint64_t at;
    int ret = read_side(s, off, len);

    if (ret)
        return ret;
    at = first_nonzero(s->buf, len);
    if (at == len)
        return 0;
    say(a, "Content mismatch at offset %" PRIu64 "!\n", off + at);
    return 1;
}

/* QEMU's block status flags for an extent, as strict mode compares them:
 * data, zero, offset valid, allocated, and the end of the image. */
static unsigned qemu_status(const struct qimg_extent *x, uint64_t off,
                            uint64_t size)
{
    return (x->flags & QIMG_BS_DATA ? 0x01 : 0) |
           (x->flags & QIMG_BS_ZERO ? 0x02 : 0) |
           (x->flags & QIMG_BS_OFFSET ? 0x04 : 0) |
           (x->flags & QIMG_BS_ALLOCATED ? 0x10 : 0) |
           (off + x->len == size ? 0x20 : 0);
}

static uint64_t min_u64(uint64_t a, uint64_t b) { return a < b ? a : b; }

/* The range both images have. */
static int compare_common(const struct cmp_args *a, struct side *s,
                          struct reader *r, uint64_t total, uint64_t *pos)
{
    uint64_t off = 0;
    int ret;

    while (off < s[0].size && off < s[1].size) {
        struct qimg_extent x[2];
        bool alloc[2], zero;
        uint64_t chunk;
        for (int i = 0; i < 2; i++) {
            if ((ret = status(&s[i], off, &x[i])))
                return ret;
            alloc[i] = x[i].flags & QIMG_BS_ALLOCATED;
        }
        chunk = min_u64(x[0].len, x[1].len);
        if (a->strict && qemu_status(&x[0], off, s[0].size) !=
                             qemu_status(&x[1], off, s[1].size)) {
            say(a, "Strict mode: Offset %" PRIu64 " block status mismatch!\n",
                off);
            return 1;
        }
        zero = x[0].flags & x[1].flags & QIMG_BS_ZERO;
        if (!zero && alloc[0] && alloc[1]) {
            uint64_t at;
            chunk = min_u64(chunk, CMP_BUF);
            if ((ret = read_both(r, s, off, chunk)))
                return ret;
            at = first_difference(s[0].buf, s[1].buf, chunk);
            if (at < chunk) {
                say(a, "Content mismatch at offset %" PRIu64 "!\n", off + at);
                return 1;
            }
        } else if (!zero && alloc[0] != alloc[1]) {
            chunk = min_u64(chunk, CMP_BUF);
            if ((ret = check_zero(a, &s[alloc[0] ? 0 : 1], off, chunk)))
                return ret;
        }
        off += chunk;
        progress_print((float)chunk / (float)total * 100, 100);
    }
    *pos = off;
    return 0;
}

/* The longer image's tail must read as zeros. */
static int compare_tail(const struct cmp_args *a, struct side *over,
                        uint64_t off)
{
    int ret;

    say(a, "Warning: Image size mismatch!\n");
    while (off < over->size) {
        struct qimg_extent x;
        uint64_t chunk;
        if ((ret = status(over, off, &x)))
            return ret;
        chunk = x.len;
        if ((x.flags & QIMG_BS_ALLOCATED) && !(x.flags & QIMG_BS_ZERO)) {
            chunk = min_u64(chunk, CMP_BUF);
            if ((ret = check_zero(a, over, off, chunk)))
                return ret;
        }
        off += chunk;
        progress_print((float)chunk / (float)over->size * 100, 100);
    }
    return 0;
}

int cmd_compare(int argc, char **argv)
{
    struct cmp_args a;
    struct side s[2] = {{0}};
    struct reader r = {0};
    uint64_t total, off = 0;
    int ret = parse_args(argc, argv, &a);

    if (ret)
        return ret;
    progress_init(a.progress, 2.0f);
    if (a.cache && !cache_mode_ok(a.cache)) {
        cli_error("Invalid source cache option: %s", a.cache);
        ret = 2;
    } else if (open_side(&a, 0, &s[0]) < 0 || open_side(&a, 1, &s[1]) < 0) {
        ret = 2;
    }
    if (ret == 0) {
        total = s[0].size > s[1].size ? s[0].size : s[1].size;
        progress_print(0, 100);
        if (a.strict && s[0].size != s[1].size) {
            say(&a, "Strict mode: Image size mismatch!\n");
            ret = 1;
        }
    }
    if (ret == 0)
        ret = compare_common(&a, s, &r, total, &off);
    reader_stop(&r);
    if (ret == 0 && s[0].size != s[1].size)
        ret = compare_tail(&a, &s[s[0].size > s[1].size ? 0 : 1], off);
    if (ret == 0)
        say(&a, "Images are identical.\n");
    for (int i = 0; i < 2; i++) {
        free(s[i].buf);
        if (s[i].img)
            qimg_image_close(s[i].img);
    }
    progress_end();
    return ret;
}
