/*
 * io-posix.c - struct qimg_io_ops over a POSIX file descriptor.
 *
 * Plain pread/pwrite on the calling thread, fdatasync for flush,
 * FALLOC_FL_PUNCH_HOLE for discard. The descriptor stays open for the
 * image's whole life so its OFD locks (lock.c) stay held.
 *
 * Long runs of writes start the kernel's write-back as they go
 * (sync_file_range), so that the next flush finds little left to wait
 * for: a flush after copying gigabytes then costs what the disk needs,
 * not the whole write-back started from zero. Starting write-back is
 * itself work (the file system places every dirty block; bench/RESULTS.md
 * has the figure), so a helper thread does it while the caller goes on
 * writing; it only ever calls sync_file_range, a hint, on this fd.
 *
 * An image opened with direct_data (qimg convert's target) writes long,
 * aligned runs with O_DIRECT once the first DIRECT_AFTER bytes have gone
 * through the page cache: straight from the caller's buffer to the disk,
 * no page cache to fill and write back, which is faster for gigabytes of
 * data. The first gigabyte stays buffered because the page cache takes it
 * faster than the disk would and its write-back overlaps what follows
 * (bench/RESULTS.md, "Figures from code comments"). The flag is set on the
 * descriptor around each such write only; everything else stays
 * buffered, and a file system that refuses O_DIRECT just gets buffered
 * writes.
 */
#include "io.h"

#include "error.h"
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Bytes written since write-back was last started. */
#define WRITEBACK_KICK (64u << 20)
/* Direct writes: at least this long, buffer, offset and length on this
 * grid (a 4 KiB-sector disk's; 512-byte ones accept it too). */
#define DIRECT_MIN (256u << 10)
#define DIRECT_AFTER (1ull << 30)
#define DIRECT_ALIGN 4096u

struct posix_ctx {
    int fd;
    bool direct; /* direct_data asked for and not refused yet */
    uint64_t buffered; /* bytes written through the page cache */
    uint64_t unkicked;
#ifdef SYNC_FILE_RANGE_WRITE
    pthread_mutex_t lock;
    pthread_cond_t wake;
    pthread_t thread;
    bool started, kicked, stop;
#endif
};

