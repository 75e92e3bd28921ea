/*
 * train.c: the trainer: setup and one training step (the run around it: run.c; its checkpoints:
 * train_state.c).
 *
 * Mesh: world = dp x sp (shard/mesh.h); the ranks that share a sequence (the
 * ring) are neighbours. Each rank reads its dp slice of the global batch
 * and, of every sequence, its zigzag chunks (seqpar/seqpar.h).
 *
 * One step: load the grad_accum micro-batches; sum the step's targets over
 * the world (the loss is the exact token-weighted mean whatever the rank
 * count); forward+backward each micro-batch (gradients accumulate, or at
 * ZeRO stage 2 stream layer by layer into the optimizer's shard); reduce;
 * clip; AdamW; gather parameters. step counts from 0; a step's loss is
 * measured before its update.
 */
#include "train.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/tokens.h"
#include "runtime/backend/registry.h"
#include "runtime/comm/comm_device.h"
#include "runtime/model/model_io.h"
#include "seqpar/doc_layout.h"
#include "trainer_internal.h"

/* This rank's part of the data, from the mesh layout (rank = dp_rank * sp + sp_rank); no communication. */
static int setup_layout(rt_trainer *t, rt_error *err) {
    const rt_config *cfg = &t->cfg;
    if (cfg->dp * cfg->sp != t->world->size)
        return rt_fail(err, "parallel.dp * parallel.sp = %d * %d = %d, but the job has %d ranks", cfg->dp, cfg->sp,
                       cfg->dp * cfg->sp, t->world->size);
    t->dp_rank = t->world->rank / cfg->sp;
    if (seqpar_zigzag_spans(t->world->rank % cfg->sp, cfg->sp, (size_t)cfg->seq_len, t->spans, err)) return -1;
    t->local_len = t->spans[0].len + t->spans[1].len;
    t->local_seqs = (size_t)cfg->batch_size / (size_t)cfg->dp;
    return 0;
}

static int agree(rt_comm *world, int rc, rt_error *err) { return rt_comm_agree(world, rc, err); }

static int open_tokens(rt_token_file *tf, const char *key, const char *path, int vocab_size, rt_error *err) {
    rt_error inner;
    if (rt_tokens_open(tf, path, &inner)) return rt_fail(err, "%s: %s", key, inner.msg);
    if (tf->vocab_size > vocab_size) {
        rt_tokens_close(tf);
        return rt_fail(err, "%s: %s: token vocabulary of %d does not fit model.vocab_size = %d", key, path,
                       tf->vocab_size, vocab_size);
    }
    return 0; /* the tokens themselves: validate_data, once the job agrees every file opened */
}

/*
 * Collective: every token of the data files is below its file's vocabulary,
 * with each file read once per job, not once per rank: rank r checks its
 * share (rt_tokens_share, io/tokens.h). Shares tile a file in rank order,
 * so the lowest failing rank, whose message agree() keeps, names the file's
 * first bad token, as one rank alone would.
 */
static int validate_data(rt_trainer *t, rt_error *err) {
    const rt_token_file *files[2] = {&t->train_tokens, t->has_val_file ? &t->val_tokens : NULL};
    const char *keys[2] = {"data.train", "data.val"};
    for (int i = 0; i < 2 && files[i]; i++) {
        size_t first, count;
        rt_tokens_share(files[i]->n_tokens, t->world->rank, t->world->size, &first, &count);
        rt_error inner;
        int rc = rt_tokens_validate_range(files[i], first, count, &inner);
        if (rc) rt_fail(err, "%s: %s", keys[i], inner.msg);
        if (agree(t->world, rc, err)) return -1;
    }
    return 0;
}

/* The loader's split of a packed window (rt_loader_set_split): the balanced layout of its documents over the
 * sp ranks, kept in the micro-batch being loaded for the ring, and this rank's pieces for the loader. */
