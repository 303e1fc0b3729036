/*
 * create_opts.c - the `-o name=value,...` list of qimg create.
 *
 * qemu-img 7.2 parses the list with QemuOpts: "name=value" pairs, ",,"
 * escapes a comma inside a value, a bare "name" means name=on and a bare
 * "noname" name=off, "id" is ignored, the last setting of a name wins.
 * Each value is checked against its type as it is read (size, number,
 * bool); enumerations (compat, preallocation, compression_type,
 * backing_fmt) are only checked by the format driver, after the
 * "Formatting" line has been printed. This file reproduces both steps,
 * the line itself and the `-o help` listings. It does not create
 * anything; cmd_create.c drives the sequence.
 */
#include "cli.h"
#include "create_opts.h"

#include <errno.h>
#include <stdarg.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum ctype { CT_SIZE, CT_NUM, CT_BOOL, CT_STR };

struct copt_desc {
    const char *name;
    enum ctype type;
    const char *def; /* shown in the Formatting line when unset (qcow2) */
};

static const struct copt_desc descs[COPT_COUNT] = {
    [COPT_SIZE] = {"size", CT_SIZE, NULL},
    [COPT_CLUSTER_SIZE] = {"cluster_size", CT_SIZE, "65536"},
    [COPT_COMPAT] = {"compat", CT_STR, NULL},
    [COPT_REFCOUNT_BITS] = {"refcount_bits", CT_NUM, "16"},
    [COPT_LAZY_REFCOUNTS] = {"lazy_refcounts", CT_BOOL, "off"},
    [COPT_EXTENDED_L2] = {"extended_l2", CT_BOOL, "off"},
    [COPT_COMPRESSION_TYPE] = {"compression_type", CT_STR, "zlib"},
    [COPT_PREALLOCATION] = {"preallocation", CT_STR, NULL},
    [COPT_BACKING_FILE] = {"backing_file", CT_STR, NULL},
    [COPT_BACKING_FMT] = {"backing_fmt", CT_STR, NULL},
    [COPT_NOCOW] = {"nocow", CT_BOOL, NULL},
    [COPT_EXTENT_SIZE_HINT] = {"extent_size_hint", CT_SIZE, NULL},
    [COPT_DATA_FILE] = {"data_file", CT_STR, NULL},
    [COPT_DATA_FILE_RAW] = {"data_file_raw", CT_BOOL, NULL},
    [COPT_ENCRYPT_NUM] = {"encrypt.iter-time", CT_NUM, NULL},
    [COPT_ENCRYPT_STR] = {"encrypt.state", CT_STR, NULL},
};

/* The options each format accepts, in the order the Formatting line lists
 * them. nocow and extent_size_hint are hints for the host file system;
 * qimg accepts and ignores them. */
static const enum copt qcow2_order[] = {
    COPT_CLUSTER_SIZE,     COPT_EXTENDED_L2,   COPT_PREALLOCATION,
    COPT_COMPRESSION_TYPE, COPT_SIZE,          COPT_COMPAT,
    COPT_BACKING_FILE,     COPT_BACKING_FMT,   COPT_LAZY_REFCOUNTS,
    COPT_REFCOUNT_BITS,    COPT_NOCOW,         COPT_EXTENT_SIZE_HINT,
};
/* What qemu-img amend accepts for qcow2 (the encrypt.* names by type). */
static const struct {
    const char *name;
    enum copt id;
} amend_names[] = {
    {"backing_file", COPT_BACKING_FILE},
    {"backing_fmt", COPT_BACKING_FMT},
    {"compat", COPT_COMPAT},
    {"data_file", COPT_DATA_FILE},
    {"data_file_raw", COPT_DATA_FILE_RAW},
    {"encrypt.iter-time", COPT_ENCRYPT_NUM},
    {"encrypt.keyslot", COPT_ENCRYPT_NUM},
    {"encrypt.new-secret", COPT_ENCRYPT_STR},
    {"encrypt.old-secret", COPT_ENCRYPT_STR},
    {"encrypt.state", COPT_ENCRYPT_STR},
    {"lazy_refcounts", COPT_LAZY_REFCOUNTS},
    {"refcount_bits", COPT_REFCOUNT_BITS},
    {"size", COPT_SIZE},
};
static const enum copt raw_order[] = {
    COPT_SIZE, COPT_NOCOW, COPT_PREALLOCATION, COPT_EXTENT_SIZE_HINT,
};

