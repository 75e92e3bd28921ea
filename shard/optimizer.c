/* optimizer.c: ZeRO-sharded AdamW (stages 0-3), global-norm clipping, the learning-rate schedule. */
#include "optimizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Stages 2-3 reduce (and stage 3 gathers) ranges in pieces of at most this many floats, so the scratch stays
 * small and every MPI call moves one segment at most. */
#define REDUCE_CHUNK ((size_t)1 << 20)

/* Sizes here multiply counts that reach billions (a 7B model's floats, in bytes): overflow is a fatal error,
 * never a wrapped size. */
static size_t checked_mul(size_t a, size_t b, const char *what) {
    size_t product;
    if (__builtin_mul_overflow(a, b, &product)) rt_fatal("optimizer: %s: %zu x %zu overflows size_t", what, a, b);
    return product;
}

size_t rt_optimizer_padded_size(size_t n_params, int n_ranks) {
    size_t n = (size_t)n_ranks;
    return checked_mul(n_params / n + (n_params % n != 0), n, "parameters padded to the rank count");
}

/* Floats of the views named layers.0.*: one layer of the model's layer-major table (0 without layers). */
static size_t layer_floats(const rt_view_table *table) {
    size_t n = 0;
    for (int i = 0; i < table->count; i++)
        if (strncmp(table->views[i].name, "layers.0.", 9) == 0) n += table->views[i].numel;
    return n;
}

int rt_optimizer_init(rt_optimizer *opt, const rt_backend *backend, rt_device_memory *mem, const rt_mesh *mesh,
                      int zero_stage, const rt_view_table *table, float *params, float beta1, float beta2, float eps,
                      float weight_decay, rt_error *err) {
    rt_comm *world = mesh->world;
    *opt = (rt_optimizer){.backend = backend,
                          .world = world,
                          .dev = world,
                          .table = table,
                          .stage = zero_stage,
                          .n_params = table->total,
                          .beta1 = beta1,
                          .beta2 = beta2,
                          .eps = eps,
                          .weight_decay = weight_decay};
    if (zero_stage < 0 || zero_stage > 3) return rt_fail(err, "zero.stage = %d: expected 0, 1, 2 or 3", zero_stage);
    opt->piece_counts = malloc_check((size_t)world->size * sizeof *opt->piece_counts);
    opt->padded = rt_optimizer_padded_size(opt->n_params, world->size);
    rt_placement placements[RT_MESH_MAX_DIMS] = {{0}};
    for (int d = 0; d < mesh->ndim; d++)
        placements[d] = zero_stage == 0 ? rt_replicate() : rt_shard(0);
    if (rt_dtensor_init(&opt->state, mesh, 1, &opt->padded, placements, err)) return -1;
    rt_dtensor_local_box(&opt->state, NULL, &opt->shard_begin, &opt->shard_size);
    const size_t bytes = checked_mul(opt->shard_size, sizeof(float), "shard bytes");
    /* Stage 0 updates the fp32 parameters in place: on a backend that computes in fp32 they are the master
     * weights. The sharded stages keep an fp32 master shard, which the all-gather spreads. */
    if (zero_stage == 0)
        opt->master = params;
    else if (!(opt->master = rt_device_alloc(mem, bytes, "optimizer state (fp32 master weights)", err)))
        return -1;
    if (!(opt->m = rt_device_alloc(mem, bytes, "optimizer state (Adam m)", err))) return -1;
    if (!(opt->v = rt_device_alloc(mem, bytes, "optimizer state (Adam v)", err))) return -1;
    /* Stage 1 reduce-scatters in place into the start of the model's gradient buffer; stages 2-3 have no full
     * buffer and accumulate the shard here. */
    if (zero_stage >= 2 && !(opt->shard_grad = rt_device_alloc(mem, bytes, "gradient shard", err))) return -1;
    /* Room for this rank's part of a whole layer's reductions in flight (the range a model hands over between
     * two layer backwards), at least one piece, at most the shard. */
    size_t scratch = layer_floats(table);
    if (scratch < REDUCE_CHUNK) scratch = REDUCE_CHUNK;
    if (scratch > opt->shard_size) scratch = opt->shard_size;
    opt->scratch_size = scratch;
    if (zero_stage >= 2 &&
        !(opt->reduce_scratch = rt_device_alloc(mem, scratch * sizeof(float), "gradient reduce scratch", err)))
        return -1;
    if (zero_stage != 0) rt_be_copy(backend, opt->master, params + opt->shard_begin, bytes);
    opt->state_bytes = checked_mul(zero_stage == 0 ? 2 : 3, bytes, "optimizer state bytes");
    return 0;
}

