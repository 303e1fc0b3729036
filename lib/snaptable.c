/*
 * snaptable.c - the snapshot table: decode, encode, the live table,
 * lookups.
 *
 * qcow2-format.md §5.1-§5.3. Entries keep their unknown extra data byte
 * for byte. What create, apply and delete do to the image is txn.c's job;
 * the public snapshot API is snapapi.c.
 */
#include "snaptable.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "endian.h"
#include "error.h"
#include "file.h"
#include "util.h"

/* §5.1 entry header offsets */
enum {
    SN_L1_OFF = 0,
    SN_L1_SIZE = 8,
    SN_ID_LEN = 12,
    SN_NAME_LEN = 14,
    SN_DATE_SEC = 16,
    SN_DATE_NSEC = 20,
    SN_VM_CLOCK = 24,
    SN_VM_STATE32 = 32,
    SN_EXTRA_LEN = 36,
    SN_HDR_LEN = 40,
    /* §5.2 extra data */
    SNX_VM_STATE = 0,
    SNX_DISK_SIZE = 8,
    SNX_ICOUNT = 16,
    SNX_KNOWN_LEN = 24,
};

void snap_free(struct snap *s)
{
    if (!s)
        return;
    free(s->id);
    free(s->name);
    free(s->extra);
    memset(s, 0, sizeof *s);
}

int snap_copy(struct snap *dst, const struct snap *src)
{
    *dst = *src;
    dst->id = strdup(src->id);
    dst->name = strdup(src->name);
    dst->extra = NULL;
    if (src->extra_size) {
        dst->extra = malloc(src->extra_size);
        if (dst->extra)
            memcpy(dst->extra, src->extra, src->extra_size);
    }
    if (!dst->id || !dst->name || (src->extra_size && !dst->extra)) {
        snap_free(dst);
        return qimg_err(ENOMEM, "Out of memory");
    }
    return 0;
}

static char *dup_bytes(const uint8_t *p, size_t n)
{
    char *s = malloc(n + 1);

    if (s) {
        memcpy(s, p, n);
        s[n] = '\0';
    }
    return s;
}

/* Decode the entry at buf[*pos]; -EAGAIN if more bytes are needed. */
static int decode_entry(const struct qcow2 *q, const uint8_t *buf,
                        uint64_t len, uint64_t *pos, uint32_t i,
                        struct snap *s, struct snap_read *rd)
{
    uint64_t p = ALIGN_UP(*pos, 8);
    const uint8_t *h = buf + p;
    uint32_t id_len, name_len, xlen;

    if (p + SN_HDR_LEN > len)
        return -EAGAIN;
    memset(s, 0, sizeof *s);
    s->l1_off = be64_load(h + SN_L1_OFF);
    s->l1_size = be32_load(h + SN_L1_SIZE);
    id_len = be16_load(h + SN_ID_LEN);
    name_len = be16_load(h + SN_NAME_LEN);
    s->date_sec = be32_load(h + SN_DATE_SEC);
    s->date_nsec = be32_load(h + SN_DATE_NSEC);
    s->vm_clock_nsec = be64_load(h + SN_VM_CLOCK);
    s->vm_state_size32 = be32_load(h + SN_VM_STATE32);
    xlen = be32_load(h + SN_EXTRA_LEN);
    s->extra_size = xlen;
    if (xlen > QCOW_MAX_SNAPSHOT_EXTRA) {
        if (!rd || !rd->repair)
            return qimg_err(EFBIG, "Too much extra metadata in snapshot "
                                   "table entry %u",
                            i);
        s->extra_size = QCOW_MAX_SNAPSHOT_EXTRA;
    }
    if (p + SN_HDR_LEN + (uint64_t)xlen + id_len + name_len > len)
        return -EAGAIN;
    if (xlen > QCOW_MAX_SNAPSHOT_EXTRA && rd->nb_drop < SNAP_READ_MAX_DROP) {
        rd->drop_idx[rd->nb_drop] = i;
        rd->drop_size[rd->nb_drop++] = xlen;
    }
    h += SN_HDR_LEN;
    s->vm_state_size = s->vm_state_size32;
    s->disk_size = q->hdr.size;
    s->icount = UINT64_MAX;
    if (s->extra_size >= SNX_VM_STATE + 8)
        s->vm_state_size = be64_load(h + SNX_VM_STATE);
    if (s->extra_size >= SNX_DISK_SIZE + 8)
        s->disk_size = be64_load(h + SNX_DISK_SIZE);
    if (s->extra_size >= SNX_ICOUNT + 8)
        s->icount = be64_load(h + SNX_ICOUNT);
    if (s->extra_size) {
        s->extra = malloc(s->extra_size);
        if (!s->extra)
            return qimg_err(ENOMEM, "Out of memory");
        memcpy(s->extra, h, s->extra_size);
    }
    h += xlen;
    s->id = dup_bytes(h, id_len);
    s->name = dup_bytes(h + id_len, name_len);
    if (!s->id || !s->name)
        return qimg_err(ENOMEM, "Out of memory");
    *pos = p + SN_HDR_LEN + xlen + id_len + name_len;
    return 0;
}

