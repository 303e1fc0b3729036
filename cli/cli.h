/*
 * cli.h - helpers shared by the qimg subcommands. The CLI uses only the
 * public API (qimg.h); it owns all output.
 */
#ifndef QIMG_CLI_H
#define QIMG_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qimg.h"

/* The name messages start with: "qimg", or "qemu-img" when qimg runs
 * under that name (a drop-in: a link named qemu-img), so that programs
 * matching qemu-img's whole message lines match them too. */
extern const char *cli_prog;

/* Subcommands: parse options, call the library, print, return exit code. */
int cmd_amend(int argc, char **argv);
int cmd_bitmap(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_dd(int argc, char **argv);
int cmd_compact(int argc, char **argv);
int cmd_diff(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_io(int argc, char **argv);
int cmd_snapshot(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_compare(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_measure(int argc, char **argv);
int cmd_rebase(int argc, char **argv);
int cmd_resize(int argc, char **argv);
int cmd_bench(int argc, char **argv);

/* main.c */
void cli_help(void);
/* `qimg --no-locking CMD ...`: open images without QEMU's locks (for file
 * systems that cannot lock; --image-opts file.locking=off does the same). */
extern bool cli_no_locking;
#define CLI_OPEN_OPTS_INIT                                                     \
    {.fmt = QIMG_FMT_AUTO, .no_locking = cli_no_locking}
/* "qimg: <msg>" on stderr. */
void cli_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* QEMU's warning for an image opened for writing whose format was probed
 * as raw. */
void cli_warn_raw_probe(const char *file);
/* As cli_error, then "Try 'qimg --help' for more information"; returns 1. */
int cli_usage_error(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* "qimg: <prefix><library error message>" on stderr. */
void cli_lib_error(const char *prefix_fmt, ...)
    __attribute__((format(printf, 1, 2)));
/* Report a getopt failure (unknown option, missing argument) qemu-img's
 * way; returns 1. `opt` is optopt, `arg` the offending argv element. */
int cli_getopt_error(int opt, const char *arg);

/* opts.c: numbers and sizes as qemu-img parses them. */
/* Size with optional k/M/G/T/P/E suffix (binary) and optional 'B'/'b';
 * default unit bytes. Returns 0 or -1 (bad syntax), -2 (out of range). */
int parse_size(const char *s, uint64_t *out);
int parse_size_ex(const char *s, uint64_t *out, bool *hex_suffix);
/* qemu-img's cvtnum() refusal, "Invalid <what> specified. You may use k,
 * M, G, T, P or E suffixes for" and its second line; returns 1. */
int cli_bad_number(const char *what);
/* Parse "fmt" names. */
int parse_format(const char *s, enum qimg_format *out);
/* --image-opts option string: file name (malloc'd), format, locking. */
int parse_image_opts(const char *spec, char **path, struct qimg_open_opts *o);
/* A cache mode qemu-img accepts (-t, -T); qimg's I/O ignores it. */
bool cache_mode_ok(const char *mode);
/* A backing file name as an image names it: relative to the image's
 * directory unless absolute (malloc'd; NULL without memory). */
char *cli_backing_path(const char *image, const char *backing);
/* Whether two paths name the same file (both exist). */
bool cli_same_file(const char *a, const char *b);
/* A buffer for image data, page-aligned: the kernel copies out of the page
 * cache into it at nearly twice the rate it copies into a large malloc()ed
 * one (16 bytes past a page boundary). NULL without memory; free() it. */
static inline void *data_buf_alloc(size_t n)
{
    void *p;

    return posix_memalign(&p, 4096, n ? n : 1) ? NULL : p;
}
/* Whether n bytes at p are all zero. */
static inline bool buf_is_zero(const uint8_t *p, uint64_t n)
{
    return n == 0 || (p[0] == 0 && !memcmp(p, p + 1, (size_t)n - 1));
}
/* Open `file` as qemu-img's commands do: fmt (NULL: probe) checked first
 * ("Unknown driver"), then --image-opts, then the open; every failure is
 * printed ("Could not open '<file>': ..."). o holds the other options. */
int cli_open(qimg_image **img, const char *file, const char *fmt,
             bool image_opts, struct qimg_open_opts *o);

/* output.c */
/* --output's argument (NULL: human): 0 and *json set, or 1 after
 * qemu-img's message. */
int cli_output_json(const char *arg, bool *json);
/* QEMU's size_to_str(): "64 MiB", "0.977 MiB", "1e+03 KiB". */
void fmt_size(char *buf, size_t n, uint64_t val);
/* qemu-io's cvtstr(): "64 KiB", "1.500 KiB", "1000 bytes". */
void fmt_cvtstr(char *buf, size_t n, double val);

/* A JSON value tree printed the way QEMU's pretty printer prints it, with
 * object keys in QEMU's QDict iteration order. */
struct jv;
struct jv *jv_obj(void);
struct jv *jv_arr(void);
struct jv *jv_str(const char *s);
struct jv *jv_int(int64_t v);
struct jv *jv_uint(uint64_t v);
struct jv *jv_bool(bool v);
struct jv *jv_dbl(double v);
/* Add key (copied) -> val (owned) to an object; returns val. */
struct jv *jv_set(struct jv *obj, const char *key, struct jv *val);
struct jv *jv_push(struct jv *arr, struct jv *val);
void jv_print(FILE *f, const struct jv *v); /* pretty, no trailing newline */
void jv_free(struct jv *v);
/* Print a JSON string literal (QEMU's escaping). */
void json_print_str(FILE *f, const char *s);

/* qemu-img's progress line, "    (x.xx/100%)\r" on stdout, printed when
 * the value moved by more than min_skip or is 0 or 100. progress_print:
 * with max 0, delta is the new value; else the value grows by
 * delta / 100 * max (QEMU's qemu_progress_print). */
void progress_init(bool enabled, float min_skip);
void progress_print(float delta, int max);
void progress_end(void);

#endif
