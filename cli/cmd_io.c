/*
 * cmd_io.c - qimg io: qemu-io 7.2's command runner over one image.
 *
 * Owns the command line (-f, -r, -U, -l, -c), opening and closing the
 * image, the command table, splitting a command string at spaces as
 * qemu-io does (no quoting), the argument-count and read-only checks
 * common to all commands, and help/quit/open/close. The data commands live
 * in io_rw.c, the allocation queries in io_query.c, qemu-io's number and
 * report formats in io_util.c.
 *
 * Exit status: 0 if every command succeeded, 1 if any failed (all -c
 * commands run anyway), the image could not be opened, or closing it
 * (which flushes) failed.
 */
#include "io.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const struct io_cmd cmd_open;

/* ---- opening and closing ------------------------------------------------ */

struct open_req {
    const char *path;
    const char *fmt;      /* driver name, NULL: probe */
    const char *snapshot; /* -l, NULL: the active disk */
    bool read_only, force_share;
};

/* Remember the size as QEMU reports it (raw: whole 512-byte sectors). */
static void load_size(struct io_state *s)
{
    s->real_size = s->size = qimg_image_size(s->img);
    if (qimg_image_format(s->img) != QIMG_FMT_QCOW2 && s->size % 512 &&
        s->size < UINT64_MAX - 511)
        s->size += 512 - s->size % 512;
}

static int io_open(struct io_state *s, const struct open_req *r)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    int ret;

    if (r->force_share && !r->read_only && !r->snapshot) {
        cli_error("can't open device %s: force-share=on can only be used "
                  "with read-only images",
                  r->path);
        return -EINVAL;
    }
    if (r->fmt && parse_format(r->fmt, &o.fmt) < 0) {
        cli_error("can't open device %s: Unknown driver '%s'", r->path, r->fmt);
        return -EINVAL;
    }
    o.read_write = !r->read_only && !r->snapshot;
    o.force_share = r->force_share;
    o.snapshot = r->snapshot;
    qimg_error_clear();
    ret = qimg_image_open(&s->img, r->path, &o);
    if (ret < 0) {
        cli_lib_error("can't open device %s: ", r->path);
        qimg_image_close(s->img);
        s->img = NULL;
        return ret;
    }
    load_size(s);
    s->writable = o.read_write;
    s->corrupt_reported = s->is_dead = false;
    s->probed_raw =
        o.fmt == QIMG_FMT_AUTO && qimg_image_format(s->img) == QIMG_FMT_RAW;
    if (s->probed_raw && s->writable)
        cli_warn_raw_probe(r->path);
    return 0;
}

/* What QEMU prints for each cluster it could not free (and leaks). */
static void report_free_failures(struct io_state *s)
{
    int err;
    unsigned n = s->img ? qimg_image_take_free_failures(s->img, &err) : 0;

    fflush(stdout);
    while (n--)
        fprintf(stderr, "qcow2_free_clusters failed: %s\n", strerror(err));
}

/* Close (and so flush) the image; a failure is reported and returned. */
static int io_close(struct io_state *s)
{
    int ret;

    qimg_error_clear();
    if (s->img && s->writable && qimg_image_flush(s->img) == 0)
        report_free_failures(s);
    qimg_error_clear();
    ret = qimg_image_close(s->img);
    s->img = NULL;
    if (ret < 0)
        cli_error("%s", qimg_last_error()->message);
    return ret;
}

/* open -o: only "driver=<fmt>" is understood. */
static void open_options(char *optstr, struct open_req *r, char **bad)
{
    for (char *tok = strtok(optstr, ","); tok; tok = strtok(NULL, ",")) {
        char *eq = strchr(tok, '=');

        if (eq && eq - tok == 6 && !strncmp(tok, "driver", 6)) {
            r->fmt = eq + 1;
        } else if (eq) {
            *eq = '\0';
            *bad = tok;
        } else {
            cli_error("warning: short-form boolean option '%s' deprecated",
                      tok);
            fprintf(stderr, "Please use %s=on instead\n", tok);
            *bad = tok;
        }
    }
}