/* qcow2 options QEMU has and qimg does not implement. */
static const char *const unsupported[] = {
    "data_file",          "data_file_raw",       "encryption",
    "encrypt.cipher-alg", "encrypt.cipher-mode", "encrypt.format",
    "encrypt.hash-alg",   "encrypt.iter-time",   "encrypt.ivgen-alg",
    "encrypt.ivgen-hash-alg", "encrypt.key-secret",
};

/* QEMU 7.2's block driver names (the QAPI BlockdevDriver enumeration as
 * this build accepts it): the values backing_fmt may take. */
static const char *const block_drivers[] = {
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop",
    "compress", "copy-before-write", "copy-on-read", "dmg", "file",
    "snapshot-access", "ftp", "ftps", "gluster", "host_cdrom",
    "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow",
    "qcow2", "qed", "quorum", "raw", "rbd", "replication", "ssh",
    "throttle", "vdi", "vhdx", "vmdk", "vpc", "vvfat",
};

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

bool copts_is_block_driver(const char *name)
{
    for (size_t i = 0; i < ARRAY_LEN(block_drivers); i++)
        if (!strcmp(block_drivers[i], name))
            return true;
    return false;
}

/* ---- -o help ----------------------------------------------------------- */

enum { H_QCOW2 = 1, H_QCOW2_FILE = 2, H_RAW = 4, H_RAW_FILE = 8 };

struct help_line {
    const char *opt, *text;
    unsigned in; /* H_* listings that show the line */
};

static const struct help_line help_lines[] = {
    {"backing_file=<str>", "File name of a base image", 3},
    {"backing_fmt=<str>", "Image format of the base image", 3},
    {"cluster_size=<size>", "qcow2 cluster size", 3},
    {"compat=<str>", "Compatibility level (v2 [0.10] or v3 [1.1])", 3},
    {"compression_type=<str>",
     "Compression method used for image cluster compression", 3},
    {"data_file=<str>", "File name of an external data file", 3},
    {"data_file_raw=<bool (on/off)>",
     "The external data file must stay valid as a raw image", 3},
    {"encrypt.cipher-alg=<str>", "Name of encryption cipher algorithm", 3},
    {"encrypt.cipher-mode=<str>", "Name of encryption cipher mode", 3},
    {"encrypt.format=<str>",
     "Encrypt the image, format choices: 'aes', 'luks'", 3},
    {"encrypt.hash-alg=<str>", "Name of encryption hash algorithm", 3},
    {"encrypt.iter-time=<num>", "Time to spend in PBKDF in milliseconds", 3},
    {"encrypt.ivgen-alg=<str>", "Name of IV generator algorithm", 3},
    {"encrypt.ivgen-hash-alg=<str>", "Name of IV generator hash algorithm",
     3},
    {"encrypt.key-secret=<str>",
     "ID of secret providing qcow AES key or LUKS passphrase", 3},
    {"encryption=<bool (on/off)>",
     "Encrypt the image with format 'aes'. (Deprecated in favor of "
     "encrypt.format=aes)",
     3},
    {"extended_l2=<bool (on/off)>", "Extended L2 tables", 3},
    {"extent_size_hint=<size>",
     "Extent size hint for the image file, 0 to disable",
     H_QCOW2_FILE | H_RAW_FILE},
    {"lazy_refcounts=<bool (on/off)>", "Postpone refcount updates", 3},
    {"nocow=<bool (on/off)>", "Turn off copy-on-write (valid only on btrfs)",
     H_QCOW2_FILE | H_RAW_FILE},
    {"preallocation=<str>",
     "Preallocation mode (allowed values: off, metadata, falloc, full)", 3},
    {"preallocation=<str>",
     "Preallocation mode (allowed values: off, falloc, full)", H_RAW_FILE},
    {"refcount_bits=<num>", "Width of a reference count entry in bits", 3},
    {"size=<size>", "Virtual disk size", 15},
};

