/*
 * reader.h - a helper thread that reads one range of an image while the
 * caller reads another (reader.c): compare and rebase read their two
 * images at once, as qemu-img's thread pool does.
 */
#ifndef QIMG_CLI_READER_H
#define QIMG_CLI_READER_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "qimg.h"

struct reader {
    pthread_t tid;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool started, busy, quit;
    qimg_image *img;
    void *buf;
    uint64_t off, len;
    int ret;              /* of the last read: 0, or < 0 ... */
    struct qimg_error err; /* ... and the helper's error then */
};

/* Start reading len bytes at off of img into buf on the helper thread
 * (started on first use). The caller does not touch img (or the images
 * it opened as its backing chain) or buf until reader_wait(). false: no
 * thread could be started; the caller reads the range itself. */
bool reader_start(struct reader *r, qimg_image *img, void *buf, uint64_t len,
                  uint64_t off);
/* Wait for the read reader_start() began: 0, or < 0 with r->err set. */
int reader_wait(struct reader *r);
/* End the helper thread, if one was started. */
void reader_stop(struct reader *r);

#endif
