/* seqpar/attention.c: exact attention of the local queries over the keys of the whole sequence: locally or around
 * the ring of a sequence-parallel group. */
#include <math.h>

#include "seqpar.h"

/*
 * Tl = local tokens (the same on every rank of the group), H = query heads,
 * Hkv = key/value heads, D = head dim, P = ranks in the group, r = this
 * rank. The local q, k, v rows are the caller's (strides in rt_attn_shape),
 * out (Tl, H*D) at out_stride, lse and delta (Tl, H) contiguous.
 *
 * Forward: out = 0, lse = -inf, then every key/value block this rank holds
 * is merged into (out, lse) by the backend's attn_block_forward, which
 * masks by global positions, so the order of the blocks does not matter
 * for the result (it is fixed anyway, so runs give the same bits).
 * Backward: delta = rowsum(dout * out) once, then every held block adds
 * its share to dq, dk, dv with the final lse (attn_block_backward).
 *
 * The ring (P > 1). Rank r sends to r+1 and receives from r-1. At step
 * s = 0..P-1 it holds the K/V block of rank (r - s) mod P: its own at step
 * 0 (read straight from the caller's buffers), the others received. A
 * block travels packed, one message:
 *     [positions int64 (Tl) | K (Tl, Hkv*D) | V (Tl, Hkv*D)]
 * (GQA: only the Hkv kv heads travel), so on a held copy kv_stride is
 * Hkv*D. Before computing on the held block, a rank posts the send of that
 * block and the receive of the next one into the other buffer of
 * kv_ring[2]; it waits after the compute. Time in waits is exposed
 * communication (ctx->comm_exposed_s).
 *
 * Backward ring: K/V travel as in forward. dK/dV of a block collect on a
 * second ring (tag TAG_DKV), one step behind: at step s >= 1 a rank
 * computes the contribution of its queries to the held block (owner
 * r - s) into a zeroed partial, then adds the accumulator of that block
 * received from r-1 (which computed on it at step s-1; none at s = 1),
 * and sends the sum to r+1. The owner's own contribution (step 0) goes
 * straight into the caller's dk/dv, so each accumulator makes P-1 hops
 * (owner+1 -> ... -> owner+P-1 -> owner) and each rank receives P-1 of
 * them: P-2 to add to and finally its own, which it adds into dk/dv.
 * Receives are posted a step ahead, so the transfer of an accumulator
 * overlaps the compute of the next partial. Buffers dkv_ring[4]: two
 * partials (one computed while the other is sent) and two receive slots.
 * The sums run in a fixed order, so results are the same bits run to run.
 *
 * Which (query, key) pairs are computed. Positions are cut into runs of
 * consecutive positions (the zigzag gives each rank two runs, one per
 * chunk); a held run is visited in blocks of at most ctx->block_size
 * keys (0 = the whole run), and a (query run, key block) pair is skipped
 * when causal and every key comes after every query (the upper halves of
 * the zigzag; a whole held block when all of it is masked). Inside a call
 * the kernel skips masked tiles too. More than MAX_RUNS runs (unordered
 * positions) are treated as one run: the skipping is then the kernel's.
 *
 * Positions are device memory; the run bookkeeping reads them in chunks
 * into the stack. Nothing here allocates during a call: the attention
 * workspace (the backend's scratch, attn_workspace_bytes for Tl queries and
 * Tl keys) and the ring buffers come from ctx->mem, reserved at setup by
 * seqpar_reserve (or on a first call that needs them).
 */

enum { TAG_KV = 7301, TAG_DKV = 7302, MAX_RUNS = 4, POS_CHUNK = 1024, LSE_FILL = 256 };

/* Rows [start, start + len) whose positions lie in [min, max]. */
typedef struct {
    size_t start, len;
    int64_t min, max;
    int consecutive; /* positions are min, min + 1, ..., max in row order */
} pos_run;

/* Cuts n device positions into runs of consecutive positions; one run (not consecutive) over all n when there
 * would be more than MAX_RUNS. Reads the positions POS_CHUNK at a time into the stack. */
