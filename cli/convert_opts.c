/*
 * convert_opts.c - the parameter lists of qimg convert: the target's -o
 * creation options and the -l snapshot parameter.
 *
 * Both use QEMU's QemuOpts syntax: "name=value" pairs separated by ',',
 * ",," for a comma inside a value, a bare "name" meaning name=on ("noname"
 * name=off). qemu-img convert checks an -o list in two steps and so does
 * this file: names and value types when the list is read (messages without
 * a file name), then the values themselves when the target is created
 * ("DST: error while converting FMT: ..."). It does not create anything;
 * cmd_convert.c drives the sequence. (create_opts.c serves qimg create,
 * whose messages carry the file name on both steps.)
 */
#include "cli.h"
#include "convert.h"

#include <errno.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

enum vtype { VT_SIZE, VT_NUM, VT_BOOL, VT_STR };

struct opt_desc {
    const char *name;
    enum vtype type;
    bool in_raw; /* also an option of raw targets */
};

static const struct opt_desc descs[CO_COUNT] = {
    [CO_SIZE] = {"size", VT_SIZE, true},
    [CO_BACKING_FILE] = {"backing_file", VT_STR, false},
    [CO_BACKING_FMT] = {"backing_fmt", VT_STR, false},
    [CO_CLUSTER_SIZE] = {"cluster_size", VT_SIZE, false},
    [CO_PREALLOC] = {"preallocation", VT_STR, true},
    [CO_LAZY_REFCOUNTS] = {"lazy_refcounts", VT_BOOL, false},
    [CO_REFCOUNT_BITS] = {"refcount_bits", VT_NUM, false},
    [CO_COMPAT] = {"compat", VT_STR, false},
    [CO_EXTENDED_L2] = {"extended_l2", VT_BOOL, false},
    [CO_COMPRESSION_TYPE] = {"compression_type", VT_STR, false},
    [CO_NOCOW] = {"nocow", VT_BOOL, true},
    [CO_EXTENT_SIZE_HINT] = {"extent_size_hint", VT_SIZE, true},
};

