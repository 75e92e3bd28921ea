/* test_ops.c: every CPU backend op against a naive double reference, every backward against finite differences. */
/*
 * How the checks work:
 *  - forward: the backend's fp32 op on random inputs against a plain-loop reference written here in double
 *    (independent of the backend's code), compared by max relative error with an absolute floor
 *    (test_max_rel_error in testing.h).
 *  - backward: scalar loss L = sum(out * R) for a fixed random R (R is also the dout given to the backend).
 *    The reference gradient is the central difference (L(x+h) - L(x-h)) / 2h with h = FD_STEP, evaluated on the
 *    DOUBLE reference forward at the same (float-representable) inputs. Truncation error is O(h^2) ~ 1e-6 and
 *    roundoff ~ 1e-13, so the comparison measures the fp32 error of the backend's backward alone and the
 *    tolerances can be tight. The analytic gradient is accumulated into a zeroed buffer.
 *  - properties: backward accumulates; rope backward undoes forward; dropout masks depend only on
 *    (key, position, channel) and match the documented Philox derivation; reductions are bitwise
 *    deterministic run to run and across thread counts.
 * Set TEST_OPS_VERBOSE=1 to print every measured error next to its tolerance.
 */
#include <float.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/registry.h"
#include "tests/support/testing.h"

/* Tolerances (max relative error, with the absolute floor given at each check). */
#define FWD_TOL 1e-5    /* elementwise ops and norms, fp32 vs double reference */
#define MATMUL_TOL 1e-4 /* sgemm vs naive loops (summation order differs) */
#define GRAD_TOL 1e-4   /* fp32 analytic backward vs double central differences */
#define FD_STEP 1e-3    /* h of the central differences */

static const rt_backend *backend;

/* ----------------------------------------------------------------------------
 * helpers
 */

static void check_close(const float *actual, const float *expected, size_t n, double floor, double tol,
                        const char *what) {
    if (getenv("TEST_OPS_VERBOSE")) {
        fprintf(stderr, "\n  %-40s rel err %.3g (tol %.1g, floor %.1g)", what,
                test_max_rel_error(actual, expected, n, floor), tol, floor);
    }
    TEST_ASSERT_CLOSE(actual, expected, n, floor, tol, what);
}

static float *rand_floats(size_t n, float lo, float hi, uint64_t seed) {
    float *x = malloc(n * sizeof(float) + 1);
    test_fill_uniform(x, n, lo, hi, seed);
    return x;
}

static float *zero_floats(size_t n) { return calloc(n + 1, sizeof(float)); }

static float *copy_floats(const float *x, size_t n) {
    float *y = malloc(n * sizeof(float) + 1);
    memcpy(y, x, n * sizeof(float));
    return y;
}

static double *to_double(const float *x, size_t n) {
    double *y = malloc(n * sizeof(double) + 1);
    for (size_t i = 0; i < n; i++)
        y[i] = x[i];
    return y;
}

static float *to_float(const double *x, size_t n) {
    float *y = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++)
        y[i] = (float)x[i];
    return y;
}

static double dot(const double *a, const double *b, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += a[i] * b[i];
    return sum;
}

/* Central differences of loss(ctx) with respect to each element of x (perturbed in place, then restored). */
static float *fd_gradient(double *x, size_t n, double (*loss)(void *ctx), void *ctx) {
    float *grad = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++) {
        double saved = x[i];
        x[i] = saved + FD_STEP;
        double loss_plus = loss(ctx);
        x[i] = saved - FD_STEP;
        double loss_minus = loss(ctx);
        x[i] = saved;
        grad[i] = (float)((loss_plus - loss_minus) / (2.0 * FD_STEP));
    }
    return grad;
}

/* Everything a reference loss needs: the op's inputs in double (perturbed by fd_gradient), sizes, R and scratch. */
typedef struct {
    size_t N;
    int C, OC, F, V, Vp, n_heads, head_dim;
    size_t stride;
    float eps, theta, dloss_scale;
    double *inp, *weight, *bias;
    const int32_t *tokens, *targets;
    const int64_t *pos;
    const double *r; /* (n_out) weights of the scalar loss */
    double *out;     /* (n_out) scratch */
    size_t n_out;
} fd_ctx;

/* ----------------------------------------------------------------------------
 * naive double references (plain loops, written from the definitions in backend.h)
 */

static void ref_matmul(double *out, const double *inp, const double *weight, const double *bias, size_t N, int C,
                       int OC) {
    for (size_t n = 0; n < N; n++) {
        for (int o = 0; o < OC; o++) {
            double sum = bias ? bias[o] : 0.0;
            for (int c = 0; c < C; c++)
                sum += inp[n * C + c] * weight[(size_t)o * C + c];
            out[n * OC + o] = sum;
        }
    }
}

static void ref_embedding(double *out, const int32_t *tokens, const int64_t *pos, const double *wte, const double *wpe,
                          size_t N, int C) {
    for (size_t n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            out[n * C + c] = wte[(size_t)tokens[n] * C + c] + (wpe ? wpe[(size_t)pos[n] * C + c] : 0.0);
        }
    }
}

static void ref_layernorm(double *out, double *mean, double *rstd, const double *inp, const double *weight,
                          const double *bias, size_t N, int C, double eps) {
    for (size_t n = 0; n < N; n++) {
        const double *x = inp + n * C;
        double m = 0.0, var = 0.0;
        for (int c = 0; c < C; c++)
            m += x[c];
        m /= C;
        for (int c = 0; c < C; c++)
            var += (x[c] - m) * (x[c] - m);
        var /= C;
        double s = 1.0 / sqrt(var + eps);
        for (int c = 0; c < C; c++)
            out[n * C + c] = (x[c] - m) * s * weight[c] + bias[c];
        if (mean) mean[n] = m;
        if (rstd) rstd[n] = s;
    }
}

static void ref_rmsnorm(double *out, double *rstd, const double *inp, const double *weight, size_t N, int C,
                        double eps) {
    for (size_t n = 0; n < N; n++) {
        const double *x = inp + n * C;
        double ms = 0.0;
        for (int c = 0; c < C; c++)
            ms += x[c] * x[c];
        double s = 1.0 / sqrt(ms / C + eps);
        for (int c = 0; c < C; c++)
            out[n * C + c] = x[c] * s * weight[c];
        if (rstd) rstd[n] = s;
    }
}

/* In place on x (N rows of `stride` doubles): pair (2i, 2i+1) of each head rotated by pos * theta^(-2i/D). */
static void ref_rope(double *x, const int64_t *pos, size_t N, int n_heads, int head_dim, size_t stride, double theta) {
    for (size_t n = 0; n < N; n++) {
        for (int h = 0; h < n_heads; h++) {
            for (int i = 0; i < head_dim / 2; i++) {
                double angle = (double)pos[n] * pow(theta, -2.0 * i / head_dim);
                double *pair = x + n * stride + (size_t)h * head_dim + 2 * i;
                double x0 = pair[0], x1 = pair[1];
                pair[0] = x0 * cos(angle) - x1 * sin(angle);
                pair[1] = x0 * sin(angle) + x1 * cos(angle);
            }
        }
    }
}

static void ref_gelu(double *out, const double *inp, size_t n) {
    const double k = sqrt(2.0 / 3.14159265358979323846);
    for (size_t i = 0; i < n; i++) {
        double x = inp[i];
        out[i] = 0.5 * x * (1.0 + tanh(k * (x + 0.044715 * x * x * x)));
    }
}

static void ref_swiglu(double *out, const double *gate_up, size_t N, int F) {
    for (size_t n = 0; n < N; n++) {
        for (int f = 0; f < F; f++) {
            double g = gate_up[n * 2 * F + f], u = gate_up[n * 2 * F + F + f];
            out[n * F + f] = g / (1.0 + exp(-g)) * u;
        }
    }
}

/* losses[i] = log(sum_j exp(logits[i,j])) - logits[i,t] over j < V; 0 for t < 0. */
static void ref_xent_losses(double *losses, const double *logits, const int32_t *targets, size_t n, int V, int Vp) {
    for (size_t i = 0; i < n; i++) {
        const double *row = logits + i * Vp;
        if (targets[i] < 0) {
            losses[i] = 0.0;
            continue;
        }
        double m = row[0];
        for (int j = 1; j < V; j++)
            m = row[j] > m ? row[j] : m;
        double sum = 0.0;
        for (int j = 0; j < V; j++)
            sum += exp(row[j] - m);
        losses[i] = m + log(sum) - row[targets[i]];
    }
}

