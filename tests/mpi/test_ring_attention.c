/* test_ring_attention.c: ring attention over 1..4 MPI ranks against naive full-sequence attention in double. */
#include <math.h>
#include <mpi.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/backend/registry.h"
#include "runtime/comm/comm.h"
#include "seqpar/seqpar.h"
#include "tests/support/expect_fatal.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

/*
 * Every rank builds the same B full sequences (q, k, v in one interleaved
 * (T, (H + 2 Hkv) D) buffer like the model's qkv, and dout), seeded, for
 * T = 2P * chunk, takes its zigzag rows of each (local row b*Tl + i:
 * token i of sequence b, as the model lays out a micro-batch), and runs
 * seqpar_attention_forward and _backward on all B at once with the world
 * as the sequence-parallel group. The reference is causal softmax
 * attention over each whole sequence on its own, written out in double
 * (every score, one max, one sum; the analytic backward), restricted to
 * the rank's rows: out, lse and dq of its queries; dk and dv of its keys,
 * which collect from the queries of every rank.
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
 *        to 1e-6 of the largest in absolute terms. The largest is that
 *        sequence's: each sequence of a batch is checked on its own.
 * B sequences in one call against B calls of one: bitwise (memcmp).
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
    const int64_t *first; /* (T) packed documents: the row where row i's document starts; NULL: none */
} ref_dims;

