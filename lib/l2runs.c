/*
 * l2runs.c - standard L2 tables kept in memory as runs of entries.
 *
 * A snapshot operation needs some L2 tables twice: once to validate and
 * count them, and again, once every count is known, to decide their
 * COPIED flags and write copies. Holding the tables themselves would cost
 * 128 MiB on a fully allocated 1 TiB image; reading them twice costs a
 * second pass over the file. Most tables are a few runs of consecutive
 * clusters (or of unallocated entries), so they are kept as runs instead:
 * run (e, len) stands for the entries e, e + c, ..., e + (len - 1) * c,
 * where c is the cluster size if e holds an offset and 0 if not.
 *
 * Only plain tables are kept (qcow2-format.md §3.3: every entry 0 or a
 * cluster offset inside the file with at most COPIED set); a table with
 * more runs than an eighth of its own size, or one past the store's
 * budget, is validated but not kept, and its user reads it again.
 */
#include "l2runs.h"

#include "endian.h"
#include "l1l2.h"
#include "util.h"

#include <errno.h>
#include <stdlib.h>

#define L2RUNS_BUDGET ((16u << 20) / sizeof(struct l2run))

/* Make room for n more runs; false if that would pass the budget. */
static bool reserve(struct l2store *s, size_t n)
{
    size_t cap;
    struct l2run *r;

    if (s->nb + n <= s->cap)
        return true;
    if (s->nb + n > L2RUNS_BUDGET)
        return false;
    cap = MIN(MAX(s->cap * 2, s->nb + n), L2RUNS_BUDGET);
    r = realloc(s->runs, cap * sizeof *r);
    if (!r)
        return false;
    s->runs = r;
    s->cap = cap;
    return true;
}

/* The branch-free part of a scan, which the compiler vectorizes: the
 * bits no plain entry has (the result), the highest offset (*hi) and the
 * number of places where a run breaks (*breaks). */
static inline __attribute__((always_inline)) uint64_t
scan_body(const uint8_t *buf, uint64_t n, uint64_t bad, uint64_t cs,
          uint64_t *hi, uint64_t *breaks)
{
    uint64_t acc = 0, nb = 0;
    int64_t top = 0; /* offsets are below 2^56: signed compares vectorize */

    for (uint64_t j = 0; j < n; j++) {
        uint64_t e = be64_load(buf + 8 * j);
        int64_t o = (int64_t)(e & L2E_OFFSET_MASK);
        acc |= e & bad;
        top = o > top ? o : top;
    }
    for (uint64_t j = 1; j < n; j++) {
        uint64_t p = be64_load(buf + 8 * j - 8), e = be64_load(buf + 8 * j);
        nb += e != p + (p & L2E_OFFSET_MASK ? cs : 0);
    }
    *hi = (uint64_t)top;
    *breaks = nb;
    return acc;
}

/* Entries from runs, again in a form the compiler vectorizes. */
static inline __attribute__((always_inline)) void
emit_body(const struct l2run *r, size_t n, uint64_t cs, uint64_t clear,
          uint8_t *out)
{
    for (size_t i = 0; i < n; i++) {
        uint64_t e = r[i].e & ~clear, len = r[i].len;
        uint64_t step = e & L2E_OFFSET_MASK ? cs : 0;
        for (uint64_t k = 0; k < len; k++, e += step)
            be64_store(out + 8 * k, e);
        out += 8 * len;
    }
}

static void emit_base(const struct l2run *r, size_t n, uint64_t cs,
                      uint64_t clear, uint8_t *out)
{
    emit_body(r, n, cs, clear, out);
}

static uint64_t scan_words_base(const uint8_t *buf, uint64_t n, uint64_t bad,
                                uint64_t cs, uint64_t *hi, uint64_t *breaks)
{
    return scan_body(buf, n, bad, cs, hi, breaks);
}

#if defined(__x86_64__) && defined(__GNUC__)

/* x86-64 also gets AVX2 versions (four times the lanes), chosen on first
 * use. Not with target_clones: its resolver asks the CPU at every program
 * start, and a CPUID instruction is slow in a virtual machine. */