/* ----------------------------------------------------------------------------
 * memory
 */

static void test_memory(void) {
    size_t n = 1000;
    float *a = rt_be_device_alloc(backend, n * sizeof(float));
    float *b = rt_be_device_alloc(backend, n * sizeof(float));
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT((uintptr_t)a % 64 == 0);
    CU_ASSERT((uintptr_t)b % 64 == 0);
    test_fill_uniform(a, n, -1.0f, 1.0f, 1);
    rt_be_copy(backend, b, a, n * sizeof(float));
    CU_ASSERT(memcmp(a, b, n * sizeof(float)) == 0);
    rt_be_memset_zero(backend, a, n * sizeof(float));
    int all_zero = 1;
    for (size_t i = 0; i < n; i++)
        all_zero &= a[i] == 0.0f;
    CU_ASSERT(all_zero);
    void *empty = rt_be_device_alloc(backend, 0);
    CU_ASSERT_PTR_NOT_NULL(empty);
    rt_be_device_free(backend, empty);
    rt_be_device_free(backend, a);
    rt_be_device_free(backend, b);
}

/* ----------------------------------------------------------------------------
 * matmul
 */

static void check_matmul_forward(size_t N, int C, int OC, int with_bias, uint64_t seed) {
    float *inp = rand_floats(N * C, -1.0f, 1.0f, seed);
    float *weight = rand_floats((size_t)OC * C, -1.0f, 1.0f, seed + 1);
    float *bias = with_bias ? rand_floats(OC, -1.0f, 1.0f, seed + 2) : NULL;
    float *out = zero_floats(N * OC);
    rt_be_matmul_forward(backend, out, inp, weight, bias, N, C, OC);
    double *inp_d = to_double(inp, N * C), *weight_d = to_double(weight, (size_t)OC * C);
    double *bias_d = with_bias ? to_double(bias, OC) : NULL;
    double *ref = malloc(N * OC * sizeof(double));
    ref_matmul(ref, inp_d, weight_d, bias_d, N, C, OC);
    float *ref_f = to_float(ref, N * OC);
    char what[96];
    snprintf(what, sizeof what, "matmul_forward N=%zu C=%d OC=%d bias=%d", N, C, OC, with_bias);
    check_close(out, ref_f, N * OC, 1.0, MATMUL_TOL, what); /* floor: outputs are ~sqrt(C)/3 */
    free(inp), free(weight), free(bias), free(out), free(inp_d), free(weight_d), free(bias_d), free(ref), free(ref_f);
}

static void test_matmul_forward(void) {
    check_matmul_forward(37, 96, 80, 1, 10);
    check_matmul_forward(37, 96, 80, 0, 20);
    check_matmul_forward(257, 300, 130, 1, 30); /* large enough for blocked sgemm and the parallel bias add */
    check_matmul_forward(1, 5, 3, 1, 40);
}

static double matmul_loss(void *arg) {
    fd_ctx *ctx = arg;
    ref_matmul(ctx->out, ctx->inp, ctx->weight, ctx->bias, ctx->N, ctx->C, ctx->OC);
    return dot(ctx->out, ctx->r, ctx->n_out);
}

static void check_matmul_backward(int with_bias) {
    size_t N = 5;
    int C = 7, OC = 6;
    float *inp = rand_floats(N * C, -1.0f, 1.0f, 100);
    float *weight = rand_floats((size_t)OC * C, -1.0f, 1.0f, 101);
    float *bias = rand_floats(OC, -1.0f, 1.0f, 102);
    float *dout = rand_floats(N * OC, -1.0f, 1.0f, 103);
    float *dinp = zero_floats(N * C), *dweight = zero_floats((size_t)OC * C), *dbias = zero_floats(OC);
    rt_be_matmul_backward(backend, dinp, dweight, with_bias ? dbias : NULL, dout, inp, weight, N, C, OC);

    double *r = to_double(dout, N * OC), *scratch = malloc(N * OC * sizeof(double));
    fd_ctx ctx = {.N = N,
                  .C = C,
                  .OC = OC,
                  .inp = to_double(inp, N * C),
                  .weight = to_double(weight, (size_t)OC * C),
                  .bias = with_bias ? to_double(bias, OC) : NULL,
                  .r = r,
                  .out = scratch,
                  .n_out = N * OC};
    float *fd_inp = fd_gradient(ctx.inp, N * C, matmul_loss, &ctx);
    float *fd_weight = fd_gradient(ctx.weight, (size_t)OC * C, matmul_loss, &ctx);
    check_close(dinp, fd_inp, N * C, 1e-2, GRAD_TOL, with_bias ? "matmul dinp (bias)" : "matmul dinp (no bias)");
    check_close(dweight, fd_weight, (size_t)OC * C, 1e-2, GRAD_TOL,
                with_bias ? "matmul dweight (bias)" : "matmul dweight (no bias)");
    if (with_bias) {
        float *fd_bias = fd_gradient(ctx.bias, OC, matmul_loss, &ctx);
        check_close(dbias, fd_bias, OC, 1e-2, GRAD_TOL, "matmul dbias");
        free(fd_bias);
    }

    /* NULL gradients are skipped and the others are unchanged */
    float *dinp_only = zero_floats(N * C);
    rt_be_matmul_backward(backend, dinp_only, NULL, NULL, dout, inp, weight, N, C, OC);
    CU_ASSERT(memcmp(dinp_only, dinp, N * C * sizeof(float)) == 0);

    free(inp), free(weight), free(bias), free(dout), free(dinp), free(dweight), free(dbias), free(r), free(scratch);
    free(ctx.inp), free(ctx.weight), free(ctx.bias), free(fd_inp), free(fd_weight), free(dinp_only);
}

static void test_matmul_backward(void) {
    check_matmul_backward(1);
    check_matmul_backward(0);
}

/* ----------------------------------------------------------------------------
 * embedding
 */

static double embedding_loss(void *arg) {
    fd_ctx *ctx = arg;
    ref_embedding(ctx->out, ctx->tokens, ctx->pos, ctx->inp, ctx->weight, ctx->N, ctx->C);
    return dot(ctx->out, ctx->r, ctx->n_out);
}

static void test_embedding(void) {
    enum { N = 12, C = 10, VP = 8, MAX_T = 6 };
    int32_t tokens[N] = {3, 1, 3, 0, 5, 3, 1, 7, 2, 3, 0, 5}; /* repeats; rows 4 and 6 unused */
    int64_t pos[N] = {0, 1, 2, 3, 4, 5, 0, 1, 2, 3, 4, 5};    /* two sequences of 6 */
    float *wte = rand_floats(VP * C, -1.0f, 1.0f, 200), *wpe = rand_floats(MAX_T * C, -1.0f, 1.0f, 201);
    double *wte_d = to_double(wte, VP * C), *wpe_d = to_double(wpe, MAX_T * C);
    double *ref = malloc(N * C * sizeof(double));
    float *out = zero_floats(N * C);

    rt_be_embedding_forward(backend, out, tokens, pos, wte, wpe, N, C);
    ref_embedding(ref, tokens, pos, wte_d, wpe_d, N, C);
    float *ref_f = to_float(ref, N * C);
    check_close(out, ref_f, N * C, 1e-3, 0.0, "embedding_forward (wte + wpe)"); /* one fp32 add: exact */
    rt_be_embedding_forward(backend, out, tokens, pos, wte, NULL, N, C);
    ref_embedding(ref, tokens, pos, wte_d, NULL, N, C);
    free(ref_f);
    ref_f = to_float(ref, N * C);
    check_close(out, ref_f, N * C, 1e-3, 0.0, "embedding_forward (wte only)");

    float *dout = rand_floats(N * C, -1.0f, 1.0f, 202);
    float *dwte = zero_floats(VP * C), *dwpe = zero_floats(MAX_T * C);
    rt_be_embedding_backward(backend, dwte, dwpe, dout, tokens, pos, N, C);
    double *r = to_double(dout, N * C);
    fd_ctx ctx = {.N = N,
                  .C = C,
                  .inp = wte_d,
                  .weight = wpe_d,
                  .tokens = tokens,
                  .pos = pos,
                  .r = r,
                  .out = ref,
                  .n_out = N * C};
    float *fd_wte = fd_gradient(wte_d, VP * C, embedding_loss, &ctx);
    float *fd_wpe = fd_gradient(wpe_d, MAX_T * C, embedding_loss, &ctx);
    check_close(dwte, fd_wte, VP * C, 1e-2, GRAD_TOL, "embedding dwte (repeated tokens)");
    check_close(dwpe, fd_wpe, MAX_T * C, 1e-2, GRAD_TOL, "embedding dwpe (repeated positions)");

    /* dwpe == NULL: no position gradient, dwte the same */
    float *dwte_only = zero_floats(VP * C);
    rt_be_embedding_backward(backend, dwte_only, NULL, dout, tokens, pos, N, C);
    CU_ASSERT(memcmp(dwte_only, dwte, VP * C * sizeof(float)) == 0);

    free(wte), free(wpe), free(wte_d), free(wpe_d), free(ref), free(out), free(ref_f), free(dout), free(dwte);
    free(dwpe), free(r), free(fd_wte), free(fd_wpe), free(dwte_only);
}