/* QEMU refuses options the format does not know, before opening; name
 * the format (probed read-only if not given). */
static int open_bad_option(const struct open_req *r, const char *bad)
{
    struct qimg_open_opts o = CLI_OPEN_OPTS_INIT;
    qimg_image *img = NULL;
    const char *fmt = r->fmt;

    o.no_backing = true;
    o.force_share = true;
    if (!fmt && qimg_image_open(&img, r->path, &o) == 0)
        fmt = qimg_image_format(img) == QIMG_FMT_RAW ? "raw" : "qcow2";
    qimg_image_close(img);
    if (!fmt || parse_format(fmt, &o.fmt) < 0) {
        /* unknown driver or unreadable file: the open reports it */
        struct io_state scratch = {0};

        if (io_open(&scratch, r) == 0)
            qimg_image_close(scratch.img);
        return -EINVAL;
    }
    cli_error("can't open device %s: Block format '%s' does not support the "
              "option '%s'",
              r->path, fmt, bad);
    return -EINVAL;
}

static int open_f(struct io_state *s, int argc, char **argv)
{
    struct open_req r = {0};
    char *bad = NULL;
    int c;

    while ((c = getopt(argc, argv, "o:rU")) != -1) {
        if (c == 'r') {
            r.read_only = true;
        } else if (c == 'U') {
            r.force_share = true;
        } else if (c == 'o') {
            open_options(optarg, &r, &bad);
        } else {
            io_usage(&cmd_open);
            return -EINVAL;
        }
    }
    if (optind != argc - 1) {
        io_usage(&cmd_open);
        return -EINVAL;
    }
    if (s->img) {
        cli_error("file open already, try 'help close'");
        return -EINVAL;
    }
    r.path = argv[optind];
    if (bad)
        return open_bad_option(&r, bad);
    return io_open(s, &r) < 0 ? -EINVAL : 0;
}

static const struct io_cmd cmd_open = {
    .name = "open",
    .altname = "o",
    .fn = open_f,
    .argmin = 1,
    .argmax = -1,
    .flags = IO_NOFILE_OK,
    .args = "[-rU] [-o options] [path]",
    .oneline = "open the file specified by path",
    .help =
        "\n"
        " opens a new file in the requested mode\n"
        "\n"
        " Example:\n"
        " 'open -o driver=raw /tmp/data' - opens raw data file read-write\n"
        "\n"
        " Opens a file for subsequent use by all of the other qemu-io "
        "commands.\n"
        " -r, -- open file read-only\n"
        " -U, -- force shared permissions\n"
        " -o, -- options to be given to the block driver (only driver=FMT)\n",
};

static int close_f(struct io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    return io_close(s);
}

static const struct io_cmd cmd_close = {
    .name = "close",
    .altname = "c",
    .fn = close_f,
    .argmin = 0,
    .argmax = 0,
    .oneline = "close the current open file",
};

static int quit_f(struct io_state *s, int argc, char **argv)
{
    (void)argc;
    (void)argv;
    s->quit = true;
    return 0;
}

static const struct io_cmd cmd_quit = {
    .name = "quit",
    .altname = "q",
    .fn = quit_f,
    .argmin = 0,
    .argmax = -1,
    .flags = IO_NOFILE_OK,
    .oneline = "exit the program",
};

/* ---- help and the command table ----------------------------------------- */

static int help_f(struct io_state *s, int argc, char **argv);

static const struct io_cmd cmd_help = {
    .name = "help",
    .altname = "?",
    .fn = help_f,
    .argmin = 0,
    .argmax = 1,
    .flags = IO_NOFILE_OK,
    .args = "[command]",
    .oneline = "help for one or all commands",
};

