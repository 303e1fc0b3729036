/*
 * check_findings.c - what a check reports: its messages, where each
 * reference was found, and the referrers of disputed clusters (check.c,
 * notes 2 and 4; qcow2-format.md §4.2).
 *
 * Owns struct chk_findings and the message list of the result. It decides
 * nothing about the image: the other check files say what to report, and
 * the walk (check_walk.c) finds the referrers.
 */
#include "check_impl.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Referrers are named for this many disputed clusters at most: the
 * pinpointing walk keeps a set and a string per cluster, and a wrecked
 * refcount structure on a large image disputes every cluster. */
#define PINPOINT_MAX 65536

static void loc_format(const struct chk *c, const struct loc *l, char *buf,
                       size_t n)
{
    const struct snap *snaps = c->snaptab.snaps;
    char tree[300];

    if (l->snap < 0)
        snprintf(tree, sizeof tree, "active L1");
    else
        snprintf(tree, sizeof tree, "snapshot %.40s (%.200s) L1",
                 snaps[l->snap].id, snaps[l->snap].name);
    switch (l->kind) {
    case LOC_HEADER:
        snprintf(buf, n, "image header");
        break;
    case LOC_L1_TABLE:
        snprintf(buf, n, "%s table", tree);
        break;
    case LOC_L1_ENTRY:
        snprintf(buf, n, "%s index %" PRId64, tree, l->i);
        break;
    case LOC_L2_ENTRY:
        snprintf(buf, n, "%s index %" PRId64 ", L2 index %" PRId64, tree, l->i,
                 l->j);
        break;
    case LOC_SNAP_TABLE:
        snprintf(buf, n, "snapshot table");
        break;
    case LOC_REFTABLE:
        snprintf(buf, n, "refcount table");
        break;
    case LOC_REFTABLE_ENTRY:
        snprintf(buf, n, "refcount table index %" PRId64, l->i);
        break;
    case LOC_BITMAP_DIR:
        snprintf(buf, n, "bitmap directory");
        break;
    case LOC_BITMAP:
        snprintf(buf, n, "bitmap %" PRId64 " table%s", l->i,
                 l->j >= 0 ? " entry" : "");
        break;
    case LOC_CRYPTO:
        snprintf(buf, n, "encryption header");
        break;
    default:
        buf[0] = '\0';
    }
}

int findings_add(struct chk *c, const char *kind, bool is_error,
                 const struct loc *at, const char *fmt, ...)
{
    struct qimg_check_result *r = c->res;
    struct qimg_check_msg *m;
    char buf[1024], where[512] = "";
    va_list ap;

    if (c->find.quiet)
        return 0;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (at)
        loc_format(c, at, where, sizeof where);
    if (r->nb_msgs == c->find.msg_cap) {
        size_t cap = MAX(c->find.msg_cap * 2, 16);
        m = realloc(r->msgs, cap * sizeof *m);
        if (!m)
            return qimg_err(ENOMEM, "Out of memory");
        r->msgs = m;
        c->find.msg_cap = cap;
    }
    m = &r->msgs[r->nb_msgs];
    memset(m, 0, sizeof *m);
    m->text = strdup(buf);
    m->kind = (char *)kind; /* a literal: never freed */
    m->is_error = is_error;
    if (where[0])
        m->where = strdup(where);
    if (!m->text || (where[0] && !m->where)) {
        free(m->text);
        free(m->where);
        return qimg_err(ENOMEM, "Out of memory");
    }
    r->nb_msgs++;
    return 0;
}

/* Remember that the last message is about `cluster`, to name its
 * referrers once the pinpointing walk has run. */
