/*
 * cmd_measure.c - qimg measure: qemu-img 7.2's `measure`.
 *
 * The size a new image needs: for raw the disk size; for qcow2 the
 * metadata of a fully allocated image (header, L1 and L2 tables, the
 * refcount structures that count them all, found as a fixed point) plus
 * the data clusters the source has (block status through its chain; all
 * of them with a backing file or preallocation), and what its persistent
 * bitmaps would take. The arithmetic is qemu-img's, so the figures are
 * the same to the byte.
 */
#include "cli.h"
#include "create_opts.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

#define ROUND_UP(x, a) (((x) + (a) - 1) / (a) * (a))
#define DIV_UP(x, a) (((x) + (a) - 1) / (a))
#define MAX_L1_BYTES (32u << 20)

struct measure_args {
    const char *file, *fmt, *out_fmt, *snapshot;
    char *options;
    bool json, image_opts, force_share, has_size;
    uint64_t size;
};

struct measure {
    uint64_t required, fully_allocated, bitmaps;
    bool has_bitmaps;
};

static int parse_args(int argc, char **argv, struct measure_args *a)
{
    enum { OPT_OBJECT = 256, OPT_IMAGE_OPTS, OPT_OUTPUT, OPT_SIZE };
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"image-opts", no_argument, NULL, OPT_IMAGE_OPTS},
        {"object", required_argument, NULL, OPT_OBJECT},
        {"output", required_argument, NULL, OPT_OUTPUT},
        {"size", required_argument, NULL, OPT_SIZE},
        {"force-share", no_argument, NULL, 'U'},
        {NULL, 0, NULL, 0},
    };
    int c;

    a->out_fmt = "raw";
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:O:o:l:U", longopts, NULL)) !=
           -1) {
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
        case 'o':
            if (copts_append(&a->options, optarg) < 0)
                return 1;
            break;
        case 'l':
            a->snapshot = optarg;
            break;
        case 'U':
            a->force_share = true;
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
        case OPT_SIZE:
            if (parse_size(optarg, &a->size) < 0 || a->size > INT64_MAX)
                return cli_bad_number("image size");
            a->has_size = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (argc - optind > 1) {
        cli_error("At most one filename argument is allowed.");
        return 1;
    }
    a->file = optind < argc ? argv[optind] : NULL;
    if (!a->file && (a->image_opts || a->fmt || a->snapshot)) {
        cli_error("--image-opts, -f, and -l require a filename argument.");
        return 1;
    }
    if (a->file && a->has_size) {
        cli_error("--size N cannot be used together with a filename.");
        return 1;
    }
    if (!a->file && !a->has_size) {
        cli_error("Either --size N or one filename must be specified.");
        return 1;
    }
    return 0;
}

/* Clusters of refcount blocks and table that count `clusters` clusters
 * and themselves: the fixed point. */
static uint64_t refcount_meta(uint64_t clusters, uint64_t cs, unsigned order)
{
    uint64_t per_block = cs * 8 >> order, per_table = cs / 8;
    uint64_t blocks = 0, table = 0, n = 0, last;

    do {
        last = n;
        blocks = DIV_UP(clusters + table + blocks, per_block);
        table = DIV_UP(blocks, per_table);
        n = clusters + blocks + table;
    } while (n != last);
    return (blocks + table) * cs;
}

/* A fully allocated qcow2 image of `size` bytes (a multiple of cs). */
static uint64_t full_qcow2(uint64_t size, uint64_t cs, unsigned order,
                           bool ext_l2)
{
    uint64_t l2e = ext_l2 ? 16 : 8, meta = cs, nl2e, nl1e;

    nl2e = ROUND_UP(size / cs, cs / l2e);
    meta += nl2e * l2e;
    nl1e = ROUND_UP(nl2e * l2e / cs, cs / 8);
    meta += nl1e * 8;
    meta += refcount_meta((meta + size) / cs, cs, order);
    return meta + size;
}

/* Bytes of data clusters the source needs written: each run of data,
 * from the cluster it starts in to the end of the one it ends in (zero
 * ranges skipped), as qemu-img counts them. */
