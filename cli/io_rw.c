/*
 * io_rw.c - the data commands of `qimg io`: read, readv, write, writev,
 * discard and flush, with qemu-io 7.2's options, checks, messages and
 * report lines.
 *
 * Requests reaching past the end of the image fail with EIO before the
 * library sees them, as in QEMU's block layer. The VM state area (-b) is
 * not reachable through the library and fails with ENOTSUP. Splitting the
 * command line and the read-only check live in cmd_io.c.
 */
#include "io.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#define SECTOR 512

/* Parse "off len" at argv[0], argv[1]; with `limit`, len may not exceed
 * IO_MAX_BYTES (`extra` goes into the message). */
static int parse_off_len(char **argv, int64_t *off, int64_t *len, bool limit,
                         const char *extra)
{
    *off = io_cvtnum(argv[0]);
    if (*off < 0) {
        io_cvtnum_err(*off, argv[0]);
        return (int)*off;
    }
    *len = io_cvtnum(argv[1]);
    if (*len < 0) {
        io_cvtnum_err(*len, argv[1]);
        return (int)*len;
    }
    if (limit && *len > IO_MAX_BYTES) {
        printf("length cannot exceed %lld%s, given %s\n", IO_MAX_BYTES, extra,
               argv[1]);
        return -EINVAL;
    }
    return 0;
}

static int check_sector_aligned(int64_t off, int64_t len)
{
    if (off % SECTOR) {
        printf("%lld is not a sector-aligned value for 'offset'\n",
               (long long)off);
        return -EINVAL;
    }
    if (len % SECTOR) {
        printf("%lld is not a sector-aligned value for 'count'\n",
               (long long)len);
        return -EINVAL;
    }
    return 0;
}

static int do_read(struct io_state *s, uint8_t *buf, int64_t off, int64_t len)
{
    uint64_t real = s->real_size, n = (uint64_t)len;
    int ret = io_check_range(s, off, len);

    if (ret < 0 || len == 0)
        return ret;
    if ((uint64_t)off + n > real) {
        /* The sector tail of a raw file reads as zeros. */
        n = (uint64_t)off < real ? real - (uint64_t)off : 0;
        memset(buf + n, 0, (size_t)len - n);
    }
    return n ? qimg_image_read(s->img, buf, n, (uint64_t)off) : 0;
}

static bool matches(const uint8_t *buf, int64_t len, int pattern)
{
    for (int64_t i = 0; i < len; i++)
        if (buf[i] != (uint8_t)pattern)
            return false;
    return true;
}

/* ---- read --------------------------------------------------------------- */

struct read_args {
    bool is_machine, is_quiet, dump, vmstate;
    bool has_pattern, has_poff, has_plen;
    int pattern;
    int64_t poff, plen, off, count;
};

/* Options with a numeric argument: -l and -s. */
static int read_num_opt(int64_t *out, bool *seen)
{
    *seen = true;
    *out = io_cvtnum(optarg);
    if (*out < 0) {
        io_cvtnum_err(*out, optarg);
        return (int)*out;
    }
    return 0;
}

static int read_options(int argc, char **argv, struct read_args *a)
{
    int c, ret = 0;

    while (ret == 0 && (c = getopt(argc, argv, "bCl:pP:qs:v")) != -1) {
        switch (c) {
        case 'b':
            a->vmstate = true;
            break;
        case 'C':
            a->is_machine = true;
            break;
        case 'l':
            ret = read_num_opt(&a->plen, &a->has_plen);
            break;
        case 'p':
            break; /* ignored, as in qemu-io */
        case 'P':
            a->has_pattern = true;
            a->pattern = io_parse_pattern(optarg);
            if (a->pattern < 0)
                ret = -EINVAL;
            break;
        case 'q':
            a->is_quiet = true;
            break;
        case 's':
            ret = read_num_opt(&a->poff, &a->has_poff);
            break;
        case 'v':
            a->dump = true;
            break;
        default:
            io_usage(&io_cmd_read);
            return -EINVAL;
        }
    }
    return ret;
}