/* ----------------------------------------------------------------------------
 * norms
 */

/* Rows of different offsets and scales, so mean and rstd vary. */
static float *norm_inputs(size_t N, int C, uint64_t seed) {
    float *x = rand_floats(N * C, -1.0f, 1.0f, seed);
    for (size_t n = 0; n < N; n++) {
        for (int c = 0; c < C; c++)
            x[n * C + c] = x[n * C + c] * (0.5f + (float)n) + 0.3f * (float)n - 0.5f;
    }
    return x;
}

static double layernorm_loss(void *arg) {
    fd_ctx *ctx = arg;
    ref_layernorm(ctx->out, NULL, NULL, ctx->inp, ctx->weight, ctx->bias, ctx->N, ctx->C, ctx->eps);
    return dot(ctx->out, ctx->r, ctx->n_out);
}

static void test_layernorm(void) {
    size_t N = 4;
    int C = 37; /* not a multiple of the backend's channel block */
    float eps = 1e-5f;
    float *inp = norm_inputs(N, C, 300), *weight = rand_floats(C, 0.5f, 1.5f, 301);
    float *bias = rand_floats(C, -0.5f, 0.5f, 302), *dout = rand_floats(N * C, -1.0f, 1.0f, 303);
    float *out = zero_floats(N * C), *mean = zero_floats(N), *rstd = zero_floats(N);
    rt_be_layernorm_forward(backend, out, mean, rstd, inp, weight, bias, N, C, eps);

    fd_ctx ctx = {.N = N,
                  .C = C,
                  .eps = eps,
                  .inp = to_double(inp, N * C),
                  .weight = to_double(weight, C),
                  .bias = to_double(bias, C),
                  .r = to_double(dout, N * C),
                  .out = malloc(N * C * sizeof(double)),
                  .n_out = N * C};
    double *ref_mean = malloc(N * sizeof(double)), *ref_rstd = malloc(N * sizeof(double));
    ref_layernorm(ctx.out, ref_mean, ref_rstd, ctx.inp, ctx.weight, ctx.bias, N, C, eps);
    float *ref_out = to_float(ctx.out, N * C), *ref_mean_f = to_float(ref_mean, N), *ref_rstd_f = to_float(ref_rstd, N);
    check_close(out, ref_out, N * C, 1e-2, FWD_TOL, "layernorm_forward out");
    check_close(mean, ref_mean_f, N, 1e-1, FWD_TOL, "layernorm_forward mean");
    check_close(rstd, ref_rstd_f, N, 1e-1, FWD_TOL, "layernorm_forward rstd");

    float *dinp = zero_floats(N * C), *dweight = zero_floats(C), *dbias = zero_floats(C);
    rt_be_layernorm_backward(backend, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
    float *fd_inp = fd_gradient(ctx.inp, N * C, layernorm_loss, &ctx);
    float *fd_weight = fd_gradient(ctx.weight, C, layernorm_loss, &ctx);
    float *fd_bias = fd_gradient(ctx.bias, C, layernorm_loss, &ctx);
    check_close(dinp, fd_inp, N * C, 1e-2, GRAD_TOL, "layernorm dinp");
    check_close(dweight, fd_weight, C, 1e-2, GRAD_TOL, "layernorm dweight");
    check_close(dbias, fd_bias, C, 1e-2, GRAD_TOL, "layernorm dbias");

    free(inp), free(weight), free(bias), free(dout), free(out), free(mean), free(rstd), free(ctx.inp);
    free(ctx.weight), free(ctx.bias), free((void *)ctx.r), free(ctx.out), free(ref_mean), free(ref_rstd);
    free(ref_out), free(ref_mean_f), free(ref_rstd_f), free(dinp), free(dweight), free(dbias), free(fd_inp);
    free(fd_weight), free(fd_bias);
}

static double rmsnorm_loss(void *arg) {
    fd_ctx *ctx = arg;
    ref_rmsnorm(ctx->out, NULL, ctx->inp, ctx->weight, ctx->N, ctx->C, ctx->eps);
    return dot(ctx->out, ctx->r, ctx->n_out);
}

static void test_rmsnorm(void) {
    size_t N = 4;
    int C = 37;
    float eps = 1e-6f;
    float *inp = norm_inputs(N, C, 400), *weight = rand_floats(C, 0.5f, 1.5f, 401);
    float *dout = rand_floats(N * C, -1.0f, 1.0f, 402);
    float *out = zero_floats(N * C), *rstd = zero_floats(N);
    rt_be_rmsnorm_forward(backend, out, rstd, inp, weight, N, C, eps);

    fd_ctx ctx = {.N = N,
                  .C = C,
                  .eps = eps,
                  .inp = to_double(inp, N * C),
                  .weight = to_double(weight, C),
                  .r = to_double(dout, N * C),
                  .out = malloc(N * C * sizeof(double)),
                  .n_out = N * C};
    double *ref_rstd = malloc(N * sizeof(double));
    ref_rmsnorm(ctx.out, ref_rstd, ctx.inp, ctx.weight, N, C, eps);
    float *ref_out = to_float(ctx.out, N * C), *ref_rstd_f = to_float(ref_rstd, N);
    check_close(out, ref_out, N * C, 1e-2, FWD_TOL, "rmsnorm_forward out");
    check_close(rstd, ref_rstd_f, N, 1e-1, FWD_TOL, "rmsnorm_forward rstd");

    float *dinp = zero_floats(N * C), *dweight = zero_floats(C);
    rt_be_rmsnorm_backward(backend, dinp, dweight, dout, inp, weight, rstd, N, C);
    float *fd_inp = fd_gradient(ctx.inp, N * C, rmsnorm_loss, &ctx);
    float *fd_weight = fd_gradient(ctx.weight, C, rmsnorm_loss, &ctx);
    check_close(dinp, fd_inp, N * C, 1e-2, GRAD_TOL, "rmsnorm dinp");
    check_close(dweight, fd_weight, C, 1e-2, GRAD_TOL, "rmsnorm dweight");

    free(inp), free(weight), free(dout), free(out), free(rstd), free(ctx.inp), free(ctx.weight);
    free((void *)ctx.r), free(ctx.out), free(ref_rstd), free(ref_out), free(ref_rstd_f), free(dinp), free(dweight);
    free(fd_inp), free(fd_weight);
}

/* ----------------------------------------------------------------------------
 * rope
 */

static double rope_loss(void *arg) {
    fd_ctx *ctx = arg;
    memcpy(ctx->out, ctx->inp, ctx->n_out * sizeof(double));
    ref_rope(ctx->out, ctx->pos, ctx->N, ctx->n_heads, ctx->head_dim, ctx->stride, ctx->theta);
    return dot(ctx->out, ctx->r, ctx->n_out);
}

static void test_rope(void) {
    enum { N = 6, H = 3, D = 8 };
    size_t stride = 3 * H * D + 5; /* q section of a wider row: the rest must stay untouched */
    float theta = 10000.0f;
    /* small, large (where a float angle would be off by whole radians) and beyond 2^32 */
    int64_t pos[N] = {0, 1, 17, 1000003, 123456789, 5000000000LL};
    float *x = rand_floats(N * stride, -1.0f, 1.0f, 500);
    float *y = copy_floats(x, N * stride);
    rt_be_rope_forward(backend, y, pos, N, H, D, stride, theta);

    double *ref = to_double(x, N * stride);
    ref_rope(ref, pos, N, H, D, stride, theta);
    float *ref_f = to_float(ref, N * stride);
    check_close(y, ref_f, N * stride, 1e-2, FWD_TOL, "rope_forward (positions up to 5e9)");
    int untouched = 1;
    for (size_t n = 0; n < N; n++)
        untouched &= memcmp(y + n * stride + H * D, x + n * stride + H * D, (stride - H * D) * sizeof(float)) == 0;
    CU_ASSERT(untouched);

    /* backward(forward(x)) == x */
    rt_be_rope_backward(backend, y, pos, N, H, D, stride, theta);
    check_close(y, x, N * stride, 1e-2, FWD_TOL, "rope_backward(rope_forward(x)) == x");

    /* gradient of sum(rope(x) * R) on a dense layout: rope_backward transforms R in place */
    size_t dense = (size_t)H * D;
    float *r = rand_floats(N * dense, -1.0f, 1.0f, 501);
    float *dx = copy_floats(r, N * dense);
    rt_be_rope_backward(backend, dx, pos, N, H, D, dense, theta);
    double *r_d = to_double(r, N * dense);
    fd_ctx ctx = {.N = N,
                  .n_heads = H,
                  .head_dim = D,
                  .stride = dense,
                  .theta = theta,
                  .pos = pos,
                  .inp = to_double(x, N * dense),
                  .r = r_d,
                  .out = malloc(N * dense * sizeof(double)),
                  .n_out = N * dense};
    float *fd = fd_gradient(ctx.inp, N * dense, rope_loss, &ctx);
    check_close(dx, fd, N * dense, 1e-2, GRAD_TOL, "rope_backward vs finite differences");

    free(x), free(y), free(ref), free(ref_f), free(r), free(dx), free(r_d), free(ctx.inp), free(ctx.out), free(fd);
}

/* ----------------------------------------------------------------------------
 * pointwise
 */

static double gelu_loss(void *arg) {
    fd_ctx *ctx = arg;
    ref_gelu(ctx->out, ctx->inp, ctx->n_out);
    return dot(ctx->out, ctx->r, ctx->n_out);
}

static void test_gelu(void) {
    size_t n = 200;
    float *inp = rand_floats(n, -5.0f, 5.0f, 600), *dout = rand_floats(n, -1.0f, 1.0f, 601);
    inp[0] = 0.0f, inp[1] = 30.0f, inp[2] = -30.0f; /* saturated tails */
    float *out = zero_floats(n), *dinp = zero_floats(n);
    rt_be_gelu_forward(backend, out, inp, n);
    fd_ctx ctx = {.inp = to_double(inp, n), .r = to_double(dout, n), .out = malloc(n * sizeof(double)), .n_out = n};
    ref_gelu(ctx.out, ctx.inp, n);
    float *ref = to_float(ctx.out, n);
    check_close(out, ref, n, 1e-1, FWD_TOL, "gelu_forward"); /* floor: fp32 tanh near -1 in the left tail */

    rt_be_gelu_backward(backend, dinp, inp, dout, n);
    float *fd = fd_gradient(ctx.inp, n, gelu_loss, &ctx);
    check_close(dinp, fd, n, 1e-2, GRAD_TOL, "gelu_backward");

    free(inp), free(dout), free(out), free(dinp), free(ctx.inp), free((void *)ctx.r), free(ctx.out), free(ref);
    free(fd);
}

static double swiglu_loss(void *arg) {
    fd_ctx *ctx = arg;
    ref_swiglu(ctx->out, ctx->inp, ctx->N, ctx->F);
    return dot(ctx->out, ctx->r, ctx->n_out);
}

static void test_swiglu(void) {
    size_t N = 5;
    int F = 11;
    float *gate_up = rand_floats(N * 2 * F, -4.0f, 4.0f, 700), *dout = rand_floats(N * F, -1.0f, 1.0f, 701);
    float *out = zero_floats(N * F), *dgate_up = zero_floats(N * 2 * F);
    rt_be_swiglu_forward(backend, out, gate_up, N, F);
    fd_ctx ctx = {.N = N,
                  .F = F,
                  .inp = to_double(gate_up, N * 2 * F),
                  .r = to_double(dout, N * F),
                  .out = malloc(N * F * sizeof(double)),
                  .n_out = N * F};
    ref_swiglu(ctx.out, ctx.inp, N, F);
    float *ref = to_float(ctx.out, N * F);
    check_close(out, ref, N * F, 1e-2, FWD_TOL, "swiglu_forward");

    rt_be_swiglu_backward(backend, dgate_up, dout, gate_up, N, F);
    float *fd = fd_gradient(ctx.inp, N * 2 * F, swiglu_loss, &ctx);
    check_close(dgate_up, fd, N * 2 * F, 1e-2, GRAD_TOL, "swiglu_backward (gate and up)");

    free(gate_up), free(dout), free(out), free(dgate_up), free(ctx.inp), free((void *)ctx.r), free(ctx.out);
    free(ref), free(fd);
}

/*
 * GELU and SiLU over a dense sweep of [-20, 20] (a uniform grid and every 2^14-th float) against double, with
 * a bound that follows the conditioning of each point:
 *     |got - ref| <= POINTWISE_ULPS * 2^-24 * scale + POINTWISE_FLUSH.
 * scale is the size an fp32 evaluation's rounding error must have. GELU(x) = x sigmoid(2u) with
 * u = sqrt(2/pi) (x + 0.044715 x^3) rounded to fp32 (a few 2^-24 relative), and a relative error d in u moves
 * sigmoid(2u) by |2u| (1 - s) d: scale = |ref| (1 + |2u| (1 - s)), s = sigmoid(2u) (|2u| is up to ~90 in the
 * left tail). The
 * backward's two terms, s and t = 2 x u' sigmoid'(2u), each with its own sensitivity to u:
 * scale = s (1 + |2u| (1 - s)) + |t| (1 + |2u|). SiLU's input enters exactly: scale = |ref| forward, the sum of
 * its terms' magnitudes sig + |g| sigmoid'(g) backward. POINTWISE_FLUSH covers results below FLT_MIN (the
 * exp flushes them to 0; |x| > 10.1 in GELU, gate < -87 in SiLU).
 * The double references use sigmoid(z) from e = exp(-|z|), stable in both tails (0.5 (1 + tanh(u)) in double
 * loses all digits below u ~ -19); they are checked against the tanh form (ref_gelu) where that is accurate.
 * Extremes: huge and infinite inputs saturate (GELU(x) = x for large x, 0 for very negative x, gradients 1 and
 * 0; the old backward gave NaN above |x| ~ 2e19), NaN propagates, and an element's bits do not depend on its
 * position in the buffer (vector body or remainder loop).
 */
/* Measured worst, in 2^-24 * scale, over every 4th float in [-20, 20] with the AVX-512 / AVX2 / SSE2 clones:
 * GELU forward 2.8 / 2.8 / 3.1, backward 2.7 / 2.8 / 3.0; SiLU forward 3.8 / 3.8 / 3.8, backward dgate
 * 4.8 / 5.4 / 5.4, dup 4.1 / 4.1 / 4.1. The old libm GELU: 9e5 forward, 2e4 backward (x ~ -5). */
#define POINTWISE_ULPS 8.0
#define POINTWISE_FLUSH 1e-35

/* sigmoid(z) and sigmoid'(z) = e / (1 + e)^2 in double, from e = exp(-|z|): neither tail cancels. */
static void ref_sigmoid(double z, double *s, double *ds) {
    double e = exp(-fabs(z));
    *s = z >= 0.0 ? 1.0 / (1.0 + e) : e / (1.0 + e);
    *ds = e / ((1.0 + e) * (1.0 + e));
}

/* GELU forward and gradient at x with the scales of the bound above. */
static void ref_gelu_point(double x, double *out, double *out_scale, double *grad, double *grad_scale) {
    const double k = sqrt(2.0 / 3.14159265358979323846);
    double u = k * (x + 0.044715 * x * x * x), du = k * (1.0 + 3.0 * 0.044715 * x * x), s, ds;
    ref_sigmoid(2.0 * u, &s, &ds);
    double t = 2.0 * x * du * ds, amp = fabs(2.0 * u);
    *out = x * s;
    *out_scale = fabs(x) * s * (1.0 + amp * (1.0 - s));
    *grad = s + t;
    *grad_scale = s * (1.0 + amp * (1.0 - s)) + fabs(t) * (1.0 + amp);
}

static void ref_silu_point(double g, double *out, double *out_scale, double *grad, double *grad_scale) {
    double s, ds;
    ref_sigmoid(g, &s, &ds);
    *out = g * s;
    *out_scale = fabs(g) * s;
    *grad = s + g * ds;
    *grad_scale = s + fabs(g) * ds;
}

/* Counts the points over the bound, prints the first few and the worst, in units of 2^-24 * scale. */
static void check_conditioned(const float *got, const double *ref, const double *scale, const float *x, size_t n,
                              const char *what) {
    size_t over = 0;
    double worst = 0.0, worst_x = 0.0;
    for (size_t i = 0; i < n; i++) {
        double err = fabs((double)got[i] - ref[i]);
        double ulps = (err - POINTWISE_FLUSH) / (0x1.0p-24 * scale[i]);
        if (!(ulps <= worst)) worst = ulps, worst_x = x[i]; /* NaN counts as the worst */
        if (!(ulps <= POINTWISE_ULPS) && over++ < 3)
            fprintf(stderr, "\n  %s at x = %.9g: %.9g, double %.9g (%.3g x 2^-24 scale)", what, x[i], got[i], ref[i],
                    ulps);
    }
    if (over || getenv("TEST_OPS_VERBOSE"))
        fprintf(stderr, "\n  %-28s %zu of %zu over; worst %.3g x 2^-24 scale at x = %.9g (bound %.0f)", what, over, n,
                worst, worst_x, POINTWISE_ULPS);
    CU_ASSERT(over == 0);
}

static void test_gelu_silu_sweep(void) {
    const size_t n_grid = 400001;                                 /* step 1e-4 */
    const uint32_t bits_20 = 0x41A00000u, bits_stride = 1u << 14; /* 20.0f; every 2^14-th float below it */
    size_t n = n_grid + 2 * (bits_20 / bits_stride + 1);
    float *x = malloc(n * sizeof(float)), *ones = malloc(n * sizeof(float)), *gate_up = malloc(2 * n * sizeof(float));
    size_t m = 0;
    for (size_t i = 0; i < n_grid; i++)
        x[m++] = (float)(-20.0 + 40.0 * (double)i / (double)(n_grid - 1));
    for (uint32_t b = 0; b <= bits_20; b += bits_stride) {
        float f;
        memcpy(&f, &b, sizeof f);
        x[m++] = f, x[m++] = -f;
    }
    CU_ASSERT_FATAL(m == n);
    for (size_t i = 0; i < n; i++)
        ones[i] = 1.0f, gate_up[i] = x[i], gate_up[n + i] = 1.0f; /* one row: gate = x, up = 1 */

    float *gelu = zero_floats(n), *dgelu = zero_floats(n), *silu = zero_floats(n), *dsilu = zero_floats(2 * n);
    rt_be_gelu_forward(backend, gelu, x, n);
    rt_be_gelu_backward(backend, dgelu, x, ones, n);
    rt_be_swiglu_forward(backend, silu, gate_up, 1, (int)n);
    rt_be_swiglu_backward(backend, dsilu, ones, gate_up, 1, (int)n);

    double *ref[4], *scale[4];
    for (int k = 0; k < 4; k++)
        ref[k] = malloc(n * sizeof(double)), scale[k] = malloc(n * sizeof(double));
    double tanh_form_err = 0.0;
    for (size_t i = 0; i < n; i++) {
        double xd = x[i];
        ref_gelu_point(xd, &ref[0][i], &scale[0][i], &ref[1][i], &scale[1][i]);
        ref_silu_point(xd, &ref[2][i], &scale[2][i], &ref[3][i], &scale[3][i]);
        if (fabs(xd) <= 3.0 && fabs(xd) >= 1e-3) {
            double tanh_form;
            ref_gelu(&tanh_form, &xd, 1);
            double err = fabs(tanh_form - ref[0][i]) / fabs(ref[0][i]);
            tanh_form_err = err > tanh_form_err ? err : tanh_form_err;
        }
    }
    CU_ASSERT(tanh_form_err < 1e-12);
    check_conditioned(gelu, ref[0], scale[0], x, n, "gelu_forward sweep");
    check_conditioned(dgelu, ref[1], scale[1], x, n, "gelu_backward sweep");
    check_conditioned(silu, ref[2], scale[2], x, n, "swiglu_forward (silu) sweep");
    check_conditioned(dsilu, ref[3], scale[3], x, n, "swiglu_backward dgate sweep");
    check_conditioned(dsilu + n, ref[2], scale[2], x, n, "swiglu_backward dup sweep");

    /* the same inputs one element further into the buffer: bit for bit the same results */
    float *gelu_shift = zero_floats(n + 1), *dgelu_shift = zero_floats(n + 1), *x_shift = zero_floats(n + 1);
    memcpy(x_shift + 1, x, n * sizeof(float));
    rt_be_gelu_forward(backend, gelu_shift + 1, x_shift + 1, n);
    rt_be_gelu_backward(backend, dgelu_shift + 1, x_shift + 1, ones, n);
    CU_ASSERT(memcmp(gelu_shift + 1, gelu, n * sizeof(float)) == 0);
    CU_ASSERT(memcmp(dgelu_shift + 1, dgelu, n * sizeof(float)) == 0);

    /* extremes: saturation, no inf * 0 in the gradients, NaN in NaN out */
    enum { N_EXT = 8 };
    const float big[N_EXT] = {1e19f, -1e19f, 1e30f, -1e30f, FLT_MAX, -FLT_MAX, INFINITY, -INFINITY};
    float ext_up[2 * N_EXT], ext_ones[N_EXT], f[N_EXT], df[N_EXT] = {0}, s[N_EXT], ds[2 * N_EXT] = {0};
    for (int i = 0; i < N_EXT; i++)
        ext_up[i] = big[i], ext_up[N_EXT + i] = 1.0f, ext_ones[i] = 1.0f;
    rt_be_gelu_forward(backend, f, big, N_EXT);
    rt_be_gelu_backward(backend, df, big, ext_ones, N_EXT);
    rt_be_swiglu_forward(backend, s, ext_up, 1, N_EXT);
    rt_be_swiglu_backward(backend, ds, ext_ones, ext_up, 1, N_EXT);
    for (int i = 0; i < N_EXT; i++) {
        float sat = big[i] > 0.0f ? big[i] : 0.0f, sat_grad = big[i] > 0.0f ? 1.0f : 0.0f;
        if (big[i] != -INFINITY) { /* at -inf both outputs are NaN (-inf * 0), as before */
            CU_ASSERT(f[i] == sat);
            CU_ASSERT(s[i] == sat);
            CU_ASSERT(ds[N_EXT + i] == sat);
        }
        CU_ASSERT(df[i] == sat_grad);
        CU_ASSERT(ds[i] == sat_grad);
        if (!(df[i] == sat_grad && ds[i] == sat_grad))
            fprintf(stderr, "\n  at x = %g: gelu' %g, silu' %g, want %g", big[i], df[i], ds[i], sat_grad);
    }
    float nan_in[2] = {NAN, 1.0f}, nan_out[1], nan_grad[2] = {0};
    rt_be_gelu_forward(backend, nan_out, nan_in, 1);
    CU_ASSERT(isnan(nan_out[0]));
    rt_be_gelu_backward(backend, nan_grad, nan_in, ext_ones, 1);
    CU_ASSERT(isnan(nan_grad[0]));
    rt_be_swiglu_forward(backend, nan_out, nan_in, 1, 1);
    CU_ASSERT(isnan(nan_out[0]));
    nan_grad[0] = nan_grad[1] = 0.0f;
    rt_be_swiglu_backward(backend, nan_grad, ext_ones, nan_in, 1, 1);
    CU_ASSERT(isnan(nan_grad[0]) && isnan(nan_grad[1]));

    for (int k = 0; k < 4; k++)
        free(ref[k]), free(scale[k]);
    free(x), free(ones), free(gate_up), free(gelu), free(dgelu), free(silu), free(dsilu), free(gelu_shift);
    free(dgelu_shift), free(x_shift);
}

static void test_add_scale(void) {
    size_t n = 100000; /* above the backend's threshold for threads */
    float *a = rand_floats(n, -1.0f, 1.0f, 800), *b = rand_floats(n, -1.0f, 1.0f, 801);
    float *out = zero_floats(n), *expected = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++)
        expected[i] = a[i] + b[i];
    rt_be_add(backend, out, a, b, n);
    CU_ASSERT(memcmp(out, expected, n * sizeof(float)) == 0);
    rt_be_add(backend, a, a, b, n); /* out aliases a */
    CU_ASSERT(memcmp(a, expected, n * sizeof(float)) == 0);
    for (size_t i = 0; i < n; i++)
        expected[i] = b[i] * 0.37f;
    rt_be_scale(backend, b, 0.37f, n);
    CU_ASSERT(memcmp(b, expected, n * sizeof(float)) == 0);
    free(a), free(b), free(out), free(expected);
}