/* Sorted by name, as qemu-io lists them. */
static const struct io_cmd *const commands[] = {
    &io_cmd_alloc, &cmd_close,     &io_cmd_discard, &io_cmd_flush,  &cmd_help,
    &io_cmd_info,  &io_cmd_length, &io_cmd_map,     &cmd_open,      &cmd_quit,
    &io_cmd_read,  &io_cmd_readv,  &io_cmd_write,   &io_cmd_writev,
};

static const struct io_cmd *find_cmd(const char *name)
{
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++) {
        const struct io_cmd *c = commands[i];

        if (!strcmp(c->name, name) || (c->altname && !strcmp(c->altname, name)))
            return c;
    }
    return NULL;
}

/* "name args -- oneline", naming the command as the user typed it. */
static void help_oneline(const char *name, const struct io_cmd *c)
{
    printf("%s ", name);
    if (c->args)
        printf("%s ", c->args);
    printf("-- %s\n", c->oneline);
}

static int help_f(struct io_state *s, int argc, char **argv)
{
    const struct io_cmd *c;

    (void)s;
    if (argc < 2) {
        for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
            help_oneline(commands[i]->name, commands[i]);
        printf("\nUse 'help commandname' for extended help.\n");
        return 0;
    }
    c = find_cmd(argv[1]);
    if (!c) {
        printf("command %s not found\n", argv[1]);
        return -EINVAL;
    }
    help_oneline(argv[1], c);
    if (c->help)
        fputs(c->help, stdout);
    return 0;
}

/* ---- running one command ------------------------------------------------ */

/* Split at single spaces, skipping empty words; no quoting (qemu-io's
 * breakline()). The words point into `line`. */
static char **split_words(char *line, int *count)
{
    char **v = calloc(strlen(line) / 2 + 2, sizeof *v);
    char *p = line, *word;
    int n = 0;

    if (!v) {
        cli_error("Out of memory");
        exit(1);
    }
    while ((word = strsep(&p, " ")) != NULL)
        if (*word)
            v[n++] = word;
    *count = n;
    return v;
}

static int check_argc(const struct io_cmd *c, int argc, const char *name)
{
    int n = argc - 1;

    if (n >= c->argmin && (c->argmax == -1 || n <= c->argmax))
        return 0;
    fflush(stdout);
    if (c->argmax == -1)
        fprintf(stderr,
                "bad argument count %d to %s, expected at least %d "
                "arguments\n",
                n, name, c->argmin);
    else if (c->argmin == c->argmax)
        fprintf(stderr,
                "bad argument count %d to %s, expected %d "
                "arguments\n",
                n, name, c->argmin);
    else
        fprintf(stderr,
                "bad argument count %d to %s, expected between %d "
                "and %d arguments\n",
                n, name, c->argmin, c->argmax);
    return -EINVAL;
}

static int dispatch(struct io_state *s, int argc, char **argv)
{
    const struct io_cmd *c = find_cmd(argv[0]);
    int ret;

    fflush(stdout);
    if (!c) {
        fprintf(stderr, "command \"%s\" not found\n", argv[0]);
        return -EINVAL;
    }
    if (!(c->flags & IO_NOFILE_OK) && !s->img) {
        fprintf(stderr, "no file open, try 'help open'\n");
        return -EINVAL;
    }
    ret = check_argc(c, argc, argv[0]);
    if (ret < 0)
        return ret;
    if ((c->flags & IO_WRITE) && !s->writable) {
        cli_error("Block node is read-only");
        return -EPERM;
    }
    io_getopt_reset();
    qimg_error_clear();
    ret = c->fn(s, argc, argv);
    fflush(stdout);
    if (s->writable)
        report_free_failures(s);
    return ret;
}

static int run_line(struct io_state *s, const char *line)
{
    char *copy = strdup(line), **argv;
    int argc, ret = 0;

    if (!copy) {
        cli_error("Out of memory");
        exit(1);
    }
    argv = split_words(copy, &argc);
    if (argc > 0)
        ret = dispatch(s, argc, argv);
    free(argv);
    free(copy);
    return ret;
}

