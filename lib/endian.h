/*
 * endian.h - big-endian loads and stores for on-disk fields.
 *
 * qcow2 stores every multi-byte integer big-endian (qcow2-format.md §0).
 * Nothing outside the codecs sees disk byte order.
 */
#ifndef QIMG_ENDIAN_H
#define QIMG_ENDIAN_H

#include <stdint.h>
#include <string.h>

#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
#define be16toh(x) (x)
#define be32toh(x) (x)
#define be64toh(x) (x)
#else
#define be16toh(x) __builtin_bswap16(x)
#define be32toh(x) __builtin_bswap32(x)
#define be64toh(x) __builtin_bswap64(x)
#endif
#define htobe16(x) be16toh(x)
#define htobe32(x) be32toh(x)
#define htobe64(x) be64toh(x)

static inline uint16_t be16_load(const uint8_t *p)
{
    uint16_t v;
    memcpy(&v, p, sizeof v);
    return be16toh(v);
}

static inline uint32_t be32_load(const uint8_t *p)
{
    uint32_t v;
    memcpy(&v, p, sizeof v);
    return be32toh(v);
}

static inline uint64_t be64_load(const uint8_t *p)
{
    uint64_t v;
    memcpy(&v, p, sizeof v);
    return be64toh(v);
}

static inline void be16_store(uint8_t *p, uint16_t v)
{
    v = htobe16(v);
    memcpy(p, &v, sizeof v);
}

static inline void be32_store(uint8_t *p, uint32_t v)
{
    v = htobe32(v);
    memcpy(p, &v, sizeof v);
}

static inline void be64_store(uint8_t *p, uint64_t v)
{
    v = htobe64(v);
    memcpy(p, &v, sizeof v);
}

#endif
