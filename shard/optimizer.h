/* optimizer.h: AdamW over the flat parameter buffer, with ZeRO sharding of its state (stages 0-3). */
#ifndef RT_OPTIMIZER_H
#define RT_OPTIMIZER_H

#include <stddef.h>

#include "dtensor.h"
#include "mesh.h"
#include "runtime/backend/backend.h"
#include "runtime/backend/memory.h"
#include "runtime/comm/comm.h"
#include "runtime/core/common.h"
#include "runtime/core/tensor.h"

/*
 * The flat buffer of Ψ parameters is padded to a multiple of the world
 * size N ("padded" floats; the model allocates its parameter buffer that
 * long, the padding stays zero). In the placement vocabulary of dtensor.h
 * the optimizer state is that buffer placed [Shard(0), Shard(0)] over the
 * dp x sp mesh: rank r = dp_rank*sp + sp_rank owns the shard [r*S, (r+1)*S)
 * with S = padded / N (the checkpoint writer takes the same boxes), and keeps
 * for it fp32 master weights and the two Adam moments: 12*S bytes, i.e.
 * 12Ψ/N plus padding. Stage 0 keeps the whole state on every rank and
 * updates the fp32 parameters in place (on a backend that computes in fp32
 * they are the master weights): the two moments, 8Ψ bytes.
 *
 * One step:
 *   stage 0: all-reduce the full gradient buffer, update everything.
 *   stage 1: reduce-scatter the full gradient buffer, in place: this rank's summed shard lands at its start.
 *   stage 2: the model hands each layer's gradients over as soon as that
 *            layer's backward is done (rt_optimizer_reduce_range), so the
 *            reduction overlaps the rest of the backward and the model needs
 *            no full gradient buffer; the shard accumulates over micro-batches.
 *   stage 3: as stage 2, and the parameters are sharded too: the master
 *            shard is the only copy of this rank's parameters; the model
 *            gathers each layer's (and the embeddings' and head's) just
 *            before it uses them (rt_optimizer_gather_params) and no full
 *            parameter buffer exists. Parameters, gradient shard and
 *            optimizer state: 16 * S bytes.
 * then: the global gradient norm from one all-reduce of the shards' sums of
 * squares, clipping, AdamW on the master shard (weight decay per named view:
 * matrices decay, norms and biases do not), and the parameters are
 * all-gathered from the updated master shards (stage 0: updated in place;
 * stage 3: gathered by the model when next used).
 */
/* A nonblocking collective of the optimizer in flight: a reduction's part (count floats at scratch_at of the
 * reduce scratch, to add at shard_at of the accumulator), or a gather's piece. */
typedef struct {
    rt_comm_request req;
    size_t shard_at, scratch_at, count;
} rt_in_flight;

/* Pieces in flight at most (each of at most 1M floats): a layer of a 10B model; beyond, posting waits first. */
#define RT_OPT_MAX_IN_FLIGHT 128

typedef struct {
    const rt_backend *backend;
    rt_comm *world; /* host plane: the norm's sum */
    /* Device plane over the same ranks (comm_device.h): the gradient reductions and the parameter gathers.
     * rt_optimizer_init sets it to world (right on CPU); a trainer on a GPU sets its own plane after init. */
    rt_comm *dev;
    rt_dtensor state; /* the padded flat buffer's placement: Shard(0) on every mesh dimension, or Replicate */
    const rt_view_table *table;
    int stage;
    size_t n_params;       /* Ψ */
    size_t padded;         /* Ψ rounded up to a multiple of the world size */
    size_t shard_size;     /* S */
    size_t shard_begin;    /* r * S (0 at stage 0) */
    float *master, *m, *v; /* (S) */
    float *shard_grad;     /* (S) stages 2-3: this rank's summed gradient (stage 1 keeps it in place, at the
                            * start of the model's gradient buffer) */
    float *reduce_scratch; /* stages 2-3: the reductions in flight, this rank's parts, before they are added */
    size_t scratch_size;   /* floats of reduce_scratch: a layer's worth of this rank's parts, at most S */
    size_t scratch_used;
    rt_in_flight reducing[RT_OPT_MAX_IN_FLIGHT], gathering[RT_OPT_MAX_IN_FLIGHT];
    int n_reducing, n_gathering;
    size_t *piece_counts;  /* (world size) host scratch: each rank's part of the piece being posted */
    double comm_exposed_s; /* time in this optimizer's blocking collectives and waits, until the caller resets it */
    float beta1, beta2, eps, weight_decay;
    int t;              /* updates done so far */
    size_t state_bytes; /* stage >= 1: master + moments, 12 * S; stage 0: the moments, 8 * padded */
} rt_optimizer;