/* qcow2 options QEMU has and qimg does not implement. */
static const char *const unsupported[] = {
    "data_file",           "data_file_raw",
    "encryption",          "encrypt.cipher-alg",
    "encrypt.cipher-mode", "encrypt.format",
    "encrypt.hash-alg",    "encrypt.iter-time",
    "encrypt.ivgen-alg",   "encrypt.ivgen-hash-alg",
    "encrypt.key-secret",
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static void *xmalloc(size_t n)
{
    void *p = malloc(n ? n : 1);

    if (!p) {
        fprintf(stderr, "%s: Out of memory\n", cli_prog);
        exit(1);
    }
    return p;
}

static char *xstrdup(const char *s)
{
    size_t n = strlen(s) + 1;

    return memcpy(xmalloc(n), s, n);
}

/* ---- QemuOpts list syntax ---------------------------------------------- */

/* Split off the next element at a single ',' (",," is a literal comma).
 * *name and *value are malloc'd; a bare element has *value == NULL.
 * Returns where the next element starts. */
static const char *next_elem(const char *s, char **name, char **value)
{
    size_t nlen = strcspn(s, "=,");
    char *v;
    size_t n = 0;

    *name = strndup(s, nlen);
    *value = NULL;
    if (!*name)
        *name = xstrdup("");
    s += nlen;
    if (*s != '=')
        return *s == ',' ? s + 1 : s;
    v = xmalloc(strlen(++s) + 1);
    while (*s && !(s[0] == ',' && s[1] != ',')) {
        v[n++] = *s;
        s += s[0] == ',' ? 2 : 1;
    }
    v[n] = '\0';
    *value = v;
    return *s == ',' ? s + 1 : s;
}

/* A bare "name" is name=on, "noname" name=off. */
static void bare_flag(char *name, char **value)
{
    bool is_no = !strncmp(name, "no", 2);

    if (is_no)
        memmove(name, name + 2, strlen(name + 2) + 1);
    *value = xstrdup(is_no ? "off" : "on");
}

/* ---- -o ---------------------------------------------------------------- */

static int find_opt(enum qimg_format fmt, const char *name)
{
    for (int i = 0; i < CO_COUNT; i++)
        if (!strcmp(descs[i].name, name) &&
            (fmt != QIMG_FMT_RAW || descs[i].in_raw))
            return i;
    return -1;
}

static int parse_u64(const char *s, uint64_t *out)
{
    unsigned long long v;
    char *end;

    errno = 0;
    v = strtoull(s, &end, 0);
    if (end == s || *end)
        return -EINVAL;
    if (errno == ERANGE)
        return -ERANGE;
    *out = v;
    return 0;
}

static int parse_bool(const char *s, bool *out)
{
    if (!strcmp(s, "on") || !strcmp(s, "yes") || !strcmp(s, "true") ||
        !strcmp(s, "y"))
        *out = true;
    else if (!strcmp(s, "off") || !strcmp(s, "no") || !strcmp(s, "false") ||
             !strcmp(s, "n"))
        *out = false;
    else
        return -EINVAL;
    return 0;
}

/* The type check QemuOpts makes as it reads a value. */
static int check_type(enum conv_opt id, const char *v)
{
    const char *name = descs[id].name;
    uint64_t n;
    bool b;
    int ret = 0;

    switch (descs[id].type) {
    case VT_SIZE:
        ret = parse_size(v, &n);
        if (ret == -2) {
            cli_error("Value '%s' is out of range for parameter '%s'", v, name);
        } else if (ret < 0) {
            cli_error("Parameter '%s' expects a non-negative number below "
                      "2^64",
                      name);
            fputs("Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                  "giga-, tera-, peta-\nand exabytes, respectively.\n",
                  stderr);
        }
        break;
    case VT_NUM:
        ret = parse_u64(v, &n);
        if (ret == -ERANGE)
            cli_error("Value '%s' is too large for parameter '%s'", v, name);
        else if (ret < 0)
            cli_error("Parameter '%s' expects a number", name);
        break;
    case VT_BOOL:
        ret = parse_bool(v, &b);
        if (ret < 0)
            cli_error("Parameter '%s' expects 'on' or 'off'", name);
        break;
    case VT_STR:
        break;
    }
    return ret < 0 ? -1 : 0;
}

static int set_elem(struct conv_create *cc, const char *name, const char *v)
{
    int id;

    if (!strcmp(name, "id"))
        return 0;
    id = find_opt(cc->fmt, name);
    for (size_t i = 0;
         id < 0 && cc->fmt == QIMG_FMT_QCOW2 && i < ARRAY_LEN(unsupported);
         i++) {
        if (!strcmp(unsupported[i], name)) {
            cli_error("Parameter '%s' is not supported by qimg", name);
            return -1;
        }
    }
    if (id < 0) {
        cli_error("Invalid parameter '%s'", name);
        return -1;
    }
    if (check_type((enum conv_opt)id, v) < 0)
        return -1;
    conv_opts_set(cc, (enum conv_opt)id, v);
    return 0;
}

int conv_opts_parse(struct conv_create *cc, const char *list)
{
    const char *s = list;
    int ret = 0;

    while (*s && ret == 0) {
        char *name, *value;
        s = next_elem(s, &name, &value);
        if (!value)
            bare_flag(name, &value);
        ret = set_elem(cc, name, value);
        free(name);
        free(value);
    }
    return ret;
}

void conv_opts_set(struct conv_create *cc, enum conv_opt id, const char *v)
{
    free(cc->val[id]);
    cc->val[id] = xstrdup(v);
}

void conv_opts_free(struct conv_create *cc)
{
    for (int i = 0; i < CO_COUNT; i++) {
        free(cc->val[i]);
        cc->val[i] = NULL;
    }
}

/* ---- Values, checked when the target is created ------------------------ */

static int pick(const char *v, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(v, names[i]))
            return (int)i;
    return -1;
}

/* "DST: error while converting FMT: <message>"; returns -1. */
static int create_error(const char *dst, const char *fmt, const char *msg, ...)
    __attribute__((format(printf, 3, 4)));
static int create_error(const char *dst, const char *fmt, const char *msg, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "%s: %s: error while converting %s: ", cli_prog, dst,
            fmt);
    va_start(ap, msg);
    vfprintf(stderr, msg, ap);
    va_end(ap);
    fputc('\n', stderr);
    return -1;
}

static int raw_to_lib(const struct conv_create *cc, const char *dst,
                      struct qimg_create_opts *o)
{
    static const char *const prealloc[] = {"off", "metadata", "falloc", "full"};
    const char *v = cc->val[CO_PREALLOC];
    int i = 0;

    if (v && (i = pick(v, prealloc, ARRAY_LEN(prealloc))) < 0)
        return create_error(dst, "raw", "invalid parameter value: %s", v);
    if (i == QIMG_PREALLOC_METADATA)
        return create_error(dst, "raw",
                            "Unsupported preallocation mode: "
                            "%s",
                            v);
    o->prealloc = (enum qimg_prealloc)i;
    return 0;
}

/* compat, backing_fmt, preallocation, compression_type: in the order
 * QEMU's qcow2 driver reads them. */
static int qcow2_enums(const struct conv_create *cc, const char *dst,
                       struct qimg_create_opts *o)
{
    static const char *const compat[] = {"0.10", "v2", "1.1", "v3"};
    static const char *const prealloc[] = {"off", "metadata", "falloc", "full"};
    static const char *const ctype[] = {"zlib", "zstd"};
    const char *const *v = (const char *const *)cc->val;
    int i;