int copts_print_help(const char *fmt, const char *filename)
{
    unsigned which;

    if (!strcmp(fmt, "qcow2"))
        which = filename ? H_QCOW2_FILE : H_QCOW2;
    else if (!strcmp(fmt, "raw"))
        which = filename ? H_RAW_FILE : H_RAW;
    else {
        cli_error("Unknown file format '%s'", fmt);
        return 1;
    }
    if (filename)
        printf("Supported options:\n");
    else
        printf("Supported %s options:\n", fmt);
    for (size_t i = 0; i < ARRAY_LEN(help_lines); i++)
        if (help_lines[i].in & which)
            printf("  %-22s - %s\n", help_lines[i].opt, help_lines[i].text);
    if (!filename)
        printf("\nThe protocol level may support further options.\n"
               "Specify the target filename to include those options.\n");
    return 0;
}

static const struct help_line amend_help[] = {
    {"backing_file=<str>", "File name of a base image", 0},
    {"backing_fmt=<str>", "Image format of the base image", 0},
    {"compat=<str>", "Compatibility level (v2 [0.10] or v3 [1.1])", 0},
    {"data_file=<str>", "File name of an external data file", 0},
    {"data_file_raw=<bool (on/off)>",
     "The external data file must stay valid as a raw image", 0},
    {"encrypt.iter-time=<num>", "Time to spend in PBKDF in milliseconds", 0},
    {"encrypt.keyslot=<num>", "Select a single keyslot to modify explicitly",
     0},
    {"encrypt.new-secret=<str>",
     "New secret to set in the matching keyslots. Empty string to erase", 0},
    {"encrypt.old-secret=<str>", "Select all keyslots that match this password",
     0},
    {"encrypt.state=<str>",
     "Select new state of affected keyslots (active/inactive)", 0},
    {"lazy_refcounts=<bool (on/off)>", "Postpone refcount updates", 0},
    {"refcount_bits=<num>", "Width of a reference count entry in bits", 0},
    {"size=<size>", "Virtual disk size", 0},
};

void copts_print_amend_help(void)
{
    printf("Amend options for 'qcow2':\n");
    for (size_t i = 0; i < ARRAY_LEN(amend_help); i++)
        printf("  %-22s - %s\n", amend_help[i].opt, amend_help[i].text);
}

/* ---- Reading the list -------------------------------------------------- */

bool copts_list_valid(const char *list)
{
    size_t len = strlen(list), i = len;

    if (!list[0] || list[0] == ',')
        return false;
    while (i > 0 && list[i - 1] == ',')
        i--;
    return (len - i) % 2 == 0;
}

int copts_append(char **options, const char *list)
{
    size_t old = *options ? strlen(*options) + 1 : 0;
    char *joined;

    if (!copts_list_valid(list)) {
        cli_error("Invalid option list: %s", list);
        return -1;
    }
    joined = realloc(*options, old + strlen(list) + 1);
    if (!joined) {
        cli_error("Out of memory");
        return -1;
    }
    if (old)
        joined[old - 1] = ',';
    strcpy(joined + old, list);
    *options = joined;
    return 0;
}

/* One value: up to the next single comma; ",," stands for ','. Returns
 * the position of that comma (or the end). */
static const char *read_value(const char *s, char **out)
{
    char *v = malloc(strlen(s) + 1);
    size_t n = 0;

    if (!v) {
        fprintf(stderr, "%s: Out of memory\n", cli_prog);
        exit(1);
    }
    while (*s && !(s[0] == ',' && s[1] != ',')) {
        v[n++] = *s;
        s += s[0] == ',' ? 2 : 1;
    }
    v[n] = '\0';
    *out = v;
    return s;
}

