/*
 * model.c: allocation of parameters and activations, and the forward /
 * fused-loss / backward of a micro-batch, over the layers of model_layers.c.
 *
 * What becomes of a layer's input between forward and backward (kept,
 * recomputed from, offloaded) is the activation policy's (offload/act_policy.h);
 * where the parameters and gradients live, when they are elsewhere (ZeRO), is
 * the hooks' (runtime/core/param_hooks.h). The model calls both at layer
 * boundaries and branches on neither.
 *
 * The LM head runs in tiles of head_tile tokens: logits of a tile are
 * computed, turned into dlogits in place by the loss, and pushed back into
 * d(norm_f) and d(lm_head) before the next tile, so the N x Vp logits never
 * exist at once.
 */
#include "model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Bytes the logits of one LM-head tile may take. */
#define HEAD_TILE_BYTES ((size_t)16 << 20)

/* Where a flat offset lives: in a buffer the model owns (ctx), or wherever the hooks' owner keeps it. */
typedef struct {
    float *(*at)(void *ctx, size_t offset);
    void *ctx;
} locator;

static float *in_buffer(void *base, size_t offset) { return (float *)base + offset; }

static locator locator_of(float *own, float *(*hooks_at)(void *, size_t), void *hooks_ctx) {
    return own ? (locator){in_buffer, own} : (locator){hooks_at, hooks_ctx};
}

static float *view_ptr(const rt_model *m, locator where, const char *name, int layer) {
    char full[RT_NAME_LEN];
    rt_param_name(full, name, layer);
    const rt_named_view *v = rt_view_table_find(&m->table, full);
    return v ? where.at(where.ctx, v->offset) : NULL;
}

static void bind_layer(const rt_model *m, locator base, int l, rt_layer_params *p) {
    p->norm1_w = view_ptr(m, base, "norm1.weight", l);
    p->norm1_b = view_ptr(m, base, "norm1.bias", l);
    p->qkv_w = view_ptr(m, base, "attn.qkv.weight", l);
    p->qkv_b = view_ptr(m, base, "attn.qkv.bias", l);
    p->proj_w = view_ptr(m, base, "attn.proj.weight", l);
    p->proj_b = view_ptr(m, base, "attn.proj.bias", l);
    p->norm2_w = view_ptr(m, base, "norm2.weight", l);
    p->norm2_b = view_ptr(m, base, "norm2.bias", l);
    p->fc_w = view_ptr(m, base, "mlp.fc.weight", l);
    p->fc_b = view_ptr(m, base, "mlp.fc.bias", l);
    p->fcproj_w = view_ptr(m, base, "mlp.proj.weight", l);
    p->fcproj_b = view_ptr(m, base, "mlp.proj.bias", l);
}

static void bind_top(const rt_model *m, locator base, rt_top_params *p) {
    p->wte = view_ptr(m, base, "wte", -1);
    p->wpe = view_ptr(m, base, "wpe", -1);
    p->norm_f_w = view_ptr(m, base, "norm_f.weight", -1);
    p->norm_f_b = view_ptr(m, base, "norm_f.bias", -1);
    p->lm_head = rt_shape_tied(&m->shape) ? p->wte : view_ptr(m, base, "lm_head.weight", -1);
}

/* Allocation helper: count floats (or other 4/8-byte elements) from the accounted arena. */
static void *alloc_bytes(rt_model *m, size_t bytes, const char *what, rt_error *err, int *failed) {
    if (*failed) return NULL;
    void *ptr = rt_device_alloc(m->mem, bytes, what, err);
    if (!ptr) *failed = 1;
    return ptr;
}
#define ALLOC_F(count, what) alloc_bytes(m, (count) * sizeof(float), (what), err, &failed)

