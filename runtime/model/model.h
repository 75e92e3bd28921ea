/* model.h: the decoder-only transformer (llama and gpt2 families): parameters, activations, forward and backward. */
#ifndef RT_MODEL_H
#define RT_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "layer.h"
#include "offload/act_policy.h"
#include "param_layout.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/memory.h"
#include "runtime/config/config.h"
#include "runtime/core/param_hooks.h"
#include "runtime/core/tensor.h"
#include "seqpar/seqpar.h"

/* Conventions (B, T, N, C, H, D, F, V, Vp) and the parameter layout: param_layout.h. */

typedef struct {
    rt_model_shape shape;
    const rt_backend *backend;
    rt_device_memory *mem;
    seqpar_ctx *seqpar;
    seqpar_ctx local_seqpar; /* used when the caller gives none: attention over local tokens only */

    rt_view_table table;
    size_t n_alloc; /* parameter buffer length: table.total padded for sharding (padding stays zero) */
    float *params;  /* (n_alloc) device; NULL when param_hooks' owner keeps the parameters */
    float *grads;   /* (n_alloc) device; NULL when grad_hooks' owner keeps the gradients */
    rt_layer_params *layers, *layer_grads; /* (L) views into params / grads */
    rt_top_params top, top_grads;
    size_t *layer_offset; /* (L+1): layer l's parameters are [layer_offset[l], layer_offset[l+1]) */

    /* capacity, fixed at init */
    size_t max_seqs, max_local_len, max_tokens;
    size_t head_tile; /* tokens per LM head tile */
    size_t mlp_tile;  /* tokens per MLP tile (model_mlp.c); max_tokens = untiled */

    /* activations */
    rt_act_policy act_policy;         /* where layer inputs live between forward and backward (act_policy.h) */
    rt_layer_acts *acts;              /* act_policy.n_act_sets sets: L (keep) or 1 */
    float *norm_f;                    /* (N, C), inside d_qkv (model.c says why) */
    float *norm_f_mean, *norm_f_rstd; /* (N) */
    float *logits;                    /* (head_tile, Vp) */
    float *losses;                    /* (N) */
    int32_t *tokens, *targets;        /* (N) device copies */
    int64_t *pos;                     /* (N) */
    int64_t *doc_pos, *doc_first;     /* (N) packed documents only (rt_model_options.packed_documents), else NULL */
    int64_t *dropout_ids;             /* (N) (sequence << 40) | position: the counter of every token's dropout mask */
    int64_t *host_ids;                /* (N) host staging of dropout_ids, allocated at setup */
    float *host_losses;               /* (N) host copy of losses, allocated at setup */

    /* Parameters and gradients kept elsewhere (ZeRO: param_hooks.h); zeroed hooks when the model owns them. */
    rt_param_hooks param_hooks;
    rt_grad_hooks grad_hooks;

    /* Stop polling (see rt_model_options); interrupted: the last training pass was abandoned. */
    int (*interrupt_poll)(void *ctx);
    void *interrupt_ctx;
    int interrupted;

    rt_model_counters counters;
    /* What the layers read (layer.h): the backend, shape and group above, the pass's micro-batch, and the
     * scratch every layer shares, which the model allocates at init:
     *   d_resid  (N, C) gradient flowing down the residual stream
     *   d_branch (N, C) gradient of a branch output (after the dropout mask); = branch
     *   d_norm   (N, max(C, H*D)); = d_att
     *   d_qkv    (N, max(QKV, C)); also holds norm_f
     *   d_fc     (mlp_tile, FC)    d_act (mlp_tile, F)    delta (N, H)
     *   branch   (N, C) forward: a branch output before the residual add */
    rt_layer_ctx layer_ctx;
} rt_model;