int findings_dispute(struct chk *c, uint64_t cluster)
{
    struct chk_findings *f = &c->find;
    struct disputed *d;

    if (f->quiet || f->nb_disp >= PINPOINT_MAX)
        return 0;
    if (f->nb_disp == f->disp_cap) {
        size_t cap = MAX(f->disp_cap * 2, 16);
        d = realloc(f->disp, cap * sizeof *d);
        if (!d)
            return qimg_err(ENOMEM, "Out of memory");
        f->disp = d;
        f->disp_cap = cap;
    }
    d = &f->disp[f->nb_disp++];
    d->msg = c->res->nb_msgs - 1;
    d->cluster = cluster;
    if (idset_add(&f->traced, cluster) < 0)
        return qimg_err(ENOMEM, "Out of memory");
    return 0;
}

/* Pinpointing walk: append location `at` to disputed cluster k. */
int findings_referrer(struct chk *c, const struct loc *at, uint64_t k)
{
    struct chk_findings *f = &c->find;
    char where[512];
    uint64_t idx;
    char *s;

    loc_format(c, at, where, sizeof where);
    if (!u64map_get(&f->where, k, &idx)) {
        char **w = realloc(f->wheres, (f->nb_wheres + 1) * sizeof *w);
        if (!w)
            return qimg_err(ENOMEM, "Out of memory");
        f->wheres = w;
        idx = f->nb_wheres++;
        w[idx] = NULL;
        if (u64map_put(&f->where, k, idx) < 0)
            return qimg_err(ENOMEM, "Out of memory");
    }
    s = f->wheres[idx];
    if (s && strlen(s) > 600)
        return 0; /* enough referrers named */
    if (asprintf(&f->wheres[idx], "%s%s%s", s ? s : "referenced by ",
                 s ? "; " : "", where) < 0) {
        f->wheres[idx] = s;
        return qimg_err(ENOMEM, "Out of memory");
    }
    free(s);
    return 0;
}

/* The result and the disputes as they are now, to return to. */
void findings_save(const struct chk *c, struct findings_mark *m)
{
    m->res = *c->res;
    m->nb_disp = c->find.nb_disp;
}

/* Forget what was found since findings_save(): messages, disputes and
 * counts. */
void findings_rollback(struct chk *c, const struct findings_mark *m)
{
    struct qimg_check_result saved = m->res;

    for (size_t i = saved.nb_msgs; i < c->res->nb_msgs; i++) {
        free(c->res->msgs[i].text);
        free(c->res->msgs[i].where);
    }
    saved.msgs = c->res->msgs;
    *c->res = saved;
    c->find.nb_disp = m->nb_disp;
}

/* Set the result's counts to those in `saved`, keeping every message. */
void findings_restore_counts(struct chk *c,
                             const struct qimg_check_result *saved)
{
    struct qimg_check_result keep = *saved;

    keep.msgs = c->res->msgs;
    keep.nb_msgs = c->res->nb_msgs;
    *c->res = keep;
}

bool findings_start_quiet(struct chk *c)
{
    if (!c->find.nb_disp)
        return false;
    c->find.quiet = true;
    return true;
}

int findings_name_referrers(struct chk *c,
                            const struct qimg_check_result *keep, int ret)
{
    struct chk_findings *f = &c->find;
    uint64_t idx;

    f->quiet = false;
    findings_restore_counts(c, keep);
    if (ret < 0) {
        c->res->check_errors++;
        findings_add(c, "io", true, NULL, "ERROR naming referrers: %s",
                     qimg_last_error()->message);
        return ret;
    }
    for (size_t i = 0; i < f->nb_disp; i++) {
        struct qimg_check_msg *m = &c->res->msgs[f->disp[i].msg];
        if (m->where || !u64map_get(&f->where, f->disp[i].cluster, &idx))
            continue;
        m->where = strdup(f->wheres[idx]);
    }
    return 0;
}

void findings_free(struct chk *c)
{
    struct chk_findings *f = &c->find;

    idset_free(&f->traced);
    u64map_free(&f->where);
    for (size_t i = 0; i < f->nb_wheres; i++)
        free(f->wheres[i]);
    free(f->wheres);
    free(f->disp);
}