static int split_window(void *ctx, size_t seq, const int64_t *first, size_t T, rt_span *spans, int *n_spans,
                        rt_error *err) {
    rt_trainer *t = ctx;
    const int P = t->cfg.sp, r = t->world->rank % P;
    size_t n_docs = 0;
    for (size_t p = 0; p < T; p++)
        if (first[p] == (int64_t)p) t->layout_starts[n_docs++] = p;
    host_batch *hb = t->loading;
    const size_t max_pieces = seqpar_doc_layout_max_pieces(T, P);
    rt_span *pieces = hb->pieces + seq * (size_t)P * max_pieces;
    size_t *n_pieces = hb->n_pieces + seq * (size_t)P;
    if (seqpar_doc_layout(T, P, t->layout_starts, n_docs, pieces, n_pieces, t->layout_scratch, NULL, err)) return -1;
    hb->layouts[seq] = (seqpar_window_layout){.max_pieces = max_pieces, .pieces = pieces, .n_pieces = n_pieces};
    *n_spans = (int)n_pieces[r];
    memcpy(spans, pieces + (size_t)r * max_pieces, n_pieces[r] * sizeof *spans);
    return 0;
}

/* The document separator: the config's when set explicitly, else what data.train's header recorded (prepare
 * --document-separator); where it stands likewise. It must be an id of every data file's vocabulary. */
static int resolve_documents(rt_trainer *t, const rt_token_file *val, rt_error *err) {
    rt_config *cfg = &t->cfg;
    const rt_token_file *train = &t->train_tokens;
    if (!rt_config_is_explicit(cfg, "data", "document_separator")) cfg->document_separator = (int)train->separator_id;
    if (!rt_config_is_explicit(cfg, "data", "separator_starts_document") && train->separator_starts_document >= 0)
        cfg->separator_starts_document = train->separator_starts_document;
    if (cfg->document_separator < 0) return 0;
    const rt_token_file *files[2] = {train, val};
    const char *keys[2] = {"data.train", "data.val"};
    for (int i = 0; i < 2; i++)
        if (cfg->document_separator >= files[i]->vocab_size)
            return rt_fail(err, "data.document_separator = %d is outside the vocabulary of %s (%s: ids 0..%d)",
                           cfg->document_separator, keys[i], files[i]->path, files[i]->vocab_size - 1);
    return 0;
}

static int setup_data(rt_trainer *t, int vocab_size, rt_error *err) {
    const rt_config *cfg = &t->cfg;
    if (open_tokens(&t->train_tokens, "data.train", cfg->data_train, vocab_size, err)) return -1;
    t->has_train_file = 1;
    size_t T = (size_t)cfg->seq_len, windows = rt_loader_count_windows(&t->train_tokens, T);
    size_t train_windows = windows, val_first = 0, val_windows = 0;
    const rt_token_file *val_source = &t->train_tokens;
    if (cfg->data_val[0]) {
        if (open_tokens(&t->val_tokens, "data.val", cfg->data_val, vocab_size, err)) return -1;
        t->has_val_file = 1;
        val_source = &t->val_tokens;
        val_windows = rt_loader_count_windows(val_source, T);
    } else if (cfg->val_every > 0) {
        val_windows = (size_t)((double)windows * cfg->val_fraction);
        if (val_windows < (size_t)cfg->batch_size) val_windows = (size_t)cfg->batch_size;
        if (val_windows >= windows)
            return rt_fail(err,
                           "%s: %zu windows of %d+1 tokens are too few to hold out a validation split of %zu; "
                           "give data.val or more data",
                           cfg->data_train, windows, cfg->seq_len, val_windows);
        train_windows = windows - val_windows;
        val_first = train_windows;
    }
    if (resolve_documents(t, val_source, err)) return -1;
    /* a window that starts inside a document continues its positions up to what the model embeds */
    const size_t lookback = (size_t)(cfg->max_seq_len - cfg->seq_len);
    if (rt_loader_init(&t->train_loader, &t->train_tokens, T, 0, train_windows, (size_t)cfg->batch_size, 1, cfg->seed,
                       err))
        return -1;
    t->has_train_loader = 1;
    rt_loader_set_documents(&t->train_loader, cfg->document_separator, cfg->separator_starts_document, lookback);
    if (cfg->val_every > 0 && val_windows > 0) {
        if (rt_loader_init(&t->val_loader, val_source, T, val_first, val_windows, (size_t)cfg->batch_size, 0, cfg->seed,
                           err))
            return -1;
        t->has_val = 1;
        rt_loader_set_documents(&t->val_loader, cfg->document_separator, cfg->separator_starts_document, lookback);
    }
    size_t per_micro = t->local_seqs * t->local_len;
    const int balanced = cfg->document_separator >= 0 && cfg->sp > 1 && cfg->document_layout == RT_DOC_LAYOUT_BALANCED;
    const size_t max_pieces = seqpar_doc_layout_max_pieces(T, cfg->sp);
    if (balanced) {
        t->layout_starts = malloc_check(T * sizeof *t->layout_starts);
        t->layout_scratch = malloc_check(seqpar_doc_layout_scratch_bytes(T, cfg->sp));
        rt_loader_set_split(&t->train_loader, split_window, t, (int)max_pieces);
        if (t->has_val) rt_loader_set_split(&t->val_loader, split_window, t, (int)max_pieces);
    }
    t->micro = calloc_check((size_t)cfg->grad_accum, sizeof *t->micro);
    for (int i = 0; i < cfg->grad_accum; i++) {
        if (balanced) {
            t->micro[i].layouts = calloc_check(t->local_seqs, sizeof *t->micro[i].layouts);
            t->micro[i].pieces = malloc_check(t->local_seqs * (size_t)cfg->sp * max_pieces * sizeof(rt_span));
            t->micro[i].n_pieces = malloc_check(t->local_seqs * (size_t)cfg->sp * sizeof(size_t));
        }
        t->micro[i].inputs = malloc_check(per_micro * sizeof(int32_t));
        t->micro[i].targets = malloc_check(per_micro * sizeof(int32_t));
        t->micro[i].pos = malloc_check(per_micro * sizeof(int64_t));
        if (cfg->document_separator >= 0) {
            t->micro[i].doc_pos = malloc_check(per_micro * sizeof(int64_t));
            t->micro[i].doc_first = malloc_check(per_micro * sizeof(int64_t));
        }
    }
    return 0;
}

