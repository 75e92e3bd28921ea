/* zero_params.c: ZeRO stage 3's parameter residency (zero_params.h). */
#include "zero_params.h"

#include <string.h>

void rt_zero_params_init(rt_zero_params *zp, rt_optimizer *opt, rt_device_memory *mem) {
    memset(zp, 0, sizeof *zp);
    zp->opt = opt;
    zp->mem = mem;
    zp->resident_layer[0] = zp->resident_layer[1] = -1;
}

static int reserve(void *ctx, const rt_param_ranges *ranges, rt_error *err) {
    rt_zero_params *zp = ctx;
    return rt_unit_buffers_reserve(&zp->units, zp->mem, ranges, "parameters (gathered embeddings and head)",
                                   "parameters (gathered layer)", err);
}

void rt_zero_params_free(rt_zero_params *zp) {
    rt_unit_buffers_free(&zp->units);
    memset(zp, 0, sizeof *zp);
}

static float *params_at(void *ctx, size_t offset) {
    return rt_unit_buffers_at(&((rt_zero_params *)ctx)->units, offset);
}

/* Completes a posted gather (a prefetch): its buffer is resident from here on. */
static void wait_gather(rt_zero_params *zp) {
    if (!zp->gather_posted) return;
    rt_optimizer_wait_gathers(zp->opt);
    zp->gather_posted = 0;
}

static void need_top(void *ctx) {
    rt_zero_params *zp = ctx;
    if (zp->resident_top) return;
    const rt_unit_buffers *u = &zp->units;
    const size_t *lo = u->layer_offset, L = (size_t)u->n_layers;
    rt_optimizer_gather_params(zp->opt, u->top, 0, lo[0]);
    rt_optimizer_gather_params(zp->opt, u->top + lo[0], lo[L], u->total - lo[L]);
    zp->gather_posted = 1;
    wait_gather(zp);
    zp->resident_top = 1;
}

/* Posts the gather of layer l (when it is not resident) into its buffer; the layer that buffer held must be
 * done with. */
static void post_layer(rt_zero_params *zp, int l) {
    const rt_unit_buffers *u = &zp->units;
    if (l < 0 || l >= u->n_layers || zp->resident_layer[l % 2] == l) return;
    const size_t *lo = u->layer_offset;
    rt_optimizer_gather_params(zp->opt, u->layer[l % 2], lo[l], lo[l + 1] - lo[l]);
    zp->resident_layer[l % 2] = l;
    zp->gather_posted = 1;
}

/* Layer l's parameters for its use now, and the gather of the layer used next posted, to overlap this one's
 * compute: it goes into the other buffer, whose layer (the one before l in this pass) is done. */
static void need_layer(void *ctx, int layer, int next) {
    rt_zero_params *zp = ctx;
    post_layer(zp, layer);
    wait_gather(zp);
    post_layer(zp, next);
}

/* Every rank posted the same prefetch. */
static void pass_abandoned(void *ctx) { wait_gather(ctx); }

static void changed(void *ctx) {
    rt_zero_params *zp = ctx;
    zp->resident_top = 0;
    zp->resident_layer[0] = zp->resident_layer[1] = -1;
}

rt_param_hooks rt_zero_params_hooks(rt_zero_params *zp) {
    return (rt_param_hooks){.ctx = zp,
                            .reserve = reserve,
                            .at = params_at,
                            .need_top = need_top,
                            .need_layer = need_layer,
                            .pass_abandoned = pass_abandoned,
                            .changed = changed};
}
