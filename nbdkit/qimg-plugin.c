/*
 * qimg-plugin.c - nbdkit-qimg-plugin: serve a qcow2 (or raw) image, or one
 * of its internal snapshots, over NBD through libqimg.
 *
 *   nbdkit qimg file=IMAGE [snapshot=ID_OR_NAME] [readonly=true]
 *
 * One image handle serves every connection: it is opened once nbdkit has
 * forked into the background (the library's write-back helper thread
 * would not survive the fork) and closed at exit, so QEMU's image locks
 * are held for as long as nbdkit serves, and a second writer (qemu-io,
 * qemu-img, another nbdkit) is refused. The handle is not safe for
 * concurrent use, so requests are serialized across all connections
 * (NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS); because every connection
 * sees the one handle, a flush on any connection covers the writes of
 * all, and multi-conn is advertised. A snapshot is served read-only.
 * Backing files are followed.
 */
#define NBDKIT_API_VERSION 2
#include <nbdkit-plugin.h>

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qimg.h"

#define THREAD_MODEL NBDKIT_THREAD_MODEL_SERIALIZE_ALL_REQUESTS

static char *file;
static char *snapshot;
static const char *format;
static int readonly_opt;
static qimg_image *img;

static void qimg_plugin_unload(void)
{
    free(file);
    free(snapshot);
}

static int qimg_plugin_config(const char *key, const char *value)
{
    if (!strcmp(key, "file")) {
        free(file);
        file = nbdkit_realpath(value);
        return file ? 0 : -1;
    }
    if (!strcmp(key, "snapshot")) {
        free(snapshot);
        snapshot = strdup(value);
        if (!snapshot) {
            nbdkit_error("strdup: %m");
            return -1;
        }
        return 0;
    }
    if (!strcmp(key, "readonly")) {
        readonly_opt = nbdkit_parse_bool(value);
        return readonly_opt < 0 ? -1 : 0;
    }
    if (!strcmp(key, "format")) {
        if (strcmp(value, "qcow2") && strcmp(value, "raw")) {
            nbdkit_error("format must be qcow2 or raw, not '%s'", value);
            return -1;
        }
        format = !strcmp(value, "qcow2") ? "qcow2" : "raw";
        return 0;
    }
    nbdkit_error("unknown parameter '%s'", key);
    return -1;
}

static int qimg_plugin_config_complete(void)
{
    if (!file) {
        nbdkit_error("you must supply the file=<IMAGE> parameter");
        return -1;
    }
    return 0;
}

#define qimg_plugin_config_help                                             \
    "file=<IMAGE>     (required) The qcow2 or raw image to serve.\n"        \
    "snapshot=<S>     Serve internal snapshot S (ID or name), read-only.\n" \
    "readonly=true    Open the image read-only.\n"                          \
    "format=qcow2|raw Do not probe the format."

static bool writable(void)
{
    return !readonly_opt && !snapshot;
}

static int fail(const char *what)
{
    const struct qimg_error *e = qimg_last_error();

    nbdkit_error("%s: %s", what, e->message[0] ? e->message : "failed");
    nbdkit_set_error(e->errnum ? e->errnum : EIO);
    qimg_error_clear();
    return -1;
}

static int open_image(void)
{
    struct qimg_open_opts o = QIMG_OPEN_OPTS_INIT;

    if (format)
        o.fmt = !strcmp(format, "qcow2") ? QIMG_FMT_QCOW2 : QIMG_FMT_RAW;
    o.read_write = writable();
    o.snapshot = snapshot;
    if (qimg_image_open(&img, file, &o) < 0) {
        img = NULL;
        return fail(file);
    }
    return 0;
}

/* Before the fork: refuse what cannot be served (a missing file, a
 * damaged image, a lock held) while the error still reaches the user. */
static int qimg_plugin_get_ready(void)
{
    if (open_image() < 0)
        return -1;
    if (qimg_image_close(img) < 0) {
        img = NULL;
        return fail(file);
    }
    img = NULL;
    return 0;
}

static int qimg_plugin_after_fork(void)
{
    return open_image();
}

static void qimg_plugin_cleanup(void)
{
    if (img && qimg_image_close(img) < 0)
        nbdkit_error("%s: %s", file, qimg_last_error()->message);
    img = NULL;
}

static void *qimg_plugin_open(int readonly)
{
    (void)readonly;
    if (!img) {
        nbdkit_error("%s: the image is not open", file);
        return NULL;
    }
    return img;
}

static int64_t qimg_plugin_get_size(void *h)
{
    return (int64_t)qimg_image_size(h);
}

static int qimg_plugin_can_write(void *h)
{
    (void)h;
    return writable();
}

static int qimg_plugin_can_flush(void *h)
{
    (void)h;
    return 1;
}

static int qimg_plugin_can_fua(void *h)
{
    (void)h;
    return NBDKIT_FUA_NATIVE;
}

static int qimg_plugin_can_trim(void *h)
{
    (void)h;
    return writable();
}

