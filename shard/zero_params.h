/* zero_params.h: ZeRO stage 3's parameter residency: each unit gathered from the shards when the model needs it. */
#ifndef RT_ZERO_PARAMS_H
#define RT_ZERO_PARAMS_H

#include "optimizer.h"
#include "runtime/core/param_hooks.h"
#include "unit_buffers.h"

/*
 * No rank holds all Ψ parameters: the model's views point into the unit
 * buffers (unit_buffers.h), and a pass gathers a unit from the optimizer's
 * shards right before it first uses it, posting the next layer's gather
 * before the current layer computes. A unit stays resident across passes
 * until the parameters change, so the micro-batches of a step reuse the
 * embeddings, the head and the layers at the turn of forward and backward.
 * Every rank runs the same passes and updates, so the gathers (collectives)
 * match.
 */
typedef struct {
    rt_optimizer *opt;
    rt_device_memory *mem;
    rt_unit_buffers units; /* allocated by the hooks' reserve, from the model's init */
    int resident_top;      /* top holds the current parameters */
    int resident_layer[2]; /* the layer each layer buffer holds, -1: none */
    int gather_posted;     /* a gather was posted and not yet waited for (the next layer's, prefetched) */
} rt_zero_params;

/* opt gathers the units; their buffers come from mem when the model reserves them. */
void rt_zero_params_init(rt_zero_params *zp, rt_optimizer *opt, rt_device_memory *mem);
void rt_zero_params_free(rt_zero_params *zp);
/* The hooks a model calls (param_hooks.h), on zp. */
rt_param_hooks rt_zero_params_hooks(rt_zero_params *zp);

#endif
