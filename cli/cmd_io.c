/* cmd_io.c - qimg io (not implemented yet). */
#include "cli.h"

int cmd_io(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_error("'io' is not implemented yet");
    return 1;
}