/* Next "name=value" or bare "name"; returns where the one after starts. */
static const char *next_pair(const char *s, char **name, char **value)
{
    size_t len = strcspn(s, "=,");

    *name = strndup(s, len);
    if (!*name) {
        fprintf(stderr, "%s: Out of memory\n", cli_prog);
        exit(1);
    }
    if (s[len] == '=') {
        s = read_value(s + len + 1, value);
    } else {
        bool is_no = !strncmp(*name, "no", 2);
        if (is_no)
            memmove(*name, *name + 2, strlen(*name + 2) + 1);
        *value = strdup(is_no ? "off" : "on");
        s += len;
    }
    return *s == ',' ? s + 1 : s;
}

bool copts_has_help(const char *list)
{
    const char *s = list;
    bool found = false;

    while (*s && !found) {
        char *elem;
        s = read_value(s, &elem);
        if (*s == ',')
            s++;
        found = !strcmp(elem, "help") || !strcmp(elem, "?");
        free(elem);
    }
    return found;
}

/* qemu_strtou64() with base 0: decimal, 0x hex, 0 octal; "-1" wraps. */
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
    static const char *const yes[] = {"on", "yes", "true", "y"};
    static const char *const no[] = {"off", "no", "false", "n"};

    for (size_t i = 0; i < ARRAY_LEN(yes); i++) {
        if (!strcmp(s, yes[i]) || !strcmp(s, no[i])) {
            *out = !strcmp(s, yes[i]);
            return 0;
        }
    }
    return -EINVAL;
}

static int find_opt(const struct create_params *p, const char *name)
{
    enum qimg_format fmt = p->fmt;

    if (p->amend) {
        for (size_t i = 0; i < ARRAY_LEN(amend_names); i++)
            if (!strcmp(amend_names[i].name, name))
                return (int)amend_names[i].id;
        return -1;
    }
    const enum copt *order = fmt == QIMG_FMT_RAW ? raw_order : qcow2_order;
    size_t n = fmt == QIMG_FMT_RAW ? ARRAY_LEN(raw_order)
                                   : ARRAY_LEN(qcow2_order);

    for (size_t i = 0; i < n; i++)
        if (!strcmp(descs[order[i]].name, name))
            return (int)order[i];
    return -1;
}

static bool is_unsupported(enum qimg_format fmt, const char *name)
{
    for (size_t i = 0; fmt == QIMG_FMT_QCOW2 && i < ARRAY_LEN(unsupported);
         i++)
        if (!strcmp(unsupported[i], name))
            return true;
    return false;
}

