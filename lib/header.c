/*
 * header.c - qcow2 header and header extensions: decode, encode.
 *
 * qcow2-format.md §1 (fixed fields, feature bits) and §2 (extensions,
 * backing file name). Validation against the file and QEMU's limits is in
 * qcow2.c, which knows the file size; this file only turns bytes into
 * fields and back. Unknown header fields and unknown extensions are kept
 * verbatim so a rewrite never loses them.
 */
#include "header.h"

#include "endian.h"
#include "error.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* Feature table entries QEMU writes, in its order (§1.3). */
static const struct feature_name qemu_features[] = {
    {0, 0, "dirty bit"},
    {0, 1, "corrupt bit"},
    {0, 2, "external data file"},
    {0, 3, "compression type"},
    {0, 4, "extended L2 entries"},
    {1, 0, "lazy refcounts"},
    {2, 0, "bitmaps"},
    {2, 1, "raw external data"},
};

int header_decode_fixed(struct qcow2_header *h, const uint8_t *buf,
                        size_t len)
{
    memset(h, 0, sizeof *h);
    if (len < HDR_V3_LEN)
        return qimg_err(EINVAL, "qcow2 header buffer too short");
    h->version = be32_load(buf + HDR_VERSION);
    h->backing_file_offset = be64_load(buf + HDR_BACKING_OFF);
    h->backing_file_size = be32_load(buf + HDR_BACKING_SIZE);
    h->cluster_bits = be32_load(buf + HDR_CLUSTER_BITS);
    h->size = be64_load(buf + HDR_SIZE);
    h->crypt_method = be32_load(buf + HDR_CRYPT);
    h->l1_size = be32_load(buf + HDR_L1_SIZE);
    h->l1_table_offset = be64_load(buf + HDR_L1_OFF);
    h->refcount_table_offset = be64_load(buf + HDR_RT_OFF);
    h->refcount_table_clusters = be32_load(buf + HDR_RT_CLUSTERS);
    h->nb_snapshots = be32_load(buf + HDR_NB_SNAPSHOTS);
    h->snapshots_offset = be64_load(buf + HDR_SNAPSHOTS_OFF);
    if (h->version < 3) {
        h->refcount_order = 4;
        h->header_length = HDR_V2_LEN;
        return 0;
    }
    h->incompatible = be64_load(buf + HDR_INCOMPAT);
    h->compatible = be64_load(buf + HDR_COMPAT);
    h->autoclear = be64_load(buf + HDR_AUTOCLEAR);
    h->refcount_order = be32_load(buf + HDR_REFCOUNT_ORDER);
    h->header_length = be32_load(buf + HDR_HEADER_LEN);
    if (h->header_length > HDR_V3_MIN_LEN)
        h->compression_type = buf[HDR_COMPRESSION];
    return 0;
}

static int dup_string(char **out, const uint8_t *p, size_t len)
{
    char *s = malloc(len + 1);

    if (!s)
        return qimg_err(ENOMEM, "Out of memory");
    memcpy(s, p, len);
    s[len] = '\0';
    *out = s;
    return 0;
}

static int decode_feature_table(struct qcow2_header *h, const uint8_t *p,
                                uint32_t len)
{
    size_t n = len / 48;

    free(h->features);
    h->features = calloc(n ? n : 1, sizeof *h->features);
    if (!h->features)
        return qimg_err(ENOMEM, "Out of memory");
    for (size_t i = 0; i < n; i++) {
        h->features[i].kind = p[i * 48];
        h->features[i].bit = p[i * 48 + 1];
        memcpy(h->features[i].name, p + i * 48 + 2, 46);
        h->features[i].name[46] = '\0';
    }
    h->nb_features = n;
    return 0;
}

static int decode_bitmaps_ext(struct qcow2_header *h, const uint8_t *p,
                              uint32_t len)
{
    if (len != 24)
        return qimg_err(EINVAL, "bitmaps_ext: Invalid extension length");
    h->has_bitmaps_ext = true;
    h->nb_bitmaps = be32_load(p);
    if (be32_load(p + 4) != 0)
        return qimg_err(EINVAL, "bitmaps_ext: reserved32 is not zero");
    h->bitmap_dir_size = be64_load(p + 8);
    h->bitmap_dir_offset = be64_load(p + 16);
    return 0;
}

static int keep_unknown(struct qcow2_header *h, uint32_t type,
                        const uint8_t *p, uint32_t len)
{
    struct hdr_ext *e;

    e = realloc(h->unknown, (h->nb_unknown + 1) * sizeof *e);
    if (!e)
        return qimg_err(ENOMEM, "Out of memory");
    h->unknown = e;
    e = &h->unknown[h->nb_unknown];
    e->type = type;
    e->len = len;
    e->data = malloc(len ? len : 1);
    if (!e->data)
        return qimg_err(ENOMEM, "Out of memory");
    memcpy(e->data, p, len);
    h->nb_unknown++;
    return 0;
}

