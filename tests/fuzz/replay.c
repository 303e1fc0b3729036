/*
 * replay.c - standalone driver for the fuzz targets: feeds files to
 * LLVMFuzzerTestOneInput() without libFuzzer.
 *
 * Linked with one fuzz_<name>.c, built by the project's compiler and run by
 * `meson test --suite fuzz` over the seed corpus and the regression inputs
 * (in the sanitizer build too, where a leak or an invalid access fails the
 * test). Arguments are files or directories; a directory contributes its
 * regular files in name order, except dot files and README*. Each input's
 * name is printed before it runs, so a crash names its input.
 */
#include "fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static int read_file(const char *path, uint8_t **out, size_t *len)
{
    FILE *f = fopen(path, "rb");
    uint8_t *buf = NULL;
    size_t cap = 0, n = 0;

    *out = NULL;
    if (!f)
        return -errno;
    for (;;) {
        if (n == cap) {
            uint8_t *p = realloc(buf, cap ? cap * 2 : 65536);
            if (!p) {
                free(buf);
                fclose(f);
                return -ENOMEM;
            }
            buf = p;
            cap = cap ? cap * 2 : 65536;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    fclose(f);
    *out = buf;
    *len = n;
    return 0;
}

static int run_file(const char *path)
{
    uint8_t *data;
    size_t len = 0;
    int ret = read_file(path, &data, &len);

    if (ret < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(-ret));
        return ret;
    }
    printf("replay: %s (%zu bytes)\n", path, len);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, len);
    free(data);
    return 0;
}

static int cmp_names(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The regular files of a directory, sorted; *count of them. */
static char **list_dir(const char *dir, size_t *count)
{
    DIR *d = opendir(dir);
    char **names = NULL;
    size_t n = 0;
    struct dirent *e;

    *count = 0;
    if (!d)
        return NULL;
    while ((e = readdir(d))) {
        char **p;
        if (e->d_name[0] == '.' || !strncmp(e->d_name, "README", 6))
            continue;
        p = realloc(names, (n + 1) * sizeof *names);
        if (!p)
            break;
        names = p;
        if (asprintf(&names[n], "%s/%s", dir, e->d_name) < 0)
            break;
        n++;
    }
    closedir(d);
    if (n > 1)
        qsort(names, n, sizeof *names, cmp_names);
    *count = n;
    return names;
}

/* Run a file, or every file of a directory; returns the inputs run or a
 * negative errno. */
static int run_path(const char *path)
{
    struct stat st;
    char **names;
    size_t n;
    int ret = 0, runs = 0;

    if (stat(path, &st) < 0) {
        fprintf(stderr, "replay: %s: %s\n", path, strerror(errno));
        return -errno;
    }
    if (!S_ISDIR(st.st_mode))
        return run_file(path) < 0 ? -EIO : 1;
    names = list_dir(path, &n);
    for (size_t i = 0; i < n; i++) {
        if (ret == 0 && stat(names[i], &st) == 0 && S_ISREG(st.st_mode)) {
            ret = run_file(names[i]);
            runs++;
        }
        free(names[i]);
    }
    free(names);
    return ret < 0 ? ret : runs;
}

int main(int argc, char **argv)
{
    int total = 0;

    if (argc < 2) {
        fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
        return 2;
    }
    for (int i = 1; i < argc; i++) {
        int ret = run_path(argv[i]);
        if (ret < 0)
            return 1;
        total += ret;
    }
    if (total == 0) {
        fprintf(stderr, "replay: no inputs\n");
        return 1;
    }
    printf("replay: %d inputs, none failed\n", total);
    return 0;
}
