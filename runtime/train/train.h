/* train.h: the trainer: one training step at a time, and its checkpoints. */
#ifndef RT_TRAIN_H
#define RT_TRAIN_H

#include <signal.h>
#include <stddef.h>

#include "runtime/comm/comm.h"
#include "runtime/config/config.h"
#include "runtime/core/common.h"
#include "runtime/model/model.h"

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
    /* Packed documents (data.document_separator), else documents_on = 0: documents in the step's windows (a
     * window's continuation of an earlier document counts as one), their mean length in tokens, the share of
     * causal (query, key) pairs the document masks remove, and the attention work (visible pairs) of the
     * busiest rank over the mean of all ranks. */
    int documents_on;
    double documents, mean_document_len, attn_masked_share, attn_work_imbalance;
} rt_step_metrics;

/* Failures of the trainer and of a run: every rank failed alike and returns (the message is on exactly one
 * rank, empty on the others); or this rank failed alone, mid-run, and the caller must end the whole job
 * (the others may be waiting in a collective). */
#define RT_TRAIN_FAILED_EVERYWHERE (-1)
#define RT_TRAIN_FAILED_HERE (-2)
/* rt_trainer_step only: a stop was requested (rt_trainer_stop_on) and the ranks abandoned the step between two
 * layers; the trainer is as it was after the last completed step (weights, optimizer, data position). */
#define RT_TRAIN_INTERRUPTED 1

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
/* From now on every training pass polls *flag after each layer's forward and backward: the ranks agree on
 * it (an all-reduce of the flag; every rank must call this alike) and abandon the step when any rank's flag
 * is set, so a stop takes at most one layer's time, however long the step. NULL stops polling. */
void rt_trainer_stop_on(rt_trainer *t, const volatile sig_atomic_t *flag);
/* One training step (and validation when due); collective. Returns 0, RT_TRAIN_INTERRUPTED or one of the
 * failures above. */
int rt_trainer_step(rt_trainer *t, rt_step_metrics *metrics, rt_error *err);
/* The reduced gradient of the last step as the update used it (after clipping), all parameters, gathered from
 * the shards; collective. */
void rt_trainer_gradients(rt_trainer *t, float *dst);
/* Writes all Ψ parameters into dst (host); collective: at ZeRO stage 3 they are gathered from the shards. */
void rt_trainer_params(rt_trainer *t, float *dst);
/* For tests: from the next step on, each step also writes its reduced gradient BEFORE clipping (all Ψ
 * parameters, gathered from the shards, one extra collective) into dst; NULL stops it. */
void rt_trainer_probe_preclip_gradients(rt_trainer *t, float *dst);
const rt_config *rt_trainer_config(const rt_trainer *t); /* resolved: init_from applied */
/* Steps done (the next step's index) and training tokens seen, counted across resumes. */
int rt_trainer_steps_done(const rt_trainer *t);
int64_t rt_trainer_tokens_seen(const rt_trainer *t);
/* Where the training data stands: the epoch and the next window of its order (global: the same on every rank
 * and for any dp x sp). */
void rt_trainer_data_position(const rt_trainer *t, uint64_t *epoch, size_t *cursor);

/*
 * Checkpoints (runtime/train/train_state.c; layout in docs/architecture.md, "Checkpoint layout"). One
 * HDF5 file holds /model, /optim/master, /optim/m and /optim/v by parameter
 * name with global shapes, the resolved config and the step, token, loader
 * and optimizer counters, so it loads on any rank count, mesh and ZeRO
 * stage. Both are collectives; on failure every rank returns -1 with one
 * message (on rank 0's err, empty elsewhere) naming the file and the dataset.
 */
int rt_trainer_save(rt_trainer *t, const char *path, rt_error *err);

/* What a checkpoint says about itself (its root attributes). */
typedef struct {
    int64_t step, tokens, world_size, dp, sp, zero_stage;
    char *config_text; /* malloc'd; rt_checkpoint_info_free */
} rt_checkpoint_info;
/* Reads only the attributes; collective over world. */
int rt_checkpoint_peek(rt_comm *world, const char *path, rt_checkpoint_info *info, rt_error *err);
void rt_checkpoint_info_free(rt_checkpoint_info *info);

/* Compares a checkpoint's config with this run's, key by key. A changed model shape or family (any [model]
 * key but dropout and init_from) or train.seq_len fails, naming the key and both values; other changes are
 * listed in changes ("parallel.dp 2 -> 1, zero.stage 2 -> 0", "" when none; cut to cap). */
int rt_checkpoint_check_config(const char *path, const char *saved_text, const rt_config *cfg, char *changes,
                               size_t cap, rt_error *err);

/* Continues t from the checkpoint at path: weights, optimizer state and counters, and the data loader's
 * position (the same global sequences come next whatever the new dp and sp). Each rank reads only its own
 * shard's ranges. Checks the config first (rt_checkpoint_check_config; changes as there). */
int rt_trainer_load(rt_trainer *t, const char *path, char *changes, size_t cap, rt_error *err);
rt_model *rt_trainer_model(rt_trainer *t);
/* Device memory in use (after setup: parameters, optimizer state, activations). */
size_t rt_trainer_device_bytes(const rt_trainer *t);
void rt_trainer_free(rt_trainer *t);

#endif
