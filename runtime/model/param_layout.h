/* param_layout.h: a model shape and where each parameter lives in the flat buffer; no model needed. */
#ifndef RT_PARAM_LAYOUT_H
#define RT_PARAM_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/config/config.h"
#include "runtime/core/tensor.h"

/*
 * Conventions: B = sequences in the micro-batch on this rank, T = local
 * tokens per sequence (the whole sequence on one rank, T/sp with sequence
 * parallelism), N = B*T, C = d_model, H/Hkv = query/key-value heads, D = C/H,
 * F = d_ff, V = vocab, Vp = V padded to a multiple of 128 (row count of the
 * embedding and of the logits; padded logits are ignored by the loss).
 *
 * Parameters live in ONE flat buffer described by a table of named views
 * (rt_view_table). The layout is layer-major: embeddings, then every
 * tensor of layer 0, then layer 1, ..., then the final norm and LM head, so
 * one layer's parameters (and gradients) are one contiguous range: ZeRO
 * stage 2 reduces a layer's gradients as soon as its backward is done.
 * llm.c files store tensors layer-stacked; model_io.c reorders on load.
 *
 * Both families run the same layer code, with three small branches:
 *   norm:  gpt2 LayerNorm (weight, bias)      llama RMSNorm (weight)
 *   qkv:   gpt2 with bias                     llama no bias, RoPE on q and k
 *   mlp:   gpt2 fc (4C) -> GELU -> proj       llama gate_up (2F) -> SwiGLU -> down
 * gpt2 ties the LM head to wte (llama may: model.tie_embeddings) and adds learned position embeddings.
 */

typedef struct {
    rt_family family;
    int n_layers, d_model, n_heads, n_kv_heads, head_dim, d_ff, vocab_size, padded_vocab, max_seq_len;
    int tie_embeddings; /* llama: the LM head is wte (gpt2 always ties: rt_shape_tied) */
    float dropout, rope_theta, norm_eps;
} rt_model_shape;

/* 1 when the LM head is wte: every gpt2, and llama with model.tie_embeddings. */
static inline int rt_shape_tied(const rt_model_shape *s) { return s->family == RT_FAMILY_GPT2 || s->tie_embeddings; }

/* Floats per token of the fused q|k|v projection: (H + 2*Hkv) * D. */
static inline size_t rt_qkv_width(const rt_model_shape *s) {
    return (size_t)(s->n_heads + 2 * s->n_kv_heads) * (size_t)s->head_dim;
}
/* Floats per token of the first MLP matmul: F (gpt2) or 2F (llama gate|up). */
static inline size_t rt_fc_width(const rt_model_shape *s) {
    return s->family == RT_FAMILY_LLAMA ? 2 * (size_t)s->d_ff : (size_t)s->d_ff;
}

/* Pointers into the flat parameter (or gradient) buffer for one layer; NULL where the family has none. */
typedef struct {
    float *norm1_w, *norm1_b;   /* (C) */
    float *qkv_w, *qkv_b;       /* ((H+2Hkv)*D, C), ((H+2Hkv)*D) */
    float *proj_w, *proj_b;     /* (C, H*D), (C) */
    float *norm2_w, *norm2_b;   /* (C) */
    float *fc_w, *fc_b;         /* (FC, C), (FC): FC = F (gpt2) or 2F (llama gate|up) */
    float *fcproj_w, *fcproj_b; /* (C, F), (C) */
} rt_layer_params;

typedef struct {
    float *wte;                 /* (Vp, C) */
    float *wpe;                 /* (maxT, C), gpt2 only */
    float *norm_f_w, *norm_f_b; /* (C) */
    float *lm_head;             /* (Vp, C): wte when tied (gpt2, tied llama), else its own tensor */
} rt_top_params;

/* Shape from a resolved config; Vp = V rounded up to a multiple of 128. */
rt_model_shape rt_model_shape_from_config(const rt_config *cfg);
/* Parameter count (the flat buffer's length) of a shape. */
size_t rt_model_param_count(const rt_model_shape *shape);
/* The full name of a tensor: "layers.<layer>.<name>" for a layer's (layer >= 0), name itself otherwise. */
void rt_param_name(char full[RT_NAME_LEN], const char *name, int layer);
/* The named views of a shape's parameters in the layer-major order above (names as in checkpoints:
 * "wte", "layers.3.attn.qkv.weight", ...); layer_offset (L+1 entries, may be NULL) gets where each layer's
 * range starts, and the end of the last. rt_view_table_free releases the table. */
void rt_param_table_build(const rt_model_shape *shape, rt_view_table *table, size_t *layer_offset);
/* Random initial values of every parameter into host (table->total floats), deterministic in seed and
 * independent of the rank count: N(0, 0.02), residual output projections scaled by 1/sqrt(2L), norm weights
 * 1, biases 0, padded vocab rows 0. Each tensor draws from its own stream. */
void rt_param_table_init_values(const rt_model_shape *shape, const rt_view_table *table, uint64_t seed, float *host);

#endif
