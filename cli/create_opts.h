/*
 * create_opts.h - the `-o` option list of qimg create, parsed the way
 * qemu-img 7.2 parses it (QemuOpts), the "Formatting ..." line and the
 * `-o help` listings. Used by cmd_create.c only.
 */
#ifndef QIMG_CLI_CREATE_OPTS_H
#define QIMG_CLI_CREATE_OPTS_H

#include <stdbool.h>
#include <stdint.h>

#include "qimg.h"

enum copt {
    COPT_SIZE,
    COPT_CLUSTER_SIZE,
    COPT_COMPAT,
    COPT_REFCOUNT_BITS,
    COPT_LAZY_REFCOUNTS,
    COPT_EXTENDED_L2,
    COPT_COMPRESSION_TYPE,
    COPT_PREALLOCATION,
    COPT_BACKING_FILE,
    COPT_BACKING_FMT,
    COPT_NOCOW,
    COPT_EXTENT_SIZE_HINT,
    /* amend's own: options it refuses on the images qimg handles */
    COPT_DATA_FILE,
    COPT_DATA_FILE_RAW,
    COPT_ENCRYPT_NUM, /* encrypt.iter-time, encrypt.keyslot */
    COPT_ENCRYPT_STR, /* encrypt.new-secret, encrypt.old-secret, .state */
    COPT_COUNT
};

/* Every option set so far; a later setting replaces an earlier one. */
struct create_params {
    enum qimg_format fmt;     /* QIMG_FMT_QCOW2 or QIMG_FMT_RAW */
    bool amend;               /* qcow2's amend options, not create's */
    bool is_set[COPT_COUNT];
    char *str[COPT_COUNT];    /* the value as the user spelled it */
    uint64_t num[COPT_COUNT]; /* size and number options */
    bool flag[COPT_COUNT];    /* bool options */
};

/* qemu-img's check on each -o argument: not empty, no leading comma, no
 * unescaped trailing comma. */
bool copts_list_valid(const char *list);
/* Append one -o argument to *options, joined by ',' as qemu-img joins
 * them, after copts_list_valid ("Invalid option list: ..." printed).
 * Returns 0 or -1. */
int copts_append(char **options, const char *list);
/* True if any comma-separated element is exactly "help" or "?". */
bool copts_has_help(const char *list);
/* `-o help`: print the option list of `fmt` (NULL filename: the format's
 * own options only). Returns the exit code. */
int copts_print_help(const char *fmt, const char *filename);

/* One of QEMU 7.2's block driver names (raw, vmdk, ...). */
bool copts_is_block_driver(const char *name);
/* `-o help` of qimg amend: qcow2's amend options. */
void copts_print_amend_help(void);

/* Parse an option list into `p` (p->fmt and p->amend decide which names
 * exist). On error prints "qimg: FILE: <message>" (filename NULL: without
 * "FILE: ") and returns -1. */
int copts_parse(struct create_params *p, const char *list,
                const char *filename);
void copts_set_str(struct create_params *p, enum copt id, const char *s);
void copts_set_num(struct create_params *p, enum copt id, uint64_t v);
/* The value of a string option, or NULL if it was never set. */
const char *copts_str(const struct create_params *p, enum copt id);

/* "Formatting 'FILE', fmt=qcow2 cluster_size=... ..." and a newline. */
void copts_print_formatting(const struct create_params *p,
                            const char *filename);
/* Convert to library options, reporting the value errors QEMU's driver
 * reports after the Formatting line. Returns 0 or -1 (error printed). */
int copts_to_lib(const struct create_params *p, struct qimg_create_opts *o,
                 const char *filename);
void copts_free(struct create_params *p);

#endif
