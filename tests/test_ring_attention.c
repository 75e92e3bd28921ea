/* test_ring_attention.c: ring attention over 1..4 MPI ranks against naive full-sequence attention in double. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/comm.h"
#include "../seqpar/seqpar.h"
#include "testing.h"

/*
 * Every rank builds the same full sequence (q, k, v in one interleaved
 * (T, (H + 2 Hkv) D) buffer like the model's qkv, and dout), seeded, for
 * T = 2P * chunk, takes its zigzag rows, and runs seqpar_attention_forward
 * and _backward with the world as the sequence-parallel group. The
 * reference is causal softmax attention over the whole sequence written
 * out in double (every score, one max, one sum; the analytic backward),
 * restricted to the rank's rows: out, lse and dq of its queries; dk and dv
 * of its keys, which collect from the queries of every rank.
 *
 * Tolerances (max relative error, testing.h, against the double
 * reference rounded to float), the 1e-5 throughout:
 *   out: floor 0.1. |out| <= 1 (averages of v in [-1, 1]) and fp32 sums
 *        of such terms carry absolute errors of ~1e-7, so an output that
 *        cancels to near 0 is held to 1e-6 absolute.
 *   lse: floor 1 (lse ~ log T + max score ~ 5..10).
 *   dq, dk, dv: floor 0.1 * max |reference| of that gradient. Gradients are
 *        sums of up to T * H/Hkv terms of both signs; an element that
 *        cancels to 1e-3 of the largest keeps the absolute error of the
 *        large terms, so elements below a tenth of the largest are held
 *        to 1e-6 of the largest in absolute terms.
 * The worst errors met over all cases and ranks are printed by rank 0.
 */
#define TOL 1e-5
#define LSE_FLOOR 1.0
#ifndef GRAD_FLOOR_FRACTION
#define GRAD_FLOOR_FRACTION 0.1
#endif
#ifndef OUT_FLOOR
#define OUT_FLOOR 0.1
#endif

static rt_comm *world;
static int my_rank, n_ranks;

enum { Q_OUT, Q_LSE, Q_DQ, Q_DK, Q_DV, N_QUANTITIES };
static const char *quantity_names[N_QUANTITIES] = {"out", "lse", "dq", "dk", "dv"};
static double worst_error[N_QUANTITIES];

/* ------------------------------------------------------------------ reference (double, packed rows) */

typedef struct {
    int H, Hkv, D, causal;
} ref_dims;

/* Softmax probabilities p (T) of query i, head h over all keys; positions are row indices. */
static void ref_probs(double *p, const ref_dims *r, const double *q, const double *k, size_t T, size_t i, int h) {
    const int D = r->D, g = h / (r->H / r->Hkv);
    double mx = -INFINITY;
    for (size_t j = 0; j < T; j++) {
        if (r->causal && j > i) {
            p[j] = -INFINITY;
            continue;
        }
        double dot = 0.0;
        for (int d = 0; d < D; d++)
            dot += q[(i * r->H + h) * D + d] * k[(j * r->Hkv + g) * D + d];
        p[j] = dot / sqrt((double)D);
        mx = p[j] > mx ? p[j] : mx;
    }
    double sum = 0.0;
    for (size_t j = 0; j < T; j++)
        sum += p[j] == -INFINITY ? 0.0 : exp(p[j] - mx);
    for (size_t j = 0; j < T; j++)
        p[j] = p[j] == -INFINITY ? 0.0 : exp(p[j] - mx) / sum;
    p[T] = mx + log(sum); /* lse rides in the last slot */
}