/* No -c: read commands from stdin after a prompt, until EOF or quit. */
static int run_interactive(struct io_state *s)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    int failed = 0;

    while (!s->quit) {
        printf("qimg io> ");
        fflush(stdout);
        n = getline(&line, &cap, stdin);
        if (n < 0)
            break;
        if (n > 0 && line[n - 1] == '\n')
            line[n - 1] = '\0';
        if (run_line(s, line) < 0)
            failed = 1;
    }
    free(line);
    return failed;
}

/* ---- the qimg io command line ------------------------------------------- */

static void usage(void)
{
    printf("Usage: qimg io [OPTIONS]... [-c STRING]... [file]\n"
           "qcow2/raw disk exerciser with qemu-io's commands\n"
           "\n"
           "  -c, --cmd STRING     execute command with its arguments\n"
           "                       from the given string\n"
           "  -f, --format FMT     specifies the block driver to use\n"
           "  -r, --read-only      export read-only\n"
           "  -l, --snapshot SNAPSHOT_PARAM\n"
           "                       open an internal snapshot read-only:\n"
           "                       'snapshot.id=[ID],snapshot.name=[NAME]'"
           " or '[ID_OR_NAME]'\n"
           "  -U, --force-share    force shared permissions\n"
           "  -h, --help           display this help and exit\n"
           "\n"
           "See 'qimg io -c help' for information on available commands.\n");
}

struct io_cmdline {
    struct open_req open;
    char **cmds;
    int nb_cmds;
};

/* Returns 0, 1 (error, usage printed) or 2 (-h: usage printed, exit 0). */
static int parse_cmdline(int argc, char **argv, struct io_cmdline *cl)
{
    static const struct option lopts[] = {
        {"cmd", required_argument, NULL, 'c'},
        {"format", required_argument, NULL, 'f'},
        {"read-only", no_argument, NULL, 'r'},
        {"snapshot", required_argument, NULL, 'l'},
        {"load-snapshot", required_argument, NULL, 'l'},
        {"force-share", no_argument, NULL, 'U'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    int c;

    while ((c = getopt_long(argc, argv, "c:f:rl:Uh", lopts, NULL)) != -1) {
        if (c == 'c') {
            cl->cmds[cl->nb_cmds++] = optarg;
        } else if (c == 'f') {
            cl->open.fmt = optarg;
        } else if (c == 'r') {
            cl->open.read_only = true;
        } else if (c == 'l') {
            cl->open.snapshot = optarg;
        } else if (c == 'U') {
            cl->open.force_share = true;
        } else {
            usage();
            return c == 'h' ? 2 : 1;
        }
    }
    if (argc - optind > 1) {
        usage();
        return 1;
    }
    cl->open.path = optind < argc ? argv[optind] : NULL;
    return 0;
}

int cmd_io(int argc, char **argv)
{
    struct io_state s = {0};
    struct io_cmdline cl = {0};
    char *argv0 = argv[0];
    int ret, failed = 0;

    cl.cmds = calloc((size_t)argc + 1, sizeof *cl.cmds);
    if (!cl.cmds)
        return 1;
    /* getopt's own messages then read "qimg: ...". */
    argv[0] = (char *)cli_prog; /* (getopt's messages name it) */
    io_getopt_reset();
    ret = parse_cmdline(argc, argv, &cl);
    argv[0] = argv0;
    if (ret == 0 && cl.open.path && io_open(&s, &cl.open) < 0)
        ret = 1;
    if (ret != 0) {
        free(cl.cmds);
        return ret == 2 ? 0 : 1;
    }
    if (cl.nb_cmds == 0)
        failed = run_interactive(&s);
    for (int i = 0; i < cl.nb_cmds && !s.quit; i++)
        if (run_line(&s, cl.cmds[i]) < 0)
            failed = 1;
    if (s.img && io_close(&s) < 0)
        failed = 1;
    free(cl.cmds);
    return failed;
}
