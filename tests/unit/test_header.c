/*
 * test_header.c - header.c: decode/encode of cluster 0 (qcow2-format.md §1,
 * §2), byte identity with a header QEMU wrote.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

/* qcow2-format.md §1.4: 512-byte-cluster overlay made by qemu-img 7.2
 * (-o cluster_size=512 -b base.qcow2 -F qcow2, 4 MiB). */
static const uint8_t qemu_overlay_hdr[] = {
    0x51, 0x46, 0x49, 0xfb, 0x00, 0x00, 0x00, 0x03, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x88, 0x00, 0x00, 0x00, 0x0a, 0x00, 0x00, 0x00, 0x09,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x80, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x06, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x04, 0x00, 0x00, 0x00, 0x70, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xe2, 0x79, 0x2a, 0xca, 0x00, 0x00, 0x00, 0x05,
    0x71, 0x63, 0x6f, 0x77, 0x32, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x62, 0x61, 0x73, 0x65, 0x2e, 0x71, 0x63, 0x6f,
    0x77, 0x32,
};

static void decode_cluster0(struct qcow2_header *h, const uint8_t *c0,
                            size_t cs)
{
    assert_int_equal(header_decode_fixed(h, c0, cs), 0);
    assert_int_equal(header_decode_exts(h, c0, cs), 0);
}

static void test_header_decodes_qemu_overlay(void **state)
{
    uint8_t c0[512] = {0};
    struct qcow2_header h;

    (void)state;
    memcpy(c0, qemu_overlay_hdr, sizeof qemu_overlay_hdr);
    decode_cluster0(&h, c0, sizeof c0);
    assert_int_equal(h.version, 3);
    assert_int_equal(h.cluster_bits, 9);
    assert_int_equal(h.size, 4u << 20);
    assert_int_equal(h.l1_size, 128);
    assert_int_equal(h.l1_table_offset, 0x600);
    assert_int_equal(h.refcount_table_offset, 0x200);
    assert_int_equal(h.refcount_order, 4);
    assert_int_equal(h.header_length, 112);
    assert_string_equal(h.backing_file, "base.qcow2");
    assert_string_equal(h.backing_fmt, "qcow2");
    header_free(&h);
}

static void test_header_encode_is_byte_identical_to_qemu(void **state)
{
    uint8_t c0[512] = {0}, out[512];
    struct qcow2_header h;

    (void)state;
    memcpy(c0, qemu_overlay_hdr, sizeof qemu_overlay_hdr);
    decode_cluster0(&h, c0, sizeof c0);
    assert_int_equal(header_encode(&h, out, sizeof out), 0);
    assert_memory_equal(out, c0, sizeof c0);
    header_free(&h);
}

static void test_header_keeps_unknown_fields_and_extensions(void **state)
{
    uint8_t c0[4096] = {0}, out[4096];
    struct qcow2_header h, h2;
    const uint8_t ext_data[5] = {1, 2, 3, 4, 5};

    (void)state;
    memset(&h, 0, sizeof h);
    h.version = 3;
    h.cluster_bits = 12;
    h.size = 1 << 20;
    h.refcount_order = 4;
    h.header_length = 120;
    h.compatible = 0x80; /* unknown compatible bit: kept */
    h.tail_len = 8;
    h.tail = malloc(8);
    memcpy(h.tail, "UNKNOWN!", 8);
    h.nb_unknown = 1;
    h.unknown = calloc(1, sizeof *h.unknown);
    h.unknown[0].type = 0x12345678;
    h.unknown[0].len = 5;
    h.unknown[0].data = malloc(5);
    memcpy(h.unknown[0].data, ext_data, 5);
    assert_int_equal(header_encode(&h, c0, sizeof c0), 0);
    decode_cluster0(&h2, c0, sizeof c0);
    assert_int_equal(h2.header_length, 120);
    assert_int_equal(h2.compatible, 0x80);
    assert_memory_equal(h2.tail, "UNKNOWN!", 8);
    assert_int_equal(h2.nb_unknown, 1);
    assert_int_equal(h2.unknown[0].type, 0x12345678);
    assert_memory_equal(h2.unknown[0].data, ext_data, 5);
    assert_int_equal(header_encode(&h2, out, sizeof out), 0);
    assert_memory_equal(out, c0, sizeof c0);
    header_free(&h);
    header_free(&h2);
}