static int find_runs(const rt_backend *backend, pos_run runs[MAX_RUNS], const int64_t *pos, size_t n) {
    int64_t chunk[POS_CHUNK];
    int n_runs = 0, too_many = 0;
    int64_t prev = 0, min = 0, max = 0;
    for (size_t c0 = 0; c0 < n; c0 += POS_CHUNK) {
        const size_t len = n - c0 < POS_CHUNK ? n - c0 : POS_CHUNK;
        backend->copy(backend, chunk, pos + c0, len * sizeof(int64_t));
        for (size_t c = 0; c < len; c++) {
            const size_t i = c0 + c;
            const int64_t p = chunk[c];
            min = i == 0 || p < min ? p : min;
            max = i == 0 || p > max ? p : max;
            if (too_many) {
            } else if (i > 0 && p == prev + 1) {
                runs[n_runs - 1].len++;
                runs[n_runs - 1].max = p;
            } else if (n_runs == MAX_RUNS) {
                too_many = 1;
            } else {
                runs[n_runs++] = (pos_run){.start = i, .len = 1, .min = p, .max = p, .consecutive = 1};
            }
            prev = p;
        }
    }
    if (!too_many) return n_runs;
    runs[0] = (pos_run){.start = 0, .len = n, .min = min, .max = max, .consecutive = 0};
    return 1;
}

/* Rows [j0, j0 + len) of a run. Without consecutive positions their extent is taken as the run's: a pair is
 * then skipped less often, never wrongly (the kernel masks, and skips masked tiles, by itself). */
static pos_run sub_run(const pos_run *run, size_t j0, size_t len) {
    pos_run part = {.start = j0, .len = len, .min = run->min, .max = run->max, .consecutive = run->consecutive};
    if (run->consecutive) {
        part.min = run->min + (int64_t)(j0 - run->start);
        part.max = part.min + (int64_t)len - 1;
    }
    return part;
}

/* The local queries of one call: device pointers and their runs. */
typedef struct {
    const float *q;
    const int64_t *pos; /* device */
    size_t Tq;
    pos_run runs[MAX_RUNS];
    int n_runs;
} query_set;

/* One held block of keys/values: device rows at shape.kv_stride, positions on the device, and their runs. */
typedef struct {
    const float *k, *v;
    const int64_t *pos;
    size_t Tk;
    rt_attn_shape shape; /* the caller's, with this block's kv_stride */
    pos_run runs[MAX_RUNS];
    int n_runs;
} held_block;

static held_block held_block_make(const rt_backend *backend, const float *k, const float *v, const int64_t *pos,
                                  size_t Tk, const rt_attn_shape *shape, size_t kv_stride) {
    held_block b = {.k = k, .v = v, .pos = pos, .Tk = Tk, .shape = *shape};
    b.shape.kv_stride = kv_stride;
    b.n_runs = find_runs(backend, b.runs, pos, Tk);
    return b;
}

/* What to do with one (query run, key block) pair: queries [i0, i0 + Tq), keys [j0, j0 + Tk) of the block. */
typedef void (*pair_fn)(const seqpar_ctx *ctx, void *arg, const held_block *b, size_t i0, size_t Tq, size_t j0,
                        size_t Tk);

/* Calls fn on every (query run, key block) pair that is not fully masked, in a fixed order. */
static void for_each_pair(const seqpar_ctx *ctx, const query_set *qs, const held_block *b, pair_fn fn, void *arg) {
    for (int kr = 0; kr < b->n_runs; kr++) {
        const pos_run *run = &b->runs[kr];
        const size_t block = ctx->block_size == 0 ? run->len : ctx->block_size;
        for (size_t j0 = run->start; j0 < run->start + run->len; j0 += block) {
            const size_t len = run->start + run->len - j0 < block ? run->start + run->len - j0 : block;
            const pos_run keys = sub_run(run, j0, len);
            for (int qr = 0; qr < qs->n_runs; qr++) {
                if (b->shape.causal && keys.min > qs->runs[qr].max) continue; /* every key after every query */
                fn(ctx, arg, b, qs->runs[qr].start, qs->runs[qr].len, keys.start, keys.len);
            }
        }
    }
}

typedef struct {
    float *out, *lse;
    const query_set *qs;
} forward_args;

static void forward_pair(const seqpar_ctx *ctx, void *arg, const held_block *b, size_t i0, size_t Tq, size_t j0,
                         size_t Tk) {
    const forward_args *a = arg;
    const rt_attn_shape *shape = &b->shape;
    ctx->backend->attn_block_forward(ctx->backend, a->out + i0 * shape->out_stride,
                                     a->lse + i0 * (size_t)shape->n_heads, a->qs->q + i0 * shape->q_stride,
                                     b->k + j0 * shape->kv_stride, b->v + j0 * shape->kv_stride, a->qs->pos + i0,
                                     b->pos + j0, Tq, Tk, shape, ctx->attn_workspace, ctx->attn_workspace_bytes);
}

