/* backend_cpu_internal.h: CPU attention kernels, defined in backend_cpu_attention.c, placed in the CPU table. */
#ifndef RT_BACKEND_CPU_INTERNAL_H
#define RT_BACKEND_CPU_INTERNAL_H

#include "backend.h"

void rt_cpu_attn_block_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                               const int64_t *q_pos, const int64_t *k_pos, size_t Tq, size_t Tk,
                               const rt_attn_shape *shape);
void rt_cpu_attn_delta(float *delta, const float *out, const float *dout, size_t Tq, const rt_attn_shape *shape);
void rt_cpu_attn_block_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                const float *v, const float *lse, const float *delta, const int64_t *q_pos,
                                const int64_t *k_pos, size_t Tq, size_t Tk, const rt_attn_shape *shape);

#endif
