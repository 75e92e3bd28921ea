/* test_attention.c: blocked CPU attention and the local seqpar path against a naive double-precision reference. */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "runtime/backend/cpu/backend_cpu_internal.h"
#include "runtime/backend/registry.h"
#include "seqpar/seqpar.h"
#include "tests/support/expect_fatal.h"
#include "tests/support/testing.h"

/*
 * The reference is plain softmax attention written out in double: every
 * score, one max, one sum, with the causal mask taken from positions and
 * GQA head sharing; packed documents (the kernels' q_first) are given to
 * it as the document of every position. Its backward is the analytic one
 * (P, dP, delta as sum_j P dP, dS), checked itself against central finite
 * differences.
 *
 * Tolerances (max relative error, testing.h, against the reference rounded
 * to float):
 *   forward out: 1e-5, floor 0.1: outputs are averages of values in
 *                [-1, 1], and fp32 sums of such terms carry absolute
 *                errors of a few 1e-8..1e-7, so outputs that cancel to
 *                near 0 are held to 1e-6 absolute
 *   forward lse: 1e-5, floor 1
 *   backward:    1e-4, floor 1e-2 * max |reference| of that gradient
 *   kernel vs finite differences: 1e-4, same floor; reference vs finite
 *                differences: 1e-7
 *   block order: 1e-6 absolute (floor 1; |out| <= 1, lse ~ 5)
 *   accumulate twice = 2x: 1e-6, floor 1e-2 * max |gradient|
 *
 * Workspaces. The kernels get exactly the bytes attn_workspace_bytes
 * reports, from malloc (the seqpar path: from an arena, also exact), so
 * the sanitizer build sees any write past them; a guard pattern behind
 * the direct calls' workspaces catches the same in the release build.
 */
#define OUT_FLOOR 1e-1
#define OUT_TOL 1e-5
#define LSE_FLOOR 1.0
#define LSE_TOL 1e-5
#define GRAD_TOL 1e-4
#define PAD_SENTINEL 12345.0f

/* ------------------------------------------------------------------ reference (double, packed rows) */

typedef struct {
    int H, Hkv, D;
    int causal;
    const int *doc; /* NULL, or the document of every position (non-decreasing): a key of an earlier document than
                     * its query's is hidden (with causal: only the query's own document is visible) */
} ref_shape;

/* Scores of query row i, head h against every key; returns the number of visible keys. */
static size_t ref_scores(double *s, int *visible, const ref_shape *r, const double *q, const double *k,
                         const int64_t *q_pos, const int64_t *k_pos, size_t i, int h, size_t Tk) {
    const int D = r->D, kvh = h / (r->H / r->Hkv);
    size_t n_visible = 0;
    for (size_t j = 0; j < Tk; j++) {
        visible[j] = !(r->causal && k_pos[j] > q_pos[i]) && !(r->doc && r->doc[k_pos[j]] < r->doc[q_pos[i]]);
        double dot = 0.0;
        for (int d = 0; d < D; d++)
            dot += q[(i * r->H + h) * D + d] * k[(j * r->Hkv + kvh) * D + d];
        s[j] = dot / sqrt((double)D);
        n_visible += (size_t)visible[j];
    }
    return n_visible;
}

/* out (Tq, H*D), lse (Tq, H); q (Tq, H*D), k, v (Tk, Hkv*D). A query with no visible key: out 0, lse -inf. */
static void ref_forward(double *out, double *lse, const ref_shape *r, const double *q, const double *k, const double *v,
                        const int64_t *q_pos, const int64_t *k_pos, size_t Tq, size_t Tk) {
    const int D = r->D;
    double *s = malloc(Tk * sizeof(double));
    int *visible = malloc(Tk * sizeof(int));
    for (size_t i = 0; i < Tq; i++)
        for (int h = 0; h < r->H; h++) {
            const int kvh = h / (r->H / r->Hkv);
            double *o = out + (i * r->H + h) * D;
            for (int d = 0; d < D; d++)
                o[d] = 0.0;
            if (ref_scores(s, visible, r, q, k, q_pos, k_pos, i, h, Tk) == 0) {
                lse[i * r->H + h] = -INFINITY;
                continue;
            }
            double mx = -INFINITY, sum = 0.0;
            for (size_t j = 0; j < Tk; j++)
                if (visible[j] && s[j] > mx) mx = s[j];
            for (size_t j = 0; j < Tk; j++)
                if (visible[j]) sum += exp(s[j] - mx);
            const double L = mx + log(sum);
            lse[i * r->H + h] = L;
            for (size_t j = 0; j < Tk; j++)
                if (visible[j])
                    for (int d = 0; d < D; d++)
                        o[d] += exp(s[j] - L) * v[(j * r->Hkv + kvh) * D + d];
        }
    free(s);
    free(visible);
}

/* Analytic backward of ref_forward: dq (Tq, H*D), dk, dv (Tk, Hkv*D) are set (not accumulated). */
static void ref_backward(double *dq, double *dk, double *dv, const ref_shape *r, const double *dout, const double *q,
                         const double *k, const double *v, const int64_t *q_pos, const int64_t *k_pos, size_t Tq,
                         size_t Tk) {
    const int D = r->D;
    const double scale = 1.0 / sqrt((double)D);
    memset(dq, 0, Tq * r->H * D * sizeof(double));
    memset(dk, 0, Tk * r->Hkv * D * sizeof(double));
    memset(dv, 0, Tk * r->Hkv * D * sizeof(double));
    double *s = malloc(Tk * sizeof(double)), *p = malloc(Tk * sizeof(double)), *dp = malloc(Tk * sizeof(double));
    int *visible = malloc(Tk * sizeof(int));
    for (size_t i = 0; i < Tq; i++)
        for (int h = 0; h < r->H; h++) {
            const int kvh = h / (r->H / r->Hkv);
            if (ref_scores(s, visible, r, q, k, q_pos, k_pos, i, h, Tk) == 0) continue;
            double mx = -INFINITY, sum = 0.0;
            for (size_t j = 0; j < Tk; j++)
                if (visible[j] && s[j] > mx) mx = s[j];
            for (size_t j = 0; j < Tk; j++)
                sum += visible[j] ? exp(s[j] - mx) : 0.0;
            const double *g = dout + (i * r->H + h) * D;
            double delta = 0.0;
            for (size_t j = 0; j < Tk; j++) {
                p[j] = visible[j] ? exp(s[j] - mx) / sum : 0.0;
                dp[j] = 0.0;
                for (int d = 0; d < D; d++)
                    dp[j] += g[d] * v[(j * r->Hkv + kvh) * D + d];
                delta += p[j] * dp[j];
            }
            for (size_t j = 0; j < Tk; j++) {
                const double ds = p[j] * (dp[j] - delta);
                for (int d = 0; d < D; d++) {
                    dq[(i * r->H + h) * D + d] += scale * ds * k[(j * r->Hkv + kvh) * D + d];
                    dk[(j * r->Hkv + kvh) * D + d] += scale * ds * q[(i * r->H + h) * D + d];
                    dv[(j * r->Hkv + kvh) * D + d] += p[j] * g[d];
                }
            }
        }
    free(s);
    free(p);
    free(dp);
    free(visible);
}

/* ------------------------------------------------------------------ problems in the kernel's layouts */

typedef struct {
    size_t T;
    int H, Hkv, D;
    int causal;
    int interleaved; /* q, k, v side by side in one (T, (H + 2 Hkv) D) row like GPT-2's qkv, out rows padded */
} attn_case;

typedef struct {
    attn_case c;
    rt_attn_shape shape;
    size_t row_q, row_kv; /* H*D, Hkv*D */
    float *qkv, *dqkv;    /* storage of q, k, v and of dq, dk, dv (same layout) */
    float *q, *k, *v, *dq, *dk, *dv;
    float *out, *dout;  /* T rows at out_stride; padding columns hold PAD_SENTINEL */
    float *lse, *delta; /* (T, H) */
    int64_t *pos;
} attn_problem;

static attn_problem problem_make(attn_case c, uint64_t seed) {
    attn_problem p;
    memset(&p, 0, sizeof p);
    p.c = c;
    p.row_q = (size_t)c.H * c.D;
    p.row_kv = (size_t)c.Hkv * c.D;
    const size_t total = c.T * (p.row_q + 2 * p.row_kv);
    p.qkv = malloc(total * sizeof(float));
    p.dqkv = calloc(total, sizeof(float));
    if (c.interleaved) {
        const size_t W = p.row_q + 2 * p.row_kv;
        p.q = p.qkv, p.k = p.qkv + p.row_q, p.v = p.qkv + p.row_q + p.row_kv;
        p.dq = p.dqkv, p.dk = p.dqkv + p.row_q, p.dv = p.dqkv + p.row_q + p.row_kv;
        p.shape = (rt_attn_shape){c.H, c.Hkv, c.D, W, W, p.row_q + 5, c.causal};
    } else {
        p.q = p.qkv, p.k = p.qkv + c.T * p.row_q, p.v = p.k + c.T * p.row_kv;
        p.dq = p.dqkv, p.dk = p.dqkv + c.T * p.row_q, p.dv = p.dk + c.T * p.row_kv;
        p.shape = (rt_attn_shape){c.H, c.Hkv, c.D, p.row_q, p.row_kv, p.row_q, c.causal};
    }
    /* scores with std ~1.3 so the softmax is far from uniform */
    test_fill_uniform(p.qkv, total, -2.0f, 2.0f, seed);
    for (size_t i = 0; i < c.T; i++)
        test_fill_uniform(p.v + i * p.shape.kv_stride, p.row_kv, -1.0f, 1.0f, seed + 1 + i);
    const size_t n_out = c.T * p.shape.out_stride;
    p.out = malloc(n_out * sizeof(float));
    p.dout = malloc(n_out * sizeof(float));
    test_fill_uniform(p.dout, n_out, -1.0f, 1.0f, seed + 7777);
    for (size_t i = 0; i < n_out; i++)
        p.out[i] = PAD_SENTINEL;
    p.lse = malloc(c.T * c.H * sizeof(float));
    p.delta = malloc(c.T * c.H * sizeof(float));
    p.pos = malloc(c.T * sizeof(int64_t));
    for (size_t i = 0; i < c.T; i++)
        p.pos[i] = (int64_t)i;
    return p;
}