static int read_args(int argc, char **argv, struct read_args *a)
{
    int64_t end;
    int ret = read_options(argc, argv, a);

    if (ret < 0)
        return ret;
    if (optind != argc - 2) {
        io_usage(&io_cmd_read);
        return -EINVAL;
    }
    ret = parse_off_len(argv + optind, &a->off, &a->count, true, "");
    if (ret < 0)
        return ret;
    if (!a->has_pattern && (a->has_plen || a->has_poff)) {
        io_usage(&io_cmd_read);
        return -EINVAL;
    }
    if (!a->has_plen)
        a->plen = a->count - a->poff;
    if (a->plen < 0 || __builtin_add_overflow(a->plen, a->poff, &end) ||
        end > a->count) {
        printf("pattern verification range exceeds end of read data\n");
        return -EINVAL;
    }
    if (a->vmstate)
        return check_sector_aligned(a->off, a->count);
    return 0;
}

static int read_f(struct io_state *s, int argc, char **argv)
{
    struct read_args a = {0};
    struct timespec t0, d;
    uint8_t *buf;
    int ret = read_args(argc, argv, &a);

    if (ret < 0)
        return ret;
    buf = io_alloc(a.count, 0xab);
    if (!buf)
        return -ENOMEM;
    t0 = io_clock();
    ret = a.vmstate ? -ENOTSUP : do_read(s, buf, a.off, a.count);
    d = io_since(t0);
    if (ret < 0) {
        io_fail(s, "read", ret);
        goto out;
    }
    if (a.has_pattern && !matches(buf + a.poff, a.plen, a.pattern)) {
        printf("Pattern verification failed at offset %lld, %lld bytes\n",
               (long long)(a.off + a.poff), (long long)a.plen);
        ret = -EINVAL;
    }
    if (a.is_quiet)
        goto out;
    if (a.dump)
        io_dump(buf, a.off, a.count);
    io_report("read", d, a.off, a.count, a.count, a.is_machine);
out:
    free(buf);
    return ret;
}

const struct io_cmd io_cmd_read = {
    .name = "read",
    .altname = "r",
    .fn = read_f,
    .argmin = 2,
    .argmax = -1,
    .args = "[-abCqv] [-P pattern [-s off] [-l len]] off len",
    .oneline = "reads a number of bytes at a specified offset",
    .help =
        "\n"
        " reads a range of bytes from the given offset\n"
        "\n"
        " Example:\n"
        " 'read -v 512 1k' - dumps 1 kilobyte read from 512 bytes into the "
        "file\n"
        "\n"
        " Reads a segment of the currently open file, optionally dumping it to "
        "the\n"
        " standard output stream (with -v option) for subsequent inspection.\n"
        " -b, -- read from the VM state rather than the virtual disk\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -l, -- length for pattern verification (only with -P)\n"
        " -p, -- ignored for backwards compatibility\n"
        " -P, -- use a pattern to verify read data\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        " -s, -- start offset for pattern verification (only with -P)\n"
        " -v, -- dump buffer to standard output\n"
        "\n",
};

/* ---- readv / writev ----------------------------------------------------- */

/* Sum the lengths argv[0..n) as qemu-io's create_iovec() checks them. */
static int iov_total(char **argv, int n, int64_t *total)
{
    *total = 0;
    for (int i = 0; i < n; i++) {
        int64_t len = io_cvtnum(argv[i]);

        if (len < 0) {
            io_cvtnum_err(len, argv[i]);
            return -EINVAL;
        }
        if (len > IO_MAX_BYTES) {
            printf("Argument '%s' exceeds maximum size %lld\n", argv[i],
                   IO_MAX_BYTES);
            return -EINVAL;
        }
        if (*total > IO_MAX_BYTES - len) {
            printf("The total number of bytes exceed the maximum size "
                   "%lld\n",
                   IO_MAX_BYTES);
            return -EINVAL;
        }
        *total += len;
    }
    return 0;
}

