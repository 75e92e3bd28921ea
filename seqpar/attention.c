/* seqpar/attention.c: exact attention of the local queries over the keys of the whole sequence: locally or around
 * the ring of a sequence-parallel group. */
#include <math.h>

#include "ring_comm.h"
#include "seqpar.h"

/*
 * B = sequences of the call, Tl = local tokens per sequence (the same on
 * every rank of the group), n = B*Tl local rows, H = query heads, Hkv =
 * key/value heads, D = head dim, W = Hkv*D, P = ranks in the group, r =
 * this rank. The local q, k, v rows are the caller's (strides in
 * rt_attn_shape), out (n, H*D) at out_stride, lse and delta (n, H)
 * contiguous; sequence b is rows [b*Tl, (b+1)*Tl) of each.
 *
 * Forward: out = 0, lse = -inf, then every key/value block this rank holds
 * is merged into (out, lse) by the backend's attn_block_forward, which
 * masks by global positions, so the order of the blocks does not matter
 * for the result (it is fixed anyway, so runs give the same bits).
 * Backward: delta = rowsum(dout * out) once, then every held block adds
 * its share to dq, dk, dv with the final lse (attn_block_backward).
 * Sequences never mix: the queries of sequence b only meet the keys of
 * sequence b.
 *
 * The ring (P > 1). Rank r sends to r+1 and receives from r-1. At step
 * s = 0..P-1 it holds the K/V of rank (r - s) mod P for every sequence of
 * the call: its own at step 0 (read straight from the caller's buffers),
 * the others received. They travel as one message per hop,
 *     [K (n, W) | V (n, W)]      (row b*Tl + i: token i of sequence b)
 * (GQA: only the Hkv kv heads travel), so on a held copy kv_stride is W.
 * Before computing on the held block, a rank posts the send of that block
 * and the receive of the next one into the other buffer of kv_ring[2]; it
 * waits after the compute of every sequence on the held one. Each ring is a
 * seqpar_ring_comm (ring_comm.h: post, compute, wait), one per tag. Time in waits
 * is exposed communication (ctx->comm_exposed_s). A layer's attention thus
 * makes P-1 hops whatever B: the per-message latency is paid once, not B
 * times, and a bigger message overlaps a longer compute.
 *
 * Backward ring: K/V travel as in forward. dK/dV of a block collect on a
 * second ring (tag TAG_DKV), one step behind: at step s >= 1 a rank
 * computes the contribution of its queries to the held block (owner
 * r - s) into a zeroed partial [dK (n, W) | dV (n, W)], then adds the
 * accumulator of that block received from r-1 (which computed on it at
 * step s-1; none at s = 1), and sends the sum to r+1. The owner's own
 * contribution (step 0) goes straight into the caller's dk/dv, so each
 * accumulator makes P-1 hops (owner+1 -> ... -> owner+P-1 -> owner) and
 * each rank receives P-1 of them: P-2 to add to and finally its own, which
 * it adds into dk/dv. A receive is posted at the end of a step, when r-1
 * sends, so the transfer of an accumulator overlaps the compute of the next
 * partial. Buffers dkv_ring[3]: two partials (one computed while the other
 * is sent) and one receive slot (free again once its accumulator is added,
 * before the next receive is posted).
 *
 * Summation order. Per sequence the kernel calls (step, key block, query
 * run) come in the same order as in a call of that sequence alone, every
 * add is elementwise, and delta is per row, so each sequence gets the same
 * bits as alone (B = 1), and runs repeat bit for bit.
 *
 * Which (query, key) pairs are computed. Positions are cut into runs of
 * consecutive positions (the zigzag gives each rank two runs, one per
 * chunk, or one for rank P-1, whose chunks touch); a held run is visited
 * in blocks of at most ctx->block_size keys (0 = the whole run), and a
 * (query run, key block) pair is skipped when causal and every key comes
 * after every query (the upper halves of the zigzag; a whole held block
 * when all of it is masked). Inside a call the kernel skips masked tiles
 * too. More than MAX_RUNS runs (unordered positions) are treated as one
 * run: the skipping is then the kernel's.
 *
 * Packed documents (tokens->first): a query run is cut where its document
 * changes, and each piece meets only the keys of a block in [its
 * document's first position, its last query's position], the block
 * trimmed to exactly those rows (for_each_document_pair): keys of other
 * documents are never handed to the kernels. The kernels also take each
 * query's first position (q_first) and mask by it, which is what holds
 * where runs are not consecutive.
 *
 * Where the runs come from: host data only, never the device. One rank:
 * the caller's host positions. A ring: every sequence's positions are this
 * rank's share, its zigzag chunks or its pieces of the sequence's layout
 * (tokens->layouts; checked on the host each call, see seqpar.h), so the
 * runs of any rank's block follow from that rank's spans or pieces, and a
 * received key of position p is masked by key_positions[p] (a device copy
 * of 0..P*Tl-1 made once, at reserve): positions never travel and no call
 * reads device memory back. The shapes were agreed by the group once, at
 * setup (seqpar_agree_shapes); a call only compares with them.
 *
 * Nothing here allocates during a call: the attention workspace (the
 * backend's scratch, attn_workspace_bytes for Tl queries and Tl keys), the
 * ring buffers and the key positions come from ctx->mem, reserved at setup
 * by seqpar_reserve (or on a first call that needs them).
 */