/* out (T, H*D), lse (T, H), and the gradients dq (T, H*D), dk, dv (T, Hkv*D) of sum(out * dout). */
static void ref_attention(double *out, double *lse, double *dq, double *dk, double *dv, const ref_dims *r,
                          const double *q, const double *k, const double *v, const double *dout, size_t T) {
    const int D = r->D;
    const double scale = 1.0 / sqrt((double)D);
    memset(dq, 0, T * r->H * D * sizeof(double));
    memset(dk, 0, T * r->Hkv * D * sizeof(double));
    memset(dv, 0, T * r->Hkv * D * sizeof(double));
    double *p = malloc((T + 1) * sizeof(double)), *dp = malloc(T * sizeof(double));
    for (size_t i = 0; i < T; i++)
        for (int h = 0; h < r->H; h++) {
            const int g = h / (r->H / r->Hkv);
            ref_probs(p, r, q, k, T, i, h);
            lse[i * r->H + h] = p[T];
            double *o = out + (i * r->H + h) * D;
            const double *go = dout + (i * r->H + h) * D;
            for (int d = 0; d < D; d++)
                o[d] = 0.0;
            double delta = 0.0;
            for (size_t j = 0; j < T; j++) {
                dp[j] = 0.0;
                for (int d = 0; d < D; d++) {
                    o[d] += p[j] * v[(j * r->Hkv + g) * D + d];
                    dp[j] += go[d] * v[(j * r->Hkv + g) * D + d];
                }
                delta += p[j] * dp[j];
            }
            for (size_t j = 0; j < T; j++) {
                const double ds = p[j] * (dp[j] - delta) * scale;
                for (int d = 0; d < D; d++) {
                    dq[(i * r->H + h) * D + d] += ds * k[(j * r->Hkv + g) * D + d];
                    dk[(j * r->Hkv + g) * D + d] += ds * q[(i * r->H + h) * D + d];
                    dv[(j * r->Hkv + g) * D + d] += p[j] * go[d];
                }
            }
        }
    free(p);
    free(dp);
}

/* ------------------------------------------------------------------ one problem: the full sequence and this rank's
 * part */

typedef struct {
    int H, Hkv, D;
    size_t chunk; /* tokens per zigzag chunk: T = 2P * chunk */
    int causal;
} ring_case;

typedef struct {
    ring_case c;
    size_t T, Tl, W, HD, KD; /* W = (H + 2 Hkv) D: the interleaved qkv row */
    rt_attn_shape shape;
    float *qkv, *dout;  /* full sequence: (T, W), (T, HD) */
    size_t *rows;       /* the Tl rows of this rank, zigzag order */
    float *local_qkv;   /* (Tl, W) */
    float *local_dout;  /* (Tl, HD) */
    int64_t *local_pos; /* (Tl) */
    /* reference rounded to float, restricted to this rank's rows */
    float *ref_out, *ref_lse, *ref_dq, *ref_dk, *ref_dv;
    double max_dq, max_dk, max_dv; /* max |reference| over the whole sequence */
} ring_problem;

static void fill_rows(float *dst, size_t n, size_t stride, size_t offset, size_t width, float lo, float hi,
                      uint64_t seed) {
    for (size_t i = 0; i < n; i++)
        test_fill_uniform(dst + i * stride + offset, width, lo, hi, seed * 100003 + i);
}

static double *rows_to_double(const float *src, size_t n, size_t stride, size_t offset, size_t width) {
    double *dst = malloc(n * width * sizeof(double));
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < width; c++)
            dst[i * width + c] = src[i * stride + offset + c];
    return dst;
}

/* Rows `rows` (n) of a packed double array of width, rounded to float. */
static float *pick_rows(const double *src, const size_t *rows, size_t n, size_t width) {
    float *dst = malloc(n * width * sizeof(float));
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < width; c++)
            dst[i * width + c] = (float)src[rows[i] * width + c];
    return dst;
}

