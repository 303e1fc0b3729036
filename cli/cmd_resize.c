/*
 * cmd_resize.c - qimg resize: qemu-img 7.2's `resize`.
 *
 * The size is taken off the end of the command line before the options
 * are parsed, as qemu-img does, so that "-1G" is a size and not an
 * option. qcow2 images switch from the old size to the new with one write
 * of header sector 0 (qimg_image_resize); raw files are truncated.
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

struct resize_args {
    const char *file, *fmt, *size;
    enum qimg_prealloc prealloc;
    bool shrink, quiet, image_opts;
};

static int parse_prealloc(const char *s, enum qimg_prealloc *out)
{
    static const char *const names[] = {"off", "metadata", "falloc", "full"};

    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
        if (!strcmp(s, names[i])) {
            *out = (enum qimg_prealloc)i;
            return 0;
        }
    return -1;
}

static int parse_args(int argc, char **argv, struct resize_args *a)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_PREALLOC, OPT_SHRINK };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"preallocation", required_argument, NULL, OPT_PREALLOC},
        {"shrink", no_argument, NULL, OPT_SHRINK},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    if (argc < 3)
        return cli_usage_error("Not enough arguments");
    a->size = argv[--argc];
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            a->fmt = optarg;
            break;
        case 'q':
            a->quiet = true;
            break;
        case OPT_OBJECT:
            break;
        case OPT_IMAGE_OPTS:
            a->image_opts = true;
            break;
        case OPT_PREALLOC:
            if (parse_prealloc(optarg, &a->prealloc) < 0) {
                cli_error("Invalid preallocation mode '%s'", optarg);
                return 1;
            }
            break;
        case OPT_SHRINK:
            a->shrink = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting image file name and size");
    a->file = argv[optind];
    return 0;
}

/* The new size from "[+|-]SIZE" and the current one; 0 with a message
 * where qemu-img refuses. */
static int new_size(const struct resize_args *a, uint64_t cur, uint64_t *out)
{
    const char *s = a->size;
    int rel = *s == '+' ? 1 : *s == '-' ? -1 : 0;
    uint64_t n;
    int64_t total;

    if (rel)
        s++;
    if (parse_size(s, &n) < 0) {
        cli_error("Parameter 'size' expects a non-negative number below "
                  "2^64");
        fputs("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, "
              "tera-, peta-\nand exabytes, respectively.\n",
              stderr);
        return -1;
    }
    /* qemu-img computes in int64_t, wrapping as two's complement does. */
    total = rel ? (int64_t)(cur + (rel > 0 ? n : -n)) : (int64_t)n;
    if (total <= 0) {
        cli_error("New image size must be positive");
        return -1;
    }
    if ((uint64_t)total <= cur && a->prealloc != QIMG_PREALLOC_OFF) {
        cli_error("Preallocation can only be used for growing images");
        return -1;
    }
    if ((uint64_t)total < cur && !a->shrink) {
        cli_error("Use the --shrink option to perform a shrink operation.");
        cli_error("warning: Shrinking an image will delete all data beyond "
                  "the shrunken image's end. Before performing such an "
                  "operation, make sure there is no important data there.");
        return -1;
    }
    *out = (uint64_t)total;
    return 0;
}

int cmd_resize(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct resize_args a;
    qimg_image *img = NULL;
    uint64_t size;
    int ret = parse_args(argc, argv, &a);

    if (ret)
        return ret;
    o.read_write = true;
    if (cli_open(&img, a.file, a.fmt, a.image_opts, &o) < 0)
        return 1;
    if (o.fmt == QIMG_FMT_AUTO && qimg_image_format(img) == QIMG_FMT_RAW)
        cli_warn_raw_probe(a.file);
    if (new_size(&a, qimg_image_size(img), &size) < 0) {
        qimg_image_close(img);
        return 1;
    }
    ret = qimg_image_resize(img, size, a.prealloc);
    if (ret < 0) {
        cli_lib_error("%s", "");
        if (strstr(qimg_last_error()->message, "is inconsistent and cannot "
                                                "be used"))
            fputs("Try block-dirty-bitmap-remove to delete this bitmap from "
                  "disk\n",
                  stderr);
        qimg_image_close(img);
        return 1;
    }
    if (qimg_image_close(img) < 0) {
        cli_lib_error("%s", "");
        return 1;
    }
    if (!a.quiet)
        printf("Image resized.\n");
    return 0;
}