void rt_optimizer_begin_step(rt_optimizer *opt) {
    if (opt->shard_grad) rt_be_memset_zero(opt->backend, opt->shard_grad, opt->shard_size * sizeof(float));
}

/* counts[q] = the part of [offset, offset+count) in rank q's shard: what q receives of a reduction of the
 * range, and sends of a gather. */
static void shard_counts(const rt_optimizer *opt, size_t offset, size_t count, size_t *counts) {
    for (int q = 0; q < opt->dev->size; q++) {
        int coords[RT_MESH_MAX_DIMS];
        size_t lo, size;
        rt_mesh_coords_of(opt->state.mesh, q, coords);
        rt_dtensor_local_box(&opt->state, coords, &lo, &size);
        size_t hi = lo + size;
        size_t a = offset > lo ? offset : lo, b = offset + count < hi ? offset + count : hi;
        counts[q] = b > a ? b - a : 0;
    }
}

/* Where this rank's part of a range starting at offset begins in its shard. */
static size_t shard_index(const rt_optimizer *opt, size_t offset) {
    return offset > opt->shard_begin ? offset - opt->shard_begin : 0;
}

/* Waits for every reduction in flight and adds each into the shard accumulator, in posting order. */
void rt_optimizer_finish_reductions(rt_optimizer *opt) {
    const double t0 = rt_now_s();
    for (int i = 0; i < opt->n_reducing; i++) {
        rt_in_flight *f = &opt->reducing[i];
        rt_comm_wait(opt->dev, &f->req);
        if (f->count)
            rt_be_add(opt->backend, opt->shard_grad + f->shard_at, opt->shard_grad + f->shard_at,
                      opt->reduce_scratch + f->scratch_at, f->count);
    }
    opt->n_reducing = 0;
    opt->scratch_used = 0;
    opt->comm_exposed_s += rt_now_s() - t0;
}

void rt_optimizer_reduce_range(rt_optimizer *opt, const float *grads, size_t offset, size_t count) {
    /* The previous range's reductions overlapped whatever the caller computed since; they end here. */
    rt_optimizer_finish_reductions(opt);
    size_t *counts = opt->piece_counts; /* the planes copy the counts at the post */
    for (size_t done = 0; done < count; done += REDUCE_CHUNK) {
        const size_t piece = count - done < REDUCE_CHUNK ? count - done : REDUCE_CHUNK;
        shard_counts(opt, offset + done, piece, counts);
        const size_t mine = counts[opt->dev->rank];
        if (opt->scratch_used + mine > opt->scratch_size || opt->n_reducing == RT_OPT_MAX_IN_FLIGHT)
            rt_optimizer_finish_reductions(opt); /* a range larger than the scratch: partly blocking */
        rt_in_flight *f = &opt->reducing[opt->n_reducing++];
        *f =
            (rt_in_flight){.shard_at = shard_index(opt, offset + done), .scratch_at = opt->scratch_used, .count = mine};
        rt_ireduce_scatter_sum_f32_v(opt->dev, opt->reduce_scratch + opt->scratch_used, grads + done, counts, &f->req);
        opt->scratch_used += mine;
    }
}

void rt_optimizer_free(rt_optimizer *opt) {
    free(opt->piece_counts);
    opt->piece_counts = NULL;
}

void rt_optimizer_progress(rt_optimizer *opt) {
    for (int i = 0; i < opt->n_reducing; i++)
        rt_comm_progress(opt->dev, &opt->reducing[i].req);
    for (int i = 0; i < opt->n_gathering; i++)
        rt_comm_progress(opt->dev, &opt->gathering[i].req);
}

void rt_optimizer_reduce_grads(rt_optimizer *opt, float *grads) {
    const double t0 = rt_now_s();
    if (opt->stage == 0)
        rt_allreduce_sum_f32(opt->dev, grads, opt->n_params);
    else if (opt->stage == 1)
        rt_reduce_scatter_sum_f32(opt->dev, grads, grads, opt->padded);
    opt->comm_exposed_s += rt_now_s() - t0;
    rt_optimizer_finish_reductions(opt);
}

/* Where this rank's summed gradient shard is after rt_optimizer_reduce_grads. */
static float *shard_gradient(const rt_optimizer *opt, float *grads) {
    return opt->stage >= 2 ? opt->shard_grad : grads;
}

