/* backend_cpu_attention.c: blocked (flash-style) attention on the CPU: block forward with log-sigmoid merge, backward.
 */
#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu_internal.h"
#include "runtime/core/common.h"

/*
 * Conventions: Tq query tokens, Tk key tokens of one block, H query heads,
 * Hkv key/value heads, D head dim, G = H / Hkv query heads per kv head.
 * q (Tq rows at q_stride) holds head h at columns [h*D, (h+1)*D); k and v
 * (Tk rows at kv_stride) hold kv head g at [g*D, (g+1)*D); out (Tq rows at
 * out_stride) like q; lse, delta (Tq, H) contiguous.
 *
 * Forward of one block. Every (query head, query tile of Q_TILE rows) is
 * one task. A task walks the key tiles (K_TILE rows) with the online
 * softmax: S = scale * Q K^T by sgemm, running max m and sum l per row,
 * acc = sum_j exp(S_j - m) V_j by sgemm. At the end the block's partial
 * result out_b = acc / l, lse_b = m + log l is merged into the running
 * (out, lse) of the caller:
 *     out = out - sigmoid(lse_b - lse) * (out - out_b)
 *     lse = lse - logsigmoid(lse - lse_b)
 * which never forms exp of a large number. A running lse of -inf (first
 * block) takes the partial as is; a row that sees no key of this block
 * (l = 0) is left untouched. Scratch is O(Q_TILE * K_TILE) per thread.
 *
 * Masking uses positions only: key j is hidden from query i when
 * k_pos[j] > q_pos[i] (causal) or, with documents (q_first not NULL),
 * k_pos[j] < q_first[i]. A key tile whose smallest position is beyond the
 * largest query position of a query tile is skipped, and so is one whose
 * largest position is before the smallest q_first of the query tile; a
 * key tile whose largest position is at most the smallest query position
 * (and whose smallest is at least the largest q_first) needs no
 * per-element mask. Positions need not be contiguous or sorted for
 * correctness; sorted contiguous positions (the usual case) make the
 * skipping effective. Without documents the tiles take exactly the causal
 * path (same arithmetic, same bits); the only extra work with q_first ==
 * NULL is one test per key tile.
 *
 * Backward of one block, with the final lse and delta = rowsum(dO * O):
 *     P = exp(scale * Q K^T - lse),  dP = dO V^T,  dS = P * (dP - delta)
 *     dV += P^T dO,  dQ += scale * dS K,  dK += scale * dS^T Q
 * all by sgemm on tiles. dQ rows belong to one (query head, query tile);
 * dK/dV rows of a kv head collect from every query tile of its G heads.
 * Two schedules, both deterministic for a fixed thread count:
 *   - Hkv a multiple of the thread count (MHA, or one thread): each thread
 *     owns whole kv heads and writes dK/dV (and the dQ of that kv head's
 *     query heads) directly; no reduction.
 *   - otherwise, one kv head at a time: the (query head, query tile)
 *     tasks are dealt round-robin (static schedule) to the threads, each
 *     accumulating dK/dV into its own Tk x D buffers, which are then added
 *     into dk/dv in thread order.
 *
 * The tile sgemms run inside the OpenMP team, where the OpenMP build of
 * OpenBLAS (the one CMake links) runs each call on the calling thread: the
 * team already fills the cores and each sgemm is one tile.
 *
 * Workspace. The ops allocate nothing: every call carves its scratch out of
 * the caller's workspace (reserved once at setup, see seqpar_reserve),
 * laid out as
 *     [k_tile_range (n_k_tiles) | thread 0 | thread 1 | ... | thread n-1]
 * with n = omp_get_max_threads() at the call. A thread's part serves the
 * forward as [scores (Q_TILE, K_TILE) | acc (Q_TILE, D) | row max, row sum
 * (Q_TILE each)] and the backward as [probs, dprobs (Q_TILE, K_TILE) each |
 * dK, dV partials (Tk, D) each, only in the one-kv-head-at-a-time
 * schedule]. Every piece starts at a multiple of WS_ALIGN bytes. The
 * partials grow with Tk and the thread count: they are most of the
 * workspace at long sequences. ws_layout_of is the one place that sizes
 * this; rt_cpu_attn_workspace_bytes reports its total for the largest call.
 */

