/*
 * txn.c - atomic snapshot operations (qcow2-format.md §5.5).
 */
#include "internal.h"

#include <errno.h>

int txn_snapshot_create(qimg_image *img, const char *name)
{
    (void)img;
    (void)name;
    return qimg_err(ENOTSUP, "not yet");
}

int txn_snapshot_apply(qimg_image *img, int snap_idx)
{
    (void)img;
    (void)snap_idx;
    return qimg_err(ENOTSUP, "not yet");
}

int txn_snapshot_delete(qimg_image *img, int snap_idx)
{
    (void)img;
    (void)snap_idx;
    return qimg_err(ENOTSUP, "not yet");
}
