/*
 * convert_copy.c - the copy loop of qimg convert: walk the sources by
 * allocation status, read what holds data, write it to the target, leave
 * zeros as holes, and report progress the way qemu-img 7.2 does.
 *
 * The walk follows qemu-img's so that the same chunks (and so the same
 * progress lines) come out: a status run is asked for at most 2 GiB - 512
 * at a time, its end is pulled back onto the source's cluster grid, runs
 * with data are cut into requests of job->buf_size, and with -c into
 * whole target clusters. Each chunk is one of
 *   DATA     read it; write it, skipping zero runs of at least -S bytes
 *            (on the job->align grid) the way qemu-img's sparse detection
 *            does;
 *   ZERO     reads as zeros: nothing to do on a zero-initialised target,
 *            else write zeros;
 *   BACKING  unallocated in a source whose target has a backing file:
 *            left unallocated.
 * Progress counts the DATA bytes (and ZERO bytes with -S 0) done against
 * their total, found by a first walk that reads no data.
 *
 * It does not open or create anything (cmd_convert.c does).
 */
#include "cli.h"
#include "convert.h"

#include <stdlib.h>
#include <string.h>

#define SECTOR 512u
#define REQUEST_MAX 2147483136ull /* QEMU's largest request, bytes */

enum chunk_kind { CK_DATA, CK_ZERO, CK_BACKING };

/* Where the walk is: the status run it is in. */
struct walk {
    struct conv_job *job;
    uint64_t run_end; /* end of the current status run (target offset) */
    enum chunk_kind kind;
};

/* ---- Walking the sources ------------------------------------------------ */

static struct conv_src *src_at(struct conv_job *job, uint64_t pos)
{
    size_t i = 0;

    while (i + 1 < job->nb_src && pos >= job->src[i].start + job->src[i].size)
        i++;
    return &job->src[i];
}

/* Which image answers for source offset `off`, and up to where: the
 * source itself within its readable size; past it (a snapshot smaller
 * than the active disk) its backing file, as QEMU reads there; else none
 * (zeros). */
static qimg_image *layer_at(const struct conv_src *s, uint64_t off,
                            uint64_t *end)
{
    qimg_image *b = qimg_image_backing(s->img);

    *end = s->size;
    if (off < s->avail) {
        *end = s->avail;
        return s->img;
    }
    if (b && off < qimg_image_size(b)) {
        *end = MIN(s->size, qimg_image_size(b));
        return b;
    }
    return NULL;
}

static int layer_status(struct walk *w, const struct conv_src *s, uint64_t off,
                        uint64_t max, struct qimg_extent *e)
{
    uint64_t end;
    qimg_image *img = layer_at(s, off, &end);
    bool top_only;

    memset(e, 0, sizeof *e);
    e->len = MIN(max, end - off);
    if (!img) {
        e->flags = QIMG_BS_ZERO;
        return 0;
    }
    top_only =
        img == s->img && w->job->dst_has_backing && qimg_image_backing(img);
    if (img != s->img && w->job->dst_has_backing)
        return 0; /* from the source's backing file: unallocated here */
    return top_only ? qimg_image_block_status(img, off, e->len, e)
                    : qimg_image_map(img, off, e->len, e);
}

/* The status of the run starting at `pos`; returns its length (bytes). */
static int query_run(struct walk *w, uint64_t pos, uint64_t max,
                     bool past_backing, uint64_t *len)
{
    struct conv_src *s = src_at(w->job, pos);
    uint64_t off = pos - s->start, n = MIN(max, s->size - off), tail;
    struct qimg_extent e;
    int ret;

    ret = layer_status(w, s, off, n, &e);
    if (ret < 0) {
        cli_error("%s", qimg_last_error()->message);
        cli_error("error while reading block status at offset %llu: %s",
                  (unsigned long long)off, strerror(qimg_last_error()->errnum));
        return -1;
    }
    n = (e.len + SECTOR - 1) / SECTOR * SECTOR;
    tail = (off + n) % s->align;
    if (n > tail)
        n -= tail;
    if (e.flags & QIMG_BS_ZERO)
        w->kind = past_backing ? CK_BACKING : CK_ZERO;
    else if (e.flags & QIMG_BS_DATA)
        w->kind = CK_DATA;
    else
        w->kind = w->job->dst_has_backing ? CK_BACKING : CK_DATA;
    *len = n;
    return 0;
}

