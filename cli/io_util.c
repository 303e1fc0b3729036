/*
 * io_util.c - qemu-io's conventions shared by the `qimg io` commands:
 * number and pattern parsing, the usage line, timing and the two report
 * lines, the hexdump of `read -v` and the range check of the block layer.
 *
 * Owns no state; the commands live in io_rw.c and io_query.c.
 */
#include "io.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Power of 1024 named by a size suffix, or -1. */
static int suffix_shift(char c)
{
    switch (c) {
    case 'b':
    case 'B':
        return 0;
    case 'k':
    case 'K':
        return 10;
    case 'm':
    case 'M':
        return 20;
    case 'g':
    case 'G':
        return 30;
    case 't':
    case 'T':
        return 40;
    case 'p':
    case 'P':
        return 50;
    case 'e':
    case 'E':
        return 60;
    default:
        return -1;
    }
}

/* The fractional part at *endp ('.'): a 0.64 fixed-point value; moves
 * *endp past it. -EINVAL for an exponent. */
static int parse_fraction(const char *s, const char **endp, uint64_t *valf)
{
    const char *f = *endp;
    char *ep;
    double frac;

    errno = 0;
    frac = strtod(f, &ep);
    if (ep == f || errno) {
        /* No digits after the point ("1.k"): skip the point. */
        *endp = (ep == f ? f : ep) + 1;
        return 0;
    }
    if (memchr(f, 'e', (size_t)(ep - f)) || memchr(f, 'E', (size_t)(ep - f))) {
        *endp = s;
        return -EINVAL;
    }
    *endp = ep;
    /* QEMU converts 1.0 * 2^64 to 0 on x86; keep that. */
    *valf = frac < 1.0 ? (uint64_t)(frac * 0x1p64) : 0;
    return 0;
}

/* val.valf (64.64 fixed point) times 2^shift, rounded half up; a
 * fraction needs a unit. */
static int scale(uint64_t val, uint64_t valf, int shift, uint64_t *out)
{
    unsigned __int128 v = (unsigned __int128)val << shift;
    unsigned __int128 f = (unsigned __int128)valf << shift;

    if (shift == 0) {
        if (valf)
            return -EINVAL;
        *out = val;
        return 0;
    }
    v += (f >> 64) + ((f >> 63) & 1);
    if (v >> 64)
        return -ERANGE;
    *out = (uint64_t)v;
    return 0;
}

/* QEMU 7.2's qemu_strtosz(): decimal integer, or hex (0x...), or decimal
 * with a fraction; an optional binary suffix (a fraction needs one);
 * nothing may follow. */
static int strtosz(const char *s, uint64_t *out)
{
    const char *end;
    uint64_t val, valf = 0;
    bool is_hex = false;
    int shift, ret = 0;
    char *ep;

    errno = 0;
    val = strtoull(s, &ep, 10);
    end = ep;
    if (end == s)
        return -EINVAL;
    if (errno == ERANGE)
        return *end ? -EINVAL : -ERANGE;
    if (memchr(s, '-', (size_t)(end - s)))
        return -EINVAL;
    if (val == 0 && (*end == 'x' || *end == 'X')) {
        errno = 0;
        val = strtoull(s, &ep, 16);
        end = ep;
        if (errno == ERANGE)
            return *end ? -EINVAL : -ERANGE;
        if (*end == '.')
            return -EINVAL;
        is_hex = true;
    } else if (*end == '.' && (ret = parse_fraction(s, &end, &valf)) < 0) {
        return ret;
    }
    shift = suffix_shift(*end);
    if (shift >= 0) {
        if (is_hex)
            cli_error("warning: Using a multiplier suffix on hex numbers "
                      "is deprecated: %s",
                      s);
        end++;
    }
    if (*end)
        return -EINVAL;
    return scale(val, valf, shift < 0 ? 0 : shift, out);
}

int64_t io_cvtnum(const char *s)
{
    uint64_t v;
    int ret = strtosz(s, &v);

    if (ret < 0)
        return ret;
    if (v > INT64_MAX)
        return -ERANGE;
    return (int64_t)v;
}

void io_cvtnum_err(int64_t rc, const char *arg)
{
    if (rc == -EINVAL)
        printf("Parsing error: non-numeric argument, or "
               "extraneous/unrecognized suffix -- %s\n",
               arg);
    else if (rc == -ERANGE)
        printf("Parsing error: argument too large -- %s\n", arg);
    else
        printf("Parsing error: %s\n", arg);
}

int io_parse_pattern(const char *arg)
{
    char *end;
    long v;

    errno = 0;
    v = strtol(arg, &end, 0);
    if (v < 0 || v > 255 || *end) {
        printf("%s is not a valid pattern byte\n", arg);
        return -1;
    }
    return (int)v;
}

