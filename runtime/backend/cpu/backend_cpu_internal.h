/* backend_cpu_internal.h: what the CPU backend's files share: the multiversioning macros and the vectorizable exp of
 * the hot loops, and the attention kernels and copy engine defined outside backend_cpu.c, in the CPU table. */
#ifndef RT_BACKEND_CPU_INTERNAL_H
#define RT_BACKEND_CPU_INTERNAL_H

#include <stdint.h>
#include <string.h>

#include "runtime/backend/backend.h"

/* The instance argument every op takes; the CPU backend has no state, so its ops ignore it. */
#define CPU_BE const rt_backend *be __attribute__((unused))

/* The hot loops of the CPU kernels (the attention tiles, the pointwise ops, AdamW) are compiled for AVX-512 and AVX2
 * as well as the baseline, picked at load time (GCC function multiversioning). RT_CPU_CLONES goes on a function
 * that runs a loop on the calling thread, called from the parallel region; its helpers are RT_CPU_INLINE, so
 * they compile into each clone (a call would run the baseline version). Results are bitwise reproducible on a
 * given machine, not across instruction sets. */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define RT_CPU_CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define RT_CPU_CLONES
#endif
#if defined(__GNUC__)
#define RT_CPU_INLINE inline __attribute__((always_inline))
#else
#define RT_CPU_INLINE inline
#endif

/*
 * exp(x) for x in [-RT_CPU_EXP_FLOOR, 0]; the caller floors its argument
 * (attention: a score minus its row max or lse; the pointwise ops: minus
 * a clamped magnitude). Cephes' expf (range reduction by ln 2, degree-6
 * polynomial, about 1 ulp) in a form the compiler vectorizes: no libm call
 * and no float branch. Below about -87.7 the result is exactly 0 (2^n
 * clamps to 0), so masked scores (-inf, floored) give 0. In attention the
 * floor is a runtime value on purpose: a clamp to a literal lets GCC fold
 * the clamped path to constants, and the two paths then stop the loop from
 * vectorizing.
 */
#define RT_CPU_EXP_FLOOR 104.0f
static inline float rt_cpu_exp_approx(float x) {
    /* n = round(x / ln 2) by the 1.5 * 2^23 trick (exact for |x / ln 2| < 2^22) */
    float fx = x * 1.44269504088896341f + 12582912.0f;
    fx -= 12582912.0f;
    float r = x - fx * 0.693359375f;
    r = r - fx * -2.12194440e-4f;
    float poly = 1.9875691500e-4f;
    poly = poly * r + 1.3981999507e-3f;
    poly = poly * r + 8.3334519073e-3f;
    poly = poly * r + 4.1665795894e-2f;
    poly = poly * r + 1.6666665459e-1f;
    poly = poly * r + 5.0000001201e-1f;
    float y = poly * (r * r) + r + 1.0f;
    int32_t n = (int32_t)fx;
    n = n < -127 ? -127 : n; /* 2^-127 -> bits 0 -> 0.0f */
    int32_t bits = (n + 127) << 23;
    float two_n;
    memcpy(&two_n, &bits, sizeof two_n);
    return y * two_n;
}

size_t rt_cpu_attn_workspace_bytes(CPU_BE, size_t max_Tq, size_t max_Tk, const rt_attn_shape *shape);
void rt_cpu_attn_block_forward(CPU_BE, float *out, float *lse, const float *q, const float *k, const float *v,
                               const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq, size_t Tk,
                               const rt_attn_shape *shape, void *workspace, size_t workspace_bytes);
void rt_cpu_attn_delta(CPU_BE, float *delta, const float *out, const float *dout, size_t Tq,
                       const rt_attn_shape *shape);
void rt_cpu_attn_block_backward(CPU_BE, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const float *lse, const float *delta,
                                const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq,
                                size_t Tk, const rt_attn_shape *shape, void *workspace, size_t workspace_bytes);

/* Copy engine (backend_cpu_stream.c): one worker thread per stream; see backend.h for the contract. */
rt_stream *rt_cpu_stream_create(CPU_BE);
void rt_cpu_stream_destroy(CPU_BE, rt_stream *s);
void rt_cpu_copy_async(CPU_BE, rt_stream *s, void *dst, const void *src, size_t bytes);
rt_event *rt_cpu_event_create(CPU_BE);
void rt_cpu_event_destroy(CPU_BE, rt_event *e);
void rt_cpu_event_record(CPU_BE, rt_event *e, rt_stream *s);
void rt_cpu_event_synchronize(CPU_BE, rt_event *e);
void rt_cpu_stream_wait_event(CPU_BE, rt_stream *s, rt_event *e);
void rt_cpu_synchronize(CPU_BE);
int rt_cpu_event_query(CPU_BE, rt_event *e);
void *rt_cpu_host_alloc(CPU_BE, size_t bytes);
void rt_cpu_host_free(CPU_BE, void *ptr);

/* TEST HOOK: every asynchronous copy that starts from now on first sleeps us microseconds on its worker (0 = off),
 * so tests can make the copy engine deliberately slow and catch a buffer used before its copy completed. */
void rt_cpu_copy_engine_set_delay_us(unsigned us);

#endif