/* The next chunk at `pos`: its length in *len, its kind in w->kind. */
static int next_chunk(struct walk *w, uint64_t pos, uint64_t *len)
{
    struct conv_job *job = w->job;
    uint64_t n = MIN(job->total - pos, REQUEST_MAX), run;
    bool past_backing = false;

    if (job->dst_backing_size != UINT64_MAX) {
        if (pos >= job->dst_backing_size)
            past_backing = true;
        else if (pos + n > job->dst_backing_size)
            n = job->dst_backing_size - pos;
    }
    if (w->run_end <= pos) {
        if (query_run(w, pos, n, past_backing, &run) < 0)
            return -1;
        w->run_end = pos + run;
    }
    n = MIN(n, w->run_end - pos);
    if (w->kind == CK_DATA)
        n = MIN(n, job->buf_size);
    if (job->compressed) {
        if (n < job->dst_cluster) {
            n = MIN(job->dst_cluster, job->total - pos);
            w->kind = CK_DATA;
        } else {
            n -= n % job->dst_cluster;
        }
    }
    *len = n;
    return 0;
}

static bool counts_for_progress(const struct conv_job *job,
                                enum chunk_kind kind)
{
    return kind == CK_DATA || (!job->min_sparse && kind == CK_ZERO);
}

/* The first walk: how many bytes progress will count. */
static int count_work(struct conv_job *job, uint64_t *out)
{
    struct walk w = {job, 0, CK_DATA};
    uint64_t pos = 0, n;

    *out = 0;
    while (pos < job->total) {
        if (next_chunk(&w, pos, &n) < 0)
            return -1;
        if (counts_for_progress(job, w.kind))
            *out += n;
        pos += n;
    }
    return 0;
}

/* ---- Reading ----------------------------------------------------------- */

/* QEMU names the corruption it met (the source is read-only) before its
 * own line, once. */
static void report_corruption(void)
{
    static bool said;
    const struct qimg_error *e = qimg_last_error();

    if (e->where[0] && !said)
        fprintf(stderr,
                "qcow2: Image is corrupt: %s; further non-fatal corruption "
                "events will be suppressed\n",
                e->message);
    said = said || e->where[0];
}

/* --salvage: read [off, off+n) of img sector by sector, each one that
 * fails as zeros, with qemu-img's warning. */
static void salvage(const struct conv_job *job, qimg_image *img, uint8_t *buf,
                    uint64_t n, uint64_t off)
{
    for (uint64_t i = 0; i < n; i += SECTOR) {
        size_t k = (size_t)MIN(SECTOR, n - i);
        if (qimg_image_read(img, buf + i, k, off + i) == 0)
            continue;
        report_corruption();
        if (!job->quiet)
            cli_error("warning: error while reading offset %llu: %s",
                      (unsigned long long)(off + i),
                      strerror(qimg_last_error()->errnum));
        memset(buf + i, 0, k);
    }
}

/* Read [pos, pos+len) of the concatenated sources. */
static int read_range(struct conv_job *job, uint8_t *buf, uint64_t len,
                      uint64_t pos)
{
    while (len > 0) {
        struct conv_src *s = src_at(job, pos);
        uint64_t off = pos - s->start, end;
        qimg_image *img = layer_at(s, off, &end);
        uint64_t n = MIN(len, end - off);

        if (!img) {
            memset(buf, 0, (size_t)n);
        } else if (qimg_image_read(img, buf, (size_t)n, off) < 0) {
            if (job->salvage) {
                salvage(job, img, buf, n, off);
            } else {
                report_corruption();
                cli_error("error while reading at byte %llu: %s",
                          (unsigned long long)pos,
                          strerror(qimg_last_error()->errnum));
                return -1;
            }
        }
        buf += n;
        pos += n;
        len -= n;
    }
    return 0;
}

/* ---- Sparse detection -------------------------------------------------- */

static bool sector_is_zero(const uint8_t *p)
{
    static const uint8_t zeros[SECTOR];

    return !memcmp(p, zeros, SECTOR);
}

/* The leading run of `nsec` sectors (the first at sector `sec`) whose
 * sectors are all zero or all not: its length in sectors. Unless it fills
 * the buffer its end is moved onto the `align` grid: a data run grows to
 * the next grid line, a zero run shrinks to the previous one, and a zero
 * run that does not reach a grid line counts as data. */
static uint64_t lead_run(const uint8_t *buf, uint64_t nsec, uint64_t sec,
                         uint64_t align, bool *is_data)
{
    bool zero = sector_is_zero(buf);
    uint64_t i = 1, tail;

    while (i < nsec && sector_is_zero(buf + i * SECTOR) == zero)
        i++;
    *is_data = !zero;
    if (i == nsec || (tail = (sec + i) % align) == 0)
        return i;
    if (zero && i <= tail)
        *is_data = true;
    if (*is_data)
        return MIN(i + align - tail, nsec);
    return i - tail;
}

/* How many sectors from the start of `buf` to write (*is_data) or to
 * skip: a data run takes in the zero runs after it that are shorter than
 * `min` sectors, so that short holes do not split the writes. */
static uint64_t sparse_span(const uint8_t *buf, uint64_t nsec, uint64_t sec,
                            uint64_t min, uint64_t align, bool *is_data)
{
    uint64_t used, seen, len;
    bool data;

    min = MIN(min, nsec);
    used = seen = lead_run(buf, nsec, sec, align, is_data);
    while (*is_data && seen < nsec) {
        len = lead_run(buf + seen * SECTOR, nsec - seen, sec + seen, align,
                       &data);
        seen += len;
        if (data)
            used = seen;
        else if (len >= min)
            break;
    }
    return used;
}

