/*
 * test_snaptable.c - snaptable.c: the snapshot table entry codec
 * (qcow2-format.md §5.1-§5.3), reading a table from an in-memory image,
 * its limits, and the lookups by ID and name.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "internal.h"

#define CS 65536
#define DISK_SIZE (4u << 20)

static qimg_image *mem_image(void)
{
    struct qimg_create_opts o = QIMG_CREATE_OPTS_INIT;
    struct qimg_io io;
    qimg_image *img = NULL;

    o.size = DISK_SIZE;
    o.cluster_size = CS;
    assert_int_equal(io_mem_open(&io, NULL, 0), 0);
    assert_int_equal(qcow2_create(&img, &io, "mem", &o), 0);
    return img;
}

/* Write len bytes of buf at the first cluster past the end of the file;
 * the file then ends where they end. Returns their offset. */
static uint64_t append(qimg_image *img, const uint8_t *buf, uint64_t len)
{
    uint64_t off = ALIGN_UP(img->q->file_size, CS);

    assert_int_equal(file_pwrite(img, buf, len, off), 0);
    file_extend(img, off + len);
    return off;
}

/* A snapshot with every field set from seed. extra_size is 0 or at least
 * 24: the known part of the extra data agrees with the fields, the rest
 * is a pattern. */
static void make_snap(struct snap *s, const char *id, const char *name,
                      uint32_t extra_size, unsigned seed)
{
    memset(s, 0, sizeof *s);
    s->l1_off = (uint64_t)(seed + 5) * CS;
    s->l1_size = seed + 1;
    s->id = strdup(id);
    s->name = strdup(name);
    assert_non_null(s->id);
    assert_non_null(s->name);
    s->date_sec = 0x60000000u + seed;
    s->date_nsec = seed * 1000;
    s->vm_clock_nsec = 1000000007ull * seed;
    s->vm_state_size = (uint64_t)seed * 4096;
    s->vm_state_size32 = (uint32_t)s->vm_state_size;
    s->disk_size = (uint64_t)(seed + 1) << 20;
    s->icount = seed % 2 ? UINT64_MAX : seed;
    s->extra_size = extra_size;
    if (!extra_size)
        return;
    assert_true(extra_size >= 24);
    s->extra = malloc(extra_size);
    assert_non_null(s->extra);
    for (uint32_t i = 0; i < extra_size; i++)
        s->extra[i] = (uint8_t)(i * 7 + seed);
    be64_store(s->extra, s->vm_state_size);
    be64_store(s->extra + 8, s->disk_size);
    be64_store(s->extra + 16, s->icount);
}

static void free_snaps(struct snap *snaps, uint32_t n)
{
    for (uint32_t i = 0; i < n; i++)
        snap_free(&snaps[i]);
}

/* Everything but the extra data. */
static void check_fields(const struct snap *a, const struct snap *b)
{
    assert_int_equal(a->l1_off, b->l1_off);
    assert_int_equal(a->l1_size, b->l1_size);
    assert_string_equal(a->id, b->id);
    assert_string_equal(a->name, b->name);
    assert_int_equal(a->date_sec, b->date_sec);
    assert_int_equal(a->date_nsec, b->date_nsec);
    assert_int_equal(a->vm_clock_nsec, b->vm_clock_nsec);
    assert_int_equal(a->vm_state_size32, b->vm_state_size32);
    assert_int_equal(a->vm_state_size, b->vm_state_size);
    assert_int_equal(a->disk_size, b->disk_size);
    assert_int_equal(a->icount, b->icount);
}

static void check_same(const struct snap *a, const struct snap *b)
{
    check_fields(a, b);
    assert_int_equal(a->extra_size, b->extra_size);
    if (a->extra_size)
        assert_memory_equal(a->extra, b->extra, a->extra_size);
}