/* Between layers of a training pass: any rank asked to stop (every rank polls at the same points). */
static int poll_stop(void *ctx) {
    rt_trainer *t = ctx;
    if (!t->stop_flag) return 0;
    double stop = *t->stop_flag != 0;
    rt_allreduce_max_f64(t->world, &stop, 1);
    return stop > 0.0;
}

void rt_trainer_stop_on(rt_trainer *t, const volatile sig_atomic_t *flag) { t->stop_flag = flag; }

/* The checks that need no communication: config, layout, data files. */
static int setup_local(rt_trainer *t, rt_error *err) {
    rt_config *cfg = &t->cfg;
    if (cfg->init_from[0] && rt_config_from_init_file(cfg, cfg->init_from, err)) return -1;
    if (rt_config_validate(cfg, err)) return -1;
    if (setup_layout(t, err)) return -1;
    rt_model_shape shape = rt_model_shape_from_config(cfg);
    return setup_data(t, shape.vocab_size, err);
}

/* Model and optimizer state (collective: the ring buffers and ZeRO shards need the mesh). */
static int setup_model(rt_trainer *t, rt_error *err) {
    rt_config *cfg = &t->cfg;
    rt_model_shape shape = rt_model_shape_from_config(cfg);
    size_t n_alloc = rt_optimizer_padded_size(rt_model_param_count(&shape), t->world->size);
    /* ZeRO from outside the model: stages 2-3 stream each layer's gradients into the optimizer's reductions,
     * stage 3 gathers each layer's parameters from its shards; the hooks own those buffers (reserved by the
     * model's init) and the model calls them at layer boundaries. */
    rt_zero_hooks_init(&t->zero, cfg->zero_stage, &t->opt, t->backend, &t->mem);
    if (rt_model_init(&t->model, &shape, t->backend, &t->mem,
                      &(rt_model_options){.mode = cfg->activation_mode,
                                          .offload_max_inflight = cfg->offload_max_inflight,
                                          .max_seqs = t->local_seqs,
                                          .max_local_len = t->local_len,
                                          .packed_documents = cfg->document_separator >= 0,
                                          .mlp_tile_tokens = rt_config_mlp_tile(cfg, t->local_seqs * t->local_len),
                                          .n_alloc = n_alloc,
                                          .seqpar = &t->seqpar,
                                          .param_hooks = rt_zero_param_hooks(&t->zero),
                                          .grad_hooks = rt_zero_grad_hooks(&t->zero),
                                          .interrupt_poll = poll_stop,
                                          .interrupt_ctx = t},
                      err))
        return -1;
    t->model_ready = 1;
    /* Stage 3 has no full parameter buffer: the initial weights pass through the host, and the optimizer keeps
     * this rank's shard of them (padded: the last shard's tail stays zero). */
    const int sharded = t->model.params == NULL;
    float *initial = sharded ? calloc_check(n_alloc, sizeof(float)) : t->model.params;
    int rc = 0;
    if (cfg->init_from[0])
        rc = sharded ? rt_model_read_init_file(&t->model, cfg->init_from, initial, err)
                     : rt_model_load_init_file(&t->model, cfg->init_from, err);
    else if (sharded)
        rt_model_init_params_host(&t->model, cfg->seed, initial);
    else
        rt_model_init_params(&t->model, cfg->seed);
    if (rc == 0)
        rc = rt_optimizer_init(&t->opt, t->backend, &t->mem, &t->mesh, cfg->zero_stage, &t->model.table, initial,
                               cfg->adam_beta1, cfg->adam_beta2, cfg->adam_eps, cfg->weight_decay, err);
    if (sharded) free(initial);
    return rc;
}