__attribute__((target("avx2"))) static uint64_t
scan_words_avx2(const uint8_t *buf, uint64_t n, uint64_t bad, uint64_t cs,
                uint64_t *hi, uint64_t *breaks)
{
    return scan_body(buf, n, bad, cs, hi, breaks);
}

#if __has_include(<sys/platform/x86.h>)
#include <sys/platform/x86.h>

/* glibc asked the CPU at start-up already. */
static bool have_avx2(void)
{
    return CPU_FEATURE_ACTIVE(AVX2);
}
#else
#include <cpuid.h>

static bool have_avx2(void)
{
    unsigned a, b, c, d, lo, hi;

    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & bit_OSXSAVE) ||
        !(c & bit_AVX))
        return false;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    if ((lo & 6) != 6) /* the OS saves the YMM registers */
        return false;
    return __get_cpuid_count(7, 0, &a, &b, &c, &d) && (b & bit_AVX2);
}
#endif

__attribute__((target("avx2"))) static void
emit_avx2(const struct l2run *r, size_t n, uint64_t cs, uint64_t clear,
          uint8_t *out)
{
    emit_body(r, n, cs, clear, out);
}

static bool use_avx2(void)
{
    static _Atomic int avx2 = -1;
    int use = avx2;

    if (use < 0)
        avx2 = use = have_avx2();
    return use;
}

static uint64_t scan_words(const uint8_t *buf, uint64_t n, uint64_t bad,
                           uint64_t cs, uint64_t *hi, uint64_t *breaks)
{
    return use_avx2() ? scan_words_avx2(buf, n, bad, cs, hi, breaks)
                      : scan_words_base(buf, n, bad, cs, hi, breaks);
}
#else
#define scan_words scan_words_base
#define use_avx2() false
#define emit_avx2 emit_base
#endif

int l2store_scan(struct l2store *s, const struct qcow2 *q, uint64_t l2_off,
                 const uint8_t *buf)
{
    const uint64_t cs = q->cluster_size, n = q->l2_entries;
    const uint64_t bad = ~(L2E_OFFSET_MASK | QCOW_OFLAG_COPIED) | (cs - 1);
    uint64_t hi, breaks, next;
    struct l2run *r;
    size_t nb, k = 0;
    int ret;

    if (q->ext_l2)
        return 0;
    if (scan_words(buf, n, bad, cs, &hi, &breaks) || hi >= q->file_size)
        return 0;
    nb = (size_t)breaks + 1;
    if (nb > MAX(n / 16, 1) || !reserve(s, nb))
        return 1; /* valid, but not kept */
    r = s->runs + s->nb;
    r[0] = (struct l2run){be64_load(buf), 1};
    next = r[0].e + (r[0].e & L2E_OFFSET_MASK ? cs : 0);
    if (nb == 1)
        r[0].len = n;
    for (uint64_t j = 1; nb > 1 && j < n; j++) {
        uint64_t e = be64_load(buf + 8 * j);
        if (e == next)
            r[k].len++;
        else
            r[++k] = (struct l2run){e, 1};
        next = e + (e & L2E_OFFSET_MASK ? cs : 0);
    }
    ret = u64map_put(&s->idx, l2_off, (uint64_t)s->nb << 32 | nb);
    if (ret < 0)
        return ret;
    s->nb += nb;
    return 1;
}

bool l2store_get(const struct l2store *s, uint64_t l2_off,
                 const struct l2run **runs, size_t *n)
{
    uint64_t v;

    if (!u64map_get(&s->idx, l2_off, &v))
        return false;
    *runs = s->runs + (v >> 32);
    *n = (size_t)(v & 0xffffffffu);
    return true;
}

void l2runs_emit(const struct l2run *r, size_t n, uint64_t cs, uint64_t clear,
                 uint8_t *out)
{
    if (use_avx2())
        emit_avx2(r, n, cs, clear, out);
    else
        emit_base(r, n, cs, clear, out);
}

void l2store_free(struct l2store *s)
{
    free(s->runs);
    u64map_free(&s->idx);
}