/* ----------------------------------------------------------------------------
 * backward accumulates: a second call adds the same gradient again
 */

static void check_doubles(const float *once, const float *twice, size_t n, const char *what) {
    float *expected = malloc(n * sizeof(float) + 1);
    for (size_t i = 0; i < n; i++)
        expected[i] = 2.0f * once[i];
    check_close(twice, expected, n, 1e-3, 1e-6, what);
    free(expected);
}

static void test_backward_accumulates(void) {
    size_t N = 9;
    int C = 20, OC = 13, F = 10;
    float *inp = norm_inputs(N, C, 900), *weight = rand_floats((size_t)OC * C, -1.0f, 1.0f, 901);
    float *dout = rand_floats(N * OC, -1.0f, 1.0f, 902);
    /* three gradient slots per run, each large enough for any of the gradients below */
    float *g1[3], *g2[3];
    size_t slot = (N + (size_t)OC) * (size_t)C;
    size_t sizes[3] = {N * C, (size_t)OC * C, (size_t)OC}; /* matmul: dinp, dweight, dbias */
    for (int k = 0; k < 3; k++)
        g1[k] = zero_floats(slot), g2[k] = zero_floats(slot);
    rt_be_matmul_backward(backend, g1[0], g1[1], g1[2], dout, inp, weight, N, C, OC);
    for (int rep = 0; rep < 2; rep++)
        rt_be_matmul_backward(backend, g2[0], g2[1], g2[2], dout, inp, weight, N, C, OC);
    check_doubles(g1[0], g2[0], sizes[0], "matmul dinp accumulates");
    check_doubles(g1[1], g2[1], sizes[1], "matmul dweight accumulates");
    check_doubles(g1[2], g2[2], sizes[2], "matmul dbias accumulates");
    for (int k = 0; k < 3; k++)
        memset(g1[k], 0, slot * sizeof(float)), memset(g2[k], 0, slot * sizeof(float));

    /* layernorm: dinp, dweight, dbias (C each for the weights) */
    float *mean = zero_floats(N), *rstd = zero_floats(N), *out = zero_floats(N * C);
    float *dout_c = rand_floats(N * C, -1.0f, 1.0f, 903), *norm_weight = rand_floats(C, 0.5f, 1.5f, 904);
    rt_be_layernorm_forward(backend, out, mean, rstd, inp, norm_weight, norm_weight, N, C, 1e-5f);
    rt_be_layernorm_backward(backend, g1[0], g1[1], g1[2], dout_c, inp, norm_weight, mean, rstd, N, C);
    for (int rep = 0; rep < 2; rep++)
        rt_be_layernorm_backward(backend, g2[0], g2[1], g2[2], dout_c, inp, norm_weight, mean, rstd, N, C);
    check_doubles(g1[0], g2[0], N * C, "layernorm dinp accumulates");
    check_doubles(g1[1], g2[1], C, "layernorm dweight accumulates");
    check_doubles(g1[2], g2[2], C, "layernorm dbias accumulates");
    for (int k = 0; k < 3; k++)
        memset(g1[k], 0, slot * sizeof(float)), memset(g2[k], 0, slot * sizeof(float));

    /* rmsnorm */
    rt_be_rmsnorm_forward(backend, out, rstd, inp, norm_weight, N, C, 1e-5f);
    rt_be_rmsnorm_backward(backend, g1[0], g1[1], dout_c, inp, norm_weight, rstd, N, C);
    for (int rep = 0; rep < 2; rep++)
        rt_be_rmsnorm_backward(backend, g2[0], g2[1], dout_c, inp, norm_weight, rstd, N, C);
    check_doubles(g1[0], g2[0], N * C, "rmsnorm dinp accumulates");
    check_doubles(g1[1], g2[1], C, "rmsnorm dweight accumulates");
    for (int k = 0; k < 3; k++)
        memset(g1[k], 0, slot * sizeof(float)), memset(g2[k], 0, slot * sizeof(float));

    /* embedding (tokens < OC rows of the (OC, C) table, positions < N) */
    int32_t tokens[9] = {1, 4, 1, 12, 0, 4, 4, 7, 1};
    int64_t pos[9] = {0, 1, 2, 3, 4, 5, 6, 7, 8};
    rt_be_embedding_backward(backend, g1[1], g1[0], dout_c, tokens, pos, N, C);
    for (int rep = 0; rep < 2; rep++)
        rt_be_embedding_backward(backend, g2[1], g2[0], dout_c, tokens, pos, N, C);
    check_doubles(g1[1], g2[1], sizes[1], "embedding dwte accumulates");
    check_doubles(g1[0], g2[0], N * C, "embedding dwpe accumulates");
    for (int k = 0; k < 3; k++)
        memset(g1[k], 0, slot * sizeof(float)), memset(g2[k], 0, slot * sizeof(float));

    /* gelu (N*C elements) and swiglu (N rows of 2F = C) */
    rt_be_gelu_backward(backend, g1[0], inp, dout_c, N * C);
    for (int rep = 0; rep < 2; rep++)
        rt_be_gelu_backward(backend, g2[0], inp, dout_c, N * C);
    check_doubles(g1[0], g2[0], N * C, "gelu dinp accumulates");
    memset(g1[0], 0, slot * sizeof(float)), memset(g2[0], 0, slot * sizeof(float));
    rt_be_swiglu_backward(backend, g1[0], dout_c, inp, N, F);
    for (int rep = 0; rep < 2; rep++)
        rt_be_swiglu_backward(backend, g2[0], dout_c, inp, N, F);
    check_doubles(g1[0], g2[0], N * C, "swiglu dgate_up accumulates");

    for (int k = 0; k < 3; k++)
        free(g1[k]), free(g2[k]);
    free(inp), free(weight), free(dout), free(mean), free(rstd), free(out), free(dout_c), free(norm_weight);
}