/* The backend of device.kind, on the GPU of this rank's place among the ranks of its node. */
static int open_backend(const rt_config *cfg, rt_comm *world, const rt_backend **out, rt_error *err) {
    rt_comm *node = rt_comm_split_node(world);
    const int local_rank = node->rank;
    rt_comm_destroy(node);
    return rt_backend_open(out, cfg->device_kind == RT_DEVICE_CUDA ? "cuda" : "cpu", local_rank, err);
}

int rt_trainer_init(rt_trainer **out, const rt_config *cfg, rt_comm *world, rt_error *err) {
    const rt_backend *backend = NULL;
    if (agree(world, open_backend(cfg, world, &backend, err), err)) {
        rt_backend_close(backend);
        *out = NULL;
        return -1;
    }
    int rc = rt_trainer_init_on(out, cfg, world, backend, err);
    (*out)->owns_backend = 1;
    return rc;
}

int rt_trainer_init_on(rt_trainer **out, const rt_config *cfg, rt_comm *world, const rt_backend *backend,
                       rt_error *err) {
    rt_trainer *t = calloc_check(1, sizeof *t);
    *out = t;
    t->cfg = *cfg;
    t->world = world;
    t->backend = backend;
    rt_device_memory_init(&t->mem, t->backend, cfg->memory_limit);
    if (agree(world, setup_local(t, err), err)) return -1;
    if (validate_data(t, err)) return -1;
    if (rt_mesh_init(&t->mesh, world, t->cfg.dp, t->cfg.sp, err)) return -1; /* cannot fail after setup_local */
    t->mesh_ready = 1;
    if (rt_comm_device_plane(&t->dev_world, world, t->backend, err) ||
        rt_comm_device_plane(&t->dev_sp, t->mesh.comm[RT_MESH_SP], t->backend, err))
        return -1; /* every rank alike */
    t->seqpar = (seqpar_ctx){.backend = t->backend, .mem = &t->mem, .comm = t->dev_sp};
    if (agree(world, setup_model(t, err), err)) return -1;
    t->opt.dev = t->dev_world;
    return 0;
}

/* Tokens are checked against the file's own vocabulary, which setup_data checked fits the model's. */
static int load_micro(rt_trainer *t, rt_loader *loader, host_batch *hb, rt_error *err) {
    t->loading = hb;
    return rt_loader_next_docs(loader, (size_t)t->dp_rank * t->local_seqs, t->local_seqs, t->spans, 2,
                               loader->tokens->vocab_size, hb->inputs, hb->targets, hb->pos, hb->doc_pos, hb->doc_first,
                               err);
}

static rt_batch as_batch(const rt_trainer *t, const host_batch *hb, size_t first_seq) {
    return (rt_batch){.inputs = hb->inputs,
                      .targets = hb->targets,
                      .pos = hb->pos,
                      .doc_pos = hb->doc_pos,
                      .doc_first = hb->doc_first,
                      .layouts = hb->layouts,
                      .n_seqs = t->local_seqs,
                      .local_len = t->local_len,
                      .first_seq = first_seq};
}

/* Mean validation loss over val_steps global batches, from the start of the validation split. */
static int validate(rt_trainer *t, double *val_loss, rt_error *err) {
    rt_loader_rewind(&t->val_loader);
    double sums[2] = {0.0, 0.0}; /* loss sum, target count */
    for (int i = 0; i < t->cfg.val_steps; i++) {
        if (load_micro(t, &t->val_loader, &t->micro[0], err)) return -1;
        rt_batch batch = as_batch(t, &t->micro[0], 0);
        size_t count = 0;
        sums[0] += rt_model_forward_loss(&t->model, &batch, &count);
        sums[1] += (double)count;
    }
    rt_allreduce_sum_f64(t->world, sums, 2);
    *val_loss = sums[0] / sums[1];
    return 0;
}

