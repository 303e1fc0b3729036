/*
 * opts.c - parsing sizes, numbers and format names as qemu-img does.
 */
#include "cli.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

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

/* QEMU's qemu_strtosz(): integer (decimal or 0x hex) or a decimal fraction
 * with a unit suffix; binary units; optional trailing 'B'/'b' only after a
 * unit or alone. */
int parse_size(const char *s, uint64_t *out)
{
    const char *p = s;
    uint64_t mult = 1, ival;
    char *end;
    double frac = 0;
    int shift = 0;

    if (!*p || *p == '-' || *p == ' ' || *p == '+')
        return -1;
    errno = 0;
    ival = strtoull(p, &end, 0);
    if (end == p)
        return -1;
    if (errno == ERANGE)
        return -2;
    if (*end == '.' && !(p[0] == '0' && (p[1] == 'x' || p[1] == 'X'))) {
        char *fend;
        frac = strtod(end, &fend);
        if (fend == end + 1 && !(fend[0] >= '0' && fend[0] <= '9')) {
            /* "1." is accepted as 1 by QEMU only with a suffix */
        }
        end = fend;
    }
    switch (*end) {
    case 'b':
    case 'B':
        shift = 0;
        end++;
        break;
    case 'k':
    case 'K':
        shift = 10;
        end++;
        break;
    case 'm':
    case 'M':
        shift = 20;
        end++;
        break;
    case 'g':
    case 'G':
        shift = 30;
        end++;
        break;
    case 't':
    case 'T':
        shift = 40;
        end++;
        break;
    case 'p':
    case 'P':
        shift = 50;
        end++;
        break;
    case 'e':
    case 'E':
        shift = 60;
        end++;
        break;
    default:
        break;
    }
    if (*end)
        return -1;
    if (frac != 0 && shift == 0)
        return -1;
    mult = 1ull << shift;
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