/* Encode snaps[0..n), append the table to img and read it back. */
static void encode_append_read(qimg_image *img, const struct snap *snaps,
                               uint32_t n, struct snap **out, uint64_t *len)
{
    uint8_t *buf = NULL;
    uint64_t off, size = 0;
    uint32_t nb = 0;

    assert_int_equal(snap_table_encode(img->q, snaps, n, &buf, len), 0);
    assert_int_equal(*len, snap_table_size(img->q, snaps, n));
    off = append(img, buf, *len);
    assert_int_equal(snap_table_read(img, off, n, NULL, out, &nb, &size), 0);
    assert_int_equal(nb, n);
    assert_int_equal(size, *len);
    free(buf);
}

static void test_snap_round_trip_keeps_extra_data(void **state)
{
    qimg_image *img = mem_image();
    struct snap snaps[4], *back = NULL;
    uint64_t len;

    (void)state;
    make_snap(&snaps[0], "1", "first", 24, 1);
    make_snap(&snaps[1], "2", "with unknown extra data", 24 + 40, 2);
    make_snap(&snaps[2], "17", "", 1024, 3);
    make_snap(&snaps[3], "100", "x", 0, 4);
    encode_append_read(img, snaps, 4, &back, &len);
    for (int i = 0; i < 3; i++)
        check_same(&back[i], &snaps[i]);
    /* No extra data is written as the 24 known bytes (§5.2). */
    check_fields(&back[3], &snaps[3]);
    assert_int_equal(back[3].extra_size, 24);
    free_snaps(back, 4);
    free(back);
    free_snaps(snaps, 4);
    qimg_image_close(img);
}

/* §5.1 and §5.2 offsets, big-endian; a VM state size over 32 bits leaves
 * the 32-bit field 0. */
static void test_snap_encode_layout(void **state)
{
    struct qcow2 q = {0};
    struct snap s;
    uint8_t *buf = NULL;
    uint64_t len = 0;

    (void)state;
    make_snap(&s, "12", "name", 24 + 3, 6);
    s.vm_state_size = 5ull << 30;
    s.icount = 0x1122334455667788ull;
    assert_int_equal(snap_table_encode(&q, &s, 1, &buf, &len), 0);
    assert_int_equal(len, 40 + 27 + 2 + 4);
    assert_int_equal(be64_load(buf + 0), s.l1_off);
    assert_int_equal(be32_load(buf + 8), s.l1_size);
    assert_int_equal(be16_load(buf + 12), 2);
    assert_int_equal(be16_load(buf + 14), 4);
    assert_int_equal(be32_load(buf + 16), s.date_sec);
    assert_int_equal(be32_load(buf + 20), s.date_nsec);
    assert_int_equal(be64_load(buf + 24), s.vm_clock_nsec);
    assert_int_equal(be32_load(buf + 32), 0);
    assert_int_equal(be32_load(buf + 36), 27);
    assert_int_equal(be64_load(buf + 40), 5ull << 30);
    assert_int_equal(be64_load(buf + 48), s.disk_size);
    assert_int_equal(be64_load(buf + 56), 0x1122334455667788ull);
    assert_memory_equal(buf + 64, s.extra + 24, 3);
    assert_memory_equal(buf + 67, "12name", 6);
    free(buf);
    /* Under 4 GiB both fields hold the size. */
    s.vm_state_size = 0x12345678;
    assert_int_equal(snap_table_encode(&q, &s, 1, &buf, &len), 0);
    assert_int_equal(be32_load(buf + 32), 0x12345678);
    assert_int_equal(be64_load(buf + 40), 0x12345678);
    free(buf);
    snap_free(&s);
}

/* §5.3: the first snapshot of a 4 MiB image, as QEMU wrote it. */
static const uint8_t qemu_entry[] = {
    0x00, 0x00, 0x00, 0x00, 0x00, 0x07, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01,
    0x00, 0x01, 0x00, 0x05, 0x6b, 0x07, 0xf0, 0xd8, 0x00, 0xfb, 0x5f, 0x90,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x18, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0x31, 0x73, 0x6e, 0x61, 0x70, 0x31,
};

