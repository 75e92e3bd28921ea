/* zero_hooks.c: the hooks of a ZeRO stage (zero_hooks.h). */
#include "zero_hooks.h"

#include <string.h>

void rt_zero_hooks_init(rt_zero_hooks *z, int stage, rt_optimizer *opt, const rt_backend *backend,
                        rt_device_memory *mem) {
    memset(z, 0, sizeof *z);
    z->stage = stage;
    rt_zero_params_init(&z->params, opt, mem);
    rt_zero_grads_init(&z->grads, opt, backend, mem);
    z->param_hooks = rt_zero_params_hooks(&z->params);
    z->grad_hooks = rt_zero_grads_hooks(&z->grads);
}

void rt_zero_hooks_free(rt_zero_hooks *z) {
    rt_zero_params_free(&z->params);
    rt_zero_grads_free(&z->grads);
    memset(z, 0, sizeof *z);
}

const rt_param_hooks *rt_zero_param_hooks(const rt_zero_hooks *z) { return z->stage == 3 ? &z->param_hooks : NULL; }

const rt_grad_hooks *rt_zero_grad_hooks(const rt_zero_hooks *z) { return z->stage >= 2 ? &z->grad_hooks : NULL; }
