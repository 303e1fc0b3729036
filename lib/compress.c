/*
 * compress.c - compressed cluster streams: raw deflate and zstd.
 *
 * qcow2-format.md §10. Streams are decoded until exactly one cluster came
 * out; trailing bytes (the start of the next stream) are ignored. This file
 * only converts buffers; guest.c places streams in the image.
 */
#include "compress.h"

#include "error.h"

#include <errno.h>
#include <zlib.h>
#include <zstd.h>

static int inflate_raw(uint8_t *dst, size_t dst_len, const uint8_t *src,
                       size_t src_len)
{
    z_stream z = {0};
    int ret;

    if (inflateInit2(&z, -12) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)src_len;
    z.next_out = dst;
    z.avail_out = (uInt)dst_len;
    ret = inflate(&z, Z_FINISH);
    inflateEnd(&z);
    if ((ret == Z_STREAM_END || ret == Z_BUF_ERROR) && z.avail_out == 0)
        return 0;
    return -EIO;
}

static int zstd_decode(uint8_t *dst, size_t dst_len, const uint8_t *src,
                       size_t src_len)
{
    ZSTD_DCtx *d = ZSTD_createDCtx();
    ZSTD_inBuffer in = {src, src_len, 0};
    ZSTD_outBuffer out = {dst, dst_len, 0};
    size_t r = 1;

    if (!d)
        return -ENOMEM;
    /* Stop once the frame is complete (r == 0), an error or no progress. */
    for (;;) {
        size_t in_pos = in.pos, out_pos = out.pos;
        r = ZSTD_decompressStream(d, &out, &in);
        if (ZSTD_isError(r) || r == 0)
            break;
        if (in.pos == in_pos && out.pos == out_pos)
            break;
    }
    ZSTD_freeDCtx(d);
    if (ZSTD_isError(r) || out.pos != dst_len || r != 0)
        return -EIO;
    return 0;
}

int compress_decode(int type, uint8_t *dst, size_t dst_len,
                    const uint8_t *src, size_t src_len)
{
    int ret = type == 1 ? zstd_decode(dst, dst_len, src, src_len)
                        : inflate_raw(dst, dst_len, src, src_len);

    if (ret == -ENOMEM)
        return qimg_err(ENOMEM, "Out of memory");
    if (ret < 0)
        return qimg_err(EIO, "Could not decompress cluster");
    return 0;
}

static int64_t deflate_raw(uint8_t *dst, size_t cap, const uint8_t *src,
                           size_t len)
{
    z_stream z = {0};
    int ret;

    if (deflateInit2(&z, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -12, 9,
                     Z_DEFAULT_STRATEGY) != Z_OK)
        return -ENOMEM;
    z.next_in = (Bytef *)src;
    z.avail_in = (uInt)len;
    z.next_out = dst;
    z.avail_out = (uInt)cap;
    ret = deflate(&z, Z_FINISH);
    deflateEnd(&z);
    if (ret != Z_STREAM_END)
        return -ENOSPC;
    return (int64_t)(cap - z.avail_out);
}

static int64_t zstd_encode(uint8_t *dst, size_t cap, const uint8_t *src,
                           size_t len)
{
    ZSTD_CCtx *c = ZSTD_createCCtx();
    size_t r;

    if (!c)
        return -ENOMEM;
    /* One frame with the content size and no checksum, as QEMU writes. */
    ZSTD_CCtx_setParameter(c, ZSTD_c_checksumFlag, 0);
    ZSTD_CCtx_setParameter(c, ZSTD_c_contentSizeFlag, 1);
    r = ZSTD_compress2(c, dst, cap, src, len);
    ZSTD_freeCCtx(c);
    if (ZSTD_isError(r))
        return -ENOSPC;
    return (int64_t)r;
}

int64_t compress_encode(int type, uint8_t *dst, size_t dst_cap,
                        const uint8_t *src, size_t src_len)
{
    int64_t r = type == 1 ? zstd_encode(dst, dst_cap, src, src_len)
                          : deflate_raw(dst, dst_cap, src, src_len);

    if (r == -ENOMEM)
        return qimg_err(ENOMEM, "Out of memory");
    return r;
}