/* ---- Writing ----------------------------------------------------------- */

static int write_error(uint64_t pos)
{
    cli_error("%s", qimg_last_error()->message);
    cli_error("error while writing at byte %llu: %s", (unsigned long long)pos,
              strerror(qimg_last_error()->errnum));
    return -1;
}

/* Raw targets: qimg_image_write_zeroes() always writes zeros (see
 * lib-requests.md, "raw write_zeroes ignores QIMG_ZERO_UNMAP"), where
 * qemu-img punches a hole. Punch one with discard, then write zeros over
 * whatever the file system did not turn into a hole. */
static int raw_zero_unmap(qimg_image *dst, uint64_t pos, uint64_t len)
{
    uint64_t end = pos + len;
    struct qimg_extent e;

    if (qimg_image_discard(dst, pos, len) < 0)
        return qimg_image_write_zeroes(dst, pos, len, 0);
    for (; pos < end; pos += e.len) {
        if (qimg_image_block_status(dst, pos, end - pos, &e) < 0)
            return -1;
        if (!(e.flags & QIMG_BS_ZERO) &&
            qimg_image_write_zeroes(dst, pos, e.len, 0) < 0)
            return -1;
    }
    return 0;
}

static int write_zeros(struct conv_job *job, uint64_t pos, uint64_t len)
{
    /* Without -S (sparse 0) the target is opened without unmap. */
    unsigned flags = job->min_sparse ? QIMG_ZERO_UNMAP : 0;
    int ret;

    if (job->dst_zero_init)
        return 0;
    if (flags && qimg_image_format(job->dst) == QIMG_FMT_RAW)
        ret = raw_zero_unmap(job->dst, pos, len);
    else
        ret = qimg_image_write_zeroes(job->dst, pos, len, flags);
    return ret < 0 ? write_error(pos) : 0;
}

static int write_data(struct conv_job *job, const uint8_t *buf, uint64_t len,
                      uint64_t pos)
{
    int ret = job->compressed
                  ? qimg_image_write_compressed(job->dst, buf, (size_t)len, pos)
                  : qimg_image_write(job->dst, buf, (size_t)len, pos);

    return ret < 0 ? write_error(pos) : 0;
}

/* A DATA chunk already read into `buf`. */
static int put_data(struct conv_job *job, const uint8_t *buf, uint64_t len,
                    uint64_t pos)
{
    uint64_t min = job->min_sparse / SECTOR, align = job->align / SECTOR;

    while (len > 0) {
        uint64_t n = len;
        bool is_data = true;
        int ret;

        if (job->min_sparse && job->compressed)
            is_data = !buf_is_zero(buf, len);
        else if (job->min_sparse)
            n = sparse_span(buf, len / SECTOR, pos / SECTOR, min, align,
                            &is_data) *
                SECTOR;
        ret = is_data ? write_data(job, buf, n, pos) : write_zeros(job, pos, n);
        if (ret < 0)
            return ret;
        buf += n;
        pos += n;
        len -= n;
    }
    return 0;
}

static int copy_chunk(struct conv_job *job, enum chunk_kind kind, uint8_t *buf,
                      uint64_t pos, uint64_t len)
{
    if (kind == CK_ZERO && !job->min_sparse) {
        /* -S 0: zeros are written out as data, fully allocated. */
        memset(buf, 0, (size_t)len);
        return write_data(job, buf, len, pos);
    }
    switch (kind) {
    case CK_DATA:
        if (read_range(job, buf, len, pos) < 0)
            return -1;
        return put_data(job, buf, len, pos);
    case CK_ZERO:
        return write_zeros(job, pos, len);
    case CK_BACKING:
        break;
    }
    return 0;
}

int conv_copy(struct conv_job *job)
{
    struct walk w = {job, 0, CK_DATA};
    uint64_t pos = 0, n, work, done = 0;
    uint8_t *buf;
    int ret = 0;

    if (count_work(job, &work) < 0)
        return -1;
    /* Page-aligned, so that the target can write it with O_DIRECT. */
    buf = data_buf_alloc(MAX(job->buf_size, job->dst_cluster));
    if (!buf) {
        cli_error("Out of memory");
        return -1;
    }
    while (ret == 0 && pos < job->total) {
        ret = next_chunk(&w, pos, &n);
        if (ret < 0)
            break;
        if (w.kind == CK_ZERO && !job->min_sparse)
            n = MIN(n, job->buf_size);
        if (counts_for_progress(job, w.kind)) {
            done += n;
            progress_print((float)(100.0 * (double)done / (double)work), 0);
        }
        ret = copy_chunk(job, w.kind, buf, pos, n);
        pos += n;
    }
    free(buf);
    return ret;
}