static void problem_free(attn_problem *p) {
    free(p->qkv);
    free(p->dqkv);
    free(p->out);
    free(p->dout);
    free(p->lse);
    free(p->delta);
    free(p->pos);
}

/* Copies n rows of width floats at stride into a packed double array, and back. */
static double *pack_double(const float *src, size_t n, size_t width, size_t stride) {
    double *dst = malloc(n * width * sizeof(double));
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < width; c++)
            dst[i * width + c] = src[i * stride + c];
    return dst;
}

static float *pack_float(const float *src, size_t n, size_t width, size_t stride) {
    float *dst = malloc(n * width * sizeof(float));
    for (size_t i = 0; i < n; i++)
        memcpy(dst + i * width, src + i * stride, width * sizeof(float));
    return dst;
}

static float *to_float(const double *src, size_t n) {
    float *dst = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        dst[i] = (float)src[i];
    return dst;
}

static double max_abs(const double *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fabs(x[i]) > m ? fabs(x[i]) : m;
    return m;
}

/* Compares n rows of width floats at stride with the packed double reference. */
static void check_rows(const float *got, size_t stride, const double *ref, size_t n, size_t width, double floor,
                       double tol, const char *what) {
    float *got_packed = pack_float(got, n, width, stride);
    float *ref_f = to_float(ref, n * width);
    TEST_ASSERT_CLOSE(got_packed, ref_f, n * width, floor, tol, what);
    free(got_packed);
    free(ref_f);
}

/* Reference forward and backward of a whole problem (queries and keys = all T tokens). */
typedef struct {
    double *out, *lse, *dq, *dk, *dv;
} reference;

/* Of rows [row0, row0 + T) alone, as one sequence. */
static reference reference_of_rows(const attn_problem *p, size_t row0, size_t T) {
    const attn_case *c = &p->c;
    ref_shape r = {c->H, c->Hkv, c->D, c->causal, NULL};
    const int64_t *pos = p->pos + row0;
    double *q = pack_double(p->q + row0 * p->shape.q_stride, T, p->row_q, p->shape.q_stride);
    double *k = pack_double(p->k + row0 * p->shape.kv_stride, T, p->row_kv, p->shape.kv_stride);
    double *v = pack_double(p->v + row0 * p->shape.kv_stride, T, p->row_kv, p->shape.kv_stride);
    double *dout = pack_double(p->dout + row0 * p->shape.out_stride, T, p->row_q, p->shape.out_stride);
    reference ref;
    ref.out = malloc(T * p->row_q * sizeof(double));
    ref.lse = malloc(T * c->H * sizeof(double));
    ref.dq = malloc(T * p->row_q * sizeof(double));
    ref.dk = malloc(T * p->row_kv * sizeof(double));
    ref.dv = malloc(T * p->row_kv * sizeof(double));
    ref_forward(ref.out, ref.lse, &r, q, k, v, pos, pos, T, T);
    ref_backward(ref.dq, ref.dk, ref.dv, &r, dout, q, k, v, pos, pos, T, T);
    free(q);
    free(k);
    free(v);
    free(dout);
    return ref;
}

static reference reference_make(const attn_problem *p) { return reference_of_rows(p, 0, p->c.T); }

static void reference_free(reference *ref) {
    free(ref->out);
    free(ref->lse);
    free(ref->dq);
    free(ref->dk);
    free(ref->dv);
}

static void check_forward(const attn_problem *p, const reference *ref, const char *what) {
    char label[160];
    snprintf(label, sizeof label, "%s out", what);
    check_rows(p->out, p->shape.out_stride, ref->out, p->c.T, p->row_q, OUT_FLOOR, OUT_TOL, label);
    snprintf(label, sizeof label, "%s lse", what);
    check_rows(p->lse, p->c.H, ref->lse, p->c.T, (size_t)p->c.H, LSE_FLOOR, LSE_TOL, label);
    /* the padding of out rows is never written */
    int pad_intact = 1;
    for (size_t i = 0; i < p->c.T; i++)
        for (size_t c = p->row_q; c < p->shape.out_stride; c++)
            pad_intact &= p->out[i * p->shape.out_stride + c] == PAD_SENTINEL;
    CU_ASSERT(pad_intact);
}

static void check_backward(const attn_problem *p, const reference *ref, double tol, const char *what) {
    char label[160];
    const size_t T = p->c.T;
    snprintf(label, sizeof label, "%s dq", what);
    check_rows(p->dq, p->shape.q_stride, ref->dq, T, p->row_q, 1e-2 * max_abs(ref->dq, T * p->row_q), tol, label);
    snprintf(label, sizeof label, "%s dk", what);
    check_rows(p->dk, p->shape.kv_stride, ref->dk, T, p->row_kv, 1e-2 * max_abs(ref->dk, T * p->row_kv), tol, label);
    snprintf(label, sizeof label, "%s dv", what);
    check_rows(p->dv, p->shape.kv_stride, ref->dv, T, p->row_kv, 1e-2 * max_abs(ref->dv, T * p->row_kv), tol, label);
}

/* ------------------------------------------------------------------ workspaces */

enum { GUARD_BYTES = 4096, GUARD_BYTE = 0xA5 };

/* An exact-size workspace for calls up to (Tq, Tk), 64-byte aligned, followed by a guard of GUARD_BYTES. */
typedef struct {
    unsigned char *ptr;
    size_t bytes;
} test_workspace;

static test_workspace workspace_make(size_t Tq, size_t Tk, const rt_attn_shape *shape) {
    test_workspace ws;
    ws.bytes = rt_be_attn_workspace_bytes(rt_backend_cpu(), Tq, Tk, shape);
    ws.ptr = aligned_alloc(64, (ws.bytes + GUARD_BYTES + 63) / 64 * 64);
    memset(ws.ptr + ws.bytes, GUARD_BYTE, GUARD_BYTES);
    return ws;
}

/* Frees ws; asserts the kernels wrote nothing past its reported size. */
static void workspace_free(test_workspace *ws) {
    int intact = 1;
    for (size_t i = 0; i < GUARD_BYTES; i++)
        intact &= ws->ptr[ws->bytes + i] == GUARD_BYTE;
    if (!intact) fprintf(stderr, "\n  a kernel wrote past its workspace of %zu bytes\n", ws->bytes);
    CU_ASSERT(intact);
    free(ws->ptr);
}

/* ------------------------------------------------------------------ the seqpar local path */

/* The attention kernels are the CPU table's; memory ops are plain host ones (what the CPU backend does), so
 * these tests depend on nothing else of the backend. */
static void host_memset_zero(const rt_backend *be, void *dst, size_t bytes) { (void)be, memset(dst, 0, bytes); }
/* Copies that read [watched_lo, watched_hi) (a call's device positions, which only the kernels may read). */
static uintptr_t watched_lo, watched_hi;
static size_t watched_reads;
static void host_copy(const rt_backend *be, void *dst, const void *src, size_t bytes) {
    const uintptr_t from = (uintptr_t)src;
    if (from < watched_hi && from + bytes > watched_lo) watched_reads++;
    (void)be, memcpy(dst, src, bytes);
}

static const rt_backend *test_backend(void) {
    static rt_backend backend;
    backend = *rt_backend_cpu();
    backend.memory.memset_zero = host_memset_zero;
    backend.memory.copy = host_copy;
    return &backend;
}

/* The arena of the seqpar contexts' workspaces (the CPU's, so allocations are exact-size host memory). */
static rt_device_memory test_mem;

/* A comm-less context whose workspace is reserved for the problem, as the model does at setup. */
static seqpar_ctx ctx_make(const attn_problem *p, size_t block_size) {
    seqpar_ctx ctx;
    memset(&ctx, 0, sizeof ctx);
    ctx.backend = test_backend();
    ctx.mem = &test_mem;
    ctx.comm = NULL;
    ctx.block_size = block_size;
    rt_error err;
    CU_ASSERT_FATAL(seqpar_reserve(&ctx, 1, p->c.T, &p->shape, &err) == 0);
    return ctx;
}

/* The problem as one sequence of T tokens; host memory is the CPU's device memory, so one array serves both. */
static seqpar_tokens whole_sequence(const attn_problem *p, size_t T) {
    return (seqpar_tokens){.n_seqs = 1, .Tl = T, .pos = p->pos, .host_pos = p->pos};
}

static void run_forward(attn_problem *p, size_t block_size) {
    seqpar_ctx ctx = ctx_make(p, block_size);
    const seqpar_tokens tokens = whole_sequence(p, p->c.T);
    seqpar_attention_forward(&ctx, p->out, p->lse, p->q, p->k, p->v, &tokens, &p->shape);
    seqpar_ctx_free(&ctx);
}

static void run_backward(attn_problem *p, size_t block_size) {
    seqpar_ctx ctx = ctx_make(p, block_size);
    const seqpar_tokens tokens = whole_sequence(p, p->c.T);
    seqpar_attention_backward(&ctx, p->dq, p->dk, p->dv, p->delta, p->dout, p->out, p->lse, p->q, p->k, p->v, &tokens,
                              &p->shape);
    seqpar_ctx_free(&ctx);
}

