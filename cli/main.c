/*
 * main.c - the qimg command: subcommand table, global options, help.
 *
 * Error messages and exit codes mirror qemu-img 7.2 ("qimg: " takes the
 * place of "qemu-img: ").
 */
#include "cli.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

bool cli_no_locking;

struct command {
    const char *name;
    int (*fn)(int argc, char **argv);
};

static const struct command commands[] = {
    {"amend", cmd_amend},
    {"bitmap", cmd_bitmap},
    {"bench", cmd_bench},     {"check", cmd_check},
    {"commit", cmd_commit},   {"compact", cmd_compact},
    {"compare", cmd_compare},
    {"convert", cmd_convert}, {"create", cmd_create},
    {"dd", cmd_dd},
    {"diff", cmd_diff},
    {"info", cmd_info},       {"io", cmd_io},
    {"map", cmd_map},         {"measure", cmd_measure},
    {"rebase", cmd_rebase},
    {"resize", cmd_resize},   {"snapshot", cmd_snapshot},
};

void cli_error(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "%s: ", cli_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

void cli_warn_raw_probe(const char *file)
{
    fflush(stdout);
    fprintf(stderr,
            "WARNING: Image format was not specified for '%s' and probing "
            "guessed raw.\n"
            "         Automatically detecting the format is dangerous for raw "
            "images, write operations on block 0 will be restricted.\n"
            "         Specify the 'raw' format explicitly to remove the "
            "restrictions.\n",
            file);
}

int cli_usage_error(const char *fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "%s: ", cli_prog);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry '%s --help' for more information\n", cli_prog);
    return 1;
}