enum { TAG_KV = 7301, TAG_DKV = 7302, MAX_RUNS = SEQPAR_MAX_PIECES, POS_CHUNK = 1024, LSE_FILL = 256 };

/* Rows [start, start + len) whose positions lie in [min, max]. */
typedef struct {
    size_t start, len;
    int64_t min, max;
    int consecutive; /* positions are min, min + 1, ..., max in row order */
} pos_run;

/* The runs of one block of rows, in row order. */
typedef struct {
    pos_run runs[MAX_RUNS];
    int n;
} run_list;

/* Appends rows [start, start + len) at positions min, min + 1, ...: extends the last run when it continues it.
 * 0 when that would take more than MAX_RUNS runs. */
static int push_run(run_list *list, size_t start, size_t len, int64_t min) {
    pos_run *last = list->n > 0 ? &list->runs[list->n - 1] : NULL;
    if (last && last->start + last->len == start && last->max + 1 == min) {
        last->len += len;
        last->max += (int64_t)len;
        return 1;
    }
    if (list->n == MAX_RUNS) return 0;
    list->runs[list->n++] =
        (pos_run){.start = start, .len = len, .min = min, .max = min + (int64_t)len - 1, .consecutive = 1};
    return 1;
}

/* Cuts n >= 1 host positions into runs of consecutive positions; one run (not consecutive) over all n when there
 * would be more than MAX_RUNS. */
static run_list runs_of_positions(const int64_t *pos, size_t n) {
    run_list list = {.n = 0};
    int64_t min = pos[0], max = pos[0];
    int fits = 1;
    for (size_t i = 0; i < n; i++) {
        min = pos[i] < min ? pos[i] : min;
        max = pos[i] > max ? pos[i] : max;
        fits = fits && push_run(&list, i, 1, pos[i]);
    }
    if (fits) return list;
    list.runs[0] = (pos_run){.start = 0, .len = n, .min = min, .max = max, .consecutive = 0};
    list.n = 1;
    return list;
}

/* The runs of one sequence's rows on rank owner of P: its two zigzag chunks, cut as runs_of_positions would cut
 * their positions (so a received block makes the same kernel calls as if its positions had been read). */
static run_list runs_of_owner(int owner, int P, size_t Tl) {
    rt_span spans[2];
    rt_error err;
    if (seqpar_zigzag_spans(owner, P, (size_t)P * Tl, spans, &err)) rt_fatal("seqpar: %s", err.msg);
    run_list list = {.n = 0};
    push_run(&list, 0, spans[0].len, (int64_t)spans[0].start);
    push_run(&list, spans[0].len, spans[1].len, (int64_t)spans[1].start);
    return list;
}

/* The runs of rank owner's rows under a window layout: its pieces, one after another. */
static run_list runs_of_layout(const seqpar_window_layout *layout, int owner) {
    run_list list = {.n = 0};
    const rt_span *pieces = layout->pieces + (size_t)owner * layout->max_pieces;
    size_t row = 0;
    for (size_t i = 0; i < layout->n_pieces[owner]; i++) {
        if (!push_run(&list, row, pieces[i].len, (int64_t)pieces[i].start))
            rt_fatal("seqpar: rank %d holds more than %d pieces of a window", owner, MAX_RUNS);
        row += pieces[i].len;
    }
    return list;
}