struct vec_args {
    bool is_machine, is_quiet, dump, fua, has_pattern;
    int pattern;
    int64_t off, count;
};

static int vec_args(int argc, char **argv, const struct io_cmd *cmd,
                    struct vec_args *a)
{
    const char *optstr = cmd == &io_cmd_readv ? "CP:qv" : "CfqP:";
    int c;

    while ((c = getopt(argc, argv, optstr)) != -1) {
        if (c == 'C') {
            a->is_machine = true;
        } else if (c == 'q') {
            a->is_quiet = true;
        } else if (c == 'v') {
            a->dump = true;
        } else if (c == 'f') {
            a->fua = true;
        } else if (c == 'P') {
            a->has_pattern = true;
            a->pattern = io_parse_pattern(optarg);
            if (a->pattern < 0)
                return -EINVAL;
        } else {
            io_usage(cmd);
            return -EINVAL;
        }
    }
    if (optind > argc - 2) {
        io_usage(cmd);
        return -EINVAL;
    }
    a->off = io_cvtnum(argv[optind]);
    if (a->off < 0) {
        io_cvtnum_err(a->off, argv[optind]);
        return (int)a->off;
    }
    return iov_total(argv + optind + 1, argc - optind - 1, &a->count);
}

static int readv_f(struct io_state *s, int argc, char **argv)
{
    struct vec_args a = {0};
    struct timespec t0, d;
    uint8_t *buf;
    int ret = vec_args(argc, argv, &io_cmd_readv, &a);

    if (ret < 0)
        return ret;
    buf = io_alloc(a.count, 0xab);
    if (!buf)
        return -ENOMEM;
    t0 = io_clock();
    ret = do_read(s, buf, a.off, a.count);
    d = io_since(t0);
    if (ret < 0) {
        io_fail(s, "readv", ret);
        goto out;
    }
    if (a.has_pattern && !matches(buf, a.count, a.pattern)) {
        printf("Pattern verification failed at offset %lld, %lld bytes\n",
               (long long)a.off, (long long)a.count);
        ret = -EINVAL;
    }
    if (a.is_quiet)
        goto out;
    if (a.dump)
        io_dump(buf, a.off, a.count);
    io_report("read", d, a.off, a.count, a.count, a.is_machine);
out:
    free(buf);
    return ret;
}

const struct io_cmd io_cmd_readv = {
    .name = "readv",
    .fn = readv_f,
    .argmin = 2,
    .argmax = -1,
    .args = "[-Cqv] [-P pattern] off len [len..]",
    .oneline = "reads a number of bytes at a specified offset",
    .help =
        "\n"
        " reads a range of bytes from the given offset into multiple buffers\n"
        "\n"
        " Example:\n"
        " 'readv -v 512 1k 1k ' - dumps 2 kilobytes read from 512 bytes into "
        "the "
        "file\n"
        "\n"
        " Reads a segment of the currently open file, optionally dumping it to "
        "the\n"
        " standard output stream (with -v option) for subsequent inspection.\n"
        " Uses multiple iovec buffers if more than one byte range is "
        "specified.\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -P, -- use a pattern to verify read data\n"
        " -v, -- dump buffer to standard output\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        "\n",
};

/* ---- write -------------------------------------------------------------- */

/* QEMU refuses writes that would make a raw image whose format was guessed
 * look like another format on the next probe. The magics of the formats
 * whose probe is a plain signature check. */
static bool probes_as_other_format(const uint8_t *sec)
{
    static const struct {
        const char *magic;
        size_t len;
    } sigs[] = {
        {"QED", 4}, /* with its NUL */
        {"KDMV", 4}, {"COWD", 4}, {"conectix", 8}, {"vhdxfile", 8},
    };
    uint32_t version = (uint32_t)sec[4] << 24 | (uint32_t)sec[5] << 16 |
                       (uint32_t)sec[6] << 8 | sec[7];

    if (!memcmp(sec, "QFI\xfb", 4) && version >= 1)
        return true; /* qcow (1) and qcow2 (2, 3) */
    for (size_t i = 0; i < sizeof sigs / sizeof sigs[0]; i++)
        if (!memcmp(sec, sigs[i].magic, sigs[i].len))
            return true;
    return false;
}