/* ----------------------------------------------------------------------------
 * determinism: bitwise the same run to run, and with 1 or 2 threads
 */

static void test_determinism(void) {
    size_t N = 2048;
    int C = 200, VP = 50;
    int threads_before = omp_get_max_threads();
    float *inp = norm_inputs(N, C, 1000), *weight = rand_floats(C, 0.5f, 1.5f, 1001);
    float *dout = rand_floats(N * C, -1.0f, 1.0f, 1002);
    int32_t *tokens = malloc(N * sizeof(int32_t));
    int64_t *pos = malloc(N * sizeof(int64_t));
    for (size_t n = 0; n < N; n++)
        tokens[n] = (int32_t)((n * 7919) % VP), pos[n] = (int64_t)(n % 256);
    float *mean = zero_floats(N), *rstd = zero_floats(N), *out = zero_floats(N * C);
    rt_be_layernorm_forward(backend, out, mean, rstd, inp, weight, weight, N, C, 1e-5f);

    float *results[3][5]; /* run (2 threads, 2 threads, 1 thread) x (dwte, dwpe, dinp, dweight, dbias) */
    size_t sizes[5] = {(size_t)VP * C, 256 * (size_t)C, N * C, (size_t)C, (size_t)C};
    for (int run = 0; run < 3; run++) {
        omp_set_num_threads(run < 2 ? 2 : 1);
        for (int k = 0; k < 5; k++)
            results[run][k] = zero_floats(sizes[k]);
        rt_be_embedding_backward(backend, results[run][0], results[run][1], dout, tokens, pos, N, C);
        rt_be_layernorm_backward(backend, results[run][2], results[run][3], results[run][4], dout, inp, weight, mean,
                                 rstd, N, C);
    }
    omp_set_num_threads(threads_before);
    const char *names[5] = {"dwte", "dwpe", "layernorm dinp", "layernorm dweight", "layernorm dbias"};
    for (int k = 0; k < 5; k++) {
        int same_run = memcmp(results[0][k], results[1][k], sizes[k] * sizeof(float)) == 0;
        int same_threads = memcmp(results[0][k], results[2][k], sizes[k] * sizeof(float)) == 0;
        if (!same_run || !same_threads) fprintf(stderr, "\n  %s differs between runs", names[k]);
        CU_ASSERT(same_run);
        CU_ASSERT(same_threads);
    }
    for (int run = 0; run < 3; run++)
        for (int k = 0; k < 5; k++)
            free(results[run][k]);
    free(inp), free(weight), free(dout), free(tokens), free(pos), free(mean), free(rstd), free(out);
}

