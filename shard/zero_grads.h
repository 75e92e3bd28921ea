/* zero_grads.h: ZeRO stages 2-3's gradient streaming: each layer's gradients reduced as its backward ends. */
#ifndef RT_ZERO_GRADS_H
#define RT_ZERO_GRADS_H

#include "optimizer.h"
#include "runtime/backend/backend.h"
#include "runtime/core/param_hooks.h"
#include "unit_buffers.h"

/*
 * No full gradient buffer exists: layer l's backward accumulates into the
 * unit buffer l % 2 (unit_buffers.h), which goes to the optimizer's
 * nonblocking reduce-scatter the moment the layer is done and stays in
 * flight while the next layer's backward fills the other buffer. The
 * tensors outside the layers accumulate in the top buffer over the
 * micro-batch and are handed over at the end of its backward.
 */
typedef struct {
    rt_optimizer *opt;
    const rt_backend *backend;
    rt_device_memory *mem;
    rt_unit_buffers units; /* allocated by the hooks' reserve, from the model's init */
} rt_zero_grads;

/* opt reduces the gradients; the buffers come from mem when the model reserves them. */
void rt_zero_grads_init(rt_zero_grads *zg, rt_optimizer *opt, const rt_backend *backend, rt_device_memory *mem);
void rt_zero_grads_free(rt_zero_grads *zg);
/* The hooks a model calls (param_hooks.h), on zg. */
rt_grad_hooks rt_zero_grads_hooks(rt_zero_grads *zg);

#endif