static void alloc_act_set(rt_model *m, rt_layer_acts *a, rt_error *err, int *failed_out) {
    const rt_model_shape *s = &m->shape;
    const size_t N = m->max_tokens, C = (size_t)s->d_model;
    int failed = *failed_out;
    a->norm1 = ALLOC_F(N * C, "activations (norm1)");
    a->norm1_mean = ALLOC_F(N, "activations (norm1 mean)");
    a->norm1_rstd = ALLOC_F(N, "activations (norm1 rstd)");
    a->qkv = ALLOC_F(N * rt_qkv_width(s), "activations (qkv)");
    a->att = ALLOC_F(N * s->n_heads * s->head_dim, "activations (attention output)");
    a->lse = ALLOC_F(N * s->n_heads, "activations (attention lse)");
    a->res1 = ALLOC_F(N * C, "activations (residual)");
    a->norm2 = ALLOC_F(N * C, "activations (norm2)");
    a->norm2_mean = ALLOC_F(N, "activations (norm2 mean)");
    a->norm2_rstd = ALLOC_F(N, "activations (norm2 rstd)");
    a->fc = ALLOC_F(m->mlp_tile * rt_fc_width(s), "activations (mlp fc)");
    a->act = ALLOC_F(m->mlp_tile * s->d_ff, "activations (mlp activation)");
    *failed_out = failed;
}

/* Largest model this build accepts: 2^40 parameters (4 TiB of fp32), far past any real one, so a shape that
 * comes from a corrupt header is refused by its size, and every buffer size below stays far from wrapping. */
#define MAX_PARAMS ((size_t)1 << 40)

/* Refuses shapes whose parameter count or activation sizes do not fit: the largest buffer the model
 * allocates is (L+1) layer inputs of N tokens x the widest row, in bytes. */
static int check_sizes(const rt_model_shape *s, size_t max_seqs, size_t max_local_len, rt_error *err) {
    size_t params = rt_model_param_count(s);
    if (params > MAX_PARAMS)
        return rt_fail(err,
                       "model shape (n_layers %d, d_model %d, d_ff %d, padded vocab %d, max_seq_len %d): %s "
                       "parameters, more than the 2^40 this build accepts",
                       s->n_layers, s->d_model, s->d_ff, s->padded_vocab, s->max_seq_len,
                       params == SIZE_MAX ? "over 2^64" : "too many");
    size_t width = (size_t)s->d_model,
           widths[] = {rt_qkv_width(s), rt_fc_width(s), (size_t)s->d_ff, (size_t)s->n_heads * (size_t)s->head_dim};
    for (size_t i = 0; i < sizeof widths / sizeof widths[0]; i++)
        if (widths[i] > width) width = widths[i];
    size_t tokens, bytes;
    if (__builtin_mul_overflow(max_seqs, max_local_len, &tokens) || __builtin_mul_overflow(tokens, width, &bytes) ||
        __builtin_mul_overflow(bytes, (size_t)s->n_layers + 1, &bytes) ||
        __builtin_mul_overflow(bytes, sizeof(float), &bytes))
        return rt_fail(err,
                       "activations of %zu sequences x %zu tokens x %zu channels x %d layers do not fit in "
                       "size_t; lower train.batch_size or train.seq_len",
                       max_seqs, max_local_len, width, s->n_layers);
    return 0;
}