/* ----------------------------------------------------------------------------
 * dropout
 */

/* Philox4x32-10 written independently of the backend, checked against Random123's known-answer vectors. */
static void ref_philox(const uint32_t ctr_in[4], const uint32_t key_in[2], uint32_t out[4]) {
    uint32_t x[4] = {ctr_in[0], ctr_in[1], ctr_in[2], ctr_in[3]}, key[2] = {key_in[0], key_in[1]};
    for (int round = 0; round < 10; round++) {
        uint64_t a = (uint64_t)x[0] * 0xD2511F53u, b = (uint64_t)x[2] * 0xCD9E8D57u;
        uint32_t next[4] = {(uint32_t)(b >> 32) ^ x[1] ^ key[0], (uint32_t)b, (uint32_t)(a >> 32) ^ x[3] ^ key[1],
                            (uint32_t)a};
        memcpy(x, next, sizeof x);
        key[0] += 0x9E3779B9u;
        key[1] += 0xBB67AE85u;
    }
    memcpy(out, x, sizeof x);
}

/* The keep decision documented in backend_cpu.c, which other backends follow bit for bit. */
static int ref_dropout_keep(rt_rng_key key, int64_t position, int channel, float p) {
    uint32_t key_ctr[4] = {(uint32_t)key.step, (uint32_t)(key.step >> 32), key.layer, key.site};
    uint32_t seed[2] = {(uint32_t)key.seed, (uint32_t)(key.seed >> 32)}, derived[4], bits[4];
    ref_philox(key_ctr, seed, derived);
    uint64_t pos = (uint64_t)position;
    uint32_t ctr[4] = {(uint32_t)channel / 4, (uint32_t)pos, (uint32_t)(pos >> 32), 0};
    ref_philox(ctr, derived, bits);
    return (double)(bits[channel % 4] >> 8) / 16777216.0 >= (double)p;
}

