/*
 * header.h - qcow2 header and header extensions (qcow2-format.md §1, §2).
 *
 * Byte offsets live here and nowhere else. header_decode() turns cluster 0
 * into a struct qcow2_header, header_validate() checks it against the
 * limits QEMU enforces, header_encode() writes cluster 0 back in QEMU's
 * layout with unknown fields and extensions preserved byte for byte.
 */
#ifndef QIMG_HEADER_H
#define QIMG_HEADER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* qcow2-format.md §1.1, §1.2; all fields big-endian. */
enum {
    HDR_MAGIC = 0,
    HDR_VERSION = 4,
    HDR_BACKING_OFF = 8,
    HDR_BACKING_SIZE = 16,
    HDR_CLUSTER_BITS = 20,
    HDR_SIZE = 24,
    HDR_CRYPT = 32,
    HDR_L1_SIZE = 36,
    HDR_L1_OFF = 40,
    HDR_RT_OFF = 48,
    HDR_RT_CLUSTERS = 56,
    HDR_NB_SNAPSHOTS = 60,
    HDR_SNAPSHOTS_OFF = 64,
    HDR_V2_LEN = 72,
    HDR_INCOMPAT = 72,
    HDR_COMPAT = 80,
    HDR_AUTOCLEAR = 88,
    HDR_REFCOUNT_ORDER = 96,
    HDR_HEADER_LEN = 100,
    HDR_COMPRESSION = 104,
    HDR_V3_MIN_LEN = 104,
    HDR_V3_LEN = 112,
};

#define QCOW2_MAGIC 0x514649FBu

/* §1.3 feature bits */
#define INCOMPAT_DIRTY (1ull << 0)
#define INCOMPAT_CORRUPT (1ull << 1)
#define INCOMPAT_DATA_FILE (1ull << 2)
#define INCOMPAT_COMPRESSION (1ull << 3)
#define INCOMPAT_EXTL2 (1ull << 4)
#define INCOMPAT_MASK 0x1full
#define COMPAT_LAZY_REFCOUNTS (1ull << 0)
#define COMPAT_MASK 0x1ull
#define AUTOCLEAR_BITMAPS (1ull << 0)
#define AUTOCLEAR_DATA_FILE_RAW (1ull << 1)
#define AUTOCLEAR_MASK 0x3ull

/* §2 extension types */
#define EXT_END 0x00000000u
#define EXT_BACKING_FMT 0xE2792ACAu
#define EXT_FEATURE_TABLE 0x6803F857u
#define EXT_BITMAPS 0x23852875u
#define EXT_CRYPTO 0x0537BE77u
#define EXT_DATA_FILE 0x44415441u

/* Limits QEMU enforces on the structures the header points at. */
#define QCOW_MAX_SNAPSHOTS 65536
#define QCOW_MAX_SNAPSHOT_EXTRA 1024
#define QCOW_MAX_SNAPSHOTS_SIZE (1024ull * QCOW_MAX_SNAPSHOTS)
#define QCOW_MAX_L1_SIZE (32ull * 1024 * 1024)
#define MAX_BACKING_NAME 1023
#define MAX_BACKING_FMT 15

struct hdr_ext {
    uint32_t type;
    uint32_t len;
    uint8_t *data;
};

struct feature_name {
    uint8_t kind, bit;
    char name[47];
};

struct qcow2_header {
    uint32_t version;
    uint64_t backing_file_offset;
    uint32_t backing_file_size;
    uint32_t cluster_bits;
    uint64_t size;
    uint32_t crypt_method;
    uint32_t l1_size;
    uint64_t l1_table_offset;
    uint64_t refcount_table_offset;
    uint32_t refcount_table_clusters;
    uint32_t nb_snapshots;
    uint64_t snapshots_offset;
    uint64_t incompatible, compatible, autoclear;
    uint32_t refcount_order;
    uint32_t header_length;
    uint8_t compression_type;
    /* Bytes 112..header_length: unknown fields, kept verbatim. */
    uint8_t *tail;
    size_t tail_len;

    char *backing_file; /* NULL if none */
    char *backing_fmt;  /* NULL if no extension */
    char *data_file;    /* NULL if no extension */
    bool has_bitmaps_ext;
    uint32_t nb_bitmaps;
    uint64_t bitmap_dir_size, bitmap_dir_offset;
    bool has_crypto_ext;
    uint64_t crypto_offset, crypto_length;
    struct feature_name *features; /* from the image's feature table */
    size_t nb_features;
    struct hdr_ext *unknown; /* unknown extensions, in file order */
    size_t nb_unknown;
};

/* Decode the fixed fields only, from at least HDR_V3_LEN bytes of buf
 * (zero-padded by the caller if the file is shorter). */
int header_decode_fixed(struct qcow2_header *h, const uint8_t *buf,
                        size_t len);
/* How many bytes of cluster 0 (cs bytes) header_decode_exts needs, judged
 * from its first n: n if they hold the extensions up to their end marker
 * and the backing file name, else cs. */
size_t header_exts_len(const struct qcow2_header *h, const uint8_t *buf,
                       size_t n, size_t cs);
/* Decode extensions and the backing name from cluster 0 (buf, cs bytes). */
int header_decode_exts(struct qcow2_header *h, const uint8_t *buf, size_t cs);
/* Where the header and its extensions end in cluster 0 (buf, cs bytes);
 * the backing file name (backing_file_offset) may lie further on. */
size_t header_exts_end(const struct qcow2_header *h, const uint8_t *buf,
                       size_t cs);
/* Encode cluster 0 (cs bytes) in QEMU's layout. -EINVAL if it won't fit. */
int header_encode(const struct qcow2_header *h, uint8_t *buf, size_t cs);
/* The same with a choice: the feature-name table or not, the backing
 * file name at name_off (0: right after the extensions), and where the
 * extensions end (*ext_end, if not NULL). */
int header_encode_at(const struct qcow2_header *h, uint8_t *buf, size_t cs,
                     bool feature_table, size_t name_off, size_t *ext_end);
void header_free(struct qcow2_header *h);
/* Name of an incompatible feature bit, from the image's table or ours. */
const char *header_feature_name(const struct qcow2_header *h, int kind,
                                int bit);

#endif