/* -EPERM if writing buf at off changes sector 0 of a probed raw image into
 * something that probes as another format. */
static int guard_block0(struct io_state *s, const uint8_t *buf, int64_t off,
                        int64_t len)
{
    uint8_t sec[SECTOR] = {0};
    uint64_t size = qimg_image_size(s->img);
    int64_t n;
    int ret;

    if (!s->probed_raw || off >= SECTOR || len == 0)
        return 0;
    ret = qimg_image_read(s->img, sec, size < SECTOR ? size : SECTOR, 0);
    if (ret < 0)
        return ret;
    n = len < SECTOR - off ? len : SECTOR - off;
    memcpy(sec + off, buf, (size_t)n);
    return probes_as_other_format(sec) ? -EPERM : 0;
}

struct write_args {
    bool is_machine, is_quiet, vmstate, compressed, fua, no_fallback;
    bool unmap, zero, has_pattern;
    int pattern;
    const char *file;
    int64_t off, count;
};

static int write_options(int argc, char **argv, struct write_args *a)
{
    int c;

    while ((c = getopt(argc, argv, "bcCfnpP:qs:uz")) != -1) {
        switch (c) {
        case 'b':
            a->vmstate = true;
            break;
        case 'c':
            a->compressed = true;
            break;
        case 'C':
            a->is_machine = true;
            break;
        case 'f':
            a->fua = true;
            break;
        case 'n':
            a->no_fallback = true;
            break;
        case 'p':
            break; /* ignored, as in qemu-io */
        case 'P':
            a->has_pattern = true;
            a->pattern = io_parse_pattern(optarg);
            if (a->pattern < 0)
                return -EINVAL;
            break;
        case 'q':
            a->is_quiet = true;
            break;
        case 's':
            a->file = optarg;
            break;
        case 'u':
            a->unmap = true;
            break;
        case 'z':
            a->zero = true;
            break;
        default:
            io_usage(&io_cmd_write);
            return -EINVAL;
        }
    }
    return 0;
}

static const char *write_conflict(const struct write_args *a)
{
    if (a->vmstate && a->zero)
        return "-b and -z cannot be specified at the same time";
    if (a->fua && (a->vmstate || a->compressed))
        return "-f and -b or -c cannot be specified at the same time";
    if (a->no_fallback && !a->zero)
        return "-n requires -z to be specified";
    if (a->unmap && !a->zero)
        return "-u requires -z to be specified";
    if (a->zero + a->has_pattern + (a->file != NULL) > 1)
        return "Only one of -z, -P, and -s can be specified at the same time";
    return NULL;
}

static int write_args(int argc, char **argv, struct write_args *a)
{
    const char *conflict;
    int ret;

    a->pattern = 0xcd;
    ret = write_options(argc, argv, a);
    if (ret < 0)
        return ret;
    if (optind != argc - 2) {
        io_usage(&io_cmd_write);
        return -EINVAL;
    }
    conflict = write_conflict(a);
    if (conflict) {
        printf("%s\n", conflict);
        return -EINVAL;
    }
    ret = parse_off_len(argv + optind, &a->off, &a->count, !a->no_fallback,
                        " without -n");
    if (ret == 0 && (a->vmstate || a->compressed))
        ret = check_sector_aligned(a->off, a->count);
    return ret;
}