int rt_trainer_step(rt_trainer *t, rt_step_metrics *metrics, rt_error *err) {
    const rt_config *cfg = &t->cfg;
    rt_model *m = &t->model;
    const int step = t->next_step;
    double t0 = rt_now_s();
    rt_device_memory_reset_peak(&t->mem);
    t->seqpar.comm_exposed_s = 0.0;
    t->opt.comm_exposed_s = 0.0;
    /* Load the whole step first: the loss scale needs the step's target count over all ranks. An interrupted
     * step puts the loader back where it was. */
    const uint64_t epoch_before = t->train_loader.epoch;
    const size_t cursor_before = t->train_loader.cursor;
    double step_targets = 0.0;
    double docs[4] = {0.0, 0.0, 0.0, 0.0}; /* visible pairs, causal pairs, document starts; max visible pairs */
    for (int mb = 0; mb < cfg->grad_accum; mb++) {
        if (load_micro(t, &t->train_loader, &t->micro[mb], err)) return RT_TRAIN_FAILED_HERE;
        const host_batch *hb = &t->micro[mb];
        for (size_t i = 0; i < t->local_seqs * t->local_len; i++) {
            step_targets += hb->targets[i] >= 0;
            if (hb->doc_first) {
                docs[0] += (double)(hb->pos[i] - hb->doc_first[i] + 1);
                docs[1] += (double)(hb->pos[i] + 1);
                docs[2] += hb->doc_first[i] == hb->pos[i];
            }
        }
    }
    rt_allreduce_sum_f64(t->world, &step_targets, 1);
    if (cfg->document_separator >= 0) {
        docs[3] = docs[0];
        rt_allreduce_sum_f64(t->world, docs, 3);
        rt_allreduce_max_f64(t->world, docs + 3, 1);
    }
    rt_model_zero_grads(m);
    rt_optimizer_begin_step(&t->opt);
    rt_dropout_plan dropout = {.p = cfg->dropout, .seed = cfg->seed, .step = (uint64_t)step};
    double loss_sum = 0.0;
    for (int mb = 0; mb < cfg->grad_accum; mb++) {
        size_t first_seq = (size_t)mb * cfg->batch_size + (size_t)t->dp_rank * t->local_seqs, count = 0;
        rt_batch batch = as_batch(t, &t->micro[mb], first_seq);
        loss_sum += rt_model_forward_backward(m, &batch, &dropout, (float)(1.0 / step_targets), &count);
        if (m->interrupted) {
            if (rt_loader_seek(&t->train_loader, epoch_before, cursor_before, err)) return RT_TRAIN_FAILED_HERE;
            return RT_TRAIN_INTERRUPTED;
        }
    }
    rt_allreduce_sum_f64(t->world, &loss_sum, 1);
    rt_optimizer_reduce_grads(&t->opt, m->grads);
    if (t->preclip_probe) rt_optimizer_gather_grads(&t->opt, m->grads, t->preclip_probe);
    float lr = rt_lr_schedule(step, cfg->steps, cfg->warmup_steps, cfg->lr, cfg->min_lr);
    double grad_norm = rt_optimizer_update(&t->opt, m->params, m->grads, lr, cfg->grad_clip);
    rt_model_params_changed(m);
    double loss = loss_sum / step_targets;
    /* Both are reduced over the world: every rank fails here alike, and rank 0 says so. */
    if (!isfinite(loss) || !isfinite(grad_norm)) {
        rt_fail(err, "step %d: the loss (%g) or gradient norm (%g) is not finite; lower train.lr (%g)", step, loss,
                grad_norm, cfg->lr);
        if (t->world->rank != 0) err->msg[0] = '\0';
        return RT_TRAIN_FAILED_EVERYWHERE;
    }
    rt_offload_stats offload;
    rt_model_take_offload_stats(m, &offload);
    if (cfg->activation_mode == RT_ACT_OFFLOAD && offload.offloaded_bytes == 0) {
        rt_fail(err, "step %d: activations.mode = offload but nothing was offloaded", step);
        return RT_TRAIN_FAILED_HERE;
    }
    double step_s = rt_now_s() - t0;
    *metrics = (rt_step_metrics){
        .step = step,
        .loss = loss,
        .grad_norm = grad_norm,
        .lr = lr,
        .step_s = step_s,
        .tokens_per_s = (double)cfg->batch_size * cfg->seq_len * cfg->grad_accum / step_s,
        .documents_on = cfg->document_separator >= 0,
        .documents = docs[2],
        .mean_document_len = (double)cfg->batch_size * cfg->seq_len * cfg->grad_accum / docs[2],
        .attn_masked_share = 1.0 - docs[0] / docs[1],
        .attn_work_imbalance = docs[3] / (docs[0] / t->world->size),
        .val_loss = NAN,
        .peak_device_bytes = t->mem.peak,
        .optimizer_bytes = t->opt.state_bytes,
        .comm_exposed_s = t->seqpar.comm_exposed_s + t->opt.comm_exposed_s,
        .offloaded_bytes = offload.offloaded_bytes,
        .prefetch_wait_s = offload.prefetch_wait_s,
        .offload_host_bytes = offload.host_pool_bytes,
    };
    t->next_step++;
    t->tokens_seen += (int64_t)cfg->batch_size * cfg->seq_len * cfg->grad_accum;
    if (t->has_val && (t->next_step % cfg->val_every == 0 || t->next_step == cfg->steps)) {
        if (validate(t, &metrics->val_loss, err)) return RT_TRAIN_FAILED_HERE;
        metrics->validated = 1;
    }
    return 0;
}