static int model_init(rt_model *m, const rt_model_shape *shape, const rt_backend *backend, rt_device_memory *mem,
                      const rt_model_options *options, rt_error *err) {
    const rt_activation_mode mode = options->mode;
    const size_t max_seqs = options->max_seqs, max_local_len = options->max_local_len;
    seqpar_ctx *seqpar = options->seqpar;
    size_t n_alloc = options->n_alloc;
    memset(m, 0, sizeof *m);
    m->shape = *shape;
    m->backend = backend;
    m->mem = mem;
    m->local_seqpar = (seqpar_ctx){.backend = backend, .mem = mem};
    m->seqpar = seqpar ? seqpar : &m->local_seqpar;
    /* Collective over the sequence-parallel group: first, before anything that could fail on one rank only. */
    const rt_attn_shape attn = rt_attention_shape(shape);
    if (seqpar_agree_shapes(m->seqpar, max_seqs, max_local_len, &attn, err)) return -1;
    m->max_seqs = max_seqs;
    m->max_local_len = max_local_len;
    m->max_tokens = max_seqs * max_local_len;
    const rt_model_shape *s = &m->shape;
    const size_t L = (size_t)s->n_layers, N = m->max_tokens, C = (size_t)s->d_model, Vp = (size_t)s->padded_vocab;

    if (check_sizes(s, max_seqs, max_local_len, err)) return -1;
    m->layer_offset = malloc_check((L + 1) * sizeof *m->layer_offset);
    rt_param_table_build(s, &m->table, m->layer_offset);
    if (n_alloc < m->table.total) n_alloc = m->table.total;
    m->n_alloc = n_alloc;
    int failed = 0;
    /* Parameters, then gradients, here or by their owner (param_hooks.h), in this order either way. */
    const rt_param_ranges ranges = {.layer_offset = m->layer_offset, .n_layers = s->n_layers, .total = m->table.total};
    if (options->param_hooks) {
        if (!options->grad_hooks)
            rt_fatal("rt_model_init: parameters kept elsewhere (param_hooks) need gradients kept elsewhere too");
        m->param_hooks = *options->param_hooks;
        failed = m->param_hooks.reserve(m->param_hooks.ctx, &ranges, err) != 0;
    } else {
        m->params = ALLOC_F(n_alloc, "parameters");
    }
    m->interrupt_poll = options->interrupt_poll;
    m->interrupt_ctx = options->interrupt_ctx;
    if (options->grad_hooks) {
        m->grad_hooks = *options->grad_hooks;
        if (!failed) failed = m->grad_hooks.reserve(m->grad_hooks.ctx, &ranges, err) != 0;
    } else {
        m->grads = ALLOC_F(n_alloc, "gradients");
    }
    if (failed) return -1;
    m->layers = malloc_check(L * sizeof *m->layers);
    m->layer_grads = malloc_check(L * sizeof *m->layer_grads);
    const locator params = locator_of(m->params, m->param_hooks.at, m->param_hooks.ctx);
    const locator grads = locator_of(m->grads, m->grad_hooks.at, m->grad_hooks.ctx);
    for (int l = 0; l < s->n_layers; l++) {
        bind_layer(m, params, l, &m->layers[l]);
        bind_layer(m, grads, l, &m->layer_grads[l]);
    }
    bind_top(m, params, &m->top);
    bind_top(m, grads, &m->top_grads);

    m->head_tile = HEAD_TILE_BYTES / (Vp * sizeof(float));
    if (m->head_tile < 1) m->head_tile = 1;
    if (m->head_tile > N) m->head_tile = N;
    m->mlp_tile = options->mlp_tile_tokens && options->mlp_tile_tokens < N ? options->mlp_tile_tokens : N;

    if (rt_act_policy_init(&m->act_policy, mode, backend, mem, s->n_layers, N, C, options->offload_max_inflight, err))
        return -1;
    m->acts = calloc_check((size_t)m->act_policy.n_act_sets, sizeof *m->acts);
    for (int i = 0; i < m->act_policy.n_act_sets; i++)
        alloc_act_set(m, &m->acts[i], err, &failed);
    m->norm_f_mean = ALLOC_F(N, "activations (final norm mean)");
    m->norm_f_rstd = ALLOC_F(N, "activations (final norm rstd)");
    m->logits = ALLOC_F(m->head_tile * Vp, "logits tile");
    m->losses = ALLOC_F(N, "token losses");
    m->tokens = alloc_bytes(m, N * sizeof(int32_t), "input tokens", err, &failed);
    m->targets = alloc_bytes(m, N * sizeof(int32_t), "target tokens", err, &failed);
    m->pos = alloc_bytes(m, N * sizeof(int64_t), "token positions", err, &failed);
    if (options->packed_documents) {
        m->doc_pos = alloc_bytes(m, N * sizeof(int64_t), "token positions in documents", err, &failed);
        m->doc_first = alloc_bytes(m, N * sizeof(int64_t), "document starts", err, &failed);
    }
    m->dropout_ids = alloc_bytes(m, N * sizeof(int64_t), "dropout ids", err, &failed);
    /* Host staging for each micro-batch's counters and losses, allocated once so a step allocates nothing. */
    m->host_ids = malloc_check(N * sizeof *m->host_ids);
    m->host_losses = malloc_check(N * sizeof *m->host_losses);
    m->layer_ctx.d_resid = ALLOC_F(N * C, "gradient scratch (residual)");
    m->layer_ctx.d_branch = ALLOC_F(N * C, "gradient scratch (branch)");
    /* A layer's backward reads d_att only between the output projection's backward and the attention's,
     * while d_norm lies dead (written by the MLP's backward and read by norm2's before; zeroed for the QKV
     * backward after): they share a buffer. */
    const size_t HD = (size_t)s->n_heads * s->head_dim;
    m->layer_ctx.d_norm = ALLOC_F(N * (HD > C ? HD : C), "gradient scratch (norm; attention output)");
    m->layer_ctx.d_att = m->layer_ctx.d_norm;
    /* The final norm's output lives from the head's forward to the end of its backward, when no layer's
     * backward runs, and every layer backward zeroes d_qkv before use: they share a buffer. */
    const size_t qkv = rt_qkv_width(s);
    m->layer_ctx.d_qkv = ALLOC_F(N * (qkv > C ? qkv : C), "gradient scratch (qkv; the final norm's output)");
    m->norm_f = m->layer_ctx.d_qkv;
    m->layer_ctx.d_fc = ALLOC_F(m->mlp_tile * rt_fc_width(s), "gradient scratch (mlp fc)");
    m->layer_ctx.d_act = ALLOC_F(m->mlp_tile * s->d_ff, "gradient scratch (mlp activation)");
    m->layer_ctx.delta = ALLOC_F(N * s->n_heads, "gradient scratch (attention delta)");
    /* A branch's output is dead once added to the residual, and a layer's backward (which follows its
     * recompute) writes d_branch before it reads it: one buffer serves both. */
    m->layer_ctx.branch = m->layer_ctx.d_branch;
    if (failed) return -1;
    rt_layer_ctx *c = &m->layer_ctx; /* its scratch is allocated above */
    c->backend = backend;
    c->shape = &m->shape;
    c->seqpar = m->seqpar;
    c->mlp_tile = m->mlp_tile;
    c->pos = m->pos;
    c->rope_pos = m->doc_pos ? m->doc_pos : m->pos;
    c->doc_first = m->doc_first;
    c->dropout_ids = m->dropout_ids;
    c->progress = m->grad_hooks.progress;
    c->progress_ctx = m->grad_hooks.ctx;
    c->counters = &m->counters;
    return seqpar_reserve(m->seqpar, max_seqs, max_local_len, &attn, err);
}

