/*
 * file.h - the image file under a handle (file.c): every byte the library
 * reads or writes, every flush, discard and allocation query goes through
 * here to the io backend.
 */
#ifndef QIMG_FILE_H
#define QIMG_FILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image.h"

/* Take over io (read-write or not). */
void file_init(qimg_image *img, const struct qimg_io *io, bool read_write);
void file_close(qimg_image *img);
/* From now on refuse writes (a snapshot view). */
void file_set_read_only(qimg_image *img);

int file_pread(qimg_image *img, void *buf, size_t len, uint64_t off);
/* Ask the backend to start reading [off, off+len): many small reads far
 * apart then wait on the disk together rather than one after another. */
void file_prefetch(qimg_image *img, uint64_t off, uint64_t len);
int file_pwrite(qimg_image *img, const void *buf, size_t len, uint64_t off);
/* fdatasync if anything was written since the last one. */
int file_flush(qimg_image *img);
/* As file_flush, even when nothing was written (a guest flush). */
int file_flush_always(qimg_image *img);
/* Give [off, off+len) back to the file system; advisory. */
int file_discard(qimg_image *img, uint64_t off, uint64_t len);
/* Punch a hole that must read as zeros: 0, or -errno (no message) if the
 * file system cannot. */
int file_punch(qimg_image *img, uint64_t off, uint64_t len);
/* Discard without marking the file unsynced or leaving an error: space
 * given back after a commit, which no later step depends on. */
void file_discard_quiet(qimg_image *img, uint64_t off, uint64_t len);
/* Thin: -errno with no message set (callers word their own). */
int file_get_size(qimg_image *img, uint64_t *out);
int file_get_allocated(qimg_image *img, uint64_t *out);
int file_truncate(qimg_image *img, uint64_t size);
/* Cut a tail nothing names any more: advisory, failures forgotten. */
void file_truncate_quiet(qimg_image *img, uint64_t size);
/* Make [from, to) of the file read as zeros, as a preallocation mode
 * asks: metadata extends the file (sparse), falloc reserves the blocks,
 * full writes zeros (also where falloc cannot). off: nothing. */
int file_io_fill(struct qimg_io *io, uint64_t from, uint64_t to,
                 enum qimg_prealloc mode);
int file_fill(qimg_image *img, uint64_t from, uint64_t to,
              enum qimg_prealloc mode);

/* qcow2: the file size as qimg_open read it, and growth as clusters past
 * it are allocated (they count as inside the file before they are
 * written). */
int file_size_init(qimg_image *img);
void file_extend(qimg_image *img, uint64_t end);

/* Read a table of n bytes at off into a new buffer, checking it lies
 * within the file ("<what> exceeds the end of the file"); what NULL reads
 * it as check must, as QEMU would: zeros past the end of the file. */
int file_read_table(qimg_image *img, uint8_t **out, uint64_t off, size_t n,
                    const char *what);

/* Block status of a raw file (data or hole, from SEEK_DATA). */
int file_block_status(qimg_image *img, uint64_t off, uint64_t len,
                      struct qimg_extent *out);
/* Data clusters over a hole of the host file read as zeros: shorten e to
 * one kind and add QIMG_BS_ZERO over a hole, as QEMU's block status does. */
void file_host_holes(qimg_image *img, struct qimg_extent *e);

#endif
