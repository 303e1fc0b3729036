/*
 * internal.h - every lib/ module header at once, for the unit tests,
 * fuzzers and crash tests that drive the library from the inside.
 *
 * No file of lib/ includes it: each includes the headers of the modules
 * it uses, which tests/check_layers.py holds to the layers in
 * docs/ARCHITECTURE.md. cli/ never includes it either.
 */
#ifndef QIMG_INTERNAL_H
#define QIMG_INTERNAL_H

#include "qimg.h"

#include "backing.h"
#include "bitmap.h"
#include "cache.h"
#include "compress.h"
#include "create.h"
#include "endian.h"
#include "error.h"
#include "file.h"
#include "flush.h"
#include "guest.h"
#include "header.h"
#include "idset.h"
#include "image.h"
#include "io.h"
#include "l1l2.h"
#include "l2runs.h"
#include "lock.h"
#include "meta.h"
#include "metaset.h"
#include "open.h"
#include "qcow2.h"
#include "amend.h"
#include "rebuild.h"
#include "refcount.h"
#include "roots.h"
#include "snaptable.h"
#include "txn.h"
#include "util.h"

#endif
