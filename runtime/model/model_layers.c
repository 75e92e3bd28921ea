/*
 * model_layers.c: forward and backward of one transformer layer, for both families.
 *
 *   res1 = x + drop0(att(norm1(x)) @ proj^T)        out = res1 + drop1(mlp(norm2(res1)))
 *
 * The backward runs the same steps in reverse on one residual-gradient
 * buffer (c->d_resid) that enters as d(out) and leaves as d(x): each norm's
 * backward accumulates its input gradient into it, which adds the residual
 * path for free. Dropout masks are recomputed from the counter-based RNG
 * (keyed by step, layer, site, global position and channel), never stored.
 * The MLP itself (which may run in token tiles) is model_mlp.c.
 */
#include <string.h>

#include "layer.h"

rt_attn_shape rt_attention_shape(const rt_model_shape *s) {
    size_t qkv = rt_qkv_width(s);
    return (rt_attn_shape){
        .n_heads = s->n_heads,
        .n_kv_heads = s->n_kv_heads,
        .head_dim = s->head_dim,
        .q_stride = qkv,
        .kv_stride = qkv,
        .out_stride = (size_t)s->n_heads * s->head_dim,
        .causal = 1,
    };
}

static rt_rng_key dropout_key(const rt_dropout_plan *dropout, int layer, uint32_t site) {
    return (rt_rng_key){.seed = dropout->seed, .step = dropout->step, .layer = (uint32_t)layer, .site = site};
}

static int dropout_on(const rt_dropout_plan *dropout) { return dropout && dropout->p > 0.0f; }

static void norm_forward(const rt_layer_ctx *c, float *out, float *mean, float *rstd, const float *inp, const float *w,
                         const float *b, size_t N) {
    const rt_model_shape *s = c->shape;
    if (s->family == RT_FAMILY_GPT2)
        rt_be_layernorm_forward(c->backend, out, mean, rstd, inp, w, b, N, s->d_model, s->norm_eps);
    else
        rt_be_rmsnorm_forward(c->backend, out, rstd, inp, w, N, s->d_model, s->norm_eps);
}

static void norm_backward(const rt_layer_ctx *c, float *dinp, float *dw, float *db, const float *dout, const float *inp,
                          const float *w, const float *mean, const float *rstd, size_t N) {
    const rt_model_shape *s = c->shape;
    if (s->family == RT_FAMILY_GPT2)
        rt_be_layernorm_backward(c->backend, dinp, dw, db, dout, inp, w, mean, rstd, N, s->d_model);
    else
        rt_be_rmsnorm_backward(c->backend, dinp, dw, dout, inp, w, rstd, N, s->d_model);
}

/* Rotates q (H heads) and k (Hkv heads) of every token; backward rotates their gradients back. */
/* The micro-batch as attention sees it: every sequence in one call (one ring message per hop carries them all),
 * with the window positions, documents and layouts the model loaded. */
static seqpar_tokens attention_tokens(const rt_layer_ctx *c) {
    return (seqpar_tokens){.n_seqs = c->n_seqs,
                           .Tl = c->local_len,
                           .pos = c->pos,
                           .host_pos = c->host_pos,
                           .first = c->doc_first,
                           .host_first = c->host_doc_first,
                           .layouts = c->layouts};
}

static void rope(const rt_layer_ctx *c, float *qkv, const int64_t *pos, size_t N, int backward) {
    const rt_model_shape *s = c->shape;
    size_t stride = rt_qkv_width(s);
    float *k = qkv + (size_t)s->n_heads * s->head_dim;
    if (backward) {
        rt_be_rope_backward(c->backend, qkv, pos, N, s->n_heads, s->head_dim, stride, s->rope_theta);
        rt_be_rope_backward(c->backend, k, pos, N, s->n_kv_heads, s->head_dim, stride, s->rope_theta);
    } else {
        rt_be_rope_forward(c->backend, qkv, pos, N, s->n_heads, s->head_dim, stride, s->rope_theta);
        rt_be_rope_forward(c->backend, k, pos, N, s->n_kv_heads, s->head_dim, stride, s->rope_theta);
    }
}

