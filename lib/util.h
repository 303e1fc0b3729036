/*
 * util.h - alignment, rounding and overflow helpers.
 */
#ifndef QIMG_UTIL_H
#define QIMG_UTIL_H

#include <stdbool.h>
#include <stdint.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))
#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

/* `a` must be a power of two. */
#define IS_ALIGNED(x, a) (((x) & ((uint64_t)(a)-1)) == 0)
#define ALIGN_DOWN(x, a) ((x) & ~((uint64_t)(a)-1))
#define ALIGN_UP(x, a) ALIGN_DOWN((x) + (uint64_t)(a)-1, (a))
#define DIV_ROUND_UP(x, y) (((x) + (y)-1) / (y))

static inline bool is_power_of_2(uint64_t x)
{
    return x && !(x & (x - 1));
}

/* Round `x` up to a multiple of power-of-two `a`; false on overflow. */
static inline bool align_up_checked(uint64_t *out, uint64_t x, uint64_t a)
{
    if (x > UINT64_MAX - (a - 1))
        return false;
    *out = ALIGN_UP(x, a);
    return true;
}

static inline int ctz64(uint64_t x)
{
    return __builtin_ctzll(x);
}

#endif
