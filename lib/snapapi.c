/*
 * snapapi.c - the public snapshot API: list, create, apply, delete.
 *
 * Validates each request as QEMU does and hands it to the transaction
 * (txn.c), which builds the new state beside the old and switches to it.
 */
#include "qimg.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "error.h"
#include "image.h"
#include "roots.h"
#include "snaptable.h"
#include "txn.h"

void qimg_snapshot_list_free(struct qimg_snapshot *list, size_t count)
{
    if (!list)
        return;
    for (size_t i = 0; i < count; i++) {
        free(list[i].id);
        free(list[i].name);
    }
    free(list);
}

int qimg_snapshot_list(struct qimg_snapshot **out, size_t *count,
                       qimg_image *img)
{
    struct qcow2 *q = img->q;
    struct qimg_snapshot *l;

    *out = NULL;
    *count = 0;
    if (!q)
        return 0;
    if (q->hdr.incompatible & INCOMPAT_DATA_FILE)
        return qimg_err(ENOTSUP, "Snapshots are not supported with an "
                                 "external data file");
    l = calloc(q->sn->nb_snaps ? q->sn->nb_snaps : 1, sizeof *l);
    if (!l)
        return qimg_err(ENOMEM, "Out of memory");
    for (uint32_t i = 0; i < q->sn->nb_snaps; i++) {
        const struct snap *s = &q->sn->snaps[i];
        l[i].id = strdup(s->id);
        l[i].name = strdup(s->name);
        if (!l[i].id || !l[i].name) {
            qimg_snapshot_list_free(l, q->sn->nb_snaps);
            return qimg_err(ENOMEM, "Out of memory");
        }
        l[i].vm_state_size = s->vm_state_size;
        l[i].date_sec = s->date_sec;
        l[i].date_nsec = s->date_nsec;
        l[i].vm_clock_nsec = s->vm_clock_nsec;
        l[i].disk_size = s->disk_size;
        l[i].icount = s->icount;
        l[i].l1_table_offset = s->l1_off;
        l[i].l1_size = s->l1_size;
    }
    *out = l;
    *count = q->sn->nb_snaps;
    return 0;
}

static int check_snapshot_ok(qimg_image *img)
{
    if (img->fmt != QIMG_FMT_QCOW2)
        return qimg_err(ENOTSUP, "This image format does not support "
                                 "snapshots");
    if (img->is_view || !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    return 0;
}

int qimg_snapshot_create(qimg_image *img, const char *name)
{
    int ret = check_snapshot_ok(img);

    if (ret < 0)
        return ret;
    if (img->q->sn->nb_snaps >= QCOW_MAX_SNAPSHOTS)
        return qimg_err(EFBIG, "Too many snapshots");
    return roots_write_failed(img, txn_snapshot_create(img, name));
}

int qimg_snapshot_apply(qimg_image *img, const char *id_or_name)
{
    int ret = check_snapshot_ok(img), idx;

    if (ret < 0)
        return ret;
    idx = snap_find_by_id(img->q, id_or_name);
    if (idx < 0)
        idx = snap_find_by_name(img->q, id_or_name);
    if (idx < 0)
        return qimg_err(ENOENT, "Failed to load snapshot: No such file or "
                                "directory");
    return roots_write_failed(img, txn_snapshot_apply(img, idx));
}

int qimg_snapshot_delete(qimg_image *img, const char *name_or_id)
{
    int ret = check_snapshot_ok(img), idx;

    if (ret < 0)
        return ret;
    idx = snap_find_by_name(img->q, name_or_id);
    if (idx < 0)
        idx = snap_find_by_id(img->q, name_or_id);
    if (idx < 0)
        return qimg_err(ENOENT, "snapshot not found");
    return roots_write_failed(img, txn_snapshot_delete(img, idx));
}

int qimg_snapshot_rename(qimg_image *img, const char *id_or_name,
                         const char *new_name)
{
    int ret = check_snapshot_ok(img), idx;

    if (ret < 0)
        return ret;
    idx = snap_find_by_id(img->q, id_or_name);
    if (idx < 0)
        idx = snap_find_by_name(img->q, id_or_name);
    if (idx < 0)
        return qimg_err(ENOENT, "snapshot not found");
    return roots_write_failed(img, txn_snapshot_rename(img, idx, new_name));
}

int qimg_image_make_empty(qimg_image *img)
{
    if (img->is_view || !img->read_write)
        return qimg_err(EACCES, "Image is read-only");
    if (img->fmt != QIMG_FMT_QCOW2)
        return qimg_err(ENOTSUP, "Image format does not support emptying");
    return roots_write_failed(img, txn_make_empty(img));
}
