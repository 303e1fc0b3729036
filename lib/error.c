/*
 * error.c - the per-thread last error (STYLE.md §3).
 *
 * Every failing library call records one line here before returning a
 * negative errno. Only the first code to see a problem sets the message;
 * outer layers may prefix context with qimg_err_prefix().
 */
#include "error.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static _Thread_local struct qimg_error last_error;

const struct qimg_error *qimg_last_error(void)
{
    return &last_error;
}

void qimg_error_clear(void)
{
    memset(&last_error, 0, sizeof last_error);
}

const char *qimg_version(void)
{
    return QIMG_VERSION;
}

static void verr(int errnum, const char *fmt, va_list ap)
{
    last_error.errnum = errnum;
    last_error.where[0] = '\0';
    vsnprintf(last_error.message, sizeof last_error.message, fmt, ap);
}

int qimg_err(int errnum, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verr(errnum, fmt, ap);
    va_end(ap);
    return -errnum;
}

int qimg_err_errno(int errnum, const char *fmt, ...)
{
    va_list ap;
    size_t n;

    va_start(ap, fmt);
    verr(errnum, fmt, ap);
    va_end(ap);
    n = strlen(last_error.message);
    snprintf(last_error.message + n, sizeof last_error.message - n, ": %s",
             strerror(errnum));
    return -errnum;
}

void qimg_err_prefix(const char *fmt, ...)
{
    char buf[sizeof last_error.message];
    size_t n, m;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    n = strlen(buf);
    m = strlen(last_error.message);
    if (n + m >= sizeof buf)
        m = sizeof buf - 1 - n;
    memcpy(buf + n, last_error.message, m);
    buf[n + m] = '\0';
    memcpy(last_error.message, buf, n + m + 1);
}

int qimg_err_keep(int ret)
{
    if (ret < 0 && last_error.errnum == 0)
        return qimg_err(-ret, "%s", strerror(-ret));
    return ret;
}

int qimg_corrupt_at(const char *where, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    verr(EIO, fmt, ap);
    va_end(ap);
    snprintf(last_error.where, sizeof last_error.where, "%s", where);
    return -EIO;
}