/* Read more of the table: double the buffer, bounded by the file. */
static int grow_buf(qimg_image *img, uint64_t off, uint64_t avail,
                    uint8_t **buf, uint64_t *len)
{
    uint64_t n = MIN(avail, *len * 2);
    uint8_t *nb = realloc(*buf, n ? n : 1);

    if (!nb)
        return qimg_err(ENOMEM, "Out of memory");
    *buf = nb;
    *len = n;
    return file_pread(img, nb, n, off);
}

int snap_table_read(qimg_image *img, uint64_t off, uint32_t n,
                    struct snap_read *rd, struct snap **out, uint32_t *nb_out,
                    uint64_t *size)
{
    struct qcow2 *q = img->q;
    uint64_t avail, len, pos = 0;
    struct snap *snaps = NULL;
    uint8_t *buf = NULL;
    uint32_t i = 0;
    int ret = 0;

    *out = NULL;
    *nb_out = 0;
    *size = 0;
    if (n == 0)
        return 0;
    /* Read as QEMU reads it, zeros past the end of the file (writes are
     * refused then: metaset_build); a repair refuses such a table. */
    bool lenient = !rd || !rd->repair;

    if (off >= q->file_size && !lenient)
        return qimg_err(EINVAL, "Snapshot table exceeds the end of the file");
    avail = lenient ? QCOW_MAX_SNAPSHOTS_SIZE + 65536
                    : MIN(q->file_size - off, QCOW_MAX_SNAPSHOTS_SIZE + 65536);
    snaps = calloc(n, sizeof *snaps);
    len = MIN(avail, MAX(65536, (uint64_t)n * 72));
    buf = malloc(len);
    if (!snaps || !buf) {
        ret = qimg_err(ENOMEM, "Out of memory");
        goto out;
    }
    ret = file_pread(img, buf, len, off);
    while (ret == 0 && i < n) {
        ret = decode_entry(q, buf, len, &pos, i, &snaps[i], rd);
        if (ret == -EAGAIN) {
            snap_free(&snaps[i]);
            ret = len == avail ? qimg_err(EINVAL, "Snapshot table exceeds "
                                                  "the end of the file")
                               : grow_buf(img, off, avail, &buf, &len);
            continue;
        }
        if (ret < 0)
            break;
        i++;
        if (pos > QCOW_MAX_SNAPSHOTS_SIZE) {
            if (!rd || !rd->repair) {
                ret = qimg_err(EFBIG, "Snapshot table is too big");
                break;
            }
            rd->overhang = n - i + 1;
            snap_free(&snaps[--i]);
            break;
        }
    }
out:
    free(buf);
    if (ret < 0) {
        /* Entry i may be half decoded; the array was zeroed. */
        for (uint32_t j = 0; snaps && j <= i && j < n; j++)
            snap_free(&snaps[j]);
        free(snaps);
        return ret;
    }
    *out = snaps;
    *nb_out = i;
    *size = pos;
    return 0;
}

int snaptable_init(qimg_image *img, bool load)
{
    struct qcow2 *q = img->q;

    q->sn = calloc(1, sizeof *q->sn);
    if (!q->sn)
        return qimg_err(ENOMEM, "Out of memory");
    if (!load)
        return 0;
    return snap_table_read(img, q->hdr.snapshots_offset, q->hdr.nb_snapshots,
                           NULL, &q->sn->snaps, &q->sn->nb_snaps,
                           &q->sn->snap_table_size);
}

static void free_snaps(struct snap *snaps, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        snap_free(&snaps[i]);
    free(snaps);
}

void snaptable_free(qimg_image *img)
{
    struct snap_state *sn = img->q->sn;

    if (!sn)
        return;
    free_snaps(sn->snaps, sn->nb_snaps);
    free(sn);
    img->q->sn = NULL;
}

void snaptable_adopt(qimg_image *img, struct snap *snaps, uint32_t n,
                     uint64_t size)
{
    struct snap_state *sn = img->q->sn;

    free_snaps(sn->snaps, sn->nb_snaps);
    sn->snaps = snaps;
    sn->nb_snaps = n;
    sn->snap_table_size = size;
}

uint64_t snap_table_size(const struct qcow2 *q, const struct snap *snaps,
                         uint32_t n)
{
    uint64_t pos = 0;

    (void)q;
    for (uint32_t i = 0; i < n; i++) {
        pos = ALIGN_UP(pos, 8);
        pos += SN_HDR_LEN + MAX(snaps[i].extra_size, SNX_KNOWN_LEN) +
               strlen(snaps[i].id) + strlen(snaps[i].name);
    }
    return pos;
}