static int decode_one_ext(struct qcow2_header *h, uint32_t type,
                          const uint8_t *p, uint32_t len)
{
    switch (type) {
    case EXT_BACKING_FMT:
        if (len > MAX_BACKING_FMT)
            return qimg_err(EINVAL,
                            "ERROR: ext_backing_format: len=%u too large "
                            "(>=%u)",
                            len, MAX_BACKING_FMT + 1);
        free(h->backing_fmt);
        return dup_string(&h->backing_fmt, p, len);
    case EXT_FEATURE_TABLE:
        return decode_feature_table(h, p, len);
    case EXT_BITMAPS:
        return decode_bitmaps_ext(h, p, len);
    case EXT_CRYPTO:
        if (len != 16)
            return qimg_err(EINVAL,
                            "CRYPTO header extension size %u, but expected "
                            "size 16",
                            len);
        h->has_crypto_ext = true;
        h->crypto_offset = be64_load(p);
        h->crypto_length = be64_load(p + 8);
        return 0;
    case EXT_DATA_FILE:
        free(h->data_file);
        return dup_string(&h->data_file, p, len);
    default:
        return keep_unknown(h, type, p, len);
    }
}

/* Where the extensions of cluster 0 (its first n bytes in buf) end: after
 * the end marker, or at the backing file name (or the cluster's end) if
 * there is none; UINT64_MAX if the n bytes do not reach that far. */
static uint64_t exts_end(const struct qcow2_header *h, const uint8_t *buf,
                         size_t n, size_t cs)
{
    uint64_t off = h->header_length;
    uint64_t end = h->backing_file_offset ? h->backing_file_offset : cs;

    while (off < end) {
        if (off + 8 > n)
            return UINT64_MAX;
        off += 8;
        if (be32_load(buf + off - 8) == EXT_END)
            break;
        off += ALIGN_UP((uint64_t)be32_load(buf + off - 4), 8);
    }
    return off;
}

size_t header_exts_len(const struct qcow2_header *h, const uint8_t *buf,
                       size_t n, size_t cs)
{
    uint64_t need = h->backing_file_offset
                        ? h->backing_file_offset + h->backing_file_size
                        : 0;

    need = MAX(need, exts_end(h, buf, n, cs));
    return need <= n ? n : cs;
}

size_t header_exts_end(const struct qcow2_header *h, const uint8_t *buf,
                       size_t cs)
{
    return (size_t)MIN(exts_end(h, buf, cs, cs), (uint64_t)cs);
}

int header_decode_exts(struct qcow2_header *h, const uint8_t *buf, size_t cs)
{
    uint64_t off = h->header_length;
    uint64_t end = h->backing_file_offset ? h->backing_file_offset : cs;
    int ret;

    if (h->version >= 3 && h->header_length > HDR_V3_LEN) {
        h->tail_len = h->header_length - HDR_V3_LEN;
        h->tail = malloc(h->tail_len);
        if (!h->tail)
            return qimg_err(ENOMEM, "Out of memory");
        memcpy(h->tail, buf + HDR_V3_LEN, h->tail_len);
    }
    while (off < end) {
        uint32_t type, len;

        if (off + 8 > end)
            return qimg_err(EINVAL, "Header extension too large");
        type = be32_load(buf + off);
        len = be32_load(buf + off + 4);
        off += 8;
        /* Checked before the end marker's type, as QEMU does. */
        if (len > end - off)
            return qimg_err(EINVAL, "Header extension too large");
        if (type == EXT_END)
            break;
        ret = decode_one_ext(h, type, buf + off, len);
        if (ret < 0)
            return ret;
        off += ALIGN_UP((uint64_t)len, 8);
    }
    if (h->backing_file_offset) {
        if (h->backing_file_size > MAX_BACKING_NAME ||
            h->backing_file_offset + h->backing_file_size > cs)
            return qimg_err(EINVAL, "Backing file name too long");
        ret = dup_string(&h->backing_file, buf + h->backing_file_offset,
                         h->backing_file_size);
        if (ret < 0)
            return ret;
    }
    return 0;
}

/* Append one extension at *off; -EINVAL if it does not fit below cs. */
static int put_ext(uint8_t *buf, size_t cs, size_t *off, uint32_t type,
                   const void *data, uint32_t len)
{
    size_t need = 8 + ALIGN_UP((size_t)len, 8);

    if (*off + need > cs)
        return qimg_err(EINVAL, "Header extensions do not fit in cluster 0");
    be32_store(buf + *off, type);
    be32_store(buf + *off + 4, len);
    if (len)
        memcpy(buf + *off + 8, data, len);
    *off += need;
    return 0;
}

static int put_feature_table(uint8_t *buf, size_t cs, size_t *off)
{
    uint8_t t[ARRAY_SIZE(qemu_features) * 48];

    memset(t, 0, sizeof t);
    for (size_t i = 0; i < ARRAY_SIZE(qemu_features); i++) {
        t[i * 48] = qemu_features[i].kind;
        t[i * 48 + 1] = qemu_features[i].bit;
        memcpy(t + i * 48 + 2, qemu_features[i].name,
               strlen(qemu_features[i].name));
    }
    return put_ext(buf, cs, off, EXT_FEATURE_TABLE, t, sizeof t);
}

