/*
 * cmd_info.c - qimg info: what an image is and what it contains.
 *
 *   qimg info [-f fmt] [--output=human|json] [--backing-chain] [-U] FILE
 *
 * Prints what qemu-img 7.2 prints, human or JSON. Each layer is opened on
 * its own, without its backing chain, as qemu-img does: a missing backing
 * file does not stop a plain `info`, and --backing-chain then opens the
 * backing file by its resolved name, in its recorded format, as the next
 * layer. All layers are read before anything is printed, so a failure
 * prints no partial output.
 *
 * JSON objects go through `struct jv`, which orders keys the way QEMU's
 * hash tables do; members are added in QEMU's own order so that keys
 * sharing a hash bucket come out right too. The human "Format specific
 * information" block is QEMU dumping that same JSON tree, so its lines
 * follow the JSON key order, which is spelled out below.
 */
#include "cli.h"
#include "snaptable.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct layer {
    const char *filename; /* as given, then the resolved backing names */
    struct qimg_info *info;
    struct qimg_snapshot *snaps;
    size_t nb_snaps;
};

struct info_args {
    const char *fmt;
    bool json, chain, force_share;
    const char *filename;
};

enum { OPT_OUTPUT = 256, OPT_BACKING_CHAIN };

/* ---- Collecting -------------------------------------------------------- */

static int open_layer(struct layer *l, const char *filename, const char *fmt,
                      bool force_share)
{
    struct qimg_open_opts oo = CLI_OPEN_OPTS_INIT;
    qimg_image *img;
    int ret;

    if (fmt && parse_format(fmt, &oo.fmt) < 0) {
        cli_error("Could not open '%s': Unknown driver '%s'", filename, fmt);
        return -1;
    }
    oo.no_backing = true;
    oo.force_share = force_share;
    oo.no_io = true;
    if (qimg_image_open(&img, filename, &oo) < 0) {
        cli_lib_error("Could not open '%s': ", filename);
        return -1;
    }
    l->filename = filename;
    ret = qimg_image_info(&l->info, img);
    if (ret == 0 && !l->info->has_data_file) /* qemu-img lists none there */
        ret = qimg_snapshot_list(&l->snaps, &l->nb_snaps, img);
    if (ret < 0) {
        cli_lib_error("%s", "");
        qimg_info_free(l->info);
        l->info = NULL;
    }
    qimg_image_close(img);
    return ret < 0 ? -1 : 0;
}

static bool seen_before(const struct layer *layers, size_t n,
                        const char *filename)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(layers[i].filename, filename))
            return true;
    return false;
}

/* The image, and with --backing-chain every backing file below it. */
static int collect(struct layer **out, size_t *count,
                   const struct info_args *a)
{
    const char *filename = a->filename, *fmt = a->fmt;
    struct layer *layers = NULL, *grown;
    size_t n = 0;
    int ret = 0;

    while (filename) {
        if (seen_before(layers, n, filename)) {
            cli_error("Backing file '%s' creates an infinite loop.",
                      filename);
            ret = -1;
            break;
        }
        grown = realloc(layers, (n + 1) * sizeof *layers);
        if (!grown) {
            cli_error("Out of memory");
            ret = -1;
            break;
        }
        layers = grown;
        memset(&layers[n], 0, sizeof layers[n]);
        ret = open_layer(&layers[n], filename, fmt, a->force_share);
        if (ret < 0)
            break;
        n++;
        if (!a->chain)
            break;
        filename = layers[n - 1].info->full_backing_file;
        fmt = layers[n - 1].info->backing_fmt;
    }
    *out = layers;
    *count = n;
    return ret;
}

static void free_layers(struct layer *layers, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        qimg_info_free(layers[i].info);
        qimg_snapshot_list_free(layers[i].snaps, layers[i].nb_snaps);
    }
    free(layers);
}

static const char *format_name(const struct qimg_info *in)
{
    return in->fmt == QIMG_FMT_QCOW2 ? "qcow2" : "raw";
}

/* ---- Human output ------------------------------------------------------ */

static void print_bitmaps_human(const struct qimg_info *in)
{
    printf("    bitmaps:\n");
    for (size_t i = 0; i < in->nb_bitmaps; i++) {
        const struct qimg_bitmap_info *b = &in->bitmaps[i];
        int nflag = 0;
        printf("        [%zu]:\n", i);
        printf("            flags:\n");
        if (b->in_use)
            printf("                [%d]: in-use\n", nflag++);
        if (b->is_auto)
            printf("                [%d]: auto\n", nflag++);
        printf("            name: %s\n", b->name);
        printf("            granularity: %" PRIu32 "\n", b->granularity);
    }
}