void cli_lib_error(const char *prefix_fmt, ...)
{
    va_list ap;

    fflush(stdout);
    fprintf(stderr, "%s: ", cli_prog);
    va_start(ap, prefix_fmt);
    vfprintf(stderr, prefix_fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s\n", qimg_last_error()->message);
}

int cli_getopt_error(int opt, const char *arg)
{
    if (opt == ':')
        return cli_usage_error("missing argument for option '%s'", arg);
    return cli_usage_error("unrecognized option '%s'", arg);
}

void cli_help(void)
{
    printf(
        "qimg version %s\n"
        "usage: qimg [standard options] command [command options]\n"
        "qcow2 disk image utility, a drop-in for the qemu-img commands it "
        "implements\n"
        "\n"
        "    '-h', '--help'       display this help and exit\n"
        "    '-V', '--version'    output version information and exit\n"
        "    '--no-locking'       do not take QEMU-compatible image locks (for "
        "file\n"
        "                         systems without lock support; as "
        "file.locking=off)\n"
        "\n"
        "Command syntax:\n"
        "  amend [-p] [-q] [-f fmt] [-t cache] [--force] -o options "
        "filename\n"
        "  bench [-c count] [-d depth] [-f fmt] "
        "[--flush-interval=flush_interval] "
        "[-n] [-o offset] [--pattern=pattern] [-q] [-s buffer_size] "
        "[-S step_size] [-w] [-U] filename\n"
        "  bitmap (--merge SOURCE | --add | --remove | --clear | --enable | "
        "--disable)... [-b source_file [-F source_fmt]] [-g granularity] "
        "[--object objectdef] [--image-opts | -f fmt] filename bitmap\n"
        "  check [-q] [-f fmt] [--output=ofmt] [-r [leaks | all]] [-U] "
        "filename\n"
        "  commit [-q] [-f fmt] [-t cache] [-b base] [-r rate_limit] [-d] "
        "[-p] filename\n"
        "  compact [-f fmt] [--image-opts] [--output=ofmt] [-p] [-q] "
        "filename\n"
        "  compare [-f fmt] [-F fmt] [-T src_cache] [-p] [-q] [-s] [-U] "
        "filename1 filename2\n"
        "  convert [--bitmaps [--skip-broken-bitmaps]] [--diff-from snapshot] "
        "[--salvage] [-U] [-c] [-p] [-q] [-n] [-f fmt] [-O output_fmt] "
        "[-o options] [-l snapshot_param] [-S sparse_size] [-t cache] "
        "filename output_filename\n"
        "  create [-q] [-f fmt] [-b backing_file [-F backing_fmt]] [-u] "
        "[-o options] filename [size]\n"
        "  dd [--image-opts] [-U] [-f fmt] [-O output_fmt] [bs=block_size] "
        "[count=blocks] [skip=blocks] if=input of=output\n"
        "  diff [-f fmt] [--output=ofmt] [--exact] [-U] filename "
        "from_snapshot [to_snapshot]\n"
        "  info [-f fmt] [--output=ofmt] [--backing-chain] [-U] filename\n"
        "  io [-f fmt] [-r] [-U] [-l snapshot_param] -c command [-c command "
        "...] filename\n"
        "  map [-f fmt] [--start-offset=offset] [--max-length=len] "
        "[--output=ofmt] [-U] filename\n"
        "  measure [--output=ofmt] [-O output_fmt] [-o options] [--size N | "
        "[--image-opts] [-f fmt] [-l snapshot_param] [-U] filename]\n"
        "  rebase [-U] [-q] [-f fmt] [-t cache] [-T src_cache] [-p] [-u] "
        "-b backing_file [-F backing_fmt] filename\n"
        "  resize [-f fmt] [--preallocation=prealloc] [-q] [--shrink] "
        "filename [+ | -]size\n"
        "  snapshot [-f fmt] [-U] [-q] [--output=ofmt] [-l [--space] | "
        "-a snapshot | "
        "-c snapshot | -d snapshot | --rename snapshot new_name] filename\n"
        "\n"
        "Command parameters:\n"
        "  'filename' is a disk image filename\n"
        "  'fmt' is the disk image format (qcow2 or raw); it is guessed "
        "when omitted\n"
        "  'size' is the disk image size in bytes. Optional suffixes\n"
        "    'k' or 'K' (kilobyte, 1024), 'M' (megabyte, 1024k), 'G' "
        "(gigabyte, 1024M),\n"
        "    'T' (terabyte, 1024G), 'P' (petabyte, 1024T) and 'E' (exabyte, "
        "1024P) are\n"
        "    supported. 'b' is ignored.\n"
        "  'options' is a comma separated list of format specific options "
        "in a\n"
        "    name=value format. Use -o help for an overview of the options\n"
        "  'snapshot_param' is 'snapshot.id=[ID],snapshot.name=[NAME]' or "
        "'[ID_OR_NAME]'\n"
        "  '-U' opens images without the shared write lock (force share)\n"
        "  '-q' use Quiet mode - do not print any output (except errors)\n"
        "  '-p' show progress of command (only certain commands)\n"
        "  '--output' takes the format in which the output must be done "
        "(human or json)\n"
        "\n"
        "Parameters to check subcommand:\n"
        "  '-r' tries to repair any inconsistencies that are found during "
        "the check.\n"
        "       '-r leaks' repairs only cluster leaks, whereas '-r all' fixes "
        "all\n"
        "       kinds of errors.\n"
        "\n"
        "Parameters to bitmap subcommand:\n"
        "  'bitmap' is the name of the bitmap to manipulate, through one or "
        "more\n"
        "       actions from '--add', '--remove', '--clear', '--enable', "
        "'--disable',\n"
        "       or '--merge source'\n"
        "  '-g granularity' sets the granularity for '--add' actions\n"
        "  '-b source' and '-F src_fmt' tell '--merge' actions to find the "
        "source\n"
        "       bitmaps from an alternative file\n"
        "\n"
        "Parameters to compact subcommand (qimg only):\n"
        "  moves the clusters in use near the end of a qcow2 file into free "
        "clusters\n"
        "       nearer its start, then cuts the file and punches the free "
        "clusters left;\n"
        "       every snapshot, bitmap and the backing link are kept, and "
        "leaks are\n"
        "       repaired. One step, atomic: a power cut leaves the old image "
        "or the new.\n"
        "       Needs free space on the file system for the bytes it moves "
        "(at most\n"
        "       the file's size past its new end) until the file is cut.\n"
        "\n"
        "Parameters to compare subcommand:\n"
        "  '-f' first image format\n"
        "  '-F' second image format\n"
        "  '-s' run in Strict mode - fail on different image size or sector "
        "allocation\n"
        "\n"
        "Parameters to snapshot subcommand:\n"
        "  'snapshot' is the name of the snapshot to create, apply or delete\n"
        "  '-a' applies a snapshot (revert disk to saved state)\n"
        "  '-c' creates a snapshot\n"
        "  '-d' deletes a snapshot\n"
        "  '-l' lists all snapshots in the given image\n"
        "  '--rename' renames a snapshot (ID or name) to new_name, atomically "
        "(qimg only)\n"
        "  '--space' with '-l' shows the bytes each snapshot and the active "
        "disk take\n"
        "       alone and share (qimg only)\n"
        "\n"
        "Supported formats: qcow2 raw\n",
        qimg_version());
}

static void print_version(void) { printf("qimg version %s\n", qimg_version()); }

const char *cli_prog = "qimg";

int main(int argc, char **argv)
{
    const char *base = argc ? strrchr(argv[0], '/') : NULL;
    const char *cmd;

    base = base ? base + 1 : argc ? argv[0] : "";
    if (!strcmp(base, "qemu-img"))
        cli_prog = "qemu-img";

    if (argc > 1 && !strcmp(argv[1], "--no-locking")) {
        cli_no_locking = true;
        argc--;
        argv++;
    }
    if (argc < 2)
        return cli_usage_error("Not enough arguments");
    cmd = argv[1];
    if (!strcmp(cmd, "-h") || !strcmp(cmd, "--help")) {
        cli_help();
        return 0;
    }
    if (!strcmp(cmd, "-V") || !strcmp(cmd, "--version")) {
        print_version();
        return 0;
    }
    if (cmd[0] == '-')
        return cli_usage_error("unrecognized option '%s'", cmd);
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (!strcmp(commands[i].name, cmd))
            return commands[i].fn(argc - 1, argv + 1);
    return cli_usage_error("Command not found: %s", cmd);
}
