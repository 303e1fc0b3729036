/*
 * convert.h - the parts of `qimg convert` shared between cmd_convert.c
 * (arguments, opening, creating the target), convert_opts.c (the -o and
 * -l parameter lists) and convert_copy.c (walking the sources and writing
 * the target).
 */
#ifndef QIMG_CLI_CONVERT_H
#define QIMG_CLI_CONVERT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "qimg.h"

#ifndef MIN
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))
#endif

/* One input image; the target is the concatenation of all of them. */
struct conv_src {
    const char *name; /* as given on the command line */
    qimg_image *img;
    uint64_t size;  /* bytes, a multiple of 512 */
    uint64_t avail; /* how much of it `img` holds (a snapshot view may
                     * be smaller than the active disk) */
    uint64_t start; /* where it begins in the target */
    uint64_t align; /* status runs longer than this end on it */
};

/* The copy: sources, target and how the target is to be written. */
struct conv_job {
    struct conv_src *src;
    size_t nb_src;
    uint64_t total; /* sum of the source sizes */
    qimg_image *dst;
    bool dst_zero_init;        /* the target reads as zeros: skip zeros */
    bool dst_has_backing;      /* keep source-unallocated ranges so */
    uint64_t dst_backing_size; /* UINT64_MAX: no backing or unknown */
    bool compressed;           /* -c: whole target clusters, compressed */
    uint64_t dst_cluster;      /* target cluster size (qcow2), else 512 */
    uint64_t min_sparse;       /* -S in bytes; 0 writes every byte */
    uint64_t align;            /* skipped zero runs keep to this grid */
    uint64_t buf_size;         /* largest data request */
    bool salvage;              /* --salvage: unreadable sectors as zeros */
    bool quiet;
};

/* ---- convert_copy.c ---- */

/* Copy every byte of the sources to the target, reporting progress.
 * Returns 0, or -1 after printing qemu-img's message. */
int conv_copy(struct conv_job *job);


/* ---- convert_bitmaps.c ---- */

/* --bitmaps: one source, qcow2 v3, no bitmap in use unless skip_broken.
 * Returns 0 or -1 (printed). */
int conv_bitmaps_check_source(const struct conv_job *job, bool skip_broken);
/* The target can store bitmaps. */
int conv_bitmaps_check_target(qimg_image *dst, const char *out_fmt);
/* Copy every bitmap of src not in use (warning of each one in use) into
 * dst, in one commit. */
int conv_bitmaps_copy(qimg_image *src, qimg_image *dst);

/* ---- convert_diff.c ---- */

/* --diff-from: write into the target only what changed in `to` (a
 * snapshot spec, NULL: the active disk) since snapshot `from` of `file`,
 * reading it from job->src[0]. Returns 0 or -1 (printed). */
int conv_diff_copy(struct conv_job *job, const char *file, const char *fmt,
                   const char *from, const char *to);

/* ---- convert_opts.c ---- */

/* Target creation options (-o list, -B, -F), checked in qemu-img's two
 * steps: syntax and types when read, values when the image is made. */
enum conv_opt {
    CO_SIZE,
    CO_BACKING_FILE,
    CO_BACKING_FMT,
    CO_CLUSTER_SIZE,
    CO_PREALLOC,
    CO_LAZY_REFCOUNTS,
    CO_REFCOUNT_BITS,
    CO_COMPAT,
    CO_EXTENDED_L2,
    CO_COMPRESSION_TYPE,
    CO_NOCOW,
    CO_EXTENT_SIZE_HINT,
    CO_COUNT
};

struct conv_create {
    enum qimg_format fmt;
    char *val[CO_COUNT]; /* NULL: not given */
};

/* Read an -o list for a target of format cc->fmt. Prints the message and
 * returns -1 on a syntax or type error. */
int conv_opts_parse(struct conv_create *cc, const char *list);
/* Set one option (from -B / -F). */
void conv_opts_set(struct conv_create *cc, enum conv_opt id, const char *v);
/* Library options for a target of `size` bytes; prints
 * "DST: error while converting FMT: ..." and returns -1 on a bad value. */
int conv_opts_to_lib(const struct conv_create *cc, uint64_t size,
                     const char *dst, struct qimg_create_opts *o);
void conv_opts_free(struct conv_create *cc);

/* -l: "snapshot.id=ID,snapshot.name=NAME" (QemuOpts syntax, either key)
 * or a plain ID or name. Fills *id / *name (malloc'd, NULL when absent;
 * a plain argument fills both with the same string) and *plain.
 * Returns 0 or -1 (message printed). */
int conv_parse_snapshot(const char *arg, char **id, char **name, bool *plain);

#endif