int rt_model_init(rt_model *m, const rt_model_shape *shape, const rt_backend *backend, rt_device_memory *mem,
                  const rt_model_options *options, rt_error *err) {
    if (model_init(m, shape, backend, mem, options, err) == 0) return 0;
    rt_model_free(m); /* host-side state; device buffers go back with the arena */
    return -1;
}

void rt_model_free(rt_model *m) {
    /* Device buffers belong to the arena, which the caller destroys; here only host bookkeeping. */
    rt_act_policy_free(&m->act_policy);
    rt_view_table_free(&m->table);
    free(m->layers);
    free(m->layer_grads);
    free(m->layer_offset);
    free(m->host_ids);
    free(m->host_losses);
    free(m->acts);
    memset(m, 0, sizeof *m);
}

void rt_model_init_params(rt_model *m, uint64_t seed) {
    if (!m->params) rt_fatal("rt_model_init_params: the parameters are kept elsewhere; their owner initializes them");
    float *host = malloc_check(m->table.total * sizeof(float));
    rt_model_init_params_host(m, seed, host);
    rt_be_copy(m->backend, m->params, host, m->table.total * sizeof(float));
    free(host);
}

void rt_model_init_params_host(const rt_model *m, uint64_t seed, float *host) {
    rt_param_table_init_values(&m->shape, &m->table, seed, host);
}

