/* cmd_check.c - qimg check (not implemented yet). */
#include "cli.h"

int cmd_check(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_error("'check' is not implemented yet");
    return 1;
}