static void test_snap_decodes_and_reencodes_qemu_entry(void **state)
{
    qimg_image *img = mem_image();
    struct snap *s = NULL;
    uint8_t *buf = NULL;
    uint64_t off, size, len;
    uint32_t nb;

    (void)state;
    off = append(img, qemu_entry, sizeof qemu_entry);
    assert_int_equal(snap_table_read(img, off, 1, NULL, &s, &nb, &size), 0);
    assert_int_equal(nb, 1);
    assert_int_equal(size, sizeof qemu_entry);
    assert_int_equal(s->l1_off, 0x70000);
    assert_int_equal(s->l1_size, 1);
    assert_string_equal(s->id, "1");
    assert_string_equal(s->name, "snap1");
    assert_int_equal(s->date_sec, 0x6b07f0d8);
    assert_int_equal(s->date_nsec, 0x00fb5f90);
    assert_int_equal(s->vm_clock_nsec, 0);
    assert_int_equal(s->vm_state_size, 0);
    assert_int_equal(s->disk_size, 0x400000);
    assert_int_equal(s->icount, 0);
    assert_int_equal(s->extra_size, 24);
    assert_int_equal(snap_table_encode(img->q, s, 1, &buf, &len), 0);
    assert_int_equal(len, sizeof qemu_entry);
    assert_memory_equal(buf, qemu_entry, sizeof qemu_entry);
    free(buf);
    snap_free(s);
    free(s);
    qimg_image_close(img);
}

/* Each entry starts 8-byte aligned, the padding is zero, and the table
 * ends with the last entry (no padding after it). */
static void test_snap_entries_are_8_byte_aligned(void **state)
{
    enum { N = 40 };
    qimg_image *img = mem_image();
    struct snap snaps[N], *back = NULL;
    char id[16], name[4096];
    uint8_t *buf = NULL;
    uint64_t len, pos = 0, end = 0;

    (void)state;
    for (unsigned i = 0; i < N; i++) {
        size_t nlen = i == 7 ? 255 : i == 8 ? 4000 : i % 17;
        snprintf(id, sizeof id, "%u", i * 37 + 1);
        memset(name, 'a' + (int)(i % 26), nlen);
        name[nlen] = '\0';
        make_snap(&snaps[i], id, name, i % 3 ? 24 + i : 24, i);
    }
    assert_int_equal(snap_table_encode(img->q, snaps, N, &buf, &len), 0);
    for (unsigned i = 0; i < N; i++) {
        uint32_t xlen;
        uint16_t il, nl;
        assert_true(pos % 8 == 0);
        for (uint64_t p = end; p < pos; p++)
            assert_int_equal(buf[p], 0);
        il = be16_load(buf + pos + 12);
        nl = be16_load(buf + pos + 14);
        xlen = be32_load(buf + pos + 36);
        assert_int_equal(il, strlen(snaps[i].id));
        assert_int_equal(nl, strlen(snaps[i].name));
        assert_int_equal(xlen, snaps[i].extra_size);
        assert_memory_equal(buf + pos + 40 + xlen, snaps[i].id, il);
        assert_memory_equal(buf + pos + 40 + xlen + il, snaps[i].name, nl);
        end = pos + 40 + xlen + il + nl;
        pos = ALIGN_UP(end, 8);
    }
    assert_int_equal(len, end);
    assert_int_equal(snap_table_size(img->q, snaps, N), end);
    free(buf);
    encode_append_read(img, snaps, N, &back, &len);
    for (unsigned i = 0; i < N; i++)
        check_same(&back[i], &snaps[i]);
    free_snaps(back, N);
    free(back);
    free_snaps(snaps, N);
    qimg_image_close(img);
}