static void test_header_rejects_extension_past_cluster(void **state)
{
    uint8_t c0[512] = {0};
    struct qcow2_header h;

    (void)state;
    memcpy(c0, qemu_overlay_hdr, 112);
    be64_store(c0 + HDR_BACKING_OFF, 0);
    be32_store(c0 + 112, 0x11111111);
    be32_store(c0 + 116, 4096); /* runs past the cluster */
    assert_int_equal(header_decode_fixed(&h, c0, sizeof c0), 0);
    assert_int_equal(header_decode_exts(&h, c0, sizeof c0), -EINVAL);
    assert_string_equal(qimg_last_error()->message,
                        "Header extension too large");
    header_free(&h);
}

/* What header_exts_len asks for with 64 KiB clusters when 4 KiB were
 * read: those 4 KiB if they hold everything, else the whole cluster. */
static size_t exts_len(uint8_t *c0)
{
    struct qcow2_header h;
    size_t n;

    assert_int_equal(header_decode_fixed(&h, c0, 65536), 0);
    n = header_exts_len(&h, c0, 4096, 65536);
    header_free(&h);
    return n;
}

static void test_header_first_4k_when_enough(void **state)
{
    uint8_t *c0 = calloc(1, 65536);
    struct qcow2_header h;

    (void)state;
    assert_non_null(c0);
    memcpy(c0, qemu_overlay_hdr, sizeof qemu_overlay_hdr);
    assert_int_equal(exts_len(c0), 4096);
    /* The backing file name ends past 4 KiB. */
    be64_store(c0 + HDR_BACKING_OFF, 4090);
    memcpy(c0 + 4090, "base.qcow2", 10);
    assert_int_equal(exts_len(c0), 65536);
    decode_cluster0(&h, c0, 65536);
    assert_string_equal(h.backing_file, "base.qcow2");
    header_free(&h);
    /* No backing file, and an extension running past 4 KiB. */
    memset(c0 + 4090, 0, 10);
    be64_store(c0 + HDR_BACKING_OFF, 0);
    be32_store(c0 + HDR_BACKING_SIZE, 0);
    be32_store(c0 + 112, 0x12345678);
    be32_store(c0 + 116, 5000);
    assert_int_equal(exts_len(c0), 65536);
    /* ... or no room for the end marker within 4 KiB (it would follow
     * the extension's 8-byte header and data at 120 + len). */
    be32_store(c0 + 116, 4096 - 120);
    assert_int_equal(exts_len(c0), 65536);
    be32_store(c0 + 116, 4096 - 128);
    assert_int_equal(exts_len(c0), 4096);
    free(c0);
}

static void test_header_v2_implies_fields(void **state)
{
    uint8_t c0[512] = {0};
    struct qcow2_header h;

    (void)state;
    be32_store(c0, QCOW2_MAGIC);
    be32_store(c0 + HDR_VERSION, 2);
    be32_store(c0 + HDR_CLUSTER_BITS, 16);
    be64_store(c0 + HDR_INCOMPAT, ~0ull); /* not a v2 field: ignored */
    assert_int_equal(header_decode_fixed(&h, c0, sizeof c0), 0);
    assert_int_equal(h.refcount_order, 4);
    assert_int_equal(h.header_length, 72);
    assert_int_equal(h.incompatible, 0);
    header_free(&h);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_header_decodes_qemu_overlay),
        cmocka_unit_test(test_header_encode_is_byte_identical_to_qemu),
        cmocka_unit_test(test_header_keeps_unknown_fields_and_extensions),
        cmocka_unit_test(test_header_rejects_extension_past_cluster),
        cmocka_unit_test(test_header_first_4k_when_enough),
        cmocka_unit_test(test_header_v2_implies_fields),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
