/*
 * io.h - pieces shared by the files of `qimg io` (cmd_io.c, io_rw.c,
 * io_query.c, io_util.c): the session state, the command table entry and
 * qemu-io's number parsing and report printing.
 *
 * Not a public interface: only the io files include it.
 */
#ifndef QIMG_CLI_IO_H
#define QIMG_CLI_IO_H

#include <stdbool.h>
#include <stdint.h>
#include <time.h>

#include "cli.h"

/* qemu-io's BDRV_REQUEST_MAX_BYTES: the largest single request. */
#define IO_MAX_BYTES 2147483136ll

/* One open image (or none, after `close`). */
struct io_state {
    qimg_image *img;
    bool writable;   /* opened read-write: write commands are allowed */
    bool probed_raw; /* format guessed as raw: block 0 is guarded */
    /* The guest size as QEMU reports it: raw files are rounded up to whole
     * 512-byte sectors (the tail reads as zeros); real_size is the
     * library's. */
    uint64_t size, real_size;
    bool quit; /* `quit` ran: stop reading commands */
    /* Corrupt metadata was reported (once, as QEMU does); on a writable
     * image that also makes it unusable, every request then failing with
     * ENOMEDIUM like QEMU's drv-less node. */
    bool corrupt_reported, is_dead;
};

enum {
    IO_NOFILE_OK = 1, /* runs without an open image */
    IO_WRITE = 2,     /* needs a writable image */
};

struct io_cmd {
    const char *name;
    const char *altname;
    int (*fn)(struct io_state *s, int argc, char **argv);
    int argmin, argmax; /* argmax -1: no upper limit */
    unsigned flags;
    const char *args; /* NULL: the command takes none */
    const char *oneline;
    const char *help; /* extended help, or NULL */
};

/* io_rw.c */
extern const struct io_cmd io_cmd_read, io_cmd_readv, io_cmd_write,
    io_cmd_writev, io_cmd_discard, io_cmd_flush;
/* io_query.c */
extern const struct io_cmd io_cmd_map, io_cmd_alloc, io_cmd_length, io_cmd_info;

/* io_util.c */
/* qemu-io's cvtnum(): a byte count with optional suffix; >= 0, or -EINVAL
 * / -ERANGE. */
int64_t io_cvtnum(const char *s);
/* Print the "Parsing error: ..." line for a failed io_cvtnum(). */
void io_cvtnum_err(int64_t rc, const char *arg);
/* Parse a pattern byte (0..255); prints the error and returns -1. */
int io_parse_pattern(const char *arg);
/* "name args -- oneline" on stdout (qemu-io's command usage line). */
void io_usage(const struct io_cmd *c);
/* Rewind getopt for a new command line. */
void io_getopt_reset(void);
struct timespec io_clock(void);
/* Time elapsed since t0. */
struct timespec io_since(struct timespec t0);
/* The two report lines (or the -C line) for an operation that took d. */
void io_report(const char *op, struct timespec d, int64_t off, int64_t count,
               int64_t total, bool machine);
/* qemu-io's hexdump for read -v. */
void io_dump(const uint8_t *buf, int64_t off, int64_t len);
/* As QEMU's block layer: -ENOMEDIUM once the image is unusable, -EIO if
 * [off, off+len) leaves the image. */
int io_check_range(const struct io_state *s, int64_t off, int64_t len);
/* If the library failed with ret because of corrupt metadata, print QEMU's
 * corruption warning on stderr (first time only). */
void io_note_error(struct io_state *s, int ret);
/* io_note_error(), then "<op> failed: <strerror>" on stdout. */
void io_fail(struct io_state *s, const char *op, int ret);
/* A buffer of len bytes (at least one) filled with `pattern`; exits on
 * out-of-memory as QEMU does. */
uint8_t *io_alloc(int64_t len, int pattern);

#endif