enum { Q_TILE = 64, K_TILE = 128, WS_ALIGN = 64 };

/* The per-tile loops (exp, masking, scaling) are compiled for AVX-512 and AVX2 as well as the baseline, picked
 * at load time (RT_CPU_CLONES, GCC function multiversioning); about 25% off the forward and 15% off the backward
 * on an AVX-512 machine. Results are bitwise reproducible on a given machine, not across instruction sets. Their
 * helpers are RT_CPU_INLINE, so they compile into each clone. */

typedef struct {
    int64_t min, max;
} pos_range;

/* Everything a tile needs: the call's arguments, unpacked once. */
typedef struct {
    size_t Tq, Tk;
    int H, Hkv, D, group; /* group = H / Hkv */
    size_t q_stride, kv_stride, out_stride;
    int causal;
    float scale;
    const int64_t *q_pos, *k_pos;
    const int64_t *q_first; /* NULL: no document mask */
    size_t n_q_tiles, n_k_tiles;
    pos_range *k_tile_range; /* (n_k_tiles) min/max key position of each key tile, in the workspace */
} attn_dims;

static size_t round_up(size_t bytes) { return (bytes + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN; }

/* Byte sizes of the workspace pieces of one call (see the top of the file). */
typedef struct {
    size_t range_bytes;  /* k_tile_range */
    size_t fwd_bytes;    /* scores, acc, row max, row sum: the start of a thread's part in the forward */
    size_t tile_bytes;   /* probs, dprobs: the start of a thread's part in the backward */
    size_t part_bytes;   /* one (Tk, D) partial (dK or dV), 0 when the backward schedule needs none */
    size_t thread_bytes; /* one thread's part: the larger of forward and backward */
    int n_threads;
    size_t total;
} ws_layout;

/* Backward schedule: kv heads per thread when they divide evenly, otherwise one kv head at a time with
 * per-thread partials. */
static int uses_partials(int Hkv, int n_threads) { return Hkv % n_threads != 0; }

static ws_layout ws_layout_of(size_t Tk, int Hkv, int D, int n_threads) {
    ws_layout w;
    const size_t f = sizeof(float), tile = (size_t)Q_TILE * K_TILE * f;
    w.n_threads = n_threads;
    w.range_bytes = round_up((Tk + K_TILE - 1) / K_TILE * sizeof(pos_range));
    w.fwd_bytes = round_up(tile) + round_up((size_t)Q_TILE * (size_t)D * f) + 2 * round_up(Q_TILE * f);
    w.tile_bytes = round_up(tile);
    w.part_bytes = uses_partials(Hkv, n_threads) ? round_up(Tk * (size_t)D * f) : 0;
    const size_t bwd_bytes = 2 * w.tile_bytes + 2 * w.part_bytes;
    w.thread_bytes = w.fwd_bytes > bwd_bytes ? w.fwd_bytes : bwd_bytes;
    w.total = w.range_bytes + (size_t)n_threads * w.thread_bytes;
    return w;
}

static void check_heads(const rt_attn_shape *shape) {
    if (shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->head_dim <= 0 ||
        shape->n_heads % shape->n_kv_heads != 0)
        rt_fatal("attention: bad heads: n_heads %d, n_kv_heads %d, head_dim %d (need n_heads %% n_kv_heads == 0)",
                 shape->n_heads, shape->n_kv_heads, shape->head_dim);
}

size_t rt_cpu_attn_workspace_bytes(CPU_BE, size_t max_Tq, size_t max_Tk, const rt_attn_shape *shape) {
    (void)max_Tq; /* query tiles are processed one per thread at a time: nothing grows with Tq */
    check_heads(shape);
    return ws_layout_of(max_Tk, shape->n_kv_heads, shape->head_dim, omp_get_max_threads()).total;
}

/* The layout of this call, checked against the caller's workspace (too small or misaligned is a programming
 * error: the caller sized it at setup for smaller maxima or fewer threads). */
static ws_layout ws_check(const char *op, size_t Tq, size_t Tk, const rt_attn_shape *shape, const void *workspace,
                          size_t workspace_bytes) {
    check_heads(shape);
    const ws_layout w = ws_layout_of(Tk, shape->n_kv_heads, shape->head_dim, omp_get_max_threads());
    if (workspace_bytes < w.total || workspace == NULL)
        rt_fatal("%s: the attention workspace holds %zu bytes, this call needs %zu (Tq %zu, Tk %zu, n_kv_heads %d, "
                 "head_dim %d, %d threads); reserve attn_workspace_bytes for the largest call at setup, with the "
                 "thread count the ops run with",
                 op, workspace ? workspace_bytes : 0, w.total, Tq, Tk, shape->n_kv_heads, shape->head_dim, w.n_threads);
    if ((uintptr_t)workspace % WS_ALIGN != 0)
        rt_fatal("%s: the attention workspace %p is not aligned to %d bytes", op, workspace, (int)WS_ALIGN);
    return w;
}

/* Thread tid's part of the workspace. */
static unsigned char *ws_thread(void *workspace, const ws_layout *w, int tid) {
    return (unsigned char *)workspace + w->range_bytes + (size_t)tid * w->thread_bytes;
}

static pos_range range_of(const int64_t *pos, size_t n) {
    pos_range r = {pos[0], pos[0]};
    for (size_t i = 1; i < n; i++) {
        if (pos[i] < r.min) r.min = pos[i];
        if (pos[i] > r.max) r.max = pos[i];
    }
    return r;
}

/* Unpacks the call; k_tile_range goes to the start of the (checked) workspace. */
static attn_dims dims_make(const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq, size_t Tk,
                           const rt_attn_shape *shape, void *workspace) {
    attn_dims d;
    d.Tq = Tq;
    d.Tk = Tk;
    d.H = shape->n_heads;
    d.Hkv = shape->n_kv_heads;
    d.D = shape->head_dim;
    d.group = d.H / d.Hkv;
    d.q_stride = shape->q_stride;
    d.kv_stride = shape->kv_stride;
    d.out_stride = shape->out_stride;
    d.causal = shape->causal;
    d.scale = 1.0f / sqrtf((float)d.D);
    d.q_pos = q_pos;
    d.k_pos = k_pos;
    d.q_first = q_first;
    d.n_q_tiles = (Tq + Q_TILE - 1) / Q_TILE;
    d.n_k_tiles = (Tk + K_TILE - 1) / K_TILE;
    d.k_tile_range = workspace;
    for (size_t kt = 0; kt < d.n_k_tiles; kt++) {
        size_t j0 = kt * K_TILE, nk = Tk - j0 < K_TILE ? Tk - j0 : K_TILE;
        d.k_tile_range[kt] = range_of(k_pos + j0, nk);
    }
    return d;
}

/* Sets to -inf the scores of keys hidden from their query (only for tiles that straddle the diagonal). */
static RT_CPU_INLINE void mask_scores(float *S, size_t nq, size_t nk, const int64_t *q_pos, const int64_t *k_pos) {
    for (size_t r = 0; r < nq; r++) {
        int64_t qp = q_pos[r];
        float *s = S + r * nk;
        for (size_t c = 0; c < nk; c++)
            s[c] = k_pos[c] > qp ? -INFINITY : s[c];
    }
}

/* The same with documents: also hides keys before the query's document (k_pos < q_first); q_pos NULL when not
 * causal (no upper bound). */
static RT_CPU_INLINE void mask_scores_doc(float *S, size_t nq, size_t nk, const int64_t *q_pos, const int64_t *q_first,
                                          const int64_t *k_pos) {
    for (size_t r = 0; r < nq; r++) {
        const int64_t hi = q_pos ? q_pos[r] : INT64_MAX, lo = q_first[r];
        float *s = S + r * nk;
        for (size_t c = 0; c < nk; c++)
            s[c] = k_pos[c] > hi || k_pos[c] < lo ? -INFINITY : s[c];
    }
}

/* What the skipping and masking of a query tile's key tiles need. */
typedef struct {
    pos_range q;     /* positions of the query tile */
    pos_range first; /* q_first of the query tile (only with documents) */
    int docs;        /* q_first != NULL */
} q_tile_bounds;

static RT_CPU_INLINE q_tile_bounds q_tile_bounds_of(const attn_dims *d, size_t i0, size_t nq) {
    q_tile_bounds b;
    b.q = range_of(d->q_pos + i0, nq);
    b.docs = d->q_first != NULL;
    b.first = b.docs ? range_of(d->q_first + i0, nq) : (pos_range){INT64_MIN, INT64_MIN};
    return b;
}

/* No query of the tile sees any key of the key tile: every key is in every query's future (causal), or before
 * every query's document. */
static RT_CPU_INLINE int tile_hidden(const attn_dims *d, const q_tile_bounds *b, pos_range kr) {
    return (d->causal && kr.min > b->q.max) || (b->docs && kr.max < b->first.min);
}

/* Masks the scores S (nq, nk) of query rows [i0, i0+nq) against keys [j0, j0+nk) where some pair may be hidden. */
static RT_CPU_INLINE void mask_tile(const attn_dims *d, const q_tile_bounds *b, pos_range kr, float *S, size_t i0,
                                    size_t nq, size_t j0, size_t nk) {
    const int causal_straddles = d->causal && kr.max > b->q.min;
    if (!b->docs) {
        if (causal_straddles) mask_scores(S, nq, nk, d->q_pos + i0, d->k_pos + j0);
    } else if (causal_straddles || kr.min < b->first.max) {
        mask_scores_doc(S, nq, nk, d->causal ? d->q_pos + i0 : NULL, d->q_first + i0, d->k_pos + j0);
    }
}

/* ------------------------------------------------------------------ forward */

/* Per-thread scratch of the forward. */
typedef struct {
    float *scores; /* (Q_TILE, K_TILE) S, then P */
    float *acc;    /* (Q_TILE, D) unnormalized output */
    float *row_max, *row_sum;
} fwd_scratch;

/* Online softmax over the key tiles of the block for query head h, rows [i0, i0+nq); then merges into out/lse. */
RT_CPU_CLONES static void forward_task(const attn_dims *d, fwd_scratch *ws, float *out, float *lse, const float *q,
                                       const float *k, const float *v, int h, size_t i0, size_t nq) {
    const int D = d->D;
    const size_t kvh = (size_t)(h / d->group);
    const float *q_tile = q + i0 * d->q_stride + (size_t)h * D;
    const q_tile_bounds qb = q_tile_bounds_of(d, i0, nq);
    float *acc = ws->acc, *m = ws->row_max, *l = ws->row_sum;
    memset(acc, 0, nq * (size_t)D * sizeof(float));
    for (size_t r = 0; r < nq; r++)
        m[r] = -INFINITY, l[r] = 0.0f;

    for (size_t kt = 0; kt < d->n_k_tiles; kt++) {
        const pos_range kr = d->k_tile_range[kt];
        if (tile_hidden(d, &qb, kr)) continue; /* no query of the tile sees any of its keys */
        const size_t j0 = kt * K_TILE, nk = d->Tk - j0 < K_TILE ? d->Tk - j0 : K_TILE;
        const float *k_tile = k + j0 * d->kv_stride + kvh * D;
        const float *v_tile = v + j0 * d->kv_stride + kvh * D;
        float *S = ws->scores;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, D, d->scale, q_tile, (int)d->q_stride,
                    k_tile, (int)d->kv_stride, 0.0f, S, (int)nk);
        mask_tile(d, &qb, kr, S, i0, nq, j0, nk);
        int any_visible = 0;
        for (size_t r = 0; r < nq; r++) {
            float *s = S + r * nk;
            float tile_max = -INFINITY;
#pragma omp simd reduction(max : tile_max)
            for (size_t c = 0; c < nk; c++)
                tile_max = s[c] > tile_max ? s[c] : tile_max;
            const float new_max = tile_max > m[r] ? tile_max : m[r];
            if (new_max == -INFINITY) { /* nothing visible to this row yet: contributes zeros */
                memset(s, 0, nk * sizeof(float));
                continue;
            }
            any_visible = 1;
            const float floor = new_max - RT_CPU_EXP_FLOOR;
            float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
            for (size_t c = 0; c < nk; c++) {
                float p = rt_cpu_exp_approx((s[c] < floor ? floor : s[c]) - new_max);
                s[c] = p;
                sum += p;
            }
            if (new_max != m[r]) {
                const float alpha = expf(m[r] - new_max); /* 0 when m was -inf */
                float *a = acc + r * D;
                for (int c = 0; c < D; c++)
                    a[c] *= alpha;
                l[r] *= alpha;
                m[r] = new_max;
            }
            l[r] += sum;
        }
        if (!any_visible) continue;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, D, (int)nk, 1.0f, S, (int)nk, v_tile,
                    (int)d->kv_stride, 1.0f, acc, D);
    }

    /* merge the block's (acc / l, m + log l) into the running (out, lse) */
    for (size_t r = 0; r < nq; r++) {
        if (!(l[r] > 0.0f)) continue; /* no visible key in this block */
        const float inv_l = 1.0f / l[r];
        const float *a = acc + r * D;
        float *o = out + (i0 + r) * d->out_stride + (size_t)h * D;
        float *L = lse + (i0 + r) * (size_t)d->H + h;
        const double lse_b = (double)m[r] + log((double)l[r]);
        if (*L == -INFINITY) {
            for (int c = 0; c < D; c++)
                o[c] = a[c] * inv_l;
            *L = (float)lse_b;
            continue;
        }
        const double x = lse_b - (double)*L; /* weight of the block: sigmoid(x) */
        const double w = x >= 0.0 ? 1.0 / (1.0 + exp(-x)) : exp(x) / (1.0 + exp(x));
        const double log_sigmoid_neg_x = x <= 0.0 ? -log1p(exp(x)) : -x - log1p(exp(-x)); /* logsigmoid(lse - lse_b) */
        const float wf = (float)w;
        for (int c = 0; c < D; c++)
            o[c] = o[c] - wf * (o[c] - a[c] * inv_l);
        *L = (float)((double)*L - log_sigmoid_neg_x);
    }
}