/* Softmax probabilities p (T) of query i, head h over all keys; positions are row indices. */
static void ref_probs(double *p, const ref_dims *r, const double *q, const double *k, size_t T, size_t i, int h) {
    const int D = r->D, g = h / (r->H / r->Hkv);
    double mx = -INFINITY;
    for (size_t j = 0; j < T; j++) {
        if ((r->causal && j > i) || (r->first && (int64_t)j < r->first[i])) {
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

/* ------------------------------------------------------------------ the backend: the CPU's, watching the positions */

/* Copies that read the device positions of the call: the run bookkeeping must take host positions only, and no
 * positions travel the ring, so none is expected. */
static const int64_t *watched_pos;
static size_t watched_len, pos_reads;

static void watching_copy(const rt_backend *be, void *dst, const void *src, size_t bytes) {
    const uintptr_t lo = (uintptr_t)watched_pos, hi = lo + watched_len * sizeof(int64_t), from = (uintptr_t)src;
    if (from < hi && from + bytes > lo) pos_reads++;
    rt_backend_cpu()->memory.copy(be, dst, src, bytes);
}

static const rt_backend *test_backend(void) {
    static rt_backend backend;
    backend = *rt_backend_cpu();
    backend.memory.copy = watching_copy;
    return &backend;
}

/* ------------------------------------------------------------------ one problem: B full sequences and this rank's
 * part of each */

typedef struct {
    int H, Hkv, D;
    size_t chunk; /* tokens per zigzag chunk: T = 2P * chunk */
    int causal;
    size_t n_seqs; /* B */
    int documents; /* packed documents of seeded lengths (1 token, a chunk, across chunks and ranks) */
} ring_case;

typedef struct {
    ring_case c;
    size_t B, T, Tl, W, HD, KD; /* W = (H + 2 Hkv) D: the interleaved qkv row */
    rt_attn_shape shape;
    size_t *rows;             /* (Tl) the rows of this rank in every sequence, zigzag order */
    float *local_qkv;         /* (B*Tl, W): row b*Tl + i is local token i of sequence b */
    float *local_dout;        /* (B*Tl, HD) */
    int64_t *local_pos;       /* (B*Tl) the "device" positions */
    int64_t *host_pos;        /* (B*Tl) the same values in another array: what the bookkeeping may read */
    int64_t *local_first;     /* (B*Tl) documents only: where each local token's document starts */
    int64_t *host_first;      /* (B*Tl) the same values */
    seqpar_tokens tokens;     /* all B sequences */
    float *ref_out, *ref_lse; /* reference rounded to float, this rank's rows: (B*Tl, HD), (B*Tl, H) */
    float *ref_dq, *ref_dk;   /* (B*Tl, HD), (B*Tl, KD) */
    float *ref_dv;            /* (B*Tl, KD) */
    double *max_dq, *max_dk;  /* (B) max |reference| over each whole sequence */
    double *max_dv;           /* (B) */
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

/* Rows `rows` (n) of a packed double array of width, rounded to float, into dst. */
static void pick_rows(float *dst, const double *src, const size_t *rows, size_t n, size_t width) {
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < width; c++)
            dst[i * width + c] = (float)src[rows[i] * width + c];
}

static double max_abs(const double *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Sequence b of the batch: the full (T, W) qkv and (T, HD) dout, the same on every rank; this rank's rows into the
 * local arrays, and the reference of the whole sequence restricted to them. */
static void sequence_make(ring_problem *p, size_t b, uint64_t seed) {
    const size_t T = p->T, Tl = p->Tl, W = p->W, HD = p->HD, KD = p->KD, r0 = b * Tl;
    float *qkv = malloc(T * W * sizeof(float)), *dout_f = malloc(T * HD * sizeof(float));
    /* q, k in [-2, 2] (scores with std ~1.3: a peaked softmax), v and dout in [-1, 1] */
    fill_rows(qkv, T, W, 0, HD + KD, -2.0f, 2.0f, seed);
    fill_rows(qkv, T, W, HD + KD, KD, -1.0f, 1.0f, seed + 1);
    fill_rows(dout_f, T, HD, 0, HD, -1.0f, 1.0f, seed + 2);
    for (size_t i = 0; i < Tl; i++) {
        memcpy(p->local_qkv + (r0 + i) * W, qkv + p->rows[i] * W, W * sizeof(float));
        memcpy(p->local_dout + (r0 + i) * HD, dout_f + p->rows[i] * HD, HD * sizeof(float));
        p->local_pos[r0 + i] = p->host_pos[r0 + i] = (int64_t)p->rows[i];
    }
    const ring_case *c = &p->c;
    int64_t *first = NULL;
    if (c->documents) {
        /* lengths cycle through 1, a chunk, a seeded 1..3 chunks, 1 again: documents of one token, of exactly a
         * chunk, and across chunk and rank boundaries */
        first = malloc(T * sizeof *first);
        uint64_t state = seed * 7 + 3;
        size_t start = 0, next = 0;
        for (int d = 0; next < T; d++) {
            start = next;
            const size_t len = d % 4 == 0 ? 1 : d % 4 == 1 ? c->chunk : 1 + test_rand_u64(&state) % (3 * c->chunk);
            next = start + len < T ? start + len : T;
            for (size_t i = start; i < next; i++)
                first[i] = (int64_t)start;
        }
        for (size_t i = 0; i < Tl; i++)
            p->local_first[r0 + i] = p->host_first[r0 + i] = first[p->rows[i]];
    }
    const ref_dims r = {c->H, c->Hkv, c->D, c->causal, first};
    double *q = rows_to_double(qkv, T, W, 0, HD), *k = rows_to_double(qkv, T, W, HD, KD);
    double *v = rows_to_double(qkv, T, W, HD + KD, KD), *dout = rows_to_double(dout_f, T, HD, 0, HD);
    double *out = malloc(T * HD * sizeof(double)), *lse = malloc(T * c->H * sizeof(double));
    double *dq = malloc(T * HD * sizeof(double)), *dk = malloc(T * KD * sizeof(double));
    double *dv = malloc(T * KD * sizeof(double));
    ref_attention(out, lse, dq, dk, dv, &r, q, k, v, dout, T);
    pick_rows(p->ref_out + r0 * HD, out, p->rows, Tl, HD);
    pick_rows(p->ref_lse + r0 * c->H, lse, p->rows, Tl, (size_t)c->H);
    pick_rows(p->ref_dq + r0 * HD, dq, p->rows, Tl, HD);
    pick_rows(p->ref_dk + r0 * KD, dk, p->rows, Tl, KD);
    pick_rows(p->ref_dv + r0 * KD, dv, p->rows, Tl, KD);
    p->max_dq[b] = max_abs(dq, T * HD);
    p->max_dk[b] = max_abs(dk, T * KD);
    p->max_dv[b] = max_abs(dv, T * KD);
    free(qkv), free(dout_f);
    free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv);
    free(first);
}

static ring_problem problem_make(ring_case c, uint64_t seed) {
    ring_problem p;
    memset(&p, 0, sizeof p);
    p.c = c;
    p.B = c.n_seqs;
    p.T = 2 * (size_t)n_ranks * c.chunk;
    p.HD = (size_t)c.H * c.D;
    p.KD = (size_t)c.Hkv * c.D;
    p.W = p.HD + 2 * p.KD;
    p.shape = (rt_attn_shape){c.H, c.Hkv, c.D, p.W, p.W, p.HD, c.causal};
    rt_span spans[2];
    rt_error err;
    CU_ASSERT_FATAL(seqpar_zigzag_spans(my_rank, n_ranks, p.T, spans, &err) == 0);
    p.Tl = spans[0].len + spans[1].len;
    p.rows = malloc(p.Tl * sizeof(size_t));
    size_t n = 0;
    for (int s = 0; s < 2; s++)
        for (size_t t = spans[s].start; t < spans[s].start + spans[s].len; t++)
            p.rows[n++] = t;
    const size_t N = p.B * p.Tl;
    p.local_qkv = malloc(N * p.W * sizeof(float));
    p.local_dout = malloc(N * p.HD * sizeof(float));
    p.local_pos = malloc(N * sizeof(int64_t));
    p.host_pos = malloc(N * sizeof(int64_t));
    p.local_first = c.documents ? malloc(N * sizeof(int64_t)) : NULL;
    p.host_first = c.documents ? malloc(N * sizeof(int64_t)) : NULL;
    p.ref_out = malloc(N * p.HD * sizeof(float));
    p.ref_lse = malloc(N * c.H * sizeof(float));
    p.ref_dq = malloc(N * p.HD * sizeof(float));
    p.ref_dk = malloc(N * p.KD * sizeof(float));
    p.ref_dv = malloc(N * p.KD * sizeof(float));
    p.max_dq = malloc(p.B * sizeof(double));
    p.max_dk = malloc(p.B * sizeof(double));
    p.max_dv = malloc(p.B * sizeof(double));
    /* sequence 0 from seed, the others their own data, so a mixed-up sequence shows */
    for (size_t b = 0; b < p.B; b++)
        sequence_make(&p, b, seed + 1000 * b);
    p.tokens = (seqpar_tokens){.n_seqs = p.B,
                               .Tl = p.Tl,
                               .pos = p.local_pos,
                               .host_pos = p.host_pos,
                               .first = p.local_first,
                               .host_first = p.host_first};
    return p;
}

static void problem_free(ring_problem *p) {
    free(p->rows), free(p->local_qkv), free(p->local_dout), free(p->local_pos), free(p->host_pos);
    free(p->local_first), free(p->host_first);
    free(p->ref_out), free(p->ref_lse), free(p->ref_dq), free(p->ref_dk), free(p->ref_dv);
    free(p->max_dq), free(p->max_dk), free(p->max_dv);
}

/* What one forward + backward through seqpar gives on this rank. */
typedef struct {
    float *out, *lse, *delta, *dqkv; /* (B*Tl, HD), (B*Tl, H), (B*Tl, H), (B*Tl, W) like the model's d_qkv */
} ring_result;

static ring_result result_make(const ring_problem *p) {
    const size_t N = p->B * p->Tl;
    ring_result r;
    r.out = calloc(N * p->HD, sizeof(float));
    r.lse = calloc(N * p->c.H, sizeof(float));
    r.delta = calloc(N * p->c.H, sizeof(float));
    r.dqkv = calloc(N * p->W, sizeof(float));
    return r;
}

static void result_free(ring_result *r) { free(r->out), free(r->lse), free(r->delta), free(r->dqkv); }

/* A context over the world for the problem's calls: the group agrees on B x Tl (collective). */
static seqpar_ctx ctx_make(rt_device_memory *mem, const ring_problem *p, size_t block_size) {
    seqpar_ctx ctx = {.backend = test_backend(), .mem = mem, .comm = world, .block_size = block_size};
    rt_error err;
    CU_ASSERT_FATAL(seqpar_agree_shapes(&ctx, p->B, p->Tl, &p->shape, &err) == 0);
    return ctx;
}

/* Forward and backward of sequences [b0, b0 + tokens->n_seqs) of the problem. */
static void run_forward_of(seqpar_ctx *ctx, const ring_problem *p, ring_result *r, size_t b0,
                           const seqpar_tokens *tokens) {
    const size_t row0 = b0 * p->Tl;
    const float *q = p->local_qkv + row0 * p->W;
    watched_pos = tokens->pos, watched_len = tokens->n_seqs * tokens->Tl;
    seqpar_attention_forward(ctx, r->out + row0 * p->HD, r->lse + row0 * p->c.H, q, q + p->HD, q + p->HD + p->KD,
                             tokens, &p->shape);
    watched_pos = NULL, watched_len = 0;
}

static void run_backward_of(seqpar_ctx *ctx, const ring_problem *p, ring_result *r, size_t b0,
                            const seqpar_tokens *tokens) {
    const size_t row0 = b0 * p->Tl;
    const float *q = p->local_qkv + row0 * p->W;
    float *dq = r->dqkv + row0 * p->W;
    watched_pos = tokens->pos, watched_len = tokens->n_seqs * tokens->Tl;
    seqpar_attention_backward(ctx, dq, dq + p->HD, dq + p->HD + p->KD, r->delta + row0 * p->c.H,
                              p->local_dout + row0 * p->HD, r->out + row0 * p->HD, r->lse + row0 * p->c.H, q, q + p->HD,
                              q + p->HD + p->KD, tokens, &p->shape);
    watched_pos = NULL, watched_len = 0;
}

static void run_forward(seqpar_ctx *ctx, const ring_problem *p, ring_result *r) {
    run_forward_of(ctx, p, r, 0, &p->tokens);
}
static void run_backward(seqpar_ctx *ctx, const ring_problem *p, ring_result *r) {
    run_backward_of(ctx, p, r, 0, &p->tokens);
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

/* Every sequence against its own reference (its own gradient floors). */
static void check_result(const ring_problem *p, const ring_result *r, const char *what) {
    const size_t Tl = p->Tl, W = p->W, HD = p->HD, KD = p->KD, H = (size_t)p->c.H;
    for (size_t b = 0; b < p->B; b++) {
        char label[200];
        snprintf(label, sizeof label, "%s, sequence %zu of %zu", what, b, p->B);
        const size_t r0 = b * Tl;
        check_rows(r->out + r0 * HD, HD, 0, p->ref_out + r0 * HD, Tl, HD, OUT_FLOOR, Q_OUT, label);
        check_rows(r->lse + r0 * H, H, 0, p->ref_lse + r0 * H, Tl, H, LSE_FLOOR, Q_LSE, label);
        const float *dqkv = r->dqkv + r0 * W;
        check_rows(dqkv, W, 0, p->ref_dq + r0 * HD, Tl, HD, GRAD_FLOOR_FRACTION * p->max_dq[b], Q_DQ, label);
        check_rows(dqkv, W, HD, p->ref_dk + r0 * KD, Tl, KD, GRAD_FLOOR_FRACTION * p->max_dk[b], Q_DK, label);
        check_rows(dqkv, W, HD + KD, p->ref_dv + r0 * KD, Tl, KD, GRAD_FLOOR_FRACTION * p->max_dv[b], Q_DV, label);
    }
}

/* ------------------------------------------------------------------ tests */

static void check_case(ring_case c, uint64_t seed) {
    static const size_t block_sizes[] = {0, 5};
    ring_problem p = problem_make(c, seed);
    for (int bi = 0; bi < 2; bi++) {
        char label[160];
        snprintf(label, sizeof label, "H=%d Hkv=%d D=%d chunk=%zu causal=%d B=%zu block=%zu%s", c.H, c.Hkv, c.D,
                 c.chunk, c.causal, c.n_seqs, block_sizes[bi], c.documents ? " documents" : "");
        rt_device_memory mem;
        rt_device_memory_init(&mem, rt_backend_cpu(), 0);
        seqpar_ctx ctx = ctx_make(&mem, &p, block_sizes[bi]);
        ring_result r = result_make(&p);
        pos_reads = 0;
        run_forward(&ctx, &p, &r);
        /* the ring really ran, one message per hop whatever B: P-1 came in */
        CU_ASSERT_EQUAL(ctx.kv_blocks_received, (size_t)(n_ranks - 1));
        CU_ASSERT_EQUAL(ctx.dkv_blocks_received, 0);
        run_backward(&ctx, &p, &r);
        /* backward: K/V travel again (P-1 more) and P-1 dK/dV messages come in, the last one this rank's own */
        CU_ASSERT_EQUAL(ctx.kv_blocks_received, 2 * (size_t)(n_ranks - 1));
        CU_ASSERT_EQUAL(ctx.dkv_blocks_received, (size_t)(n_ranks - 1));
        CU_ASSERT(n_ranks == 1 ? ctx.comm_exposed_s == 0.0 : ctx.comm_exposed_s > 0.0);
        CU_ASSERT_EQUAL(pos_reads, 0); /* the device positions were only handed to the kernels */
        check_result(&p, &r, label);
        seqpar_ctx_free(&ctx);
        CU_ASSERT_EQUAL(mem.in_use, 0); /* workspace and ring buffers were the only allocations, and they are gone */
        rt_device_memory_destroy(&mem);
        result_free(&r);
    }
    problem_free(&p);
}

/* MHA and GQA, head dims 16 and 64, chunks of 8 and 33 tokens (not multiples of the kernel's tiles), one sequence;
 * then three sequences per call (head dim 16). */
static void test_matches_full_attention(void) {
    static const int heads[][2] = {{4, 4}, {4, 2}, {4, 1}};
    static const int head_dims[] = {16, 64};
    static const size_t chunks[] = {8, 33};
    uint64_t seed = 100;
    for (int hi = 0; hi < 3; hi++)
        for (int di = 0; di < 2; di++)
            for (int ci = 0; ci < 2; ci++)
                check_case((ring_case){heads[hi][0], heads[hi][1], head_dims[di], chunks[ci], 1, 1, 0}, seed++);
    for (int hi = 0; hi < 3; hi++)
        for (int ci = 0; ci < 2; ci++)
            check_case((ring_case){heads[hi][0], heads[hi][1], 16, chunks[ci], 1, 3, 0}, seed++);
}

/* Packed documents: the reference masks every key outside the query's document; MHA and GQA, one and three
 * sequences, chunks of 8 and 33 tokens. */
static void test_documents(void) {
    uint64_t seed = 900;
    static const int heads[][2] = {{4, 4}, {4, 1}};
    static const size_t chunks[] = {8, 33};
    for (int hi = 0; hi < 2; hi++)
        for (int ci = 0; ci < 2; ci++)
            for (size_t B = 1; B <= 3; B += 2)
                check_case((ring_case){heads[hi][0], heads[hi][1], 16, chunks[ci], 1, B, 1}, seed++);
}

/* Leak probe: every q, k, v row of one document changed; every other document's outputs and its dq, dk, dv keep
 * their bits. */
static void test_documents_leak_probe(void) {
    const ring_case c = {4, 2, 16, 9, 1, 1, 1};
    ring_problem p = problem_make(c, 950), changed = problem_make(c, 950);
    /* the document of global row chunk + 2 (the third, seeded across chunks) */
    int64_t target = -1;
    for (size_t i = 0; i < p.Tl; i++)
        if (p.rows[i] == c.chunk + 2) target = p.host_first[i];
    /* the same first on every rank: which document, by its start */
    double start = (double)target;
    rt_allreduce_max_f64(world, &start, 1);
    for (size_t i = 0; i < p.Tl; i++)
        if (changed.host_first[i] == (int64_t)start)
            for (size_t w = 0; w < p.W; w++)
                changed.local_qkv[i * p.W + w] = -0.5f * changed.local_qkv[i * p.W + w] + 0.25f;
    for (int bi = 0; bi < 2; bi++) {
        rt_device_memory mem;
        rt_device_memory_init(&mem, rt_backend_cpu(), 0);
        seqpar_ctx ctx = ctx_make(&mem, &p, bi * 5);
        ring_result a = result_make(&p), b = result_make(&p);
        run_forward(&ctx, &p, &a);
        run_backward(&ctx, &p, &a);
        run_forward(&ctx, &changed, &b);
        run_backward(&ctx, &changed, &b);
        int others_same = 1, changed_differs = 0;
        for (size_t i = 0; i < p.Tl; i++) {
            const int same = memcmp(a.out + i * p.HD, b.out + i * p.HD, p.HD * sizeof(float)) == 0 &&
                             memcmp(a.dqkv + i * p.W, b.dqkv + i * p.W, p.W * sizeof(float)) == 0;
            if (p.host_first[i] == (int64_t)start)
                changed_differs |= !same;
            else
                others_same &= same;
        }
        double differs = changed_differs;
        rt_allreduce_max_f64(world, &differs, 1);
        CU_ASSERT(others_same);
        CU_ASSERT(differs == 1.0); /* the probe changed something */
        seqpar_ctx_free(&ctx);
        rt_device_memory_destroy(&mem);
        result_free(&a);
        result_free(&b);
    }
    problem_free(&p);
    problem_free(&changed);
}

/* Without the causal mask nothing is skipped: every rank's queries see every key. */
static void test_not_causal(void) {
    check_case((ring_case){4, 2, 16, 9, 0, 1, 0}, 200);
    check_case((ring_case){4, 2, 16, 9, 0, 3, 0}, 201);
}

/* B sequences in one call give the same bits as B calls of one sequence each (the same kernel calls on each
 * sequence, in the same order), with P-1 messages per call instead of B(P-1). */
static void test_batched_equals_one_at_a_time(void) {
    static const ring_case batched_cases[] = {{4, 4, 16, 8, 1, 3, 0},
                                              {4, 2, 16, 33, 1, 3, 0},
                                              {4, 1, 64, 8, 1, 3, 0},
                                              {4, 2, 16, 9, 0, 3, 0},
                                              {4, 2, 16, 9, 1, 3, 1}};
    static const size_t block_sizes[] = {0, 5};
    for (int ci = 0; ci < 5; ci++) {
        const ring_case c = batched_cases[ci];
        ring_problem p = problem_make(c, 700 + (uint64_t)ci);
        for (int bi = 0; bi < 2; bi++) {
            rt_device_memory mem;
            rt_device_memory_init(&mem, rt_backend_cpu(), 0);
            seqpar_ctx batched = ctx_make(&mem, &p, block_sizes[bi]);
            ring_result all = result_make(&p), each = result_make(&p);
            run_forward(&batched, &p, &all);
            run_backward(&batched, &p, &all);
            /* one sequence per call: a context whose group agreed on 1 x Tl */
            seqpar_ctx single = {.backend = test_backend(), .mem = &mem, .comm = world, .block_size = block_sizes[bi]};
            rt_error err;
            CU_ASSERT_FATAL(seqpar_agree_shapes(&single, 1, p.Tl, &p.shape, &err) == 0);
            for (size_t b = 0; b < p.B; b++) {
                const seqpar_tokens one = {.n_seqs = 1,
                                           .Tl = p.Tl,
                                           .pos = p.local_pos + b * p.Tl,
                                           .host_pos = p.host_pos + b * p.Tl,
                                           .first = p.local_first ? p.local_first + b * p.Tl : NULL,
                                           .host_first = p.host_first ? p.host_first + b * p.Tl : NULL};
                run_forward_of(&single, &p, &each, b, &one);
                run_backward_of(&single, &p, &each, b, &one);
            }
            const size_t N = p.B * p.Tl;
            CU_ASSERT(memcmp(all.out, each.out, N * p.HD * sizeof(float)) == 0);
            CU_ASSERT(memcmp(all.lse, each.lse, N * p.c.H * sizeof(float)) == 0);
            CU_ASSERT(memcmp(all.dqkv, each.dqkv, N * p.W * sizeof(float)) == 0);
            CU_ASSERT_EQUAL(batched.kv_blocks_received, 2 * (size_t)(n_ranks - 1));
            CU_ASSERT_EQUAL(batched.dkv_blocks_received, (size_t)(n_ranks - 1));
            CU_ASSERT_EQUAL(single.kv_blocks_received, 2 * p.B * (size_t)(n_ranks - 1));
            CU_ASSERT_EQUAL(single.dkv_blocks_received, p.B * (size_t)(n_ranks - 1));
            seqpar_ctx_free(&batched);
            seqpar_ctx_free(&single);
            rt_device_memory_destroy(&mem);
            result_free(&all);
            result_free(&each);
        }
        problem_free(&p);
    }
}

/* The backward accumulates: a second call adds the same again; buffers are reused, counters grow per call. */
static void test_backward_accumulates(void) {
    ring_problem p = problem_make((ring_case){4, 2, 16, 12, 1, 2, 0}, 300);
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    seqpar_ctx ctx = ctx_make(&mem, &p, 7);
    ring_result r = result_make(&p);
    run_forward(&ctx, &p, &r);
    run_backward(&ctx, &p, &r);
    const size_t n = p.B * p.Tl * p.W, live = mem.n_live;
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

/* Buffers sized for a short sequence grow for a longer one (the group agreeing again); results stay right. */
static void test_buffers_grow(void) {
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    seqpar_ctx ctx = {.backend = test_backend(), .mem = &mem, .comm = world, .block_size = 0};
    static const size_t chunks[] = {4, 20};
    for (int ci = 0; ci < 2; ci++) {
        ring_problem p = problem_make((ring_case){2, 1, 16, chunks[ci], 1, 2, 0}, 400 + (uint64_t)ci);
        rt_error err;
        CU_ASSERT_FATAL(seqpar_agree_shapes(&ctx, p.B, p.Tl, &p.shape, &err) == 0);
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
 * buffers (2 K/V messages, 3 dK/dV messages of all B sequences, the key positions), and a forward and backward
 * after it allocate nothing (no new allocation, no new peak), also at a limit of exactly those bytes. */
static void test_reserve_covers_calls(void) {
    ring_problem p = problem_make((ring_case){4, 2, 16, 12, 1, 3, 0}, 600);
    const size_t width = (size_t)p.c.Hkv * p.c.D, message = 2 * p.B * p.Tl * width * sizeof(float);
    const size_t workspace = rt_be_attn_workspace_bytes(rt_backend_cpu(), p.Tl, p.Tl, &p.shape);
    const size_t ring = n_ranks == 1 ? 0 : 5 * message + (size_t)n_ranks * p.Tl * sizeof(int64_t);
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), workspace + ring);
    seqpar_ctx ctx = ctx_make(&mem, &p, 5);
    rt_error err;
    CU_ASSERT_FATAL(seqpar_reserve(&ctx, p.B, p.Tl, &p.shape, &err) == 0);
    CU_ASSERT_EQUAL(ctx.attn_workspace_bytes, workspace);
    CU_ASSERT_EQUAL(mem.in_use, workspace + ring);
    if (n_ranks > 1) { /* the positions received keys are masked by: every position of a sequence, in order */
        const int64_t *key_positions = ctx.key_positions;
        int in_order = ctx.key_positions_bytes == (size_t)n_ranks * p.Tl * sizeof(int64_t);
        for (size_t i = 0; in_order && i < (size_t)n_ranks * p.Tl; i++)
            in_order = key_positions[i] == (int64_t)i;
        CU_ASSERT(in_order);
    }
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
    ring_problem p = problem_make((ring_case){4, 1, 32, 17, 1, 2, 0}, 500);
    ring_result r[2];
    for (int run = 0; run < 2; run++) {
        rt_device_memory mem;
        rt_device_memory_init(&mem, rt_backend_cpu(), 0);
        seqpar_ctx ctx = ctx_make(&mem, &p, 5);
        r[run] = result_make(&p);
        run_forward(&ctx, &p, &r[run]);
        run_backward(&ctx, &p, &r[run]);
        seqpar_ctx_free(&ctx);
        rt_device_memory_destroy(&mem);
    }
    const size_t N = p.B * p.Tl;
    CU_ASSERT(memcmp(r[0].out, r[1].out, N * p.HD * sizeof(float)) == 0);
    CU_ASSERT(memcmp(r[0].lse, r[1].lse, N * p.c.H * sizeof(float)) == 0);
    CU_ASSERT(memcmp(r[0].dqkv, r[1].dqkv, N * p.W * sizeof(float)) == 0);
    result_free(&r[0]);
    result_free(&r[1]);
    problem_free(&p);
}

/* The group check at setup: one rank with other sequences, local tokens or kv heads fails it on every rank, naming
 * the ranges; a Tl that is no zigzag share fails it too. One rank has no group: anything goes. */
static void test_agreement(void) {
    const rt_attn_shape shape = {4, 2, 16, 64, 64, 64, 1}, other_kv = {4, 1, 16, 64, 64, 64, 1};
    const int last = n_ranks - 1;
    struct {
        size_t n_seqs, Tl;
        const rt_attn_shape *shape;
        const char *names;
    } odd_one[] = {
        {my_rank == last ? 3 : 2, 8, &shape, "sequences 2..3"},
        {2, my_rank == last ? 10 : 8, &shape, "local tokens 8..10"},
        {2, 8, my_rank == last ? &other_kv : &shape, "kv row floats 16..32"},
    };
    for (int i = 0; i < 3; i++) {
        seqpar_ctx ctx = {.backend = test_backend(), .comm = world};
        rt_error err = {{0}};
        const int rc = seqpar_agree_shapes(&ctx, odd_one[i].n_seqs, odd_one[i].Tl, odd_one[i].shape, &err);
        if (n_ranks == 1) {
            CU_ASSERT(rc == 0 && ctx.group_agreed);
            continue;
        }
        CU_ASSERT(rc == -1 && !ctx.group_agreed);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "disagree"));
        if (!strstr(err.msg, odd_one[i].names))
            fprintf(stderr, "\n  expected \"%s\" in: %s\n", odd_one[i].names, err.msg);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, odd_one[i].names));
    }
    seqpar_ctx ctx = {.backend = test_backend(), .comm = world};
    rt_error err = {{0}};
    const int rc = seqpar_agree_shapes(&ctx, 2, 7, &shape, &err); /* 7 tokens: no two equal chunks */
    CU_ASSERT(n_ranks == 1 ? rc == 0 : rc == -1 && strstr(err.msg, "divide") != NULL);
}

/* ------------------------------------------------------------------ misuse of a ring call: fatal, before any
 * transfer (so a forked child can show it without MPI) */

/* Runs misuse(arg) in a child; expects exit 1 and message on stderr. The alarm: a call that goes on to the ring
 * would wait for peers that never come. */
static void expect_fatal(void (*misuse)(void *arg), void *arg, const char *message) {
    test_expect_fatal(misuse, arg, 10, message);
}

typedef struct {
    seqpar_ctx *ctx;
    ring_problem *p;
    seqpar_tokens tokens;
} misuse_call;

static void misuse_forward(void *arg) {
    misuse_call *call = arg;
    ring_result r = result_make(call->p);
    run_forward_of(call->ctx, call->p, &r, 0, &call->tokens);
}

static void misuse_backward(void *arg) {
    misuse_call *call = arg;
    ring_result r = result_make(call->p);
    run_backward_of(call->ctx, call->p, &r, 0, &call->tokens);
}

/* A ring call before the group agreed, with other shapes than agreed, or with positions that are not this rank's
 * zigzag share ends the job naming what is wrong; one rank takes all of it. */
static void test_ring_call_misuse(void) {
    if (n_ranks == 1) return; /* no group: nothing to agree on, any positions */
    ring_problem p = problem_make((ring_case){4, 2, 16, 6, 1, 3, 0}, 800);
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    seqpar_ctx unagreed = {.backend = test_backend(), .mem = &mem, .comm = world};
    misuse_call call = {&unagreed, &p, p.tokens};
    expect_fatal(misuse_forward, &call, "before the group agreed");
    seqpar_ctx ctx = ctx_make(&mem, &p, 0);
    call.ctx = &ctx;
    call.tokens.n_seqs = 2;
    expect_fatal(misuse_forward, &call, "call of 2 sequences x 12 local tokens");
    expect_fatal(misuse_backward, &call, "agreed on 3 x 12");
    call.tokens.n_seqs = 3;
    int64_t *moved = malloc(p.B * p.Tl * sizeof(int64_t));
    memcpy(moved, p.host_pos, p.B * p.Tl * sizeof(int64_t));
    moved[2 * p.Tl + 7] += 1; /* sequence 2, local token 7 */
    call.tokens.host_pos = moved;
    expect_fatal(misuse_forward, &call, "sequence 2, local token 7");
    expect_fatal(misuse_backward, &call, "zigzag share");
    free(moved);
    seqpar_ctx_free(&ctx);
    rt_device_memory_destroy(&mem);
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

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    my_rank = world->rank;
    n_ranks = world->size;
    test_case tests[] = {
        {"ring matches full attention (MHA, GQA, head dims, chunks, block sizes)", test_matches_full_attention},
        {"ring without the causal mask", test_not_causal},
        {"packed documents: the ring matches full attention with a document mask", test_documents},
        {"packed documents: changing one document leaves every other's bits", test_documents_leak_probe},
        {"B sequences in one call == one at a time, bitwise; P-1 messages per call", test_batched_equals_one_at_a_time},
        {"backward accumulates, buffers reused", test_backward_accumulates},
        {"buffers grow with the sequence", test_buffers_grow},
        {"seqpar_reserve covers every buffer of the calls", test_reserve_covers_calls},
        {"deterministic run to run", test_deterministic},
        {"zigzag spans cover the sequence", test_spans_cover_sequence},
        {"bad layout gives a clear error", test_bad_layout},
        {"the group agrees on the shapes at setup", test_agreement},
        {"a ring call off the agreed shapes or the zigzag is fatal", test_ring_call_misuse},
    };
    int rc = test_mpi_run_suite(world, "test_ring_attention", tests, (int)(sizeof tests / sizeof tests[0]));
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