static const attn_case cases[] = {
    {96, 4, 2, 16, 1, 1},  /* GQA 2:1, interleaved qkv, padded out rows */
    {96, 4, 1, 8, 1, 0},   /* MQA, packed */
    {96, 4, 4, 64, 0, 1},  /* MHA, non-causal, interleaved */
    {96, 4, 2, 64, 0, 0},  /* GQA, non-causal, packed */
    {100, 3, 3, 8, 1, 0},  /* 3 heads: odd head count with 2 threads */
    {333, 2, 1, 16, 1, 1}, /* several query and key tiles: skipping and diagonal masks */
    {257, 6, 3, 16, 1, 0}, /* kv heads not a multiple of the thread count */
};
static const size_t block_sizes[] = {0, 1, 7, 16, 64};
#define N_CASES (sizeof cases / sizeof cases[0])
#define N_BLOCK_SIZES (sizeof block_sizes / sizeof block_sizes[0])

static void case_label(char *label, size_t n, const attn_case *c, size_t block_size) {
    snprintf(label, n, "T=%zu H=%d Hkv=%d D=%d causal=%d interleaved=%d block=%zu", c->T, c->H, c->Hkv, c->D, c->causal,
             c->interleaved, block_size);
}

static void test_forward_matches_reference(void) {
    for (size_t ci = 0; ci < N_CASES; ci++) {
        attn_problem p = problem_make(cases[ci], 100 + ci);
        reference ref = reference_make(&p);
        for (size_t bi = 0; bi < N_BLOCK_SIZES; bi++) {
            char label[160];
            case_label(label, sizeof label, &cases[ci], block_sizes[bi]);
            run_forward(&p, block_sizes[bi]);
            check_forward(&p, &ref, label);
        }
        reference_free(&ref);
        problem_free(&p);
    }
}

static void test_backward_matches_reference(void) {
    static const size_t bwd_block_sizes[] = {0, 7, 64};
    for (size_t ci = 0; ci < N_CASES; ci++) {
        attn_problem p = problem_make(cases[ci], 200 + ci);
        reference ref = reference_make(&p);
        for (size_t bi = 0; bi < 3; bi++) {
            char label[160];
            case_label(label, sizeof label, &cases[ci], bwd_block_sizes[bi]);
            memset(p.dqkv, 0, p.c.T * (p.row_q + 2 * p.row_kv) * sizeof(float));
            run_forward(&p, bwd_block_sizes[bi]);
            run_backward(&p, bwd_block_sizes[bi]);
            check_backward(&p, &ref, GRAD_TOL, label);
        }
        reference_free(&ref);
        problem_free(&p);
    }
}

/* The loss sum(out * dout) of the reference forward, for finite differences. */
static double ref_loss(const ref_shape *r, const double *dout, const double *q, const double *k, const double *v,
                       const int64_t *pos, size_t T) {
    double *out = malloc(T * r->H * r->D * sizeof(double)), *lse = malloc(T * r->H * sizeof(double));
    ref_forward(out, lse, r, q, k, v, pos, pos, T, T);
    double loss = 0.0;
    for (size_t i = 0; i < T * r->H * r->D; i++)
        loss += out[i] * dout[i];
    free(out);
    free(lse);
    return loss;
}

static void test_backward_finite_differences(void) {
    const attn_case c = {10, 2, 1, 4, 1, 0};
    attn_problem p = problem_make(c, 300);
    const ref_shape r = {c.H, c.Hkv, c.D, c.causal, NULL};
    double *q = pack_double(p.q, c.T, p.row_q, p.row_q);
    double *k = pack_double(p.k, c.T, p.row_kv, p.row_kv);
    double *v = pack_double(p.v, c.T, p.row_kv, p.row_kv);
    double *dout = pack_double(p.dout, c.T, p.row_q, p.row_q);
    double *inputs[3] = {q, k, v};
    const size_t sizes[3] = {c.T * p.row_q, c.T * p.row_kv, c.T * p.row_kv};
    const float *kernel_grads[3] = {p.dq, p.dk, p.dv};
    const char *names[3] = {"dq", "dk", "dv"};

    double *ref_grads[3];
    for (int t = 0; t < 3; t++)
        ref_grads[t] = malloc(sizes[t] * sizeof(double));
    ref_backward(ref_grads[0], ref_grads[1], ref_grads[2], &r, dout, q, k, v, p.pos, p.pos, c.T, c.T);
    run_forward(&p, 3);
    run_backward(&p, 3);

    const double eps = 1e-5;
    for (int t = 0; t < 3; t++) {
        double *fd = malloc(sizes[t] * sizeof(double));
        for (size_t i = 0; i < sizes[t]; i++) {
            const double saved = inputs[t][i];
            inputs[t][i] = saved + eps;
            const double up = ref_loss(&r, dout, q, k, v, p.pos, c.T);
            inputs[t][i] = saved - eps;
            const double down = ref_loss(&r, dout, q, k, v, p.pos, c.T);
            inputs[t][i] = saved;
            fd[i] = (up - down) / (2 * eps);
        }
        char label[64];
        const double floor = 1e-2 * max_abs(fd, sizes[t]);
        float *fd_f = to_float(fd, sizes[t]), *ref_f = to_float(ref_grads[t], sizes[t]);
        snprintf(label, sizeof label, "reference %s vs finite differences", names[t]);
        /* compared in double: the float rounding of the test helper would hide a 1e-7 check */
        double worst = 0.0;
        for (size_t i = 0; i < sizes[t]; i++) {
            const double err = fabs(ref_grads[t][i] - fd[i]) / fmax(fabs(fd[i]), floor);
            worst = err > worst ? err : worst;
        }
        if (!(worst <= 1e-7)) fprintf(stderr, "\n  %s: max rel error %.3g > 1e-7\n", label, worst);
        CU_ASSERT(worst <= 1e-7);
        snprintf(label, sizeof label, "kernel %s vs finite differences", names[t]);
        TEST_ASSERT_CLOSE(kernel_grads[t], fd_f, sizes[t], floor, GRAD_TOL, label);
        free(fd_f);
        free(ref_f);
        free(fd);
    }
    for (int t = 0; t < 3; t++)
        free(ref_grads[t]);
    free(q);
    free(k);
    free(v);
    free(dout);
    problem_free(&p);
}

/* ------------------------------------------------------------------ positions that are not one contiguous range */

/* Block forward + backward of queries (rows q_rows of the problem) over all keys, in key blocks of block_size. */
static void kernel_subset(const attn_problem *p, const size_t *q_rows, size_t Tq, size_t block_size, float *out,
                          float *lse, float *dq, float *dk, float *dv) {
    const rt_backend *b = rt_backend_cpu();
    const size_t T = p->c.T, H = (size_t)p->c.H;
    rt_attn_shape shape = p->shape;
    shape.q_stride = p->row_q;
    shape.out_stride = p->row_q;
    float *q = malloc(Tq * p->row_q * sizeof(float)), *dout = malloc(Tq * p->row_q * sizeof(float));
    float *delta = malloc(Tq * H * sizeof(float));
    int64_t *q_pos = malloc(Tq * sizeof(int64_t));
    for (size_t i = 0; i < Tq; i++) {
        memcpy(q + i * p->row_q, p->q + q_rows[i] * p->shape.q_stride, p->row_q * sizeof(float));
        memcpy(dout + i * p->row_q, p->dout + q_rows[i] * p->shape.out_stride, p->row_q * sizeof(float));
        q_pos[i] = p->pos[q_rows[i]];
    }
    memset(out, 0, Tq * p->row_q * sizeof(float));
    for (size_t i = 0; i < Tq * H; i++)
        lse[i] = -INFINITY;
    test_workspace ws = workspace_make(Tq, T < block_size ? T : block_size, &shape);
    for (size_t j0 = 0; j0 < T; j0 += block_size) {
        const size_t len = T - j0 < block_size ? T - j0 : block_size, row = j0 * shape.kv_stride;
        rt_be_attn_block_forward(b, out, lse, q, p->k + row, p->v + row, q_pos, NULL, p->pos + j0, Tq, len, &shape,
                                 ws.ptr, ws.bytes);
    }
    rt_be_attn_delta(b, delta, out, dout, Tq, &shape);
    for (size_t j0 = 0; j0 < T; j0 += block_size) {
        const size_t len = T - j0 < block_size ? T - j0 : block_size, row = j0 * shape.kv_stride;
        rt_be_attn_block_backward(b, dq, dk + row, dv + row, dout, q, p->k + row, p->v + row, lse, delta, q_pos, NULL,
                                  p->pos + j0, Tq, len, &shape, ws.ptr, ws.bytes);
    }
    workspace_free(&ws);
    free(q);
    free(dout);
    free(delta);
    free(q_pos);
}

/* Reference of the same subset: queries q_rows over all keys (doc: NULL, or the documents, see ref_shape). */
static void reference_subset(const attn_problem *p, const size_t *q_rows, size_t Tq, const int *doc, double *out,
                             double *lse, double *dq, double *dk, double *dv) {
    const attn_case *c = &p->c;
    const ref_shape r = {c->H, c->Hkv, c->D, c->causal, doc};
    double *q_all = pack_double(p->q, c->T, p->row_q, p->shape.q_stride);
    double *dout_all = pack_double(p->dout, c->T, p->row_q, p->shape.out_stride);
    double *k = pack_double(p->k, c->T, p->row_kv, p->shape.kv_stride);
    double *v = pack_double(p->v, c->T, p->row_kv, p->shape.kv_stride);
    double *q = malloc(Tq * p->row_q * sizeof(double)), *dout = malloc(Tq * p->row_q * sizeof(double));
    int64_t *q_pos = malloc(Tq * sizeof(int64_t));
    for (size_t i = 0; i < Tq; i++) {
        memcpy(q + i * p->row_q, q_all + q_rows[i] * p->row_q, p->row_q * sizeof(double));
        memcpy(dout + i * p->row_q, dout_all + q_rows[i] * p->row_q, p->row_q * sizeof(double));
        q_pos[i] = p->pos[q_rows[i]];
    }
    ref_forward(out, lse, &r, q, k, v, q_pos, p->pos, Tq, c->T);
    ref_backward(dq, dk, dv, &r, dout, q, k, v, q_pos, p->pos, Tq, c->T);
    free(q_all);
    free(dout_all);
    free(k);
    free(v);
    free(q);
    free(dout);
    free(q_pos);
}