void rt_cpu_attn_block_forward(CPU_BE, float *out, float *lse, const float *q, const float *k, const float *v,
                               const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq, size_t Tk,
                               const rt_attn_shape *shape, void *workspace, size_t workspace_bytes) {
    if (Tq == 0 || Tk == 0) return;
    const ws_layout w = ws_check("attn_block_forward", Tq, Tk, shape, workspace, workspace_bytes);
    attn_dims d = dims_make(q_pos, q_first, k_pos, Tq, Tk, shape, workspace);
    /* Tasks are independent (each writes its own rows of out/lse), so a dynamic schedule keeps the result
     * deterministic; the tiles with the most keys (last query tiles, when causal) are dealt first. */
    const size_t n_tasks = d.n_q_tiles * (size_t)d.H;
#pragma omp parallel num_threads(w.n_threads)
    {
        unsigned char *mine = ws_thread(workspace, &w, omp_get_thread_num());
        fwd_scratch ws;
        ws.scores = (float *)mine;
        ws.acc = (float *)(mine + round_up((size_t)Q_TILE * K_TILE * sizeof(float)));
        ws.row_max = (float *)(mine + w.fwd_bytes - 2 * round_up(Q_TILE * sizeof(float)));
        ws.row_sum = (float *)(mine + w.fwd_bytes - round_up(Q_TILE * sizeof(float)));
#pragma omp for schedule(dynamic, 1)
        for (size_t t = 0; t < n_tasks; t++) {
            const size_t qt = d.n_q_tiles - 1 - t / (size_t)d.H;
            const int h = (int)(t % (size_t)d.H);
            const size_t i0 = qt * Q_TILE, nq = Tq - i0 < Q_TILE ? Tq - i0 : Q_TILE;
            forward_task(&d, &ws, out, lse, q, k, v, h, i0, nq);
        }
    }
}

