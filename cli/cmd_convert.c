/* cmd_convert.c - qimg convert (not implemented yet). */
#include "cli.h"

int cmd_convert(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_error("'convert' is not implemented yet");
    return 1;
}
