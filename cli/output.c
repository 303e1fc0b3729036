/*
 * output.c - number formatting and a JSON printer matching QEMU's.
 *
 * QEMU prints sizes with "%0.3g" after a 1000/1024 correction
 * (size_to_str) and qemu-io with "%.3f" minus a ".000" (cvtstr). Its JSON
 * objects are hash tables: keys come out in the order of their bucket
 * (tdb_hash % 512), and within a bucket newest first. Reproducing that
 * order is the only way to print byte-identical --output=json.
 */
#include "cli.h"

#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void fmt_size(char *buf, size_t n, uint64_t val)
{
    static const char *suffixes[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    int i;

    frexp((double)val / (1000.0 / 1024.0), &i);
    i = (i - 1) / 10;
    if (i < 0)
        i = 0;
    if (i > 6)
        i = 6;
    snprintf(buf, n, "%0.3g %sB", (double)val / (double)(1ull << (i * 10)),
             suffixes[i]);
}

void fmt_cvtstr(char *buf, size_t n, double v)
{
    static const char *suffixes[] = {" bytes", " KiB", " MiB", " GiB",
                                     " TiB",   " PiB", " EiB"};
    int i = 0;
    char *trim;

    while (i < 6 && v >= 1024.0) {
        v /= 1024.0;
        i++;
    }
    snprintf(buf, n > 8 ? n - 8 : n, "%.3f", v);
    trim = strstr(buf, ".000");
    if (trim)
        *trim = '\0';
    strncat(buf, suffixes[i], n - strlen(buf) - 1);
}

/* ---- JSON ------------------------------------------------------------- */

enum jv_kind { JV_OBJ, JV_ARR, JV_STR, JV_INT, JV_UINT, JV_BOOL, JV_DBL };

struct jv {
    enum jv_kind kind;
    char *s;
    int64_t i;
    uint64_t u;
    double d;
    bool b;
    /* object members / array elements, in insertion order */
    char **keys;
    struct jv **vals;
    size_t n;
};

static struct jv *jv_new(enum jv_kind k)
{
    struct jv *v = calloc(1, sizeof *v);

    if (!v) {
        fprintf(stderr, "%s: Out of memory\n", cli_prog);
        exit(1);
    }
    v->kind = k;
    return v;
}

struct jv *jv_obj(void)
{
    return jv_new(JV_OBJ);
}

struct jv *jv_arr(void)
{
    return jv_new(JV_ARR);
}

struct jv *jv_str(const char *s)
{
    struct jv *v = jv_new(JV_STR);

    v->s = strdup(s ? s : "");
    return v;
}

struct jv *jv_int(int64_t i)
{
    struct jv *v = jv_new(JV_INT);

    v->i = i;
    return v;
}

struct jv *jv_uint(uint64_t u)
{
    struct jv *v = jv_new(JV_UINT);

    v->u = u;
    return v;
}

struct jv *jv_bool(bool b)
{
    struct jv *v = jv_new(JV_BOOL);

    v->b = b;
    return v;
}

struct jv *jv_dbl(double d)
{
    struct jv *v = jv_new(JV_DBL);

    v->d = d;
    return v;
}

static void jv_append(struct jv *c, const char *key, struct jv *val)
{
    c->vals = realloc(c->vals, (c->n + 1) * sizeof *c->vals);
    c->keys = realloc(c->keys, (c->n + 1) * sizeof *c->keys);
    if (!c->vals || !c->keys) {
        fprintf(stderr, "%s: Out of memory\n", cli_prog);
        exit(1);
    }
    c->vals[c->n] = val;
    c->keys[c->n] = key ? strdup(key) : NULL;
    c->n++;
}

struct jv *jv_set(struct jv *obj, const char *key, struct jv *val)
{
    jv_append(obj, key, val);
    return val;
}

struct jv *jv_push(struct jv *arr, struct jv *val)
{
    jv_append(arr, NULL, val);
    return val;
}

void jv_free(struct jv *v)
{
    if (!v)
        return;
    for (size_t i = 0; i < v->n; i++) {
        free(v->keys[i]);
        jv_free(v->vals[i]);
    }
    free(v->keys);
    free(v->vals);
    free(v->s);
    free(v);
}

/* QEMU's QDict bucket for a key. */
static unsigned qdict_bucket(const char *name)
{
    uint32_t value = 0x238F13AFu * (uint32_t)strlen(name);

    for (unsigned i = 0; name[i]; i++)
        value += (uint32_t)(unsigned char)name[i] << (i * 5 % 24);
    return (1103515243u * value + 12345u) % 512;
}

/* Decode one UTF-8 sequence; -1 if invalid. */
static int32_t utf8_next(const unsigned char **p)
{
    const unsigned char *s = *p;
    int32_t cp;
    int len;

    if (s[0] < 0x80) {
        *p = s + 1;
        return s[0];
    }
    if ((s[0] & 0xe0) == 0xc0) {
        cp = s[0] & 0x1f;
        len = 2;
    } else if ((s[0] & 0xf0) == 0xe0) {
        cp = s[0] & 0x0f;
        len = 3;
    } else if ((s[0] & 0xf8) == 0xf0) {
        cp = s[0] & 0x07;
        len = 4;
    } else {
        *p = s + 1;
        return -1;
    }
    for (int i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) {
            *p = s + i;
            return -1;
        }
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    *p = s + len;
    if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) ||
        (len == 4 && (cp < 0x10000 || cp > 0x10ffff)) ||
        (cp >= 0xd800 && cp < 0xe000))
        return -1;
    return cp;
}

