/*
 * cmd_map.c - qimg map: qemu-img 7.2's `map`, human and JSON.
 *
 * Walks the disk with qimg_image_map() (status through the backing chain,
 * data over host holes marked zero) and merges neighbouring extents the
 * way qemu-img does before printing them.
 */
#include "cli.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

struct map_entry {
    uint64_t start, length, offset;
    int depth;
    bool present, zero, data, has_offset;
    const char *filename; /* NULL without an offset */
};

struct map_args {
    const char *file;
    enum qimg_format fmt;
    bool json, force_share, image_opts;
    uint64_t start, max_length;
};


static int parse_args(int argc, char **argv, struct map_args *a)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"format", required_argument, NULL, 'f'},
        {"output", required_argument, NULL, 'O'},
        {"object", required_argument, NULL, 'B'},
        {"image-opts", no_argument, NULL, 'I'},
        {"force-share", no_argument, NULL, 'U'},
        {"start-offset", required_argument, NULL, 's'},
        {"max-length", required_argument, NULL, 'l'},
        {NULL, 0, NULL, 0},
    };
    const char *output = "human";
    int c;

    memset(a, 0, sizeof *a);
    a->max_length = INT64_MAX;
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":f:hU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            if (parse_format(optarg, &a->fmt) < 0) {
                cli_error("Unknown file format '%s'", optarg);
                return 1;
            }
            break;
        case 'O':
            output = optarg;
            break;
        case 'U':
            a->force_share = true;
            break;
        case 'I':
            a->image_opts = true;
            break;
        case 'B':
            break;
        case 's':
            if (parse_size(optarg, &a->start) < 0 || a->start > INT64_MAX)
                return cli_bad_number("start offset");
            break;
        case 'l':
            if (parse_size(optarg, &a->max_length) < 0 ||
                a->max_length > INT64_MAX)
                return cli_bad_number("max length");
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->file = argv[optind];
    return cli_output_json(output, &a->json);
}

static const char *layer_name(qimg_image *img, int depth)
{
    while (depth-- > 0 && qimg_image_backing(img))
        img = qimg_image_backing(img);
    return qimg_image_filename(img);
}

static bool mergeable(const struct map_entry *c, const struct map_entry *n)
{
    if (c->length == 0 || c->zero != n->zero || c->data != n->data ||
        c->depth != n->depth || c->present != n->present ||
        c->has_offset != n->has_offset || !c->filename != !n->filename)
        return false;
    if (c->filename && strcmp(c->filename, n->filename))
        return false;
    return !c->has_offset || c->offset + c->length == n->offset;
}

/* Print one entry; -1 when the human format cannot show it. */
static int dump(const struct map_args *a, const struct map_entry *e,
                bool more)
{
    if (!a->json) {
        if (e->data && !e->has_offset) {
            cli_error("File contains external, encrypted or compressed "
                      "clusters.");
            return -1;
        }
        if (e->data && !e->zero)
            printf("%#-16" PRIx64 "%#-16" PRIx64 "%#-16" PRIx64 "%s\n",
                   e->start, e->length, e->offset, e->filename);
        return 0;
    }
    printf("{ \"start\": %" PRIu64 ", \"length\": %" PRIu64
           ", \"depth\": %d, \"present\": %s, \"zero\": %s, \"data\": %s",
           e->start, e->length, e->depth, e->present ? "true" : "false",
           e->zero ? "true" : "false", e->data ? "true" : "false");
    if (e->has_offset)
        printf(", \"offset\": %" PRIu64, e->offset);
    putchar('}');
    if (more)
        puts(",");
    return 0;
}

static int walk(qimg_image *img, const struct map_args *a)
{
    uint64_t size = qimg_image_size(img);
    uint64_t room = (uint64_t)INT64_MAX - a->start;
    uint64_t end = a->start + (a->max_length < room ? a->max_length : room);
    struct map_entry cur = {.start = a->start};

    end = end < size ? end : size;
    while (cur.start + cur.length < end) {
        uint64_t off = cur.start + cur.length;
        struct qimg_extent x;
        struct map_entry next;
        if (qimg_image_map(img, off, end - off, &x) < 0) {
            cli_error("Could not read file metadata: %s",
                      strerror(qimg_last_error()->errnum));
            return 1;
        }
        next = (struct map_entry){
            .start = off,
            .length = x.len,
            .offset = x.host_off,
            .depth = x.depth,
            .present = x.flags & QIMG_BS_ALLOCATED,
            .zero = x.flags & QIMG_BS_ZERO,
            .data = x.flags & QIMG_BS_DATA,
            .has_offset = x.flags & QIMG_BS_OFFSET,
        };
        if (next.has_offset)
            next.filename = layer_name(img, x.depth);
        if (mergeable(&cur, &next)) {
            cur.length += next.length;
            continue;
        }
        if (cur.length > 0 && dump(a, &cur, true) < 0)
            return 1;
        cur = next;
    }
    return dump(a, &cur, false) < 0 ? 1 : 0;
}

int cmd_map(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct map_args a;
    qimg_image *img;
    char *path = NULL;
    int ret;

    ret = parse_args(argc, argv, &a);
    if (ret)
        return ret;
    o.fmt = a.fmt;
    o.force_share = a.force_share;
    if (a.image_opts && parse_image_opts(a.file, &path, &o) < 0)
        return 1;
    if (qimg_image_open(&img, path ? path : a.file, &o) < 0) {
        cli_lib_error("Could not open '%s': ", a.file);
        free(path);
        return 1;
    }
    free(path);
    if (a.json)
        putchar('[');
    else
        printf("%-16s%-16s%-16s%s\n", "Offset", "Length", "Mapped to", "File");
    ret = walk(img, &a);
    if (a.json && ret == 0)
        puts("]");
    qimg_image_close(img);
    return ret;
}