static void test_philox_reference(void) {
    /* Random123 tests/kat_vectors, "philox4x32 10" lines: ctr[4] key[2] -> out[4] */
    static const uint32_t kat[3][10] = {
        {0, 0, 0, 0, 0, 0, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8},
        {~0u, ~0u, ~0u, ~0u, ~0u, ~0u, 0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd},
        {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344, 0xa4093822, 0x299f31d0, 0xd16cfe09, 0x94fdcceb, 0x5001e420,
         0x24126ea1},
    };
    for (int i = 0; i < 3; i++) {
        uint32_t out[4];
        ref_philox(kat[i], kat[i] + 4, out);
        CU_ASSERT(memcmp(out, kat[i] + 6, sizeof out) == 0);
    }
}

static void test_dropout(void) {
    size_t N = 256;
    int C = 1001; /* not a multiple of 4: the last Philox block is partial */
    float p = 0.1f, keep_scale = 1.0f / (1.0f - p);
    rt_rng_key key = {.seed = 0x123456789ABCDEFULL, .step = 42, .layer = 3, .site = 1};
    int64_t *pos = malloc(N * sizeof(int64_t));
    for (size_t n = 0; n < N; n++)
        pos[n] = (int64_t)(n * 3 + 1000);
    pos[N - 1] = (int64_t)1 << 33; /* high word of the position in play */
    float *x = malloc(N * C * sizeof(float));
    for (size_t i = 0; i < N * C; i++)
        x[i] = 1.0f;

    /* p == 0 is a no-op */
    float *same = rand_floats(N * C, -1.0f, 1.0f, 1100), *same_copy = copy_floats(same, N * C);
    rt_be_dropout(backend, same, pos, N, C, 0.0f, key);
    CU_ASSERT(memcmp(same, same_copy, N * C * sizeof(float)) == 0);

    /* kept fraction within 1% of 1-p; kept values scaled by exactly 1/(1-p); mask matches the reference */
    rt_be_dropout(backend, x, pos, N, C, p, key);
    size_t kept = 0, bad_values = 0, ref_mismatch = 0;
    for (size_t n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            float value = x[n * C + c];
            kept += value != 0.0f;
            bad_values += value != 0.0f && value != keep_scale;
            ref_mismatch += (value != 0.0f) != ref_dropout_keep(key, pos[n], c, p);
        }
    }
    double kept_fraction = (double)kept / (double)(N * C);
    if (getenv("TEST_OPS_VERBOSE"))
        fprintf(stderr, "\n  dropout kept fraction %.5f (1-p = %.2f)", kept_fraction, 1 - p);
    CU_ASSERT(fabs(kept_fraction - (1.0 - p)) <= 0.01);
    CU_ASSERT(bad_values == 0);
    CU_ASSERT(ref_mismatch == 0);

    /* a token alone at its position gets the same mask as inside the buffer, in any order */
    size_t picks[3] = {0, 77, N - 1};
    for (int k = 0; k < 3; k++) {
        float *alone = malloc(C * sizeof(float));
        for (int c = 0; c < C; c++)
            alone[c] = 1.0f;
        rt_be_dropout(backend, alone, pos + picks[k], 1, C, p, key);
        CU_ASSERT(memcmp(alone, x + picks[k] * C, C * sizeof(float)) == 0);
        free(alone);
    }
    float *reversed = malloc(N * C * sizeof(float));
    int64_t *pos_reversed = malloc(N * sizeof(int64_t));
    for (size_t n = 0; n < N; n++)
        pos_reversed[n] = pos[N - 1 - n];
    for (size_t i = 0; i < N * C; i++)
        reversed[i] = 1.0f;
    rt_be_dropout(backend, reversed, pos_reversed, N, C, p, key);
    int order_free = 1;
    for (size_t n = 0; n < N; n++)
        order_free &= memcmp(reversed + n * C, x + (N - 1 - n) * C, C * sizeof(float)) == 0;
    CU_ASSERT(order_free);

    /* one thread gives the same mask */
    int threads_before = omp_get_max_threads();
    omp_set_num_threads(1);
    for (size_t i = 0; i < N * C; i++)
        reversed[i] = 1.0f;
    rt_be_dropout(backend, reversed, pos, N, C, p, key);
    omp_set_num_threads(threads_before);
    CU_ASSERT(memcmp(reversed, x, N * C * sizeof(float)) == 0);

    /* a different seed, step, layer or site gives a different mask (about 2 p (1-p) = 18% of bits differ) */
    rt_rng_key others[4] = {key, key, key, key};
    others[0].seed ^= 1ULL << 40, others[1].step += 1, others[2].layer += 1, others[3].site += 1;
    for (int k = 0; k < 4; k++) {
        for (size_t i = 0; i < N * C; i++)
            reversed[i] = 1.0f;
        rt_be_dropout(backend, reversed, pos, N, C, p, others[k]);
        size_t differ = 0;
        for (size_t i = 0; i < N * C; i++)
            differ += (reversed[i] != 0.0f) != (x[i] != 0.0f);
        CU_ASSERT((double)differ / (double)(N * C) > 0.15);
    }

    /* backward (the same call on the gradient) zeroes exactly the dropped elements and scales the rest */
    float *grad = rand_floats(N * C, -1.0f, 1.0f, 1101), *grad_in = copy_floats(grad, N * C);
    rt_be_dropout(backend, grad, pos, N, C, p, key);
    size_t inconsistent = 0;
    for (size_t i = 0; i < N * C; i++) {
        float expected = x[i] != 0.0f ? grad_in[i] * keep_scale : 0.0f;
        inconsistent += grad[i] != expected;
    }
    CU_ASSERT(inconsistent == 0);

    free(pos), free(x), free(same), free(same_copy), free(reversed), free(pos_reversed), free(grad), free(grad_in);
}