/* The runs of sequence b's rows on rank owner of a ring: its zigzag chunks, or its pieces of the layout. */
static run_list runs_in_ring(const seqpar_tokens *tokens, size_t b, int owner, int P) {
    return tokens->layouts ? runs_of_layout(&tokens->layouts[b], owner) : runs_of_owner(owner, P, tokens->Tl);
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

/* The local queries of one sequence: device pointers and their runs. */
typedef struct {
    const float *q;
    const int64_t *pos;        /* device */
    const int64_t *first;      /* device: where each query's document starts; NULL without documents */
    const int64_t *host_first; /* host: the same */
    run_list runs;
} query_set;

/* One sequence's held block of keys/values: device rows at shape.kv_stride, and their runs. */
typedef struct {
    const float *k, *v;
    const int64_t *pos;  /* device positions of the rows; NULL: the runs are consecutive, position p is
                          * key_positions[p] */
    rt_attn_shape shape; /* the caller's, with this block's kv_stride */
    run_list runs;
} held_block;

/* What to do with one (query run, key block) pair: queries [i0, i0 + Tq), keys [j0, j0 + Tk) of the block at
 * device positions k_pos. */
typedef void (*pair_fn)(const seqpar_ctx *ctx, void *arg, const held_block *b, size_t i0, size_t Tq, size_t j0,
                        size_t Tk, const int64_t *k_pos);

/* With documents: the queries of one run (consecutive positions) cut where their document changes; each piece
 * meets only the keys of its block in [its document's first position, its last query's position] (block rows
 * at consecutive positions: trimmed to exactly those; otherwise the whole block, and the kernel masks). */
static void for_each_document_pair(const seqpar_ctx *ctx, const query_set *qs, const pos_run *queries,
                                   const held_block *b, const pos_run *keys, const int64_t *k_pos, pair_fn fn,
                                   void *arg) {
    const size_t end = queries->start + queries->len;
    for (size_t i0 = queries->start; i0 < end;) {
        const int64_t first = qs->host_first[i0];
        size_t i1 = i0 + 1;
        while (i1 < end && qs->host_first[i1] == first)
            i1++;
        const int64_t last = queries->min + (int64_t)(i1 - 1 - queries->start); /* the piece's last query */
        const int64_t lo = keys->min > first ? keys->min : first;
        const int64_t hi = b->shape.causal && keys->max > last ? last : keys->max;
        if (lo <= hi) {
            if (keys->consecutive) {
                const size_t skip = (size_t)(lo - keys->min);
                fn(ctx, arg, b, i0, i1 - i0, keys->start + skip, (size_t)(hi - lo) + 1, k_pos + skip);
            } else {
                fn(ctx, arg, b, i0, i1 - i0, keys->start, keys->len, k_pos);
            }
        }
        i0 = i1;
    }
}

/* Calls fn on every (query run, key block) pair that is not fully masked, in a fixed order. */
static void for_each_pair(const seqpar_ctx *ctx, const query_set *qs, const held_block *b, pair_fn fn, void *arg) {
    for (int kr = 0; kr < b->runs.n; kr++) {
        const pos_run *run = &b->runs.runs[kr];
        const size_t block = ctx->block_size == 0 ? run->len : ctx->block_size;
        for (size_t j0 = run->start; j0 < run->start + run->len; j0 += block) {
            const size_t len = run->start + run->len - j0 < block ? run->start + run->len - j0 : block;
            const pos_run keys = sub_run(run, j0, len);
            const int64_t *k_pos = b->pos ? b->pos + j0 : (const int64_t *)ctx->key_positions + keys.min;
            for (int qr = 0; qr < qs->runs.n; qr++) {
                const pos_run *queries = &qs->runs.runs[qr];
                if (b->shape.causal && keys.min > queries->max) continue; /* every key after every query */
                if (qs->host_first && queries->consecutive)
                    for_each_document_pair(ctx, qs, queries, b, &keys, k_pos, fn, arg);
                else
                    fn(ctx, arg, b, queries->start, queries->len, keys.start, keys.len, k_pos);
            }
        }
    }
}

typedef struct {
    float *out, *lse;
    const query_set *qs;
} forward_args;

static void forward_pair(const seqpar_ctx *ctx, void *arg, const held_block *b, size_t i0, size_t Tq, size_t j0,
                         size_t Tk, const int64_t *k_pos) {
    const forward_args *a = arg;
    const rt_attn_shape *shape = &b->shape;
    rt_be_attn_block_forward(ctx->backend, a->out + i0 * shape->out_stride, a->lse + i0 * (size_t)shape->n_heads,
                             a->qs->q + i0 * shape->q_stride, b->k + j0 * shape->kv_stride,
                             b->v + j0 * shape->kv_stride, a->qs->pos + i0, a->qs->first ? a->qs->first + i0 : NULL,
                             k_pos, Tq, Tk, shape, ctx->attn_workspace, ctx->attn_workspace_bytes);
}

/* Merges the attention of one sequence's local queries onto its held block into (out, lse). */
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
                          size_t Tk, const int64_t *k_pos) {
    const backward_args *a = arg;
    const rt_attn_shape *shape = &b->shape;
    const size_t H = (size_t)shape->n_heads, row = j0 * shape->kv_stride;
    rt_be_attn_block_backward(
        ctx->backend, a->dq + i0 * shape->q_stride, a->dk + row, a->dv + row, a->dout + i0 * shape->out_stride,
        a->qs->q + i0 * shape->q_stride, b->k + row, b->v + row, a->lse + i0 * H, a->delta + i0 * H, a->qs->pos + i0,
        a->qs->first ? a->qs->first + i0 : NULL, k_pos, Tq, Tk, shape, ctx->attn_workspace, ctx->attn_workspace_bytes);
}