/* Host state (device buffers go back with the arena); a zeroed optimizer or one whose init failed is fine. */
void rt_optimizer_free(rt_optimizer *opt);

/* Ψ rounded up to a multiple of n_ranks: the length to allocate parameter and gradient buffers with. */
size_t rt_optimizer_padded_size(size_t n_params, int n_ranks);

/* params holds the initial weights (padded length); the master shard is copied from it (stage 0 updates params
 * in place and keeps only the moments). At stage 3 params may be a host buffer: only the shard is kept. */
int rt_optimizer_init(rt_optimizer *opt, const rt_backend *backend, rt_device_memory *mem, const rt_mesh *mesh,
                      int zero_stage, const rt_view_table *table, float *params, float beta1, float beta2, float eps,
                      float weight_decay, rt_error *err);

/* Before a step's first micro-batch: clears the shard's gradient accumulator (stages 1, 2). */
void rt_optimizer_begin_step(rt_optimizer *opt);

/* Stages 2-3: reduce grads of the flat range [offset, offset+count) over the world and add each rank's part
 * of it into its shard accumulator. Every rank calls it with the same range, in the same order. Nonblocking:
 * it first completes the previous call's reductions, then posts this range's, which stay in flight (grads
 * must stay untouched) until the next call, rt_optimizer_finish_reductions or rt_optimizer_reduce_grads;
 * so one layer's reduction overlaps the backward of the next. */
void rt_optimizer_reduce_range(rt_optimizer *opt, const float *grads, size_t offset, size_t count);
/* Completes every reduction in flight (adds it into the shard). */
void rt_optimizer_finish_reductions(rt_optimizer *opt);
/* Lets the communication library advance what is in flight (reductions and gathers); cheap, call it between
 * pieces of compute. */
void rt_optimizer_progress(rt_optimizer *opt);

/* After the last micro-batch: sums the full gradient buffer (padded length) over the world (stage 0:
 * in place; stage 1: into the shard). Stages 2-3: completes the reductions in flight. */
void rt_optimizer_reduce_grads(rt_optimizer *opt, float *grads);

/* Writes the reduced gradient of all Ψ parameters into dst, gathering shards; collective. After
 * rt_optimizer_update it is the clipped gradient the update used. grads is the model's full buffer (stages
 * 0, 1). For tests and diagnostics. */
void rt_optimizer_gather_grads(rt_optimizer *opt, const float *grads, float *dst);

/*
 * Clips by the global norm (grad_clip > 0) and applies AdamW with lr, then
 * refreshes params (padded length) on every rank. Returns the gradient norm
 * before clipping; a non-finite norm skips the update and is returned for
 * the caller to stop on. grads is the model's full buffer (stage 0 only).
 */
double rt_optimizer_update(rt_optimizer *opt, float *params, float *grads, float lr, float grad_clip);

/* Refreshes params (padded length) on every rank from the master shards (stage 0: params are the master;
 * stage 3: no-op, there is no full buffer); collective. After a checkpoint load wrote the shards. */
void rt_optimizer_publish_params(rt_optimizer *opt, float *params);

/* Stage 3: dst (count floats, device) = the parameters [offset, offset+count) from the master shards.
 * Collective over the device plane; every rank calls with the same range, in the same order. Nonblocking: dst
 * is complete after rt_optimizer_wait_gathers. */
void rt_optimizer_gather_params(rt_optimizer *opt, float *dst, size_t offset, size_t count);
void rt_optimizer_wait_gathers(rt_optimizer *opt);

/* Learning rate of step (0-based): linear warmup to lr over warmup steps, then cosine decay to min_lr at the
 * last step. */
float rt_lr_schedule(int step, int total_steps, int warmup_steps, float lr, float min_lr);

#endif