/* Queries at rows q_rows over all keys of the problem: kernel (several key block sizes) against the reference. */
static void check_subset(const attn_problem *p, const size_t *q_rows, size_t Tq, const char *what) {
    const size_t T = p->c.T, H = (size_t)p->c.H;
    double *ref_out = malloc(Tq * p->row_q * sizeof(double)), *ref_lse = malloc(Tq * H * sizeof(double));
    double *ref_dq = malloc(Tq * p->row_q * sizeof(double));
    double *ref_dk = malloc(T * p->row_kv * sizeof(double)), *ref_dv = malloc(T * p->row_kv * sizeof(double));
    reference_subset(p, q_rows, Tq, NULL, ref_out, ref_lse, ref_dq, ref_dk, ref_dv);
    float *out = malloc(Tq * p->row_q * sizeof(float)), *lse = malloc(Tq * H * sizeof(float));
    float *dq = malloc(Tq * p->row_q * sizeof(float));
    /* dk, dv in the layout of k, v (rows at kv_stride) */
    const size_t kv_stride = p->shape.kv_stride;
    float *dk = malloc(T * kv_stride * sizeof(float)), *dv = malloc(T * kv_stride * sizeof(float));
    static const size_t block_sizes_subset[] = {16, 23, 1000};
    for (int bi = 0; bi < 3; bi++) {
        char label[160];
        memset(dq, 0, Tq * p->row_q * sizeof(float));
        memset(dk, 0, T * kv_stride * sizeof(float));
        memset(dv, 0, T * kv_stride * sizeof(float));
        kernel_subset(p, q_rows, Tq, block_sizes_subset[bi], out, lse, dq, dk, dv);
        snprintf(label, sizeof label, "%s block=%zu out", what, block_sizes_subset[bi]);
        check_rows(out, p->row_q, ref_out, Tq, p->row_q, OUT_FLOOR, OUT_TOL, label);
        snprintf(label, sizeof label, "%s block=%zu lse", what, block_sizes_subset[bi]);
        check_rows(lse, H, ref_lse, Tq, H, LSE_FLOOR, LSE_TOL, label);
        snprintf(label, sizeof label, "%s block=%zu dq", what, block_sizes_subset[bi]);
        check_rows(dq, p->row_q, ref_dq, Tq, p->row_q, 1e-2 * max_abs(ref_dq, Tq * p->row_q), GRAD_TOL, label);
        snprintf(label, sizeof label, "%s block=%zu dk", what, block_sizes_subset[bi]);
        check_rows(dk, kv_stride, ref_dk, T, p->row_kv, 1e-2 * max_abs(ref_dk, T * p->row_kv), GRAD_TOL, label);
        snprintf(label, sizeof label, "%s block=%zu dv", what, block_sizes_subset[bi]);
        check_rows(dv, kv_stride, ref_dv, T, p->row_kv, 1e-2 * max_abs(ref_dv, T * p->row_kv), GRAD_TOL, label);
    }
    free(ref_out);
    free(ref_lse);
    free(ref_dq);
    free(ref_dk);
    free(ref_dv);
    free(out);
    free(lse);
    free(dq);
    free(dk);
    free(dv);
}

/* Zigzag-like: the queries of chunks [0, 16) and [48, 64) of a 64-token sequence attend to all 64 keys. */
static void test_zigzag_queries(void) {
    attn_problem p = problem_make((attn_case){64, 4, 2, 16, 1, 1}, 400);
    size_t q_rows[32];
    for (size_t i = 0; i < 16; i++)
        q_rows[i] = i, q_rows[16 + i] = 48 + i;
    check_subset(&p, q_rows, 32, "zigzag queries");
    problem_free(&p);
}

/* Shuffled positions: token i of the buffers sits at a random position; queries in another random order. */
static void test_shuffled_positions(void) {
    const size_t T = 300;
    attn_problem p = problem_make((attn_case){T, 4, 2, 16, 1, 0}, 500);
    uint64_t state = 12345;
    for (size_t i = T - 1; i > 0; i--) {
        size_t j = (size_t)(test_rand_u64(&state) % (i + 1));
        int64_t t = p.pos[i];
        p.pos[i] = p.pos[j];
        p.pos[j] = t;
    }
    size_t q_rows[300];
    for (size_t i = 0; i < T; i++)
        q_rows[i] = (i * 7) % T; /* 7 is prime to 300: a permutation */
    check_subset(&p, q_rows, T, "shuffled positions");
    problem_free(&p);
}

/* Queries before every key: rows stay untouched (out 0, lse -inf) and gradients receive nothing. */
static void test_no_visible_key(void) {
    attn_problem p = problem_make((attn_case){24, 2, 1, 8, 1, 0}, 600);
    const rt_backend *b = rt_backend_cpu();
    const size_t Tq = 8, Tk = 16, H = 2;
    float out[8 * 16], lse[8 * 2], delta[8 * 2], dq[8 * 16], dk[16 * 8], dv[16 * 8];
    memset(out, 0, sizeof out);
    for (size_t i = 0; i < Tq * H; i++)
        lse[i] = -INFINITY;
    for (size_t i = 0; i < Tq * p.row_q; i++)
        dq[i] = 0.5f;
    memset(dk, 0, sizeof dk);
    memset(dv, 0, sizeof dv);
    /* queries: tokens 0..7; keys: tokens 8..23 */
    const float *k = p.k + 8 * p.row_kv, *v = p.v + 8 * p.row_kv;
    test_workspace ws = workspace_make(Tq, Tk, &p.shape);
    rt_be_attn_block_forward(b, out, lse, p.q, k, v, p.pos, NULL, p.pos + 8, Tq, Tk, &p.shape, ws.ptr, ws.bytes);
    int untouched = 1;
    for (size_t i = 0; i < Tq * p.row_q; i++)
        untouched &= out[i] == 0.0f;
    for (size_t i = 0; i < Tq * H; i++)
        untouched &= lse[i] == -INFINITY;
    CU_ASSERT(untouched);
    rt_be_attn_delta(b, delta, out, p.dout, Tq, &p.shape);
    rt_be_attn_block_backward(b, dq, dk, dv, p.dout, p.q, k, v, lse, delta, p.pos, NULL, p.pos + 8, Tq, Tk, &p.shape,
                              ws.ptr, ws.bytes);
    workspace_free(&ws);
    int no_grad = 1;
    for (size_t i = 0; i < Tq * p.row_q; i++)
        no_grad &= dq[i] == 0.5f;
    for (size_t i = 0; i < Tk * p.row_kv; i++)
        no_grad &= dk[i] == 0.0f && dv[i] == 0.0f;
    CU_ASSERT(no_grad);
    problem_free(&p);
}

/* ------------------------------------------------------------------ several sequences in one seqpar call */

/* B = 3 sequences of 150 tokens in one local call, each with positions of its own: in order, shuffled (more runs
 * than the bookkeeping tracks), and two runs out of order (the later half first). Every sequence against the
 * reference of that sequence alone; the run bookkeeping reads the host positions (a separate array), never the
 * device ones; and one call of all three gives the same bits as three calls of one. */
