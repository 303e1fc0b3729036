/*
 * cmd_amend.c - qimg amend: qemu-img 7.2's `amend` for qcow2 images.
 *
 * The checks come in qemu-img's order: the option lists as they are read,
 * the file name, the cache mode, the open, the format, `-o help`, then
 * each option's value in the order of qcow2's amend option list. What the
 * library then refuses, it refuses before writing anything (qemu-img may
 * have upgraded the image, or resized it, before refusing).
 */
#include "cli.h"
#include "create_opts.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

struct amend_args {
    const char *file, *fmt, *cache;
    char *options; /* every -o joined with ',' */
    bool progress, quiet, image_opts;
};

static int parse_args(int argc, char **argv, struct amend_args *a)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_FORCE };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"force", no_argument, NULL, OPT_FORCE},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    a->cache = "writeback";
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":ho:f:t:pq", longopts, NULL)) !=
           -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'o':
            if (copts_append(&a->options, optarg) < 0)
                return 1;
            break;
        case 'f':
            a->fmt = optarg;
            break;
        case 't':
            a->cache = optarg;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case OPT_OBJECT:
        case OPT_FORCE:
            break;
        case OPT_IMAGE_OPTS:
            a->image_opts = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (!a->options)
        return cli_usage_error("Must specify options (-o)");
    if (a->quiet)
        a->progress = false;
    return 0;
}

/* The values, checked in the order of qcow2's amend option list. */
static int to_lib(const struct create_params *p, struct qimg_amend_opts *o)
{
    const char *compat = copts_str(p, COPT_COMPAT);

    if (p->is_set[COPT_BACKING_FILE] || p->is_set[COPT_BACKING_FMT]) {
        cli_error("Cannot amend the backing file");
        fprintf(stderr, "You can use '%s rebase' instead.\n", cli_prog);
        return -1;
    }
    if (compat) {
        if (!strcmp(compat, "0.10") || !strcmp(compat, "v2")) {
            o->compat = 2;
        } else if (!strcmp(compat, "1.1") || !strcmp(compat, "v3")) {
            o->compat = 3;
        } else {
            cli_error("Unknown compatibility level %s", compat);
            return -1;
        }
    }
    if (p->is_set[COPT_DATA_FILE]) {
        cli_error("data-file can only be set for images that use an "
                  "external data file");
        return -1;
    }
    if (p->is_set[COPT_DATA_FILE_RAW] && p->flag[COPT_DATA_FILE_RAW]) {
        cli_error("data-file-raw cannot be set on existing images");
        return -1;
    }
    if (p->is_set[COPT_ENCRYPT_NUM] || p->is_set[COPT_ENCRYPT_STR]) {
        cli_error("Can't amend encryption options - encryption not present");
        return -1;
    }
    if (p->is_set[COPT_LAZY_REFCOUNTS])
        o->lazy_refcounts = p->flag[COPT_LAZY_REFCOUNTS];
    if (p->is_set[COPT_REFCOUNT_BITS]) {
        uint64_t bits = p->num[COPT_REFCOUNT_BITS];
        if (bits == 0 || bits > 64 || (bits & (bits - 1))) {
            cli_error("Refcount width must be a power of two and may not "
                      "exceed 64 bits");
            return -1;
        }
        o->refcount_bits = (unsigned)bits;
    }
    if (p->is_set[COPT_SIZE])
        o->size = p->num[COPT_SIZE];
    return 0;
}

static int amend(const struct amend_args *a, qimg_image *img)
{
    struct create_params p = {.fmt = QIMG_FMT_QCOW2, .amend = true};
    struct qimg_amend_opts o = QIMG_AMEND_OPTS_INIT;
    int ret;

    if (copts_has_help(a->options)) {
        copts_print_amend_help();
        return 0;
    }
    if (copts_parse(&p, a->options, NULL) < 0 || to_lib(&p, &o) < 0) {
        copts_free(&p);
        return 1;
    }
    copts_free(&p);
    progress_init(a->progress, 1.0f);
    progress_print(0, 100);
    ret = qimg_image_amend(img, &o);
    progress_print(100, 0);
    if (ret < 0)
        cli_lib_error("%s", "");
    return ret < 0 ? 1 : 0;
}

int cmd_amend(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct amend_args a;
    qimg_image *img = NULL;
    int ret = parse_args(argc, argv, &a);

    if (ret) {
        free(a.options);
        return ret;
    }
    /* With a format given, -o help needs no image. */
    if (a.fmt && copts_has_help(a.options)) {
        ret = 1;
        if (!strcmp(a.fmt, "qcow2")) {
            copts_print_amend_help();
            ret = 0;
        } else if (copts_is_block_driver(a.fmt)) {
            cli_error("Format driver '%s' does not support option "
                      "amendment", a.fmt);
        } else {
            cli_error("Unknown file format '%s'", a.fmt);
        }
        free(a.options);
        return ret;
    }
    if (optind != argc - 1) {
        cli_error("Expecting one image file name");
        free(a.options);
        return 1;
    }
    a.file = argv[optind];
    if (!cache_mode_ok(a.cache)) {
        cli_error("Invalid cache option: %s", a.cache);
        free(a.options);
        return 1;
    }
    o.read_write = true;
    if (cli_open(&img, a.file, a.fmt, a.image_opts, &o) < 0) {
        free(a.options);
        return 1;
    }
    if (qimg_image_format(img) != QIMG_FMT_QCOW2) {
        if (o.fmt == QIMG_FMT_AUTO)
            cli_warn_raw_probe(a.file);
        cli_error("Format driver 'raw' does not support option amendment");
        ret = 1;
    } else {
        ret = amend(&a, img);
    }
    progress_end();
    if (qimg_image_close(img) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = 1;
    }
    free(a.options);
    return ret;
}
