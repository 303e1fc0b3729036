/*
 * opts.c - parsing sizes, numbers and format names as qemu-img does.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int parse_format(const char *s, enum qimg_format *out)
{
    if (!strcmp(s, "qcow2"))
        *out = QIMG_FMT_QCOW2;
    else if (!strcmp(s, "raw"))
        *out = QIMG_FMT_RAW;
    else
        return -1;
    return 0;
}

/* QEMU's qemu_strtosz(): leading blanks and '+' allowed, an integer
 * (decimal, or 0x hex with a deprecated suffix) or a decimal fraction
 * ("1.", "1.5") followed by an optional unit k/M/G/T/P/E (binary) or B.
 * Returns 0, -1 (bad syntax) or -2 (out of range); *hex_suffix is set when
 * a hex number carried a unit (QEMU warns about that). */
int parse_size_ex(const char *s, uint64_t *out, bool *hex_suffix)
{
    const char *p = s;
    static const char units[] = "BKMGTPE";
    uint64_t ival, mult = 1;
    double frac = 0, scale = 0.1;
    bool is_hex, has_frac = false;
    char *end;
    const char *u;

    *hex_suffix = false;
    while (*p == ' ' || *p == '\t' || *p == '\n')
        p++;
    if (*p == '+')
        p++;
    if (*p < '0' || *p > '9')
        return -1;
    is_hex = p[0] == '0' && (p[1] == 'x' || p[1] == 'X');
    errno = 0;
    ival = strtoull(p, &end, is_hex ? 16 : 10);
    if (errno == ERANGE)
        return -2;
    if (!is_hex && *end == '.') {
        has_frac = true;
        for (end++; *end >= '0' && *end <= '9'; end++, scale /= 10)
            frac += (*end - '0') * scale;
    }
    u = *end ? strchr(units, *end >= 'a' ? *end - 32 : *end) : NULL;
    if (*end && u) {
        mult = 1ull << (10 * (u - units));
        *hex_suffix = is_hex && *u != 'B';
        end++;
    }
    if (*end)
        return -1;
    if (has_frac && mult == 1 && frac != 0)
        return -1; /* a fraction of a byte */
    if (ival > UINT64_MAX / mult)
        return -2;
    ival *= mult;
    if (frac != 0) {
        double add = frac * (double)mult;
        if ((double)ival + add >= 18446744073709551616.0)
            return -2;
        ival += (uint64_t)add;
    }
    *out = ival;
    return 0;
}

int cli_bad_number(const char *what)
{
    cli_error("Invalid %s specified. You may use k, M, G, T, P or E "
              "suffixes for",
              what);
    cli_error("kilobytes, megabytes, gigabytes, terabytes, petabytes and "
              "exabytes.");
    return 1;
}

int parse_size(const char *s, uint64_t *out)
{
    bool hex_suffix;

    return parse_size_ex(s, out, &hex_suffix);
}

/* --image-opts: "driver=qcow2,file.driver=file,file.filename=X[,...]".
 * Takes the file name, the format and file.locking; other keys are
 * accepted if they name what qimg does anyway. */
int parse_image_opts(const char *spec, char **path, struct qimg_open_opts *o)
{
    char *copy = strdup(spec), *tok, *save = NULL;
    int ret = 0;

    *path = NULL;
    if (!copy)
        return -1;
    for (tok = strtok_r(copy, ",", &save); tok && !ret;
         tok = strtok_r(NULL, ",", &save)) {
        char *eq = strchr(tok, '=');
        const char *val = eq ? eq + 1 : "";
        if (eq)
            *eq = '\0';
        if (!strcmp(tok, "driver")) {
            if (parse_format(val, &o->fmt) < 0) {
                cli_error("Unknown driver '%s'", val);
                ret = -1;
            }
        } else if (!strcmp(tok, "file.filename") || !strcmp(tok, "filename")) {
            free(*path);
            *path = strdup(val);
        } else if (!strcmp(tok, "file.locking")) {
            o->no_locking = !strcmp(val, "off") || !strcmp(val, "false");
        } else if (!strcmp(tok, "file.driver") && !strcmp(val, "file")) {
            continue;
        } else if (!strcmp(tok, "force-share") || !strcmp(tok, "read-only")) {
            continue;
        } else {
            cli_error("Invalid parameter '%s'", tok);
            ret = -1;
        }
    }
    free(copy);
    if (!ret && !*path) {
        cli_error("A file name is needed (file.filename=...)");
        ret = -1;
    }
    if (ret) {
        free(*path);
        *path = NULL;
    }
    return ret;
}

bool cache_mode_ok(const char *m)
{
    static const char *const modes[] = {"none",   "off",        "writeback",
                                        "unsafe", "directsync", "writethrough"};

    for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++)
        if (!strcmp(m, modes[i]))
            return true;
    return false;
}

int cli_open(qimg_image **img, const char *file, const char *fmt,
             bool image_opts, struct qimg_open_opts *o)
{
    char *path = NULL;
    int ret;

    if (fmt && parse_format(fmt, &o->fmt) < 0) {
        cli_error("Could not open '%s': Unknown driver '%s'", file, fmt);
        return -1;
    }
    if (image_opts && parse_image_opts(file, &path, o) < 0)
        return -1;
    ret = qimg_image_open(img, path ? path : file, o);
    free(path);
    if (ret < 0)
        cli_lib_error("Could not open '%s': ", file);
    return ret < 0 ? -1 : 0;
}

bool cli_same_file(const char *a, const char *b)
{
    struct stat sa, sb;

    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev &&
           sa.st_ino == sb.st_ino;
}

char *cli_backing_path(const char *image, const char *backing)
{
    const char *slash = strrchr(image, '/');
    size_t dir_len;
    char *p;

    if (backing[0] == '/' || !slash)
        return strdup(backing);
    dir_len = (size_t)(slash - image) + 1;
    p = malloc(dir_len + strlen(backing) + 1);
    if (p) {
        memcpy(p, image, dir_len);
        strcpy(p + dir_len, backing);
    }
    return p;
}
