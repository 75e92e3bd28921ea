/*
 * run.c: a whole training run around the trainer: the run directory and its
 * record, metrics and progress, checkpoint cadence and resume, stop signals.
 *
 * Files appear only once every input is valid, the checkpoint to resume
 * from included. Rank 0 writes the record (config.ini, metrics.jsonl,
 * model.h5) and manages checkpoint.dir (latest, keep); every rank writes
 * its part of each checkpoint. Any failure is agreed by all ranks, so the
 * job prints one line and every rank returns instead of hanging.
 */
#include "run.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <omp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "ckpt_dir.h"
#include "io/model_file.h"
#include "runtime/model/model_io.h"

/* ---- stop signals ---- */

/* Signals received so far (the trainer polls it between layers) and when the first came (CLOCK_MONOTONIC). */
static volatile sig_atomic_t stop_signals, stop_signal_number;
static struct timespec first_signal_at;

static void on_stop_signal(int sig) {
    int n = stop_signals + 1;
    stop_signals = n;
    if (n == 1) {
        stop_signal_number = sig;
        clock_gettime(CLOCK_MONOTONIC, &first_signal_at); /* async-signal-safe (POSIX) */
    }
    if (n >= 3) { /* the third: end now, as if no handler were installed */
        signal(sig, SIG_DFL);
        raise(sig);
    }
}

static const int stop_signal_list[] = {SIGTERM, SIGINT, SIGUSR1};
#define N_STOP_SIGNALS (int)(sizeof stop_signal_list / sizeof stop_signal_list[0])

static void install_stop_handlers(struct sigaction old[N_STOP_SIGNALS]) {
    stop_signals = 0;
    stop_signal_number = 0;
    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    action.sa_flags = SA_RESTART;
    sigemptyset(&action.sa_mask);
    for (int i = 0; i < N_STOP_SIGNALS; i++)
        sigaction(stop_signal_list[i], &action, &old[i]);
}

static void restore_stop_handlers(const struct sigaction old[N_STOP_SIGNALS]) {
    for (int i = 0; i < N_STOP_SIGNALS; i++)
        sigaction(stop_signal_list[i], &old[i], NULL);
}

static double seconds_since_signal(void) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (double)(now.tv_sec - first_signal_at.tv_sec) + 1e-9 * (double)(now.tv_nsec - first_signal_at.tv_nsec);
}