/* Adds the gradients through one held block: dq of the local queries, dk/dv (rows at the block's kv_stride). */
static void backward_held(const seqpar_ctx *ctx, float *dq, float *dk, float *dv, const float *dout, const float *lse,
                          const float *delta, const query_set *qs, const held_block *b) {
    backward_args a = {dq, dk, dv, dout, lse, delta, qs};
    for_each_pair(ctx, qs, b, backward_pair, &a);
}

/* out = 0 (the H*D columns of every row) and lse = -inf, through the backend (device memory): LSE_FILL values
 * from the stack, then doubling copies on the device. */
static void init_running(const rt_backend *backend, float *out, float *lse, size_t n, const rt_attn_shape *shape) {
    size_t row_floats = (size_t)shape->n_heads * (size_t)shape->head_dim;
    if (shape->out_stride == row_floats) {
        rt_be_memset_zero(backend, out, n * row_floats * sizeof(float));
    } else {
        for (size_t i = 0; i < n; i++)
            rt_be_memset_zero(backend, out + i * shape->out_stride, row_floats * sizeof(float));
    }
    const size_t n_lse = n * (size_t)shape->n_heads;
    float minus_inf[LSE_FILL];
    for (size_t i = 0; i < LSE_FILL; i++)
        minus_inf[i] = -INFINITY;
    size_t filled = n_lse < LSE_FILL ? n_lse : LSE_FILL;
    rt_be_copy(backend, lse, minus_inf, filled * sizeof(float));
    while (filled < n_lse) {
        const size_t more = n_lse - filled < filled ? n_lse - filled : filled;
        rt_be_copy(backend, lse + filled, lse, more * sizeof(float));
        filled += more;
    }
}

static int ring_size(const seqpar_ctx *ctx) { return ctx->comm == NULL ? 1 : ctx->comm->size; }

/* The local queries of sequence b. Their runs: on one rank from the host positions; in a ring from this rank's
 * spans, which check_ring_call found the positions to be. */
static query_set query_set_of(const seqpar_ctx *ctx, const float *q, const seqpar_tokens *tokens, size_t b,
                              const rt_attn_shape *shape) {
    const size_t row0 = b * tokens->Tl;
    query_set qs = {.q = q + row0 * shape->q_stride, .pos = tokens->pos + row0};
    if (tokens->first) {
        qs.first = tokens->first + row0;
        qs.host_first = tokens->host_first + row0;
    }
    const int P = ring_size(ctx);
    qs.runs =
        P > 1 ? runs_in_ring(tokens, b, ctx->comm->rank, P) : runs_of_positions(tokens->host_pos + row0, tokens->Tl);
    return qs;
}

/* Sequence b's local keys/values, read in place: same positions, so same runs, as its local queries. */
static held_block held_local(const float *k, const float *v, const query_set *qs, size_t b, size_t Tl,
                             const rt_attn_shape *shape) {
    const size_t row0 = b * Tl * shape->kv_stride;
    return (held_block){.k = k + row0, .v = v + row0, .pos = qs->pos, .shape = *shape, .runs = qs->runs};
}

/* ------------------------------------------------------------------ the ring */

static size_t kv_row_floats(const rt_attn_shape *shape) { return (size_t)shape->n_kv_heads * (size_t)shape->head_dim; }