/* Merges the attention of the local queries onto one held block into (out, lse). */
static void forward_held(const seqpar_ctx *ctx, float *out, float *lse, const query_set *qs, const held_block *b) {
    forward_args a = {out, lse, qs};
    for_each_pair(ctx, qs, b, forward_pair, &a);
}

typedef struct {
    float *dq, *dk, *dv;
    const float *dout, *lse, *delta;
    const query_set *qs;
} backward_args;

static void backward_pair(const seqpar_ctx *ctx, void *arg, const held_block *b, size_t i0, size_t Tq, size_t j0,
                          size_t Tk) {
    const backward_args *a = arg;
    const rt_attn_shape *shape = &b->shape;
    const size_t H = (size_t)shape->n_heads, row = j0 * shape->kv_stride;
    ctx->backend->attn_block_backward(ctx->backend, a->dq + i0 * shape->q_stride, a->dk + row, a->dv + row,
                                      a->dout + i0 * shape->out_stride, a->qs->q + i0 * shape->q_stride, b->k + row,
                                      b->v + row, a->lse + i0 * H, a->delta + i0 * H, a->qs->pos + i0, b->pos + j0, Tq,
                                      Tk, shape, ctx->attn_workspace, ctx->attn_workspace_bytes);
}

/* Adds the gradients through one held block: dq of the local queries, dk/dv (rows at the block's kv_stride). */
static void backward_held(const seqpar_ctx *ctx, float *dq, float *dk, float *dv, const float *dout, const float *lse,
                          const float *delta, const query_set *qs, const held_block *b) {
    backward_args a = {dq, dk, dv, dout, lse, delta, qs};
    for_each_pair(ctx, qs, b, backward_pair, &a);
}

/* out = 0 (the H*D columns of every row) and lse = -inf, through the backend (device memory): LSE_FILL values
 * from the stack, then doubling copies on the device. */
static void init_running(const rt_backend *backend, float *out, float *lse, size_t Tl, const rt_attn_shape *shape) {
    size_t row_floats = (size_t)shape->n_heads * (size_t)shape->head_dim;
    if (shape->out_stride == row_floats) {
        backend->memset_zero(backend, out, Tl * row_floats * sizeof(float));
    } else {
        for (size_t i = 0; i < Tl; i++)
            backend->memset_zero(backend, out + i * shape->out_stride, row_floats * sizeof(float));
    }
    const size_t n_lse = Tl * (size_t)shape->n_heads;
    float minus_inf[LSE_FILL];
    for (size_t i = 0; i < LSE_FILL; i++)
        minus_inf[i] = -INFINITY;
    size_t filled = n_lse < LSE_FILL ? n_lse : LSE_FILL;
    backend->copy(backend, lse, minus_inf, filled * sizeof(float));
    while (filled < n_lse) {
        const size_t more = n_lse - filled < filled ? n_lse - filled : filled;
        backend->copy(backend, lse + filled, lse, more * sizeof(float));
        filled += more;
    }
}

static query_set query_set_make(const rt_backend *backend, const float *q, const int64_t *pos, size_t Tq) {
    query_set qs = {.q = q, .pos = pos, .Tq = Tq};
    qs.n_runs = find_runs(backend, qs.runs, pos, Tq);
    return qs;
}

/* The local keys/values, read in place: same positions, so same runs, as the local queries. */
static held_block held_local(const float *k, const float *v, const query_set *qs, const rt_attn_shape *shape) {
    held_block b = {.k = k, .v = v, .pos = qs->pos, .Tk = qs->Tq, .shape = *shape, .n_runs = qs->n_runs};
    for (int r = 0; r < qs->n_runs; r++)
        b.runs[r] = qs->runs[r];
    return b;
}

/* ------------------------------------------------------------------ the ring */

static int ring_size(const seqpar_ctx *ctx) { return ctx->comm == NULL ? 1 : ctx->comm->size; }

static size_t kv_row_floats(const rt_attn_shape *shape) { return (size_t)shape->n_kv_heads * (size_t)shape->head_dim; }

/* Bytes of one packed K/V block and of one dK/dV accumulator of Tl tokens. */
static size_t kv_block_bytes(size_t Tl, const rt_attn_shape *shape) {
    return Tl * sizeof(int64_t) + 2 * Tl * kv_row_floats(shape) * sizeof(float);
}
static size_t dkv_block_bytes(size_t Tl, const rt_attn_shape *shape) {
    return 2 * Tl * kv_row_floats(shape) * sizeof(float);
}

