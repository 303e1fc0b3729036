/*
 * spawn-time.c - run a command, report its wall time and peak RSS.
 *
 *   spawn-time OUTFILE command [args...]
 *
 * Writes "<seconds> <ru_maxrss KiB> <exit code>" to OUTFILE. bench/run.py
 * builds and uses it because a child spawned straight from Python inherits
 * Python's RSS high-water mark (Linux carries the peak across fork and
 * exec), which would hide anything below ~13 MiB. Forked from this small
 * process, the child's peak is its own. Command output goes where this
 * program's goes.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    struct rusage ru;
    int status, rc;
    double t0, t1;
    pid_t pid;
    FILE *f;

    if (argc < 3) {
        fprintf(stderr, "usage: spawn-time OUTFILE command [args...]\n");
        return 2;
    }
    t0 = now();
    pid = fork();
    if (pid == 0) {
        execvp(argv[2], argv + 2);
        perror(argv[2]);
        _exit(127);
    }
    if (pid < 0 || wait4(pid, &status, 0, &ru) < 0) {
        perror("spawn-time");
        return 2;
    }
    t1 = now();
    rc = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    f = fopen(argv[1], "w");
    if (!f) {
        perror(argv[1]);
        return 2;
    }
    fprintf(f, "%.9f %ld %d\n", t1 - t0, ru.ru_maxrss, rc);
    fclose(f);
    return 0;
}
