/*
 * train.c: the trainer and a whole training run.
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

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../io/loader.h"
#include "../io/tokens.h"
#include "../io/tokens_validate.h"
#include "../seqpar/seqpar.h"
#include "../shard/mesh.h"
#include "../shard/optimizer.h"
#include "model_io.h"

/* One micro-batch's host arrays. */
typedef struct {
    int32_t *inputs, *targets;
    int64_t *pos;
} host_batch;

struct rt_trainer {
    rt_config cfg;
    rt_comm *world;
    rt_mesh mesh;
    int mesh_ready;
    int dp_rank;
    rt_span spans[2];
    size_t local_len, local_seqs;
    const rt_backend *backend;
    rt_device_memory mem;
    seqpar_ctx seqpar;
    rt_model model;
    int model_ready;
    rt_optimizer opt;
    rt_token_file train_tokens, val_tokens;
    int has_train_file, has_val_file;
    rt_loader train_loader, val_loader;
    int has_train_loader, has_val;
    host_batch *micro; /* (grad_accum) */
    int next_step;
    float *preclip_probe; /* (Ψ) when a test asked for each step's reduced gradient before clipping */
};

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

/*
 * Collective: whether any rank's rc failed. Setup errors are mostly the same
 * on every rank (a bad config, a missing file, the memory limit), so the
 * lowest failing rank keeps its message and the others get an empty one:
 * the job prints one line, and every rank returns instead of aborting.
 */
static int agree(rt_comm *world, int rc, rt_error *err) {
    double first_failing = rc ? (double)world->rank : (double)world->size;
    double negated = -first_failing; /* the communicator has max, not min */
    world->ops->allreduce_max_f64(world, &negated, 1);
    int first = (int)-negated;
    if (first >= world->size) return 0;
    if (world->rank != first) err->msg[0] = '\0';
    return -1;
}

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
 * share (io/tokens_validate.h). Shares tile a file in rank order, so the
 * lowest failing rank, whose message agree() keeps, names the file's first
 * bad token, as one rank alone would.
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
    if (rt_loader_init(&t->train_loader, &t->train_tokens, T, 0, train_windows, (size_t)cfg->batch_size, 1, cfg->seed,
                       err))
        return -1;
    t->has_train_loader = 1;
    if (cfg->val_every > 0 && val_windows > 0) {
        if (rt_loader_init(&t->val_loader, val_source, T, val_first, val_windows, (size_t)cfg->batch_size, 0, cfg->seed,
                           err))
            return -1;
        t->has_val = 1;
    }
    size_t per_micro = t->local_seqs * t->local_len;
    t->micro = calloc_check((size_t)cfg->grad_accum, sizeof *t->micro);
    for (int i = 0; i < cfg->grad_accum; i++) {
        t->micro[i].inputs = malloc_check(per_micro * sizeof(int32_t));
        t->micro[i].targets = malloc_check(per_micro * sizeof(int32_t));
        t->micro[i].pos = malloc_check(per_micro * sizeof(int64_t));
    }
    return 0;
}

/* ZeRO stage 2: the model hands over each layer's gradients as its backward ends. */
static void stream_to_optimizer(void *ctx, const float *grads, size_t offset, size_t count) {
    rt_optimizer_reduce_range(ctx, grads, offset, count);
}

/* The checks that need no communication: config, layout, data files. */
static int setup_local(rt_trainer *t, rt_error *err) {
    rt_config *cfg = &t->cfg;
    if (cfg->init_from[0] && rt_config_from_llmc(cfg, cfg->init_from, err)) return -1;
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
    if (rt_model_init(&t->model, &shape, t->backend, &t->mem,
                      &(rt_model_options){.mode = cfg->activation_mode,
                                          .offload_max_inflight = cfg->offload_max_inflight,
                                          .max_seqs = t->local_seqs,
                                          .max_local_len = t->local_len,
                                          .n_alloc = n_alloc,
                                          .seqpar = &t->seqpar,
                                          .grad_hook = cfg->zero_stage == 2 ? stream_to_optimizer : NULL,
                                          .grad_hook_ctx = &t->opt},
                      err))
        return -1;
    t->model_ready = 1;
    if (cfg->init_from[0]) {
        if (rt_model_load_llmc(&t->model, cfg->init_from, err)) return -1;
    } else {
        rt_model_init_params(&t->model, cfg->seed);
    }
    return rt_optimizer_init(&t->opt, t->backend, &t->mem, &t->mesh, cfg->zero_stage, &t->model.table, t->model.params,
                             cfg->adam_beta1, cfg->adam_beta2, cfg->adam_eps, cfg->weight_decay, err);
}

