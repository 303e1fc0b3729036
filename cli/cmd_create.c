/* cmd_create.c - qimg create (not implemented yet). */
#include "cli.h"

int cmd_create(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_error("'create' is not implemented yet");
    return 1;
}