static int qimg_plugin_can_zero(void *h)
{
    (void)h;
    return writable();
}

static int qimg_plugin_can_fast_zero(void *h)
{
    (void)h;
    return writable();
}

static int qimg_plugin_can_extents(void *h)
{
    (void)h;
    return 1;
}

static int qimg_plugin_can_multi_conn(void *h)
{
    (void)h;
    return 1;
}

static int fua(void *h, uint32_t flags)
{
    if ((flags & NBDKIT_FLAG_FUA) && qimg_image_flush(h) < 0)
        return fail("flush");
    return 0;
}

static int qimg_plugin_pread(void *h, void *buf, uint32_t count,
                             uint64_t offset, uint32_t flags)
{
    (void)flags;
    return qimg_image_read(h, buf, count, offset) < 0 ? fail("read") : 0;
}

static int qimg_plugin_pwrite(void *h, const void *buf, uint32_t count,
                              uint64_t offset, uint32_t flags)
{
    if (qimg_image_write(h, buf, count, offset) < 0)
        return fail("write");
    return fua(h, flags);
}

static int qimg_plugin_flush(void *h, uint32_t flags)
{
    (void)flags;
    return qimg_image_flush(h) < 0 ? fail("flush") : 0;
}

static int qimg_plugin_trim(void *h, uint32_t count, uint64_t offset,
                            uint32_t flags)
{
    if (qimg_image_discard(h, offset, count) < 0)
        return fail("trim");
    return fua(h, flags);
}

/* A fast zero may not fall back to writing zeros: the library's
 * no-fallback mode refuses with ENOTSUP, which nbdkit passes on. */
static int qimg_plugin_zero(void *h, uint32_t count, uint64_t offset,
                            uint32_t flags)
{
    unsigned zf = 0;

    if (flags & NBDKIT_FLAG_MAY_TRIM)
        zf |= QIMG_ZERO_UNMAP;
    if (flags & NBDKIT_FLAG_FAST_ZERO)
        zf |= QIMG_ZERO_NO_FALLBACK;
    if (qimg_image_write_zeroes(h, offset, count, zf) < 0) {
        if ((flags & NBDKIT_FLAG_FAST_ZERO) &&
            qimg_last_error()->errnum == ENOTSUP) {
            qimg_error_clear();
            nbdkit_set_error(ENOTSUP);
            return -1;
        }
        return fail("zero");
    }
    return fua(h, flags);
}

/* Through the backing chain, as qemu-img map reports it: data (0), data
 * known to read as zeros (ZERO), or no data (HOLE, with ZERO where it
 * reads as zeros). */
static int qimg_plugin_extents(void *h, uint32_t count, uint64_t offset,
                               uint32_t flags, struct nbdkit_extents *ext)
{
    uint64_t end = offset + count;

    while (offset < end) {
        struct qimg_extent e;
        uint32_t type = 0;
        if (qimg_image_map(h, offset, end - offset, &e) < 0)
            return fail("block status");
        if (e.flags & QIMG_BS_ZERO)
            type |= NBDKIT_EXTENT_ZERO;
        if (!(e.flags & QIMG_BS_DATA))
            type |= NBDKIT_EXTENT_HOLE;
        if (nbdkit_add_extent(ext, offset, e.len, type) < 0)
            return -1;
        offset += e.len;
        if (flags & NBDKIT_FLAG_REQ_ONE)
            break;
    }
    return 0;
}

static struct nbdkit_plugin plugin = {
    .name = "qimg",
    .longname = "qimg: qcow2 images and their internal snapshots",
    .version = QIMG_PLUGIN_VERSION,
    .description = "Serve a qcow2 or raw image, or an internal snapshot, "
                   "through libqimg.",
    .unload = qimg_plugin_unload,
    .config = qimg_plugin_config,
    .config_complete = qimg_plugin_config_complete,
    .config_help = qimg_plugin_config_help,
    .magic_config_key = "file",
    .get_ready = qimg_plugin_get_ready,
    .after_fork = qimg_plugin_after_fork,
    .cleanup = qimg_plugin_cleanup,
    .open = qimg_plugin_open,
    .get_size = qimg_plugin_get_size,
    .can_write = qimg_plugin_can_write,
    .can_flush = qimg_plugin_can_flush,
    .can_fua = qimg_plugin_can_fua,
    .can_trim = qimg_plugin_can_trim,
    .can_zero = qimg_plugin_can_zero,
    .can_fast_zero = qimg_plugin_can_fast_zero,
    .can_extents = qimg_plugin_can_extents,
    .can_multi_conn = qimg_plugin_can_multi_conn,
    .pread = qimg_plugin_pread,
    .pwrite = qimg_plugin_pwrite,
    .flush = qimg_plugin_flush,
    .trim = qimg_plugin_trim,
    .zero = qimg_plugin_zero,
    .extents = qimg_plugin_extents,
    .errno_is_preserved = 0,
};

NBDKIT_REGISTER_PLUGIN(plugin)