int snap_table_encode(const struct qcow2 *q, const struct snap *snaps,
                      uint32_t n, uint8_t **out, uint64_t *len)
{
    uint64_t size = snap_table_size(q, snaps, n), pos = 0;
    uint8_t *buf = calloc(1, size ? size : 1);

    if (!buf)
        return qimg_err(ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < n; i++) {
        const struct snap *s = &snaps[i];
        uint32_t xlen = MAX(s->extra_size, SNX_KNOWN_LEN);
        size_t id_len = strlen(s->id), name_len = strlen(s->name);
        uint8_t *h;

        pos = ALIGN_UP(pos, 8);
        h = buf + pos;
        be64_store(h + SN_L1_OFF, s->l1_off);
        be32_store(h + SN_L1_SIZE, s->l1_size);
        be16_store(h + SN_ID_LEN, (uint16_t)id_len);
        be16_store(h + SN_NAME_LEN, (uint16_t)name_len);
        be32_store(h + SN_DATE_SEC, s->date_sec);
        be32_store(h + SN_DATE_NSEC, s->date_nsec);
        be64_store(h + SN_VM_CLOCK, s->vm_clock_nsec);
        be32_store(h + SN_VM_STATE32, s->vm_state_size > UINT32_MAX
                                          ? 0
                                          : (uint32_t)s->vm_state_size);
        be32_store(h + SN_EXTRA_LEN, xlen);
        h += SN_HDR_LEN;
        if (s->extra_size)
            memcpy(h, s->extra, s->extra_size);
        be64_store(h + SNX_VM_STATE, s->vm_state_size);
        be64_store(h + SNX_DISK_SIZE, s->disk_size);
        be64_store(h + SNX_ICOUNT, s->icount);
        h += xlen;
        memcpy(h, s->id, id_len);
        memcpy(h + id_len, s->name, name_len);
        pos += SN_HDR_LEN + xlen + id_len + name_len;
    }
    *out = buf;
    *len = size;
    return 0;
}

int snap_find_by_id(const struct qcow2 *q, const char *id)
{
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++)
        if (!strcmp(q->sn->snaps[i].id, id))
            return (int)i;
    return -1;
}

int snap_find_by_name(const struct qcow2 *q, const char *name)
{
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++)
        if (!strcmp(q->sn->snaps[i].name, name))
            return (int)i;
    return -1;
}

/* Next option of a QemuOpts-style list: up to a single ',' (",," stands
 * for a comma). The unescaped option is written to buf. */
static const char *next_opt(const char *p, char *buf, size_t n)
{
    size_t k = 0;

    while (*p) {
        if (p[0] == ',' && p[1] != ',')
            break;
        if (p[0] == ',')
            p++;
        if (k + 1 < n)
            buf[k++] = *p;
        p++;
    }
    buf[k] = '\0';
    return *p ? p + 1 : NULL;
}

/* "snapshot.id=X", "snapshot.name=Y", both comma-separated (",," escapes
 * a comma), or a plain ID or name (ID first), as qemu-img convert -l and
 * qemu-nbd -l take them. */
int snap_lookup(const struct qcow2 *q, const char *spec)
{
    char id[1024], name[1024], opt[1024];
    bool has_id = false, has_name = false;
    const char *p = spec;
    int idx;

    if (strncmp(spec, "snapshot.id=", 12) &&
        strncmp(spec, "snapshot.name=", 14)) {
        idx = snap_find_by_id(q, spec);
        return idx >= 0 ? idx : snap_find_by_name(q, spec);
    }
    while (p) {
        p = next_opt(p, opt, sizeof opt);
        if (!strncmp(opt, "snapshot.id=", 12)) {
            snprintf(id, sizeof id, "%s", opt + 12);
            has_id = true;
        } else if (!strncmp(opt, "snapshot.name=", 14)) {
            snprintf(name, sizeof name, "%s", opt + 14);
            has_name = true;
        } else {
            return -1;
        }
    }
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++)
        if ((!has_id || !strcmp(q->sn->snaps[i].id, id)) &&
            (!has_name || !strcmp(q->sn->snaps[i].name, name)))
            return (int)i;
    return -1;
}

/* Check a snapshot's L1 table location before anything reads it. */
int snap_check_l1(qimg_image *img, const struct snap *s)
{
    struct qcow2 *q = img->q;

    if ((uint64_t)s->l1_size * 8 > QCOW_MAX_L1_SIZE)
        return qimg_err(EFBIG, "Snapshot L1 table too large");
    /* Checked: l1_off comes from the file and may be near 2^64. */
    if (!IS_ALIGNED(s->l1_off, q->cluster_size) ||
        s->l1_off > q->file_size ||
        (uint64_t)s->l1_size * 8 > q->file_size - s->l1_off ||
        (s->l1_size && s->l1_off == 0))
        return qimg_err(EINVAL, "Snapshot L1 table offset invalid");
    return 0;
}
