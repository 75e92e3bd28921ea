/* model_internal.h: the layer forward/backward shared by model.c; not part of the public model interface. */
#ifndef RT_MODEL_INTERNAL_H
#define RT_MODEL_INTERNAL_H

#include "model.h"

/* Between the ops of a layer: lets the communication in flight (ZeRO's) move. */
static inline void rt_model_progress(const rt_model *m) {
    if (m->progress) m->progress(m->progress_ctx);
}

/* The layout of the model's attention calls: q|k|v interleaved per token, causal. */
rt_attn_shape rt_attention_shape(const rt_model_shape *s);

/* x (N,C) -> out (N,C) for layer l, filling acts. dropout may be NULL (off). */
void rt_layer_forward(rt_model *m, int layer, rt_layer_acts *acts, const float *x, float *out, size_t n_seqs,
                      size_t local_len, const rt_dropout_plan *dropout);

/* m->d_resid holds d(layer output) on entry and d(layer input) on return; parameter gradients accumulate. */
void rt_layer_backward(rt_model *m, int layer, const rt_layer_acts *acts, const float *x, size_t n_seqs,
                       size_t local_len, const rt_dropout_plan *dropout);

/* The MLP of layer l in tiles of m->mlp_tile tokens (model_mlp.c): out (N,C) = mlp(acts->norm2), no dropout;
 * acts->fc and acts->act are left holding the last tile. */
void rt_mlp_forward(rt_model *m, int layer, const rt_layer_acts *acts, float *out, size_t N);

/* d_norm (N,C) = d(acts->norm2) from d_out (N,C), overwritten; the fc and fcproj weight and bias gradients
 * accumulate. With several tiles it recomputes each tile's fc and act into acts->fc / acts->act (the
 * scratch, not the struct, changes: hence const). */
void rt_mlp_backward(rt_model *m, int layer, const rt_layer_acts *acts, const float *d_out, float *d_norm, size_t N);

#endif