static double max_abs(const double *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

static ring_problem problem_make(ring_case c, uint64_t seed) {
    ring_problem p;
    memset(&p, 0, sizeof p);
    p.c = c;
    p.T = 2 * (size_t)n_ranks * c.chunk;
    p.HD = (size_t)c.H * c.D;
    p.KD = (size_t)c.Hkv * c.D;
    p.W = p.HD + 2 * p.KD;
    p.shape = (rt_attn_shape){c.H, c.Hkv, c.D, p.W, p.W, p.HD, c.causal};
    p.qkv = malloc(p.T * p.W * sizeof(float));
    p.dout = malloc(p.T * p.HD * sizeof(float));
    /* q, k in [-2, 2] (scores with std ~1.3: a peaked softmax), v and dout in [-1, 1]; the same on every rank */
    fill_rows(p.qkv, p.T, p.W, 0, p.HD + p.KD, -2.0f, 2.0f, seed);
    fill_rows(p.qkv, p.T, p.W, p.HD + p.KD, p.KD, -1.0f, 1.0f, seed + 1);
    fill_rows(p.dout, p.T, p.HD, 0, p.HD, -1.0f, 1.0f, seed + 2);

    rt_span spans[2];
    rt_error err;
    CU_ASSERT_FATAL(seqpar_zigzag_spans(my_rank, n_ranks, p.T, spans, &err) == 0);
    p.Tl = spans[0].len + spans[1].len;
    p.rows = malloc(p.Tl * sizeof(size_t));
    p.local_qkv = malloc(p.Tl * p.W * sizeof(float));
    p.local_dout = malloc(p.Tl * p.HD * sizeof(float));
    p.local_pos = malloc(p.Tl * sizeof(int64_t));
    size_t n = 0;
    for (int s = 0; s < 2; s++)
        for (size_t t = spans[s].start; t < spans[s].start + spans[s].len; t++)
            p.rows[n++] = t;
    for (size_t i = 0; i < p.Tl; i++) {
        memcpy(p.local_qkv + i * p.W, p.qkv + p.rows[i] * p.W, p.W * sizeof(float));
        memcpy(p.local_dout + i * p.HD, p.dout + p.rows[i] * p.HD, p.HD * sizeof(float));
        p.local_pos[i] = (int64_t)p.rows[i];
    }

    const ref_dims r = {c.H, c.Hkv, c.D, c.causal};
    double *q = rows_to_double(p.qkv, p.T, p.W, 0, p.HD), *k = rows_to_double(p.qkv, p.T, p.W, p.HD, p.KD);
    double *v = rows_to_double(p.qkv, p.T, p.W, p.HD + p.KD, p.KD), *dout = rows_to_double(p.dout, p.T, p.HD, 0, p.HD);
    double *out = malloc(p.T * p.HD * sizeof(double)), *lse = malloc(p.T * c.H * sizeof(double));
    double *dq = malloc(p.T * p.HD * sizeof(double)), *dk = malloc(p.T * p.KD * sizeof(double));
    double *dv = malloc(p.T * p.KD * sizeof(double));
    ref_attention(out, lse, dq, dk, dv, &r, q, k, v, dout, p.T);
    p.ref_out = pick_rows(out, p.rows, p.Tl, p.HD);
    p.ref_lse = pick_rows(lse, p.rows, p.Tl, (size_t)c.H);
    p.ref_dq = pick_rows(dq, p.rows, p.Tl, p.HD);
    p.ref_dk = pick_rows(dk, p.rows, p.Tl, p.KD);
    p.ref_dv = pick_rows(dv, p.rows, p.Tl, p.KD);
    p.max_dq = max_abs(dq, p.T * p.HD);
    p.max_dk = max_abs(dk, p.T * p.KD);
    p.max_dv = max_abs(dv, p.T * p.KD);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    return p;
}

static void problem_free(ring_problem *p) {
    free(p->qkv), free(p->dout), free(p->rows), free(p->local_qkv), free(p->local_dout), free(p->local_pos);
    free(p->ref_out), free(p->ref_lse), free(p->ref_dq), free(p->ref_dk), free(p->ref_dv);
}

/* What one forward + backward through seqpar gives on this rank. */
typedef struct {
    float *out, *lse, *delta, *dqkv; /* (Tl, HD), (Tl, H), (Tl, H), (Tl, W) like the model's d_qkv */
} ring_result;

static ring_result result_make(const ring_problem *p) {
    ring_result r;
    r.out = malloc(p->Tl * p->HD * sizeof(float));
    r.lse = malloc(p->Tl * p->c.H * sizeof(float));
    r.delta = malloc(p->Tl * p->c.H * sizeof(float));
    r.dqkv = calloc(p->Tl * p->W, sizeof(float));
    return r;
}

static void result_free(ring_result *r) { free(r->out), free(r->lse), free(r->delta), free(r->dqkv); }

static void run_forward(seqpar_ctx *ctx, const ring_problem *p, ring_result *r) {
    const float *q = p->local_qkv;
    seqpar_attention_forward(ctx, r->out, r->lse, q, q + p->HD, q + p->HD + p->KD, p->local_pos, p->Tl, &p->shape);
}

static void run_backward(seqpar_ctx *ctx, const ring_problem *p, ring_result *r) {
    const float *q = p->local_qkv;
    float *dq = r->dqkv;
    seqpar_attention_backward(ctx, dq, dq + p->HD, dq + p->HD + p->KD, r->delta, p->local_dout, r->out, r->lse, q,
                              q + p->HD, q + p->HD + p->KD, p->local_pos, p->Tl, &p->shape);
}

/* Max relative error of n rows of width floats (at stride, from offset) against packed ref; asserts <= TOL. */
static void check_rows(const float *got, size_t stride, size_t offset, const float *ref, size_t n, size_t width,
                       double floor, int quantity, const char *label) {
    float *packed = malloc(n * width * sizeof(float));
    for (size_t i = 0; i < n; i++)
        memcpy(packed + i * width, got + i * stride + offset, width * sizeof(float));
    const double err = test_max_rel_error(packed, ref, n * width, floor);
    if (!(err <= worst_error[quantity])) worst_error[quantity] = err;
    if (!(err <= TOL))
        fprintf(stderr, "\n  rank %d of %d: %s %s: max rel error %.3g > tol %.3g\n", my_rank, n_ranks, label,
                quantity_names[quantity], err, TOL);
    CU_ASSERT(err <= TOL);
    free(packed);
}

static void check_result(const ring_problem *p, const ring_result *r, const char *label) {
    check_rows(r->out, p->HD, 0, p->ref_out, p->Tl, p->HD, OUT_FLOOR, Q_OUT, label);
    check_rows(r->lse, (size_t)p->c.H, 0, p->ref_lse, p->Tl, (size_t)p->c.H, LSE_FLOOR, Q_LSE, label);
    check_rows(r->dqkv, p->W, 0, p->ref_dq, p->Tl, p->HD, GRAD_FLOOR_FRACTION * p->max_dq, Q_DQ, label);
    check_rows(r->dqkv, p->W, p->HD, p->ref_dk, p->Tl, p->KD, GRAD_FLOOR_FRACTION * p->max_dk, Q_DK, label);
    check_rows(r->dqkv, p->W, p->HD + p->KD, p->ref_dv, p->Tl, p->KD, GRAD_FLOOR_FRACTION * p->max_dv, Q_DV, label);
}

/* ------------------------------------------------------------------ tests */

static void check_case(ring_case c, uint64_t seed) {
    static const size_t block_sizes[] = {0, 5};
    ring_problem p = problem_make(c, seed);
    for (int bi = 0; bi < 2; bi++) {
        char label[160];
        snprintf(label, sizeof label, "H=%d Hkv=%d D=%d chunk=%zu causal=%d block=%zu", c.H, c.Hkv, c.D, c.chunk,
                 c.causal, block_sizes[bi]);
        rt_device_memory mem;
        rt_device_memory_init(&mem, rt_backend_cpu(), 0);
        seqpar_ctx ctx = {.backend = rt_backend_cpu(), .mem = &mem, .comm = world, .block_size = block_sizes[bi]};
        ring_result r = result_make(&p);
        run_forward(&ctx, &p, &r);
        /* the ring really ran: P-1 K/V blocks came in */
        CU_ASSERT_EQUAL(ctx.kv_blocks_received, (size_t)(n_ranks - 1));
        CU_ASSERT_EQUAL(ctx.dkv_blocks_received, 0);
        run_backward(&ctx, &p, &r);
        /* backward: K/V travel again (P-1 more) and P-1 dK/dV accumulators come in, the last one this rank's own */
        CU_ASSERT_EQUAL(ctx.kv_blocks_received, 2 * (size_t)(n_ranks - 1));
        CU_ASSERT_EQUAL(ctx.dkv_blocks_received, (size_t)(n_ranks - 1));
        CU_ASSERT(n_ranks == 1 ? ctx.comm_exposed_s == 0.0 : ctx.comm_exposed_s > 0.0);
        check_result(&p, &r, label);
        seqpar_ctx_free(&ctx);
        CU_ASSERT_EQUAL(mem.in_use, 0); /* workspace and ring buffers were the only allocations, and they are gone */
        rt_device_memory_destroy(&mem);
        result_free(&r);
    }
    problem_free(&p);
}

/* MHA and GQA, head dims 16 and 64, chunks of 8 and 33 tokens (not multiples of the kernel's tiles). */
static void test_matches_full_attention(void) {
    static const int heads[][2] = {{4, 4}, {4, 2}, {4, 1}};
    static const int head_dims[] = {16, 64};
    static const size_t chunks[] = {8, 33};
    uint64_t seed = 100;
    for (int hi = 0; hi < 3; hi++)
        for (int di = 0; di < 2; di++)
            for (int ci = 0; ci < 2; ci++)
                check_case((ring_case){heads[hi][0], heads[hi][1], head_dims[di], chunks[ci], 1}, seed++);
}

/* Without the causal mask nothing is skipped: every rank's queries see every key. */
static void test_not_causal(void) { check_case((ring_case){4, 2, 16, 9, 0}, 200); }

/* The backward accumulates: a second call adds the same again; buffers are reused, counters grow per call. */
static void test_backward_accumulates(void) {
    ring_problem p = problem_make((ring_case){4, 2, 16, 12, 1}, 300);
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    seqpar_ctx ctx = {.backend = rt_backend_cpu(), .mem = &mem, .comm = world, .block_size = 7};
    ring_result r = result_make(&p);
    run_forward(&ctx, &p, &r);
    run_backward(&ctx, &p, &r);
    const size_t n = p.Tl * p.W, live = mem.n_live;
    float *once = malloc(n * sizeof(float));
    double largest = 0.0;
    for (size_t i = 0; i < n; i++) {
        once[i] = 2.0f * r.dqkv[i];
        largest = fabs(once[i]) > largest ? fabs(once[i]) : largest;
    }
    const void *kv_buffer = ctx.kv_ring[0];
    run_backward(&ctx, &p, &r);
    char label[64];
    snprintf(label, sizeof label, "rank %d: backward twice vs 2 x once", my_rank);
    TEST_ASSERT_CLOSE(r.dqkv, once, n, 0.1 * largest, 1e-6, label);
    CU_ASSERT_EQUAL(ctx.dkv_blocks_received, 2 * (size_t)(n_ranks - 1));
    CU_ASSERT_EQUAL(ctx.kv_blocks_received, 3 * (size_t)(n_ranks - 1));
    CU_ASSERT(mem.n_live == live && ctx.kv_ring[0] == kv_buffer); /* no new allocations */
    seqpar_ctx_free(&ctx);
    CU_ASSERT_EQUAL(mem.n_live, 0);
    rt_device_memory_destroy(&mem);
    free(once);
    result_free(&r);
    problem_free(&p);
}

/* Buffers sized for a short sequence grow for a longer one; results stay right. */
static void test_buffers_grow(void) {
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    seqpar_ctx ctx = {.backend = rt_backend_cpu(), .mem = &mem, .comm = world, .block_size = 0};
    static const size_t chunks[] = {4, 20};
    for (int ci = 0; ci < 2; ci++) {
        ring_problem p = problem_make((ring_case){2, 1, 16, chunks[ci], 1}, 400 + (uint64_t)ci);
        ring_result r = result_make(&p);
        run_forward(&ctx, &p, &r);
        run_backward(&ctx, &p, &r);
        check_result(&p, &r, chunks[ci] == 4 ? "short sequence" : "longer sequence, grown buffers");
        result_free(&r);
        problem_free(&p);
    }
    seqpar_ctx_free(&ctx);
    rt_device_memory_destroy(&mem);
}

/* seqpar_reserve covers every buffer of the calls: the accounted bytes are the attention workspace and the ring
 * buffers (2 K/V blocks, 4 dK/dV blocks), and a forward and backward after it allocate nothing (no new
 * allocation, no new peak), also at a limit of exactly those bytes. */
static void test_reserve_covers_calls(void) {
    ring_problem p = problem_make((ring_case){4, 2, 16, 12, 1}, 600);
    const size_t width = (size_t)p.c.Hkv * p.c.D;
    const size_t workspace = rt_backend_cpu()->attn_workspace_bytes(rt_backend_cpu(), p.Tl, p.Tl, &p.shape);
    const size_t ring = n_ranks == 1 ? 0
                                     : 2 * (p.Tl * sizeof(int64_t) + 2 * p.Tl * width * sizeof(float)) +
                                           4 * (2 * p.Tl * width * sizeof(float));
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), workspace + ring);
    seqpar_ctx ctx = {.backend = rt_backend_cpu(), .mem = &mem, .comm = world, .block_size = 5};
    rt_error err;
    CU_ASSERT_FATAL(seqpar_reserve(&ctx, p.Tl, &p.shape, &err) == 0);
    CU_ASSERT_EQUAL(ctx.attn_workspace_bytes, workspace);
    CU_ASSERT_EQUAL(mem.in_use, workspace + ring);
    const size_t live = mem.n_live;
    ring_result r = result_make(&p);
    run_forward(&ctx, &p, &r);
    run_backward(&ctx, &p, &r);
    check_result(&p, &r, "after seqpar_reserve");
    CU_ASSERT_EQUAL(mem.n_live, live);
    CU_ASSERT_EQUAL(mem.peak, workspace + ring);
    seqpar_ctx_free(&ctx);
    rt_device_memory_destroy(&mem);
    result_free(&r);
    problem_free(&p);
}