void rt_model_zero_grads(rt_model *m) {
    if (m->grad_hooks.zero)
        m->grad_hooks.zero(m->grad_hooks.ctx);
    else
        rt_be_memset_zero(m->backend, m->grads, m->n_alloc * sizeof(float));
}

void rt_model_params_changed(rt_model *m) {
    if (m->param_hooks.changed) m->param_hooks.changed(m->param_hooks.ctx);
}

/* The embeddings and head (layer -1), or layer l with next_l used after it, are about to be used. */
static void need_params(rt_model *m, int l, int next_l) {
    if (l < 0 && m->param_hooks.need_top) m->param_hooks.need_top(m->param_hooks.ctx);
    if (l >= 0 && m->param_hooks.need_layer) m->param_hooks.need_layer(m->param_hooks.ctx, l, next_l);
}

static size_t load_batch(rt_model *m, const rt_batch *batch) {
    const size_t N = batch->n_seqs * batch->local_len;
    if (batch->n_seqs > m->max_seqs || batch->local_len > m->max_local_len)
        rt_fatal("micro-batch of %zu x %zu tokens exceeds the model's capacity of %zu x %zu", batch->n_seqs,
                 batch->local_len, m->max_seqs, m->max_local_len);
    int64_t *ids = m->host_ids;
    for (size_t b = 0; b < batch->n_seqs; b++)
        for (size_t t = 0; t < batch->local_len; t++) {
            size_t i = b * batch->local_len + t;
            ids[i] = (int64_t)(((uint64_t)(batch->first_seq + b) << 40) | (uint64_t)batch->pos[i]);
        }
    const rt_backend *be = m->backend;
    rt_be_copy(be, m->tokens, batch->inputs, N * sizeof(int32_t));
    rt_be_copy(be, m->targets, batch->targets, N * sizeof(int32_t));
    rt_be_copy(be, m->pos, batch->pos, N * sizeof(int64_t));
    m->layer_ctx.host_pos = batch->pos;
    m->layer_ctx.layouts = batch->layouts;
    if ((m->doc_pos != NULL) != (batch->doc_pos != NULL && batch->doc_first != NULL))
        rt_fatal("a micro-batch %s documents for a model initialised %s packed documents",
                 batch->doc_pos ? "with" : "without", m->doc_pos ? "for" : "without");
    if (m->doc_pos) {
        rt_be_copy(be, m->doc_pos, batch->doc_pos, N * sizeof(int64_t));
        rt_be_copy(be, m->doc_first, batch->doc_first, N * sizeof(int64_t));
        m->layer_ctx.host_doc_first = batch->doc_first;
    }
    m->layer_ctx.n_seqs = batch->n_seqs;
    m->layer_ctx.local_len = batch->local_len;
    rt_be_copy(be, m->dropout_ids, ids, N * sizeof(int64_t));
    return N;
}

static rt_layer_acts *acts_for(rt_model *m, int layer) { return &m->acts[layer % m->act_policy.n_act_sets]; }

/* A training pass asks, between layers, whether to stop; on yes it abandons the pass (offload: every copy
 * waited for, every slot freed) and the caller returns at once. */
static int interrupted(rt_model *m) {
    if (!m->interrupt_poll || !m->interrupt_poll(m->interrupt_ctx)) return 0;
    rt_act_abandon_pass(&m->act_policy);
    if (m->param_hooks.pass_abandoned) m->param_hooks.pass_abandoned(m->param_hooks.ctx);
    if (m->grad_hooks.pass_abandoned) m->grad_hooks.pass_abandoned(m->grad_hooks.ctx);
    m->interrupted = 1;
    return 1;
}