/* ---- the run directory ---- */

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
static int make_dirs(const char *key, const char *path, size_t *created_from, rt_error *err) {
    char partial[RT_PATH_LEN];
    size_t n = strlen(path);
    *created_from = 0;
    if (n == 0 || n >= sizeof partial) return rt_fail(err, "%s '%s' is empty or too long", key, path);
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

static void format_duration(double seconds, char out[32]) {
    long s = (long)(seconds + 0.5);
    if (s >= 3600)
        snprintf(out, 32, "%ldh%02ldm", s / 3600, (s / 60) % 60);
    else if (s >= 60)
        snprintf(out, 32, "%ldm%02lds", s / 60, s % 60);
    else
        snprintf(out, 32, "%lds", s);
}

static void print_progress(const rt_config *cfg, const rt_step_metrics *s, int first_step, double elapsed) {
    char peak[32], eta[32], val[48] = "", comm[48] = "", docs[96] = "";
    format_duration(elapsed / (s->step + 1 - first_step) * (cfg->steps - s->step - 1), eta);
    if (s->validated) snprintf(val, sizeof val, " | val %.4f", s->val_loss);
    if (cfg->sp > 1) snprintf(comm, sizeof comm, " | comm %.1f ms", 1e3 * s->comm_exposed_s);
    if (s->documents_on)
        snprintf(docs, sizeof docs, " | %.0f docs of %.0f, %.0f%% masked, imbalance %.2f", s->documents,
                 s->mean_document_len, 100.0 * s->attn_masked_share, s->attn_work_imbalance);
    printf("step %*d/%d | loss %.4f%s | lr %.2e | norm %.3f | %.0f tok/s | %.1f ms/step%s%s | peak %s | ETA %s\n",
           (int)snprintf(NULL, 0, "%d", cfg->steps), s->step + 1, cfg->steps, s->loss, val, s->lr, s->grad_norm,
           s->tokens_per_s, 1e3 * s->step_s, comm, docs, rt_format_bytes(s->peak_device_bytes, peak), eta);
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
 * Rank 0 claims the run directory: creates it (mkdir -p) and
 * checkpoint.dir. A fresh run refuses a run.dir that holds an earlier run's
 * record, so a re-run never overwrites what a user kept, and creates
 * metrics.jsonl exclusively (two runs started at once cannot share a
 * directory either); a resumed run continues the record (first_step >= 0:
 * metrics.jsonl keeps the lines of earlier steps). config.ini is written
 * whole (tmp, then rename). On failure it removes what it created,
 * directories included.
 */
static int open_run_dir(const rt_config *cfg, const char *config_text, const char *ckpt_dir, int first_step,
                        rt_metrics_file *metrics, rt_error *err) {
    size_t created_from = 0, ckpt_created_from = 0;
    if (make_dirs("run.dir", cfg->run_dir, &created_from, err)) return -1;
    char path[RT_PATH_LEN + 32];
    int rc = 0;
    for (size_t i = 0; first_step < 0 && rc == 0 && i < sizeof record_files / sizeof record_files[0]; i++) {
        struct stat st;
        snprintf(path, sizeof path, "%s/%s", cfg->run_dir, record_files[i]);
        if (lstat(path, &st) == 0)
            rc = refuse_used_run_dir(cfg->run_dir, record_files[i], err);
        else if (errno != ENOENT)
            rc = rt_fail(err, "cannot check %s: %s", path, strerror(errno));
    }
    snprintf(path, sizeof path, "%s/metrics.jsonl", cfg->run_dir);
    if (rc == 0 && first_step < 0) {
        rc = rt_metrics_create(metrics, path, err);
        if (rc == 1) rc = refuse_used_run_dir(cfg->run_dir, "metrics.jsonl", err);
    } else if (rc == 0) {
        rc = rt_metrics_reopen(metrics, path, first_step, err);
    }
    if (rc == 0) rc = make_dirs("checkpoint.dir", ckpt_dir, &ckpt_created_from, err);
    if (rc == 0) {
        snprintf(path, sizeof path, "%s/config.ini", cfg->run_dir);
        rc = rt_write_file_atomic(path, config_text, strlen(config_text), err);
        if (rc) undo_make_dirs(ckpt_dir, ckpt_created_from);
    }
    if (rc != 0 && metrics->fd >= 0) {
        close(metrics->fd);
        metrics->fd = -1;
        if (first_step < 0) unlink(metrics->path);
    }
    if (rc != 0) undo_make_dirs(cfg->run_dir, created_from);
    return rc;
}

/* ---- checkpoints ---- */

typedef struct {
    const rt_config *cfg;
    rt_comm *world;
    rt_trainer *trainer;
    char ckpt_dir[RT_PATH_LEN + 32];
    int saved_step; /* the step of the last checkpoint this run wrote or resumed from; -1: none */
} run_state;

/* All ranks write step_N.h5 of the steps done; then rank 0 makes it `latest` and prunes. Collective. */
static int save_checkpoint(run_state *r, rt_error *err) {
    const int step = rt_trainer_steps_done(r->trainer);
    char path[RT_PATH_LEN + 64];
    rt_ckpt_dir_step_path(r->ckpt_dir, step, path, sizeof path);
    double t0 = rt_now_s();
    if (rt_trainer_save(r->trainer, path, err)) return -1;
    int rc = 0;
    if (r->world->rank == 0) {
        rc = rt_ckpt_dir_commit(r->ckpt_dir, strrchr(path, '/') + 1, r->cfg->checkpoint_keep, err);
        if (rc == 0) {
            struct stat st;
            char size[32] = "?";
            if (stat(path, &st) == 0) rt_format_bytes((size_t)st.st_size, size);
            printf("checkpoint %s (step %d, %s, %.1f s)\n", path, step, size, rt_now_s() - t0);
            fflush(stdout);
        }
    }
    if (rt_comm_agree(r->world, rc, err)) return -1;
    r->saved_step = step;
    return 0;
}

/* The checkpoint named by checkpoint.resume, into path ("" = start fresh); the same on every rank. */
static int resolve_resume(run_state *r, char *path, size_t cap, rt_error *err) {
    const rt_config *cfg = r->cfg;
    path[0] = '\0';
    if (strcmp(cfg->checkpoint_resume, "none") == 0) return 0;
    if (strcmp(cfg->checkpoint_resume, "auto") != 0) {
        snprintf(path, cap, "%s", cfg->checkpoint_resume);
        return 0;
    }
    int found = 0;
    if (r->world->rank == 0) found = rt_ckpt_dir_newest(r->ckpt_dir, path, cap, err);
    if (rt_comm_agree(r->world, found < 0, err)) return -1;
    rt_comm_broadcast(r->world, path, cap, 0);
    if (r->world->rank == 0 && !path[0]) {
        printf("checkpoint.resume = auto: no checkpoint in %s; starting from step 0\n", r->ckpt_dir);
        fflush(stdout);
    }
    return 0;
}

static void print_start(const rt_config *cfg, rt_trainer *t, rt_comm *world) {
    char params[32], in_use[32];
    const int threads = omp_get_max_threads(); /* this rank's; see runtime/comm/threads.h */
    rt_model *m = rt_trainer_model(t);
    printf("ringtrain: %s model, %zu parameters (%s), %d rank%s (dp %d x sp %d) of %d thread%s each, zero "
           "stage %d, %zu tokens/step, %s device memory after setup\n",
           rt_family_name(cfg->family), m->table.total, rt_format_bytes(m->table.total * sizeof(float), params),
           world->size, world->size == 1 ? "" : "s", cfg->dp, cfg->sp, threads, threads == 1 ? "" : "s",
           cfg->zero_stage, (size_t)cfg->batch_size * cfg->seq_len * cfg->grad_accum,
           rt_format_bytes(rt_trainer_device_bytes(t), in_use));
    fflush(stdout);
}

/* Loads the checkpoint at path into the trainer and says so first thing: what it holds and what changed. */
static int resume_from(run_state *r, const char *path, rt_error *err) {
    rt_checkpoint_info info;
    if (rt_checkpoint_peek(r->world, path, &info, err)) return -1;
    rt_checkpoint_info_free(&info);
    char changes[2048];
    if (rt_trainer_load(r->trainer, path, changes, sizeof changes, err)) return -1;
    if (r->world->rank == 0) {
        printf("resuming from %s: step %" PRId64 ", %" PRId64 " tokens, saved on %" PRId64 " rank%s (dp %" PRId64
               " x sp %" PRId64 ", zero stage %" PRId64 "); %s%s\n",
               path, info.step, info.tokens, info.world_size, info.world_size == 1 ? "" : "s", info.dp, info.sp,
               info.zero_stage, changes[0] ? "changed: " : "nothing changed", changes);
        fflush(stdout);
    }
    r->saved_step = (int)info.step;
    return 0;
}

int rt_train(const rt_config *cfg_in, rt_comm *world, rt_train_result *result, rt_error *err) {
    memset(result, 0, sizeof *result);
    result->first_loss = result->last_loss = result->last_val_loss = NAN;
    rt_trainer *t = NULL;
    rt_metrics_file metrics = {.fd = -1};
    char *config_text = NULL;
    int rc = -1;
    const int is_root = world->rank == 0;
    run_state r = {.world = world, .saved_step = -1};
    struct sigaction old_handlers[N_STOP_SIGNALS];
    if (rt_trainer_init(&t, cfg_in, world, err)) goto done; /* every rank fails alike: rc -1 */
    const rt_config *cfg = r.cfg = rt_trainer_config(t);
    r.trainer = t;
    if (cfg->checkpoint_dir[0])
        snprintf(r.ckpt_dir, sizeof r.ckpt_dir, "%s", cfg->checkpoint_dir);
    else
        snprintf(r.ckpt_dir, sizeof r.ckpt_dir, "%s/checkpoints", cfg->run_dir);
    char resume_path[RT_PATH_LEN + 64];
    if (resolve_resume(&r, resume_path, sizeof resume_path, err)) goto done;
    if (resume_path[0] && resume_from(&r, resume_path, err)) goto done;
    const int first_step = rt_trainer_steps_done(t);
    result->first_step = result->steps_done = first_step;
    config_text = rt_config_to_text(cfg);
    /* Every input is valid: now, and only now, files appear (rank 0 writes them; all ranks learn if it can). */
    if (rt_comm_agree(
            world,
            is_root ? open_run_dir(cfg, config_text, r.ckpt_dir, resume_path[0] ? first_step : -1, &metrics, err) : 0,
            err))
        goto done;
    rc = RT_TRAIN_FAILED_HERE;
    if (is_root) print_start(cfg, t, world);
    install_stop_handlers(old_handlers);
    rt_trainer_stop_on(t, &stop_signals);
    double run_start = rt_now_s();
    int stopped = 0;
    while (rt_trainer_steps_done(t) < cfg->steps) {
        rt_step_metrics s;
        int step_rc = rt_trainer_step(t, &s, err);
        if (step_rc == RT_TRAIN_INTERRUPTED) {
            stopped = 1;
            break;
        }
        if (step_rc) {
            rc = step_rc;
            goto restore_signals;
        }
        if (isnan(result->first_loss)) result->first_loss = s.loss;
        result->last_loss = s.loss;
        result->steps_done = s.step + 1;
        if (s.validated) result->last_val_loss = s.val_loss;
        int metrics_failed = 0;
        if (is_root) {
            metrics_failed = rt_metrics_append(&metrics, &s, err) != 0;
            if ((s.step + 1) % cfg->log_every == 0 || s.step == first_step || s.step + 1 == cfg->steps)
                print_progress(cfg, &s, first_step, rt_now_s() - run_start);
        }
        /* Every rank must agree to stop, or the next collective would hang: 1 for a signal, 2 when rank 0
         * could not write metrics.jsonl (its message is the job's one line; every rank returns). */
        double stop = metrics_failed ? 2.0 : stop_signals > 0;
        rt_allreduce_max_f64(world, &stop, 1);
        if (stop >= 2.0) {
            if (is_root) {
                size_t used = strlen(err->msg);
                snprintf(err->msg + used, sizeof err->msg - used, "; the run stopped after step %d of %d", s.step + 1,
                         cfg->steps);
            } else {
                err->msg[0] = '\0';
            }
            rc = RT_TRAIN_FAILED_EVERYWHERE;
            goto restore_signals;
        }
        if (stop > 0.0 && s.step + 1 < cfg->steps) { /* after the last step a stop changes nothing */
            stopped = 1;
            break;
        }
        const int done = rt_trainer_steps_done(t);
        if (cfg->checkpoint_every > 0 && done % cfg->checkpoint_every == 0 && done < cfg->steps &&
            save_checkpoint(&r, err)) {
            rc = RT_TRAIN_FAILED_EVERYWHERE;
            goto restore_signals;
        }
    }
    const int done = rt_trainer_steps_done(t);
    if (stopped) {
        if (is_root) {
            const int sig = stop_signal_number;
            printf("stop signal (%s): saving a checkpoint of step %d of %d\n",
                   sig == SIGTERM   ? "SIGTERM"
                   : sig == SIGINT  ? "SIGINT"
                   : sig == SIGUSR1 ? "SIGUSR1"
                                    : "on another rank",
                   done, cfg->steps);
            fflush(stdout);
        }
        if (r.saved_step != done && save_checkpoint(&r, err)) {
            rc = RT_TRAIN_FAILED_EVERYWHERE;
            goto restore_signals;
        }
        if (is_root) {
            printf("stopped: resume with --resume (checkpoint of step %d complete %.1f s after the signal%s)\n", done,
                   seconds_since_signal(),
                   stop_signals > 1 ? "; the signals that came during the save were ignored" : "");
            fflush(stdout);
        }
        result->stopped_by_signal = 1;
        rc = rt_comm_agree(world, is_root ? rt_metrics_close(&metrics, err) : 0, err) ? RT_TRAIN_FAILED_EVERYWHERE : 0;
        goto restore_signals;
    }
    if (done == first_step) {
        if (is_root) printf("nothing to train: the run is at step %d of train.steps = %d\n", done, cfg->steps);
        rc = rt_comm_agree(world, is_root ? rt_metrics_close(&metrics, err) : 0, err) ? RT_TRAIN_FAILED_EVERYWHERE : 0;
        goto restore_signals;
    }
    /* The end: a final checkpoint (a later run can go on with more train.steps), then rank 0 finishes
     * metrics.jsonl and saves model.h5 (weights only); every rank learns whether it could. */
    if (r.saved_step != done && save_checkpoint(&r, err)) {
        rc = RT_TRAIN_FAILED_EVERYWHERE;
        goto restore_signals;
    }
    int saved = 0;
    /* Every rank takes part in gathering the weights (ZeRO-3 holds them in shards). */
    const rt_view_table *table = &rt_trainer_model(t)->table;
    float *weights = malloc_check(table->total * sizeof(float));
    rt_trainer_params(t, weights);
    if (is_root) {
        char path[RT_PATH_LEN + 32];
        snprintf(path, sizeof path, "%s/model.h5", cfg->run_dir);
        saved = rt_metrics_close(&metrics, err);
        if (saved == 0) saved = rt_model_file_write(path, table, weights, config_text, done, err);
        if (saved == 0) printf("saved %s (step %d)\n", path, done);
    }
    free(weights);
    rc = rt_comm_agree(world, saved, err) ? RT_TRAIN_FAILED_EVERYWHERE : 0;
restore_signals:
    rt_trainer_stop_on(t, NULL);
    restore_stop_handlers(old_handlers);
done:
    rt_metrics_close(&metrics, NULL); /* a run that failed keeps the lines it wrote */
    free(config_text);
    rt_trainer_free(t);
    return rc;
}
