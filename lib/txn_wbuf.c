/*
 * txn_wbuf.c - the write buffer of a snapshot transaction: new metadata
 * written to consecutive clusters goes out in one request.
 *
 * qcow2-format.md §5.5. It writes only where it is told, to clusters the
 * transaction allocated; it neither allocates nor flushes the file (the
 * commit in txn.c does). Every write is checked against the live metadata
 * of the old state (the overlap map), which a new structure may never
 * touch. State: struct txn_wbuf (txn_impl.h), written only here.
 */
#include "txn_impl.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* The write buffer: small enough that a small image's copies do not
 * fault in fresh pages (their cost shows in C's -c against 4 MiB), and
 * large enough that the requests stay long (A and B unchanged); at least
 * a cluster. */
static size_t wb_cap(const struct txn *t)
{
    return MAX(256u << 10, t->cs);
}

/* Held writes at most: an operation on a large image writes more than
 * this (its L2 copies), and then writes as it goes once past it. Every
 * refusal but a late one on such an operation (a damaged image) finds
 * the file as it was. */
#define HOLD_MAX (64u << 20)

int txn_wbuf_init(struct txn *t)
{
    t->wb.buf = malloc(wb_cap(t));
    t->wb.hold = true;
    return t->wb.buf ? 0 : qimg_err(ENOMEM, "Out of memory");
}

static void free_held(struct txn_wbuf *w)
{
    for (size_t i = 0; i < w->nb_held; i++)
        free(w->held[i].data);
    free(w->held);
    w->held = NULL;
    w->nb_held = w->cap_held = w->held_bytes = 0;
}

void txn_wbuf_free(struct txn *t)
{
    free(t->wb.buf);
    free_held(&t->wb);
}

int txn_wbuf_release(struct txn *t)
{
    struct txn_wbuf *w = &t->wb;
    int ret = 0;

    w->hold = false;
    for (size_t i = 0; ret == 0 && i < w->nb_held; i++)
        ret = file_pwrite(t->img, w->held[i].data, w->held[i].len,
                          w->held[i].off);
    free_held(w);
    return ret;
}

static int hold(struct txn_wbuf *w, const void *data, size_t len,
                uint64_t off)
{
    uint8_t *copy;

    if (w->nb_held == w->cap_held) {
        size_t cap = w->cap_held ? w->cap_held * 2 : 16;
        struct txn_held *h = realloc(w->held, cap * sizeof *h);
        if (!h)
            return qimg_err(ENOMEM, "Out of memory");
        w->held = h;
        w->cap_held = cap;
    }
    copy = malloc(len ? len : 1);
    if (!copy)
        return qimg_err(ENOMEM, "Out of memory");
    memcpy(copy, data, len);
    w->held[w->nb_held++] = (struct txn_held){off, len, copy};
    w->held_bytes += len;
    return 0;
}

int txn_wbuf_direct(struct txn *t, const void *data, size_t len,
                    uint64_t off)
{
    struct txn_wbuf *w = &t->wb;
    int ret = meta_overlap_check(t->img, off, len);

    if (ret == 0 && w->hold && w->held_bytes + len <= HOLD_MAX)
        return hold(w, data, len, off);
    if (ret == 0 && w->hold)
        ret = txn_wbuf_release(t);
    return ret < 0 ? ret : file_pwrite(t->img, data, len, off);
}

int txn_wbuf_flush(struct txn *t)
{
    struct txn_wbuf *w = &t->wb;
    int ret = 0;

    if (w->len)
        ret = txn_wbuf_direct(t, w->buf, w->len, w->off);
    w->len = 0;
    return ret;
}

/* Write new metadata, coalescing writes to consecutive clusters. */
int txn_wbuf_write(struct txn *t, const void *data, size_t len, uint64_t off)
{
    struct txn_wbuf *w = &t->wb;
    int ret;

    if (w->len && off == w->off + w->len && w->len + len <= wb_cap(t)) {
        memcpy(w->buf + w->len, data, len);
        w->len += len;
        return 0;
    }
    ret = txn_wbuf_flush(t);
    if (ret < 0 || len > wb_cap(t) / 2)
        return ret < 0 ? ret : txn_wbuf_direct(t, data, len, off);
    memcpy(w->buf, data, len);
    w->off = off;
    w->len = len;
    return 0;
}

/* A cluster-sized area at the end of the write buffer to build a table
 * in; txn_wbuf_put then writes it without copying it if it lands right
 * after the previous write. */
int txn_wbuf_slot(struct txn *t, uint8_t **slot)
{
    struct txn_wbuf *w = &t->wb;
    int ret = w->len + t->cs > wb_cap(t) ? txn_wbuf_flush(t) : 0;

    *slot = w->buf + w->len;
    return ret;
}

/* Write the cluster built in the slot at off. */
int txn_wbuf_put(struct txn *t, uint64_t off)
{
    struct txn_wbuf *w = &t->wb;
    int ret;

    if (w->len && off == w->off + w->len) {
        w->len += t->cs;
        return 0;
    }
    if (w->len) {
        ret = txn_wbuf_direct(t, w->buf, w->len, w->off);
        if (ret < 0)
            return ret;
        memmove(w->buf, w->buf + w->len, t->cs);
    }
    w->off = off;
    w->len = t->cs;
    return 0;
}