/* "qimg: FILE: <msg>", or without a file name (measure) "qimg: <msg>". */
static void opt_error(const char *filename, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void opt_error(const char *filename, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (filename)
        cli_error("%s: %s", filename, msg);
    else
        cli_error("%s", msg);
}

/* Check `value` against the option's type; print the error. */
static int parse_typed(struct create_params *p, enum copt id,
                       const char *name, const char *value,
                       const char *filename)
{
    int ret = 0;

    switch (descs[id].type) {
    case CT_SIZE:
        ret = parse_size(value, &p->num[id]);
        if (ret == -2) {
            opt_error(filename, "Value '%s' is out of range for parameter '%s'",
                      value, name);
        } else if (ret < 0) {
            opt_error(filename, "Parameter '%s' expects a non-negative number "
                      "below 2^64", name);
            fputs("Optional suffix k, M, G, T, P or E means kilo-, mega-, "
                  "giga-, tera-, peta-\nand exabytes, respectively.\n",
                  stderr);
        }
        break;
    case CT_NUM:
        ret = parse_u64(value, &p->num[id]);
        if (ret == -ERANGE)
            opt_error(filename, "Value '%s' is too large for parameter '%s'",
                      value, name);
        else if (ret < 0)
            opt_error(filename, "Parameter '%s' expects a number", name);
        break;
    case CT_BOOL:
        ret = parse_bool(value, &p->flag[id]);
        if (ret < 0)
            opt_error(filename, "Parameter '%s' expects 'on' or 'off'",
                      name);
        break;
    case CT_STR:
        break;
    }
    return ret < 0 ? -1 : 0;
}

static int set_option(struct create_params *p, const char *name,
                      const char *value, const char *filename)
{
    int id;

    if (!strcmp(name, "id"))
        return 0;
    id = find_opt(p, name);
    if (id < 0 && p->amend) {
        struct create_params c = {.fmt = QIMG_FMT_QCOW2};
        opt_error(filename, "Invalid parameter '%s'", name);
        if (find_opt(&c, name) >= 0 || is_unsupported(QIMG_FMT_QCOW2, name))
            fputs("This option is only supported for image creation\n",
                  stderr);
        return -1;
    }
    if (id < 0 && is_unsupported(p->fmt, name)) {
        opt_error(filename, "Parameter '%s' is not supported by qimg",
                  name);
        return -1;
    }
    if (id < 0) {
        opt_error(filename, "Invalid parameter '%s'", name);
        return -1;
    }
    if (parse_typed(p, (enum copt)id, name, value, filename) < 0)
        return -1;
    copts_set_str(p, (enum copt)id, value);
    return 0;
}

int copts_parse(struct create_params *p, const char *list,
                const char *filename)
{
    const char *s = list;
    int ret = 0;

    while (*s && ret == 0) {
        char *name, *value;
        s = next_pair(s, &name, &value);
        ret = set_option(p, name, value, filename);
        free(name);
        free(value);
    }
    return ret;
}

void copts_set_str(struct create_params *p, enum copt id, const char *s)
{
    char *copy = strdup(s);

    if (!copy) {
        fprintf(stderr, "%s: Out of memory\n", cli_prog);
        exit(1);
    }
    free(p->str[id]);
    p->str[id] = copy;
    p->is_set[id] = true;
}

void copts_set_num(struct create_params *p, enum copt id, uint64_t v)
{
    char buf[32];

    snprintf(buf, sizeof buf, "%" PRIu64, v);
    copts_set_str(p, id, buf);
    p->num[id] = v;
}

const char *copts_str(const struct create_params *p, enum copt id)
{
    return p->is_set[id] ? p->str[id] : NULL;
}

void copts_free(struct create_params *p)
{
    for (int i = 0; i < COPT_COUNT; i++)
        free(p->str[i]);
}

/* ---- The Formatting line ----------------------------------------------- */

/* Values are printed with each ',' doubled, as QEMU does. */
static void print_escaped(const char *s)
{
    for (; *s; s++) {
        if (*s == ',')
            putchar(',');
        putchar(*s);
    }
}

void copts_print_formatting(const struct create_params *p,
                            const char *filename)
{
    bool is_raw = p->fmt == QIMG_FMT_RAW;
    const enum copt *order = is_raw ? raw_order : qcow2_order;
    size_t n = is_raw ? ARRAY_LEN(raw_order) : ARRAY_LEN(qcow2_order);
    const char *sep = "";

    printf("Formatting '%s', fmt=%s ", filename, is_raw ? "raw" : "qcow2");
    for (size_t i = 0; i < n; i++) {
        enum copt id = order[i];
        const struct copt_desc *d = &descs[id];
        if (!p->is_set[id] && !d->def)
            continue;
        printf("%s%s=", sep, d->name);
        sep = " ";
        if (!p->is_set[id])
            fputs(d->def, stdout);
        else if (d->type == CT_SIZE || d->type == CT_NUM)
            printf("%" PRId64, (int64_t)p->num[id]);
        else
            print_escaped(p->str[id]);
    }
    putchar('\n');
    fflush(stdout);
}

/* ---- Driver-level conversion ------------------------------------------- */

static int enum_index(const char *s, const char *const *names, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (!strcmp(s, names[i]))
            return (int)i;
    return -1;
}

static int bad_value(const char *filename, const char *param, const char *v)
{
    cli_error("%s: Parameter '%s' does not accept value '%s'", filename,
              param, v);
    return -1;
}

/* compat, backing_fmt, preallocation, compression_type: checked in this
 * order, the order QEMU's qcow2 driver reads its options in. */
static int qcow2_enums(const struct create_params *p,
                       struct qimg_create_opts *o, const char *filename)
{
    static const char *const compat[] = {"0.10", "v2", "1.1", "v3"};
    static const char *const prealloc[] = {"off", "metadata", "falloc",
                                           "full"};
    static const char *const ctype[] = {"zlib", "zstd"};
    const char *v;
    int i;

    if ((v = copts_str(p, COPT_COMPAT))) {
        if ((i = enum_index(v, compat, ARRAY_LEN(compat))) < 0)
            return bad_value(filename, "version", v);
        o->compat = i < 2 ? 2 : 3;
    }
    v = copts_str(p, COPT_BACKING_FMT);
    if (v && enum_index(v, block_drivers, ARRAY_LEN(block_drivers)) < 0)
        return bad_value(filename, "backing-fmt", v);
    if ((v = copts_str(p, COPT_PREALLOCATION))) {
        if ((i = enum_index(v, prealloc, ARRAY_LEN(prealloc))) < 0)
            return bad_value(filename, "preallocation", v);
        o->prealloc = (enum qimg_prealloc)i;
    }
    if ((v = copts_str(p, COPT_COMPRESSION_TYPE))) {
        if ((i = enum_index(v, ctype, ARRAY_LEN(ctype))) < 0)
            return bad_value(filename, "compression-type", v);
        o->compression_type = i;
    }
    return 0;
}

static int to_qcow2(const struct create_params *p, struct qimg_create_opts *o,
                    const char *filename)
{
    if (qcow2_enums(p, o, filename) < 0)
        return -1;
    /* The library takes 32-bit values; anything wider is invalid anyway,
     * so hand it a value it rejects with the same message. */
    if (p->is_set[COPT_CLUSTER_SIZE])
        o->cluster_size = p->num[COPT_CLUSTER_SIZE] > UINT32_MAX
                              ? 0
                              : (uint32_t)p->num[COPT_CLUSTER_SIZE];
    if (p->is_set[COPT_REFCOUNT_BITS])
        o->refcount_bits = p->num[COPT_REFCOUNT_BITS] > 64
                               ? 0
                               : (uint32_t)p->num[COPT_REFCOUNT_BITS];
    o->lazy_refcounts = p->flag[COPT_LAZY_REFCOUNTS];
    o->extended_l2 = p->flag[COPT_EXTENDED_L2];
    o->backing_file = copts_str(p, COPT_BACKING_FILE);
    o->backing_fmt = copts_str(p, COPT_BACKING_FMT);
    if (o->backing_fmt && !o->backing_file) {
        cli_error("%s: Backing format cannot be used without backing file",
                  filename);
        return -1;
    }
    return 0;
}

static int to_raw(const struct create_params *p, struct qimg_create_opts *o,
                  const char *filename)
{
    static const char *const prealloc[] = {"off", "metadata", "falloc",
                                           "full"};
    const char *v = copts_str(p, COPT_PREALLOCATION);
    int i;

    if (v) {
        if ((i = enum_index(v, prealloc, ARRAY_LEN(prealloc))) < 0) {
            cli_error("%s: invalid parameter value: %s", filename, v);
            return -1;
        }
        o->prealloc = (enum qimg_prealloc)i;
    }
    /* qemu-img rounds a raw file up to whole 512-byte sectors too (the
     * library only does so for qcow2); 2^63 and more stays as it is for
     * the library to refuse. */
    if (o->size <= (uint64_t)INT64_MAX)
        o->size = (o->size + 511) & ~(uint64_t)511;
    return 0;
}

int copts_to_lib(const struct create_params *p, struct qimg_create_opts *o,
                 const char *filename)
{
    struct qimg_create_opts def = QIMG_CREATE_OPTS_INIT;

    *o = def;
    o->fmt = p->fmt;
    o->size = p->num[COPT_SIZE];
    if (p->fmt == QIMG_FMT_RAW)
        return to_raw(p, o, filename);
    return to_qcow2(p, o, filename);
}