void rt_layer_forward(const rt_layer_ctx *c, int layer, const rt_layer_params *p, rt_layer_acts *a, const float *x,
                      float *out, const rt_dropout_plan *dropout) {
    const rt_backend *be = c->backend;
    const rt_model_shape *s = c->shape;
    const size_t n_seqs = c->n_seqs, local_len = c->local_len, N = n_seqs * local_len, C = (size_t)s->d_model;
    const size_t QKV = rt_qkv_width(s), HD = (size_t)s->n_heads * s->head_dim;
    const rt_attn_shape shape = rt_attention_shape(s);

    norm_forward(c, a->norm1, a->norm1_mean, a->norm1_rstd, x, p->norm1_w, p->norm1_b, N);
    rt_be_matmul_forward(be, a->qkv, a->norm1, p->qkv_w, p->qkv_b, N, (int)C, (int)QKV);
    rt_layer_progress(c);
    if (s->family == RT_FAMILY_LLAMA) rope(c, a->qkv, c->rope_pos, N, 0);
    const seqpar_tokens tokens = attention_tokens(c);
    const size_t k_off = HD, v_off = HD + (size_t)s->n_kv_heads * s->head_dim;
    seqpar_attention_forward(c->seqpar, a->att, a->lse, a->qkv, a->qkv + k_off, a->qkv + v_off, &tokens, &shape);
    rt_layer_progress(c);
    rt_be_matmul_forward(be, c->branch, a->att, p->proj_w, p->proj_b, N, (int)HD, (int)C);
    rt_layer_progress(c);
    if (dropout_on(dropout))
        rt_be_dropout(be, c->branch, c->dropout_ids, N, (int)C, dropout->p, dropout_key(dropout, layer, 0));
    rt_be_add(be, a->res1, x, c->branch, N * C);

    norm_forward(c, a->norm2, a->norm2_mean, a->norm2_rstd, a->res1, p->norm2_w, p->norm2_b, N);
    rt_mlp_forward(c, p, a, c->branch, N);
    if (dropout_on(dropout))
        rt_be_dropout(be, c->branch, c->dropout_ids, N, (int)C, dropout->p, dropout_key(dropout, layer, 1));
    rt_be_add(be, out, a->res1, c->branch, N * C);
    c->counters->layer_forwards++;
}

void rt_layer_backward(const rt_layer_ctx *c, int layer, const rt_layer_params *p, const rt_layer_params *g,
                       const rt_layer_acts *a, const float *x, const rt_dropout_plan *dropout) {
    const rt_backend *be = c->backend;
    const rt_model_shape *s = c->shape;
    const size_t n_seqs = c->n_seqs, local_len = c->local_len, N = n_seqs * local_len, C = (size_t)s->d_model;
    const size_t QKV = rt_qkv_width(s), HD = (size_t)s->n_heads * s->head_dim;
    const rt_attn_shape shape = rt_attention_shape(s);

    /* MLP branch: d_resid = d(out) = d(res1) so far. */
    rt_be_copy(be, c->d_branch, c->d_resid, N * C * sizeof(float));
    if (dropout_on(dropout))
        rt_be_dropout(be, c->d_branch, c->dropout_ids, N, (int)C, dropout->p, dropout_key(dropout, layer, 1));
    rt_mlp_backward(c, p, g, a, c->d_branch, c->d_norm, N);
    norm_backward(c, c->d_resid, g->norm2_w, g->norm2_b, c->d_norm, a->res1, p->norm2_w, a->norm2_mean, a->norm2_rstd,
                  N);

    /* Attention branch: d_resid = d(res1). */
    rt_be_copy(be, c->d_branch, c->d_resid, N * C * sizeof(float));
    if (dropout_on(dropout))
        rt_be_dropout(be, c->d_branch, c->dropout_ids, N, (int)C, dropout->p, dropout_key(dropout, layer, 0));
    rt_be_memset_zero(be, c->d_att, N * HD * sizeof(float));
    rt_be_matmul_backward(be, c->d_att, g->proj_w, g->proj_b, c->d_branch, a->att, p->proj_w, N, (int)HD, (int)C);
    rt_layer_progress(c);
    rt_be_memset_zero(be, c->d_qkv, N * QKV * sizeof(float));
    const seqpar_tokens tokens = attention_tokens(c);
    const size_t k_off = HD, v_off = HD + (size_t)s->n_kv_heads * s->head_dim;
    seqpar_attention_backward(c->seqpar, c->d_qkv, c->d_qkv + k_off, c->d_qkv + v_off, c->delta, c->d_att, a->att,
                              a->lse, a->qkv, a->qkv + k_off, a->qkv + v_off, &tokens, &shape);
    rt_layer_progress(c);
    if (s->family == RT_FAMILY_LLAMA) rope(c, c->d_qkv, c->rope_pos, N, 1);
    rt_be_memset_zero(be, c->d_norm, N * C * sizeof(float));
    rt_be_matmul_backward(be, c->d_norm, g->qkv_w, g->qkv_b, c->d_qkv, a->norm1, p->qkv_w, N, (int)C, (int)QKV);
    rt_layer_progress(c);
    norm_backward(c, c->d_resid, g->norm1_w, g->norm1_b, c->d_norm, x, p->norm1_w, a->norm1_mean, a->norm1_rstd, N);
    c->counters->layer_backwards++;
}
