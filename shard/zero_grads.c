/* zero_grads.c: ZeRO stages 2-3's gradient streaming (zero_grads.h). */
#include "zero_grads.h"

#include <string.h>

void rt_zero_grads_init(rt_zero_grads *zg, rt_optimizer *opt, const rt_backend *backend, rt_device_memory *mem) {
    memset(zg, 0, sizeof *zg);
    zg->opt = opt;
    zg->backend = backend;
    zg->mem = mem;
}

static int reserve(void *ctx, const rt_param_ranges *ranges, rt_error *err) {
    rt_zero_grads *zg = ctx;
    return rt_unit_buffers_reserve(&zg->units, zg->mem, ranges, "gradients (embeddings and head)",
                                   "gradients (one layer, two buffers)", err);
}

void rt_zero_grads_free(rt_zero_grads *zg) {
    rt_unit_buffers_free(&zg->units);
    memset(zg, 0, sizeof *zg);
}

static float *grads_at(void *ctx, size_t offset) { return rt_unit_buffers_at(&((rt_zero_grads *)ctx)->units, offset); }

static void layer_begin(void *ctx, int layer) {
    rt_zero_grads *zg = ctx;
    rt_be_memset_zero(zg->backend, zg->units.layer[layer % 2], rt_unit_layer_count(&zg->units) * sizeof(float));
}

/* The buffer stays untouched until the next call completes this reduction: the next layer uses the other. */
static void layer_done(void *ctx, int layer) {
    rt_zero_grads *zg = ctx;
    const size_t *lo = zg->units.layer_offset;
    rt_optimizer_reduce_range(zg->opt, zg->units.layer[layer % 2], lo[layer], lo[layer + 1] - lo[layer]);
}

static void zero_top(void *ctx) {
    rt_zero_grads *zg = ctx;
    rt_be_memset_zero(zg->backend, zg->units.top, rt_unit_top_count(&zg->units) * sizeof(float));
}

static void backward_done(void *ctx) {
    rt_zero_grads *zg = ctx;
    const rt_unit_buffers *u = &zg->units;
    const size_t *lo = u->layer_offset, L = (size_t)u->n_layers;
    rt_optimizer_reduce_range(zg->opt, u->top, 0, lo[0]);
    rt_optimizer_reduce_range(zg->opt, u->top + lo[0], lo[L], u->total - lo[L]);
    rt_optimizer_finish_reductions(zg->opt); /* the model reuses the buffers next */
    zero_top(zg);                            /* reduced: the next micro-batch accumulates from zero */
}

static void progress(void *ctx) { rt_optimizer_progress(((rt_zero_grads *)ctx)->opt); }

static void pass_abandoned(void *ctx) { rt_optimizer_finish_reductions(((rt_zero_grads *)ctx)->opt); }

rt_grad_hooks rt_zero_grads_hooks(rt_zero_grads *zg) {
    return (rt_grad_hooks){.ctx = zg,
                           .reserve = reserve,
                           .at = grads_at,
                           .layer_begin = layer_begin,
                           .layer_done = layer_done,
                           .backward_done = backward_done,
                           .pass_abandoned = pass_abandoned,
                           .zero = zero_top,
                           .progress = progress};
}