/* Every rank of the group must call with the same Tl and kv row width: a mismatch is a programming error. */
static void check_group_agrees(seqpar_ctx *ctx, size_t Tl, const rt_attn_shape *shape) {
    double extremes[4] = {(double)Tl, -(double)Tl, (double)kv_row_floats(shape), -(double)kv_row_floats(shape)};
    const double t0 = rt_now_s();
    ctx->comm->ops->allreduce_max_f64(ctx->comm, extremes, 4);
    ctx->comm_exposed_s += rt_now_s() - t0;
    if (extremes[0] != -extremes[1] || extremes[2] != -extremes[3])
        rt_fatal("seqpar: the ranks of a sequence-parallel group disagree on the attention call: local tokens "
                 "%.0f..%.0f (this rank %zu), kv row floats %.0f..%.0f; every rank must hold the same number of "
                 "tokens of the same sequence",
                 -extremes[1], extremes[0], Tl, -extremes[3], extremes[2]);
}

/* Grows n buffers of *capacity bytes each to at least bytes (contents are not kept); -1 with err when the
 * arena refuses. */
static int try_ensure_buffers(seqpar_ctx *ctx, void **buffers, int n, size_t *capacity, size_t bytes, const char *what,
                              rt_error *err) {
    if (bytes <= *capacity && buffers[0] != NULL) return 0;
    if (ctx->mem == NULL)
        rt_fatal("seqpar: attention needs a device memory arena for %s (seqpar_ctx.mem is NULL)", what);
    for (int i = 0; i < n; i++) {
        if (buffers[i]) rt_device_free(ctx->mem, buffers[i]);
        buffers[i] = NULL;
    }
    *capacity = 0;
    for (int i = 0; i < n; i++)
        if (!(buffers[i] = rt_device_alloc(ctx->mem, bytes, what, err))) return -1;
    *capacity = bytes;
    return 0;
}

/* As try_ensure_buffers inside a step, where a refusal can only end the job (seqpar_reserve avoids it). */
static void ensure_buffers(seqpar_ctx *ctx, void **buffers, int n, size_t *capacity, size_t bytes, const char *what) {
    rt_error err;
    if (try_ensure_buffers(ctx, buffers, n, capacity, bytes, what, &err)) rt_fatal("%s", err.msg);
}

/* The backend's attention workspace for local sequences of up to Tl tokens (queries and every key block). */
static size_t workspace_bytes_for(const seqpar_ctx *ctx, size_t Tl, const rt_attn_shape *shape) {
    return ctx->backend->attn_workspace_bytes(ctx->backend, Tl, Tl, shape);
}

static void ensure_workspace(seqpar_ctx *ctx, size_t Tl, const rt_attn_shape *shape) {
    ensure_buffers(ctx, &ctx->attn_workspace, 1, &ctx->attn_workspace_bytes, workspace_bytes_for(ctx, Tl, shape),
                   "attention workspace");
}

void seqpar_ctx_free(seqpar_ctx *ctx) {
    if (ctx->attn_workspace) rt_device_free(ctx->mem, ctx->attn_workspace);
    ctx->attn_workspace = NULL;
    ctx->attn_workspace_bytes = 0;
    for (int i = 0; i < 2; i++) {
        if (ctx->kv_ring[i]) rt_device_free(ctx->mem, ctx->kv_ring[i]);
        ctx->kv_ring[i] = NULL;
    }
    for (int i = 0; i < 4; i++) {
        if (ctx->dkv_ring[i]) rt_device_free(ctx->mem, ctx->dkv_ring[i]);
        ctx->dkv_ring[i] = NULL;
    }
    ctx->kv_ring_bytes = ctx->dkv_ring_bytes = 0;
}