/* ----------------------------------------------------------------------------
 * loss
 */

static double xent_loss(void *arg) {
    fd_ctx *ctx = arg;
    ref_xent_losses(ctx->out, ctx->inp, ctx->targets, ctx->N, ctx->V, ctx->Vp);
    double sum = 0.0;
    for (size_t i = 0; i < ctx->N; i++)
        sum += ctx->out[i];
    return sum * ctx->dloss_scale;
}

static void test_softmax_xent(void) {
    enum { N = 6, V = 37, VP = 48 };
    int32_t targets[N] = {3, -1, 0, 36, 20, 11}; /* row 1 ignored; first and last column */
    float dloss_scale = 0.2f;
    float *logits = rand_floats(N * VP, -3.0f, 3.0f, 1200);
    for (int i = 0; i < N; i++) {
        for (int j = V; j < VP; j++)
            logits[i * VP + j] = 1e4f; /* padding garbage must be ignored */
    }
    for (int j = 0; j < V; j++)
        logits[4 * VP + j] += 1000.0f; /* stability: large logits */
    float *logits_in = copy_floats(logits, N * VP);
    float losses[N], ref_losses_f[N];
    double ref_losses[N];

    /* dloss_scale == 0: losses only, logits untouched */
    rt_be_softmax_xent(backend, logits, losses, targets, N, V, VP, 0.0f);
    CU_ASSERT(memcmp(logits, logits_in, N * VP * sizeof(float)) == 0);
    double *logits_d = to_double(logits_in, N * VP);
    ref_xent_losses(ref_losses, logits_d, targets, N, V, VP);
    for (int i = 0; i < N; i++)
        ref_losses_f[i] = (float)ref_losses[i];
    check_close(losses, ref_losses_f, N, 1e-2, FWD_TOL, "softmax_xent losses vs log-sum-exp");
    CU_ASSERT(losses[1] == 0.0f);

    /* with gradients: same losses, dlogits = d(scale * sum losses)/dlogits */
    float losses2[N];
    rt_be_softmax_xent(backend, logits, losses2, targets, N, V, VP, dloss_scale);
    CU_ASSERT(memcmp(losses, losses2, sizeof losses) == 0);
    double scratch[N];
    fd_ctx ctx = {
        .N = N, .V = V, .Vp = VP, .dloss_scale = dloss_scale, .inp = logits_d, .targets = targets, .out = scratch};
    float *fd = fd_gradient(logits_d, N * VP, xent_loss, &ctx);
    check_close(logits, fd, N * VP, 1e-2, GRAD_TOL, "softmax_xent dlogits vs finite differences");
    int padded_zero = 1, ignored_zero = 1;
    for (int i = 0; i < N; i++)
        for (int j = V; j < VP; j++)
            padded_zero &= logits[i * VP + j] == 0.0f;
    for (int j = 0; j < VP; j++)
        ignored_zero &= logits[1 * VP + j] == 0.0f;
    CU_ASSERT(padded_zero);
    CU_ASSERT(ignored_zero);

    free(logits), free(logits_in), free(logits_d), free(fd);
}

/* ----------------------------------------------------------------------------
 * reductions and optimizer
 */

static void test_sum_squares(void) {
    size_t n = 3 * 65536 + 123; /* several of the backend's fixed chunks and a partial one */
    float *x = rand_floats(n, -3.0f, 3.0f, 1300);
    double expected = 0.0;
    for (size_t i = 0; i < n; i++)
        expected += (double)x[i] * (double)x[i];
    double got = rt_be_sum_squares(backend, x, n);
    if (getenv("TEST_OPS_VERBOSE")) fprintf(stderr, "\n  sum_squares rel err %.3g", fabs(got - expected) / expected);
    CU_ASSERT(fabs(got - expected) <= 1e-12 * expected);
    CU_ASSERT(rt_be_sum_squares(backend, x, 0) == 0.0);
    CU_ASSERT(rt_be_sum_squares(backend, x, 1) == (double)x[0] * x[0]);

    int threads_before = omp_get_max_threads();
    omp_set_num_threads(1);
    double one_thread = rt_be_sum_squares(backend, x, n);
    omp_set_num_threads(threads_before);
    CU_ASSERT(memcmp(&one_thread, &got, sizeof got) == 0);
    CU_ASSERT(rt_be_sum_squares(backend, x, n) == got);
    free(x);
}

static void test_adamw(void) {
    size_t n = 64;
    float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
    float weight_decays[2] = {0.1f, 0.0f};
    for (int w = 0; w < 2; w++) {
        float wd = weight_decays[w];
        float *param = rand_floats(n, -1.0f, 1.0f, 1400), *m = zero_floats(n), *v = zero_floats(n);
        double *param_d = to_double(param, n), *m_d = calloc(n, sizeof(double)), *v_d = calloc(n, sizeof(double));
        for (int t = 1; t <= 3; t++) {
            float *grad = rand_floats(n, -1.0f, 1.0f, 1410 + t);
            grad[0] = 0.0f; /* a zero gradient still decays */
            rt_be_adamw_update(backend, param, grad, m, v, n, lr, beta1, beta2, eps, wd, t);
            for (size_t i = 0; i < n; i++) {
                double g = grad[i];
                m_d[i] = beta1 * m_d[i] + (1.0 - beta1) * g;
                v_d[i] = beta2 * v_d[i] + (1.0 - beta2) * g * g;
                double m_hat = m_d[i] / (1.0 - pow(beta1, t)), v_hat = v_d[i] / (1.0 - pow(beta2, t));
                param_d[i] -= lr * (m_hat / (sqrt(v_hat) + eps) + wd * param_d[i]);
            }
            free(grad);
        }
        float *expected = to_float(param_d, n), *m_expected = to_float(m_d, n), *v_expected = to_float(v_d, n);
        check_close(param, expected, n, 1e-3, FWD_TOL, wd > 0 ? "adamw param (wd 0.1)" : "adamw param (wd 0)");
        check_close(m, m_expected, n, 1e-3, FWD_TOL, "adamw m");
        check_close(v, v_expected, n, 1e-4, FWD_TOL, "adamw v");
        free(param), free(m), free(v), free(param_d), free(m_d), free(v_d), free(expected), free(m_expected);
        free(v_expected);
    }
}

int main(void) {
    backend = rt_backend_cpu();
    test_case cases[] = {
        {"memory", test_memory},
        {"matmul_forward", test_matmul_forward},
        {"matmul_backward", test_matmul_backward},
        {"embedding", test_embedding},
        {"layernorm", test_layernorm},
        {"rmsnorm", test_rmsnorm},
        {"rope", test_rope},
        {"gelu", test_gelu},
        {"swiglu", test_swiglu},
        {"gelu_silu_sweep", test_gelu_silu_sweep},
        {"add_scale", test_add_scale},
        {"backward_accumulates", test_backward_accumulates},
        {"determinism", test_determinism},
        {"philox_reference", test_philox_reference},
        {"dropout", test_dropout},
        {"softmax_xent", test_softmax_xent},
        {"sum_squares", test_sum_squares},
        {"adamw", test_adamw},
    };
    return test_run_suite("test_ops", cases, (int)(sizeof cases / sizeof cases[0]));
}