static void print_qcow2_human(const struct qimg_info *in)
{
    bool v3 = in->version >= 3;

    printf("Format specific information:\n");
    printf("    compat: %s\n", v3 ? "1.1" : "0.10");
    printf("    compression type: %s\n",
           in->compression_type ? "zstd" : "zlib");
    if (v3)
        printf("    lazy refcounts: %s\n",
               in->lazy_refcounts ? "true" : "false");
    if (v3 && in->nb_bitmaps > 0)
        print_bitmaps_human(in);
    printf("    refcount bits: %" PRIu32 "\n", in->refcount_bits);
    if (in->crypt_method == 1)
        printf("    encrypt:\n        format: aes\n");
    if (in->data_file)
        printf("    data file: %s\n", in->data_file);
    if (in->has_data_file)
        printf("    data file raw: %s\n", in->data_file_raw ? "true" : "false");
    if (v3) {
        printf("    corrupt: %s\n", in->corrupt ? "true" : "false");
        printf("    extended l2: %s\n", in->extended_l2 ? "true" : "false");
    }
}

static void print_backing_human(const struct qimg_info *in)
{
    printf("backing file: %s", in->backing_file);
    if (in->full_backing_file &&
        strcmp(in->backing_file, in->full_backing_file))
        printf(" (actual path: %s)", in->full_backing_file);
    printf("\n");
    if (in->backing_fmt)
        printf("backing file format: %s\n", in->backing_fmt);
}

static void print_human(const struct layer *l)
{
    const struct qimg_info *in = l->info;
    char vsize[64], dsize[64];
    uint64_t vs = in->virtual_size;

    fmt_size(vsize, sizeof vsize, vs);
    fmt_size(dsize, sizeof dsize, in->actual_size);
    printf("image: %s\n", l->filename);
    printf("file format: %s\n", format_name(in));
    printf("virtual size: %s (%" PRId64 " bytes)\n", vsize, (int64_t)vs);
    printf("disk size: %s\n", dsize);
    if (in->crypt_method)
        printf("encrypted: yes\n");
    if (in->fmt == QIMG_FMT_QCOW2)
        printf("cluster_size: %" PRIu32 "\n", in->cluster_size);
    if (in->is_dirty)
        printf("cleanly shut down: no\n");
    if (in->backing_file)
        print_backing_human(in);
    snaptable_print(stdout, l->snaps, l->nb_snaps);
    if (in->fmt == QIMG_FMT_QCOW2)
        print_qcow2_human(in);
}

/* ---- JSON output ------------------------------------------------------- */

static struct jv *bitmaps_json(const struct qimg_info *in)
{
    struct jv *arr = jv_arr();

    for (size_t i = 0; i < in->nb_bitmaps; i++) {
        const struct qimg_bitmap_info *b = &in->bitmaps[i];
        struct jv *o = jv_push(arr, jv_obj());
        struct jv *flags;
        jv_set(o, "name", jv_str(b->name));
        jv_set(o, "granularity", jv_int(b->granularity));
        flags = jv_set(o, "flags", jv_arr());
        if (b->in_use)
            jv_push(flags, jv_str("in-use"));
        if (b->is_auto)
            jv_push(flags, jv_str("auto"));
    }
    return arr;
}

static struct jv *qcow2_json(const struct qimg_info *in)
{
    struct jv *spec = jv_obj(), *d;
    bool v3 = in->version >= 3;

    jv_set(spec, "type", jv_str("qcow2"));
    d = jv_set(spec, "data", jv_obj());
    jv_set(d, "compat", jv_str(v3 ? "1.1" : "0.10"));
    if (in->data_file)
        jv_set(d, "data-file", jv_str(in->data_file));
    if (in->has_data_file)
        jv_set(d, "data-file-raw", jv_bool(in->data_file_raw));
    if (v3) {
        jv_set(d, "extended-l2", jv_bool(in->extended_l2));
        jv_set(d, "lazy-refcounts", jv_bool(in->lazy_refcounts));
        jv_set(d, "corrupt", jv_bool(in->corrupt));
    }
    jv_set(d, "refcount-bits", jv_int(in->refcount_bits));
    if (in->crypt_method == 1)
        jv_set(jv_set(d, "encrypt", jv_obj()), "format", jv_str("aes"));
    if (v3 && in->nb_bitmaps > 0)
        jv_set(d, "bitmaps", bitmaps_json(in));
    jv_set(d, "compression-type", jv_str(in->compression_type ? "zstd"
                                                               : "zlib"));
    return spec;
}

