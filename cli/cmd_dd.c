/*
 * cmd_dd.c - qimg dd: qemu-img 7.2's `dd`.
 *
 * Operands as qemu-img takes them (bs=, count=, skip=, if=, of=), with
 * its arithmetic: the output is created at min(size, count * bs) less
 * skip * bs bytes (count counts the skipped blocks too), and blocks are
 * copied from skip * bs up to there. Blocks of zeros are not written: the
 * new output reads as zeros there already, and stays sparse.
 */
#include "cli.h"

#include <getopt.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

struct dd_args {
    const char *in, *out, *fmt, *out_fmt;
    uint64_t bs, count, skip;
    bool has_in, has_out, has_count, has_skip, image_opts, force_share;
};

/* qemu-img's cvtnum_full(): a size in [min, max], or an error naming it. */
static int operand_num(const char *name, const char *v, uint64_t min,
                       uint64_t max, uint64_t *out)
{
    if (parse_size(v, out) < 0 || *out > INT64_MAX) {
        cli_bad_number(name);
        return -1;
    }
    if (*out < min || *out > max) {
        cli_error("Invalid %s specified. Must be between %llu and %llu.", name,
                  (unsigned long long)min, (unsigned long long)max);
        return -1;
    }
    return 0;
}

static int operand(struct dd_args *a, const char *arg)
{
    const char *eq = strchr(arg, '=');
    size_t klen = eq ? (size_t)(eq - arg) : 0;
    const char *v = eq ? eq + 1 : NULL;

#define KEY(k) (klen == strlen(k) && !strncmp(arg, k, klen))
    if (eq && KEY("bs"))
        return operand_num("bs", v, 1, INT_MAX, &a->bs);
    if (eq && KEY("count")) {
        a->has_count = true;
        return operand_num("count", v, 0, INT64_MAX, &a->count);
    }
    if (eq && KEY("skip")) {
        a->has_skip = true;
        return operand_num("skip", v, 0, INT64_MAX, &a->skip);
    }
    if (eq && KEY("if")) {
        a->in = v;
        a->has_in = true;
        return 0;
    }
    if (eq && KEY("of")) {
        a->out = v;
        a->has_out = true;
        return 0;
    }
#undef KEY
    cli_error("unrecognized operand %.*s", eq ? (int)klen : (int)strlen(arg),
              arg);
    return -1;
}

static int parse_args(int argc, char **argv, struct dd_args *a)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    int c;

    a->out_fmt = "raw";
    a->bs = 512;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:O:U", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            a->fmt = optarg;
            break;
        case 'O':
            a->out_fmt = optarg;
            break;
        case 'U':
            a->force_share = true;
            break;
        case OPT_OBJECT:
            break;
        case OPT_IMAGE_OPTS:
            a->image_opts = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    for (int i = optind; i < argc; i++)
        if (operand(a, argv[i]) < 0)
            return 1;
    if (!a->has_in || !a->has_out) {
        cli_error("Must specify both input and output files");
        return 1;
    }
    return 0;
}

static int copy(const struct dd_args *a, qimg_image *in, qimg_image *out,
                uint64_t pos, uint64_t size)
{
    uint8_t *buf = data_buf_alloc(a->bs);
    uint64_t out_pos = 0;
    int ret = 0;

    if (!buf) {
        cli_error("Out of memory");
        return -1;
    }
    while (ret == 0 && pos < size) {
        size_t n = (size_t)(size - pos < a->bs ? size - pos : a->bs);
        if (qimg_image_read(in, buf, n, pos) < 0) {
            cli_lib_error("error while reading from input image file: ");
            ret = -1;
        } else if (!buf_is_zero(buf, n) &&
                   qimg_image_write(out, buf, n, out_pos) < 0) {
            cli_lib_error("error while writing to output image file: ");
            ret = -1;
        }
        pos += n;
        out_pos += n;
    }
    free(buf);
    return ret;
}

int cmd_dd(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct qimg_create_opts co = QIMG_CREATE_OPTS_INIT;
    struct dd_args a = {0};
    qimg_image *in = NULL, *out = NULL;
    enum qimg_format ofmt;
    uint64_t size, pos;
    bool past_end;
    int ret = parse_args(argc, argv, &a);

    if (ret)
        return ret;
    ret = 1;
    o.force_share = a.force_share;
    if (cli_open(&in, a.in, a.fmt, a.image_opts, &o) < 0)
        return 1;
    if (parse_format(a.out_fmt, &ofmt) < 0 || ofmt == QIMG_FMT_AUTO) {
        cli_error("Unknown file format");
        goto out;
    }
    size = qimg_image_size(in);
    if (a.has_count && a.count <= INT64_MAX / a.bs && size > a.count * a.bs)
        size = a.count * a.bs;
    past_end = a.has_skip && (a.skip > INT64_MAX / a.bs || size < a.skip * a.bs);
    co.fmt = ofmt;
    co.size = past_end ? 0 : size - a.skip * a.bs;
    if (qimg_image_create(a.out, &co) < 0) {
        cli_lib_error("%s: error while creating output image: ", a.out);
        goto out;
    }
    o = (struct qimg_open_opts)CLI_OPEN_OPTS_INIT;
    o.fmt = ofmt;
    o.read_write = true;
    o.no_backing = true;
    if (qimg_image_open(&out, a.out, &o) < 0) {
        cli_lib_error("Could not open '%s': ", a.out);
        goto out;
    }
    if (past_end) {
        /* As dd(1) and qemu-img: an empty output, and a word. */
        cli_error("%s: cannot skip to specified offset", a.in);
        pos = size;
    } else {
        pos = a.skip * a.bs;
    }
    if (copy(&a, in, out, pos, size) == 0)
        ret = 0;
out:
    if (out && qimg_image_close(out) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = 1;
    }
    qimg_image_close(in);
    return ret;
}
