/* backend_cpu_attention.c: PLACEHOLDER, replaced by the blocked attention kernels. */
#include "backend_cpu_internal.h"
#include "common.h"

void rt_cpu_attn_block_forward(float *out, float *lse, const float *q, const float *k, const float *v,
                               const int64_t *q_pos, const int64_t *k_pos, size_t Tq, size_t Tk,
                               const rt_attn_shape *shape) {
    (void)out, (void)lse, (void)q, (void)k, (void)v, (void)q_pos, (void)k_pos, (void)Tq, (void)Tk, (void)shape;
    rt_fatal("pending");
}
void rt_cpu_attn_delta(float *delta, const float *out, const float *dout, size_t Tq, const rt_attn_shape *shape) {
    (void)delta, (void)out, (void)dout, (void)Tq, (void)shape;
    rt_fatal("pending");
}
void rt_cpu_attn_block_backward(float *dq, float *dk, float *dv, const float *dout, const float *q, const float *k,
                                const float *v, const float *lse, const float *delta, const int64_t *q_pos,
                                const int64_t *k_pos, size_t Tq, size_t Tk, const rt_attn_shape *shape) {
    (void)dq, (void)dk, (void)dv, (void)dout, (void)q, (void)k, (void)v, (void)lse, (void)delta, (void)q_pos,
        (void)k_pos, (void)Tq, (void)Tk, (void)shape;
    rt_fatal("pending");
}