int rt_trainer_init(rt_trainer **out, const rt_config *cfg, rt_comm *world, rt_error *err) {
    return rt_trainer_init_on(out, cfg, world, rt_backend_cpu(), err);
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
    t->seqpar = (seqpar_ctx){.backend = t->backend, .mem = &t->mem, .comm = t->mesh.comm[1]};
    return agree(world, setup_model(t, err), err);
}

/* Tokens are checked against the file's own vocabulary, which setup_data checked fits the model's. */
static int load_micro(rt_trainer *t, rt_loader *loader, host_batch *hb, rt_error *err) {
    return rt_loader_next(loader, (size_t)t->dp_rank * t->local_seqs, t->local_seqs, t->spans, 2,
                          loader->tokens->vocab_size, hb->inputs, hb->targets, hb->pos, err);
}

static rt_batch as_batch(const rt_trainer *t, const host_batch *hb, size_t first_seq) {
    return (rt_batch){.inputs = hb->inputs,
                      .targets = hb->targets,
                      .pos = hb->pos,
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
    /* Load the whole step first: the loss scale needs the step's target count over all ranks. */
    double step_targets = 0.0;
    for (int mb = 0; mb < cfg->grad_accum; mb++) {
        if (load_micro(t, &t->train_loader, &t->micro[mb], err)) return RT_TRAIN_FAILED_HERE;
        for (size_t i = 0; i < t->local_seqs * t->local_len; i++)
            step_targets += t->micro[mb].targets[i] >= 0;
    }
    rt_allreduce_sum_f64(t->world, &step_targets, 1);
    rt_model_zero_grads(m);
    rt_optimizer_begin_step(&t->opt);
    rt_dropout_plan dropout = {.p = cfg->dropout, .seed = cfg->seed, .step = (uint64_t)step};
    double loss_sum = 0.0;
    for (int mb = 0; mb < cfg->grad_accum; mb++) {
        size_t first_seq = (size_t)mb * cfg->batch_size + (size_t)t->dp_rank * t->local_seqs, count = 0;
        rt_batch batch = as_batch(t, &t->micro[mb], first_seq);
        loss_sum += rt_model_forward_backward(m, &batch, &dropout, (float)(1.0 / step_targets), &count);
    }
    rt_allreduce_sum_f64(t->world, &loss_sum, 1);
    rt_optimizer_reduce_grads(&t->opt, m->grads);
    if (t->preclip_probe) rt_optimizer_gather_grads(&t->opt, m->grads, t->preclip_probe);
    float lr = rt_lr_schedule(step, cfg->steps, cfg->warmup_steps, cfg->lr, cfg->min_lr);
    double grad_norm = rt_optimizer_update(&t->opt, m->params, m->grads, lr, cfg->grad_clip);
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
        .val_loss = NAN,
        .peak_device_bytes = t->mem.peak,
        .optimizer_bytes = t->opt.state_bytes,
        .comm_exposed_s = t->seqpar.comm_exposed_s,
        .offloaded_bytes = offload.offloaded_bytes,
        .prefetch_wait_s = offload.prefetch_wait_s,
        .offload_host_bytes = offload.host_pool_bytes,
    };
    t->next_step++;
    if (t->has_val && (t->next_step % cfg->val_every == 0 || t->next_step == cfg->steps)) {
        if (validate(t, &metrics->val_loss, err)) return RT_TRAIN_FAILED_HERE;
        metrics->validated = 1;
    }
    return 0;
}

void rt_trainer_gradients(rt_trainer *t, float *dst) { rt_optimizer_gather_grads(&t->opt, t->model.grads, dst); }

void rt_trainer_probe_preclip_gradients(rt_trainer *t, float *dst) { t->preclip_probe = dst; }

const rt_config *rt_trainer_config(const rt_trainer *t) { return &t->cfg; }

rt_model *rt_trainer_model(rt_trainer *t) { return &t->model; }

void rt_trainer_free(rt_trainer *t) {
    if (!t) return;
    if (t->micro) {
        for (int i = 0; i < t->cfg.grad_accum; i++) {
            free(t->micro[i].inputs);
            free(t->micro[i].targets);
            free(t->micro[i].pos);
        }
        free(t->micro);
    }
    if (t->has_train_loader) rt_loader_free(&t->train_loader);
    if (t->has_val) rt_loader_free(&t->val_loader);
    if (t->has_train_file) rt_tokens_close(&t->train_tokens);
    if (t->has_val_file) rt_tokens_close(&t->val_tokens);
    if (t->model_ready) rt_model_free(&t->model);
    seqpar_ctx_free(&t->seqpar);
    rt_device_memory_destroy(&t->mem);
    if (t->mesh_ready) rt_mesh_free(&t->mesh);
    free(t);
}