static void test_seqpar_sequences_in_one_call(void) {
    const size_t B = 3, T = 150;
    attn_problem p = problem_make((attn_case){B * T, 4, 2, 16, 1, 1}, 1300);
    uint64_t state = 777;
    for (size_t i = 0; i < T; i++)
        p.pos[i] = (int64_t)i, p.pos[T + i] = (int64_t)i, p.pos[2 * T + i] = (int64_t)((i + T / 2) % T);
    for (size_t i = T - 1; i > 0; i--) {
        const size_t j = (size_t)(test_rand_u64(&state) % (i + 1));
        const int64_t t = p.pos[T + i];
        p.pos[T + i] = p.pos[T + j], p.pos[T + j] = t;
    }
    int64_t *host_pos = malloc(B * T * sizeof(int64_t));
    memcpy(host_pos, p.pos, B * T * sizeof(int64_t));
    const seqpar_tokens tokens = {.n_seqs = B, .Tl = T, .pos = p.pos, .host_pos = host_pos};
    const size_t total = B * T * (p.row_q + 2 * p.row_kv), n_out = B * T * p.shape.out_stride;
    float *out_each = malloc(n_out * sizeof(float)), *lse_each = malloc(B * T * p.c.H * sizeof(float));
    float *dqkv_each = malloc(total * sizeof(float));
    static const size_t sizes[] = {0, 7, 64};
    for (int bi = 0; bi < 3; bi++) {
        seqpar_ctx ctx = ctx_make(&p, sizes[bi]);
        memset(p.dqkv, 0, total * sizeof(float));
        watched_lo = (uintptr_t)p.pos, watched_hi = watched_lo + B * T * sizeof(int64_t), watched_reads = 0;
        seqpar_attention_forward(&ctx, p.out, p.lse, p.q, p.k, p.v, &tokens, &p.shape);
        seqpar_attention_backward(&ctx, p.dq, p.dk, p.dv, p.delta, p.dout, p.out, p.lse, p.q, p.k, p.v, &tokens,
                                  &p.shape);
        CU_ASSERT_EQUAL(watched_reads, 0);
        watched_lo = watched_hi = 0;
        for (size_t b = 0; b < B; b++) {
            char label[160];
            reference ref = reference_of_rows(&p, b * T, T);
            const size_t r0 = b * T, H = (size_t)p.c.H;
            snprintf(label, sizeof label, "sequence %zu of 3, block=%zu out", b, sizes[bi]);
            check_rows(p.out + r0 * p.shape.out_stride, p.shape.out_stride, ref.out, T, p.row_q, OUT_FLOOR, OUT_TOL,
                       label);
            snprintf(label, sizeof label, "sequence %zu of 3, block=%zu lse", b, sizes[bi]);
            check_rows(p.lse + r0 * H, H, ref.lse, T, H, LSE_FLOOR, LSE_TOL, label);
            const double floor_dq = 1e-2 * max_abs(ref.dq, T * p.row_q),
                         floor_dk = 1e-2 * max_abs(ref.dk, T * p.row_kv);
            const double floor_dv = 1e-2 * max_abs(ref.dv, T * p.row_kv);
            snprintf(label, sizeof label, "sequence %zu of 3, block=%zu dq", b, sizes[bi]);
            check_rows(p.dq + r0 * p.shape.q_stride, p.shape.q_stride, ref.dq, T, p.row_q, floor_dq, GRAD_TOL, label);
            snprintf(label, sizeof label, "sequence %zu of 3, block=%zu dk", b, sizes[bi]);
            check_rows(p.dk + r0 * p.shape.kv_stride, p.shape.kv_stride, ref.dk, T, p.row_kv, floor_dk, GRAD_TOL,
                       label);
            snprintf(label, sizeof label, "sequence %zu of 3, block=%zu dv", b, sizes[bi]);
            check_rows(p.dv + r0 * p.shape.kv_stride, p.shape.kv_stride, ref.dv, T, p.row_kv, floor_dv, GRAD_TOL,
                       label);
            reference_free(&ref);
        }
        /* one sequence per call, into copies of the buffers */
        memcpy(out_each, p.out, n_out * sizeof(float));
        memset(dqkv_each, 0, total * sizeof(float));
        const size_t q_shift = (size_t)(p.q - p.qkv), k_shift = (size_t)(p.k - p.qkv), v_shift = (size_t)(p.v - p.qkv);
        for (size_t b = 0; b < B; b++) {
            const size_t r0 = b * T, H = (size_t)p.c.H;
            const seqpar_tokens one = {.n_seqs = 1, .Tl = T, .pos = p.pos + r0, .host_pos = host_pos + r0};
            float *out = out_each + r0 * p.shape.out_stride, *lse = lse_each + r0 * H;
            const float *q = p.q + r0 * p.shape.q_stride, *k = p.k + r0 * p.shape.kv_stride;
            const float *v = p.v + r0 * p.shape.kv_stride;
            float *dq = dqkv_each + q_shift + r0 * p.shape.q_stride, *dk = dqkv_each + k_shift + r0 * p.shape.kv_stride;
            float *dv = dqkv_each + v_shift + r0 * p.shape.kv_stride;
            seqpar_attention_forward(&ctx, out, lse, q, k, v, &one, &p.shape);
            seqpar_attention_backward(&ctx, dq, dk, dv, p.delta + r0 * H, p.dout + r0 * p.shape.out_stride, out, lse, q,
                                      k, v, &one, &p.shape);
        }
        CU_ASSERT(memcmp(out_each, p.out, n_out * sizeof(float)) == 0);
        CU_ASSERT(memcmp(lse_each, p.lse, B * T * p.c.H * sizeof(float)) == 0);
        CU_ASSERT(memcmp(dqkv_each, p.dqkv, total * sizeof(float)) == 0);
        seqpar_ctx_free(&ctx);
    }
    free(out_each);
    free(lse_each);
    free(dqkv_each);
    free(host_pos);
    problem_free(&p);
}

/* ------------------------------------------------------------------ packed documents (q_first) */

/*
 * Documents are contiguous ranges of positions 0..T-1. The kernels take q_first, the first position of each
 * query's document; the reference takes the document of every position (ref_shape.doc) and nothing else, so a
 * wrong q_first bound in a kernel cannot agree with it by construction. Every test drives the kernels directly,
 * one call per key block, blocks merged one after another as seqpar does, and checks:
 *   - after every forward call, each query row that sees no key of that call (by the reference's rule) is bit for
 *     bit what it was before the call (out and lse), and after every backward call each such row of dq, and each
 *     key row of the block that no query sees, is bit for bit unchanged (no gradient, not even a rounding);
 *   - the final out, lse, dq, dk, dv against the reference with the tolerances of the causal cases, and no NaN or
 *     inf anywhere in them (every query sees itself).
 */

typedef struct {
    size_t T;
    int *doc;       /* (T) document of each position */
    int64_t *first; /* (T) first position of the document of each position: q_first of a query there */
} doc_layout;

/* Documents starting at starts[0] = 0 < starts[1] < ... < T. */
static doc_layout docs_from_starts(size_t T, const size_t *starts, size_t n_starts) {
    doc_layout d = {T, malloc(T * sizeof(int)), malloc(T * sizeof(int64_t))};
    CU_ASSERT_FATAL(n_starts > 0 && starts[0] == 0);
    size_t s = 0;
    for (size_t pos = 0; pos < T; pos++) {
        while (s + 1 < n_starts && starts[s + 1] <= pos)
            s++;
        d.doc[pos] = (int)s;
        d.first[pos] = (int64_t)starts[s];
    }
    return d;
}

/* Random documents: a quarter of them 1 token long, the others 1..max_len tokens. */
static doc_layout docs_random(size_t T, size_t max_len, uint64_t seed) {
    size_t *starts = malloc(T * sizeof(size_t)), n = 0;
    uint64_t state = seed;
    for (size_t at = 0; at < T; n++) {
        starts[n] = at;
        const size_t len = test_rand_u64(&state) % 4 == 0 ? 1 : 1 + (size_t)(test_rand_u64(&state) % max_len);
        at += len;
    }
    doc_layout d = docs_from_starts(T, starts, n);
    free(starts);
    return d;
}

static void docs_free(doc_layout *d) {
    free(d->doc);
    free(d->first);
}

/* The test's own mask (the reference's rule): key at position kp visible to the query at qp. */
static int doc_visible(const doc_layout *docs, int causal, int64_t qp, int64_t kp) {
    return (!causal || kp <= qp) && docs->doc[kp] >= docs->doc[qp];
}

typedef struct {
    size_t j0, len; /* rows [j0, j0 + len) of the problem's keys */
} key_block;

/* Blocks of size rows covering [0, T), in order or reversed. */
static size_t blocks_of(key_block *blocks, size_t T, size_t size, int reversed) {
    const size_t n = (T + size - 1) / size;
    for (size_t b = 0; b < n; b++) {
        const size_t j0 = (reversed ? n - 1 - b : b) * size;
        blocks[b] = (key_block){j0, T - j0 < size ? T - j0 : size};
    }
    return n;
}

/* What the per-call checks met (so a test can assert that its case really has them). */
typedef struct {
    size_t rows_hidden;  /* (query row, call) pairs: the row sees no key of the call */
    size_t tiles_hidden; /* (query tile of 64 rows, call) pairs: no row of the tile sees a key of the call */
} hidden_counts;

static int rows_equal(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof(float)) == 0; }

static int all_finite(const float *x, size_t n, size_t width, size_t stride) {
    int ok = 1;
    for (size_t i = 0; i < n; i++)
        for (size_t c = 0; c < width; c++)
            ok &= isfinite(x[i * stride + c]) != 0;
    return ok;
}

/* row_sees[i]: query i sees a key of block blk; key_seen[j] (j in blk): key j is seen by a query. */
static void visibility_of(const attn_problem *p, const doc_layout *docs, const int64_t *q_pos, size_t Tq, key_block blk,
                          int *row_sees, int *key_seen) {
    for (size_t i = 0; i < Tq; i++)
        row_sees[i] = 0;
    for (size_t j = blk.j0; j < blk.j0 + blk.len; j++) {
        key_seen[j] = 0;
        for (size_t i = 0; i < Tq; i++)
            if (doc_visible(docs, p->c.causal, q_pos[i], p->pos[j])) row_sees[i] = 1, key_seen[j] = 1;
    }
}

/* Queries at rows q_rows of the problem over all its keys, one call per key block (the blocks cover every key
 * once), with the documents' q_first: kernels against the reference, and the per-call checks above. */
