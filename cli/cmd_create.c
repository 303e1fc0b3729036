/*
 * cmd_create.c - qimg create: make a new qcow2 or raw image file.
 *
 *   qimg create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u]
 *               [-o options] FILE [SIZE]
 *
 * Follows qemu-img 7.2 step by step, because the step decides what the
 * user sees: argument errors; the size argument; the -o list (type errors,
 * unknown names); the backing file (opened to check it and to take its
 * size, unless -u); the missing size; then the "Formatting ..." line on
 * stdout; only then the errors the format driver finds (cluster size,
 * compat combinations, enumerations, size too large, I/O). Option parsing
 * and the Formatting line live in create_opts.c.
 *
 * One deliberate difference: qemu-img deletes the target file when the
 * driver refuses the options, even a file that existed before. qimg
 * checks every option before it creates or truncates anything, so a
 * refused create leaves an existing file untouched.
 */
#include "cli.h"
#include "create_opts.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

struct create_args {
    const char *fmt;      /* -f; qemu-img's default is raw */
    const char *base;     /* -b */
    const char *base_fmt; /* -F */
    char *options;        /* every -o, joined with ',' */
    bool quiet, unsafe;
    const char *filename;
    bool has_size;
    uint64_t size;
};

/* Options; returns -1 to go on, or the exit code. */
static int parse_opts(struct create_args *a, int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, ":F:b:f:ho:qu", long_opts,
                            NULL)) != -1) {
        switch (c) {
        case 'F':
            a->base_fmt = optarg;
            break;
        case 'b':
            a->base = optarg;
            break;
        case 'f':
            a->fmt = optarg;
            break;
        case 'h':
            cli_help();
            return 0;
        case 'o':
            if (copts_append(&a->options, optarg) < 0)
                return 1;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'u':
            a->unsafe = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    return -1;
}

/* FILE and SIZE; returns -1 to go on, or the exit code. */
static int parse_operands(struct create_args *a, int argc, char **argv)
{
    int ret;

    a->filename = optind < argc ? argv[optind] : NULL;
    if (a->options && copts_has_help(a->options))
        return copts_print_help(a->fmt, a->filename);
    if (optind >= argc)
        return cli_usage_error("Expecting image file name");
    optind++;
    if (optind < argc) {
        ret = parse_size(argv[optind++], &a->size);
        if (ret == -1) {
            return cli_bad_number("image size");
        }
        if (ret < 0 || a->size > (uint64_t)INT64_MAX) {
            cli_error("Invalid image size specified. Must be between 0 and "
                      "9223372036854775807.");
            return 1;
        }
        a->has_size = true;
    }
    if (optind != argc)
        return cli_usage_error("Unexpected argument: %s", argv[optind]);
    return -1;
}

/* -b and -F join the -o settings (and override them). */
static int set_backing(struct create_params *p, const struct create_args *a)
{
    const char *bf;

    if (a->base) {
        if (p->fmt == QIMG_FMT_RAW) {
            cli_error("%s: Backing file not supported for file format 'raw'",
                      a->filename);
            return -1;
        }
        copts_set_str(p, COPT_BACKING_FILE, a->base);
    }
    if (a->base_fmt) {
        if (p->fmt == QIMG_FMT_RAW) {
            cli_error("%s: Backing file format not supported for file "
                      "format 'raw'", a->filename);
            return -1;
        }
        copts_set_str(p, COPT_BACKING_FMT, a->base_fmt);
    }
    bf = copts_str(p, COPT_BACKING_FILE);
    if (bf && !strcmp(bf, a->filename)) {
        cli_error("%s: Error: Trying to create an image with the same "
                  "filename as the backing file", a->filename);
        return -1;
    }
    if (bf && !bf[0]) {
        cli_error("%s: Expected backing file name, got empty string",
                  a->filename);
        return -1;
    }
    return 0;
}

static qimg_image *open_backing(const char *filename, const char *bf,
                                const char *bfmt)
{
    struct qimg_open_opts oo = CLI_OPEN_OPTS_INIT;
    qimg_image *img = NULL;
    char *path;

    /* "file" is QEMU's protocol driver: the bytes as they are, i.e. raw. */
    if (bfmt && !strcmp(bfmt, "file")) {
        oo.fmt = QIMG_FMT_RAW;
    } else if (bfmt && parse_format(bfmt, &oo.fmt) < 0) {
        cli_error("%s: Unknown driver '%s'", filename, bfmt);
        fputs("Could not open backing image.\n", stderr);
        return NULL;
    }
    oo.force_share = true;
    path = cli_backing_path(filename, bf);
    if (!path) {
        cli_error("Out of memory");
        return NULL;
    }
    if (qimg_image_open(&img, path, &oo) < 0) {
        cli_lib_error("%s: ", filename);
        fputs("Could not open backing image.\n", stderr);
    }
    free(path);
    return img;
}

/* Open the backing file (unless -u) to check it and to take its size when
 * none was given. */
static int probe_backing(struct create_params *p, const struct create_args *a)
{
    const char *bf = copts_str(p, COPT_BACKING_FILE);
    const char *bfmt = copts_str(p, COPT_BACKING_FMT);
    qimg_image *img;

    if (!bf)
        return 0;
    if (a->unsafe) {
        if (bfmt)
            return 0;
        cli_error("%s: Backing file specified without backing format",
                  a->filename);
        return -1;
    }
    img = open_backing(a->filename, bf, bfmt);
    if (!img)
        return -1;
    if (!bfmt) {
        cli_error("%s: Backing file specified without backing format",
                  a->filename);
        fprintf(stderr, "Detected format of %s.",
                qimg_image_format(img) == QIMG_FMT_RAW ? "raw" : "qcow2");
        qimg_image_close(img);
        return -1;
    }
    if (!p->is_set[COPT_SIZE])
        copts_set_num(p, COPT_SIZE, qimg_image_size(img));
    qimg_image_close(img);
    return 0;
}

/* Everything qemu-img checks before it prints the Formatting line. */
static int prepare(struct create_params *p, const struct create_args *a)
{
    if (parse_format(a->fmt, &p->fmt) < 0) {
        cli_error("%s: Unknown file format '%s'", a->filename, a->fmt);
        return -1;
    }
    if (a->options && copts_parse(p, a->options, a->filename) < 0)
        return -1;
    if (p->is_set[COPT_SIZE] && a->has_size) {
        cli_error("%s: The image size must be specified only once",
                  a->filename);
        return -1;
    }
    /* QEMU uses a size of 2^64-1 to mean "none given". */
    if (p->is_set[COPT_SIZE] && p->num[COPT_SIZE] == UINT64_MAX)
        p->is_set[COPT_SIZE] = false;
    if (a->has_size)
        copts_set_num(p, COPT_SIZE, a->size);
    if (set_backing(p, a) < 0 || probe_backing(p, a) < 0)
        return -1;
    if (!p->is_set[COPT_SIZE]) {
        cli_error("%s: Image creation needs a size parameter", a->filename);
        return -1;
    }
    return 0;
}

static int img_create(const struct create_args *a)
{
    struct create_params p = {0};
    struct qimg_create_opts o;
    int ret = 1;

    if (prepare(&p, a) < 0)
        goto out;
    if (!a->quiet)
        copts_print_formatting(&p, a->filename);
    if (copts_to_lib(&p, &o, a->filename) < 0)
        goto out;
    if (qimg_image_create(a->filename, &o) < 0) {
        cli_lib_error("%s: ", a->filename);
        goto out;
    }
    ret = 0;
out:
    copts_free(&p);
    return ret;
}

int cmd_create(int argc, char **argv)
{
    struct create_args a = {.fmt = "raw"};
    int ret = parse_opts(&a, argc, argv);

    if (ret < 0)
        ret = parse_operands(&a, argc, argv);
    if (ret < 0)
        ret = img_create(&a);
    free(a.options);
    return ret;
}