/* Bytes of one ring message of n rows: [K | V] and [dK | dV] alike. */
static size_t kv_message_bytes(size_t n, const rt_attn_shape *shape) {
    return 2 * n * kv_row_floats(shape) * sizeof(float);
}

int seqpar_agree_shapes(seqpar_ctx *ctx, size_t n_seqs, size_t Tl, const rt_attn_shape *shape, rt_error *err) {
    const int P = ring_size(ctx);
    const size_t width = kv_row_floats(shape);
    ctx->group_agreed = 0;
    if (P > 1) {
        /* Host values, so a host-plane communicator of the same ranks: a device plane's collectives take device
         * buffers. */
        rt_comm *host = rt_comm_split(ctx->comm, 0, ctx->comm->rank);
        double extremes[6] = {(double)n_seqs, -(double)n_seqs, (double)Tl, -(double)Tl, (double)width, -(double)width};
        rt_allreduce_max_f64(host, extremes, 6);
        rt_comm_destroy(host);
        if (extremes[0] != -extremes[1] || extremes[2] != -extremes[3] || extremes[4] != -extremes[5])
            return rt_fail(err,
                           "seqpar: the ranks of a sequence-parallel group disagree on the attention shapes: "
                           "sequences %.0f..%.0f (this rank %zu), local tokens %.0f..%.0f (this rank %zu), kv row "
                           "floats %.0f..%.0f (this rank %zu); every rank must hold the same number of tokens of the "
                           "same sequences",
                           -extremes[1], extremes[0], n_seqs, -extremes[3], extremes[2], Tl, -extremes[5], extremes[4],
                           width);
        rt_span spans[2];
        if (Tl > 0 && seqpar_zigzag_spans(ctx->comm->rank, P, (size_t)P * Tl, spans, err)) return -1;
    }
    ctx->group_agreed = 1;
    ctx->group_seqs = n_seqs;
    ctx->group_len = Tl;
    ctx->group_kv_width = width;
    return 0;
}

/* A ring call: the agreed shapes, every rank's share of each sequence Tl rows, and this rank's positions its
 * share (what the peers' runs are derived from). */