void rt_optimizer_gather_grads(rt_optimizer *opt, const float *grads, float *dst) {
    if (opt->stage == 0) {
        rt_be_copy(opt->backend, dst, grads, opt->n_params * sizeof(float));
        return;
    }
    /* A probe for tests and the pre-clip record, not the step: gathered on the host plane, any backend. */
    float *all = malloc_check(checked_mul(opt->padded, sizeof(float), "gathered gradient bytes"));
    float *mine = all + (size_t)opt->world->rank * opt->shard_size;
    rt_be_copy(opt->backend, mine, shard_gradient(opt, (float *)grads), opt->shard_size * sizeof(float));
    rt_allgather_f32(opt->world, all, mine, opt->shard_size);
    memcpy(dst, all, opt->n_params * sizeof(float));
    free(all);
}

double rt_optimizer_update(rt_optimizer *opt, float *params, float *grads, float lr, float grad_clip) {
    const rt_backend *be = opt->backend;
    float *shard_grad = shard_gradient(opt, grads);
    /* At stage 0 the padding is not part of the gradient; at stages 1-2 it is zero. */
    size_t n_grad = opt->stage == 0 ? opt->n_params : opt->shard_size;
    double sum_squares = rt_be_sum_squares(be, shard_grad, n_grad);
    if (opt->stage != 0) {
        const double t0 = rt_now_s();
        rt_allreduce_sum_f64(opt->world, &sum_squares, 1);
        opt->comm_exposed_s += rt_now_s() - t0;
    }
    double norm = sqrt(sum_squares);
    if (!isfinite(norm)) return norm;
    if (grad_clip > 0.0f && norm > grad_clip) rt_be_scale(be, shard_grad, (float)(grad_clip / norm), n_grad);
    opt->t++;
    const size_t shard_end = opt->shard_begin + opt->shard_size;
    for (int i = 0; i < opt->table->count; i++) {
        const rt_named_view *view = &opt->table->views[i];
        size_t begin = view->offset > opt->shard_begin ? view->offset : opt->shard_begin;
        size_t end = view->offset + view->numel < shard_end ? view->offset + view->numel : shard_end;
        if (begin >= end) continue;
        size_t local = begin - opt->shard_begin;
        rt_be_adamw_update(be, opt->master + local, shard_grad + local, opt->m + local, opt->v + local, end - begin, lr,
                           opt->beta1, opt->beta2, opt->eps, view->weight_decay ? opt->weight_decay : 0.0f, opt->t);
    }
    rt_optimizer_publish_params(opt, params);
    return norm;
}

void rt_optimizer_publish_params(rt_optimizer *opt, float *params) {
    const double t0 = rt_now_s();
    if (opt->stage == 1 || opt->stage == 2) rt_allgather_f32(opt->dev, params, opt->master, opt->shard_size);
    opt->comm_exposed_s += rt_now_s() - t0;
}

void rt_optimizer_wait_gathers(rt_optimizer *opt) {
    const double t0 = rt_now_s();
    for (int i = 0; i < opt->n_gathering; i++)
        rt_comm_wait(opt->dev, &opt->gathering[i].req);
    opt->n_gathering = 0;
    opt->comm_exposed_s += rt_now_s() - t0;
}

/* Rank q sends the part of each piece that falls in its shard; the parts, in rank order, are the piece. */
void rt_optimizer_gather_params(rt_optimizer *opt, float *dst, size_t offset, size_t count) {
    if (opt->stage != 3)
        rt_fatal("rt_optimizer_gather_params at zero.stage %d: only stage 3 shards the parameters", opt->stage);
    size_t *counts = opt->piece_counts;
    for (size_t done = 0; done < count; done += REDUCE_CHUNK) {
        const size_t piece = count - done < REDUCE_CHUNK ? count - done : REDUCE_CHUNK;
        shard_counts(opt, offset + done, piece, counts);
        if (opt->n_gathering == RT_OPT_MAX_IN_FLIGHT) rt_optimizer_wait_gathers(opt);
        rt_in_flight *f = &opt->gathering[opt->n_gathering++];
        *f = (rt_in_flight){0};
        rt_iallgather_f32_v(opt->dev, dst + done, opt->master + shard_index(opt, offset + done), counts, &f->req);
    }
}

float rt_lr_schedule(int step, int total_steps, int warmup_steps, float lr, float min_lr) {
    if (step < warmup_steps) return lr * (float)(step + 1) / (float)warmup_steps;
    int decay_steps = total_steps - warmup_steps;
    if (decay_steps <= 1) return lr;
    double progress = (double)(step - warmup_steps) / (double)(decay_steps - 1);
    if (progress > 1.0) progress = 1.0;
    return (float)(min_lr + 0.5 * (lr - min_lr) * (1.0 + cos(M_PI * progress)));
}