static void check_documents(const attn_problem *p, const doc_layout *docs, const size_t *q_rows, size_t Tq,
                            const key_block *blocks, size_t n_blocks, const char *what, hidden_counts *seen) {
    const rt_backend *b = rt_backend_cpu();
    const size_t T = p->c.T, H = (size_t)p->c.H, RQ = p->row_q, KS = p->shape.kv_stride;
    rt_attn_shape shape = p->shape;
    shape.q_stride = RQ;
    shape.out_stride = RQ;
    float *q = malloc(Tq * RQ * sizeof(float)), *dout = malloc(Tq * RQ * sizeof(float));
    float *out = calloc(Tq * RQ, sizeof(float)), *lse = malloc(Tq * H * sizeof(float));
    float *delta = malloc(Tq * H * sizeof(float)), *dq = calloc(Tq * RQ, sizeof(float));
    float *dk = calloc(T * KS, sizeof(float)), *dv = calloc(T * KS, sizeof(float));
    float *before = malloc((Tq * RQ > 2 * T * KS ? Tq * RQ : 2 * T * KS) * sizeof(float));
    float *dq_before = malloc(Tq * RQ * sizeof(float));
    float *lse_before = malloc(Tq * H * sizeof(float));
    int64_t *q_pos = malloc(Tq * sizeof(int64_t)), *q_first = malloc(Tq * sizeof(int64_t));
    int *row_sees = malloc(Tq * sizeof(int)), *key_seen = malloc(T * sizeof(int));
    size_t max_len = 0;
    for (size_t bi = 0; bi < n_blocks; bi++)
        max_len = blocks[bi].len > max_len ? blocks[bi].len : max_len;
    for (size_t i = 0; i < Tq; i++) {
        memcpy(q + i * RQ, p->q + q_rows[i] * p->shape.q_stride, RQ * sizeof(float));
        memcpy(dout + i * RQ, p->dout + q_rows[i] * p->shape.out_stride, RQ * sizeof(float));
        q_pos[i] = p->pos[q_rows[i]];
        q_first[i] = docs->first[q_pos[i]];
    }
    for (size_t i = 0; i < Tq * H; i++)
        lse[i] = -INFINITY;
    test_workspace ws = workspace_make(Tq, max_len, &shape);
    int fwd_untouched = 1, bwd_untouched = 1;

    for (size_t bi = 0; bi < n_blocks; bi++) {
        const size_t j0 = blocks[bi].j0, len = blocks[bi].len;
        memcpy(before, out, Tq * RQ * sizeof(float));
        memcpy(lse_before, lse, Tq * H * sizeof(float));
        rt_be_attn_block_forward(b, out, lse, q, p->k + j0 * KS, p->v + j0 * KS, q_pos, q_first, p->pos + j0, Tq, len,
                                 &shape, ws.ptr, ws.bytes);
        visibility_of(p, docs, q_pos, Tq, blocks[bi], row_sees, key_seen);
        for (size_t t0 = 0; t0 < Tq; t0 += 64) {
            int tile_sees = 0;
            for (size_t i = t0; i < Tq && i < t0 + 64; i++) {
                tile_sees |= row_sees[i];
                if (row_sees[i]) continue;
                seen->rows_hidden++;
                fwd_untouched &= rows_equal(out + i * RQ, before + i * RQ, RQ);
                fwd_untouched &= rows_equal(lse + i * H, lse_before + i * H, H);
            }
            seen->tiles_hidden += !tile_sees;
        }
    }
    rt_be_attn_delta(b, delta, out, dout, Tq, &shape);
    for (size_t bi = 0; bi < n_blocks; bi++) {
        const size_t j0 = blocks[bi].j0, len = blocks[bi].len;
        float *dk_before = before, *dv_before = before + T * KS;
        memcpy(dk_before, dk, T * KS * sizeof(float));
        memcpy(dv_before, dv, T * KS * sizeof(float));
        memcpy(dq_before, dq, Tq * RQ * sizeof(float));
        rt_be_attn_block_backward(b, dq, dk + j0 * KS, dv + j0 * KS, dout, q, p->k + j0 * KS, p->v + j0 * KS, lse,
                                  delta, q_pos, q_first, p->pos + j0, Tq, len, &shape, ws.ptr, ws.bytes);
        visibility_of(p, docs, q_pos, Tq, blocks[bi], row_sees, key_seen);
        for (size_t i = 0; i < Tq; i++)
            if (!row_sees[i]) bwd_untouched &= rows_equal(dq + i * RQ, dq_before + i * RQ, RQ);
        for (size_t j = j0; j < j0 + len; j++)
            if (!key_seen[j]) {
                bwd_untouched &= rows_equal(dk + j * KS, dk_before + j * KS, p->row_kv);
                bwd_untouched &= rows_equal(dv + j * KS, dv_before + j * KS, p->row_kv);
            }
    }
    workspace_free(&ws);
    if (!fwd_untouched) fprintf(stderr, "\n  %s: a forward call changed a row that sees none of its keys\n", what);
    if (!bwd_untouched) fprintf(stderr, "\n  %s: a backward call gave gradient to a hidden row or key\n", what);
    CU_ASSERT(fwd_untouched);
    CU_ASSERT(bwd_untouched);

    double *ref_out = malloc(Tq * RQ * sizeof(double)), *ref_lse = malloc(Tq * H * sizeof(double));
    double *ref_dq = malloc(Tq * RQ * sizeof(double));
    double *ref_dk = malloc(T * p->row_kv * sizeof(double)), *ref_dv = malloc(T * p->row_kv * sizeof(double));
    reference_subset(p, q_rows, Tq, docs->doc, ref_out, ref_lse, ref_dq, ref_dk, ref_dv);
    char label[200];
    snprintf(label, sizeof label, "%s out", what);
    check_rows(out, RQ, ref_out, Tq, RQ, OUT_FLOOR, OUT_TOL, label);
    snprintf(label, sizeof label, "%s lse", what);
    check_rows(lse, H, ref_lse, Tq, H, LSE_FLOOR, LSE_TOL, label);
    snprintf(label, sizeof label, "%s dq", what);
    check_rows(dq, RQ, ref_dq, Tq, RQ, 1e-2 * max_abs(ref_dq, Tq * RQ), GRAD_TOL, label);
    snprintf(label, sizeof label, "%s dk", what);
    check_rows(dk, KS, ref_dk, T, p->row_kv, 1e-2 * max_abs(ref_dk, T * p->row_kv), GRAD_TOL, label);
    snprintf(label, sizeof label, "%s dv", what);
    check_rows(dv, KS, ref_dv, T, p->row_kv, 1e-2 * max_abs(ref_dv, T * p->row_kv), GRAD_TOL, label);
    const int finite = all_finite(out, Tq, RQ, RQ) && all_finite(lse, Tq, H, H) && all_finite(dq, Tq, RQ, RQ) &&
                       all_finite(dk, T, p->row_kv, KS) && all_finite(dv, T, p->row_kv, KS);
    if (!finite) fprintf(stderr, "\n  %s: NaN or inf in out, lse or a gradient\n", what);
    CU_ASSERT(finite);

    free(ref_out);
    free(ref_lse);
    free(ref_dq);
    free(ref_dk);
    free(ref_dv);
    free(q);
    free(dout);
    free(out);
    free(lse);
    free(delta);
    free(dq);
    free(dk);
    free(dv);
    free(before);
    free(dq_before);
    free(lse_before);
    free(q_pos);
    free(q_first);
    free(row_sees);
    free(key_seen);
}

/* All T queries over the key blocks of each size (0: one call of all keys; negative: that size, blocks reversed). */
static void check_documents_all_queries(const attn_problem *p, const doc_layout *docs, const int *sizes, size_t n_sizes,
                                        const char *what, hidden_counts *seen) {
    const size_t T = p->c.T;
    size_t *q_rows = malloc(T * sizeof(size_t));
    key_block *blocks = malloc(T * sizeof(key_block));
    for (size_t i = 0; i < T; i++)
        q_rows[i] = i;
    for (size_t si = 0; si < n_sizes; si++) {
        const size_t size = sizes[si] == 0 ? T : (size_t)abs(sizes[si]);
        const size_t n = blocks_of(blocks, T, size, sizes[si] < 0);
        char label[200];
        snprintf(label, sizeof label, "%s, H=%d Hkv=%d D=%d causal=%d interleaved=%d, key blocks of %zu%s", what,
                 p->c.H, p->c.Hkv, p->c.D, p->c.causal, p->c.interleaved, size, sizes[si] < 0 ? " reversed" : "");
        check_documents(p, docs, q_rows, T, blocks, n, label, seen);
    }
    free(q_rows);
    free(blocks);
}

/* Documents starting exactly at and one off the tile edges (queries 64, keys 128), with many 1-token documents
 * (at 0, 1, 63, 64, 65, 127, 128, 129, ... and the last position); GQA 2:1 and MQA. Over blocks of 128 keys in
 * order, the later query tiles see no key of the first blocks at all. */
static void test_documents_tile_edges(void) {
    static const size_t starts[] = {0,   1,   2,   63,  64,  65,  66,  127, 128, 129, 130, 191,
                                    192, 193, 255, 256, 257, 319, 320, 321, 383, 384, 385, 399};
    static const attn_case doc_cases[] = {{400, 4, 2, 16, 1, 0}, {400, 4, 1, 8, 1, 1}};
    static const int sizes[] = {0, 128, -61};
    doc_layout docs = docs_from_starts(400, starts, sizeof starts / sizeof starts[0]);
    hidden_counts seen = {0, 0};
    for (size_t ci = 0; ci < 2; ci++) {
        attn_problem p = problem_make(doc_cases[ci], 1400 + ci);
        check_documents_all_queries(&p, &docs, sizes, 3, "documents at tile edges", &seen);
        problem_free(&p);
    }
    CU_ASSERT(seen.rows_hidden > 0);
    CU_ASSERT(seen.tiles_hidden > 0);
    docs_free(&docs);
}

/* Documents that span key tiles and query tiles (a query tile holding the end of one and the start of the next,
 * whose keys lie in an earlier key tile), and random documents (a quarter of them 1 token long): GQA with kv heads
 * not a multiple of the thread count, MQA, and one non-causal case (there q_first is the only mask: keys of the
 * query's own and of later documents are visible). */
