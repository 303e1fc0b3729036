/*
 * io_query.c - the `qimg io` commands that look at the image without
 * touching guest data: map, alloc, length and info, printed as qemu-io 7.2
 * prints them.
 *
 * "Allocated" means defined by this layer (QIMG_BS_ALLOCATED of
 * qimg_image_block_status): data, compressed and zero clusters count, data
 * of the backing file does not.
 */
#include "io.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* Allocation status of [off, off+len) in the top layer: 1 allocated, 0
 * not, for the first *num bytes; *num is 0 at or past the end. */
static int is_allocated(struct io_state *s, int64_t off, int64_t len,
                        int64_t *num)
{
    uint64_t size = s->size, real = s->real_size;
    struct qimg_extent e;
    int ret;

    *num = 0;
    if (s->is_dead)
        return -ENOMEDIUM;
    if (len <= 0 || (uint64_t)off >= size)
        return 0;
    if ((uint64_t)len > size - (uint64_t)off)
        len = (int64_t)(size - (uint64_t)off);
    if ((uint64_t)off >= real) {
        *num = len; /* the sector tail of a raw file counts as data */
        return 1;
    }
    if ((uint64_t)len > real - (uint64_t)off)
        len = (int64_t)(real - (uint64_t)off);
    ret = qimg_image_block_status(s->img, (uint64_t)off, (uint64_t)len, &e);
    if (ret < 0)
        return ret;
    *num = (int64_t)e.len;
    return (e.flags & QIMG_BS_ALLOCATED) ? 1 : 0;
}

/* is_allocated(), extended over the following extents of the same
 * status. */
static int alloc_run(struct io_state *s, int64_t off, int64_t len, int64_t *num)
{
    int first = is_allocated(s, off, len, num), ret;
    int64_t n = *num;

    if (first < 0)
        return first;
    while (len > 0) {
        off += n;
        len -= n;
        ret = is_allocated(s, off, len, &n);
        if (ret != first || n == 0)
            break;
        *num += n;
    }
    return first;
}

static int map_f(struct io_state *s, int argc, char **argv)
{
    int64_t off = 0, len = (int64_t)s->size, num;
    char s1[64], s2[64];

    (void)argc;
    (void)argv;
    if (s->is_dead) {
        cli_error("Failed to query image length: %s", strerror(ENOMEDIUM));
        return -ENOMEDIUM;
    }
    while (len > 0) {
        int ret = alloc_run(s, off, len, &num);

        if (ret < 0) {
            io_note_error(s, ret);
            cli_error("Failed to get allocation status: %s", strerror(-ret));
            return ret;
        }
        if (num == 0) {
            cli_error("Unexpected end of image");
            return -EIO;
        }
        fmt_cvtstr(s1, sizeof s1, (double)num);
        fmt_cvtstr(s2, sizeof s2, (double)off);
        printf("%s (0x%" PRIx64 ") bytes %s at offset %s (0x%" PRIx64 ")\n", s1,
               (uint64_t)num, ret ? "    allocated" : "not allocated", s2,
               (uint64_t)off);
        off += num;
        len -= num;
    }
    return 0;
}

const struct io_cmd io_cmd_map = {
    .name = "map",
    .fn = map_f,
    .argmin = 0,
    .argmax = 0,
    .args = "",
    .oneline = "prints the allocated areas of a file",
};

static int alloc_f(struct io_state *s, int argc, char **argv)
{
    int64_t start, off, count = 512, remaining, num, sum = 0;
    char s1[64];

    start = off = io_cvtnum(argv[1]);
    if (off < 0) {
        io_cvtnum_err(off, argv[1]);
        return (int)off;
    }
    if (argc == 3) {
        count = io_cvtnum(argv[2]);
        if (count < 0) {
            io_cvtnum_err(count, argv[2]);
            return (int)count;
        }
    }
    for (remaining = count; remaining;) {
        int ret = is_allocated(s, off, remaining, &num);

        if (ret < 0) {
            io_note_error(s, ret);
            printf("is_allocated failed: %s\n", strerror(-ret));
            return ret;
        }
        off += num;
        remaining -= num;
        if (ret)
            sum += num;
        if (num == 0) {
            count -= remaining;
            remaining = 0;
        }
    }
    fmt_cvtstr(s1, sizeof s1, (double)start);
    printf("%" PRId64 "/%" PRId64 " bytes allocated at offset %s\n", sum, count,
           s1);
    return 0;
}

