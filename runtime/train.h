/* train.h: the trainer (one training step at a time) and the run behind `ringtrain train`. */
#ifndef RT_TRAIN_H
#define RT_TRAIN_H

#include <stddef.h>

#include "comm.h"
#include "common.h"
#include "config.h"
#include "model.h"

/* What one step reports: the fields of a metrics.jsonl line. */
typedef struct {
    int step;
    double loss;      /* the step's loss, before its update */
    double grad_norm; /* before clipping */
    float lr;
    double step_s, tokens_per_s;
    int validated;   /* validation ran after this step: val_loss holds its result (which may be non-finite) */
    double val_loss; /* NAN when not validated */
    size_t peak_device_bytes, offloaded_bytes, optimizer_bytes;
    size_t offload_host_bytes; /* the offloader's host pool, allocated once */
    double comm_exposed_s, prefetch_wait_s;
} rt_step_metrics;

/* One metrics.jsonl line for s (a JSON object and '\n') into out; returns its length (>= cap: it did not
 * fit). JSON has no inf or nan: a non-finite number is written as null, with "<key>_nonfinite": "nan", "inf"
 * or "-inf" beside it. val_loss is left out when the step was not validated. */
size_t rt_metrics_json_line(const rt_step_metrics *s, char *out, size_t cap);

/* Failures of the trainer and of a run: every rank failed alike and returns (the message is on exactly one
 * rank, empty on the others); or this rank failed alone, mid-run, and the caller must end the whole job
 * (the others may be waiting in a collective). */
#define RT_TRAIN_FAILED_EVERYWHERE (-1)
#define RT_TRAIN_FAILED_HERE (-2)

typedef struct rt_trainer rt_trainer;

/*
 * Builds everything a run needs from cfg on the world communicator (mesh,
 * data, model, optimizer) and checks every input; it writes no file. A
 * collective: every rank calls it, and when one fails all return -1 (the
 * message on the lowest failing rank, empty on the others).
 */
int rt_trainer_init(rt_trainer **out, const rt_config *cfg, rt_comm *world, rt_error *err);
/* The same on a given backend (a test's wrapped CPU table; later a CUDA instance). */
int rt_trainer_init_on(rt_trainer **out, const rt_config *cfg, rt_comm *world, const rt_backend *backend,
                       rt_error *err);
/* One training step (and validation when due); collective. Returns 0 or one of the failures above. */
int rt_trainer_step(rt_trainer *t, rt_step_metrics *metrics, rt_error *err);
/* The reduced gradient of the last step as the update used it (after clipping), all parameters, gathered from
 * the shards; collective. */
void rt_trainer_gradients(rt_trainer *t, float *dst);
/* For tests: from the next step on, each step also writes its reduced gradient BEFORE clipping (all Ψ
 * parameters, gathered from the shards, one extra collective) into dst; NULL stops it. */
void rt_trainer_probe_preclip_gradients(rt_trainer *t, float *dst);
const rt_config *rt_trainer_config(const rt_trainer *t); /* resolved: init_from applied */
rt_model *rt_trainer_model(rt_trainer *t);
void rt_trainer_free(rt_trainer *t);

typedef struct {
    int steps_done;
    double first_loss, last_loss;
    double last_val_loss; /* NAN when validation never ran */
    int stopped_by_signal;
} rt_train_result;

/*
 * A whole run: trainer, then (rank 0) <run.dir>/config.ini (resolved),
 * metrics.jsonl, a progress line per train.log_every steps, and
 * <run.dir>/model.h5 at the end or after the current step on SIGINT/SIGTERM.
 * Every input is checked before the run directory is created. Returns 0 or one of the failures above.
 */
int rt_train(const rt_config *cfg, rt_comm *world, rt_train_result *result, rt_error *err);

#endif
