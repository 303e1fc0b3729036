/*
 * cmd_check.c - qimg check: qemu-img 7.2's `check`, plus where each problem
 * sits.
 *
 * Per-problem lines go to stderr as qemu-img prints them; each line about
 * a specific reference is followed by an indented "    referenced by ..."
 * line naming the structure that holds it (qimg's addition; qemu-img's own
 * line is unchanged). The summary goes to stdout (human or JSON; JSON adds
 * a "findings" array only when there is something to report).
 */
#include "cli.h"

#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct check_args {
    const char *file;
    enum qimg_format fmt;
    bool json, quiet, force_share;
    unsigned fix;
};

static int parse_args(int argc, char **argv, struct check_args *a)
{
    static const struct option longopts[] = {
        {"help", no_argument, NULL, 'h'},
        {"output", required_argument, NULL, 'O'},
        {"force-share", no_argument, NULL, 'U'},
        {"image-opts", no_argument, NULL, 'I'},
        {"object", required_argument, NULL, 'o'},
        {NULL, 0, NULL, 0},
    };
    const char *output = "human";
    int c;

    memset(a, 0, sizeof *a);
    opterr = 0;
    optind = 1;
    while ((c = getopt_long(argc, argv, ":hf:r:T:qU", longopts, NULL)) != -1) {
        switch (c) {
        case 'h':
            cli_help();
            exit(0);
        case 'f':
            if (parse_format(optarg, &a->fmt) < 0) {
                cli_error("Unknown file format '%s'", optarg);
                return 1;
            }
            break;
        case 'r':
            if (!strcmp(optarg, "leaks"))
                a->fix = QIMG_CHECK_FIX_LEAKS;
            else if (!strcmp(optarg, "all"))
                a->fix = QIMG_CHECK_FIX_LEAKS | QIMG_CHECK_FIX_ERRORS;
            else
                return cli_usage_error("Unknown option value for -r "
                                       "(expecting 'leaks' or 'all'): %s",
                                       optarg);
            break;
        case 'T':
        case 'I':
            break; /* cache modes and --image-opts: accepted, no effect */
        case 'O':
            output = optarg;
            break;
        case 'q':
            a->quiet = true;
            break;
        case 'U':
            a->force_share = true;
            break;
        default:
            return cli_getopt_error(c, argv[optind - 1]);
        }
    }
    if (optind != argc - 1)
        return cli_usage_error("Expecting one image file name");
    a->file = argv[optind];
    return cli_output_json(output, &a->json);
}

/* qemu-img prints these through error_report(), after its name. */
static bool is_reported(const struct qimg_check_msg *m)
{
    return !strcmp(m->kind, "snapshot-table-unreadable") ||
           !strcmp(m->kind, "rebuild-failed");
}

/* One line per finding, as qemu-img prints them, then qimg's continuation
 * line. Written through a buffered copy of stderr: a wrecked image can
 * have millions of lines. */
static void print_messages(const struct qimg_check_result *r)
{
    int fd = r->nb_msgs > 64 ? dup(STDERR_FILENO) : -1;
    FILE *f = fd >= 0 ? fdopen(fd, "w") : NULL;
    FILE *out = f ? f : stderr;

    if (fd >= 0 && !f)
        close(fd);
    if (f)
        setvbuf(f, NULL, _IOFBF, 1 << 16);
    fflush(stdout);
    fflush(stderr);
    for (size_t i = 0; i < r->nb_msgs; i++) {
        const struct qimg_check_msg *m = &r->msgs[i];
        fprintf(out, "%s%s%s\n", is_reported(m) ? cli_prog : "",
                is_reported(m) ? ": " : "", m->text);
        if (m->where)
            fprintf(out, "    %s%s\n",
                    strncmp(m->where, "referenced by", 13) ? "in " : "",
                    m->where);
    }
    if (f)
        fclose(f);
}

static void print_human(const struct qimg_check_result *r)
{
    if (!r->corruptions && !r->leaks && !r->check_errors) {
        printf("No errors were found on the image.\n");
    } else {
        if (r->corruptions)
            printf("\n%" PRId64 " errors were found on the image.\n"
                   "Data may be corrupted, or further writes to the image "
                   "may corrupt it.\n",
                   r->corruptions);
        if (r->leaks)
            printf("\n%" PRId64 " leaked clusters were found on the image.\n"
                   "This means waste of disk space, but no harm to data.\n",
                   r->leaks);
        if (r->check_errors)
            printf("\n%" PRId64 " internal errors have occurred during the "
                   "check.\n",
                   r->check_errors);
    }
    if (r->total_clusters && r->allocated_clusters)
        printf("%" PRId64 "/%" PRId64 " = %0.2f%% allocated, %0.2f%% "
               "fragmented, %0.2f%% compressed clusters\n",
               r->allocated_clusters, r->total_clusters,
               r->allocated_clusters * 100.0 / (double)r->total_clusters,
               r->fragmented_clusters * 100.0 / (double)r->allocated_clusters,
               r->compressed_clusters * 100.0 / (double)r->allocated_clusters);
    if (r->image_end_offset)
        printf("Image end offset: %" PRId64 "\n", r->image_end_offset);
}

