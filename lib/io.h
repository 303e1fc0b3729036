/*
 * io.h - the one path to the image file: struct qimg_io_ops.
 *
 * Every byte qimg reads or writes, every flush, discard and truncate goes
 * through these operations, so tests can substitute an in-memory,
 * crash-recording or fault-injecting backend. Backends return 0 or a bare
 * -errno and never set the library error; lib code adds the message.
 */
#ifndef QIMG_IO_H
#define QIMG_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct qimg_io_ops {
    /* Read exactly len bytes; bytes past the end of the file read as 0. */
    int (*pread)(void *ctx, void *buf, size_t len, uint64_t off);
    int (*pwrite)(void *ctx, const void *buf, size_t len, uint64_t off);
    int (*flush)(void *ctx);
    /* Deallocate a range (punch a hole); it then reads as zeros. */
    int (*discard)(void *ctx, uint64_t off, uint64_t len);
    int (*truncate)(void *ctx, uint64_t size);
    int (*get_size)(void *ctx, uint64_t *out);
    /* Bytes the file occupies on the host; may be NULL. */
    int (*get_allocated)(void *ctx, uint64_t *out);
    /* Whether [off, ...) holds data or a hole, and where that run ends;
     * may be NULL (everything is data). */
    int (*seek_data)(void *ctx, uint64_t off, bool *is_data, uint64_t *end);
    /* The file descriptor for QEMU-compatible locks (lock.c); may be NULL. */
    int (*get_fd)(void *ctx);
    /* A hint: [off, off+len) will be read soon (start reading it now, in
     * parallel with other such ranges); may be NULL. */
    void (*prefetch)(void *ctx, uint64_t off, uint64_t len);
    void (*close)(void *ctx);
};

struct qimg_io {
    const struct qimg_io_ops *ops;
    void *ctx;
};

/* io-posix.c: a file opened read-only or read-write (O_CREAT when create
 * is set; the caller truncates it once it holds the lock). */
int io_posix_open(struct qimg_io *out, const char *path, bool read_write,
                  bool create);
/* From now on write long aligned runs with O_DIRECT (io-posix.c says
 * when); a no-op on other backends. */
void io_posix_direct_data(struct qimg_io *io);

/* io-mem.c: a growable in-memory file, initially a copy of data[0..len). */
int io_mem_open(struct qimg_io *out, const void *data, size_t len);
/* The current contents of an io-mem file (borrowed). */
const uint8_t *io_mem_data(struct qimg_io *io, size_t *len);

#endif