/* Copies n rows of width floats at src_stride into rows at dst_stride (device to device). */
static void copy_rows(const rt_backend *backend, float *dst, size_t dst_stride, const float *src, size_t src_stride,
                      size_t n, size_t width) {
    if (dst_stride == width && src_stride == width) {
        backend->copy(backend, dst, src, n * width * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++)
        backend->copy(backend, dst + i * dst_stride, src + i * src_stride, width * sizeof(float));
}

/* dst rows (at dst_stride) += src rows (packed, width floats). */
static void add_rows(const rt_backend *backend, float *dst, size_t dst_stride, const float *src, size_t n,
                     size_t width) {
    if (dst_stride == width) {
        backend->add(backend, dst, dst, src, n * width);
        return;
    }
    for (size_t i = 0; i < n; i++)
        backend->add(backend, dst + i * dst_stride, dst + i * dst_stride, src + i * width, width);
}

/* Views of a packed K/V block. */
static int64_t *packed_pos(void *block) { return (int64_t *)block; }
static float *packed_k(void *block, size_t Tl) { return (float *)((int64_t *)block + Tl); }
static float *packed_v(void *block, size_t Tl, const rt_attn_shape *shape) {
    return packed_k(block, Tl) + Tl * kv_row_floats(shape);
}

static void pack_block(const rt_backend *backend, void *block, const float *k, const float *v, const int64_t *pos,
                       size_t Tl, const rt_attn_shape *shape) {
    const size_t width = kv_row_floats(shape);
    backend->copy(backend, packed_pos(block), pos, Tl * sizeof(int64_t));
    copy_rows(backend, packed_k(block, Tl), width, k, shape->kv_stride, Tl, width);
    copy_rows(backend, packed_v(block, Tl, shape), width, v, shape->kv_stride, Tl, width);
}

/* The held copy of a received block. */
static held_block held_packed(const rt_backend *backend, void *block, size_t Tl, const rt_attn_shape *shape) {
    return held_block_make(backend, packed_k(block, Tl), packed_v(block, Tl, shape), packed_pos(block), Tl, shape,
                           kv_row_floats(shape));
}

static void timed_wait(seqpar_ctx *ctx, rt_comm_request *req) {
    const double t0 = rt_now_s();
    ctx->comm->ops->wait(ctx->comm, req);
    ctx->comm_exposed_s += rt_now_s() - t0;
}

/* Posts the send of the held block to r+1 and the receive of the next one from r-1. */
static void post_kv_exchange(seqpar_ctx *ctx, void *held, void *next, size_t bytes, rt_comm_request *req) {
    rt_comm *comm = ctx->comm;
    const int to = (comm->rank + 1) % comm->size, from = (comm->rank + comm->size - 1) % comm->size;
    comm->ops->irecv(comm, next, bytes, from, TAG_KV, req);
    comm->ops->isend(comm, held, bytes, to, TAG_KV, req);
}

/* ------------------------------------------------------------------ forward and backward */

void seqpar_attention_forward(seqpar_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                              const int64_t *pos, size_t Tl, const rt_attn_shape *shape) {
    const int P = ring_size(ctx);
    if (P > 1) check_group_agrees(ctx, Tl, shape);
    if (Tl == 0) return;
    const rt_backend *backend = ctx->backend;
    init_running(backend, out, lse, Tl, shape);
    ensure_workspace(ctx, Tl, shape);
    const query_set qs = query_set_make(backend, q, pos, Tl);
    const size_t bytes = kv_block_bytes(Tl, shape);
    if (P > 1) {
        ensure_buffers(ctx, ctx->kv_ring, 2, &ctx->kv_ring_bytes, bytes, "ring attention K/V blocks");
        pack_block(backend, ctx->kv_ring[0], k, v, pos, Tl, shape);
    }
    for (int s = 0; s < P; s++) {
        void *held = ctx->kv_ring[s % 2];
        rt_comm_request kv_req = {0};
        if (s + 1 < P) post_kv_exchange(ctx, held, ctx->kv_ring[(s + 1) % 2], bytes, &kv_req);
        /* step 0: the local keys, read in place; then the received copies */
        const held_block b = s == 0 ? held_local(k, v, &qs, shape) : held_packed(backend, held, Tl, shape);
        forward_held(ctx, out, lse, &qs, &b);
        if (s + 1 < P) {
            timed_wait(ctx, &kv_req);
            ctx->kv_blocks_received++;
        }
    }
}

int seqpar_reserve(seqpar_ctx *ctx, size_t Tl, const rt_attn_shape *shape, rt_error *err) {
    if (Tl == 0) return 0;
    if (try_ensure_buffers(ctx, &ctx->attn_workspace, 1, &ctx->attn_workspace_bytes,
                           workspace_bytes_for(ctx, Tl, shape), "attention workspace", err))
        return -1;
    if (ring_size(ctx) <= 1) return 0;
    if (try_ensure_buffers(ctx, ctx->kv_ring, 2, &ctx->kv_ring_bytes, kv_block_bytes(Tl, shape),
                           "ring attention K/V blocks", err))
        return -1;
    return try_ensure_buffers(ctx, ctx->dkv_ring, 4, &ctx->dkv_ring_bytes, dkv_block_bytes(Tl, shape),
                              "ring attention dK/dV blocks", err);
}

void seqpar_attention_backward(seqpar_ctx *ctx, float *dq, float *dk, float *dv, float *delta, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k, const float *v,
                               const int64_t *pos, size_t Tl, const rt_attn_shape *shape) {
    const int P = ring_size(ctx);
    if (P > 1) check_group_agrees(ctx, Tl, shape);
    if (Tl == 0) return;
    const rt_backend *backend = ctx->backend;
    backend->attn_delta(backend, delta, out, dout, Tl, shape);
    ensure_workspace(ctx, Tl, shape);
    const query_set qs = query_set_make(backend, q, pos, Tl);
    const size_t bytes = kv_block_bytes(Tl, shape), dkv_bytes = dkv_block_bytes(Tl, shape);
    const size_t width = kv_row_floats(shape);
    rt_comm_request dkv_recv_req[2] = {{0}, {0}}, dkv_send_req = {0};
    if (P > 1) {
        ensure_buffers(ctx, ctx->kv_ring, 2, &ctx->kv_ring_bytes, bytes, "ring attention K/V blocks");
        ensure_buffers(ctx, ctx->dkv_ring, 4, &ctx->dkv_ring_bytes, dkv_bytes, "ring attention dK/dV blocks");
        pack_block(backend, ctx->kv_ring[0], k, v, pos, Tl, shape);
    }
    /* dkv_ring: two partials and two receive slots, each [dK (Tl, width) | dV (Tl, width)] */
    float *partial[2] = {ctx->dkv_ring[0], ctx->dkv_ring[1]}, *received[2] = {ctx->dkv_ring[2], ctx->dkv_ring[3]};
    rt_comm *comm = ctx->comm;
    const int to = comm ? (comm->rank + 1) % P : 0, from = comm ? (comm->rank + P - 1) % P : 0;
    for (int s = 0; s < P; s++) {
        void *held = ctx->kv_ring[s % 2];
        rt_comm_request kv_req = {0};
        if (s + 1 < P) post_kv_exchange(ctx, held, ctx->kv_ring[(s + 1) % 2], bytes, &kv_req);
        /* the accumulator r-1 sends at its step s: added at step s+1, or this rank's own after the last step */
        if (s >= 1) comm->ops->irecv(comm, received[s % 2], dkv_bytes, from, TAG_DKV, &dkv_recv_req[s % 2]);
        if (s == 0) {
            /* the local keys: their gradients go straight into the caller's dk, dv */
            const held_block b = held_local(k, v, &qs, shape);
            backward_held(ctx, dq, dk, dv, dout, lse, delta, &qs, &b);
        } else {
            const held_block b = held_packed(backend, held, Tl, shape);
            backend->memset_zero(backend, partial[s % 2], dkv_bytes);
            backward_held(ctx, dq, partial[s % 2], partial[s % 2] + Tl * width, dout, lse, delta, &qs, &b);
        }
        if (s + 1 < P) {
            timed_wait(ctx, &kv_req);
            ctx->kv_blocks_received++;
        }
        if (s >= 2) {
            /* the block's accumulator from r-1 (posted last step), and our send of last step (frees its partial) */
            timed_wait(ctx, &dkv_recv_req[(s - 1) % 2]);
            timed_wait(ctx, &dkv_send_req);
            ctx->dkv_blocks_received++;
            backend->add(backend, partial[s % 2], partial[s % 2], received[(s - 1) % 2], 2 * Tl * width);
        }
        if (s >= 1) comm->ops->isend(comm, partial[s % 2], dkv_bytes, to, TAG_DKV, &dkv_send_req);
    }
    if (P > 1) {
        /* this rank's own accumulator, back after P-1 hops */
        timed_wait(ctx, &dkv_recv_req[(P - 1) % 2]);
        timed_wait(ctx, &dkv_send_req);
        ctx->dkv_blocks_received++;
        add_rows(backend, dk, shape->kv_stride, received[(P - 1) % 2], Tl, width);
        add_rows(backend, dv, shape->kv_stride, received[(P - 1) % 2] + Tl * width, Tl, width);
    }
}