/* Returns -1 when a training pass was interrupted. */
static int forward_layers(rt_model *m, const rt_batch *batch, const rt_dropout_plan *dropout, int training) {
    const size_t N = batch->n_seqs * batch->local_len;
    const rt_top_params *top = &m->top;
    rt_act_policy *policy = &m->act_policy;
    float *x = rt_act_forward_input(policy, 0, N);
    need_params(m, -1, -1);
    rt_be_embedding_forward(m->backend, x, m->tokens, m->layer_ctx.rope_pos, top->wte, top->wpe, N, m->shape.d_model);
    rt_act_input_written(policy, 0, N, training);
    for (int l = 0; l < m->shape.n_layers; l++) {
        float *y = rt_act_forward_input(policy, l + 1, N);
        need_params(m, l, l + 1);
        rt_layer_forward(&m->layer_ctx, l, &m->layers[l], acts_for(m, l), x, y, dropout);
        rt_act_input_written(policy, l + 1, N, training);
        if (training && interrupted(m)) return -1;
        x = y;
    }
    return 0;
}

/* Ends a pass of the activation policy (every forward, with or without backward). */
static void end_pass(rt_model *m) { rt_act_end_pass(&m->act_policy); }

static void final_norm_forward(rt_model *m, size_t N) {
    const rt_model_shape *s = &m->shape;
    const float *x = rt_act_final_hidden(&m->act_policy, N);
    if (s->family == RT_FAMILY_GPT2)
        rt_be_layernorm_forward(m->backend, m->norm_f, m->norm_f_mean, m->norm_f_rstd, x, m->top.norm_f_w,
                                m->top.norm_f_b, N, s->d_model, s->norm_eps);
    else
        rt_be_rmsnorm_forward(m->backend, m->norm_f, m->norm_f_rstd, x, m->top.norm_f_w, N, s->d_model, s->norm_eps);
}

/* Final norm, tiled LM head and loss; with backward, leaves d(last layer output) in d_resid. */
static double head_forward(rt_model *m, const rt_batch *batch, float dloss_scale, int backward, size_t *n_targets) {
    const rt_backend *be = m->backend;
    const rt_model_shape *s = &m->shape;
    const size_t N = batch->n_seqs * batch->local_len, C = (size_t)s->d_model;
    final_norm_forward(m, N);
    if (backward) rt_be_memset_zero(be, m->layer_ctx.d_norm, N * C * sizeof(float));
    for (size_t t0 = 0; t0 < N; t0 += m->head_tile) {
        size_t n = N - t0 < m->head_tile ? N - t0 : m->head_tile;
        rt_be_matmul_forward(be, m->logits, m->norm_f + t0 * C, m->top.lm_head, NULL, n, (int)C, s->padded_vocab);
        rt_be_softmax_xent(be, m->logits, m->losses + t0, m->targets + t0, n, s->vocab_size, s->padded_vocab,
                           backward ? dloss_scale : 0.0f);
        if (backward)
            rt_be_matmul_backward(be, m->layer_ctx.d_norm + t0 * C, m->top_grads.lm_head, NULL, m->logits,
                                  m->norm_f + t0 * C, m->top.lm_head, n, (int)C, s->padded_vocab);
    }
    float *losses = m->host_losses;
    rt_be_copy(be, losses, m->losses, N * sizeof(float));
    double loss_sum = 0.0;
    size_t count = 0;
    for (size_t i = 0; i < N; i++) {
        loss_sum += losses[i];
        count += batch->targets[i] >= 0;
    }
    *n_targets = count;
    if (backward) {
        const float *x = rt_act_final_hidden(&m->act_policy, N);
        rt_be_memset_zero(be, m->layer_ctx.d_resid, N * C * sizeof(float));
        if (s->family == RT_FAMILY_GPT2)
            rt_be_layernorm_backward(be, m->layer_ctx.d_resid, m->top_grads.norm_f_w, m->top_grads.norm_f_b,
                                     m->layer_ctx.d_norm, x, m->top.norm_f_w, m->norm_f_mean, m->norm_f_rstd, N,
                                     s->d_model);
        else
            rt_be_rmsnorm_backward(be, m->layer_ctx.d_resid, m->top_grads.norm_f_w, m->layer_ctx.d_norm, x,
                                   m->top.norm_f_w, m->norm_f_rstd, N, s->d_model);
    }
    return loss_sum;
}

