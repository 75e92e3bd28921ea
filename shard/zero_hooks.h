/* zero_hooks.h: a ZeRO stage as the hooks a model calls: none (0-1), gradient streaming (2-3), residency (3). */
#ifndef RT_ZERO_HOOKS_H
#define RT_ZERO_HOOKS_H

#include "zero_grads.h"
#include "zero_params.h"

/* Stages 0 and 1 leave the model its whole buffers (the optimizer reduces them after the backward); stage 2
 * streams each layer's gradients into the optimizer's shards; stage 3 also keeps the parameters sharded. */
typedef struct {
    int stage;
    rt_zero_params params;
    rt_zero_grads grads;
    rt_param_hooks param_hooks;
    rt_grad_hooks grad_hooks;
} rt_zero_hooks;

void rt_zero_hooks_init(rt_zero_hooks *z, int stage, rt_optimizer *opt, const rt_backend *backend,
                        rt_device_memory *mem);
void rt_zero_hooks_free(rt_zero_hooks *z);
/* What rt_model_options takes: NULL where the stage leaves the model its own buffer. */
const rt_param_hooks *rt_zero_param_hooks(const rt_zero_hooks *z);
const rt_grad_hooks *rt_zero_grad_hooks(const rt_zero_hooks *z);

#endif