void io_usage(const struct io_cmd *c)
{
    printf("%s %s -- %s\n", c->name, c->args ? c->args : "(null)", c->oneline);
}

void io_getopt_reset(void)
{
    optind = 0; /* glibc: reinitialise completely */
    opterr = 1;
}

struct timespec io_clock(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return t;
}

static double seconds(struct timespec t)
{
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* qemu-io's timestr(): "SS.ss sec" below a second, else "H:MM:SS.ss";
 * the machine format always uses the latter. */
static void fmt_time(char *buf, size_t n, struct timespec t, bool fixed)
{
    double frac = (double)t.tv_nsec / 1e9;
    unsigned h = (unsigned)(t.tv_sec / 3600);
    unsigned m = (unsigned)(t.tv_sec % 3600 / 60);
    double sec = (double)(t.tv_sec % 60) + frac;

    if (fixed || t.tv_sec)
        snprintf(buf, n, "%u:%02u:%05.2f", h, m, sec);
    else
        snprintf(buf, n, "%05.2f sec", frac);
}

struct timespec io_since(struct timespec t0)
{
    struct timespec t1 = io_clock(), d;

    d.tv_sec = t1.tv_sec - t0.tv_sec;
    d.tv_nsec = t1.tv_nsec - t0.tv_nsec;
    if (d.tv_nsec < 0) {
        d.tv_nsec += 1000000000L;
        d.tv_sec--;
    }
    return d;
}

void io_report(const char *op, struct timespec d, int64_t off, int64_t count,
               int64_t total, bool machine)
{
    char s1[64], s2[64], ts[64];
    double secs = seconds(d);

    fmt_time(ts, sizeof ts, d, machine);
    if (machine) {
        printf("%" PRId64 ",1,%s,%.3f,%.3f\n", total, ts, (double)total / secs,
               1.0 / secs);
        return;
    }
    fmt_cvtstr(s1, sizeof s1, (double)total);
    fmt_cvtstr(s2, sizeof s2, (double)total / secs);
    printf("%s %" PRId64 "/%" PRId64 " bytes at offset %" PRId64 "\n", op,
           total, count, off);
    printf("%s, 1 ops; %s (%s/sec and %.4f ops/sec)\n", s1, ts, s2, 1.0 / secs);
}

void io_dump(const uint8_t *buf, int64_t off, int64_t len)
{
    for (int64_t i = 0; i < len; i += 16) {
        int64_t n = len - i < 16 ? len - i : 16;

        printf("%08" PRIx64 ":  ", (uint64_t)(off + i));
        for (int64_t j = 0; j < n; j++)
            printf("%02x ", buf[i + j]);
        putchar(' ');
        for (int64_t j = 0; j < n; j++)
            putchar(isalnum(buf[i + j]) ? buf[i + j] : '.');
        putchar('\n');
    }
}

int io_check_range(const struct io_state *s, int64_t off, int64_t len)
{
    uint64_t size = s->size;

    if (s->is_dead)
        return -ENOMEDIUM;
    if (off < 0 || len < 0 || (uint64_t)off > size ||
        (uint64_t)len > size - (uint64_t)off)
        return -EIO;
    return 0;
}

void io_note_error(struct io_state *s, int ret)
{
    const struct qimg_error *e = qimg_last_error();
    const char *msg = e->message;

    if (!e->where[0] || e->errnum != -ret || s->corrupt_reported)
        return;
    s->corrupt_reported = true;
    s->is_dead = s->writable;
    fflush(stdout);
    if (!strncmp(msg, "qcow2: ", 7))
        fprintf(stderr, "%s\n", msg); /* already in QEMU's words */
    else if (s->writable)
        fprintf(stderr,
                "qcow2: Marking image as corrupt: %s; further "
                "corruption events will be suppressed\n",
                msg);
    else
        fprintf(stderr,
                "qcow2: Image is corrupt: %s; further non-fatal "
                "corruption events will be suppressed\n",
                msg);
}

void io_fail(struct io_state *s, const char *op, int ret)
{
    io_note_error(s, ret);
    printf("%s failed: %s\n", op, strerror(-ret));
}

uint8_t *io_alloc(int64_t len, int pattern)
{
    uint8_t *buf = malloc(len > 0 ? (size_t)len : 1);

    if (!buf) {
        cli_error("Failed to allocate memory: %s", strerror(ENOMEM));
        return NULL;
    }
    memset(buf, pattern, len > 0 ? (size_t)len : 1);
    return buf;
}
