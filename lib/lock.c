/*
 * lock.c - image locking compatible with QEMU's file-posix driver.
 *
 * QEMU marks what an open image uses with shared OFD byte-range locks:
 * byte 100 + i while it holds permission i, byte 200 + i while it does not
 * let others have permission i (i: 0 consistent read, 1 write, 2 write
 * unchanged, 3 resize). Taking a permission means no one else may lock its
 * 200 + i byte; refusing to share one means no one else may hold 100 + i.
 * qimg takes the same locks QEMU takes for the same kind of open, so each
 * tool sees the other (qcow2-format.md does not cover this: it is QEMU's
 * protocol, observed in /proc/locks for qemu-io 7.2).
 *
 * The locks belong to the open file description, so they last exactly as
 * long as the image's file descriptor.
 */
#include "lock.h"

#include "error.h"

#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#define LOCK_PERM_BASE 100
#define LOCK_SHARED_BASE 200

enum {
    PERM_CONSISTENT_READ = 1u << 0,
    PERM_WRITE = 1u << 1,
    PERM_WRITE_UNCHANGED = 1u << 2,
    PERM_RESIZE = 1u << 3,
    PERM_ALL = 0xfu,
};

static const char *const perm_names[] = {"consistent read", "write",
                                         "write unchanged", "resize"};

static int lock_byte(int fd, off_t off, short type)
{
    struct flock fl = {
        .l_type = type, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};

    return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* No OFD locks here (some network file systems): go without, as QEMU
 * does when the file system cannot lock. */
static bool unsupported(int err)
{
    return err == -ENOLCK || err == -EINVAL || err == -EOPNOTSUPP ||
           err == -ENOSYS;
}

/* 1 if another open file description holds a lock on the byte. */
static int byte_taken(int fd, off_t off)
{
    struct flock fl = {
        .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = off, .l_len = 1};

    if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
        return -errno;
    return fl.l_type != F_UNLCK;
}

/* QEMU's two lines: what could not be had, and the hint. */
static int lock_error(bool shared, const char *perm, const char *path)
{
    return qimg_err(EAGAIN,
                    "Failed to get %s\"%s\" lock\nIs another process using "
                    "the image [%s]?",
                    shared ? "shared " : "", perm, path);
}

/* Take our locks, then look for anyone whose locks conflict with them. */
static int apply(int fd, unsigned perm, unsigned shared, const char *path)
{
    int ret;

    for (unsigned i = 0; i < 4; i++) {
        ret = 0;
        if (perm & (1u << i))
            ret = lock_byte(fd, LOCK_PERM_BASE + i, F_RDLCK);
        if (ret == 0 && !(shared & (1u << i)))
            ret = lock_byte(fd, LOCK_SHARED_BASE + i, F_RDLCK);
        if (ret < 0 && unsupported(ret))
            return 0;
        if (ret < 0)
            return qimg_err_errno(-ret, "Failed to lock the image");
    }
    for (unsigned i = 0; i < 4; i++) {
        if (!(perm & (1u << i)))
            continue;
        ret = byte_taken(fd, LOCK_SHARED_BASE + i);
        if (ret < 0)
            return qimg_err_errno(-ret, "Failed to check lock byte");
        if (ret)
            return lock_error(false, perm_names[i], path);
    }
    for (unsigned i = 0; i < 4; i++) {
        if (shared & (1u << i))
            continue;
        ret = byte_taken(fd, LOCK_PERM_BASE + i);
        if (ret < 0)
            return qimg_err_errno(-ret, "Failed to check lock byte");
        if (ret)
            return lock_error(true, perm_names[i], path);
    }
    return 0;
}

int lock_image(struct qimg_io *io, bool read_write,
               const struct qimg_open_opts *o, const char *path)
{
    int fd = io->ops->get_fd ? io->ops->get_fd(io->ctx) : -1;
    unsigned perm, shared;

    if (fd < 0 || o->no_locking)
        return 0;
    if (o->force_share && read_write)
        return qimg_err(EINVAL, "force-share=on can only be used with "
                                "read-only images");
    if (read_write) {
        /* As a read-write qemu-img/qemu-io: others may only read. */
        perm = PERM_CONSISTENT_READ | PERM_WRITE | PERM_RESIZE;
        shared = PERM_CONSISTENT_READ | PERM_WRITE_UNCHANGED;
    } else if (o->force_share) {
        perm = PERM_CONSISTENT_READ;
        shared = PERM_ALL;
    } else {
        perm = PERM_CONSISTENT_READ;
        shared = PERM_ALL & ~(PERM_WRITE | PERM_RESIZE);
    }
    return apply(fd, perm, shared, path);
}