/* qemu-io's -s: the file's first bytes, repeated to fill len. */
static uint8_t *alloc_from_file(const char *name, int64_t len)
{
    FILE *f = fopen(name, "r");
    uint8_t *buf;
    size_t n;

    if (!f) {
        fflush(stdout);
        perror(name);
        return NULL;
    }
    buf = io_alloc(len, 0);
    n = buf ? fread(buf, 1, (size_t)len, f) : 0;
    if (buf && ferror(f)) {
        fflush(stdout);
        perror(name);
    } else if (buf && n == 0) {
        fflush(stdout);
        fprintf(stderr, "%s: file is empty\n", name);
    } else if (buf) {
        for (size_t i = n; i < (size_t)len; i++)
            buf[i] = buf[i - n];
        fclose(f);
        return buf;
    }
    free(buf);
    fclose(f);
    return NULL;
}

static int do_write(struct io_state *s, const struct write_args *a,
                    const uint8_t *buf)
{
    uint64_t off = (uint64_t)a->off, len = (uint64_t)a->count;
    int ret;

    if (a->vmstate)
        return -ENOTSUP;
    ret = io_check_range(s, a->off, a->count);
    if (ret < 0)
        return ret;
    if (a->zero) {
        ret = qimg_image_write_zeroes(
            s->img, off, len,
            (a->unmap ? QIMG_ZERO_UNMAP : 0) |
                (a->no_fallback ? QIMG_ZERO_NO_FALLBACK : 0));
    } else if (a->compressed) {
        ret = qimg_image_write_compressed(s->img, buf, (size_t)len, off);
    } else {
        ret = guard_block0(s, buf, a->off, a->count);
        if (ret == 0)
            ret = qimg_image_write(s->img, buf, (size_t)len, off);
    }
    if (ret == 0 && a->fua)
        ret = qimg_image_flush(s->img);
    return ret;
}

static int write_f(struct io_state *s, int argc, char **argv)
{
    struct write_args a = {0};
    struct timespec t0, d;
    uint8_t *buf = NULL;
    int ret = write_args(argc, argv, &a);

    if (ret < 0)
        return ret;
    if (!a.zero) {
        buf = a.file ? alloc_from_file(a.file, a.count)
                     : io_alloc(a.count, a.pattern);
        if (!buf)
            return -EINVAL;
    }
    t0 = io_clock();
    ret = do_write(s, &a, buf);
    d = io_since(t0);
    if (ret < 0)
        io_fail(s, "write", ret);
    else if (!a.is_quiet)
        io_report("wrote", d, a.off, a.count, a.count, a.is_machine);
    free(buf);
    return ret;
}

const struct io_cmd io_cmd_write = {
    .name = "write",
    .altname = "w",
    .fn = write_f,
    .argmin = 2,
    .argmax = -1,
    .flags = IO_WRITE,
    .args = "[-bcCfnquz] [-P pattern | -s source_file] off len",
    .oneline = "writes a number of bytes at a specified offset",
    .help =
        "\n"
        " writes a range of bytes from the given offset\n"
        "\n"
        " Example:\n"
        " 'write 512 1k' - writes 1 kilobyte at 512 bytes into the open file\n"
        "\n"
        " Writes into a segment of the currently open file, using a buffer\n"
        " filled with a set pattern (0xcdcdcdcd).\n"
        " -b, -- write to the VM state rather than the virtual disk\n"
        " -c, -- write compressed data with blk_write_compressed\n"
        " -f, -- use Force Unit Access semantics\n"
        " -n, -- with -z, don't allow slow fallback\n"
        " -p, -- ignored for backwards compatibility\n"
        " -P, -- use different pattern to fill file\n"
        " -s, -- use a pattern file to fill the write buffer\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        " -u, -- with -z, allow unmapping\n"
        " -z, -- write zeroes using blk_co_pwrite_zeroes\n"
        "\n",
};