/* ---- a whole run: files, progress, signals ---- */

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* Removes the directories make_dirs created along path: every prefix at least created_from bytes long. */
static void undo_make_dirs(const char *path, size_t created_from) {
    char partial[RT_PATH_LEN];
    size_t n = strlen(path);
    if (created_from == 0 || n >= sizeof partial) return;
    memcpy(partial, path, n + 1);
    while (n >= created_from) {
        if (partial[n - 1] != '/') rmdir(partial); /* "a/b/" names the same directory as "a/b" */
        partial[--n] = '\0';
    }
}

/* mkdir -p; *created_from is the length of the first prefix this call created (0: none), for undo_make_dirs. */
static int make_dirs(const char *path, size_t *created_from, rt_error *err) {
    char partial[RT_PATH_LEN];
    size_t n = strlen(path);
    *created_from = 0;
    if (n == 0 || n >= sizeof partial) return rt_fail(err, "run.dir '%s' is empty or too long", path);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        memcpy(partial, path, i);
        partial[i] = '\0';
        if (mkdir(partial, 0755) == 0) {
            if (*created_from == 0) *created_from = i;
        } else if (errno != EEXIST) {
            rt_fail(err, "cannot create directory %s: %s", partial, strerror(errno));
            undo_make_dirs(path, *created_from);
            return -1;
        }
    }
    return 0;
}

static char *config_as_text(const rt_config *cfg) {
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) rt_fatal("out of host memory formatting the config");
    rt_config_write(cfg, mem);
    fclose(mem);
    return text;
}

