/* float_bits.h: fp32 values as their bits and back, and the vectorizable finite check the readers share. */
#ifndef RT_FLOAT_BITS_H
#define RT_FLOAT_BITS_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

static inline uint32_t rt_f32_bits(float x) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    return bits;
}

static inline float rt_bits_f32(uint32_t bits) {
    float x;
    memcpy(&x, &bits, sizeof x);
    return x;
}

/* 1 when no value is NaN or infinite. An or over exponent bits, not an early exit, so the loop vectorizes; a
 * caller that needs the first bad value looks for it only when this says there is one. */
static inline int rt_f32_all_finite(const float *x, size_t n) {
    uint32_t bad = 0;
    for (size_t i = 0; i < n; i++)
        bad |= (rt_f32_bits(x[i]) & 0x7f800000u) == 0x7f800000u;
    return !bad;
}

#endif
