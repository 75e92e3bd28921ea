/* backend_cpu.c: PLACEHOLDER table, replaced by the real CPU backend. */
#include <stdlib.h>
#include <string.h>
#include "backend_cpu_internal.h"
#include "common.h"

static void * cpu_device_alloc(size_t bytes) {
    (void)bytes;
    rt_fatal("cpu backend: device_alloc pending");
}
static void cpu_device_free(void *ptr) {
    (void)ptr;
    rt_fatal("cpu backend: device_free pending");
}
static void cpu_memset_zero(void *dst, size_t bytes) {
    (void)dst;
    (void)bytes;
    rt_fatal("cpu backend: memset_zero pending");
}
static void cpu_copy(void *dst, const void *src, size_t bytes) {
    (void)dst;
    (void)src;
    (void)bytes;
    rt_fatal("cpu backend: copy pending");
}
static void cpu_matmul_forward(float *out, const float *inp, const float *weight, const float *bias, size_t N, int C, int OC) {
    (void)out;
    (void)inp;
    (void)weight;
    (void)bias;
    (void)N;
    (void)C;
    (void)OC;
    rt_fatal("cpu backend: matmul_forward pending");
}
static void cpu_matmul_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, size_t N, int C, int OC) {
    (void)dinp;
    (void)dweight;
    (void)dbias;
    (void)dout;
    (void)inp;
    (void)weight;
    (void)N;
    (void)C;
    (void)OC;
    rt_fatal("cpu backend: matmul_backward pending");
}
static void cpu_embedding_forward(float *out, const int32_t *tokens, const int64_t *pos, const float *wte, const float *wpe, size_t N, int C) {
    (void)out;
    (void)tokens;
    (void)pos;
    (void)wte;
    (void)wpe;
    (void)N;
    (void)C;
    rt_fatal("cpu backend: embedding_forward pending");
}
static void cpu_embedding_backward(float *dwte, float *dwpe, const float *dout, const int32_t *tokens, const int64_t *pos, size_t N, int C) {
    (void)dwte;
    (void)dwpe;
    (void)dout;
    (void)tokens;
    (void)pos;
    (void)N;
    (void)C;
    rt_fatal("cpu backend: embedding_backward pending");
}
static void cpu_layernorm_forward(float *out, float *mean, float *rstd, const float *inp, const float *weight, const float *bias, size_t N, int C, float eps) {
    (void)out;
    (void)mean;
    (void)rstd;
    (void)inp;
    (void)weight;
    (void)bias;
    (void)N;
    (void)C;
    (void)eps;
    rt_fatal("cpu backend: layernorm_forward pending");
}
static void cpu_layernorm_backward(float *dinp, float *dweight, float *dbias, const float *dout, const float *inp, const float *weight, const float *mean, const float *rstd, size_t N, int C) {
    (void)dinp;
    (void)dweight;
    (void)dbias;
    (void)dout;
    (void)inp;
    (void)weight;
    (void)mean;
    (void)rstd;
    (void)N;
    (void)C;
    rt_fatal("cpu backend: layernorm_backward pending");
}
static void cpu_rmsnorm_forward(float *out, float *rstd, const float *inp, const float *weight, size_t N, int C, float eps) {
    (void)out;
    (void)rstd;
    (void)inp;
    (void)weight;
    (void)N;
    (void)C;
    (void)eps;
    rt_fatal("cpu backend: rmsnorm_forward pending");
}
static void cpu_rmsnorm_backward(float *dinp, float *dweight, const float *dout, const float *inp, const float *weight, const float *rstd, size_t N, int C) {
    (void)dinp;
    (void)dweight;
    (void)dout;
    (void)inp;
    (void)weight;
    (void)rstd;
    (void)N;
    (void)C;
    rt_fatal("cpu backend: rmsnorm_backward pending");
}
static void cpu_rope_forward(float *x, const int64_t *pos, size_t N, int n_heads, int head_dim, size_t stride, float theta) {
    (void)x;
    (void)pos;
    (void)N;
    (void)n_heads;
    (void)head_dim;
    (void)stride;
    (void)theta;
    rt_fatal("cpu backend: rope_forward pending");
}
static void cpu_rope_backward(float *dx, const int64_t *pos, size_t N, int n_heads, int head_dim, size_t stride, float theta) {
    (void)dx;
    (void)pos;
    (void)N;
    (void)n_heads;
    (void)head_dim;
    (void)stride;
    (void)theta;
    rt_fatal("cpu backend: rope_backward pending");
}
static void cpu_gelu_forward(float *out, const float *inp, size_t n) {
    (void)out;
    (void)inp;
    (void)n;
    rt_fatal("cpu backend: gelu_forward pending");
}
static void cpu_gelu_backward(float *dinp, const float *inp, const float *dout, size_t n) {
    (void)dinp;
    (void)inp;
    (void)dout;
    (void)n;
    rt_fatal("cpu backend: gelu_backward pending");
}
static void cpu_swiglu_forward(float *out, const float *gate_up, size_t N, int F) {
    (void)out;
    (void)gate_up;
    (void)N;
    (void)F;
    rt_fatal("cpu backend: swiglu_forward pending");
}
static void cpu_swiglu_backward(float *dgate_up, const float *dout, const float *gate_up, size_t N, int F) {
    (void)dgate_up;
    (void)dout;
    (void)gate_up;
    (void)N;
    (void)F;
    rt_fatal("cpu backend: swiglu_backward pending");
}
static void cpu_add(float *out, const float *a, const float *b, size_t n) {
    (void)out;
    (void)a;
    (void)b;
    (void)n;
    rt_fatal("cpu backend: add pending");
}
static void cpu_dropout(float *x, const int64_t *pos, size_t N, int C, float p, rt_rng_key key) {
    (void)x;
    (void)pos;
    (void)N;
    (void)C;
    (void)p;
    (void)key;
    rt_fatal("cpu backend: dropout pending");
}
static void cpu_softmax_xent(float *logits, float *losses, const int32_t *targets, size_t n, int V, int Vp, float dloss_scale) {
    (void)logits;
    (void)losses;
    (void)targets;
    (void)n;
    (void)V;
    (void)Vp;
    (void)dloss_scale;
    rt_fatal("cpu backend: softmax_xent pending");
}
static double cpu_sum_squares(const float *x, size_t n) {
    (void)x;
    (void)n;
    rt_fatal("cpu backend: sum_squares pending");
}
static void cpu_scale(float *x, float factor, size_t n) {
    (void)x;
    (void)factor;
    (void)n;
    rt_fatal("cpu backend: scale pending");
}
static void cpu_adamw_update(float *param, const float *grad, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    (void)param;
    (void)grad;
    (void)m;
    (void)v;
    (void)n;
    (void)lr;
    (void)beta1;
    (void)beta2;
    (void)eps;
    (void)weight_decay;
    (void)t;
    rt_fatal("cpu backend: adamw_update pending");
}
static const rt_backend cpu_backend = {
    .name = "cpu",
    .device_alloc = cpu_device_alloc,
    .device_free = cpu_device_free,
    .memset_zero = cpu_memset_zero,
    .copy = cpu_copy,
    .matmul_forward = cpu_matmul_forward,
    .matmul_backward = cpu_matmul_backward,
    .embedding_forward = cpu_embedding_forward,
    .embedding_backward = cpu_embedding_backward,
    .layernorm_forward = cpu_layernorm_forward,
    .layernorm_backward = cpu_layernorm_backward,
    .rmsnorm_forward = cpu_rmsnorm_forward,
    .rmsnorm_backward = cpu_rmsnorm_backward,
    .rope_forward = cpu_rope_forward,
    .rope_backward = cpu_rope_backward,
    .gelu_forward = cpu_gelu_forward,
    .gelu_backward = cpu_gelu_backward,
    .swiglu_forward = cpu_swiglu_forward,
    .swiglu_backward = cpu_swiglu_backward,
    .add = cpu_add,
    .dropout = cpu_dropout,
    .attn_block_forward = rt_cpu_attn_block_forward,
    .attn_delta = rt_cpu_attn_delta,
    .attn_block_backward = rt_cpu_attn_block_backward,
    .softmax_xent = cpu_softmax_xent,
    .sum_squares = cpu_sum_squares,
    .scale = cpu_scale,
    .adamw_update = cpu_adamw_update,
};
const rt_backend *rt_backend_cpu(void) { return &cpu_backend; }