/* ------------------------------------------------------------------ delta */

void rt_cpu_attn_delta(CPU_BE, float *delta, const float *out, const float *dout, size_t Tq,
                       const rt_attn_shape *shape) {
    const int H = shape->n_heads, D = shape->head_dim;
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < Tq; i++) {
        for (int h = 0; h < H; h++) {
            const float *o = out + i * shape->out_stride + (size_t)h * D;
            const float *g = dout + i * shape->out_stride + (size_t)h * D;
            double sum = 0.0;
            for (int c = 0; c < D; c++)
                sum += (double)o[c] * (double)g[c];
            delta[i * (size_t)H + h] = (float)sum;
        }
    }
}

/* ------------------------------------------------------------------ backward */

/* Per-thread scratch of the backward. */
typedef struct {
    float *probs;  /* (Q_TILE, K_TILE) S, then P */
    float *dprobs; /* (Q_TILE, K_TILE) dP, then scale * dS */
} bwd_scratch;

/* Where a task's dK/dV rows go: the gradients themselves, or a thread's private (Tk, D) buffers. */
typedef struct {
    float *dk, *dv; /* row 0 of the block, this kv head's columns */
    size_t ld;      /* floats between rows */
} dkv_target;

/* Backward of query head h, rows [i0, i0+nq), against every key tile of the block. */
RT_CPU_CLONES static void backward_task(const attn_dims *d, bwd_scratch *ws, float *dq, dkv_target dkv,
                                        const float *dout, const float *q, const float *k, const float *v,
                                        const float *lse, const float *delta, int h, size_t i0, size_t nq) {
    const int D = d->D;
    const size_t kvh = (size_t)(h / d->group);
    const float *q_tile = q + i0 * d->q_stride + (size_t)h * D;
    const float *dout_tile = dout + i0 * d->out_stride + (size_t)h * D;
    float *dq_tile = dq + i0 * d->q_stride + (size_t)h * D;
    const q_tile_bounds qb = q_tile_bounds_of(d, i0, nq);

    for (size_t kt = 0; kt < d->n_k_tiles; kt++) {
        const pos_range kr = d->k_tile_range[kt];
        if (tile_hidden(d, &qb, kr)) continue;
        const size_t j0 = kt * K_TILE, nk = d->Tk - j0 < K_TILE ? d->Tk - j0 : K_TILE;
        const float *k_tile = k + j0 * d->kv_stride + kvh * D;
        const float *v_tile = v + j0 * d->kv_stride + kvh * D;
        float *P = ws->probs, *dS = ws->dprobs;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, D, d->scale, q_tile, (int)d->q_stride,
                    k_tile, (int)d->kv_stride, 0.0f, P, (int)nk);
        mask_tile(d, &qb, kr, P, i0, nq, j0, nk);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, (int)nq, (int)nk, D, 1.0f, dout_tile, (int)d->out_stride,
                    v_tile, (int)d->kv_stride, 0.0f, dS, (int)nk);
        for (size_t r = 0; r < nq; r++) {
            float *p = P + r * nk, *ds = dS + r * nk;
            const float row_lse = lse[(i0 + r) * (size_t)d->H + h];
            const float row_delta = delta[(i0 + r) * (size_t)d->H + h];
            if (row_lse == -INFINITY) { /* the query sees no key at all */
                memset(p, 0, nk * sizeof(float));
                memset(ds, 0, nk * sizeof(float));
                continue;
            }
            const float scale = d->scale, floor = row_lse - RT_CPU_EXP_FLOOR;
#pragma omp simd
            for (size_t c = 0; c < nk; c++) {
                float pc = rt_cpu_exp_approx((p[c] < floor ? floor : p[c]) - row_lse);
                p[c] = pc;
                ds[c] = pc * (ds[c] - row_delta) * scale;
            }
        }
        float *dk_tile = dkv.dk + j0 * dkv.ld, *dv_tile = dkv.dv + j0 * dkv.ld;
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, D, (int)nq, 1.0f, P, (int)nk, dout_tile,
                    (int)d->out_stride, 1.0f, dv_tile, (int)dkv.ld);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, (int)nq, D, (int)nk, 1.0f, dS, (int)nk, k_tile,
                    (int)d->kv_stride, 1.0f, dq_tile, (int)d->q_stride);
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, (int)nk, D, (int)nq, 1.0f, dS, (int)nk, q_tile,
                    (int)d->q_stride, 1.0f, dk_tile, (int)dkv.ld);
    }
}