/* A table larger than the first read (64 KiB) is read in growing pieces. */
static void test_snap_read_large_table(void **state)
{
    enum { N = 1000 };
    qimg_image *img = mem_image();
    struct snap *snaps = calloc(N, sizeof *snaps), *back = NULL;
    char id[16], name[128];
    uint64_t len;

    (void)state;
    assert_non_null(snaps);
    for (unsigned i = 0; i < N; i++) {
        snprintf(id, sizeof id, "%u", i + 1);
        memset(name, 'A' + (int)(i % 26), i % 100);
        name[i % 100] = '\0';
        make_snap(&snaps[i], id, name, 24 + (i * 13) % 200, i);
    }
    assert_true(snap_table_size(img->q, snaps, N) > 3 * 65536);
    encode_append_read(img, snaps, N, &back, &len);
    for (unsigned i = 0; i < N; i++)
        check_same(&back[i], &snaps[i]);
    free_snaps(back, N);
    free(back);
    free_snaps(snaps, N);
    free(snaps);
    qimg_image_close(img);
}

/* A raw entry with xlen bytes of extra data; returns its length. */
static size_t raw_entry(uint8_t *p, const char *id, const char *name,
                        const uint8_t *extra, uint32_t xlen, uint32_t vm32)
{
    size_t il = strlen(id), nl = strlen(name);

    memset(p, 0, 40);
    be64_store(p, 0x50000);
    be32_store(p + 8, 8);
    be16_store(p + 12, (uint16_t)il);
    be16_store(p + 14, (uint16_t)nl);
    be32_store(p + 32, vm32);
    be32_store(p + 36, xlen);
    memcpy(p + 40, extra, xlen);
    memcpy(p + 40 + xlen, id, il);
    memcpy(p + 40 + xlen + il, name, nl);
    return 40 + xlen + il + nl;
}

/* §5.2: fields the extra data is too short to hold take their defaults
 * (the 32-bit VM state size, the current disk size, icount -1); the
 * short extra data is kept as it is, and written back as 24 bytes. */
static void test_snap_short_extra_takes_defaults(void **state)
{
    static const uint32_t xlens[] = {0, 8, 16, 20};
    qimg_image *img = mem_image();
    uint8_t table[512] = {0}, extra[24], *buf = NULL;
    struct snap *s = NULL;
    uint64_t off, size, pos = 0, len;
    uint32_t nb;

    (void)state;
    be64_store(extra, 0xaaaa0000);
    be64_store(extra + 8, 1ull << 30);
    be64_store(extra + 16, 77);
    for (int i = 0; i < 4; i++) {
        pos = ALIGN_UP(pos, 8);
        pos += raw_entry(table + pos, "1", "s", extra, xlens[i], 0x1000);
    }
    off = append(img, table, pos);
    assert_int_equal(snap_table_read(img, off, 4, NULL, &s, &nb, &size), 0);
    assert_int_equal(nb, 4);
    assert_int_equal(size, pos);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(s[i].extra_size, xlens[i]);
        if (xlens[i])
            assert_memory_equal(s[i].extra, extra, xlens[i]);
        else
            assert_null(s[i].extra);
        assert_int_equal(s[i].vm_state_size32, 0x1000);
        assert_int_equal(s[i].vm_state_size,
                         xlens[i] >= 8 ? 0xaaaa0000 : 0x1000);
        assert_int_equal(s[i].disk_size,
                         xlens[i] >= 16 ? 1ull << 30 : DISK_SIZE);
        assert_int_equal(s[i].icount, UINT64_MAX);
        assert_string_equal(s[i].id, "1");
        assert_string_equal(s[i].name, "s");
    }
    /* Written back with 24 bytes: the known fields, then id and name. */
    assert_int_equal(snap_table_encode(img->q, &s[2], 1, &buf, &len), 0);
    assert_int_equal(len, 40 + 24 + 2);
    assert_int_equal(be32_load(buf + 36), 24);
    assert_memory_equal(buf + 40, extra, 16);
    assert_int_equal(be64_load(buf + 56), UINT64_MAX);
    assert_memory_equal(buf + 64, "1s", 2);
    free(buf);
    free_snaps(s, 4);
    free(s);
    qimg_image_close(img);
}

