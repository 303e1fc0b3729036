/*
 * fuzz.h - what the libFuzzer targets (tests/fuzz/fuzz_*.c) share: opening
 * an input as an in-memory qcow2 image, bounded guest reads and walks, and
 * the verdicts a target may assert.
 *
 * Each target defines LLVMFuzzerTestOneInput(); it is linked either with
 * libFuzzer (build-fuzzers.sh) or with the standalone replay driver
 * (replay.c, `meson test --suite fuzz`).
 */
#ifndef QIMG_FUZZ_H
#define QIMG_FUZZ_H

#include <stddef.h>
#include <stdint.h>

#include "internal.h"

/* Inputs larger than this are refused (they add time, not paths). */
#define FUZZ_MAX_INPUT (1u << 20)
/* The in-memory file may grow to this size; writes past it fail EFBIG.
 * (Repairs that extend the file to a refcount block far out make most of
 * the time spent on an input: zero-filling the file.) */
#define FUZZ_MAX_FILE (8u << 20)
/* Guest bytes read per input, over all the disks a target reads. */
#define FUZZ_READ_BUDGET (16u << 20)
/* Block status requests per disk walked. */
#define FUZZ_MAP_STEPS 4096
/* Snapshots a target opens or reads, at most. */
#define FUZZ_MAX_SNAPSHOTS 16

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Open data[0..len) as a qcow2 image held in memory (a private, growable
 * copy), with `o` but never a backing chain or locks. -EFBIG over
 * FUZZ_MAX_FILE (targets refuse inputs over FUZZ_MAX_INPUT themselves). */
int fuzz_open(qimg_image **out, const uint8_t *data, size_t len,
              const struct qimg_open_opts *o);
/* The current file contents of an image opened by fuzz_open (borrowed). */
const uint8_t *fuzz_file_data(qimg_image *img, size_t *len);
/* How many calls of an image opened by fuzz_open failed in the backend so
 * far: a write or truncate past FUZZ_MAX_FILE (-EFBIG), io-mem out of
 * memory (-ENOMEM). Such a failure is an I/O error, not a refusal. */
uint64_t fuzz_io_failures(qimg_image *img);

/* Read the guest disk in chunks, the whole of it if the budget allows and
 * evenly spaced chunks otherwise; the bytes read are taken from *budget.
 * Returns the first failure (reading goes on past it: a bad cluster does
 * not hide the rest of the disk). */
int fuzz_read_disk(qimg_image *img, uint64_t *budget);
/* Walk qimg_image_map() from offset 0 for at most FUZZ_MAP_STEPS extents
 * (and at most `limit` bytes), checking each answer is in range. */
int fuzz_map_disk(qimg_image *img, uint64_t limit);

/* Check data[0..len) read-only (on a private copy). 0 and *out (free it
 * with qimg_check_result_free) if the check ran to its end; else a
 * negative errno and *out NULL (the image did not open, or the check had
 * to stop). */
int fuzz_check_bytes(const uint8_t *data, size_t len,
                     struct qimg_check_result **out);
/* Whether a check result reports nothing: no corruption, leak or error. */
bool fuzz_check_clean(const struct qimg_check_result *r);
/* Check the image held in data[0..len) read-only; true if it is clean.
 * *intact is set if the check found no corruption and no error (leaks
 * allowed). */
bool fuzz_image_clean(const uint8_t *data, size_t len, bool *intact);
/* The same, failing (fuzz_fail) with the counts and the first finding
 * unless it is clean; `when` says what was done to the image. */
void fuzz_require_clean(const uint8_t *data, size_t len, const char *when);

/* The first n bytes of the guest disk (zeros past its end); NULL if they
 * cannot be read. */
uint8_t *fuzz_sample(qimg_image *img, size_t n);
/* a and b are the same file but for the corrupt bit newly set in b (v3:
 * byte 79, bit 1), which the library sets where QEMU would. */
bool fuzz_same_but_corrupt_bit(const uint8_t *a, size_t alen,
                               const uint8_t *b, size_t blen);

/* A stable 64-bit hash of the input, for choosing offsets and operations. */
uint64_t fuzz_hash(const uint8_t *data, size_t len);

/* An invariant of the library failed: print and abort (libFuzzer saves the
 * input). */
void fuzz_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)))
__attribute__((noreturn));

#endif