/* Thread tid's backward part of the workspace: [probs | dprobs | dK partial | dV partial] (partials only in the
 * one-kv-head-at-a-time schedule). */
static bwd_scratch bwd_scratch_of(void *workspace, const ws_layout *w, int tid) {
    unsigned char *mine = ws_thread(workspace, w, tid);
    return (bwd_scratch){(float *)mine, (float *)(mine + w->tile_bytes)};
}
static float *dk_partial_of(void *workspace, const ws_layout *w, int tid) {
    return (float *)(ws_thread(workspace, w, tid) + 2 * w->tile_bytes);
}
static float *dv_partial_of(void *workspace, const ws_layout *w, int tid) {
    return (float *)(ws_thread(workspace, w, tid) + 2 * w->tile_bytes + w->part_bytes);
}

void rt_cpu_attn_block_backward(CPU_BE, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *k, const float *v, const float *lse, const float *delta,
                                const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq,
                                size_t Tk, const rt_attn_shape *shape, void *workspace, size_t workspace_bytes) {
    if (Tq == 0 || Tk == 0) return;
    const ws_layout w = ws_check("attn_block_backward", Tq, Tk, shape, workspace, workspace_bytes);
    attn_dims d = dims_make(q_pos, q_first, k_pos, Tq, Tk, shape, workspace);
    const int n_threads = w.n_threads;
    const size_t D = (size_t)d.D;

    if (!uses_partials(d.Hkv, n_threads)) {
        /* each thread owns whole kv heads: their dK/dV and the dQ of their query heads */
#pragma omp parallel num_threads(n_threads)
        {
            bwd_scratch ws = bwd_scratch_of(workspace, &w, omp_get_thread_num());
#pragma omp for schedule(static)
            for (int kvh = 0; kvh < d.Hkv; kvh++) {
                dkv_target dkv = {dk + (size_t)kvh * D, dv + (size_t)kvh * D, d.kv_stride};
                for (int g = 0; g < d.group; g++)
                    for (size_t qt = 0; qt < d.n_q_tiles; qt++) {
                        const size_t i0 = qt * Q_TILE, nq = Tq - i0 < Q_TILE ? Tq - i0 : Q_TILE;
                        backward_task(&d, &ws, dq, dkv, dout, q, k, v, lse, delta, kvh * d.group + g, i0, nq);
                    }
            }
        }
    } else {
        /* one kv head at a time; per-thread dK/dV partials, added in thread order */
        const size_t n_tasks = (size_t)d.group * d.n_q_tiles;
#pragma omp parallel num_threads(n_threads)
        {
            const int tid = omp_get_thread_num(), team = omp_get_num_threads();
            bwd_scratch ws = bwd_scratch_of(workspace, &w, tid);
            float *my_dk = dk_partial_of(workspace, &w, tid), *my_dv = dv_partial_of(workspace, &w, tid);
            const dkv_target dkv = {my_dk, my_dv, D};
            for (int kvh = 0; kvh < d.Hkv; kvh++) {
                memset(my_dk, 0, Tk * D * sizeof(float));
                memset(my_dv, 0, Tk * D * sizeof(float));
                /* round-robin deal: neighbouring query tiles (similar causal work) go to different threads */
#pragma omp for schedule(static, 1)
                for (size_t t = 0; t < n_tasks; t++) {
                    const size_t qt = t / (size_t)d.group;
                    const int g = (int)(t % (size_t)d.group);
                    const size_t i0 = qt * Q_TILE, nq = Tq - i0 < Q_TILE ? Tq - i0 : Q_TILE;
                    backward_task(&d, &ws, dq, dkv, dout, q, k, v, lse, delta, kvh * d.group + g, i0, nq);
                }
                /* (implicit barrier: every partial is complete) */
#pragma omp for schedule(static)
                for (size_t j = 0; j < Tk; j++) {
                    float *dk_row = dk + j * d.kv_stride + (size_t)kvh * D;
                    float *dv_row = dv + j * d.kv_stride + (size_t)kvh * D;
                    for (int p = 0; p < team; p++) {
                        const float *dk_src = dk_partial_of(workspace, &w, p) + j * D;
                        const float *dv_src = dv_partial_of(workspace, &w, p) + j * D;
                        for (size_t c = 0; c < D; c++) {
                            dk_row[c] += dk_src[c];
                            dv_row[c] += dv_src[c];
                        }
                    }
                }
                /* (implicit barrier: no partial is cleared while another thread still reads it) */
            }
        }
    }
}
