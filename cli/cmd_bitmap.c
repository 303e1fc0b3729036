/*
 * cmd_bitmap.c - qimg bitmap: qemu-img 7.2's `bitmap` for qcow2 images.
 *
 *   bitmap (--merge SOURCE | --add | --remove | --clear | --enable |
 *           --disable)... [-b source_file [-F source_fmt]] [-g granularity]
 *           [--object objectdef] [--image-opts | -f fmt] filename bitmap
 *
 * The checks come in qemu-img's order: the options as they are read, then
 * the combinations, then the file names, the opens, and each action in
 * turn. Unlike qemu-img, which stores after each action, the library
 * commits all of them at once: a failing action leaves the file as it was.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

struct bitmap_args {
    const char *fmt, *src_file, *src_fmt;
    bool image_opts;
    uint64_t granularity;
    struct qimg_bitmap_action *acts;
    size_t n;
};

static const char *op_name(enum qimg_bitmap_op op)
{
    static const char *const names[] = {"add", "remove", "clear", "enable",
                                        "disable", "merge"};

    return names[op];
}

static int push(struct bitmap_args *a, enum qimg_bitmap_op op,
                const char *source)
{
    struct qimg_bitmap_action *n = realloc(a->acts, (a->n + 1) * sizeof *n);

    if (!n) {
        cli_error("Out of memory");
        return 1;
    }
    a->acts = n;
    memset(&n[a->n], 0, sizeof *n);
    n[a->n].op = op;
    n[a->n].source = source;
    a->n++;
    return 0;
}

static int parse_args(int argc, char **argv, struct bitmap_args *a)
{
    enum {
        OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_ADD, OPT_REMOVE, OPT_CLEAR,
        OPT_ENABLE, OPT_DISABLE, OPT_MERGE
    };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"add", no_argument, NULL, OPT_ADD},
        {"remove", no_argument, NULL, OPT_REMOVE},
        {"clear", no_argument, NULL, OPT_CLEAR},
        {"enable", no_argument, NULL, OPT_ENABLE},
        {"disable", no_argument, NULL, OPT_DISABLE},
        {"merge", required_argument, NULL, OPT_MERGE},
        {NULL, 0, NULL, 0},
    };
    bool add = false, merge = false;
    int c, ret = 0;

    opterr = 0;
    optind = 1;
    while (ret == 0 &&
           (c = getopt_long(argc, argv, ":b:f:F:g:h", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'b':
            a->src_file = optarg;
            break;
        case 'f':
            a->fmt = optarg;
            break;
        case 'F':
            a->src_fmt = optarg;
            break;
        case 'g':
            if (parse_size(optarg, &a->granularity) < 0)
                return cli_bad_number("granularity");
            break;
        case OPT_ADD:
            add = true;
            ret = push(a, QIMG_BITMAP_ADD, NULL);
            break;
        case OPT_REMOVE:
            ret = push(a, QIMG_BITMAP_REMOVE, NULL);
            break;
        case OPT_CLEAR:
            ret = push(a, QIMG_BITMAP_CLEAR, NULL);
            break;
        case OPT_ENABLE:
            ret = push(a, QIMG_BITMAP_ENABLE, NULL);
            break;
        case OPT_DISABLE:
            ret = push(a, QIMG_BITMAP_DISABLE, NULL);
            break;
        case OPT_MERGE:
            merge = true;
            ret = push(a, QIMG_BITMAP_MERGE, optarg);
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
    if (ret)
        return ret;
    if (a->image_opts && a->fmt) {
        cli_error("--image-opts and --format are mutually exclusive");
        return 1;
    }
    if (a->n == 0) {
        cli_error("Need at least one of --add, --remove, --clear, --enable, "
                  "--disable, or --merge");
        return 1;
    }
    if (a->granularity && !add) {
        cli_error("granularity only supported with --add");
        return 1;
    }
    if (a->src_fmt && !a->src_file) {
        cli_error("-F only supported with -b");
        return 1;
    }
    if (a->src_file && !merge) {
        cli_error("Merge bitmap source file only supported with --merge");
        return 1;
    }
    if (optind != argc - 2) {
        cli_error("Expecting filename and bitmap name");
        return 1;
    }
    return 0;
}

static int run(struct bitmap_args *a, const char *file, const char *name)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT, so = CLI_OPEN_OPTS_INIT;
    qimg_image *img = NULL, *src = NULL;
    size_t failed = 0;
    int ret;

    o.read_write = true;
    if (cli_open(&img, file, a->fmt, a->image_opts, &o) < 0)
        return 1;
    if (qimg_image_format(img) != QIMG_FMT_QCOW2 && o.fmt == QIMG_FMT_AUTO)
        cli_warn_raw_probe(file);
    if (a->src_file &&
        cli_open(&src, a->src_file, a->src_fmt, false, &so) < 0) {
        qimg_image_close(img);
        return 1;
    }
    for (size_t i = 0; i < a->n; i++) {
        a->acts[i].name = name;
        /* qemu-img's -g is an unsigned 32-bit number (one that is 0 once
         * cut was given all the same: 1 is refused as it is). */
        a->acts[i].granularity = (uint32_t)a->granularity;
        if (a->granularity && !a->acts[i].granularity)
            a->acts[i].granularity = 1;
        a->acts[i].source_image = src;
    }
    ret = qimg_bitmap_change(img, a->acts, a->n, &failed);
    if (ret < 0) {
        const char *msg = qimg_last_error()->message;
        cli_error("Operation %s on bitmap %s failed: %s",
                  op_name(a->acts[failed].op), name, msg);
        if (strstr(msg, "is inconsistent and cannot be used"))
            fputs("Try block-dirty-bitmap-remove to delete this bitmap from "
                  "disk\n",
                  stderr);
    }
    if (qimg_image_close(img) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = -1;
    }
    qimg_image_close(src);
    return ret < 0 ? 1 : 0;
}

int cmd_bitmap(int argc, char **argv)
{
    struct bitmap_args a = {0};
    int ret = parse_args(argc, argv, &a);

    if (ret == 0)
        ret = run(&a, argv[optind], argv[optind + 1]);
    free(a.acts);
    return ret;
}
