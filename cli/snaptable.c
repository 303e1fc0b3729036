/*
 * snaptable.c - printing the snapshot table (`qimg info`, `qimg snapshot
 * -l`) column for column as qemu-img 7.2 does.
 *
 * Columns are padded, never cut: a long TAG or VM CLOCK pushes the rest
 * of its line to the right. Widths count bytes, not characters. DATE is
 * local time; VM CLOCK is hours:minutes:seconds.milliseconds with the
 * hours not wrapped at 24; ICOUNT is blank when unknown.
 */
#include "cli.h"
#include "snaptable.h"

#include <inttypes.h>
#include <time.h>

void snaptable_print_header(FILE *f)
{
    fprintf(f, "%-10s%-17s%8s%20s%13s%11s", "ID", "TAG", "VM SIZE", "DATE",
            "VM CLOCK", "ICOUNT");
}

void snaptable_print_row(FILE *f, const struct qimg_snapshot *sn)
{
    char size[64], date[64] = "", clock[128], icount[32] = "";
    time_t t = (time_t)sn->date_sec;
    int64_t secs = (int64_t)(sn->vm_clock_nsec / 1000000000u);
    struct tm tm;

    if (localtime_r(&t, &tm))
        strftime(date, sizeof date, "%Y-%m-%d %H:%M:%S", &tm);
    /* The int casts are QEMU's: huge clocks wrap the same way. */
    snprintf(clock, sizeof clock, "%02d:%02d:%02d.%03d", (int)(secs / 3600),
             (int)((secs / 60) % 60), (int)(secs % 60),
             (int)((sn->vm_clock_nsec / 1000000u) % 1000));
    fmt_size(size, sizeof size, sn->vm_state_size);
    if (sn->icount != UINT64_MAX)
        snprintf(icount, sizeof icount, "%" PRId64, (int64_t)sn->icount);
    fprintf(f, "%-9.*s %-16.*s %8s%20s%13s%11s", SNAPTABLE_MAX_ID, sn->id,
            SNAPTABLE_MAX_NAME, sn->name, size, date, clock, icount);
}

void snaptable_print(FILE *f, const struct qimg_snapshot *list, size_t count)
{
    if (count == 0)
        return;
    fputs("Snapshot list:\n", f);
    snaptable_print_header(f);
    fputc('\n', f);
    for (size_t i = 0; i < count; i++) {
        snaptable_print_row(f, &list[i]);
        fputc('\n', f);
    }
}