/* Over 1024 bytes of extra data: refused (QEMU's message), unless a
 * repair reads the table, which keeps 1024 bytes and records the cut. */
static void test_snap_read_too_much_extra(void **state)
{
    qimg_image *img = mem_image();
    struct snap snaps[3], *back = NULL;
    struct snap_read rd = {0};
    uint8_t *buf = NULL;
    uint64_t off, len, size;
    uint32_t nb;

    (void)state;
    make_snap(&snaps[0], "1", "before", 24, 1);
    make_snap(&snaps[1], "2", "big", 3000, 2);
    make_snap(&snaps[2], "3", "after", 1024, 3); /* the limit itself is fine */
    assert_int_equal(snap_table_encode(img->q, snaps, 3, &buf, &len), 0);
    off = append(img, buf, len);
    assert_int_equal(snap_table_read(img, off, 3, NULL, &back, &nb, &size),
                     -EFBIG);
    assert_string_equal(qimg_last_error()->message,
                        "Too much extra metadata in snapshot table entry 1");
    assert_null(back);
    assert_int_equal(nb, 0);
    /* A plain check's read refuses it too. */
    assert_int_equal(snap_table_read(img, off, 3, &rd, &back, &nb, &size),
                     -EFBIG);
    rd.repair = true;
    assert_int_equal(snap_table_read(img, off, 3, &rd, &back, &nb, &size), 0);
    assert_int_equal(nb, 3);
    assert_int_equal(size, len);
    assert_int_equal(rd.nb_drop, 1);
    assert_int_equal(rd.drop_idx[0], 1);
    assert_int_equal(rd.drop_size[0], 3000);
    assert_int_equal(back[1].extra_size, 1024);
    assert_memory_equal(back[1].extra, snaps[1].extra, 1024);
    check_fields(&back[1], &snaps[1]);
    check_same(&back[0], &snaps[0]);
    check_same(&back[2], &snaps[2]);
    free_snaps(back, 3);
    free(back);
    free(buf);
    free_snaps(snaps, 3);
    qimg_image_close(img);
}

static void check_past_eof(qimg_image *img, uint64_t off, uint32_t n,
                           struct snap_read *rd)
{
    static struct snap dummy;
    struct snap *back = &dummy;
    uint64_t size = 1;
    uint32_t nb = 1;

    assert_int_equal(snap_table_read(img, off, n, rd, &back, &nb, &size),
                     -EINVAL);
    assert_string_equal(qimg_last_error()->message,
                        "Snapshot table exceeds the end of the file");
    assert_null(back);
    assert_int_equal(nb, 0);
}

