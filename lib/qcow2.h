/*
 * qcow2.h - opening and closing a qcow2 image (qcow2.c): validation,
 * geometry, the tables' state, the hooks between the layers.
 */
#ifndef QIMG_QCOW2_H
#define QIMG_QCOW2_H

#include "image.h"

int qcow2_open(qimg_image *img, const struct qimg_open_opts *o);
void qcow2_close(qimg_image *img);
/* Before the close: store the bitmaps guest writes kept up to date, with
 * in_use clear (atomically; a failure leaves them in use). */
int qcow2_store_bitmaps(qimg_image *img);
/* Read the image's state again from the file (after amend changed its
 * format under the handle). On failure the handle keeps its old state,
 * read-only. */
int qcow2_reopen(qimg_image *img);
/* Make img a read-only view of internal snapshot spec (an ID, a name or
 * the snapshot.id=/snapshot.name= spellings). */
int qcow2_open_view(qimg_image *img, const char *spec);

#endif