static void check_ring_call(const seqpar_ctx *ctx, const seqpar_tokens *tokens, const rt_attn_shape *shape) {
    const int P = ctx->comm->size, r = ctx->comm->rank;
    const size_t Tl = tokens->Tl;
    if (!ctx->group_agreed)
        rt_fatal("seqpar: ring attention over %d ranks before the group agreed on its shapes (seqpar_agree_shapes "
                 "at setup)",
                 P);
    if (tokens->n_seqs != ctx->group_seqs || Tl != ctx->group_len || kv_row_floats(shape) != ctx->group_kv_width)
        rt_fatal("seqpar: a ring attention call of %zu sequences x %zu local tokens (kv rows of %zu floats) on a "
                 "group that agreed on %zu x %zu (%zu) at setup; every rank must call with the agreed shapes",
                 tokens->n_seqs, Tl, kv_row_floats(shape), ctx->group_seqs, ctx->group_len, ctx->group_kv_width);
    if (tokens->n_seqs == 0 || Tl == 0) return;
    for (size_t b = 0; b < tokens->n_seqs; b++) {
        for (int owner = 0; tokens->layouts && owner < P; owner++) {
            const run_list runs = runs_of_layout(&tokens->layouts[b], owner);
            const pos_run *last = runs.n > 0 ? &runs.runs[runs.n - 1] : NULL;
            if (!last || last->start + last->len != Tl || last->max >= (int64_t)(P * Tl))
                rt_fatal("seqpar: sequence %zu's layout gives rank %d other than %zu tokens of [0, %zu)", b, owner, Tl,
                         (size_t)P * Tl);
        }
        const run_list mine = runs_in_ring(tokens, b, r, P);
        for (int k = 0; k < mine.n; k++)
            for (size_t i = mine.runs[k].start; i < mine.runs[k].start + mine.runs[k].len; i++) {
                const int64_t expected = mine.runs[k].min + (int64_t)(i - mine.runs[k].start);
                const int64_t got = tokens->host_pos[b * Tl + i];
                if (got != expected)
                    rt_fatal("seqpar: ring attention over %d ranks needs every sequence's positions to be this rank's "
                             "%s share of %zu tokens: sequence %zu, local token %zu is at position %lld, where rank "
                             "%d holds position %lld",
                             P, tokens->layouts ? "layout's" : "zigzag", (size_t)P * Tl, b, i, (long long)got, r,
                             (long long)expected);
            }
    }
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

/* key_positions for P*Tl keys: 0, 1, ..., filled through the backend POS_CHUNK at a time whenever the buffer is
 * (re)allocated. */
static int try_ensure_key_positions(seqpar_ctx *ctx, size_t n, rt_error *err) {
    const size_t before = ctx->key_positions_bytes;
    if (try_ensure_buffers(ctx, &ctx->key_positions, 1, &ctx->key_positions_bytes, n * sizeof(int64_t),
                           "ring attention key positions", err))
        return -1;
    if (ctx->key_positions_bytes == before) return 0;
    const size_t len = ctx->key_positions_bytes / sizeof(int64_t);
    int64_t chunk[POS_CHUNK];
    for (size_t c0 = 0; c0 < len; c0 += POS_CHUNK) {
        const size_t count = len - c0 < POS_CHUNK ? len - c0 : POS_CHUNK;
        for (size_t c = 0; c < count; c++)
            chunk[c] = (int64_t)(c0 + c);
        rt_be_copy(ctx->backend, (int64_t *)ctx->key_positions + c0, chunk, count * sizeof(int64_t));
    }
    return 0;
}

/* The ring's buffers for calls of n_seqs x Tl: K/V messages, (with_dkv) dK/dV messages, key positions. */
static int try_ensure_ring(seqpar_ctx *ctx, size_t n_seqs, size_t Tl, const rt_attn_shape *shape, int with_dkv,
                           rt_error *err) {
    const size_t bytes = kv_message_bytes(n_seqs * Tl, shape);
    if (try_ensure_buffers(ctx, ctx->kv_ring, 2, &ctx->kv_ring_bytes, bytes, "ring attention K/V blocks", err))
        return -1;
    if (with_dkv &&
        try_ensure_buffers(ctx, ctx->dkv_ring, 3, &ctx->dkv_ring_bytes, bytes, "ring attention dK/dV blocks", err))
        return -1;
    return try_ensure_key_positions(ctx, (size_t)ring_size(ctx) * Tl, err);
}

/* The backend's attention workspace for local sequences of up to Tl tokens (queries and every key block). */
static size_t workspace_bytes_for(const seqpar_ctx *ctx, size_t Tl, const rt_attn_shape *shape) {
    return rt_be_attn_workspace_bytes(ctx->backend, Tl, Tl, shape);
}

/* The buffers of a call, inside a step, where a refusal can only end the job (seqpar_reserve avoids it). */
static void ensure_call_buffers(seqpar_ctx *ctx, size_t n_seqs, size_t Tl, const rt_attn_shape *shape, int with_dkv) {
    rt_error err;
    if (try_ensure_buffers(ctx, &ctx->attn_workspace, 1, &ctx->attn_workspace_bytes,
                           workspace_bytes_for(ctx, Tl, shape), "attention workspace", &err) ||
        (ring_size(ctx) > 1 && try_ensure_ring(ctx, n_seqs, Tl, shape, with_dkv, &err)))
        rt_fatal("%s", err.msg);
}

int seqpar_reserve(seqpar_ctx *ctx, size_t n_seqs, size_t Tl, const rt_attn_shape *shape, rt_error *err) {
    if (n_seqs == 0 || Tl == 0) return 0;
    if (try_ensure_buffers(ctx, &ctx->attn_workspace, 1, &ctx->attn_workspace_bytes,
                           workspace_bytes_for(ctx, Tl, shape), "attention workspace", err))
        return -1;
    if (ring_size(ctx) <= 1) return 0;
    return try_ensure_ring(ctx, n_seqs, Tl, shape, 1, err);
}

void seqpar_ctx_free(seqpar_ctx *ctx) {
    void **buffers[] = {&ctx->attn_workspace, &ctx->kv_ring[0],  &ctx->kv_ring[1],   &ctx->dkv_ring[0],
                        &ctx->dkv_ring[1],    &ctx->dkv_ring[2], &ctx->key_positions};
    for (size_t i = 0; i < sizeof buffers / sizeof buffers[0]; i++) {
        if (*buffers[i]) rt_device_free(ctx->mem, *buffers[i]);
        *buffers[i] = NULL;
    }
    ctx->attn_workspace_bytes = ctx->kv_ring_bytes = ctx->dkv_ring_bytes = ctx->key_positions_bytes = 0;
}

/* Copies n rows of width floats at src_stride into rows at dst_stride (device to device). */
static void copy_rows(const rt_backend *backend, float *dst, size_t dst_stride, const float *src, size_t src_stride,
                      size_t n, size_t width) {
    if (dst_stride == width && src_stride == width) {
        rt_be_copy(backend, dst, src, n * width * sizeof(float));
        return;
    }
    for (size_t i = 0; i < n; i++)
        rt_be_copy(backend, dst + i * dst_stride, src + i * src_stride, width * sizeof(float));
}

/* dst rows (at dst_stride) += src rows (packed, width floats). */
static void add_rows(const rt_backend *backend, float *dst, size_t dst_stride, const float *src, size_t n,
                     size_t width) {
    if (dst_stride == width) {
        rt_be_add(backend, dst, dst, src, n * width);
        return;
    }
    for (size_t i = 0; i < n; i++)
        rt_be_add(backend, dst + i * dst_stride, dst + i * dst_stride, src + i * width, width);
}

/* Views of a ring message of n rows: [K | V] (or [dK | dV]), each (n, W). */
static float *message_k(void *message) { return (float *)message; }
static float *message_v(void *message, size_t n, const rt_attn_shape *shape) {
    return (float *)message + n * kv_row_floats(shape);
}

/* The local K/V of every sequence (n rows) into one message. */
static void pack_kv(const rt_backend *backend, void *message, const float *k, const float *v, size_t n,
                    const rt_attn_shape *shape) {
    const size_t width = kv_row_floats(shape);
    copy_rows(backend, message_k(message), width, k, shape->kv_stride, n, width);
    copy_rows(backend, message_v(message, n, shape), width, v, shape->kv_stride, n, width);
}

/* Sequence b of a received message (B sequences of Tl rows) from rank owner. */
static held_block held_received(const seqpar_ctx *ctx, void *message, size_t b, const seqpar_tokens *tokens, int owner,
                                const rt_attn_shape *shape) {
    const size_t width = kv_row_floats(shape), n = tokens->n_seqs * tokens->Tl, row0 = b * tokens->Tl * width;
    held_block held = {.k = message_k(message) + row0, .v = message_v(message, n, shape) + row0, .shape = *shape};
    held.shape.kv_stride = width;
    held.runs = runs_in_ring(tokens, b, owner, ring_size(ctx));
    return held;
}

/* Rank whose K/V this rank holds at step s. */
static int owner_at(const seqpar_ctx *ctx, int s) { return (ctx->comm->rank + ctx->comm->size - s) % ctx->comm->size; }

/* ------------------------------------------------------------------ forward and backward */

void seqpar_attention_forward(seqpar_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                              const seqpar_tokens *tokens, const rt_attn_shape *shape) {
    const int P = ring_size(ctx);
    if (P > 1) check_ring_call(ctx, tokens, shape);
    const size_t B = tokens->n_seqs, Tl = tokens->Tl, n = B * Tl, H = (size_t)shape->n_heads;
    if (n == 0) return;
    const rt_backend *backend = ctx->backend;
    init_running(backend, out, lse, n, shape);
    ensure_call_buffers(ctx, B, Tl, shape, 0);
    const size_t bytes = kv_message_bytes(n, shape);
    seqpar_ring_comm kv_hop = {0};
    if (P > 1) {
        seqpar_ring_comm_init(&kv_hop, ctx->comm, TAG_KV);
        pack_kv(backend, ctx->kv_ring[0], k, v, n, shape);
    }
    for (int s = 0; s < P; s++) {
        void *held = ctx->kv_ring[s % 2];
        /* the held block goes on to r+1 and the next one comes from r-1 while we compute on the held one */
        if (s + 1 < P) seqpar_ring_comm_post(&kv_hop, held, ctx->kv_ring[(s + 1) % 2], bytes);
        for (size_t b = 0; b < B; b++) {
            const query_set qs = query_set_of(ctx, q, tokens, b, shape);
            /* step 0: the local keys, read in place; then the received copies */
            const held_block kv = s == 0 ? held_local(k, v, &qs, b, Tl, shape)
                                         : held_received(ctx, held, b, tokens, owner_at(ctx, s), shape);
            forward_held(ctx, out + b * Tl * shape->out_stride, lse + b * Tl * H, &qs, &kv);
        }
        if (s + 1 < P) {
            seqpar_ring_comm_wait(&kv_hop);
            ctx->kv_blocks_received++;
        }
    }
    if (P > 1) ctx->comm_exposed_s += kv_hop.waited_s;
}

void seqpar_attention_backward(seqpar_ctx *ctx, float *dq, float *dk, float *dv, float *delta, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k, const float *v,
                               const seqpar_tokens *tokens, const rt_attn_shape *shape) {
    const int P = ring_size(ctx);
    if (P > 1) check_ring_call(ctx, tokens, shape);
    const size_t B = tokens->n_seqs, Tl = tokens->Tl, n = B * Tl, H = (size_t)shape->n_heads;
    if (n == 0) return;
    const rt_backend *backend = ctx->backend;
    rt_be_attn_delta(backend, delta, out, dout, n, shape);
    ensure_call_buffers(ctx, B, Tl, shape, 1);
    const size_t bytes = kv_message_bytes(n, shape), width = kv_row_floats(shape);
    /* two rings: K/V blocks as in forward, and the dK/dV accumulators one step behind */
    seqpar_ring_comm kv_hop = {0}, dkv_hop = {0};
    if (P > 1) {
        seqpar_ring_comm_init(&kv_hop, ctx->comm, TAG_KV);
        seqpar_ring_comm_init(&dkv_hop, ctx->comm, TAG_DKV);
        pack_kv(backend, ctx->kv_ring[0], k, v, n, shape);
    }
    /* dkv_ring: two partials and one receive slot, each [dK (n, W) | dV (n, W)] */
    float *partial[2] = {ctx->dkv_ring[0], ctx->dkv_ring[1]}, *received = ctx->dkv_ring[2];
    for (int s = 0; s < P; s++) {
        void *held = ctx->kv_ring[s % 2];
        /* the held block goes on to r+1 and the next one comes from r-1 while we compute on the held one */
        if (s + 1 < P) seqpar_ring_comm_post(&kv_hop, held, ctx->kv_ring[(s + 1) % 2], bytes);
        if (s >= 1) rt_be_memset_zero(backend, partial[s % 2], bytes);
        for (size_t b = 0; b < B; b++) {
            const size_t row0 = b * Tl;
            const query_set qs = query_set_of(ctx, q, tokens, b, shape);
            float *dq_seq = dq + row0 * shape->q_stride;
            const float *dout_seq = dout + row0 * shape->out_stride, *lse_seq = lse + row0 * H;
            const float *delta_seq = delta + row0 * H;
            if (s == 0) {
                /* the local keys: their gradients go straight into the caller's dk, dv */
                const held_block kv = held_local(k, v, &qs, b, Tl, shape);
                const size_t kv_row0 = row0 * shape->kv_stride;
                backward_held(ctx, dq_seq, dk + kv_row0, dv + kv_row0, dout_seq, lse_seq, delta_seq, &qs, &kv);
            } else {
                const held_block kv = held_received(ctx, held, b, tokens, owner_at(ctx, s), shape);
                float *dk_seq = partial[s % 2] + row0 * width, *dv_seq = partial[s % 2] + (n + row0) * width;
                backward_held(ctx, dq_seq, dk_seq, dv_seq, dout_seq, lse_seq, delta_seq, &qs, &kv);
            }
        }
        if (s + 1 < P) {
            seqpar_ring_comm_wait(&kv_hop);
            ctx->kv_blocks_received++;
        }
        if (s >= 2) {
            /* the block's accumulator from r-1 (posted last step) is in, and our partial of last step is sent */
            seqpar_ring_comm_wait(&dkv_hop);
            ctx->dkv_blocks_received++;
            rt_be_add(backend, partial[s % 2], partial[s % 2], received, 2 * n * width);
        }
        if (s >= 1) {
            /* The sum goes on to r+1, and the accumulator r-1 sends at the end of its step s, as we do, comes in:
             * added at step s+1, or this rank's own after the last step. Posted once the slot's last one is
             * added, so one slot serves; it moves during the next step's compute. */
            seqpar_ring_comm_post(&dkv_hop, partial[s % 2], received, bytes);
        }
    }
    if (P > 1) {
        /* this rank's own accumulators, back after P-1 hops */
        seqpar_ring_comm_wait(&dkv_hop);
        ctx->dkv_blocks_received++;
        add_rows(backend, dk, shape->kv_stride, received, n, width);
        add_rows(backend, dv, shape->kv_stride, received + n * width, n, width);
        ctx->comm_exposed_s += kv_hop.waited_s + dkv_hop.waited_s;
    }
}