static void test_snap_read_table_past_eof(void **state)
{
    qimg_image *img = mem_image();
    struct snap snaps[2], *back = NULL;
    struct snap_read repair = {.repair = true}, plain = {0};
    uint8_t *buf = NULL;
    uint64_t off, len, size, eof;
    uint32_t nb;

    (void)state;
    make_snap(&snaps[0], "1", "first", 24, 1);
    make_snap(&snaps[1], "2", "snapname", 24, 2);
    assert_int_equal(snap_table_encode(img->q, snaps, 2, &buf, &len), 0);
    /* The file ends 5 bytes into the second entry's name. */
    off = append(img, buf, len - 5);
    eof = img->q->file_size;
    assert_int_equal(eof, off + len - 5);
    check_past_eof(img, off, 2, &repair);
    /* A table that starts at or past the end of the file. */
    check_past_eof(img, eof, 1, &repair);
    check_past_eof(img, eof + CS, 1, &repair);
    /* One entry more than the file holds. */
    assert_int_equal(file_pwrite(img, buf + len - 5, 5, eof), 0);
    file_extend(img, off + len);
    check_past_eof(img, off, 3, &repair);
    /* No entries: nothing is read. */
    assert_int_equal(snap_table_read(img, eof + CS, 0, NULL, &back, &nb, &size),
                     0);
    assert_null(back);
    assert_int_equal(nb, 0);
    assert_int_equal(size, 0);
    free(buf);
    free_snaps(snaps, 2);
    qimg_image_close(img);

    /* A plain check and an open read zeros past the end of the file, as
     * QEMU does. */
    img = mem_image();
    make_snap(&snaps[0], "1", "first", 24, 1);
    make_snap(&snaps[1], "2", "snapname", 24, 2);
    assert_int_equal(snap_table_encode(img->q, snaps, 2, &buf, &len), 0);
    off = append(img, buf, len - 5);
    for (int k = 0; k < 2; k++) {
        assert_int_equal(snap_table_read(img, off, 2, k ? NULL : &plain,
                                         &back, &nb, &size),
                         0);
        assert_int_equal(nb, 2);
        assert_int_equal(size, len);
        check_same(&back[0], &snaps[0]);
        assert_string_equal(back[1].name, "sna");
        free_snaps(back, 2);
        free(back);
    }
    /* Entries wholly past the end read as empty ones (zero lengths). */
    assert_int_equal(snap_table_read(img, off + CS * 4, 2, NULL, &back, &nb,
                                     &size),
                     0);
    assert_int_equal(nb, 2);
    assert_int_equal(size, 80);
    assert_string_equal(back[0].id, "");
    assert_string_equal(back[1].name, "");
    assert_int_equal(back[1].l1_off, 0);
    free_snaps(back, 2);
    free(back);
    free(buf);
    free_snaps(snaps, 2);
    qimg_image_close(img);
}

/* What the public API writes is what the reader reads and the encoder
 * writes again, byte for byte, from the entries read or from the live
 * table (whose new entries carry no extra data: 24 bytes go to disk). */
static void test_snap_table_matches_what_create_wrote(void **state)
{
    qimg_image *img = mem_image();
    struct qcow2 *q = img->q;
    struct snap *back = NULL;
    uint8_t *buf = NULL, *disk;
    uint64_t len, size;
    uint32_t nb;

    (void)state;
    assert_int_equal(qimg_snapshot_create(img, "one"), 0);
    assert_int_equal(qimg_snapshot_create(img, "second snapshot"), 0);
    assert_int_equal(qimg_snapshot_create(img, "3"), 0);
    assert_int_equal(q->hdr.nb_snapshots, 3);
    assert_int_equal(q->sn->nb_snaps, 3);
    assert_int_equal(snap_table_read(img, q->hdr.snapshots_offset, 3, NULL,
                                     &back, &nb, &size),
                     0);
    assert_int_equal(nb, 3);
    assert_int_equal(size, q->sn->snap_table_size);
    assert_int_equal(size, snap_table_size(q, q->sn->snaps, 3));
    for (int i = 0; i < 3; i++) {
        check_fields(&back[i], &q->sn->snaps[i]);
        assert_int_equal(back[i].extra_size, 24);
    }
    assert_string_equal(back[0].id, "1");
    assert_string_equal(back[2].id, "3");
    assert_string_equal(back[1].name, "second snapshot");
    assert_int_equal(back[0].disk_size, DISK_SIZE);
    assert_int_equal(snap_table_encode(q, back, 3, &buf, &len), 0);
    disk = malloc(len);
    assert_non_null(disk);
    assert_int_equal(file_pread(img, disk, len, q->hdr.snapshots_offset), 0);
    assert_memory_equal(buf, disk, len);
    free(buf);
    assert_int_equal(snap_table_encode(q, q->sn->snaps, 3, &buf, &len), 0);
    assert_int_equal(len, size);
    assert_memory_equal(buf, disk, len);
    free(disk);
    free(buf);
    free_snaps(back, 3);
    free(back);
    assert_int_equal(qimg_image_close(img), 0);
}

