/* optimizer.h: AdamW over the flat parameter buffer, with the ZeRO sharding of its state. */
#ifndef RT_OPTIMIZER_H
#define RT_OPTIMIZER_H

#include <stddef.h>

#include "../runtime/backend.h"
#include "../runtime/comm.h"
#include "../runtime/common.h"
#include "../runtime/memory.h"
#include "../runtime/tensor.h"

/*
 * The optimizer owns the Adam moments of one contiguous range
 * [shard_begin, shard_end) of the flat parameter buffer. At ZeRO stage 0
 * the range is the whole buffer on every rank and gradients are summed by
 * an all-reduce over the world; the sharded stages (1: states, 2: states and
 * gradients) narrow the range to this rank's 1/N and swap the all-reduce
 * for reduce-scatter + all-gather, leaving the update code as it is.
 * Weight decay follows the view table: matrices decay, norms and biases do not.
 */
typedef struct {
    const rt_backend *backend;
    rt_comm *world;
    const rt_view_table *table;
    int stage;
    size_t n_params;
    size_t shard_begin, shard_end;
    float *m, *v; /* (shard_end - shard_begin) device */
    float beta1, beta2, eps, weight_decay;
    int t; /* updates done so far */
    size_t state_bytes;
} rt_optimizer;

int rt_optimizer_init(rt_optimizer *opt, const rt_backend *backend, rt_device_memory *mem, rt_comm *world,
                      int zero_stage, const rt_view_table *table, float beta1, float beta2, float eps,
                      float weight_decay, rt_error *err);

/*
 * One update: sums gradients over the world, computes the global gradient
 * norm (returned, before clipping), scales gradients by
 * min(1, grad_clip / norm) when grad_clip > 0, and applies AdamW with lr.
 * A non-finite norm skips nothing silently: it is returned for the caller to stop on.
 */
double rt_optimizer_step(rt_optimizer *opt, float *params, float *grads, float lr, float grad_clip);

/* Learning rate of step (0-based): linear warmup to lr over warmup steps, then cosine decay to min_lr at the
 * last step. */
float rt_lr_schedule(int step, int total_steps, int warmup_steps, float lr, float min_lr);

#endif