double rt_model_forward_backward(rt_model *m, const rt_batch *batch, const rt_dropout_plan *dropout, float dloss_scale,
                                 size_t *n_targets) {
    const size_t N = load_batch(m, batch);
    m->interrupted = 0;
    if (forward_layers(m, batch, dropout, 1)) return NAN;
    double loss_sum = head_forward(m, batch, dloss_scale, 1, n_targets);
    rt_act_policy *policy = &m->act_policy;
    rt_act_head_done(policy);
    for (int l = m->shape.n_layers - 1; l >= 0; l--) {
        rt_layer_acts *acts = acts_for(m, l);
        /* d_norm is the scratch a recompute may write its dead output to: the layer's backward only starts
         * using it after zeroing it. */
        float *recompute_out;
        float *x = rt_act_backward_input(policy, l, N, m->layer_ctx.d_norm, &recompute_out);
        need_params(m, l, l - 1);
        /* Recompute: the same ops on the same input, dropout masks included, so bit for bit the forward's
         * activations. */
        if (recompute_out) rt_layer_forward(&m->layer_ctx, l, &m->layers[l], acts, x, recompute_out, dropout);
        if (m->grad_hooks.layer_begin) m->grad_hooks.layer_begin(m->grad_hooks.ctx, l);
        rt_layer_backward(&m->layer_ctx, l, &m->layers[l], &m->layer_grads[l], acts, x, dropout);
        rt_act_layer_done(policy, l);
        if (m->grad_hooks.layer_done) m->grad_hooks.layer_done(m->grad_hooks.ctx, l);
        if (l > 0 && interrupted(m)) return NAN;
    }
    end_pass(m);
    rt_be_embedding_backward(m->backend, m->top_grads.wte, m->top_grads.wpe, m->layer_ctx.d_resid, m->tokens,
                             m->layer_ctx.rope_pos, N, m->shape.d_model);
    if (m->grad_hooks.backward_done) m->grad_hooks.backward_done(m->grad_hooks.ctx);
    return loss_sum;
}

double rt_model_forward_loss(rt_model *m, const rt_batch *batch, size_t *n_targets) {
    load_batch(m, batch);
    forward_layers(m, batch, NULL, 0);
    double loss_sum = head_forward(m, batch, 0.0f, 0, n_targets);
    end_pass(m);
    return loss_sum;
}

void rt_model_last_logits(rt_model *m, const rt_batch *batch, float *logits_out) {
    const rt_model_shape *s = &m->shape;
    const size_t N = load_batch(m, batch), C = (size_t)s->d_model;
    forward_layers(m, batch, NULL, 0);
    final_norm_forward(m, N);
    end_pass(m);
    rt_be_matmul_forward(m->backend, m->logits, m->norm_f + (N - 1) * C, m->top.lm_head, NULL, 1, (int)C,
                         s->padded_vocab);
    rt_be_copy(m->backend, logits_out, m->logits, (size_t)s->vocab_size * sizeof(float));
}

void rt_model_take_offload_stats(rt_model *m, rt_offload_stats *out) {
    if (m->act_policy.ops)
        rt_act_take_stats(&m->act_policy, out);
    else
        memset(out, 0, sizeof *out); /* a model that never initialized */
}