static void test_snap_copy_is_deep(void **state)
{
    struct snap a, b, c;

    (void)state;
    make_snap(&a, "7", "orig", 40, 7);
    assert_int_equal(snap_copy(&b, &a), 0);
    assert_ptr_not_equal(b.id, a.id);
    assert_ptr_not_equal(b.name, a.name);
    assert_ptr_not_equal(b.extra, a.extra);
    check_same(&b, &a);
    a.id[0] = '8';
    a.extra[30] ^= 0xff;
    assert_string_equal(b.id, "7");
    assert_int_not_equal(b.extra[30], a.extra[30]);
    snap_free(&a);
    assert_null(a.id);
    assert_int_equal(a.extra_size, 0);
    assert_string_equal(b.name, "orig");
    make_snap(&a, "9", "no extra", 0, 9);
    assert_int_equal(snap_copy(&c, &a), 0);
    assert_null(c.extra);
    check_same(&c, &a);
    snap_free(&a);
    snap_free(&b);
    snap_free(&c);
    snap_free(NULL);
}

/* A live table without an image: the lookups read only q->sn. */
struct fake {
    struct snap snaps[6];
    struct snap_state sn;
    struct qcow2 q;
};

static void fake_table(struct fake *f)
{
    static const char *const ids[] = {"1", "2", "3", "4", "5", "10"};
    static const char *const names[] = {"base", "1",   "a,b",
                                        "dup",  "dup", "snapshot"};

    memset(f, 0, sizeof *f);
    for (unsigned i = 0; i < 6; i++)
        make_snap(&f->snaps[i], ids[i], names[i], 24, i);
    f->sn.snaps = f->snaps;
    f->sn.nb_snaps = 6;
    f->q.sn = &f->sn;
}

static void test_snap_find_by_id_and_name(void **state)
{
    struct fake f;

    (void)state;
    fake_table(&f);
    assert_int_equal(snap_find_by_id(&f.q, "1"), 0);
    assert_int_equal(snap_find_by_id(&f.q, "10"), 5);
    assert_int_equal(snap_find_by_id(&f.q, "base"), -1);
    assert_int_equal(snap_find_by_id(&f.q, "01"), -1);
    assert_int_equal(snap_find_by_name(&f.q, "1"), 1);
    assert_int_equal(snap_find_by_name(&f.q, "dup"), 3); /* the first */
    assert_int_equal(snap_find_by_name(&f.q, "10"), -1);
    assert_int_equal(snap_find_by_name(&f.q, ""), -1);
    free_snaps(f.snaps, 6);
}

static void lookup_fails(const struct qcow2 *q, const char *spec)
{
    /* snaptable.h says -ENOENT, snaptable.c returns -1: callers test < 0. */
    assert_true(snap_lookup(q, spec) < 0);
}

static void test_snap_lookup_plain_id_before_name(void **state)
{
    struct fake f;

    (void)state;
    fake_table(&f);
    /* "1" is snapshot 0's ID and snapshot 1's name: the ID wins. */
    assert_int_equal(snap_lookup(&f.q, "1"), 0);
    assert_int_equal(snap_lookup(&f.q, "2"), 1);
    assert_int_equal(snap_lookup(&f.q, "base"), 0);
    assert_int_equal(snap_lookup(&f.q, "dup"), 3);
    assert_int_equal(snap_lookup(&f.q, "10"), 5);
    /* A plain spelling is taken whole: no option parsing, no unescaping. */
    assert_int_equal(snap_lookup(&f.q, "a,b"), 2);
    lookup_fails(&f.q, "a,,b");
    lookup_fails(&f.q, "6");
    lookup_fails(&f.q, "nope");
    lookup_fails(&f.q, "");
    free_snaps(f.snaps, 6);
}

