/*
 * train.c: one training run.
 *
 * Mesh: world = dp x sp; rank = dp_rank * sp + sp_rank, so the ranks that
 * share a sequence (the ring) are neighbours. Each rank reads its dp slice
 * of the global batch and, of every sequence, its zigzag chunks.
 *
 * One step: load the grad_accum micro-batches, count the step's targets over
 * the world (so the loss is the exact token-weighted mean whatever the rank
 * count), forward+backward each micro-batch (gradients accumulate), then
 * the optimizer (gradient sum over ranks, global-norm clip, AdamW).
 * step counts from 0; the logged loss is the step's loss before its update.
 */
#include "train.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../io/loader.h"
#include "../io/tokens.h"
#include "../seqpar/seqpar.h"
#include "../shard/optimizer.h"
#include "model.h"
#include "model_io.h"

static volatile sig_atomic_t stop_requested;

static void on_stop_signal(int sig) {
    (void)sig;
    stop_requested = 1;
}

/* mkdir -p */
static int make_dirs(const char *path, rt_error *err) {
    char partial[RT_PATH_LEN];
    size_t n = strlen(path);
    if (n == 0 || n >= sizeof partial) return rt_fail(err, "run.dir '%s' is empty or too long", path);
    for (size_t i = 1; i <= n; i++) {
        if (path[i] != '/' && path[i] != '\0') continue;
        memcpy(partial, path, i);
        partial[i] = '\0';
        if (mkdir(partial, 0755) != 0 && errno != EEXIST)
            return rt_fail(err, "cannot create directory %s: %s", partial, strerror(errno));
    }
    return 0;
}

/* One micro-batch's host arrays. */
typedef struct {
    int32_t *inputs, *targets;
    int64_t *pos;
} host_batch;

typedef struct {
    const rt_config *cfg;
    rt_comm *world, *sp_comm;
    int dp_rank, sp_rank;
    rt_span spans[2];
    size_t local_len, local_seqs;
    const rt_backend *backend;
    rt_device_memory mem;
    seqpar_ctx seqpar;
    rt_model model;
    rt_optimizer opt;
    rt_token_file train_tokens, val_tokens;
    int has_val_file;
    rt_loader train_loader, val_loader;
    int has_val;
    host_batch *micro; /* (grad_accum) */
    FILE *metrics;
    char *config_text;
} run_state;

static char *config_as_text(const rt_config *cfg) {
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) rt_fatal("out of host memory formatting the config");
    rt_config_write(cfg, mem);
    fclose(mem);
    return text;
}

static int setup_mesh(run_state *st, rt_error *err) {
    const rt_config *cfg = st->cfg;
    if (cfg->dp * cfg->sp != st->world->size)
        return rt_fail(err, "parallel.dp * parallel.sp = %d * %d = %d, but the job has %d ranks", cfg->dp, cfg->sp,
                       cfg->dp * cfg->sp, st->world->size);
    st->dp_rank = st->world->rank / cfg->sp;
    st->sp_rank = st->world->rank % cfg->sp;
    st->sp_comm = st->world->ops->split(st->world, st->dp_rank, st->sp_rank);
    if (seqpar_zigzag_spans(st->sp_rank, cfg->sp, (size_t)cfg->seq_len, st->spans, err)) return -1;
    st->local_len = st->spans[0].len + st->spans[1].len;
    st->local_seqs = (size_t)cfg->batch_size / (size_t)cfg->dp;
    return 0;
}

