/*
 * cmd_snapshot.c - qimg snapshot: qemu-img 7.2's `snapshot -l/-a/-c/-d`,
 * plus `-f fmt` and `-l --output=json`.
 *
 * Messages and exit codes are qemu-img's. Where qemu-img would only print
 * an errno ("-22 (Invalid argument)", "Failed to load snapshot: Invalid
 * argument"), qimg first prints the library's one-line reason on its own
 * line. Extensions: -f, -l --output=json (the "snapshots" array of
 * `info --output=json`), -d falling back to the snapshot ID when no
 * snapshot has that name, and --rename OLD NEW (OLD an ID or a name;
 * atomic, as every change of the snapshot table).
 */
#include "cli.h"
#include "snaptable.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

enum snap_action {
    ACT_NONE, ACT_LIST, ACT_APPLY, ACT_CREATE, ACT_DELETE, ACT_RENAME
};

struct snap_args {
    enum snap_action action;
    const char *name, *file;
    const char *new_name; /* --rename */
    enum qimg_format fmt;
    bool quiet, force_share, json, image_opts;
    bool space; /* -l --space */
};

static int set_action(struct snap_args *a, enum snap_action act,
                      const char *name)
{
    if (a->action != ACT_NONE)
        return cli_usage_error("Cannot mix '-l', '-a', '-c', '-d'%s",
                               act == ACT_RENAME || a->action == ACT_RENAME
                                   ? ", '--rename'"
                                   : "");
    a->action = act;
    a->name = name;
    return 0;
}