static void test_snap_lookup_option_spellings(void **state)
{
    struct fake f;

    (void)state;
    fake_table(&f);
    assert_int_equal(snap_lookup(&f.q, "snapshot.id=1"), 0);
    assert_int_equal(snap_lookup(&f.q, "snapshot.id=10"), 5);
    assert_int_equal(snap_lookup(&f.q, "snapshot.name=1"), 1);
    assert_int_equal(snap_lookup(&f.q, "snapshot.name=base"), 0);
    assert_int_equal(snap_lookup(&f.q, "snapshot.name=dup"), 3);
    /* Both given: both must match, in either order. */
    assert_int_equal(snap_lookup(&f.q, "snapshot.id=2,snapshot.name=1"), 1);
    assert_int_equal(snap_lookup(&f.q, "snapshot.name=1,snapshot.id=2"), 1);
    assert_int_equal(snap_lookup(&f.q, "snapshot.id=5,snapshot.name=dup"), 4);
    lookup_fails(&f.q, "snapshot.id=1,snapshot.name=1");
    lookup_fails(&f.q, "snapshot.id=9");
    lookup_fails(&f.q, "snapshot.name=nope");
    /* ",," is a comma inside a value; a single comma ends the option. */
    assert_int_equal(snap_lookup(&f.q, "snapshot.name=a,,b"), 2);
    assert_int_equal(snap_lookup(&f.q, "snapshot.id=3,snapshot.name=a,,b"), 2);
    lookup_fails(&f.q, "snapshot.name=a,b");
    /* Unknown options are refused. */
    lookup_fails(&f.q, "snapshot.id=1,foo=bar");
    lookup_fails(&f.q, "snapshot.name=base,snapshot.idx=1");
    free_snaps(f.snaps, 6);
}

/* snap_check_l1() takes l1_offset and l1_size from the file: an offset
 * near 2^64 must not wrap past the end-of-file test. */
static void test_snap_check_l1_bounds(void **state)
{
    qimg_image *img = mem_image();
    uint64_t eof = img->q->file_size;
    struct snap s = {0};

    (void)state;
    s.l1_size = 2;
    s.l1_off = CS;
    assert_int_equal(snap_check_l1(img, &s), 0);
    s.l1_off = UINT64_MAX & ~(uint64_t)(CS - 1);
    s.l1_size = CS / 8;                 /* l1_off + 64 KiB wraps to 0 */
    assert_int_equal(snap_check_l1(img, &s), -EINVAL);
    s.l1_size = 2;
    s.l1_off = ALIGN_UP(eof, CS);
    assert_int_equal(snap_check_l1(img, &s), -EINVAL);
    s.l1_off = CS + 1;
    assert_int_equal(snap_check_l1(img, &s), -EINVAL);
    s.l1_off = 0;
    assert_int_equal(snap_check_l1(img, &s), -EINVAL);
    s.l1_size = 0; /* an empty table may sit anywhere aligned */
    assert_int_equal(snap_check_l1(img, &s), 0);
    s.l1_size = QCOW_MAX_L1_SIZE / 8 + 1;
    s.l1_off = CS;
    assert_int_equal(snap_check_l1(img, &s), -EFBIG);
    qimg_image_close(img);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_snap_round_trip_keeps_extra_data),
        cmocka_unit_test(test_snap_encode_layout),
        cmocka_unit_test(test_snap_decodes_and_reencodes_qemu_entry),
        cmocka_unit_test(test_snap_entries_are_8_byte_aligned),
        cmocka_unit_test(test_snap_read_large_table),
        cmocka_unit_test(test_snap_short_extra_takes_defaults),
        cmocka_unit_test(test_snap_read_too_much_extra),
        cmocka_unit_test(test_snap_read_table_past_eof),
        cmocka_unit_test(test_snap_table_matches_what_create_wrote),
        cmocka_unit_test(test_snap_copy_is_deep),
        cmocka_unit_test(test_snap_find_by_id_and_name),
        cmocka_unit_test(test_snap_check_l1_bounds),
        cmocka_unit_test(test_snap_lookup_plain_id_before_name),
        cmocka_unit_test(test_snap_lookup_option_spellings),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