static void encode_fixed(const struct qcow2_header *h, uint8_t *buf)
{
    be32_store(buf + HDR_MAGIC, QCOW2_MAGIC);
    be32_store(buf + HDR_VERSION, h->version);
    be32_store(buf + HDR_CLUSTER_BITS, h->cluster_bits);
    be64_store(buf + HDR_SIZE, h->size);
    be32_store(buf + HDR_CRYPT, h->crypt_method);
    be32_store(buf + HDR_L1_SIZE, h->l1_size);
    be64_store(buf + HDR_L1_OFF, h->l1_table_offset);
    be64_store(buf + HDR_RT_OFF, h->refcount_table_offset);
    be32_store(buf + HDR_RT_CLUSTERS, h->refcount_table_clusters);
    be32_store(buf + HDR_NB_SNAPSHOTS, h->nb_snapshots);
    be64_store(buf + HDR_SNAPSHOTS_OFF, h->snapshots_offset);
    if (h->version < 3)
        return;
    be64_store(buf + HDR_INCOMPAT, h->incompatible);
    be64_store(buf + HDR_COMPAT, h->compatible);
    be64_store(buf + HDR_AUTOCLEAR, h->autoclear);
    be32_store(buf + HDR_REFCOUNT_ORDER, h->refcount_order);
    be32_store(buf + HDR_HEADER_LEN, (uint32_t)(HDR_V3_LEN + h->tail_len));
    buf[HDR_COMPRESSION] = h->compression_type;
    if (h->tail_len)
        memcpy(buf + HDR_V3_LEN, h->tail, h->tail_len);
}

int header_encode(const struct qcow2_header *h, uint8_t *buf, size_t cs)
{
    return header_encode_at(h, buf, cs, h->version >= 3 && cs > 4096, 0,
                            NULL);
}

int header_encode_at(const struct qcow2_header *h, uint8_t *buf, size_t cs,
                     bool feature_table, size_t name_off, size_t *ext_end)
{
    size_t off = h->version < 3 ? HDR_V2_LEN : HDR_V3_LEN + h->tail_len;
    uint8_t tmp[24];
    int ret = 0;

    if (off > cs)
        return qimg_err(EINVAL, "Header does not fit in cluster 0");
    memset(buf, 0, cs);
    encode_fixed(h, buf);
    if (h->backing_fmt)
        ret = put_ext(buf, cs, &off, EXT_BACKING_FMT, h->backing_fmt,
                      (uint32_t)strlen(h->backing_fmt));
    if (!ret && h->data_file)
        ret = put_ext(buf, cs, &off, EXT_DATA_FILE, h->data_file,
                      (uint32_t)strlen(h->data_file));
    if (!ret && h->has_crypto_ext) {
        be64_store(tmp, h->crypto_offset);
        be64_store(tmp + 8, h->crypto_length);
        ret = put_ext(buf, cs, &off, EXT_CRYPTO, tmp, 16);
    }
    if (!ret && feature_table)
        ret = put_feature_table(buf, cs, &off);
    if (!ret && h->has_bitmaps_ext) {
        be32_store(tmp, h->nb_bitmaps);
        be32_store(tmp + 4, 0);
        be64_store(tmp + 8, h->bitmap_dir_size);
        be64_store(tmp + 16, h->bitmap_dir_offset);
        ret = put_ext(buf, cs, &off, EXT_BITMAPS, tmp, 24);
    }
    for (size_t i = 0; !ret && i < h->nb_unknown; i++)
        ret = put_ext(buf, cs, &off, h->unknown[i].type, h->unknown[i].data,
                      h->unknown[i].len);
    if (!ret)
        ret = put_ext(buf, cs, &off, EXT_END, NULL, 0);
    if (ret < 0)
        return ret;
    if (ext_end)
        *ext_end = off;
    if (h->backing_file) {
        size_t n = strlen(h->backing_file);
        off = name_off ? name_off : off;
        if (n > MAX_BACKING_NAME || off + n > cs ||
            (ext_end && off < *ext_end))
            return qimg_err(EINVAL, "Backing file name too long");
        memcpy(buf + off, h->backing_file, n);
        be64_store(buf + HDR_BACKING_OFF, off);
        be32_store(buf + HDR_BACKING_SIZE, (uint32_t)n);
    }
    return 0;
}

void header_free(struct qcow2_header *h)
{
    if (!h)
        return;
    free(h->tail);
    free(h->backing_file);
    free(h->backing_fmt);
    free(h->data_file);
    free(h->features);
    for (size_t i = 0; i < h->nb_unknown; i++)
        free(h->unknown[i].data);
    free(h->unknown);
    memset(h, 0, sizeof *h);
}

const char *header_feature_name(const struct qcow2_header *h, int kind,
                                int bit)
{
    for (size_t i = 0; i < h->nb_features; i++)
        if (h->features[i].kind == kind && h->features[i].bit == bit)
            return h->features[i].name;
    return NULL;
}