/* Two runs from fresh buffers give the same bits. */
static void test_deterministic(void) {
    ring_problem p = problem_make((ring_case){4, 1, 32, 17, 1}, 500);
    ring_result r[2];
    for (int run = 0; run < 2; run++) {
        rt_device_memory mem;
        rt_device_memory_init(&mem, rt_backend_cpu(), 0);
        seqpar_ctx ctx = {.backend = rt_backend_cpu(), .mem = &mem, .comm = world, .block_size = 5};
        r[run] = result_make(&p);
        run_forward(&ctx, &p, &r[run]);
        run_backward(&ctx, &p, &r[run]);
        seqpar_ctx_free(&ctx);
        rt_device_memory_destroy(&mem);
    }
    CU_ASSERT(memcmp(r[0].out, r[1].out, p.Tl * p.HD * sizeof(float)) == 0);
    CU_ASSERT(memcmp(r[0].lse, r[1].lse, p.Tl * p.c.H * sizeof(float)) == 0);
    CU_ASSERT(memcmp(r[0].dqkv, r[1].dqkv, p.Tl * p.W * sizeof(float)) == 0);
    result_free(&r[0]);
    result_free(&r[1]);
    problem_free(&p);
}

/* The zigzag spans of all ranks cover the sequence once; rank r holds chunks r and 2P-1-r. */
static void test_spans_cover_sequence(void) {
    const size_t chunk = 3, T = 2 * (size_t)n_ranks * chunk;
    int *owner = calloc(T, sizeof(int));
    for (int r = 0; r < n_ranks; r++) {
        rt_span spans[2];
        rt_error err;
        CU_ASSERT_FATAL(seqpar_zigzag_spans(r, n_ranks, T, spans, &err) == 0);
        CU_ASSERT(spans[0].start == (size_t)r * chunk && spans[1].start == (2 * (size_t)n_ranks - 1 - r) * chunk);
        for (int s = 0; s < 2; s++)
            for (size_t t = spans[s].start; t < spans[s].start + spans[s].len; t++)
                owner[t]++;
    }
    int once = 1;
    for (size_t t = 0; t < T; t++)
        once &= owner[t] == 1;
    CU_ASSERT(once);
    free(owner);
}

