/* optimizer.c: AdamW on the rank's range of the flat buffer, global-norm clipping, the learning-rate schedule. */
#include "optimizer.h"

#include <math.h>

int rt_optimizer_init(rt_optimizer *opt, const rt_backend *backend, rt_device_memory *mem, rt_comm *world,
                      int zero_stage, const rt_view_table *table, float beta1, float beta2, float eps,
                      float weight_decay, rt_error *err) {
    *opt = (rt_optimizer){.backend = backend,
                          .world = world,
                          .table = table,
                          .stage = zero_stage,
                          .n_params = table->total,
                          .beta1 = beta1,
                          .beta2 = beta2,
                          .eps = eps,
                          .weight_decay = weight_decay};
    if (zero_stage != 0)
        return rt_fail(err, "zero.stage = %d: sharded optimizer states are not in this build yet; use zero.stage = 0",
                       zero_stage);
    opt->shard_begin = 0;
    opt->shard_end = opt->n_params;
    size_t shard = opt->shard_end - opt->shard_begin;
    opt->m = rt_device_alloc(mem, shard * sizeof(float), "optimizer state (Adam m)", err);
    if (!opt->m) return -1;
    opt->v = rt_device_alloc(mem, shard * sizeof(float), "optimizer state (Adam v)", err);
    if (!opt->v) return -1;
    opt->state_bytes = 2 * shard * sizeof(float);
    return 0;
}

double rt_optimizer_step(rt_optimizer *opt, float *params, float *grads, float lr, float grad_clip) {
    const rt_backend *be = opt->backend;
    rt_allreduce_sum_f32(opt->world, grads, opt->n_params);
    double norm = sqrt(be->sum_squares(grads + opt->shard_begin, opt->shard_end - opt->shard_begin));
    if (!isfinite(norm)) return norm;
    if (grad_clip > 0.0f && norm > grad_clip)
        be->scale(grads + opt->shard_begin, (float)(grad_clip / norm), opt->shard_end - opt->shard_begin);
    opt->t++;
    for (int i = 0; i < opt->table->count; i++) {
        const rt_named_view *view = &opt->table->views[i];
        size_t begin = view->offset > opt->shard_begin ? view->offset : opt->shard_begin;
        size_t end = view->offset + view->numel < opt->shard_end ? view->offset + view->numel : opt->shard_end;
        if (begin >= end) continue;
        size_t local = begin - opt->shard_begin;
        be->adamw_update(params + begin, grads + begin, opt->m + local, opt->v + local, end - begin, lr, opt->beta1,
                         opt->beta2, opt->eps, view->weight_decay ? opt->weight_decay : 0.0f, opt->t);
    }
    return norm;
}

float rt_lr_schedule(int step, int total_steps, int warmup_steps, float lr, float min_lr) {
    if (step < warmup_steps) return lr * (float)(step + 1) / (float)warmup_steps;
    int decay_steps = total_steps - warmup_steps;
    if (decay_steps <= 1) return lr;
    double progress = (double)(step - warmup_steps) / (double)(decay_steps - 1);
    if (progress > 1.0) progress = 1.0;
    return (float)(min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(M_PI * progress)));
}