static void format_duration(double seconds, char out[32]) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(out, 32, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else if (s >= 60)
        snprintf(out, 32, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(out, 32, "%lds", s);
}

/*
 * metrics.jsonl, open on rank 0 for the whole run. Each line is formatted
 * whole and written with write(2), checked; good_bytes is the file's length
 * after the last complete line, so a failed write (a full disk takes part of
 * a line) is cut back to it: the file always holds whole, valid JSON lines.
 */
typedef struct {
    int fd; /* -1: not open */
    off_t good_bytes;
    char path[RT_PATH_LEN + 32];
} metrics_file;

typedef struct {
    char *text;
    size_t cap, used; /* used >= cap: did not fit */
} json_line;

static void json_append(json_line *line, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void json_append(json_line *line, const char *fmt, ...) {
    if (line->used >= line->cap) return;
    va_list args;
    va_start(args, fmt);
    int n = vsnprintf(line->text + line->used, line->cap - line->used, fmt, args);
    va_end(args);
    line->used = n < 0 ? line->cap : line->used + (size_t)n;
}

/* `"key": value` with printf's %.<precision><style>; JSON has no inf or nan, so a non-finite value is written
 * as null with the reason beside it: "loss": null, "loss_nonfinite": "nan" (or "inf", "-inf"). */
static void json_real(json_line *line, const char *key, double value, char style, int precision) {
    const char *sep = line->used > 1 ? ", " : "";
    if (isfinite(value))
        json_append(line, style == 'f' ? "%s\"%s\": %.*f" : "%s\"%s\": %.*g", sep, key, precision, value);
    else
        json_append(line, "%s\"%s\": null, \"%s_nonfinite\": \"%s\"", sep, key, key,
                    isnan(value) ? "nan" : (value > 0 ? "inf" : "-inf"));
}

static void json_count(json_line *line, const char *key, size_t value) {
    json_append(line, "%s\"%s\": %zu", line->used > 1 ? ", " : "", key, value);
}

size_t rt_metrics_json_line(const rt_step_metrics *s, char *out, size_t cap) {
    json_line line = {.text = out, .cap = cap, .used = 0};
    json_append(&line, "{\"step\": %d", s->step);
    json_real(&line, "loss", s->loss, 'g', 9);
    json_real(&line, "grad_norm", s->grad_norm, 'g', 9);
    json_real(&line, "lr", s->lr, 'g', 9);
    json_real(&line, "tokens_per_s", s->tokens_per_s, 'f', 1);
    json_real(&line, "step_s", s->step_s, 'f', 6);
    json_count(&line, "peak_device_bytes", s->peak_device_bytes);
    json_count(&line, "offloaded_bytes", s->offloaded_bytes);
    json_real(&line, "comm_exposed_s", s->comm_exposed_s, 'f', 6);
    json_real(&line, "prefetch_wait_s", s->prefetch_wait_s, 'f', 6);
    json_count(&line, "offload_host_bytes", s->offload_host_bytes);
    json_count(&line, "optimizer_bytes", s->optimizer_bytes);
    if (s->validated) json_real(&line, "val_loss", s->val_loss, 'g', 9);
    json_append(&line, "}\n");
    return line.used;
}

static int write_metrics(metrics_file *metrics, const rt_step_metrics *s, int steps, rt_error *err) {
    char text[1024];
    size_t used = rt_metrics_json_line(s, text, sizeof text);
    if (used >= sizeof text) rt_fatal("metrics line of step %d longer than %zu bytes", s->step, used);
    rt_error inner;
    if (rt_write_all(metrics->fd, text, used, metrics->path, &inner) == 0) {
        metrics->good_bytes += (off_t)used;
        return 0;
    }
    int cut = ftruncate(metrics->fd, metrics->good_bytes) == 0; /* no half line left at the end */
    return rt_fail(err, "%s; the run stopped after step %d of %d, without saving model.h5%s", inner.msg, s->step + 1,
                   steps, cut ? "" : " (the file's last line may be cut short)");
}

/* fsync and close (checked); a no-op when not open. */
static int close_metrics(metrics_file *metrics, rt_error *err) {
    if (metrics->fd < 0) return 0;
    int rc = rt_sync_close(metrics->fd, metrics->path, 0, err);
    metrics->fd = -1;
    return rc;
}

static void print_progress(const rt_config *cfg, const rt_step_metrics *s, double elapsed) {
    char peak[32], eta[32], val[48] = "", comm[48] = "";
    format_duration(elapsed / (s->step + 1) * (cfg->steps - s->step - 1), eta);
    if (s->validated) snprintf(val, sizeof val, " | val %.4f", s->val_loss);
    if (cfg->sp > 1) snprintf(comm, sizeof comm, " | comm %.1f ms", 1e3 * s->comm_exposed_s);
    printf("step %*d/%d | loss %.4f%s | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms/step%s | peak %s | ETA %s\n",
           (int)snprintf(NULL, 0, "%d", cfg->steps), s->step + 1, cfg->steps, s->loss, val, s->lr, s->grad_norm,
           s->tokens_per_s, 1e3 * s->step_s, comm, rt_format_bytes(s->peak_device_bytes, peak), eta);
    fflush(stdout);
}

/* The files of a run's record: a run.dir holding any of them belongs to an earlier run. */
static const char *const record_files[] = {"metrics.jsonl", "config.ini", "model.h5"};

static int refuse_used_run_dir(const char *run_dir, const char *file, rt_error *err) {
    return rt_fail(err,
                   "run.dir %s already holds %s from an earlier run; give a new run.dir (--set run.dir=...) or "
                   "remove the old one",
                   run_dir, file);
}

/*
 * Rank 0 claims the run directory: creates it (mkdir -p); refuses one that
 * holds an earlier run's record, so a re-run never overwrites what a user
 * kept; creates metrics.jsonl exclusively (two runs started at once cannot
 * share a directory either); writes config.ini whole (config.ini.tmp, then
 * rename). On failure it removes what it created, directories included.
 */
static int open_run_dir(const rt_config *cfg, const char *config_text, metrics_file *metrics, rt_error *err) {
    size_t created_from = 0;
    if (make_dirs(cfg->run_dir, &created_from, err)) return -1;
    char path[RT_PATH_LEN + 32];
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < sizeof record_files / sizeof record_files[0]; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", cfg->run_dir, record_files[i]);
        if (lstat(path, &st) == 0)
            rc = refuse_used_run_dir(cfg->run_dir, record_files[i], err);
        else if (errno != ENOENT)
            rc = rt_fail(err, "cannot check %s: %s", path, strerror(errno));
    }
    if (rc == 0) {
        snprintf(metrics->path, sizeof metrics->path, "%s/metrics.jsonl", cfg->run_dir);
        metrics->fd = open(metrics->path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        metrics->good_bytes = 0;
        if (metrics->fd < 0)
            rc = errno == EEXIST ? refuse_used_run_dir(cfg->run_dir, "metrics.jsonl", err)
                                 : rt_fail(err, "%s: cannot create: %s", metrics->path, strerror(errno));
    }
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/config.ini", cfg->run_dir);
        rc = rt_write_file_atomic(path, config_text, strlen(config_text), err);
        if (rc != 0) {
            close(metrics->fd);
            metrics->fd = -1;
            unlink(metrics->path);
        }
    }
    if (rc != 0) undo_make_dirs(cfg->run_dir, created_from);
    return rc;
}

int rt_train(const rt_config *cfg_in, rt_comm *world, rt_train_result *result, rt_error *err) {
    memset(result, 0, sizeof *result);
    result->last_val_loss = NAN;
    rt_trainer *t = NULL;
    metrics_file metrics = {.fd = -1};
    char *config_text = NULL;
    int rc = -1;
    const int is_root = world->rank == 0;
    if (rt_trainer_init(&t, cfg_in, world, err)) goto done; /* every rank fails alike: rc -1 */
    const rt_config *cfg = rt_trainer_config(t);
    config_text = config_as_text(cfg);
    /* Every input is valid: now, and only now, files appear (rank 0 writes them; all ranks learn if it can). */
    if (agree(world, is_root ? open_run_dir(cfg, config_text, &metrics, err) : 0, err)) goto done;
    rc = RT_TRAIN_FAILED_HERE;
    if (is_root) {
        char params[32], in_use[32];
        const int threads = omp_get_max_threads(); /* this rank's; see runtime/threads.h */
        printf("ringtrain: %s model, %zu parameters (%s), %d rank%s (dp %d x sp %d) of %d thread%s each, zero "
               "stage %d, %zu tokens/step, %s device memory after setup\n",
               rt_family_name(cfg->family), t->model.table.total,
               rt_format_bytes(t->model.table.total * sizeof(float), params), world->size, world->size == 1 ? "" : "s",
               cfg->dp, cfg->sp, threads, threads == 1 ? "" : "s", cfg->zero_stage,
               (size_t)cfg->batch_size * cfg->seq_len * cfg->grad_accum, rt_format_bytes(t->mem.in_use, in_use));
        fflush(stdout);
    }
    stop_requested = 0;
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    double run_start = rt_now_s();
    for (int step = 0; step < cfg->steps; step++) {
        rt_step_metrics s;
        int step_rc = rt_trainer_step(t, &s, err);
        if (step_rc) {
            rc = step_rc;
            goto restore_signals;
        }
        if (step == 0) result->first_loss = s.loss;
        result->last_loss = s.loss;
        result->steps_done = step + 1;
        if (s.validated) result->last_val_loss = s.val_loss;
        int metrics_failed = 0;
        if (is_root) {
            metrics_failed = write_metrics(&metrics, &s, cfg->steps, err) != 0;
            if ((step + 1) % cfg->log_every == 0 || step == 0 || step + 1 == cfg->steps)
                print_progress(cfg, &s, rt_now_s() - run_start);
        }
        /* Every rank must agree to stop, or the next collective would hang: 1 for a signal, 2 when rank 0
         * could not write metrics.jsonl (its message is the job's one line; every rank returns). */
        double stop = metrics_failed ? 2.0 : stop_requested;
        world->ops->allreduce_max_f64(world, &stop, 1);
        if (stop >= 2.0) {
            if (!is_root) err->msg[0] = '\0';
            rc = RT_TRAIN_FAILED_EVERYWHERE;
            goto restore_signals;
        }
        if (stop > 0.0 && step + 1 < cfg->steps) {
            result->stopped_by_signal = 1;
            if (is_root) printf("stop signal: ending after step %d of %d\n", step + 1, cfg->steps);
            break;
        }
    }
    /* Rank 0 finishes metrics.jsonl, then saves model.h5; every rank learns whether it could, so a failure
     * here ends the job with rank 0's one line instead of an abort. */
    int saved = 0;
    if (is_root) {
        char path[RT_PATH_LEN + 32];
        snprintf(path, sizeof path, "%s/model.h5", cfg->run_dir);
        saved = close_metrics(&metrics, err);
        if (saved == 0) saved = rt_model_save(&t->model, path, config_text, result->steps_done, err);
        if (saved == 0) printf("saved %s (step %d)\n", path, result->steps_done);
    }
    rc = agree(world, saved, err) ? RT_TRAIN_FAILED_EVERYWHERE : 0;
restore_signals:
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
done:
    close_metrics(&metrics, NULL); /* a run that failed keeps the lines it wrote */
    free(config_text);
    rt_trainer_free(t);
    return rc;
}