typedef struct {
    rt_activation_mode mode;
    int offload_max_inflight;       /* offload: device -> host copies in flight at most */
    size_t max_seqs, max_local_len; /* capacity: sequences per micro-batch, local tokens per sequence */
    size_t n_alloc;                 /* parameter/gradient buffer length; 0 = the parameter count */
    seqpar_ctx *seqpar; /* NULL: attention over local tokens only; a group of more than one rank makes rt_model_init
                         * collective over it (the group agrees on max_seqs x max_local_len, which every pass must
                         * then have: seqpar_agree_shapes) */
    /* Tokens per MLP tile: the MLP's (tokens, FC) and (tokens, F) intermediates are then held for one tile at
     * a time and recomputed per tile in backward (model_mlp.c). 0, or at least max_seqs * max_local_len:
     * untiled, bit for bit the MLP without tiles. */
    size_t mlp_tile_tokens;
    /* Micro-batches carry documents (rt_batch.doc_pos, doc_first): reserves their device copies. */
    int packed_documents;
    /* Parameters and gradients kept by someone else (ZeRO stages 2-3; param_hooks.h), NULL: the model allocates
     * both buffers whole. The model binds its views through the hooks' `at` at init and calls the rest at
     * layer boundaries. param_hooks needs grad_hooks. The structs are copied. */
    const rt_param_hooks *param_hooks;
    const rt_grad_hooks *grad_hooks;
    /* Stop polling: a training pass calls interrupt_poll(ctx) after each layer's forward and each layer's
     * backward (every rank at the same points, so the poll may be a collective); when it returns non-zero the
     * pass is abandoned there, rt_model_forward_backward returns NAN and sets interrupted, and the
     * gradients are garbage until the next rt_model_zero_grads. NULL: never. */
    int (*interrupt_poll)(void *ctx);
    void *interrupt_ctx;
} rt_model_options;

/*
 * Allocates parameters, gradients and activations for the capacity in
 * options. Activation modes: keep (every layer's activations stay),
 * recompute (layer inputs stay, each layer re-runs before its backward),
 * offload (as recompute, but layer inputs wait in host memory between
 * forward and backward: device memory no longer grows with the layer
 * count). Fails with err when the device memory limit refuses an allocation.
 */
int rt_model_init(rt_model *m, const rt_model_shape *shape, const rt_backend *backend, rt_device_memory *mem,
                  const rt_model_options *options, rt_error *err);

void rt_model_free(rt_model *m);

/* Offload counters since the last call (zeros unless mode is offload); resets them. */
void rt_model_take_offload_stats(rt_model *m, rt_offload_stats *out);

/* Random init, deterministic in seed and independent of rank count: N(0, 0.02), residual output projections
 * scaled by 1/sqrt(2L), norms weight 1, biases 0, padded vocab rows 0. Not with sharded parameters: their
 * owner fills its shards from rt_model_init_params_host. */
void rt_model_init_params(rt_model *m, uint64_t seed);
/* The same initial parameters into host (table.total floats). */
void rt_model_init_params_host(const rt_model *m, uint64_t seed, float *host);

void rt_model_zero_grads(rt_model *m);
/* The parameters changed (an optimizer update, a checkpoint load): at ZeRO-3 the gathered copies are stale, and
 * the next pass gathers again. A no-op for a model that holds its parameters. */
void rt_model_params_changed(rt_model *m);

/* What one micro-batch step needs: B sequences of T local tokens (host arrays, copied to the device). */
typedef struct {
    const int32_t *inputs;  /* (B, T) */
    const int32_t *targets; /* (B, T), < 0 = no target */
    const int64_t *pos;     /* (B, T) global positions */
    /* Packed documents (a model initialised with packed_documents needs both; otherwise both NULL): each token's
     * position inside its document, which RoPE and learned positions use, and the position where its document
     * starts, below which attention masks every key. */
    const int64_t *doc_pos, *doc_first; /* (B, T) */
    /* (B) how each sequence is split over the sequence-parallel ranks when not the zigzag (seqpar.h); NULL:
     * the zigzag */
    const seqpar_window_layout *layouts;
    size_t n_seqs, local_len;
    size_t first_seq; /* index of the first sequence among all sequences of the step (all micro-batches, all
                       * data-parallel ranks): dropout masks key on (sequence, position), never on the rank */
} rt_batch;

/*
 * Forward, fused LM-head loss and backward of one micro-batch: gradients
 * ACCUMULATE into m->grads; dlogits are scaled by dloss_scale (1 / the
 * global number of targets of the whole step). Returns the SUM of the local
 * token losses; *n_targets gets the local count.
 */
double rt_model_forward_backward(rt_model *m, const rt_batch *batch, const rt_dropout_plan *dropout, float dloss_scale,
                                 size_t *n_targets);

/* Forward and loss only (validation); no dropout. Returns the local loss sum. */
double rt_model_forward_loss(rt_model *m, const rt_batch *batch, size_t *n_targets);

/* Forward of one sequence (n_seqs = 1) and the logits (V floats, host) of its LAST position. */
void rt_model_last_logits(rt_model *m, const rt_batch *batch, float *logits_out);

#endif
