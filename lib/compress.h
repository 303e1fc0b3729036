/*
 * compress.h - raw deflate and zstd streams of compressed clusters
 * (compress.c).
 */
#ifndef QIMG_COMPRESS_H
#define QIMG_COMPRESS_H

#include <stddef.h>
#include <stdint.h>

/* Decompress exactly dst_len bytes from src; -EIO if that is impossible. */
int compress_decode(int type, uint8_t *dst, size_t dst_len,
                    const uint8_t *src, size_t src_len);
/* Compress into dst (dst_cap bytes); returns the length, or -ENOSPC if it
 * does not fit. */
int64_t compress_encode(int type, uint8_t *dst, size_t dst_cap,
                        const uint8_t *src, size_t src_len);

#endif