static int data_bytes(qimg_image *src, uint64_t ssize, uint64_t cs,
                      uint64_t *out)
{
    uint64_t end = qimg_image_size(src) < ssize ? qimg_image_size(src) : ssize;
    uint64_t off = 0, n = 0;

    while (off < end) {
        struct qimg_extent x;
        uint64_t len;
        if (qimg_image_map(src, off, end - off, &x) < 0)
            return -1;
        len = x.len;
        if (!(x.flags & QIMG_BS_ZERO) && (x.flags & QIMG_BS_DATA)) {
            len = ROUND_UP(off + len, cs) - off;
            n += off % cs + len;
        }
        off += len;
    }
    *out = n;
    return 0;
}

/* What the source's persistent bitmaps take in a qcow2 image. */
static uint64_t bitmaps_bytes(const struct qimg_info *info, uint64_t ssize,
                              uint64_t cs)
{
    uint64_t total = 0, dir = 0;

    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        uint64_t bits = DIV_UP(ssize, info->bitmaps[i].granularity);
        uint64_t clusters = DIV_UP(DIV_UP(bits, 8), cs);
        total += clusters * cs + ROUND_UP(clusters * 8, cs);
        dir += ROUND_UP(24 + strlen(info->bitmaps[i].name), 8);
    }
    return total + ROUND_UP(dir, cs);
}

static bool is_pow2(uint64_t v)
{
    return v && !(v & (v - 1));
}

/* The qcow2 target's options, checked in qemu-img's order. */
static int qcow2_params(const struct create_params *p, uint64_t *cs,
                        unsigned *order, bool *ext_l2, int *version,
                        bool *full)
{
    const char *v;
    uint64_t bits = p->is_set[COPT_REFCOUNT_BITS]
                        ? p->num[COPT_REFCOUNT_BITS] : 16;

    *ext_l2 = p->is_set[COPT_EXTENDED_L2] && p->flag[COPT_EXTENDED_L2];
    *cs = p->is_set[COPT_CLUSTER_SIZE] ? p->num[COPT_CLUSTER_SIZE] : 65536;
    *version = 3;
    if ((v = copts_str(p, COPT_COMPAT))) {
        if (!strcmp(v, "0.10") || !strcmp(v, "v2")) {
            *version = 2;
        } else if (strcmp(v, "1.1") && strcmp(v, "v3")) {
            cli_error("Invalid compatibility level: '%s'", v);
            return -1;
        }
    }
    if (!is_pow2(bits) || bits > 64) {
        cli_error("Refcount width must be a power of two and may not "
                  "exceed 64 bits");
        return -1;
    }
    if (*version < 3 && bits != 16) {
        cli_error("Different refcount widths than 16 bits require "
                  "compatibility level 1.1 or above (use compat=1.1 or "
                  "greater)");
        return -1;
    }
    *order = (unsigned)__builtin_ctzll(bits);
    *full = false;
    if ((v = copts_str(p, COPT_PREALLOCATION))) {
        if (strcmp(v, "off") && strcmp(v, "metadata") && strcmp(v, "falloc") &&
            strcmp(v, "full")) {
            cli_error("invalid parameter value: %s", v);
            return -1;
        }
        *full = !strcmp(v, "falloc") || !strcmp(v, "full");
    }
    if (!is_pow2(*cs) || *cs < 512 || *cs > (2u << 20)) {
        cli_error("Cluster size must be a power of two between 512 and "
                  "2048k");
        return -1;
    }
    if (*ext_l2 && *cs < 16384) {
        cli_error("Extended L2 entries are only supported with cluster "
                  "sizes of at least 16384 bytes");
        return -1;
    }
    return 0;
}

