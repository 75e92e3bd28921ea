/* layer.h: one transformer layer's forward and backward, given only what a layer reads (not the model). */
#ifndef RT_LAYER_H
#define RT_LAYER_H

#include <stddef.h>
#include <stdint.h>

#include "param_layout.h"
#include "runtime/backend/backend.h"
#include "seqpar/seqpar.h"

/* Activations of one layer for one micro-batch; everything backward needs besides the layer input. */
typedef struct {
    float *norm1;                   /* (N, C) */
    float *norm1_mean, *norm1_rstd; /* (N) */
    float *qkv;                     /* (N, QKV), q and k after RoPE */
    float *att;                     /* (N, H*D) attention output, before proj */
    float *lse;                     /* (N, H) log-sum-exp of the attention rows */
    float *res1;                    /* (N, C) x + dropout(att @ proj^T) */
    float *norm2;                   /* (N, C) */
    float *norm2_mean, *norm2_rstd; /* (N) */
    float *fc;                      /* (mlp_tile, FC): all N rows untiled, one tile's with a tiled MLP */
    float *act;                     /* (mlp_tile, F) gelu(fc) or swiglu(fc), as fc */
} rt_layer_acts;

/* Counters a test or the log can read. */
typedef struct {
    uint64_t layer_forwards; /* layer forward executions, recomputes included */
    uint64_t layer_backwards;
} rt_model_counters;

/* Dropout keys for a training step; dropout is off when p == 0 or for evaluation. */
typedef struct {
    float p;
    uint64_t seed, step;
} rt_dropout_plan;

/* What a layer's forward and backward read besides its parameters and activations: the backend, the shape,
 * the sequence-parallel group, the micro-batch's positions, and the scratch every layer shares. The model
 * owns all of it and fills the micro-batch fields at the start of each pass. */
typedef struct {
    const rt_backend *backend;
    const rt_model_shape *shape;
    seqpar_ctx *seqpar;
    size_t mlp_tile; /* tokens per MLP tile (model_mlp.c) */
    /* the micro-batch */
    size_t n_seqs, local_len;
    const int64_t *pos;                  /* (N) device: global positions (attention masks and dropout key on them) */
    const int64_t *host_pos;             /* (N) host: the same, for attention's bookkeeping */
    const int64_t *rope_pos;             /* (N) device: what RoPE rotates by: pos, or positions inside documents */
    const int64_t *doc_first;            /* (N) device: the position where each token's document starts; NULL: none */
    const int64_t *host_doc_first;       /* (N) host: the same */
    const seqpar_window_layout *layouts; /* (n_seqs) the sequences' split over the ring; NULL: the zigzag */
    const int64_t *dropout_ids; /* (N) device: (sequence << 40) | position, the counter of each token's masks */
    /* backward scratch (and the forward's branch output), shared by all layers: see rt_model */
    float *d_resid, *d_branch, *d_norm, *d_att, *d_qkv, *d_fc, *d_act, *delta, *branch;
    /* Called between the ops of a layer (NULL: never): lets communication in flight move. */
    void (*progress)(void *ctx);
    void *progress_ctx;
    rt_model_counters *counters;
} rt_layer_ctx;

static inline void rt_layer_progress(const rt_layer_ctx *c) {
    if (c->progress) c->progress(c->progress_ctx);
}

/* The layout of the model's attention calls: q|k|v interleaved per token, causal. */
rt_attn_shape rt_attention_shape(const rt_model_shape *s);

/* x (N,C) -> out (N,C) for layer l with parameters p, filling acts. dropout may be NULL (off). */
void rt_layer_forward(const rt_layer_ctx *c, int layer, const rt_layer_params *p, rt_layer_acts *acts, const float *x,
                      float *out, const rt_dropout_plan *dropout);

/* c->d_resid holds d(layer output) on entry and d(layer input) on return; parameter gradients accumulate into
 * g. */
void rt_layer_backward(const rt_layer_ctx *c, int layer, const rt_layer_params *p, const rt_layer_params *g,
                       const rt_layer_acts *acts, const float *x, const rt_dropout_plan *dropout);

/* The MLP in tiles of c->mlp_tile tokens (model_mlp.c): out (N,C) = mlp(acts->norm2), no dropout; acts->fc and
 * acts->act are left holding the last tile. */
void rt_mlp_forward(const rt_layer_ctx *c, const rt_layer_params *p, const rt_layer_acts *acts, float *out, size_t N);

/* d_norm (N,C) = d(acts->norm2) from d_out (N,C), overwritten; the fc and fcproj weight and bias gradients
 * accumulate into g. With several tiles it recomputes each tile's fc and act into acts->fc / acts->act (the
 * scratch, not the struct, changes: hence const). */
void rt_mlp_backward(const rt_layer_ctx *c, const rt_layer_params *p, const rt_layer_params *g,
                     const rt_layer_acts *acts, const float *d_out, float *d_norm, size_t N);

#endif