static void test_documents_spanning_and_random(void) {
    static const size_t starts[] = {0, 40, 100, 150, 170, 300, 301, 390};
    static const int sizes[] = {0, 100, -37};
    hidden_counts seen = {0, 0};
    {
        doc_layout docs = docs_from_starts(400, starts, sizeof starts / sizeof starts[0]);
        attn_problem p = problem_make((attn_case){400, 6, 3, 8, 1, 1}, 1500);
        check_documents_all_queries(&p, &docs, sizes, 3, "documents spanning tiles", &seen);
        problem_free(&p);
        docs_free(&docs);
    }
    static const attn_case doc_cases[] = {{333, 6, 3, 8, 1, 1}, {300, 4, 1, 32, 1, 0}, {257, 4, 2, 16, 0, 0}};
    for (size_t ci = 0; ci < 3; ci++)
        for (uint64_t seed = 0; seed < 2; seed++) {
            doc_layout docs = docs_random(doc_cases[ci].T, seed ? 150 : 40, 1600 + 10 * ci + seed);
            attn_problem p = problem_make(doc_cases[ci], 1700 + 10 * ci + seed);
            char what[64];
            snprintf(what, sizeof what, "random documents (seed %d)", (int)seed);
            check_documents_all_queries(&p, &docs, sizes, 3, what, &seen);
            problem_free(&p);
            docs_free(&docs);
        }
}

/* As seqpar lays out zigzag on 2 ranks: rows [0, 200) hold positions of chunks 0 and 3 (of 100), rows [200, 400)
 * chunks 1 and 2; each rank's queries over its own block, then the other's. */
static void test_documents_zigzag(void) {
    const size_t T = 400, c = 100;
    attn_problem p = problem_make((attn_case){T, 4, 2, 16, 1, 0}, 1800);
    for (size_t i = 0; i < c; i++) {
        p.pos[i] = (int64_t)i, p.pos[c + i] = (int64_t)(3 * c + i);
        p.pos[2 * c + i] = (int64_t)(c + i), p.pos[3 * c + i] = (int64_t)(2 * c + i);
    }
    doc_layout docs = docs_random(T, 90, 1810);
    size_t q_rows[200];
    hidden_counts seen = {0, 0};
    for (int rank = 0; rank < 2; rank++) {
        for (size_t i = 0; i < 2 * c; i++)
            q_rows[i] = (size_t)rank * 2 * c + i;
        const key_block blocks[2] = {{(size_t)rank * 2 * c, 2 * c}, {(size_t)(1 - rank) * 2 * c, 2 * c}};
        char what[64];
        snprintf(what, sizeof what, "documents, zigzag rank %d of 2", rank);
        check_documents(&p, &docs, q_rows, 2 * c, blocks, 2, what, &seen);
    }
    docs_free(&docs);
    problem_free(&p);
}

/* q_first = NULL and q_first = the first position for every query (one document) give the same bits. */
static void test_documents_one_document_same_bits(void) {
    attn_problem p = problem_make((attn_case){300, 4, 2, 16, 1, 0}, 1900);
    const rt_backend *b = rt_backend_cpu();
    const size_t T = p.c.T, H = (size_t)p.c.H, n_q = T * p.row_q, n_kv = T * p.row_kv;
    int64_t *zero = calloc(T, sizeof(int64_t));
    float *out[2], *lse[2], *delta[2], *dq[2], *dk[2], *dv[2];
    test_workspace ws = workspace_make(T, 128, &p.shape);
    for (int with = 0; with < 2; with++) {
        out[with] = calloc(n_q, sizeof(float)), lse[with] = malloc(T * H * sizeof(float));
        delta[with] = malloc(T * H * sizeof(float)), dq[with] = calloc(n_q, sizeof(float));
        dk[with] = calloc(n_kv, sizeof(float)), dv[with] = calloc(n_kv, sizeof(float));
        for (size_t i = 0; i < T * H; i++)
            lse[with][i] = -INFINITY;
        const int64_t *q_first = with ? zero : NULL;
        for (size_t j0 = 0; j0 < T; j0 += 128) {
            const size_t len = T - j0 < 128 ? T - j0 : 128;
            rt_be_attn_block_forward(b, out[with], lse[with], p.q, p.k + j0 * p.row_kv, p.v + j0 * p.row_kv, p.pos,
                                     q_first, p.pos + j0, T, len, &p.shape, ws.ptr, ws.bytes);
        }
        rt_be_attn_delta(b, delta[with], out[with], p.dout, T, &p.shape);
        for (size_t j0 = 0; j0 < T; j0 += 128) {
            const size_t len = T - j0 < 128 ? T - j0 : 128;
            rt_be_attn_block_backward(b, dq[with], dk[with] + j0 * p.row_kv, dv[with] + j0 * p.row_kv, p.dout, p.q,
                                      p.k + j0 * p.row_kv, p.v + j0 * p.row_kv, lse[with], delta[with], p.pos, q_first,
                                      p.pos + j0, T, len, &p.shape, ws.ptr, ws.bytes);
        }
    }
    workspace_free(&ws);
    CU_ASSERT(memcmp(out[0], out[1], n_q * sizeof(float)) == 0);
    CU_ASSERT(memcmp(lse[0], lse[1], T * H * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dq[0], dq[1], n_q * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dk[0], dk[1], n_kv * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dv[0], dv[1], n_kv * sizeof(float)) == 0);
    for (int with = 0; with < 2; with++) {
        free(out[with]), free(lse[with]), free(delta[with]);
        free(dq[with]), free(dk[with]), free(dv[with]);
    }
    free(zero);
    problem_free(&p);
}

/* ------------------------------------------------------------------ merge order, accumulation, determinism */

static void test_block_order_independent(void) {
    for (int causal = 0; causal <= 1; causal++) {
        attn_problem p = problem_make((attn_case){200, 4, 1, 32, causal, 0}, 700 + causal);
        const rt_backend *b = rt_backend_cpu();
        const size_t T = p.c.T, block = 48, n_blocks = (T + block - 1) / block;
        float *out_rev = malloc(T * p.row_q * sizeof(float)), *lse_rev = malloc(T * p.c.H * sizeof(float));
        run_forward(&p, block);
        memset(out_rev, 0, T * p.row_q * sizeof(float));
        for (size_t i = 0; i < T * p.c.H; i++)
            lse_rev[i] = -INFINITY;
        test_workspace ws = workspace_make(T, block, &p.shape);
        for (size_t n = n_blocks; n-- > 0;) {
            const size_t j0 = n * block, len = T - j0 < block ? T - j0 : block;
            rt_be_attn_block_forward(b, out_rev, lse_rev, p.q, p.k + j0 * p.row_kv, p.v + j0 * p.row_kv, p.pos, NULL,
                                     p.pos + j0, T, len, &p.shape, ws.ptr, ws.bytes);
        }
        workspace_free(&ws);
        TEST_ASSERT_CLOSE(out_rev, p.out, T * p.row_q, 1.0, 1e-6,
                          causal ? "reversed blocks out (causal)" : "reversed blocks out");
        TEST_ASSERT_CLOSE(lse_rev, p.lse, T * p.c.H, 1.0, 1e-6, "reversed blocks lse");
        free(out_rev);
        free(lse_rev);
        problem_free(&p);
    }
}

static void test_backward_accumulates(void) {
    attn_problem p = problem_make((attn_case){150, 4, 2, 16, 1, 1}, 800);
    const size_t total = p.c.T * (p.row_q + 2 * p.row_kv);
    run_forward(&p, 64);
    run_backward(&p, 64);
    float *once = malloc(total * sizeof(float));
    double largest = 0.0;
    for (size_t i = 0; i < total; i++) {
        once[i] = 2.0f * p.dqkv[i];
        largest = fabs(once[i]) > largest ? fabs(once[i]) : largest;
    }
    run_backward(&p, 64);
    TEST_ASSERT_CLOSE(p.dqkv, once, total, 1e-2 * largest, 1e-6, "backward twice vs 2 x once");
    free(once);
    problem_free(&p);
}

/* Two runs from fresh buffers give the same bits, for both backward schedules (Hkv = 4 and Hkv = 1). */
static void test_deterministic(void) {
    static const attn_case det_cases[] = {{300, 4, 4, 32, 1, 1}, {300, 4, 1, 32, 1, 0}};
    for (int ci = 0; ci < 2; ci++) {
        attn_problem a = problem_make(det_cases[ci], 900), b = problem_make(det_cases[ci], 900);
        run_forward(&a, 100);
        run_backward(&a, 100);
        run_forward(&b, 100);
        run_backward(&b, 100);
        const size_t total = a.c.T * (a.row_q + 2 * a.row_kv);
        CU_ASSERT(memcmp(a.out, b.out, a.c.T * a.shape.out_stride * sizeof(float)) == 0);
        CU_ASSERT(memcmp(a.lse, b.lse, a.c.T * a.c.H * sizeof(float)) == 0);
        CU_ASSERT(memcmp(a.dqkv, b.dqkv, total * sizeof(float)) == 0);
        problem_free(&a);
        problem_free(&b);
    }
}

/* The backward schedules (kv heads per thread, or per-thread partials) at 1, 2 and 3 threads. */
static void test_thread_counts(void) {
    const int saved = omp_get_max_threads();
    static const attn_case tc_cases[] = {{130, 4, 2, 16, 1, 0}, {130, 6, 3, 8, 1, 1}};
    for (int ci = 0; ci < 2; ci++) {
        attn_problem p = problem_make(tc_cases[ci], 1000 + ci);
        reference ref = reference_make(&p);
        for (int threads = 1; threads <= 3; threads++) {
            char label[160];
            snprintf(label, sizeof label, "H=%d Hkv=%d threads=%d", p.c.H, p.c.Hkv, threads);
            omp_set_num_threads(threads);
            memset(p.dqkv, 0, p.c.T * (p.row_q + 2 * p.row_kv) * sizeof(float));
            run_forward(&p, 50);
            run_backward(&p, 50);
            check_forward(&p, &ref, label);
            check_backward(&p, &ref, GRAD_TOL, label);
        }
        reference_free(&ref);
        problem_free(&p);
    }
    omp_set_num_threads(saved);
}

/* ------------------------------------------------------------------ the workspace contract */

/* Sizes: the dK/dV partials (per thread, Tk x D each) appear exactly when the thread count does not divide
 * n_kv_heads; otherwise the workspace does not grow with Tk beyond the key tiles' ranges. */