static int writev_f(struct io_state *s, int argc, char **argv)
{
    struct vec_args a = {.pattern = 0xcd};
    struct timespec t0, d;
    uint8_t *buf;
    int ret = vec_args(argc, argv, &io_cmd_writev, &a);

    if (ret < 0)
        return ret;
    buf = io_alloc(a.count, a.pattern);
    if (!buf)
        return -ENOMEM;
    t0 = io_clock();
    ret = io_check_range(s, a.off, a.count);
    if (ret == 0)
        ret = guard_block0(s, buf, a.off, a.count);
    if (ret == 0 && a.count > 0)
        ret = qimg_image_write(s->img, buf, (size_t)a.count, (uint64_t)a.off);
    if (ret == 0 && a.fua)
        ret = qimg_image_flush(s->img);
    d = io_since(t0);
    if (ret < 0)
        io_fail(s, "writev", ret);
    else if (!a.is_quiet)
        io_report("wrote", d, a.off, a.count, a.count, a.is_machine);
    free(buf);
    return ret;
}

const struct io_cmd io_cmd_writev = {
    .name = "writev",
    .fn = writev_f,
    .argmin = 2,
    .argmax = -1,
    .flags = IO_WRITE,
    .args = "[-Cfq] [-P pattern] off len [len..]",
    .oneline = "writes a number of bytes at a specified offset",
    .help =
        "\n"
        " writes a range of bytes from the given offset source from multiple "
        "buffers\n"
        "\n"
        " Example:\n"
        " 'writev 512 1k 1k' - writes 2 kilobytes at 512 bytes into the open "
        "file\n"
        "\n"
        " Writes into a segment of the currently open file, using a buffer\n"
        " filled with a set pattern (0xcdcdcdcd).\n"
        " -P, -- use different pattern to fill file\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -f, -- use Force Unit Access semantics\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        "\n",
};

/* ---- discard, flush ----------------------------------------------------- */

static int discard_f(struct io_state *s, int argc, char **argv)
{
    bool is_machine = false, is_quiet = false;
    struct timespec t0, d;
    int64_t off = 0, len = 0;
    int c, ret;

    while ((c = getopt(argc, argv, "Cq")) != -1) {
        if (c == 'C') {
            is_machine = true;
        } else if (c == 'q') {
            is_quiet = true;
        } else {
            io_usage(&io_cmd_discard);
            return -EINVAL;
        }
    }
    if (optind != argc - 2) {
        io_usage(&io_cmd_discard);
        return -EINVAL;
    }
    ret = parse_off_len(argv + optind, &off, &len, true, "");
    if (ret < 0)
        return ret;
    t0 = io_clock();
    ret = io_check_range(s, off, len);
    if (ret == 0)
        ret = qimg_image_discard(s->img, (uint64_t)off, (uint64_t)len);
    d = io_since(t0);
    if (ret < 0) {
        io_fail(s, "discard", ret);
        return ret;
    }
    if (!is_quiet)
        io_report("discard", d, off, len, len, is_machine);
    return 0;
}

const struct io_cmd io_cmd_discard = {
    .name = "discard",
    .altname = "d",
    .fn = discard_f,
    .argmin = 2,
    .argmax = -1,
    .flags = IO_WRITE,
    .args = "[-Cq] off len",
    .oneline = "discards a number of bytes at a specified offset",
    .help =
        "\n"
        " discards a range of bytes from the given offset\n"
        "\n"
        " Example:\n"
        " 'discard 512 1k' - discards 1 kilobyte from 512 bytes into the file\n"
        "\n"
        " Discards a segment of the currently open file.\n"
        " -C, -- report statistics in a machine parsable format\n"
        " -q, -- quiet mode, do not show I/O statistics\n"
        "\n",
};

/* qemu-io's flush reports nothing, not even a failure; only corruption the
 * library found gets QEMU's warning. */
static int flush_f(struct io_state *s, int argc, char **argv)
{
    int ret;

    (void)argc;
    (void)argv;
    if (s->is_dead)
        return -ENOMEDIUM;
    ret = qimg_image_flush(s->img);
    if (ret < 0)
        io_note_error(s, ret);
    return ret;
}

const struct io_cmd io_cmd_flush = {
    .name = "flush",
    .altname = "f",
    .fn = flush_f,
    .argmin = 0,
    .argmax = 0,
    .oneline = "flush all in-core file state to disk",
};
