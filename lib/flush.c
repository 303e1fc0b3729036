/*
 * flush.c - the order dirty metadata reaches the disk in.
 *
 * qcow2-format.md §13: refcount blocks, sync, L2 tables, sync, L1 entries,
 * sync, then the queued decrements (now safe) and a last sync. A crash
 * therefore leaves at worst leaked clusters. The table modules hold the
 * dirty state; this file only drives them in order. They reach it when a
 * cache is full through the hook the opener installs (qcow2.c).
 */
#include "flush.h"

#include "file.h"
#include "l1l2.h"
#include "refcount.h"

int qcow2_flush(qimg_image *img)
{
    bool meta = l2_has_dirty(img) || l1_has_dirty(img);
    int ret;

    if (!img->read_write)
        return 0;
    /* 1 of 4: refcount increments (and guest data) durable first ... */
    ret = refcount_flush(img);
    if (ret == 0 && meta)
        ret = file_flush(img);
    /* 2 of 4: ... then the L2 tables that use them ... */
    if (ret == 0 && l2_has_dirty(img)) {
        ret = l2_write_dirty(img);
        if (ret == 0 && l1_has_dirty(img))
            ret = file_flush(img);
    }
    /* 3 of 4: ... then L1 entries naming new L2 tables ... */
    if (ret == 0)
        ret = l1_write_dirty(img);
    if (ret == 0)
        ret = file_flush(img);
    /* 4 of 4: references are gone on disk: decrements are now safe. */
    if (ret == 0 && refcount_has_pending(img)) {
        ret = refcount_apply_pending(img);
        if (ret == 0)
            ret = refcount_flush(img);
        if (ret == 0)
            ret = file_flush(img);
    }
    return ret;
}

int qcow2_flush_hook(void *ctx)
{
    return qcow2_flush(ctx);
}