static int parse_args(int argc, char **argv, struct snap_args *a)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"object", required_argument, NULL, 'O'},
        {"image-opts", no_argument, NULL, 'I'},
        {"force-share", no_argument, NULL, 'U'},
        {"output", required_argument, NULL, 'J'},
        {"rename", required_argument, NULL, 'R'},
        {"space", no_argument, NULL, 'S'},
        {NULL, 0, NULL, 0},
    };
    const char *output = "human";
    int c, ret = 0;

    memset(a, 0, sizeof *a);
    opterr = 0;
    optind = 1;
    while (!ret &&
           (c = getopt_long(argc, argv, ":la:c:d:f:hqU", longopts, NULL)) !=
               -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'l':
            ret = set_action(a, ACT_LIST, NULL);
            break;
        case 'a':
            ret = set_action(a, ACT_APPLY, optarg);
            break;
        case 'c':
            ret = set_action(a, ACT_CREATE, optarg);
            break;
        case 'd':
            ret = set_action(a, ACT_DELETE, optarg);
            break;
        case 'R':
            ret = set_action(a, ACT_RENAME, optarg);
            break;
        case 'S':
            a->space = true;
            break;
        case 'f':
            if (parse_format(optarg, &a->fmt) < 0) {
                cli_error("Unknown file format '%s'", optarg);
                return 1;
            }
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'U':
            a->force_share = true;
            break;
        case 'I':
            a->image_opts = true;
            break;
        case 'O':
            break;
        case 'J':
            output = optarg;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (ret)
        return ret;
    if (a->space && a->action != ACT_LIST)
        return cli_usage_error("--space only goes with -l");
    if (a->action == ACT_RENAME) {
        if (optind != argc - 2)
            return cli_usage_error("Expecting the new snapshot name and one "
                                   "image file name");
        a->new_name = argv[optind++];
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->file = argv[optind];
    return cli_output_json(output, &a->json);
}

static void print_json_list(const struct qimg_snapshot *l, size_t n)
{
    if (n == 0) {
        printf("[]\n"); /* qimg's own extension: keep it short */
        return;
    }
    struct jv *arr = jv_arr();

    for (size_t i = 0; i < n; i++) {
        struct jv *o = jv_push(arr, jv_obj());
        jv_set(o, "id", jv_str(l[i].id));
        jv_set(o, "name", jv_str(l[i].name));
        jv_set(o, "vm-state-size", jv_uint(l[i].vm_state_size));
        jv_set(o, "date-sec", jv_uint(l[i].date_sec));
        jv_set(o, "date-nsec", jv_uint(l[i].date_nsec));
        jv_set(o, "vm-clock-sec", jv_uint(l[i].vm_clock_nsec / 1000000000));
        jv_set(o, "vm-clock-nsec", jv_uint(l[i].vm_clock_nsec % 1000000000));
        if (l[i].icount != UINT64_MAX)
            jv_set(o, "icount", jv_uint(l[i].icount));
    }
    jv_print(stdout, arr);
    putchar('\n');
    jv_free(arr);
}

static struct jv *usage_json(struct jv *o, const struct qimg_space_usage *u)
{
    jv_set(o, "exclusive-bytes", jv_uint(u->exclusive_bytes));
    jv_set(o, "shared-bytes", jv_uint(u->shared_bytes));
    jv_set(o, "referenced-bytes", jv_uint(u->referenced_bytes));
    return o;
}

static void print_usage_row(const char *id, const char *name,
                            const struct qimg_space_usage *u)
{
    char e[32], sh[32], r[32];

    fmt_size(e, sizeof e, u->exclusive_bytes);
    fmt_size(sh, sizeof sh, u->shared_bytes);
    fmt_size(r, sizeof r, u->referenced_bytes);
    printf("%-9s %-17s %12s %12s %12s\n", id, name, e, sh, r);
}

/* -l --space: what each snapshot and the active disk take in the file. */
static int do_space(qimg_image *img, const struct snap_args *a)
{
    struct qimg_snapshot *l = NULL;
    struct qimg_space *sp = NULL;
    size_t n = 0;
    char buf[4][32];

    if (qimg_snapshot_list(&l, &n, img) < 0 ||
        qimg_snapshot_space(&sp, img) < 0) {
        cli_lib_error("%s", "");
        qimg_snapshot_list_free(l, n);
        return 1;
    }
    if (a->json) {
        struct jv *o = jv_obj(), *arr = jv_set(o, "snapshots", jv_arr());
        for (size_t i = 0; i < n && i < sp->nb_snapshots; i++) {
            struct jv *e = jv_push(arr, jv_obj());
            jv_set(e, "id", jv_str(l[i].id));
            jv_set(e, "name", jv_str(l[i].name));
            usage_json(e, &sp->snapshots[i]);
        }
        usage_json(jv_set(o, "active", jv_obj()), &sp->active);
        jv_set(o, "data-bytes", jv_uint(sp->data_bytes));
        jv_set(o, "metadata-bytes", jv_uint(sp->metadata_bytes));
        jv_set(o, "free-held-bytes", jv_uint(sp->free_held_bytes));
        jv_set(o, "reclaimable-bytes", jv_uint(sp->reclaimable_bytes));
        jv_print(stdout, o);
        putchar('\n');
        jv_free(o);
    } else {
        printf("Snapshot space:\n%-9s %-17s %12s %12s %12s\n", "ID", "TAG",
               "EXCLUSIVE", "SHARED", "REFERENCED");
        for (size_t i = 0; i < n && i < sp->nb_snapshots; i++)
            print_usage_row(l[i].id, l[i].name, &sp->snapshots[i]);
        print_usage_row("-", "(active disk)", &sp->active);
        fmt_size(buf[0], sizeof buf[0], sp->data_bytes);
        fmt_size(buf[1], sizeof buf[1], sp->metadata_bytes);
        fmt_size(buf[2], sizeof buf[2], sp->free_held_bytes);
        fmt_size(buf[3], sizeof buf[3], sp->reclaimable_bytes);
        printf("data: %s, metadata: %s, free but held by the file: %s, "
               "reclaimable: %s\n",
               buf[0], buf[1], buf[2], buf[3]);
    }
    qimg_snapshot_list_free(l, n);
    qimg_space_free(sp);
    return 0;
}

static int do_list(qimg_image *img, const struct snap_args *a)
{
    struct qimg_snapshot *l;
    size_t n;

    if (a->space)
        return do_space(img, a);
    if (qimg_snapshot_list(&l, &n, img) < 0) {
        cli_lib_error("%s", "");
        return 1;
    }
    if (a->json)
        print_json_list(l, n);
    else
        snaptable_print(stdout, l, n);
    qimg_snapshot_list_free(l, n);
    return 0;
}

static int do_action(qimg_image *img, const struct snap_args *a)
{
    const struct qimg_error *e = qimg_last_error();
    int ret;

    switch (a->action) {
    case ACT_CREATE:
        ret = qimg_snapshot_create(img, a->name);
        if (ret < 0) {
            if (e->message[0] && ret != -ENOTSUP)
                cli_error("%s", e->message);
            cli_error("Could not create snapshot '%s': %d (%s)", a->name, ret,
                      strerror(-ret));
        }
        return ret;
    case ACT_APPLY:
        ret = qimg_snapshot_apply(img, a->name);
        /* Not found, dirty bitmaps: qemu-img's one line. Anything else
         * (a v2 image that would need resizing, I/O errors): the reason,
         * then qemu-img's "Failed to load snapshot: <errno>". */
        if (ret == -ENOENT || ret == -EBUSY)
            cli_error("Could not apply snapshot '%s': %s", a->name,
                      e->message);
        else if (ret < 0) {
            cli_error("%s", e->message);
            cli_error("Could not apply snapshot '%s': Failed to load "
                      "snapshot: %s",
                      a->name, strerror(-ret));
        }
        return ret;
    case ACT_RENAME:
        ret = qimg_snapshot_rename(img, a->name, a->new_name);
        if (ret < 0)
            cli_error("Could not rename snapshot '%s': %s", a->name,
                      e->message[0] ? e->message : strerror(-ret));
        return ret;
    default:
        /* qemu-img words every delete failure as one line. */
        ret = qimg_snapshot_delete(img, a->name);
        if (ret < 0)
            cli_error("Could not delete snapshot '%s': %s", a->name,
                      e->message[0] ? e->message : strerror(-ret));
        return ret;
    }
}

/* Snapshots of raw images: what qemu-img says for each action. */
static int raw_action(const struct snap_args *a)
{
    if (a->fmt == QIMG_FMT_AUTO) {
        cli_warn_raw_probe(a->file);
        if (a->action == ACT_APPLY)
            cli_warn_raw_probe(a->file);
    }
    if (a->action == ACT_CREATE)
        cli_error("Could not create snapshot '%s': -95 (Operation not "
                  "supported)",
                  a->name);
    else if (a->action == ACT_APPLY)
        cli_error("Could not apply snapshot '%s': Block driver does not "
                  "support snapshots",
                  a->name);
    else if (a->action == ACT_RENAME)
        cli_error("Could not rename snapshot '%s': This image format does "
                  "not support snapshots",
                  a->name);
    else
        cli_error("Could not delete snapshot '%s': snapshot not found",
                  a->name);
    return 1;
}

int cmd_snapshot(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct snap_args a;
    qimg_image *img;
    char *path = NULL;
    int ret;

    ret = parse_args(argc, argv, &a);
    if (ret)
        return ret;
    if (a.action == ACT_NONE)
        return 0; /* qemu-img does nothing either */
    o.fmt = a.fmt;
    o.read_write = a.action != ACT_LIST;
    o.force_share = a.force_share;
    if (a.image_opts && parse_image_opts(a.file, &path, &o) < 0)
        return 1;
    if (a.force_share && o.read_write) {
        cli_error("Could not open '%s': force-share=on can only be used "
                  "with read-only images",
                  a.file);
        free(path);
        return 1;
    }
    if (qimg_image_open(&img, path ? path : a.file, &o) < 0) {
        cli_lib_error("Could not open '%s': ", a.file);
        /* QEMU's hint after this refusal. */
        if (!strncmp(qimg_last_error()->message, "Too much extra metadata",
                     23))
            fprintf(stderr, "You can force-remove this extra metadata "
                            "with %s check -r all\n",
                    cli_prog);
        free(path);
        return 1;
    }
    free(path);
    if (qimg_image_format(img) == QIMG_FMT_RAW && a.action != ACT_LIST) {
        qimg_image_close(img);
        return raw_action(&a);
    }
    ret = a.action == ACT_LIST ? do_list(img, &a) : do_action(img, &a);
    if (qimg_image_close(img) < 0 && ret == 0) {
        cli_lib_error("%s", "");
        ret = -EIO;
    }
    return ret ? 1 : 0;
}
