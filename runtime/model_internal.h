/* model_internal.h: the layer forward/backward shared by model.c; not part of the public model interface. */
#ifndef RT_MODEL_INTERNAL_H
#define RT_MODEL_INTERNAL_H

#include "model.h"

/* Floats per token of the fused q|k|v projection: (H + 2*Hkv) * D. */
static inline size_t rt_qkv_width(const rt_model_shape *s) {
    return (size_t)(s->n_heads + 2 * s->n_kv_heads) * (size_t)s->head_dim;
}
/* Floats per token of the first MLP matmul: F (gpt2) or 2F (llama gate|up). */
static inline size_t rt_fc_width(const rt_model_shape *s) {
    return s->family == RT_FAMILY_LLAMA ? 2 * (size_t)s->d_ff : (size_t)s->d_ff;
}

/* The layout of the model's attention calls: q|k|v interleaved per token, causal. */
rt_attn_shape rt_attention_shape(const rt_model_shape *s);

/* x (N,C) -> out (N,C) for layer l, filling acts. dropout may be NULL (off). */
void rt_layer_forward(rt_model *m, int layer, rt_layer_acts *acts, const float *x, float *out, size_t n_seqs,
                      size_t local_len, const rt_dropout_plan *dropout);

/* m->d_resid holds d(layer output) on entry and d(layer input) on return; parameter gradients accumulate. */
void rt_layer_backward(rt_model *m, int layer, const rt_layer_acts *acts, const float *x, size_t n_seqs,
                       size_t local_len, const rt_dropout_plan *dropout);

#endif
