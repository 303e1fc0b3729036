/*
 * error.h - the per-thread last error (error.c): every failing library
 * call records one line before returning a negative errno.
 */
#ifndef QIMG_ERROR_H
#define QIMG_ERROR_H

#include <inttypes.h> /* PRIx64 and friends, for the messages */

#include "qimg.h"

#ifndef QIMG_VERSION
#define QIMG_VERSION "0.0.0"
#endif

int qimg_err(int errnum, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* As qimg_err, with ": strerror(errnum)" appended. */
int qimg_err_errno(int errnum, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
void qimg_err_prefix(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));
/* Make sure a failure has a message (strerror) without replacing one. */
int qimg_err_keep(int ret);
int qimg_corrupt_at(const char *where, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
#define QIMG_STR2(x) #x
#define QIMG_STR(x) QIMG_STR2(x)
/* Untrusted on-disk value found bad: message, -EIO, where it fired. */
#define qimg_corrupt(...)                                                      \
    qimg_corrupt_at(__FILE__ ":" QIMG_STR(__LINE__), __VA_ARGS__)

#endif