    if (v[CO_COMPAT]) {
        if ((i = pick(v[CO_COMPAT], compat, ARRAY_LEN(compat))) < 0)
            return create_error(dst, "qcow2",
                                "Parameter 'version' does not "
                                "accept value '%s'",
                                v[CO_COMPAT]);
        o->compat = i < 2 ? 2 : 3;
    }
    if (v[CO_BACKING_FMT] && parse_format(v[CO_BACKING_FMT], &o->fmt) < 0)
        return create_error(dst, "qcow2",
                            "Parameter 'backing-fmt' does not "
                            "accept value '%s'",
                            v[CO_BACKING_FMT]);
    o->fmt = QIMG_FMT_QCOW2;
    if (v[CO_PREALLOC]) {
        if ((i = pick(v[CO_PREALLOC], prealloc, ARRAY_LEN(prealloc))) < 0)
            return create_error(dst, "qcow2",
                                "Parameter 'preallocation' "
                                "does not accept value '%s'",
                                v[CO_PREALLOC]);
        o->prealloc = (enum qimg_prealloc)i;
    }
    if (v[CO_COMPRESSION_TYPE]) {
        i = pick(v[CO_COMPRESSION_TYPE], ctype, ARRAY_LEN(ctype));
        if (i < 0)
            return create_error(dst, "qcow2",
                                "Parameter 'compression-type' "
                                "does not accept value '%s'",
                                v[CO_COMPRESSION_TYPE]);
        o->compression_type = i;
    }
    return 0;
}

static int qcow2_to_lib(const struct conv_create *cc, const char *dst,
                        struct qimg_create_opts *o)
{
    uint64_t n;
    bool b;

    if (qcow2_enums(cc, dst, o) < 0)
        return -1;
    /* Values too wide for the library's fields become ones it refuses
     * with the same message. */
    if (cc->val[CO_CLUSTER_SIZE] &&
        parse_size(cc->val[CO_CLUSTER_SIZE], &n) == 0)
        o->cluster_size = n > UINT32_MAX ? 0 : (uint32_t)n;
    if (cc->val[CO_REFCOUNT_BITS] &&
        parse_u64(cc->val[CO_REFCOUNT_BITS], &n) == 0)
        o->refcount_bits = n > 64 ? 0 : (uint32_t)n;
    if (cc->val[CO_LAZY_REFCOUNTS] &&
        parse_bool(cc->val[CO_LAZY_REFCOUNTS], &b) == 0)
        o->lazy_refcounts = b;
    if (cc->val[CO_EXTENDED_L2] && parse_bool(cc->val[CO_EXTENDED_L2], &b) == 0)
        o->extended_l2 = b;
    o->backing_file = cc->val[CO_BACKING_FILE];
    o->backing_fmt = cc->val[CO_BACKING_FMT];
    if (o->backing_fmt && !o->backing_file)
        return create_error(dst, "qcow2", "%s",
                            "Backing format cannot be "
                            "used without backing file");
    return 0;
}

int conv_opts_to_lib(const struct conv_create *cc, uint64_t size,
                     const char *dst, struct qimg_create_opts *o)
{
    struct qimg_create_opts def = QIMG_CREATE_OPTS_INIT;

    *o = def;
    o->fmt = cc->fmt;
    o->size = size; /* qemu-img replaces any size=... by the source's */
    if (cc->fmt == QIMG_FMT_RAW)
        return raw_to_lib(cc, dst, o);
    return qcow2_to_lib(cc, dst, o);
}

/* ---- -l ---------------------------------------------------------------- */

static int snapshot_key(const char *name, const char *value, char **id,
                        char **sname)
{
    char **slot;

    if (!strcmp(name, "snapshot.id"))
        slot = id;
    else if (!strcmp(name, "snapshot.name"))
        slot = sname;
    else {
        cli_error("Invalid parameter '%s'", name);
        return -1;
    }
    free(*slot);
    *slot = xstrdup(value);
    return 0;
}

static int parse_snapshot_opts(const char *arg, char **id, char **name)
{
    const char *s = arg;
    int ret = 0;

    while (*s && ret == 0) {
        char *key, *value;
        s = next_elem(s, &key, &value);
        if (!value) {
            cli_error("warning: short-form boolean option '%s' deprecated",
                      key);
            fprintf(stderr, "Please use %s=on instead\n", key);
            bare_flag(key, &value);
        }
        if (strcmp(key, "id")) /* QemuOpts takes "id" for itself */
            ret = snapshot_key(key, value, id, name);
        free(key);
        free(value);
    }
    return ret;
}

int conv_parse_snapshot(const char *arg, char **id, char **name, bool *plain)
{
    *id = *name = NULL;
    *plain = strncmp(arg, "snapshot.", 9) != 0;
    if (*plain) {
        *id = xstrdup(arg);
        *name = xstrdup(arg);
        return 0;
    }
    if (parse_snapshot_opts(arg, id, name) == 0)
        return 0;
    cli_error("Failed in parsing snapshot param '%s'", arg);
    free(*id);
    free(*name);
    *id = *name = NULL;
    return -1;
}