/* A copy of at most `max` bytes of `s`, as QEMU keeps it. */
static struct jv *jv_str_max(const char *s, size_t max)
{
    char *cut = strndup(s, max);
    struct jv *v = jv_str(cut ? cut : s);

    free(cut);
    return v;
}

static struct jv *snapshots_json(const struct layer *l)
{
    struct jv *arr = jv_arr();

    for (size_t i = 0; i < l->nb_snaps; i++) {
        const struct qimg_snapshot *sn = &l->snaps[i];
        struct jv *o = jv_push(arr, jv_obj());
        jv_set(o, "id", jv_str_max(sn->id, SNAPTABLE_MAX_ID));
        jv_set(o, "name", jv_str_max(sn->name, SNAPTABLE_MAX_NAME));
        jv_set(o, "vm-state-size", jv_int((int64_t)sn->vm_state_size));
        jv_set(o, "date-sec", jv_int(sn->date_sec));
        jv_set(o, "date-nsec", jv_int(sn->date_nsec));
        jv_set(o, "vm-clock-sec",
               jv_int((int64_t)(sn->vm_clock_nsec / 1000000000u)));
        jv_set(o, "vm-clock-nsec",
               jv_int((int64_t)(sn->vm_clock_nsec % 1000000000u)));
        if (sn->icount != UINT64_MAX)
            jv_set(o, "icount", jv_int((int64_t)sn->icount));
    }
    return arr;
}

static struct jv *layer_json(const struct layer *l)
{
    const struct qimg_info *in = l->info;
    struct jv *o = jv_obj();

    jv_set(o, "filename", jv_str(l->filename));
    jv_set(o, "format", jv_str(format_name(in)));
    jv_set(o, "dirty-flag", jv_bool(in->is_dirty));
    jv_set(o, "actual-size", jv_int((int64_t)in->actual_size));
    jv_set(o, "virtual-size", jv_int((int64_t)in->virtual_size));
    if (in->fmt == QIMG_FMT_QCOW2)
        jv_set(o, "cluster-size", jv_int(in->cluster_size));
    if (in->crypt_method)
        jv_set(o, "encrypted", jv_bool(true));
    if (in->backing_file) {
        jv_set(o, "backing-filename", jv_str(in->backing_file));
        if (in->full_backing_file)
            jv_set(o, "full-backing-filename",
                   jv_str(in->full_backing_file));
        if (in->backing_fmt)
            jv_set(o, "backing-filename-format", jv_str(in->backing_fmt));
    }
    if (l->nb_snaps > 0)
        jv_set(o, "snapshots", snapshots_json(l));
    if (in->fmt == QIMG_FMT_QCOW2)
        jv_set(o, "format-specific", qcow2_json(in));
    return o;
}

static void print_json(const struct layer *layers, size_t n, bool chain)
{
    struct jv *root;

    if (chain) {
        root = jv_arr();
        for (size_t i = 0; i < n; i++)
            jv_push(root, layer_json(&layers[i]));
    } else {
        root = layer_json(&layers[0]);
    }
    jv_print(stdout, root);
    putchar('\n');
    jv_free(root);
}

/* ---- Command ----------------------------------------------------------- */

/* Options; returns -1 to go on, or the exit code. */
static int parse_args(struct info_args *a, int argc, char **argv)
{
    static const struct option long_opts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"backing-chain", no_argument, NULL, OPT_BACKING_CHAIN},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    const char *output = NULL;
    int c;

    while ((c = getopt_long(argc, argv, ":f:hU", long_opts, NULL)) != -1) {
        switch (c) {
        case 'f':
            a->fmt = optarg;
            break;
        case 'h':
            cli_help();
            return 0;
        case 'U':
            a->force_share = true;
            break;
        case OPT_OUTPUT:
            output = optarg;
            break;
        case OPT_BACKING_CHAIN:
            a->chain = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->filename = argv[optind];
    if (cli_output_json(output, &a->json))
        return 1;
    return -1;
}

int cmd_info(int argc, char **argv)
{
    struct info_args a = {0};
    struct layer *layers;
    size_t n;
    int ret = parse_args(&a, argc, argv);

    if (ret >= 0)
        return ret;
    if (collect(&layers, &n, &a) < 0) {
        free_layers(layers, n);
        return 1;
    }
    if (a.json) {
        print_json(layers, n, a.chain);
    } else {
        for (size_t i = 0; i < n; i++) {
            if (i > 0)
                putchar('\n');
            print_human(&layers[i]);
        }
    }
    free_layers(layers, n);
    return 0;
}