static void test_workspace_sizes(void) {
    const int saved = omp_get_max_threads();
    const rt_backend *b = rt_backend_cpu();
    const rt_attn_shape shape = {12, 4, 64, 12 * 64, 4 * 64, 12 * 64, 1}; /* GQA 3:1, D = 64 */
    const size_t D = 64, short_T = 1024, long_T = 65536;
    for (int threads = 1; threads <= 4; threads++) {
        omp_set_num_threads(threads);
        const size_t at_short = rt_be_attn_workspace_bytes(b, short_T, short_T, &shape);
        const size_t at_long = rt_be_attn_workspace_bytes(b, long_T, long_T, &shape);
        if (getenv("TEST_ATTN_VERBOSE"))
            fprintf(stderr, "\n  H=12 Hkv=4 D=64, %d threads: workspace %zu bytes at Tk=%zu, %zu at Tk=%zu", threads,
                    at_short, short_T, at_long, long_T);
        CU_ASSERT(at_short > 0 && at_long >= at_short);
        CU_ASSERT_EQUAL(rt_be_attn_workspace_bytes(b, 1, long_T, &shape), at_long); /* nothing grows with Tq */
        if (4 % threads != 0) {
            CU_ASSERT(at_long - at_short >= (size_t)threads * 2 * (long_T - short_T) * D * sizeof(float));
        } else {
            /* only the key tiles' (min, max) positions: 16 bytes per 128 keys, plus alignment */
            CU_ASSERT(at_long - at_short <= (long_T - short_T) / 128 * 16 + 64);
        }
    }
    omp_set_num_threads(saved);
}

typedef struct {
    void (*misuse)(unsigned char *ws, size_t bytes);
    unsigned char *ws;
    size_t bytes;
} workspace_misuse;

static void run_workspace_misuse(void *arg) {
    const workspace_misuse *w = arg;
    w->misuse(w->ws, w->bytes);
}

/* Runs misuse(ws, bytes) in a child; expects exit 1 and message on stderr. */
static void expect_fatal(void (*misuse)(unsigned char *ws, size_t bytes), unsigned char *ws, size_t bytes,
                         const char *message) {
    workspace_misuse w = {misuse, ws, bytes};
    test_expect_fatal(run_workspace_misuse, &w, 0, message);
}

/* The misuse cases: one call of 100 queries on 130 keys of misuse_problem. */
static attn_problem misuse_problem;

static void misuse_forward(unsigned char *ws, size_t bytes) {
    attn_problem *p = &misuse_problem;
    rt_be_attn_block_forward(rt_backend_cpu(), p->out, p->lse, p->q, p->k, p->v, p->pos, NULL, p->pos, 100, 130,
                             &p->shape, ws, bytes);
}

static void misuse_backward(unsigned char *ws, size_t bytes) {
    attn_problem *p = &misuse_problem;
    rt_be_attn_block_backward(rt_backend_cpu(), p->dq, p->dk, p->dv, p->dout, p->q, p->k, p->v, p->lse, p->delta,
                              p->pos, NULL, p->pos, 100, 130, &p->shape, ws, bytes);
}

/* A workspace smaller than the call needs (by one byte), or misaligned, ends the job naming the size needed;
 * exactly the reported size works (both schedules: 2 kv heads on 1 and 3 threads). */
static void test_workspace_too_small_is_fatal(void) {
    const int saved = omp_get_max_threads();
    misuse_problem = problem_make((attn_case){130, 4, 2, 16, 1, 0}, 1100);
    attn_problem *p = &misuse_problem;
    for (int threads = 1; threads <= 3; threads += 2) {
        omp_set_num_threads(threads);
        test_workspace ws = workspace_make(100, 130, &p->shape);
        char needs[64];
        snprintf(needs, sizeof needs, "this call needs %zu", ws.bytes);
        expect_fatal(misuse_forward, ws.ptr, ws.bytes - 1, needs);
        expect_fatal(misuse_backward, ws.ptr, ws.bytes - 1, needs);
        expect_fatal(misuse_forward, ws.ptr + 8, ws.bytes, "not aligned to 64 bytes"); /* the guard is behind */
        /* sized for fewer keys than the call has */
        const size_t fewer = rt_be_attn_workspace_bytes(rt_backend_cpu(), 100, 129, &p->shape);
        if (fewer < ws.bytes) expect_fatal(misuse_backward, ws.ptr, fewer, needs);
        memset(p->out, 0, 100 * p->shape.out_stride * sizeof(float));
        for (size_t i = 0; i < 100 * (size_t)p->c.H; i++)
            p->lse[i] = -INFINITY;
        misuse_forward(ws.ptr, ws.bytes);
        rt_be_attn_delta(rt_backend_cpu(), p->delta, p->out, p->dout, 100, &p->shape);
        misuse_backward(ws.ptr, ws.bytes);
        workspace_free(&ws);
    }
    problem_free(p);
    omp_set_num_threads(saved);
}

/* seqpar_reserve allocates exactly the backend's workspace for Tl, in the arena; calls of up to Tl tokens
 * then allocate nothing (no new allocation, no new peak), at 1 thread and at 3 (per-thread partials). */
static void test_seqpar_reserve_counts_workspace(void) {
    const int saved = omp_get_max_threads();
    for (int threads = 1; threads <= 3; threads += 2) {
        omp_set_num_threads(threads);
        attn_problem p = problem_make((attn_case){300, 4, 2, 16, 1, 1}, 1200);
        rt_device_memory mem;
        rt_device_memory_init(&mem, test_backend(), 0);
        seqpar_ctx ctx = {.backend = test_backend(), .mem = &mem, .block_size = 64};
        rt_error err;
        CU_ASSERT_FATAL(seqpar_reserve(&ctx, 1, p.c.T, &p.shape, &err) == 0);
        const size_t expected = rt_be_attn_workspace_bytes(rt_backend_cpu(), p.c.T, p.c.T, &p.shape);
        CU_ASSERT_EQUAL(ctx.attn_workspace_bytes, expected);
        CU_ASSERT_EQUAL(mem.in_use, expected);
        CU_ASSERT_EQUAL(mem.n_live, 1);
        rt_device_memory_reset_peak(&mem);
        const seqpar_tokens tokens = whole_sequence(&p, p.c.T), shorter = whole_sequence(&p, 200);
        seqpar_attention_forward(&ctx, p.out, p.lse, p.q, p.k, p.v, &tokens, &p.shape);
        seqpar_attention_backward(&ctx, p.dq, p.dk, p.dv, p.delta, p.dout, p.out, p.lse, p.q, p.k, p.v, &tokens,
                                  &p.shape);
        seqpar_attention_forward(&ctx, p.out, p.lse, p.q, p.k, p.v, &shorter, &p.shape); /* a shorter call */
        CU_ASSERT_EQUAL(mem.n_live, 1);
        CU_ASSERT_EQUAL(mem.peak, expected);
        /* at the tightest limit that lets the workspace be reserved; one byte less is refused, naming it */
        seqpar_ctx_free(&ctx);
        CU_ASSERT_EQUAL(mem.in_use, 0);
        mem.limit = expected - 1;
        CU_ASSERT(seqpar_reserve(&ctx, 1, p.c.T, &p.shape, &err) != 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "attention workspace"));
        mem.limit = expected;
        CU_ASSERT_FATAL(seqpar_reserve(&ctx, 1, p.c.T, &p.shape, &err) == 0);
        seqpar_attention_forward(&ctx, p.out, p.lse, p.q, p.k, p.v, &tokens, &p.shape);
        seqpar_attention_backward(&ctx, p.dq, p.dk, p.dv, p.delta, p.dout, p.out, p.lse, p.q, p.k, p.v, &tokens,
                                  &p.shape);
        CU_ASSERT_EQUAL(mem.peak, expected);
        seqpar_ctx_free(&ctx);
        rt_device_memory_destroy(&mem);
        problem_free(&p);
    }
    omp_set_num_threads(saved);
}

int main(void) {
    rt_device_memory_init(&test_mem, test_backend(), 0);
    test_case tests[] = {
        {"forward matches reference (block sizes, GQA, layouts)", test_forward_matches_reference},
        {"backward matches analytic reference", test_backward_matches_reference},
        {"backward matches finite differences", test_backward_finite_differences},
        {"zigzag queries over all keys", test_zigzag_queries},
        {"shuffled positions", test_shuffled_positions},
        {"query with no visible key is untouched", test_no_visible_key},
        {"seqpar: sequences with their own positions in one call", test_seqpar_sequences_in_one_call},
        {"documents at and one off tile edges, 1-token documents", test_documents_tile_edges},
        {"documents spanning tiles; random documents; GQA; non-causal", test_documents_spanning_and_random},
        {"documents with zigzag positions, two key blocks", test_documents_zigzag},
        {"one document: q_first gives the bits of no q_first", test_documents_one_document_same_bits},
        {"block order does not matter", test_block_order_independent},
        {"backward accumulates", test_backward_accumulates},
        {"deterministic run to run", test_deterministic},
        {"thread counts", test_thread_counts},
        {"workspace sizes", test_workspace_sizes},
        {"workspace too small or misaligned is fatal", test_workspace_too_small_is_fatal},
        {"seqpar_reserve counts the workspace; calls allocate nothing", test_seqpar_reserve_counts_workspace},
    };
    int rc = test_run_suite("test_attention", tests, (int)(sizeof tests / sizeof tests[0]));
    if (test_mem.in_use != 0) { /* a context kept its workspace */
        fprintf(stderr, "test_attention: %zu workspace bytes never freed\n", test_mem.in_use);
        rc = 1;
    }
    rt_device_memory_destroy(&test_mem);
    return rc;
}