static void set_if(struct jv *o, const char *key, int64_t v)
{
    if (v)
        jv_set(o, key, jv_int(v));
}

static void print_json(const struct qimg_check_result *r, const char *file)
{
    struct jv *o = jv_obj(), *f = NULL;

    jv_set(o, "filename", jv_str(file));
    jv_set(o, "format", jv_str("qcow2"));
    jv_set(o, "check-errors", jv_int(r->check_errors));
    set_if(o, "corruptions", r->corruptions);
    set_if(o, "leaks", r->leaks);
    set_if(o, "corruptions-fixed", r->corruptions_fixed);
    set_if(o, "leaks-fixed", r->leaks_fixed);
    set_if(o, "image-end-offset", r->image_end_offset);
    if (r->total_clusters) {
        jv_set(o, "total-clusters", jv_int(r->total_clusters));
        set_if(o, "allocated-clusters", r->allocated_clusters);
        set_if(o, "fragmented-clusters", r->fragmented_clusters);
        set_if(o, "compressed-clusters", r->compressed_clusters);
    }
    for (size_t i = 0; i < r->nb_msgs; i++) {
        struct jv *m;
        if (!f)
            f = jv_set(o, "findings", jv_arr());
        m = jv_push(f, jv_obj());
        jv_set(m, "kind", jv_str(r->msgs[i].kind));
        jv_set(m, "message", jv_str(r->msgs[i].text));
        jv_set(m, "error", jv_bool(r->msgs[i].is_error));
        if (r->msgs[i].where)
            jv_set(m, "where", jv_str(r->msgs[i].where));
    }
    jv_print(stdout, o);
    putchar('\n');
    jv_free(o);
}

/* One check pass; prints its messages. */
static int run_check(qimg_image *img, unsigned fix,
                     struct qimg_check_result **r)
{
    int ret = qimg_image_check(r, img, fix);

    if (*r)
        print_messages(*r);
    return ret;
}

static int finish(const struct check_args *a, struct qimg_check_result *r,
                  int ret)
{
    if (ret == 0 && !a->quiet) {
        if (a->json)
            print_json(r, a->file);
        else
            print_human(r);
    }
    fflush(stdout);
    if (ret < 0 || r->check_errors) {
        if (ret < 0)
            cli_error("Check failed: %s", strerror(-ret));
        else
            cli_error("Check failed");
        return 1;
    }
    return r->corruptions ? 2 : r->leaks ? 3 : 0;
}

/* A raw image: QEMU warns about probing it (when opened for writing),
 * then refuses. */
static void no_checks(const struct check_args *a)
{
    if (a->fix && a->fmt == QIMG_FMT_AUTO)
        cli_warn_raw_probe(a->file);
    cli_error("This image format does not support checks");
}

int cmd_check(int argc, char **argv)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    struct qimg_check_result *r = NULL;
    struct check_args a;
    qimg_image *img;
    int ret;

    ret = parse_args(argc, argv, &a);
    if (ret)
        return ret;
    if (a.force_share && a.fix) {
        cli_error("Could not open '%s': force-share=on can only be used "
                  "with read-only images",
                  a.file);
        return 1;
    }
    o.fmt = a.fmt;
    o.read_write = a.fix != 0;
    o.force_share = a.force_share;
    o.for_check = true;
    if (qimg_image_open(&img, a.file, &o) < 0) {
        cli_lib_error("Could not open '%s': ", a.file);
        return 1;
    }
    if (qimg_image_format(img) != QIMG_FMT_QCOW2) {
        no_checks(&a);
        qimg_image_close(img);
        return 63;
    }
    ret = run_check(img, a.fix, &r);
    if (ret == 0 && (r->corruptions_fixed || r->leaks_fixed)) {
        int64_t cf = r->corruptions_fixed, lf = r->leaks_fixed;
        if (!a.json && !a.quiet)
            printf("The following inconsistencies were found and "
                   "repaired:\n\n    %" PRId64 " leaked clusters\n    %" PRId64
                   " corruptions\n\nDouble checking the fixed image now...\n",
                   lf, cf);
        qimg_check_result_free(r);
        r = NULL;
        ret = run_check(img, 0, &r);
        r->corruptions_fixed = cf;
        r->leaks_fixed = lf;
    }
    if (qimg_image_close(img) < 0 && ret == 0)
        ret = -EIO;
    ret = finish(&a, r, ret);
    qimg_check_result_free(r);
    return ret;
}