#ifdef SYNC_FILE_RANGE_WRITE
static void *writeback_thread(void *arg)
{
    struct posix_ctx *p = arg;

    pthread_mutex_lock(&p->lock);
    for (;;) {
        while (!p->kicked && !p->stop)
            pthread_cond_wait(&p->wake, &p->lock);
        if (p->stop)
            break;
        p->kicked = false;
        pthread_mutex_unlock(&p->lock);
        /* Only a hint: a failure here is seen by the next flush. */
        (void)sync_file_range(p->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static void kick_writeback(struct posix_ctx *p, size_t len)
{
    p->unkicked += len;
    if (p->unkicked < WRITEBACK_KICK)
        return;
    p->unkicked = 0;
    if (!p->started)
        p->started = pthread_create(&p->thread, NULL, writeback_thread, p) == 0;
    if (!p->started) {
        (void)sync_file_range(p->fd, 0, 0, SYNC_FILE_RANGE_WRITE);
        return;
    }
    pthread_mutex_lock(&p->lock);
    p->kicked = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
}

static void stop_writeback(struct posix_ctx *p)
{
    if (!p->started)
        return;
    pthread_mutex_lock(&p->lock);
    p->stop = true;
    pthread_cond_signal(&p->wake);
    pthread_mutex_unlock(&p->lock);
    pthread_join(p->thread, NULL);
}
#else
static void kick_writeback(struct posix_ctx *p, size_t len)
{
    (void)p;
    (void)len;
}

static void stop_writeback(struct posix_ctx *p)
{
    (void)p;
}
#endif

static int posix_pread(void *ctx, void *buf, size_t len, uint64_t off)
{
    struct posix_ctx *p = ctx;
    uint8_t *b = buf;

    while (len > 0) {
        ssize_t n = pread(p->fd, b, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0) {
            memset(b, 0, len);
            return 0;
        }
        b += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static int pwrite_buffered(struct posix_ctx *p, const uint8_t *b, size_t len,
                           uint64_t off)
{
    while (len > 0) {
        ssize_t n = pwrite(p->fd, b, len, (off_t)off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            return -errno;
        }
        if (n == 0)
            return -ENOSPC;
        b += n;
        off += (uint64_t)n;
        len -= (size_t)n;
    }
    return 0;
}

static bool direct_fits(const struct posix_ctx *p, const void *buf,
                        size_t len, uint64_t off)
{
    return p->direct && p->buffered >= DIRECT_AFTER && len >= DIRECT_MIN &&
           IS_ALIGNED((uintptr_t)buf | len | off, DIRECT_ALIGN);
}

/* Set or clear O_DIRECT on the descriptor; false if that failed. */
static bool set_direct(struct posix_ctx *p, bool on)
{
    int fl = fcntl(p->fd, F_GETFL);

    if (fl < 0)
        return false;
    fl = on ? fl | O_DIRECT : fl & ~O_DIRECT;
    return fcntl(p->fd, F_SETFL, fl) == 0;
}

/* As much of buf as O_DIRECT takes: the bytes written, or -errno. A file
 * system that does not take it (EINVAL) gets no more direct writes. */
static ssize_t write_direct(struct posix_ctx *p, const uint8_t *b, size_t len,
                            uint64_t off)
{
    size_t done = 0;
    int err = 0;

    if (!set_direct(p, true)) {
        p->direct = false;
        return 0;
    }
    while (done < len) {
        ssize_t n = pwrite(p->fd, b + done, len - done, (off_t)(off + done));
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && errno == EINVAL)
            p->direct = false;
        else if (n < 0)
            err = -errno;
        else if (n == 0)
            err = -ENOSPC;
        if (n <= 0)
            break;
        done += (size_t)n;
        if (done % DIRECT_ALIGN) /* a short write off the grid: rare */
            break;
    }
    if (!set_direct(p, false)) {
        p->direct = false;
        if (!err)
            err = -errno;
    }
    return err ? err : (ssize_t)done;
}

static int posix_pwrite(void *ctx, const void *buf, size_t len, uint64_t off)
{
    struct posix_ctx *p = ctx;
    const uint8_t *b = buf;

    if (direct_fits(p, buf, len, off)) {
        ssize_t n = write_direct(p, b, len, off);
        if (n < 0)
            return (int)n;
        b += n;
        off += (uint64_t)n;
        len -= (size_t)n;
        if (len == 0)
            return 0;
    }
    kick_writeback(p, len);
    p->buffered += len;
    return pwrite_buffered(p, b, len, off);
}

static int posix_flush(void *ctx)
{
    struct posix_ctx *p = ctx;

    p->unkicked = 0;
    return fdatasync(p->fd) < 0 ? -errno : 0;
}

static int posix_discard(void *ctx, uint64_t off, uint64_t len)
{
    struct posix_ctx *p = ctx;

    /* -EOPNOTSUPP where the file system cannot punch holes: callers that
     * only free space ignore it, callers that need zeros write them. */
    if (fallocate(p->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
                  (off_t)off, (off_t)len) < 0)
        return errno == ENOSYS ? -EOPNOTSUPP : -errno;
    return 0;
}

static int posix_truncate(void *ctx, uint64_t size)
{
    struct posix_ctx *p = ctx;

    return ftruncate(p->fd, (off_t)size) < 0 ? -errno : 0;
}

static int posix_get_size(void *ctx, uint64_t *out)
{
    struct posix_ctx *p = ctx;
    struct stat st;

    if (fstat(p->fd, &st) < 0)
        return -errno;
    if (S_ISBLK(st.st_mode)) {
        off_t end = lseek(p->fd, 0, SEEK_END);
        if (end < 0)
            return -errno;
        *out = (uint64_t)end;
        return 0;
    }
    *out = (uint64_t)st.st_size;
    return 0;
}

static int posix_get_allocated(void *ctx, uint64_t *out)
{
    struct posix_ctx *p = ctx;
    struct stat st;

    if (fstat(p->fd, &st) < 0)
        return -errno;
    *out = (uint64_t)st.st_blocks * 512;
    return 0;
}

/* SEEK_HOLE first: one call answers for data, the usual case. */
static int posix_seek_data(void *ctx, uint64_t off, bool *is_data,
                           uint64_t *end)
{
    struct posix_ctx *p = ctx;
    off_t h = lseek(p->fd, (off_t)off, SEEK_HOLE), d;
    struct stat st;

    if (h < 0 && errno != ENXIO)
        return -errno;
    if (h >= 0 && (uint64_t)h > off) {
        *is_data = true;
        *end = (uint64_t)h;
        return 0;
    }
    *is_data = false;
    d = h < 0 ? -1 : lseek(p->fd, (off_t)off, SEEK_DATA);
    if (d >= 0) {
        *end = (uint64_t)d;
        return 0;
    }
    if (h >= 0 && errno != ENXIO)
        return -errno;
    /* A hole up to the end of the file (ENXIO: off is at or past it). */
    if (fstat(p->fd, &st) < 0)
        return -errno;
    *end = MAX((uint64_t)st.st_size, off);
    return 0;
}

static int posix_get_fd(void *ctx)
{
    return ((struct posix_ctx *)ctx)->fd;
}

static void posix_prefetch(void *ctx, uint64_t off, uint64_t len)
{
    (void)posix_fadvise(((struct posix_ctx *)ctx)->fd, (off_t)off, (off_t)len,
                        POSIX_FADV_WILLNEED);
}

static void posix_close(void *ctx)
{
    struct posix_ctx *p = ctx;

    stop_writeback(p);
    close(p->fd);
#ifdef SYNC_FILE_RANGE_WRITE
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->wake);
#endif
    free(p);
}

static const struct qimg_io_ops posix_ops = {
    .pread = posix_pread,
    .pwrite = posix_pwrite,
    .flush = posix_flush,
    .discard = posix_discard,
    .truncate = posix_truncate,
    .get_size = posix_get_size,
    .get_allocated = posix_get_allocated,
    .seek_data = posix_seek_data,
    .get_fd = posix_get_fd,
    .prefetch = posix_prefetch,
    .close = posix_close,
};

void io_posix_direct_data(struct qimg_io *io)
{
    if (io->ops == &posix_ops)
        ((struct posix_ctx *)io->ctx)->direct = true;
}

int io_posix_open(struct qimg_io *out, const char *path, bool read_write,
                  bool create)
{
    struct posix_ctx *p;
    int flags = (read_write ? O_RDWR : O_RDONLY) | O_CLOEXEC;
    int fd;

    if (create)
        flags |= O_CREAT; /* truncated by the caller once locked */
    fd = open(path, flags, 0644);
    if (fd < 0)
        return -errno;
    {
        struct stat st;
        if (fstat(fd, &st) < 0 || S_ISDIR(st.st_mode)) {
            close(fd);
            return -EISDIR;
        }
    }
    p = calloc(1, sizeof *p);
    if (!p) {
        close(fd);
        return -ENOMEM;
    }
    p->fd = fd;
#ifdef SYNC_FILE_RANGE_WRITE
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->wake, NULL);
#endif
    out->ops = &posix_ops;
    out->ctx = p;
    return 0;
}