void json_print_str(FILE *f, const char *str)
{
    const unsigned char *p = (const unsigned char *)str;

    fputc('"', f);
    while (*p) {
        int32_t cp = utf8_next(&p);
        switch (cp) {
        case '"':
            fputs("\\\"", f);
            break;
        case '\\':
            fputs("\\\\", f);
            break;
        case '\b':
            fputs("\\b", f);
            break;
        case '\f':
            fputs("\\f", f);
            break;
        case '\n':
            fputs("\\n", f);
            break;
        case '\r':
            fputs("\\r", f);
            break;
        case '\t':
            fputs("\\t", f);
            break;
        default:
            if (cp < 0) {
                fputs("\\uFFFD", f);
            } else if (cp >= 0x10000) {
                cp -= 0x10000;
                fprintf(f, "\\u%04X\\u%04X", 0xd800 + (cp >> 10),
                        0xdc00 + (cp & 0x3ff));
            } else if (cp < 0x20 || cp >= 0x7f) {
                fprintf(f, "\\u%04X", (unsigned)cp);
            } else {
                fputc(cp, f);
            }
        }
    }
    fputc('"', f);
}

static void indent(FILE *f, int level)
{
    for (int i = 0; i < level; i++)
        fputs("    ", f);
}

static void jv_print_level(FILE *f, const struct jv *v, int level);

static void print_obj(FILE *f, const struct jv *v, int level)
{
    size_t *order;

    if (v->n == 0) {
        /* QEMU's pretty printer breaks even an empty object. */
        fputs("{\n", f);
        indent(f, level);
        fputc('}', f);
        return;
    }
    order = malloc(v->n * sizeof *order);
    if (!order)
        exit(1);
    /* Bucket order; within a bucket, the newest key first. */
    for (size_t i = 0; i < v->n; i++)
        order[i] = i;
    for (size_t i = 1; i < v->n; i++) {
        size_t k = order[i], j = i;
        unsigned bk = qdict_bucket(v->keys[k]);
        while (j > 0) {
            unsigned bj = qdict_bucket(v->keys[order[j - 1]]);
            if (bj < bk || (bj == bk && order[j - 1] > k))
                break;
            order[j] = order[j - 1];
            j--;
        }
        order[j] = k;
    }
    fputc('{', f);
    for (size_t i = 0; i < v->n; i++) {
        fputs(i ? ",\n" : "\n", f);
        indent(f, level + 1);
        json_print_str(f, v->keys[order[i]]);
        fputs(": ", f);
        jv_print_level(f, v->vals[order[i]], level + 1);
    }
    fputc('\n', f);
    indent(f, level);
    fputc('}', f);
    free(order);
}

static void jv_print_level(FILE *f, const struct jv *v, int level)
{
    switch (v->kind) {
    case JV_OBJ:
        print_obj(f, v, level);
        break;
    case JV_ARR:
        if (v->n == 0) {
            fputs("[\n", f);
            indent(f, level);
            fputc(']', f);
            break;
        }
        fputc('[', f);
        for (size_t i = 0; i < v->n; i++) {
            fputs(i ? ",\n" : "\n", f);
            indent(f, level + 1);
            jv_print_level(f, v->vals[i], level + 1);
        }
        fputc('\n', f);
        indent(f, level);
        fputc(']', f);
        break;
    case JV_STR:
        json_print_str(f, v->s);
        break;
    case JV_INT:
        fprintf(f, "%" PRId64, v->i);
        break;
    case JV_UINT:
        fprintf(f, "%" PRIu64, v->u);
        break;
    case JV_BOOL:
        fputs(v->b ? "true" : "false", f);
        break;
    case JV_DBL:
        fprintf(f, "%.17g", v->d);
        break;
    }
}

void jv_print(FILE *f, const struct jv *v)
{
    jv_print_level(f, v, 0);
}

/* ---- Progress ---------------------------------------------------------- */

static struct {
    bool enabled;
    float min_skip;
    float current, last; /* the value now and the one last printed */
} progress;

void progress_init(bool enabled, float min_skip)
{
    progress.enabled = enabled;
    progress.min_skip = min_skip;
    progress.current = progress.last = 0;
}

void progress_print(float delta, int max)
{
    float now = max ? progress.current + delta / 100 * (float)max : delta;

    if (now > 100)
        now = 100;
    progress.current = now;
    if (!(now > progress.last + progress.min_skip ||
          now < progress.last - progress.min_skip || now == 0 || now == 100))
        return;
    progress.last = now;
    if (progress.enabled) {
        printf("    (%3.2f/100%%)\r", (double)now);
        fflush(stdout);
    }
}

void progress_end(void)
{
    if (progress.enabled) {
        putchar('\n');
        fflush(stdout);
    }
}

int cli_output_json(const char *arg, bool *json)
{
    if (arg && strcmp(arg, "json") && strcmp(arg, "human")) {
        cli_error("--output must be used with human or json as argument.");
        return 1;
    }
    *json = arg && !strcmp(arg, "json");
    return 0;
}
