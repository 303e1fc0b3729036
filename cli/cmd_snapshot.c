/* cmd_snapshot.c - qimg snapshot (not implemented yet). */
#include "cli.h"

int cmd_snapshot(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_error("'snapshot' is not implemented yet");
    return 1;
}