void rt_trainer_gradients(rt_trainer *t, float *dst) { rt_optimizer_gather_grads(&t->opt, t->model.grads, dst); }

void rt_trainer_params(rt_trainer *t, float *dst) {
    const rt_optimizer *opt = &t->opt;
    if (t->model.params) {
        rt_be_copy(t->backend, dst, t->model.params, opt->n_params * sizeof(float));
        return;
    }
    /* Stage 3: the shards, gathered on the host plane (like the gradient probe). */
    float *all = malloc_check(opt->padded * sizeof(float));
    float *mine = all + (size_t)t->world->rank * opt->shard_size;
    rt_be_copy(t->backend, mine, opt->master, opt->shard_size * sizeof(float));
    rt_allgather_f32(t->world, all, mine, opt->shard_size);
    memcpy(dst, all, opt->n_params * sizeof(float));
    free(all);
}

void rt_trainer_probe_preclip_gradients(rt_trainer *t, float *dst) { t->preclip_probe = dst; }

const rt_config *rt_trainer_config(const rt_trainer *t) { return &t->cfg; }

int rt_trainer_steps_done(const rt_trainer *t) { return t->next_step; }

int64_t rt_trainer_tokens_seen(const rt_trainer *t) { return t->tokens_seen; }

void rt_trainer_data_position(const rt_trainer *t, uint64_t *epoch, size_t *cursor) {
    *epoch = t->train_loader.epoch;
    *cursor = t->train_loader.cursor;
}

rt_model *rt_trainer_model(rt_trainer *t) { return &t->model; }

size_t rt_trainer_device_bytes(const rt_trainer *t) { return t->mem.in_use; }

void rt_trainer_free(rt_trainer *t) {
    if (!t) return;
    if (t->micro) {
        for (int i = 0; i < t->cfg.grad_accum; i++) {
            free(t->micro[i].inputs);
            free(t->micro[i].targets);
            free(t->micro[i].pos);
            free(t->micro[i].doc_pos);
            free(t->micro[i].doc_first);
            free(t->micro[i].layouts);
            free(t->micro[i].pieces);
            free(t->micro[i].n_pieces);
        }
        free(t->micro);
    }
    if (t->has_train_loader) rt_loader_free(&t->train_loader);
    if (t->has_val) rt_loader_free(&t->val_loader);
    free(t->layout_starts);
    free(t->layout_scratch);
    if (t->has_train_file) rt_tokens_close(&t->train_tokens);
    if (t->has_val_file) rt_tokens_close(&t->val_tokens);
    /* the planes first: an NCCL plane's destroy launches what is still queued, on buffers freed below */
    rt_comm_device_plane_free(t->dev_sp);
    rt_comm_device_plane_free(t->dev_world);
    if (t->model_ready) rt_model_free(&t->model);
    rt_zero_hooks_free(&t->zero);
    rt_optimizer_free(&t->opt);
    seqpar_ctx_free(&t->seqpar);
    rt_device_memory_destroy(&t->mem);
    if (t->mesh_ready) rt_mesh_free(&t->mesh);
    if (t->owns_backend) rt_backend_close(t->backend);
    free(t);
}