const struct io_cmd io_cmd_alloc = {
    .name = "alloc",
    .altname = "a",
    .fn = alloc_f,
    .argmin = 1,
    .argmax = 2,
    .args = "offset [count]",
    .oneline = "checks if offset is allocated in the file",
};

static int length_f(struct io_state *s, int argc, char **argv)
{
    char s1[64];

    (void)argc;
    (void)argv;
    if (s->is_dead) {
        printf("getlength: %s\n", strerror(ENOMEDIUM));
        return -ENOMEDIUM;
    }
    fmt_cvtstr(s1, sizeof s1, (double)s->size);
    printf("%s\n", s1);
    return 0;
}

const struct io_cmd io_cmd_length = {
    .name = "length",
    .altname = "l",
    .fn = length_f,
    .argmin = 0,
    .argmax = 0,
    .oneline = "gets the length of the current file",
};

/* The bitmap list of "Format specific information", as QEMU dumps it. */
static void print_bitmaps(const struct qimg_info *info)
{
    printf("    bitmaps:\n");
    for (size_t i = 0; i < info->nb_bitmaps; i++) {
        const struct qimg_bitmap_info *b = &info->bitmaps[i];
        int n = 0;

        printf("        [%zu]:\n", i);
        printf("            flags:\n");
        if (b->in_use)
            printf("                [%d]: in-use\n", n++);
        if (b->is_auto)
            printf("                [%d]: auto\n", n++);
        printf("            name: %s\n", b->name);
        printf("            granularity: %" PRIu32 "\n", b->granularity);
    }
}

static void print_qcow2_info(const struct qimg_info *info, uint64_t size)
{
    uint64_t cs = info->cluster_size;
    uint64_t span = cs * (cs / (info->extended_l2 ? 16 : 8));
    char s1[64], s2[64];

    /* QEMU keeps the VM state after the last L1 entry's worth of disk. */
    fmt_cvtstr(s1, sizeof s1, (double)cs);
    fmt_cvtstr(s2, sizeof s2, (double)((size + span - 1) / span * span));
    printf("cluster size: %s\n", s1);
    printf("vm state offset: %s\n", s2);
    printf("Format specific information:\n");
    printf("    compat: %s\n", info->version >= 3 ? "1.1" : "0.10");
    printf("    compression type: %s\n",
           info->compression_type ? "zstd" : "zlib");
    if (info->version >= 3)
        printf("    lazy refcounts: %s\n",
               info->lazy_refcounts ? "true" : "false");
    if (info->nb_bitmaps)
        print_bitmaps(info);
    printf("    refcount bits: %" PRIu32 "\n", info->refcount_bits);
    if (info->version >= 3) {
        printf("    corrupt: %s\n", info->corrupt ? "true" : "false");
        printf("    extended l2: %s\n", info->extended_l2 ? "true" : "false");
    }
}

static int info_f(struct io_state *s, int argc, char **argv)
{
    struct qimg_info *info;
    int ret;

    (void)argc;
    (void)argv;
    if (s->is_dead)
        return -ENOMEDIUM; /* QEMU prints nothing for a node without driver */
    if (qimg_image_format(s->img) != QIMG_FMT_QCOW2) {
        printf("format name: raw\n");
        printf("cluster size: 0 bytes\n");
        printf("vm state offset: 0 bytes\n");
        return 0;
    }
    printf("format name: qcow2\n");
    ret = qimg_image_info(&info, s->img);
    if (ret < 0) {
        io_note_error(s, ret);
        cli_error("%s", qimg_last_error()->message);
        return ret;
    }
    print_qcow2_info(info, qimg_image_size(s->img));
    qimg_info_free(info);
    return 0;
}

const struct io_cmd io_cmd_info = {
    .name = "info",
    .altname = "i",
    .fn = info_f,
    .argmin = 0,
    .argmax = 0,
    .oneline = "prints information about the current file",
};