/* T not divisible by 2P, and more ranks than chunks (T < 2P): a clear error naming seq_len. */
static void test_bad_layout(void) {
    const size_t P2 = 2 * (size_t)n_ranks;
    const size_t bad_lengths[] = {P2 * 5 + 1, P2 * 7 + P2 - 1, P2 - 1, 0};
    for (int i = 0; i < 4; i++) {
        rt_span spans[2];
        rt_error err = {{0}};
        CU_ASSERT_EQUAL(seqpar_zigzag_spans(my_rank, n_ranks, bad_lengths[i], spans, &err), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "seq_len"));
        if (bad_lengths[i] >= P2) CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "divide"));
        if (bad_lengths[i] < P2) CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "shorter"));
    }
}

/* As test_run_suite, but only rank 0 prints the CUnit report. */
static int run_suite(const test_case *cases, int n_cases) {
    if (CU_initialize_registry() != CUE_SUCCESS) return 2;
    CU_pSuite suite = CU_add_suite("test_ring_attention", NULL, NULL);
    for (int i = 0; i < n_cases; i++)
        CU_add_test(suite, cases[i].name, cases[i].fn);
    if (my_rank == 0) {
        CU_basic_set_mode(CU_BRM_VERBOSE);
        CU_basic_run_tests();
    } else {
        CU_run_all_tests();
    }
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    unsigned run = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    return (failed == 0 && run == (unsigned)n_cases) ? 0 : 1;
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    my_rank = world->rank;
    n_ranks = world->size;
    test_case tests[] = {
        {"ring matches full attention (MHA, GQA, head dims, chunks, block sizes)", test_matches_full_attention},
        {"ring without the causal mask", test_not_causal},
        {"backward accumulates, buffers reused", test_backward_accumulates},
        {"buffers grow with the sequence", test_buffers_grow},
        {"seqpar_reserve covers every buffer of the calls", test_reserve_covers_calls},
        {"deterministic run to run", test_deterministic},
        {"zigzag spans cover the sequence", test_spans_cover_sequence},
        {"bad layout gives a clear error", test_bad_layout},
    };
    int rc = run_suite(tests, (int)(sizeof tests / sizeof tests[0]));
    /* every rank exits with the same status */
    MPI_Allreduce(MPI_IN_PLACE, &rc, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    MPI_Allreduce(MPI_IN_PLACE, worst_error, N_QUANTITIES, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    if (my_rank == 0) {
        printf("ranks %d: worst max rel error (tol %g):", n_ranks, TOL);
        for (int q = 0; q < N_QUANTITIES; q++)
            printf(" %s %.2g", quantity_names[q], worst_error[q]);
        printf("\n");
    }
    rt_comm_finalize();
    return rc;
}
