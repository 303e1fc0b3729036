/*
 * reader.c - a helper thread that reads one range of an image while the
 * caller reads another.
 *
 * Copying out of the page cache is most of the time of a compare or a
 * safe rebase over images full of data, and two cores copy it in about
 * half the time one does. The library's handles are not safe for
 * concurrent use, so each image is used by one thread at a time: the
 * caller hands a range over and waits for it before it uses that image
 * again. Errors are thread-local in the library: the helper's is copied
 * for the caller to report.
 */
#include "reader.h"

#include <string.h>

static void *reader_main(void *arg)
{
    struct reader *r = arg;

    pthread_mutex_lock(&r->mu);
    for (;;) {
        while (!r->busy && !r->quit)
            pthread_cond_wait(&r->cv, &r->mu);
        if (r->quit)
            break;
        pthread_mutex_unlock(&r->mu);
        r->ret = qimg_image_read(r->img, r->buf, r->len, r->off);
        if (r->ret < 0)
            r->err = *qimg_last_error();
        pthread_mutex_lock(&r->mu);
        r->busy = false;
        pthread_cond_broadcast(&r->cv);
    }
    pthread_mutex_unlock(&r->mu);
    return NULL;
}

static bool start_thread(struct reader *r)
{
    if (pthread_mutex_init(&r->mu, NULL))
        return false;
    if (pthread_cond_init(&r->cv, NULL)) {
        pthread_mutex_destroy(&r->mu);
        return false;
    }
    if (pthread_create(&r->tid, NULL, reader_main, r)) {
        pthread_cond_destroy(&r->cv);
        pthread_mutex_destroy(&r->mu);
        return false;
    }
    r->started = true;
    return true;
}

bool reader_start(struct reader *r, qimg_image *img, void *buf, uint64_t len,
                  uint64_t off)
{
    if (!r->started && !start_thread(r))
        return false;
    pthread_mutex_lock(&r->mu);
    r->img = img;
    r->buf = buf;
    r->len = len;
    r->off = off;
    r->busy = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return true;
}

int reader_wait(struct reader *r)
{
    pthread_mutex_lock(&r->mu);
    while (r->busy)
        pthread_cond_wait(&r->cv, &r->mu);
    pthread_mutex_unlock(&r->mu);
    return r->ret;
}

void reader_stop(struct reader *r)
{
    if (!r->started)
        return;
    pthread_mutex_lock(&r->mu);
    r->quit = true;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_join(r->tid, NULL);
    pthread_cond_destroy(&r->cv);
    pthread_mutex_destroy(&r->mu);
    r->started = false;
}
