/* cmd_compare.c - qimg compare (not implemented yet). */
#include "cli.h"

int cmd_compare(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    cli_error("'compare' is not implemented yet");
    return 1;
}