static int setup_data(run_state *st, int vocab_size, rt_error *err) {
    const rt_config *cfg = st->cfg;
    rt_error inner;
    if (rt_tokens_open(&st->train_tokens, cfg->data_train, &inner) || rt_tokens_validate(&st->train_tokens, &inner))
        return rt_fail(err, "data.train: %s", inner.msg);
    if (st->train_tokens.vocab_size > vocab_size)
        return rt_fail(err, "%s: token vocabulary of %d does not fit model.vocab_size = %d", cfg->data_train,
                       st->train_tokens.vocab_size, vocab_size);
    size_t T = (size_t)cfg->seq_len, windows = rt_loader_count_windows(&st->train_tokens, T);
    size_t train_windows = windows, val_first = 0, val_windows = 0;
    const rt_token_file *val_source = &st->train_tokens;
    if (cfg->data_val[0]) {
        if (rt_tokens_open(&st->val_tokens, cfg->data_val, &inner)) return rt_fail(err, "data.val: %s", inner.msg);
        st->has_val_file = 1;
        if (rt_tokens_validate(&st->val_tokens, &inner)) return rt_fail(err, "data.val: %s", inner.msg);
        if (st->val_tokens.vocab_size > vocab_size)
            return rt_fail(err, "%s: token vocabulary of %d does not fit model.vocab_size = %d", cfg->data_val,
                           st->val_tokens.vocab_size, vocab_size);
        val_source = &st->val_tokens;
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
    if (rt_loader_init(&st->train_loader, &st->train_tokens, T, 0, train_windows, (size_t)cfg->batch_size, 1, cfg->seed,
                       err))
        return -1;
    st->has_val = cfg->val_every > 0 && val_windows > 0;
    if (st->has_val && rt_loader_init(&st->val_loader, val_source, T, val_first, val_windows, (size_t)cfg->batch_size,
                                      0, cfg->seed, err))
        return -1;
    size_t per_micro = st->local_seqs * st->local_len;
    st->micro = calloc_check((size_t)cfg->grad_accum, sizeof *st->micro);
    for (int i = 0; i < cfg->grad_accum; i++) {
        st->micro[i].inputs = malloc_check(per_micro * sizeof(int32_t));
        st->micro[i].targets = malloc_check(per_micro * sizeof(int32_t));
        st->micro[i].pos = malloc_check(per_micro * sizeof(int64_t));
    }
    return 0;
}

/* Tokens are checked against the file's own vocabulary, which setup_data checked fits the model's. */
static int load_micro(run_state *st, rt_loader *loader, host_batch *hb, rt_error *err) {
    return rt_loader_next(loader, (size_t)st->dp_rank * st->local_seqs, st->local_seqs, st->spans, 2,
                          loader->tokens->vocab_size, hb->inputs, hb->targets, hb->pos, err);
}

static rt_batch as_batch(const run_state *st, const host_batch *hb, size_t first_seq) {
    return (rt_batch){.inputs = hb->inputs,
                      .targets = hb->targets,
                      .pos = hb->pos,
                      .n_seqs = st->local_seqs,
                      .local_len = st->local_len,
                      .first_seq = first_seq};
}

/* Mean validation loss over val_steps global batches, from the start of the validation split. */
static int validate(run_state *st, double *val_loss, rt_error *err) {
    rt_loader_rewind(&st->val_loader);
    double sums[2] = {0.0, 0.0}; /* loss sum, target count */
    for (int i = 0; i < st->cfg->val_steps; i++) {
        if (load_micro(st, &st->val_loader, &st->micro[0], err)) return -1;
        rt_batch batch = as_batch(st, &st->micro[0], 0);
        size_t count = 0;
        sums[0] += rt_model_forward_loss(&st->model, &batch, &count);
        sums[1] += (double)count;
    }
    rt_allreduce_sum_f64(st->world, sums, 2);
    *val_loss = sums[0] / sums[1];
    return 0;
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

static int train_loop(run_state *st, rt_train_result *result, rt_error *err) {
    const rt_config *cfg = st->cfg;
    rt_model *m = &st->model;
    const int is_root = st->world->rank == 0;
    const double tokens_per_step = (double)cfg->batch_size * cfg->seq_len * cfg->grad_accum;
    double run_start = rt_now_s();
    result->last_val_loss = NAN;
    for (int step = 0; step < cfg->steps; step++) {
        double t0 = rt_now_s();
        rt_device_memory_reset_peak(&st->mem);
        st->seqpar.comm_exposed_s = 0.0;
        /* Load the whole step first: the loss scale needs the step's target count over all ranks. */
        double local_targets = 0.0;
        for (int mb = 0; mb < cfg->grad_accum; mb++) {
            if (load_micro(st, &st->train_loader, &st->micro[mb], err)) return -1;
            for (size_t i = 0; i < st->local_seqs * st->local_len; i++)
                local_targets += st->micro[mb].targets[i] >= 0;
        }
        double step_targets = local_targets;
        rt_allreduce_sum_f64(st->world, &step_targets, 1);
        rt_model_zero_grads(m);
        rt_dropout_plan dropout = {.p = cfg->dropout, .seed = cfg->seed, .step = (uint64_t)step};
        double loss_sum = 0.0;
        for (int mb = 0; mb < cfg->grad_accum; mb++) {
            size_t first_seq = (size_t)mb * cfg->batch_size + (size_t)st->dp_rank * st->local_seqs, count = 0;
            rt_batch batch = as_batch(st, &st->micro[mb], first_seq);
            loss_sum += rt_model_forward_backward(m, &batch, &dropout, (float)(1.0 / step_targets), &count);
        }
        rt_allreduce_sum_f64(st->world, &loss_sum, 1);
        double loss = loss_sum / step_targets;
        float lr = rt_lr_schedule(step, cfg->steps, cfg->warmup_steps, cfg->lr, cfg->min_lr);
        double grad_norm = rt_optimizer_step(&st->opt, m->params, m->grads, lr, cfg->grad_clip);
        if (!isfinite(loss) || !isfinite(grad_norm))
            return rt_fail(err, "step %d: the loss (%g) or gradient norm (%g) is not finite; lower train.lr (%g)", step,
                           loss, grad_norm, cfg->lr);
        double step_s = rt_now_s() - t0;
        double val_loss = NAN;
        if (st->has_val && ((step + 1) % cfg->val_every == 0 || step + 1 == cfg->steps)) {
            if (validate(st, &val_loss, err)) return -1;
            result->last_val_loss = val_loss;
        }
        if (step == 0) result->first_loss = loss;
        result->last_loss = loss;
        result->steps_done = step + 1;
        if (is_root) {
            fprintf(st->metrics,
                    "{\"step\": %d, \"loss\": %.9g, \"grad_norm\": %.9g, \"lr\": %.9g, \"tokens_per_s\": %.1f, "
                    "\"step_s\": %.6f, \"peak_device_bytes\": %zu, \"offloaded_bytes\": 0, \"comm_exposed_s\": %.6f, "
                    "\"optimizer_bytes\": %zu",
                    step, loss, grad_norm, lr, tokens_per_step / step_s, step_s, st->mem.peak,
                    st->seqpar.comm_exposed_s, st->opt.state_bytes);
            if (!isnan(val_loss)) fprintf(st->metrics, ", \"val_loss\": %.9g", val_loss);
            fputs("}\n", st->metrics);
            fflush(st->metrics);
            if ((step + 1) % cfg->log_every == 0 || step == 0 || step + 1 == cfg->steps) {
                char peak[32], eta[32], val[48] = "";
                double elapsed = rt_now_s() - run_start;
                format_duration(elapsed / (step + 1) * (cfg->steps - step - 1), eta);
                if (!isnan(val_loss)) snprintf(val, sizeof val, " | val %.4f", val_loss);
                printf(
                    "step %*d/%d | loss %.4f%s | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms/step | peak %s | ETA %s\n",
                    (int)snprintf(NULL, 0, "%d", cfg->steps), step + 1, cfg->steps, loss, val, lr, grad_norm,
                    tokens_per_step / step_s, 1e3 * step_s, rt_format_bytes(st->mem.peak, peak), eta);
                fflush(stdout);
            }
        }
        /* Every rank must agree to stop, or the next collective would hang. */
        double stop = stop_requested;
        st->world->ops->allreduce_max_f64(st->world, &stop, 1);
        if (stop > 0.0 && step + 1 < cfg->steps) {
            result->stopped_by_signal = 1;
            if (is_root) printf("stop signal: ending after step %d of %d\n", step + 1, cfg->steps);
            break;
        }
    }
    return 0;
}

static void run_free(run_state *st) {
    if (st->micro) {
        for (int i = 0; i < st->cfg->grad_accum; i++) {
            free(st->micro[i].inputs);
            free(st->micro[i].targets);
            free(st->micro[i].pos);
        }
        free(st->micro);
    }
    if (st->metrics) fclose(st->metrics);
    rt_loader_free(&st->train_loader);
    if (st->has_val) rt_loader_free(&st->val_loader);
    if (st->train_tokens.map) rt_tokens_close(&st->train_tokens);
    if (st->has_val_file) rt_tokens_close(&st->val_tokens);
    rt_model_free(&st->model);
    rt_device_memory_destroy(&st->mem);
    if (st->sp_comm) st->sp_comm->ops->destroy(st->sp_comm);
    free(st->config_text);
}

int rt_train(const rt_config *cfg_in, rt_comm *world, rt_train_result *result, rt_error *err) {
    rt_config cfg = *cfg_in;
    run_state st;
    memset(&st, 0, sizeof st);
    memset(result, 0, sizeof *result);
    st.cfg = &cfg;
    st.world = world;
    int rc = -1;
    if (cfg.init_from[0] && rt_config_from_llmc(&cfg, cfg.init_from, err)) goto done;
    if (rt_config_validate(&cfg, err)) goto done;
    if (setup_mesh(&st, err)) goto done;
    st.backend = rt_backend_cpu();
    rt_device_memory_init(&st.mem, st.backend, cfg.memory_limit);
    st.seqpar = (seqpar_ctx){.backend = st.backend, .mem = &st.mem, .comm = st.sp_comm, .block_size = 0};
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    if (setup_data(&st, shape.vocab_size, err)) goto done;
    if (rt_model_init(&st.model, &shape, st.backend, &st.mem, &st.seqpar, cfg.activation_mode, st.local_seqs,
                      st.local_len, err))
        goto done;
    if (cfg.init_from[0]) {
        if (rt_model_load_llmc(&st.model, cfg.init_from, err)) goto done;
    } else {
        rt_model_init_params(&st.model, cfg.seed);
    }
    if (rt_optimizer_init(&st.opt, st.backend, &st.mem, world, cfg.zero_stage, &st.model.table, cfg.adam_beta1,
                          cfg.adam_beta2, cfg.adam_eps, cfg.weight_decay, err))
        goto done;
    st.config_text = config_as_text(&cfg);

    /* Every input is valid: now, and only now, files appear. */
    char path[RT_PATH_LEN + 32];
    if (world->rank == 0) {
        if (make_dirs(cfg.run_dir, err)) goto done;
        snprintf(path, sizeof path, "%s/config.ini", cfg.run_dir);
        FILE *out = fopen(path, "w");
        if (!out || fputs(st.config_text, out) < 0 || fclose(out) != 0) {
            rt_fail(err, "cannot write %s: %s", path, strerror(errno));
            goto done;
        }
        snprintf(path, sizeof path, "%s/metrics.jsonl", cfg.run_dir);
        st.metrics = fopen(path, "w");
        if (!st.metrics) {
            rt_fail(err, "cannot write %s: %s", path, strerror(errno));
            goto done;
        }
        char params[32], peak[32];
        printf("ringtrain: %s model, %zu parameters (%s), %d ranks (dp %d x sp %d), %zu tokens/step, "
               "%s device memory after setup\n",
               rt_family_name(cfg.family), st.model.table.total,
               rt_format_bytes(st.model.table.total * sizeof(float), params), world->size, cfg.dp, cfg.sp,
               (size_t)cfg.batch_size * cfg.seq_len * cfg.grad_accum, rt_format_bytes(st.mem.in_use, peak));
        fflush(stdout);
    }
    stop_requested = 0;
    signal(SIGINT, on_stop_signal);
    signal(SIGTERM, on_stop_signal);
    rc = train_loop(&st, result, err);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    if (rc == 0 && world->rank == 0) {
        snprintf(path, sizeof path, "%s/model.h5", cfg.run_dir);
        rc = rt_model_save(&st.model, path, st.config_text, result->steps_done, err);
        if (rc == 0) printf("saved %s (step %d)\n", path, result->steps_done);
    }
done:
    run_free(&st);
    return rc;
}