static int measure_qcow2(const struct create_params *p, qimg_image *src,
                         qimg_image *view, struct measure *m)
{
    uint64_t cs, vsize, required = 0;
    unsigned order;
    bool ext_l2, full;
    int version;

    if (qcow2_params(p, &cs, &order, &ext_l2, &version, &full) < 0)
        return -1;
    vsize = p->num[COPT_SIZE];
    if (vsize > UINT64_MAX - cs ||
        DIV_UP(ROUND_UP(vsize, cs) / cs, cs / (ext_l2 ? 16 : 8)) * 8 >
            MAX_L1_BYTES) {
        cli_error("The image size is too large (try using a larger cluster "
                  "size)");
        return -1;
    }
    vsize = ROUND_UP(vsize, cs);
    if (src) {
        uint64_t ssize = qimg_image_size(src);
        vsize = ROUND_UP(ssize, cs);
        if (copts_str(p, COPT_BACKING_FILE))
            required = vsize;
        else if (data_bytes(view, ssize, cs, &required) < 0) {
            cli_lib_error("%s", "");
            return -1;
        }
    }
    if (full)
        required = vsize;
    m->fully_allocated = full_qcow2(vsize, cs, order, ext_l2);
    m->required = m->fully_allocated - vsize + required;
    if (src && version >= 3 && qimg_image_format(src) == QIMG_FMT_QCOW2) {
        struct qimg_info *info = NULL;
        if (qimg_image_info(&info, src) < 0) {
            cli_lib_error("%s", "");
            return -1;
        }
        m->has_bitmaps = info->version >= 3;
        if (m->has_bitmaps)
            m->bitmaps = bitmaps_bytes(info, qimg_image_size(src), cs);
        qimg_info_free(info);
    }
    return 0;
}

static void print_measure(const struct measure *m, bool json)
{
    if (json) {
        struct jv *o = jv_obj();
        if (m->has_bitmaps)
            jv_set(o, "bitmaps", jv_uint(m->bitmaps));
        jv_set(o, "required", jv_uint(m->required));
        jv_set(o, "fully-allocated", jv_uint(m->fully_allocated));
        jv_print(stdout, o);
        printf("\n");
        jv_free(o);
        return;
    }
    printf("required size: %llu\n", (unsigned long long)m->required);
    printf("fully allocated size: %llu\n",
           (unsigned long long)m->fully_allocated);
    if (m->has_bitmaps)
        printf("bitmaps size: %llu\n", (unsigned long long)m->bitmaps);
}

/* The source, and (with -l) the snapshot view whose data is measured at
 * the active disk's size, as qemu-img loads the snapshot over it. */
static int open_source(const struct measure_args *a, qimg_image **src,
                       qimg_image **view)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;

    o.force_share = a->force_share;
    if (cli_open(src, a->file, a->fmt, a->image_opts, &o) < 0)
        return -1;
    *view = *src;
    if (!a->snapshot)
        return 0;
    if (qimg_image_format(*src) != QIMG_FMT_QCOW2) {
        cli_error("Failed to load snapshot: Block format 'raw' used by "
                  "device '' does not support temporarily loading internal "
                  "snapshots");
        return -1;
    }
    o.snapshot = a->snapshot;
    o.force_share = true; /* the file is already open and locked */
    if (qimg_image_open(view, qimg_image_filename(*src), &o) < 0) {
        cli_lib_error("Failed to load snapshot: ");
        return -1;
    }
    return 0;
}

int cmd_measure(int argc, char **argv)
{
    struct measure_args a = {0};
    struct create_params p = {0};
    struct measure m = {0};
    qimg_image *src = NULL, *view = NULL;
    int ret = parse_args(argc, argv, &a);

    if (ret)
        goto out;
    ret = 1;
    if (a.file && open_source(&a, &src, &view) < 0)
        goto out;
    if (parse_format(a.out_fmt, &p.fmt) < 0 || p.fmt == QIMG_FMT_AUTO) {
        cli_error("Unknown file format '%s'", a.out_fmt);
        goto out;
    }
    if (a.options && copts_parse(&p, a.options, NULL) < 0) {
        cli_error("Invalid options for file format '%s'", a.out_fmt);
        goto out;
    }
    if (a.has_size)
        p.num[COPT_SIZE] = a.size;
    if (p.fmt == QIMG_FMT_RAW) {
        m.required = src ? qimg_image_size(src)
                         : ROUND_UP(p.num[COPT_SIZE], 512);
        m.fully_allocated = m.required;
    } else if (measure_qcow2(&p, src, view, &m) < 0) {
        goto out;
    }
    print_measure(&m, a.json);
    ret = 0;
out:
    if (view && view != src)
        qimg_image_close(view);
    qimg_image_close(src);
    copts_free(&p);
    free(a.options);
    return ret;
}
