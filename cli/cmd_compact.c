/*
 * cmd_compact.c - qimg compact: give a qcow2 file's free space back in
 * place, keeping every snapshot, bitmap and the backing link (qemu-img has
 * no such command; its remedy is a convert, which drops the snapshots).
 */
#include "cli.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

struct compact_args {
    const char *file, *fmt;
    bool progress, quiet, image_opts, json;
};

static int parse_args(int argc, char **argv, struct compact_args *a)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_OUTPUT };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {NULL, 0, NULL, 0},
    };
    int c;

    memset(a, 0, sizeof *a);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hpq", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            a->fmt = optarg;
            break;
        case 'p':
            a->progress = true;
            break;
        case 'q':
            a->quiet = true;
            break;
        case OPT_OBJECT:
            break;
        case OPT_IMAGE_OPTS:
            a->image_opts = true;
            break;
        case OPT_OUTPUT:
            if (cli_output_json(optarg, &a->json))
                return 1;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->file = argv[optind];
    if (a->quiet)
        a->progress = false;
    return 0;
}

static void on_progress(void *opaque, uint64_t done, uint64_t total)
{
    bool *at_end = opaque;

    if (total)
        progress_print((float)(100.0 * (double)done / (double)total), 0);
    *at_end = done == total;
}

static void report(const struct compact_args *a,
                   const struct qimg_compact_result *r)
{
    char o[32], n[32], m[32];

    if (a->json) {
        struct jv *j = jv_obj();
        jv_set(j, "old-file-size", jv_uint(r->old_file_size));
        jv_set(j, "new-file-size", jv_uint(r->new_file_size));
        jv_set(j, "moved-bytes", jv_uint(r->moved_bytes));
        jv_set(j, "leaks-repaired", jv_int(r->leaks_repaired));
        jv_print(stdout, j);
        putchar('\n');
        jv_free(j);
        return;
    }
    if (a->quiet)
        return;
    fmt_size(o, sizeof o, r->old_file_size);
    fmt_size(n, sizeof n, r->new_file_size);
    fmt_size(m, sizeof m, r->moved_bytes);
    if (r->leaks_repaired)
        printf("%lld leaked clusters were repaired.\n",
               (long long)r->leaks_repaired);
    printf("Image compacted: file size %s -> %s (%s moved).\n", o, n, m);
}

int cmd_compact(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct qimg_compact_result r;
    struct compact_args a;
    qimg_image *img = NULL;
    bool at_end = false;
    int ret = parse_args(argc, argv, &a);

    if (ret)
        return ret;
    o.read_write = true;
    if (cli_open(&img, a.file, a.fmt, a.image_opts, &o) < 0)
        return 1;
    progress_init(a.progress, 1.0f);
    progress_print(0, 0);
    ret = qimg_image_compact(img, a.progress ? on_progress : NULL, &at_end,
                             &r);
    if (ret == 0 && !at_end)
        progress_print(100, 0);
    progress_end();
    if (ret < 0) {
        cli_lib_error("%s", "");
        qimg_image_close(img);
        return 1;
    }
    if (qimg_image_close(img) < 0) {
        cli_lib_error("%s", "");
        return 1;
    }
    report(&a, &r);
    return 0;
}
