/* test_cuda_ops.c: every op of the CUDA backend against the CPU backend on the same random inputs (needs a GPU). */
/*
 * Each check runs one op on the CPU backend (host buffers) and on the CUDA
 * backend (device buffers from rt_be_device_alloc, filled by rt_be_copy) with
 * the same inputs and the same initial outputs, and compares the CUDA
 * result with the CPU's. The CPU backend is the reference: test_ops and
 * test_attention check it against naive double loops and finite
 * differences. Without a GPU (or in a build without the CUDA backend) the
 * program prints one line, "test_cuda_ops: skipped: <why>", and exits 77,
 * which CTest counts as skipped (SKIP_RETURN_CODE 77).
 *
 * Errors, of a result a against the CPU's b over n elements:
 *   norm-wise    ||a - b||_2 / ||b||_2
 *   elementwise  max_i |a_i - b_i| / (|b_i| + rms(b)),  rms(b) = ||b||_2 / sqrt(n)
 * Equal values (infinities included: lse of a query that sees no key is
 * -inf on both) count as no error; a NaN or an infinity on one side only
 * fails. The rms term keeps elements that cancel to near 0 from failing on
 * an absolute error that is small for the tensor.
 *
 * Tolerances (norm-wise / elementwise):
 *   fp32  1e-5 / 1e-4. backend_cuda_ops.cu evaluates the CPU's expressions
 *         in the same precision; what differs is the libm of the device
 *         (expf, tanhf: 1-2 ulp), FMA contraction (1 ulp per contracted
 *         pair) and the order of float sums within a row (norm statistics,
 *         softmax): a few ulps (6e-8 each) of the row's magnitude, so about
 *         1e-6 of rms(b) per element at worst and far less norm-wise; 1e-4
 *         leaves a margin of ~100 and still catches a wrong element (O(1)).
 *   bf16  2e-2 / 6e-2: matmul_forward/backward (cuBLAS, CUBLAS_COMPUTE_32F_FAST_16BF)
 *         and the attention blocks round their inputs to bf16 (8 bits of
 *         mantissa, relative error <= 2^-9 = 2e-3 each) and accumulate in
 *         fp32. A dot product of K terms with independent rounding errors
 *         is off by about 2^-9 * sqrt(2) ~ 3e-3 of the typical output:
 *         norm-wise ~3e-3 (2e-2 is ~6x that), elementwise ~3e-3 rms with
 *         tails of ~5 sigma over millions of elements (1.5e-2; 6e-2 is 4x).
 *   bit for bit: dropout (the Philox mask is integer arithmetic: any
 *         difference is a wrong mask), add and scale (one IEEE operation),
 *         embedding forward (one fp32 add) and backward (backend_cuda_ops.cu
 *         adds every run of equal ids in the CPU's order), the padding that
 *         ops must not touch, and every CUDA result against itself run twice
 *         (backend.h: no atomics, fixed reduction order).
 *   sum_squares: 1e-11 relative. Both sides sum squares in double, in other
 *         orders; positive terms cannot cancel, so the error is at most
 *         (sequential run length) * 1.1e-16: the CPU's chunks are 65536
 *         long (7e-12), the device's per-thread runs far shorter.
 *
 * Backward gradients start from non-zero values (backend.h: every backward
 * accumulates) with the rms of the gradient itself, measured on a first CPU
 * run from zero, so a kernel that overwrites instead of adding is off by
 * O(1) norm-wise, far beyond any tolerance.
 *
 * Set TEST_CUDA_VERBOSE=1 to print every measured error next to its tolerance. TEST_CUDA_BACKEND=cpu runs
 * the whole suite with a copy of the CPU backend's table in the GPU's place (device buffers are then host
 * memory): every comparison must then hold exactly, which checks the harness itself (buffers, strides,
 * offsets, the copy engine's ordering) on a machine without a GPU.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/registry.h"
#include "runtime/core/common.h"
#include "tests/support/testing.h"

static const rt_backend *gpu; /* the CUDA instance under test */
static const rt_backend *cpu; /* the reference */
static int on_gpu;            /* 0 under TEST_CUDA_BACKEND=cpu (the harness check) */

/* ----------------------------------------------------------------------------
 * tolerances and comparisons
 */

typedef struct {
    const char *name;
    double norm_tol, elem_tol;
} tolerance;

static const tolerance FP32 = {"fp32", 1e-5, 1e-4};
static const tolerance BF16 = {"bf16", 2e-2, 6e-2};

static int verbose(void) { return getenv("TEST_CUDA_VERBOSE") != NULL; }

/* Norm-wise and elementwise errors of got against ref (see the top comment). */
static void measure(const float *got, const float *ref, size_t n, double *norm_err, double *elem_err) {
    double ref2 = 0.0, diff2 = 0.0, worst = 0.0;
    for (size_t i = 0; i < n; i++)
        if (isfinite(ref[i])) ref2 += (double)ref[i] * ref[i];
    const double rms = n ? sqrt(ref2 / (double)n) : 0.0;
    for (size_t i = 0; i < n; i++) {
        if (got[i] == ref[i]) continue;
        const double d = fabs((double)got[i] - (double)ref[i]);
        if (!(d <= 1e300)) { /* NaN, or an infinity on one side */
            diff2 = worst = INFINITY;
            break;
        }
        diff2 += d * d;
        const double e = d / (fabs((double)ref[i]) + rms);
        if (!(e <= worst)) worst = e;
    }
    *norm_err = ref2 > 0.0 ? sqrt(diff2 / ref2) : sqrt(diff2);
    *elem_err = worst;
}

/* got (host) against ref (host), n floats. */
static void check_host(const float *got, const float *ref, size_t n, tolerance tol, const char *what) {
    double norm_err, elem_err;
    measure(got, ref, n, &norm_err, &elem_err);
    const int ok = norm_err <= tol.norm_tol && elem_err <= tol.elem_tol;
    if (!ok || verbose())
        fprintf(stderr, "\n  %-58s norm %.2e (tol %.0e)  elem %.2e (tol %.0e)  %s%s", what, norm_err, tol.norm_tol,
                elem_err, tol.elem_tol, tol.name, ok ? "" : "  FAILED");
    CU_ASSERT(norm_err <= tol.norm_tol);
    CU_ASSERT(elem_err <= tol.elem_tol);
}

static void *download(const void *dev, size_t bytes) {
    void *host = malloc_check(bytes + 1);
    rt_be_copy(gpu, host, dev, bytes);
    return host;
}

/* A device result against the CPU's host result. */
static void check_dev(const float *dev, const float *ref, size_t n, tolerance tol, const char *what) {
    float *got = download(dev, n * sizeof(float));
    check_host(got, ref, n, tol, what);
    free(got);
}

/* The first differing float of a and b, or -1. */
static long first_difference(const void *a, const void *b, size_t bytes) {
    const unsigned char *x = a, *y = b;
    for (size_t i = 0; i < bytes; i++)
        if (x[i] != y[i]) return (long)(i / sizeof(float));
    return -1;
}

static void assert_same_bits(const void *got, const void *ref, size_t bytes, const char *what) {
    long at = first_difference(got, ref, bytes);
    if (at >= 0 || verbose()) fprintf(stderr, "\n  %-58s %s", what, at < 0 ? "bit for bit" : "");
    if (at >= 0)
        fprintf(stderr, "DIFFERS at float %ld: %.9g vs %.9g", at, (double)((const float *)got)[at],
                (double)((const float *)ref)[at]);
    CU_ASSERT(at < 0);
}

/* A device buffer equal to a host buffer, bit for bit. */
static void check_dev_bits(const void *dev, const void *ref, size_t bytes, const char *what) {
    void *got = download(dev, bytes);
    assert_same_bits(got, ref, bytes, what);
    free(got);
}

/* Two device buffers equal bit for bit (a result and its rerun). */
static void check_dev_same(const void *dev_a, const void *dev_b, size_t bytes, const char *what) {
    void *a = download(dev_a, bytes), *b = download(dev_b, bytes);
    assert_same_bits(a, b, bytes, what);
    free(a);
    free(b);
}

/* ----------------------------------------------------------------------------
 * buffers: a host copy for the CPU and a device copy for the GPU, with the same initial contents
 */

typedef struct {
    float *h; /* (n) host: the CPU backend's operand */
    float *d; /* (n) device: the CUDA backend's operand */
    size_t n;
} fbuf;

static void *dev_alloc(size_t bytes) {
    void *ptr = rt_be_device_alloc(gpu, bytes);
    CU_ASSERT_PTR_NOT_NULL_FATAL(ptr);
    return ptr;
}

static void *dev_from(const void *host, size_t bytes) {
    void *ptr = dev_alloc(bytes);
    rt_be_copy(gpu, ptr, host, bytes);
    return ptr;
}

/* Sets both copies to values (n floats). */
static void fbuf_set(fbuf *b, const float *values) {
    memcpy(b->h, values, b->n * sizeof(float));
    rt_be_copy(gpu, b->d, values, b->n * sizeof(float));
}

static fbuf fbuf_new(size_t n) {
    fbuf b = {malloc_check(n * sizeof(float) + 1), dev_alloc(n * sizeof(float)), n};
    return b;
}

static fbuf fbuf_rand(size_t n, float lo, float hi, uint64_t seed) {
    fbuf b = fbuf_new(n);
    test_fill_uniform(b.h, n, lo, hi, seed);
    rt_be_copy(gpu, b.d, b.h, n * sizeof(float));
    return b;
}

static fbuf fbuf_fill(size_t n, float value) {
    fbuf b = fbuf_new(n);
    for (size_t i = 0; i < n; i++)
        b.h[i] = value;
    rt_be_copy(gpu, b.d, b.h, n * sizeof(float));
    return b;
}

static void fbuf_free(fbuf *b) {
    free(b->h);
    rt_be_device_free(gpu, b->d);
}

static float *rand_host(size_t n, float lo, float hi, uint64_t seed) {
    float *x = malloc_check(n * sizeof(float) + 1);
    test_fill_uniform(x, n, lo, hi, seed);
    return x;
}

static double rms_of(const float *x, size_t n) {
    double s = 0.0;
    for (size_t i = 0; i < n; i++)
        s += (double)x[i] * x[i];
    return n ? sqrt(s / (double)n) : 0.0;
}

/* Initial gradient values with the rms of a gradient measured from zero (uniform in +-sqrt(3) rms). */
static float *init_like(const float *grad, size_t n, uint64_t seed) {
    const float a = (float)(sqrt(3.0) * rms_of(grad, n)) + 1e-3f;
    return rand_host(n, -a, a, seed);
}

/* Rows of different offsets and scales, so norm statistics vary from row to row (as test_ops). */
static float *norm_inputs(size_t N, int C, uint64_t seed) {
    float *x = rand_host(N * (size_t)C, -1.0f, 1.0f, seed);
    for (size_t n = 0; n < N; n++)
        for (int c = 0; c < C; c++)
            x[n * C + c] = x[n * C + c] * (0.5f + (float)(n % 13)) + 0.3f * (float)(n % 7) - 0.5f;
    return x;
}

/* ----------------------------------------------------------------------------
 * memory
 */

static void test_memory(void) {
    const size_t n = (size_t)16 << 20; /* 64 MiB */
    float *src = rand_host(n, -1.0f, 1.0f, 1), *back = malloc_check(n * sizeof(float));
    float *a = dev_alloc(n * sizeof(float)), *b = dev_alloc(n * sizeof(float));
    CU_ASSERT((uintptr_t)a % 64 == 0);
    CU_ASSERT((uintptr_t)b % 64 == 0);
    rt_be_copy(gpu, a, src, n * sizeof(float));  /* host -> device */
    rt_be_copy(gpu, b, a, n * sizeof(float));    /* device -> device */
    rt_be_copy(gpu, back, b, n * sizeof(float)); /* device -> host */
    assert_same_bits(back, src, n * sizeof(float), "copy host -> device -> device -> host");
    rt_be_memset_zero(gpu, b + 1, (n - 2) * sizeof(float)); /* all but the first and last float */
    rt_be_copy(gpu, back, b, n * sizeof(float));
    size_t nonzero = 0;
    for (size_t i = 1; i + 1 < n; i++)
        nonzero += back[i] != 0.0f;
    CU_ASSERT_EQUAL(nonzero, 0);
    CU_ASSERT(back[0] == src[0] && back[n - 1] == src[n - 1]);
    void *empty1 = rt_be_device_alloc(gpu, 0), *empty2 = rt_be_device_alloc(gpu, 0);
    CU_ASSERT_PTR_NOT_NULL(empty1);
    CU_ASSERT_PTR_NOT_NULL(empty2);
    CU_ASSERT(empty1 != empty2);
    rt_be_device_free(gpu, empty1);
    rt_be_device_free(gpu, empty2);
    rt_be_device_free(gpu, a);
    rt_be_device_free(gpu, b);
    free(src);
    free(back);
}

/* ----------------------------------------------------------------------------
 * matmul (bf16 tensor cores, fp32 accumulation; dbias fp32)
 */

typedef struct {
    size_t N;
    int C, OC;
} mm_shape;

/* Tails off every tile size (16/32/128), K not a multiple of 8, one row, and a GPT-2 sized qkv projection. */
static const mm_shape mm_shapes[] = {{37, 96, 80}, {257, 300, 130}, {1, 5, 3}, {1000, 1027, 517}, {4097, 768, 2304}};
#define N_MM_SHAPES (sizeof mm_shapes / sizeof mm_shapes[0])

static void test_matmul_forward(void) {
    for (size_t s = 0; s < N_MM_SHAPES; s++) {
        const size_t N = mm_shapes[s].N;
        const int C = mm_shapes[s].C, OC = mm_shapes[s].OC;
        for (int with_bias = 0; with_bias <= 1; with_bias++) {
            fbuf inp = fbuf_rand(N * C, -1.0f, 1.0f, 10 + s), weight = fbuf_rand((size_t)OC * C, -1.0f, 1.0f, 20 + s);
            fbuf bias = fbuf_rand(OC, -1.0f, 1.0f, 30 + s), out = fbuf_fill(N * OC, 7.0f),
                 again = fbuf_fill(N * OC, 7.0f);
            rt_be_matmul_forward(cpu, out.h, inp.h, weight.h, with_bias ? bias.h : NULL, N, C, OC);
            rt_be_matmul_forward(gpu, out.d, inp.d, weight.d, with_bias ? bias.d : NULL, N, C, OC);
            rt_be_matmul_forward(gpu, again.d, inp.d, weight.d, with_bias ? bias.d : NULL, N, C, OC);
            char what[128];
            snprintf(what, sizeof what, "matmul_forward N=%zu C=%d OC=%d bias=%d", N, C, OC, with_bias);
            check_dev(out.d, out.h, N * OC, BF16, what);
            snprintf(what, sizeof what, "matmul_forward N=%zu C=%d OC=%d bias=%d: rerun", N, C, OC, with_bias);
            check_dev_same(out.d, again.d, N * OC * sizeof(float), what);
            fbuf_free(&inp), fbuf_free(&weight), fbuf_free(&bias), fbuf_free(&out), fbuf_free(&again);
        }
    }
}

static void test_matmul_backward(void) {
    for (size_t s = 0; s < N_MM_SHAPES; s++) {
        const size_t N = mm_shapes[s].N;
        const int C = mm_shapes[s].C, OC = mm_shapes[s].OC;
        fbuf inp = fbuf_rand(N * C, -1.0f, 1.0f, 40 + s), weight = fbuf_rand((size_t)OC * C, -1.0f, 1.0f, 50 + s);
        fbuf dout = fbuf_rand(N * OC, -1.0f, 1.0f, 60 + s);
        const size_t sizes[3] = {N * C, (size_t)OC * C, (size_t)OC};
        /* the gradients from zero, on the CPU, for the scale of the initial values */
        float *zero_grads[3];
        for (int k = 0; k < 3; k++)
            zero_grads[k] = calloc_check(sizes[k] + 1, sizeof(float));
        rt_be_matmul_backward(cpu, zero_grads[0], zero_grads[1], zero_grads[2], dout.h, inp.h, weight.h, N, C, OC);
        fbuf grads[3], rerun[3];
        float *init[3];
        for (int k = 0; k < 3; k++) {
            init[k] = init_like(zero_grads[k], sizes[k], 70 + 3 * s + k);
            grads[k] = fbuf_new(sizes[k]), rerun[k] = fbuf_new(sizes[k]);
            fbuf_set(&grads[k], init[k]), fbuf_set(&rerun[k], init[k]);
        }
        rt_be_matmul_backward(cpu, grads[0].h, grads[1].h, grads[2].h, dout.h, inp.h, weight.h, N, C, OC);
        rt_be_matmul_backward(gpu, grads[0].d, grads[1].d, grads[2].d, dout.d, inp.d, weight.d, N, C, OC);
        rt_be_matmul_backward(gpu, rerun[0].d, rerun[1].d, rerun[2].d, dout.d, inp.d, weight.d, N, C, OC);
        const char *names[3] = {"dinp", "dweight", "dbias"};
        const tolerance tols[3] = {BF16, BF16, FP32}; /* dbias: column sums in double */
        for (int k = 0; k < 3; k++) {
            char what[128];
            snprintf(what, sizeof what, "matmul_backward %s (+= init) N=%zu C=%d OC=%d", names[k], N, C, OC);
            check_dev(grads[k].d, grads[k].h, sizes[k], tols[k], what);
            snprintf(what, sizeof what, "matmul_backward %s N=%zu C=%d OC=%d: rerun", names[k], N, C, OC);
            check_dev_same(grads[k].d, rerun[k].d, sizes[k] * sizeof(float), what);
        }
        /* NULL gradients are skipped: dinp alone from zero equals the CPU's dinp from zero */
        fbuf dinp_only = fbuf_fill(N * C, 0.0f);
        rt_be_matmul_backward(gpu, dinp_only.d, NULL, NULL, dout.d, inp.d, weight.d, N, C, OC);
        check_dev(dinp_only.d, zero_grads[0], N * C, BF16, "matmul_backward dinp alone (dweight, dbias NULL)");
        fbuf_free(&dinp_only);
        for (int k = 0; k < 3; k++)
            free(zero_grads[k]), free(init[k]), fbuf_free(&grads[k]), fbuf_free(&rerun[k]);
        fbuf_free(&inp), fbuf_free(&weight), fbuf_free(&dout);
    }
}

/* ----------------------------------------------------------------------------
 * embedding
 */

/* One embedding case: N tokens below V (ids drawn with repeats, one id frequent), positions n % T. */
static void check_embedding(size_t N, int C, int V, size_t T, uint64_t seed) {
    int32_t *tokens = malloc_check(N * sizeof(int32_t));
    int64_t *pos = malloc_check(N * sizeof(int64_t));
    uint64_t state = seed;
    for (size_t n = 0; n < N; n++) {
        tokens[n] = (int32_t)(test_rand_u64(&state) % (uint64_t)V);
        if (n % 5 == 0) tokens[n] = 3; /* a frequent id: a long run in the sort */
        pos[n] = (int64_t)(n % T);
    }
    int32_t *tokens_d = dev_from(tokens, N * sizeof(int32_t));
    int64_t *pos_d = dev_from(pos, N * sizeof(int64_t));
    fbuf wte = fbuf_rand((size_t)V * C, -1.0f, 1.0f, seed + 1), wpe = fbuf_rand(T * C, -1.0f, 1.0f, seed + 2);
    char what[128];

    /* forward: one fp32 add per element, the same bits */
    for (int with_wpe = 1; with_wpe >= 0; with_wpe--) {
        fbuf out = fbuf_fill(N * C, 0.0f);
        rt_be_embedding_forward(cpu, out.h, tokens, pos, wte.h, with_wpe ? wpe.h : NULL, N, C);
        rt_be_embedding_forward(gpu, out.d, tokens_d, pos_d, wte.d, with_wpe ? wpe.d : NULL, N, C);
        snprintf(what, sizeof what, "embedding_forward N=%zu C=%d wpe=%d", N, C, with_wpe);
        check_dev_bits(out.d, out.h, N * C * sizeof(float), what);
        fbuf_free(&out);
    }

    /* backward into non-zero tables: the CPU's addition order, so the same bits */
    fbuf dout = fbuf_rand(N * C, -1.0f, 1.0f, seed + 3);
    float *init_wte = rand_host((size_t)V * C, -1.0f, 1.0f, seed + 4),
          *init_wpe = rand_host(T * C, -1.0f, 1.0f, seed + 5);
    fbuf dwte = fbuf_new((size_t)V * C), dwpe = fbuf_new(T * C), dwte2 = fbuf_new((size_t)V * C),
         dwpe2 = fbuf_new(T * C);
    fbuf_set(&dwte, init_wte), fbuf_set(&dwpe, init_wpe), fbuf_set(&dwte2, init_wte), fbuf_set(&dwpe2, init_wpe);
    rt_be_embedding_backward(cpu, dwte.h, dwpe.h, dout.h, tokens, pos, N, C);
    rt_be_embedding_backward(gpu, dwte.d, dwpe.d, dout.d, tokens_d, pos_d, N, C);
    rt_be_embedding_backward(gpu, dwte2.d, dwpe2.d, dout.d, tokens_d, pos_d, N, C);
    snprintf(what, sizeof what, "embedding_backward dwte N=%zu C=%d V=%d", N, C, V);
    check_dev(dwte.d, dwte.h, (size_t)V * C, FP32, what);
    check_dev_bits(dwte.d, dwte.h, (size_t)V * C * sizeof(float), what);
    snprintf(what, sizeof what, "embedding_backward dwpe N=%zu C=%d T=%zu", N, C, T);
    check_dev(dwpe.d, dwpe.h, T * C, FP32, what);
    check_dev_bits(dwpe.d, dwpe.h, T * C * sizeof(float), what);
    check_dev_same(dwte.d, dwte2.d, (size_t)V * C * sizeof(float), "embedding_backward dwte: rerun");
    check_dev_same(dwpe.d, dwpe2.d, T * C * sizeof(float), "embedding_backward dwpe: rerun");
    /* dwpe NULL: dwte alone is the same */
    fbuf_set(&dwte2, init_wte);
    rt_be_embedding_backward(gpu, dwte2.d, NULL, dout.d, tokens_d, pos_d, N, C);
    check_dev_same(dwte.d, dwte2.d, (size_t)V * C * sizeof(float), "embedding_backward dwte alone (dwpe NULL)");

    fbuf_free(&wte), fbuf_free(&wpe), fbuf_free(&dout), fbuf_free(&dwte), fbuf_free(&dwpe), fbuf_free(&dwte2);
    fbuf_free(&dwpe2);
    rt_be_device_free(gpu, tokens_d);
    rt_be_device_free(gpu, pos_d);
    free(tokens), free(pos), free(init_wte), free(init_wpe);
}

static void test_embedding(void) {
    check_embedding(5000, 771, 1000, 2500, 200); /* C not a multiple of the kernel's channel block */
    check_embedding(64, 4, 7, 64, 210);          /* few ids: long runs */
    /* beyond one sort chunk of the backend's 64 MiB scratch (2^21 tokens): chunks added in order */
    check_embedding(((size_t)1 << 21) + 12345, 8, 50257, 4096, 220);
}

/* ----------------------------------------------------------------------------
 * norms
 */

typedef struct {
    size_t N;
    int C;
} norm_shape;

static const norm_shape norm_shapes[] = {{3, 37}, {4097, 768}, {1000, 1025}, {65, 4096}, {40000, 64}};
#define N_NORM_SHAPES (sizeof norm_shapes / sizeof norm_shapes[0])

static void test_layernorm(void) {
    for (size_t s = 0; s < N_NORM_SHAPES; s++) {
        const size_t N = norm_shapes[s].N;
        const int C = norm_shapes[s].C;
        const float eps = 1e-5f;
        float *x = norm_inputs(N, C, 300 + s);
        fbuf inp = fbuf_new(N * C);
        fbuf_set(&inp, x);
        fbuf weight = fbuf_rand(C, 0.5f, 1.5f, 310 + s), bias = fbuf_rand(C, -0.5f, 0.5f, 320 + s);
        fbuf out = fbuf_fill(N * C, 0.0f), mean = fbuf_fill(N, 0.0f), rstd = fbuf_fill(N, 0.0f);
        rt_be_layernorm_forward(cpu, out.h, mean.h, rstd.h, inp.h, weight.h, bias.h, N, C, eps);
        rt_be_layernorm_forward(gpu, out.d, mean.d, rstd.d, inp.d, weight.d, bias.d, N, C, eps);
        char what[128];
        snprintf(what, sizeof what, "layernorm_forward out N=%zu C=%d", N, C);
        check_dev(out.d, out.h, N * C, FP32, what);
        snprintf(what, sizeof what, "layernorm_forward mean N=%zu C=%d", N, C);
        check_dev(mean.d, mean.h, N, FP32, what);
        snprintf(what, sizeof what, "layernorm_forward rstd N=%zu C=%d", N, C);
        check_dev(rstd.d, rstd.h, N, FP32, what);

        /* backward with the CPU's statistics on both, so it is tested alone */
        rt_be_copy(gpu, mean.d, mean.h, N * sizeof(float));
        rt_be_copy(gpu, rstd.d, rstd.h, N * sizeof(float));
        fbuf dout = fbuf_rand(N * C, -1.0f, 1.0f, 330 + s);
        const size_t sizes[3] = {N * C, (size_t)C, (size_t)C};
        float *zero[3];
        for (int k = 0; k < 3; k++)
            zero[k] = calloc_check(sizes[k] + 1, sizeof(float));
        rt_be_layernorm_backward(cpu, zero[0], zero[1], zero[2], dout.h, inp.h, weight.h, mean.h, rstd.h, N, C);
        fbuf g[3], again[3];
        float *init[3];
        for (int k = 0; k < 3; k++) {
            init[k] = init_like(zero[k], sizes[k], 340 + 3 * s + k);
            g[k] = fbuf_new(sizes[k]), again[k] = fbuf_new(sizes[k]);
            fbuf_set(&g[k], init[k]), fbuf_set(&again[k], init[k]);
        }
        rt_be_layernorm_backward(cpu, g[0].h, g[1].h, g[2].h, dout.h, inp.h, weight.h, mean.h, rstd.h, N, C);
        rt_be_layernorm_backward(gpu, g[0].d, g[1].d, g[2].d, dout.d, inp.d, weight.d, mean.d, rstd.d, N, C);
        rt_be_layernorm_backward(gpu, again[0].d, again[1].d, again[2].d, dout.d, inp.d, weight.d, mean.d, rstd.d, N,
                                 C);
        const char *names[3] = {"dinp", "dweight", "dbias"};
        for (int k = 0; k < 3; k++) {
            snprintf(what, sizeof what, "layernorm_backward %s (+= init) N=%zu C=%d", names[k], N, C);
            check_dev(g[k].d, g[k].h, sizes[k], FP32, what);
            snprintf(what, sizeof what, "layernorm_backward %s N=%zu C=%d: rerun", names[k], N, C);
            check_dev_same(g[k].d, again[k].d, sizes[k] * sizeof(float), what);
            free(zero[k]), free(init[k]), fbuf_free(&g[k]), fbuf_free(&again[k]);
        }
        free(x);
        fbuf_free(&inp), fbuf_free(&weight), fbuf_free(&bias), fbuf_free(&out), fbuf_free(&mean), fbuf_free(&rstd);
        fbuf_free(&dout);
    }
}

static void test_rmsnorm(void) {
    for (size_t s = 0; s < N_NORM_SHAPES; s++) {
        const size_t N = norm_shapes[s].N;
        const int C = norm_shapes[s].C;
        const float eps = 1e-6f;
        float *x = norm_inputs(N, C, 400 + s);
        fbuf inp = fbuf_new(N * C);
        fbuf_set(&inp, x);
        fbuf weight = fbuf_rand(C, 0.5f, 1.5f, 410 + s);
        fbuf out = fbuf_fill(N * C, 0.0f), rstd = fbuf_fill(N, 0.0f);
        rt_be_rmsnorm_forward(cpu, out.h, rstd.h, inp.h, weight.h, N, C, eps);
        rt_be_rmsnorm_forward(gpu, out.d, rstd.d, inp.d, weight.d, N, C, eps);
        char what[128];
        snprintf(what, sizeof what, "rmsnorm_forward out N=%zu C=%d", N, C);
        check_dev(out.d, out.h, N * C, FP32, what);
        snprintf(what, sizeof what, "rmsnorm_forward rstd N=%zu C=%d", N, C);
        check_dev(rstd.d, rstd.h, N, FP32, what);

        rt_be_copy(gpu, rstd.d, rstd.h, N * sizeof(float));
        fbuf dout = fbuf_rand(N * C, -1.0f, 1.0f, 420 + s);
        const size_t sizes[2] = {N * C, (size_t)C};
        float *zero[2];
        for (int k = 0; k < 2; k++)
            zero[k] = calloc_check(sizes[k] + 1, sizeof(float));
        rt_be_rmsnorm_backward(cpu, zero[0], zero[1], dout.h, inp.h, weight.h, rstd.h, N, C);
        fbuf g[2], again[2];
        float *init[2];
        for (int k = 0; k < 2; k++) {
            init[k] = init_like(zero[k], sizes[k], 430 + 2 * s + k);
            g[k] = fbuf_new(sizes[k]), again[k] = fbuf_new(sizes[k]);
            fbuf_set(&g[k], init[k]), fbuf_set(&again[k], init[k]);
        }
        rt_be_rmsnorm_backward(cpu, g[0].h, g[1].h, dout.h, inp.h, weight.h, rstd.h, N, C);
        rt_be_rmsnorm_backward(gpu, g[0].d, g[1].d, dout.d, inp.d, weight.d, rstd.d, N, C);
        rt_be_rmsnorm_backward(gpu, again[0].d, again[1].d, dout.d, inp.d, weight.d, rstd.d, N, C);
        const char *names[2] = {"dinp", "dweight"};
        for (int k = 0; k < 2; k++) {
            snprintf(what, sizeof what, "rmsnorm_backward %s (+= init) N=%zu C=%d", names[k], N, C);
            check_dev(g[k].d, g[k].h, sizes[k], FP32, what);
            snprintf(what, sizeof what, "rmsnorm_backward %s N=%zu C=%d: rerun", names[k], N, C);
            check_dev_same(g[k].d, again[k].d, sizes[k] * sizeof(float), what);
            free(zero[k]), free(init[k]), fbuf_free(&g[k]), fbuf_free(&again[k]);
        }
        free(x);
        fbuf_free(&inp), fbuf_free(&weight), fbuf_free(&out), fbuf_free(&rstd), fbuf_free(&dout);
    }
}

/* ----------------------------------------------------------------------------
 * rope (in place, on the q and k sections of qkv rows)
 */

static void check_rope(size_t N, int H, int D, size_t stride, const int64_t *pos, uint64_t seed) {
    const float theta = 10000.0f;
    int64_t *pos_d = dev_from(pos, N * sizeof(int64_t));
    fbuf x = fbuf_rand(N * stride, -1.0f, 1.0f, seed), again = fbuf_new(N * stride);
    float *x0 = malloc_check(N * stride * sizeof(float));
    memcpy(x0, x.h, N * stride * sizeof(float));
    fbuf_set(&again, x0);
    char what[128];
    rt_be_rope_forward(cpu, x.h, pos, N, H, D, stride, theta);
    rt_be_rope_forward(gpu, x.d, pos_d, N, H, D, stride, theta);
    rt_be_rope_forward(gpu, again.d, pos_d, N, H, D, stride, theta);
    snprintf(what, sizeof what, "rope_forward N=%zu H=%d D=%d stride=%zu", N, H, D, stride);
    check_dev(x.d, x.h, N * stride, FP32, what); /* the columns past H*D are x0 on the CPU: checked too */
    check_dev_same(x.d, again.d, N * stride * sizeof(float), "rope_forward: rerun");
    /* columns past the n_heads * head_dim rotated ones stay as they were, bit for bit */
    float *got = download(x.d, N * stride * sizeof(float));
    size_t touched = 0;
    for (size_t n = 0; n < N; n++)
        touched += memcmp(got + n * stride + (size_t)H * D, x0 + n * stride + (size_t)H * D,
                          (stride - (size_t)H * D) * sizeof(float)) != 0;
    CU_ASSERT_EQUAL(touched, 0);
    free(got);

    /* backward (rotation by -angle) of a gradient, and backward(forward(x)) == x */
    fbuf dx = fbuf_rand(N * stride, -1.0f, 1.0f, seed + 1);
    rt_be_rope_backward(cpu, dx.h, pos, N, H, D, stride, theta);
    rt_be_rope_backward(gpu, dx.d, pos_d, N, H, D, stride, theta);
    snprintf(what, sizeof what, "rope_backward N=%zu H=%d D=%d", N, H, D);
    check_dev(dx.d, dx.h, N * stride, FP32, what);
    rt_be_rope_backward(gpu, x.d, pos_d, N, H, D, stride, theta);
    check_dev(x.d, x0, N * stride, FP32, "rope_backward(rope_forward(x)) == x");
    fbuf_free(&x), fbuf_free(&again), fbuf_free(&dx);
    rt_be_device_free(gpu, pos_d);
    free(x0);
}

static void test_rope(void) {
    /* small, large (a float angle would be off by whole radians) and beyond 2^32 */
    const int64_t few[6] = {0, 1, 17, 1000003, 123456789, 5000000000LL};
    check_rope(6, 3, 8, 3 * 3 * 8 + 5, few, 500);
    /* the q section of llama qkv rows (H=12, Hkv=4, D=64) at positions past 1e6 */
    const size_t N = 4096;
    int64_t *pos = malloc_check(N * sizeof(int64_t));
    for (size_t n = 0; n < N; n++)
        pos[n] = (int64_t)(1000000 + 3 * n);
    check_rope(N, 12, 64, (12 + 2 * 4) * 64, pos, 510);
    check_rope(N, 4, 128, 4 * 128, pos, 520); /* dense rows, D = 128 */
    free(pos);
}

/* ----------------------------------------------------------------------------
 * pointwise
 */

static void test_gelu(void) {
    const size_t n = 1000003;
    for (int offset = 0; offset <= 1; offset++) { /* offset 1: not 16-byte aligned, the scalar path */
        fbuf inp = fbuf_rand(n + 1, -6.0f, 6.0f, 600);
        inp.h[1] = 0.0f, inp.h[2] = 30.0f, inp.h[3] = -30.0f; /* saturated tails */
        rt_be_copy(gpu, inp.d, inp.h, (n + 1) * sizeof(float));
        fbuf out = fbuf_fill(n + 1, 0.0f);
        rt_be_gelu_forward(cpu, out.h + offset, inp.h + offset, n);
        rt_be_gelu_forward(gpu, out.d + offset, inp.d + offset, n);
        check_dev(out.d, out.h, n + 1, FP32, offset ? "gelu_forward (unaligned)" : "gelu_forward");

        fbuf dout = fbuf_rand(n + 1, -1.0f, 1.0f, 601);
        float *zero = calloc_check(n + 1, sizeof(float));
        rt_be_gelu_backward(cpu, zero, inp.h, dout.h, n + 1);
        float *init = init_like(zero, n + 1, 602);
        fbuf dinp = fbuf_new(n + 1), again = fbuf_new(n + 1);
        fbuf_set(&dinp, init), fbuf_set(&again, init);
        rt_be_gelu_backward(cpu, dinp.h + offset, inp.h + offset, dout.h + offset, n);
        rt_be_gelu_backward(gpu, dinp.d + offset, inp.d + offset, dout.d + offset, n);
        rt_be_gelu_backward(gpu, again.d + offset, inp.d + offset, dout.d + offset, n);
        check_dev(dinp.d, dinp.h, n + 1, FP32,
                  offset ? "gelu_backward (+= init, unaligned)" : "gelu_backward (+= init)");
        check_dev_same(dinp.d, again.d, (n + 1) * sizeof(float), "gelu_backward: rerun");
        fbuf_free(&inp), fbuf_free(&out), fbuf_free(&dout), fbuf_free(&dinp), fbuf_free(&again);
        free(zero), free(init);
    }
}

static void test_swiglu(void) {
    const size_t Ns[2] = {1000, 7};
    const int Fs[2] = {2817, 1}; /* F odd; F = 1 */
    for (int s = 0; s < 2; s++) {
        const size_t N = Ns[s];
        const int F = Fs[s];
        fbuf gate_up = fbuf_rand(N * 2 * F, -4.0f, 4.0f, 700 + s), out = fbuf_fill(N * F, 0.0f);
        rt_be_swiglu_forward(cpu, out.h, gate_up.h, N, F);
        rt_be_swiglu_forward(gpu, out.d, gate_up.d, N, F);
        char what[128];
        snprintf(what, sizeof what, "swiglu_forward N=%zu F=%d", N, F);
        check_dev(out.d, out.h, N * F, FP32, what);
        fbuf dout = fbuf_rand(N * F, -1.0f, 1.0f, 710 + s);
        float *zero = calloc_check(N * 2 * F + 1, sizeof(float));
        rt_be_swiglu_backward(cpu, zero, dout.h, gate_up.h, N, F);
        float *init = init_like(zero, N * 2 * F, 720 + s);
        fbuf dgu = fbuf_new(N * 2 * F), again = fbuf_new(N * 2 * F);
        fbuf_set(&dgu, init), fbuf_set(&again, init);
        rt_be_swiglu_backward(cpu, dgu.h, dout.h, gate_up.h, N, F);
        rt_be_swiglu_backward(gpu, dgu.d, dout.d, gate_up.d, N, F);
        rt_be_swiglu_backward(gpu, again.d, dout.d, gate_up.d, N, F);
        snprintf(what, sizeof what, "swiglu_backward (+= init) N=%zu F=%d", N, F);
        check_dev(dgu.d, dgu.h, N * 2 * F, FP32, what);
        check_dev_same(dgu.d, again.d, N * 2 * F * sizeof(float), "swiglu_backward: rerun");
        fbuf_free(&gate_up), fbuf_free(&out), fbuf_free(&dout), fbuf_free(&dgu), fbuf_free(&again);
        free(zero), free(init);
    }
}

static void test_add_scale(void) {
    const size_t n = 1000003;
    for (int offset = 0; offset <= 1; offset++) {
        fbuf a = fbuf_rand(n + 1, -1.0f, 1.0f, 800), b = fbuf_rand(n + 1, -1.0f, 1.0f, 801),
             out = fbuf_fill(n + 1, 0.0f);
        rt_be_add(cpu, out.h + offset, a.h + offset, b.h + offset, n);
        rt_be_add(gpu, out.d + offset, a.d + offset, b.d + offset, n);
        check_dev_bits(out.d, out.h, (n + 1) * sizeof(float), offset ? "add (unaligned)" : "add");
        rt_be_add(cpu, a.h + offset, a.h + offset, b.h + offset, n); /* out aliases a */
        rt_be_add(gpu, a.d + offset, a.d + offset, b.d + offset, n);
        check_dev_bits(a.d, a.h, (n + 1) * sizeof(float), "add, out aliasing a");
        rt_be_scale(cpu, b.h + offset, 0.37f, n);
        rt_be_scale(gpu, b.d + offset, 0.37f, n);
        check_dev_bits(b.d, b.h, (n + 1) * sizeof(float), offset ? "scale (unaligned)" : "scale");
        fbuf_free(&a), fbuf_free(&b), fbuf_free(&out);
    }
}

/* ----------------------------------------------------------------------------
 * dropout: the CPU's Philox mask, bit for bit
 */

static void check_dropout(size_t N, int C, float p, rt_rng_key key, uint64_t seed, const char *what) {
    int64_t *pos = malloc_check(N * sizeof(int64_t));
    for (size_t n = 0; n < N; n++)
        pos[n] = (int64_t)(n * 3 + 1000);
    pos[N - 1] = (int64_t)1 << 33; /* the high word of the counter */
    int64_t *pos_d = dev_from(pos, N * sizeof(int64_t));
    fbuf ones = fbuf_fill(N * C + 1, 1.0f), x = fbuf_rand(N * C + 1, -1.0f, 1.0f, seed);
    rt_be_dropout(cpu, ones.h, pos, N, C, p, key);
    rt_be_dropout(gpu, ones.d, pos_d, N, C, p, key);
    char label[160];
    snprintf(label, sizeof label, "dropout mask %s", what);
    check_dev_bits(ones.d, ones.h, (N * C + 1) * sizeof(float), label);
    /* on a gradient, at an unaligned start: what the backward does */
    rt_be_dropout(cpu, x.h + 1, pos, N, C, p, key);
    rt_be_dropout(gpu, x.d + 1, pos_d, N, C, p, key);
    snprintf(label, sizeof label, "dropout of a gradient %s (unaligned)", what);
    check_dev_bits(x.d, x.h, (N * C + 1) * sizeof(float), label);
    size_t kept = 0;
    for (size_t i = 0; i < N * (size_t)C; i++)
        kept += ones.h[i] != 0.0f;
    if (p > 0.0f) CU_ASSERT(fabs((double)kept / (double)(N * C) - (1.0 - p)) < 0.02);
    fbuf_free(&ones), fbuf_free(&x);
    rt_be_device_free(gpu, pos_d);
    free(pos);
}

static void test_dropout(void) {
    rt_rng_key key = {.seed = 0x123456789ABCDEFULL, .step = 42, .layer = 3, .site = 1};
    check_dropout(256, 1001, 0.1f, key, 900, "N=256 C=1001 p=0.1"); /* C % 4 != 0: a partial Philox block */
    check_dropout(256, 1001, 0.0f, key, 901, "p=0 (no-op)");
    rt_rng_key other = key;
    other.step = (1ULL << 32) + 7, other.layer = 11, other.site = 0, other.seed = 99;
    check_dropout(4096, 768, 0.5f, other, 902, "N=4096 C=768 p=0.5, another key");
}

/* ----------------------------------------------------------------------------
 * loss
 */

static void check_softmax_xent(size_t n, int V, int Vp, uint64_t seed) {
    int32_t *targets = malloc_check(n * sizeof(int32_t));
    uint64_t state = seed;
    for (size_t i = 0; i < n; i++)
        targets[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)V);
    targets[0] = 0, targets[n - 1] = V - 1; /* first and last column */
    if (n > 2) targets[1] = -1;             /* ignored */
    float *logits0 = rand_host(n * Vp, -3.0f, 3.0f, seed + 1);
    for (size_t i = 0; i < n; i++)
        for (int j = V; j < Vp; j++)
            logits0[i * Vp + j] = 1e4f; /* padding garbage, ignored */
    if (n > 4)
        for (int j = 0; j < V; j++)
            logits0[4 * Vp + j] += 1000.0f; /* large logits: stability */
    int32_t *targets_d = dev_from(targets, n * sizeof(int32_t));
    fbuf logits = fbuf_new(n * Vp), again = fbuf_new(n * Vp);
    fbuf_set(&logits, logits0), fbuf_set(&again, logits0);
    fbuf losses = fbuf_fill(n, -1.0f), losses2 = fbuf_fill(n, -1.0f), losses3 = fbuf_fill(n, -1.0f);
    char what[128];

    /* dloss_scale == 0: losses only, logits untouched */
    rt_be_softmax_xent(cpu, logits.h, losses.h, targets, n, V, Vp, 0.0f);
    rt_be_softmax_xent(gpu, logits.d, losses.d, targets_d, n, V, Vp, 0.0f);
    snprintf(what, sizeof what, "softmax_xent losses n=%zu V=%d Vp=%d", n, V, Vp);
    check_dev(losses.d, losses.h, n, FP32, what);
    check_dev_bits(logits.d, logits0, n * Vp * sizeof(float), "softmax_xent, dloss_scale 0: logits untouched");

    /* with gradients: the same losses, dlogits = (softmax - onehot) * scale, padding and ignored rows 0 */
    const float scale = 0.2f;
    rt_be_softmax_xent(cpu, logits.h, losses2.h, targets, n, V, Vp, scale);
    rt_be_softmax_xent(gpu, logits.d, losses2.d, targets_d, n, V, Vp, scale);
    rt_be_softmax_xent(gpu, again.d, losses3.d, targets_d, n, V, Vp, scale);
    check_dev_same(losses.d, losses2.d, n * sizeof(float), "softmax_xent losses with and without dlogits");
    snprintf(what, sizeof what, "softmax_xent dlogits n=%zu V=%d Vp=%d", n, V, Vp);
    check_dev(logits.d, logits.h, n * Vp, FP32, what);
    check_dev_same(logits.d, again.d, n * Vp * sizeof(float), "softmax_xent dlogits: rerun");
    float *got = download(logits.d, n * Vp * sizeof(float)), *got_losses = download(losses2.d, n * sizeof(float));
    size_t padded_nonzero = 0, ignored_nonzero = 0;
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < Vp; j++) {
            padded_nonzero += j >= V && got[i * Vp + j] != 0.0f;
            ignored_nonzero += targets[i] < 0 && got[i * Vp + j] != 0.0f;
        }
    CU_ASSERT_EQUAL(padded_nonzero, 0);
    CU_ASSERT_EQUAL(ignored_nonzero, 0);
    if (n > 2) CU_ASSERT(got_losses[1] == 0.0f);
    free(got), free(got_losses);
    fbuf_free(&logits), fbuf_free(&again), fbuf_free(&losses), fbuf_free(&losses2), fbuf_free(&losses3);
    rt_be_device_free(gpu, targets_d);
    free(targets), free(logits0);
}

static void test_softmax_xent(void) {
    check_softmax_xent(6, 37, 48, 1200);
    check_softmax_xent(300, 50257, 50304, 1210); /* GPT-2's vocabulary, padded to a multiple of 128 */
    check_softmax_xent(1, 1, 128, 1220);
}

/* ----------------------------------------------------------------------------
 * reductions and optimizer
 */

static void test_sum_squares(void) {
    const size_t sizes[3] = {3 * 65536 + 123, 10000001, 1};
    for (int s = 0; s < 3; s++) {
        const size_t n = sizes[s];
        for (int offset = 0; offset <= 1; offset++) {
            fbuf x = fbuf_rand(n + 1, -3.0f, 3.0f, 1300 + s);
            const double want = rt_be_sum_squares(cpu, x.h + offset, n);
            const double got = rt_be_sum_squares(gpu, x.d + offset, n);
            const double again = rt_be_sum_squares(gpu, x.d + offset, n);
            const double rel = fabs(got - want) / want;
            if (verbose() || !(rel <= 1e-11))
                fprintf(stderr, "\n  sum_squares n=%zu offset=%d: rel err %.2e (tol 1e-11)", n, offset, rel);
            CU_ASSERT(rel <= 1e-11);
            CU_ASSERT(memcmp(&got, &again, sizeof got) == 0);
            /* the value returned waits for the ops before it: x2 then the sum is 4x */
            rt_be_scale(gpu, x.d + offset, 2.0f, n);
            const double scaled = rt_be_sum_squares(gpu, x.d + offset, n);
            CU_ASSERT(fabs(scaled - 4.0 * got) <= 1e-11 * 4.0 * got);
            fbuf_free(&x);
        }
    }
    fbuf one = fbuf_fill(2, 3.0f);
    CU_ASSERT(rt_be_sum_squares(gpu, one.d, 0) == 0.0);
    CU_ASSERT(rt_be_sum_squares(gpu, one.d, 1) == 9.0);
    fbuf_free(&one);
}

static void test_adamw(void) {
    const size_t n = 1000003;
    const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f;
    const float decays[2] = {0.1f, 0.0f};
    for (int w = 0; w < 2; w++) {
        const int offset = w; /* the second run also starts unaligned */
        fbuf param = fbuf_rand(n + 1, -1.0f, 1.0f, 1400), m = fbuf_fill(n + 1, 0.0f), v = fbuf_fill(n + 1, 0.0f);
        for (int t = 1; t <= 5; t++) {
            fbuf grad = fbuf_rand(n + 1, -1.0f, 1.0f, 1410 + t);
            grad.h[1] = 0.0f; /* a zero gradient still decays */
            rt_be_copy(gpu, grad.d, grad.h, (n + 1) * sizeof(float));
            rt_be_adamw_update(cpu, param.h + offset, grad.h + offset, m.h + offset, v.h + offset, n, lr, beta1, beta2,
                               eps, decays[w], t);
            rt_be_adamw_update(gpu, param.d + offset, grad.d + offset, m.d + offset, v.d + offset, n, lr, beta1, beta2,
                               eps, decays[w], t);
            fbuf_free(&grad);
        }
        check_dev(param.d, param.h, n + 1, FP32,
                  w ? "adamw param, 5 steps (wd 0, unaligned)" : "adamw param, 5 steps (wd 0.1)");
        check_dev(m.d, m.h, n + 1, FP32, "adamw m, 5 steps");
        check_dev(v.d, v.h, n + 1, FP32, "adamw v, 5 steps");
        fbuf_free(&param), fbuf_free(&m), fbuf_free(&v);
    }
}

/* ----------------------------------------------------------------------------
 * attention blocks
 */

#define PAD_SENTINEL 12345.0f

/* One attention problem: queries at q_pos merged over up to two key blocks, in order, from out = 0, lse = -inf,
 * then backward over the same blocks into gradients with non-zero initial values. */
typedef struct {
    int H, Hkv, D, causal;
    int interleaved; /* one block, Tq == Tk: q | k | v side by side in one row (the model's qkv), out rows padded */
    size_t Tq;
    const int64_t *q_pos;
    int n_blocks;
    size_t Tk[2];
    const int64_t *k_pos[2];
    const int64_t *q_first; /* NULL, or packed documents: the first position of each query's document */
} attn_spec;

/* The problem's buffers (host: the CPU's, device: the GPU's). Interleaved: store[0] holds q | k | v rows of
 * (H + 2 Hkv) D floats; packed: store[0] = q (Tq rows), store[1] = k and store[2] = v (both blocks' rows, block
 * after block). The gradients dq, dk, dv have the same layout in grad[]. */
typedef struct {
    rt_attn_shape shape;
    int interleaved;
    size_t row_q, row_kv; /* H*D, Hkv*D */
    fbuf store[3], grad[3];
    fbuf out, lse, dout, delta;
    size_t k_row0[2];                          /* first row of block b in the k and v storage */
    int64_t *q_pos_d, *k_pos_d[2], *q_first_d; /* q_first_d NULL without documents */
} attn_bufs;

/* q (which 0), k (1) or v (2) of block b in the storage st (inputs or gradients), on the host or the device. */
static float *attn_ptr(const attn_bufs *a, const fbuf *st, int which, int block, int dev) {
    if (a->interleaved) {
        float *base = dev ? st[0].d : st[0].h;
        return base + (which == 0 ? 0 : a->row_q + (which == 2 ? a->row_kv : 0));
    }
    float *base = dev ? st[which].d : st[which].h;
    return which == 0 ? base : base + a->k_row0[block] * a->row_kv;
}

static void pack_rows_host(float *dst, const float *src, size_t n, size_t width, size_t stride) {
    for (size_t i = 0; i < n; i++)
        memcpy(dst + i * width, src + i * stride, width * sizeof(float));
}

/* Compares n rows of width floats at stride (device result against the CPU's). */
static void check_rows(const float *dev, const float *host, size_t n, size_t width, size_t stride, tolerance tol,
                       const char *what) {
    float *all = download(dev, ((n - 1) * stride + width) * sizeof(float));
    float *got = malloc_check(n * width * sizeof(float)), *ref = malloc_check(n * width * sizeof(float));
    pack_rows_host(got, all, n, width, stride);
    pack_rows_host(ref, host, n, width, stride);
    check_host(got, ref, n * width, tol, what);
    free(all), free(got), free(ref);
}

/* Merges every block, in order, into out and lse (be's side of the buffers). */
static void attn_forward_all(const rt_backend *be, const attn_spec *s, const attn_bufs *a, float *out, float *lse,
                             void *ws, size_t ws_bytes) {
    const int dev = be == gpu;
    for (int b = 0; b < s->n_blocks; b++)
        rt_be_attn_block_forward(be, out, lse, attn_ptr(a, a->store, 0, b, dev), attn_ptr(a, a->store, 1, b, dev),
                                 attn_ptr(a, a->store, 2, b, dev), dev ? a->q_pos_d : s->q_pos,
                                 dev ? a->q_first_d : s->q_first, dev ? a->k_pos_d[b] : s->k_pos[b], s->Tq, s->Tk[b],
                                 &a->shape, ws, ws_bytes);
}

/* Backward of every block into the gradient storage grads (laid out as a->grad), with be's lse and delta. */
static void attn_backward_all(const rt_backend *be, const attn_spec *s, const attn_bufs *a, const fbuf *grads, void *ws,
                              size_t ws_bytes) {
    const int dev = be == gpu;
    for (int b = 0; b < s->n_blocks; b++)
        rt_be_attn_block_backward(
            be, attn_ptr(a, grads, 0, b, dev), attn_ptr(a, grads, 1, b, dev), attn_ptr(a, grads, 2, b, dev),
            dev ? a->dout.d : a->dout.h, attn_ptr(a, a->store, 0, b, dev), attn_ptr(a, a->store, 1, b, dev),
            attn_ptr(a, a->store, 2, b, dev), dev ? a->lse.d : a->lse.h, dev ? a->delta.d : a->delta.h,
            dev ? a->q_pos_d : s->q_pos, dev ? a->q_first_d : s->q_first, dev ? a->k_pos_d[b] : s->k_pos[b], s->Tq,
            s->Tk[b], &a->shape, ws, ws_bytes);
}

static void check_attention(const attn_spec *s, uint64_t seed, const char *what) {
    attn_bufs a;
    memset(&a, 0, sizeof a);
    const size_t HD = (size_t)s->H * s->D, KD = (size_t)s->Hkv * s->D;
    a.interleaved = s->interleaved;
    a.row_q = HD, a.row_kv = KD;
    size_t Tk_total = 0, max_Tk = 0;
    for (int b = 0; b < s->n_blocks; b++) {
        a.k_row0[b] = Tk_total;
        Tk_total += s->Tk[b];
        max_Tk = s->Tk[b] > max_Tk ? s->Tk[b] : max_Tk;
    }
    /* q and k in [-2, 2] (scores of std ~1.3, a softmax far from uniform), v in [-1, 1] */
    const int n_store = s->interleaved ? 1 : 3;
    if (s->interleaved) {
        const size_t W = HD + 2 * KD;
        a.shape = (rt_attn_shape){s->H, s->Hkv, s->D, W, W, HD + 4, s->causal};
        a.store[0] = fbuf_rand(s->Tq * W, -2.0f, 2.0f, seed);
        for (size_t i = 0; i < s->Tq; i++)
            test_fill_uniform(a.store[0].h + i * W + HD + KD, KD, -1.0f, 1.0f, seed + 1 + i);
        rt_be_copy(gpu, a.store[0].d, a.store[0].h, s->Tq * W * sizeof(float));
    } else {
        a.shape = (rt_attn_shape){s->H, s->Hkv, s->D, HD, KD, HD, s->causal};
        a.store[0] = fbuf_rand(s->Tq * HD, -2.0f, 2.0f, seed);
        a.store[1] = fbuf_rand(Tk_total * KD, -2.0f, 2.0f, seed + 1);
        a.store[2] = fbuf_rand(Tk_total * KD, -1.0f, 1.0f, seed + 2);
    }
    const size_t OS = a.shape.out_stride;
    a.q_pos_d = dev_from(s->q_pos, s->Tq * sizeof(int64_t));
    a.q_first_d = s->q_first ? dev_from(s->q_first, s->Tq * sizeof(int64_t)) : NULL;
    for (int b = 0; b < s->n_blocks; b++)
        a.k_pos_d[b] = dev_from(s->k_pos[b], s->Tk[b] * sizeof(int64_t));
    a.dout = fbuf_rand(s->Tq * OS, -1.0f, 1.0f, seed + 3);
    a.delta = fbuf_fill(s->Tq * s->H, 0.0f);
    float *out0 = malloc_check(s->Tq * OS * sizeof(float)); /* 0, and a sentinel in the padding of each row */
    for (size_t i = 0; i < s->Tq; i++)
        for (size_t c = 0; c < OS; c++)
            out0[i * OS + c] = c < HD ? 0.0f : PAD_SENTINEL;
    a.out = fbuf_new(s->Tq * OS);
    fbuf_set(&a.out, out0);
    a.lse = fbuf_fill(s->Tq * s->H, -INFINITY);

    /* workspaces: the CPU's for this thread count (host, 64-byte aligned), the GPU's on the device */
    const size_t cpu_ws_bytes = rt_be_attn_workspace_bytes(cpu, s->Tq, max_Tk, &a.shape);
    const size_t gpu_ws_bytes = rt_be_attn_workspace_bytes(gpu, s->Tq, max_Tk, &a.shape);
    void *cpu_ws = aligned_alloc(64, (cpu_ws_bytes + 63) / 64 * 64 + 64);
    void *gpu_ws = dev_alloc(gpu_ws_bytes);
    char label[200];

    /* forward: merge the blocks in order from out = 0, lse = -inf; then again on the GPU, for the bits */
    attn_forward_all(cpu, s, &a, a.out.h, a.lse.h, cpu_ws, cpu_ws_bytes);
    attn_forward_all(gpu, s, &a, a.out.d, a.lse.d, gpu_ws, gpu_ws_bytes);
    snprintf(label, sizeof label, "attention %s: out", what);
    check_rows(a.out.d, a.out.h, s->Tq, HD, OS, BF16, label);
    snprintf(label, sizeof label, "attention %s: lse", what);
    check_dev(a.lse.d, a.lse.h, s->Tq * s->H, BF16, label);
    float *got_out = download(a.out.d, s->Tq * OS * sizeof(float));
    size_t pad_touched = 0;
    for (size_t i = 0; i < s->Tq; i++)
        for (size_t c = HD; c < OS; c++)
            pad_touched += got_out[i * OS + c] != PAD_SENTINEL;
    CU_ASSERT_EQUAL(pad_touched, 0);
    free(got_out);
    fbuf out2 = fbuf_new(s->Tq * OS), lse2 = fbuf_fill(s->Tq * s->H, -INFINITY);
    fbuf_set(&out2, out0);
    attn_forward_all(gpu, s, &a, out2.d, lse2.d, gpu_ws, gpu_ws_bytes);
    snprintf(label, sizeof label, "attention %s: forward rerun", what);
    check_dev_same(a.out.d, out2.d, s->Tq * OS * sizeof(float), label);
    check_dev_same(a.lse.d, lse2.d, s->Tq * s->H * sizeof(float), label);

    /* delta from each side's own out (attn_delta alone is checked on identical inputs in its own test) */
    rt_be_attn_delta(cpu, a.delta.h, a.out.h, a.dout.h, s->Tq, &a.shape);
    rt_be_attn_delta(gpu, a.delta.d, a.out.d, a.dout.d, s->Tq, &a.shape);
    snprintf(label, sizeof label, "attention %s: delta", what);
    check_dev(a.delta.d, a.delta.h, s->Tq * s->H, BF16, label);

    /* backward: the CPU from zero for the gradients' scale, then both from the same non-zero values, and the
     * GPU once more from them for the bits */
    fbuf zero[3], again[3];
    memset(zero, 0, sizeof zero);
    memset(again, 0, sizeof again);
    for (int k = 0; k < n_store; k++) {
        zero[k].h = calloc_check(a.store[k].n + 1, sizeof(float));
        zero[k].n = a.store[k].n;
    }
    attn_backward_all(cpu, s, &a, zero, cpu_ws, cpu_ws_bytes);
    float *init[3] = {NULL, NULL, NULL};
    for (int k = 0; k < n_store; k++) {
        init[k] = init_like(zero[k].h, a.store[k].n, seed + 10 + k);
        a.grad[k] = fbuf_new(a.store[k].n), again[k] = fbuf_new(a.store[k].n);
        fbuf_set(&a.grad[k], init[k]), fbuf_set(&again[k], init[k]);
    }
    attn_backward_all(cpu, s, &a, a.grad, cpu_ws, cpu_ws_bytes);
    attn_backward_all(gpu, s, &a, a.grad, gpu_ws, gpu_ws_bytes);
    attn_backward_all(gpu, s, &a, again, gpu_ws, gpu_ws_bytes);
    static const char *names[3] = {"dq", "dk", "dv"};
    for (int which = 0; which < 3; which++) {
        const float *got = attn_ptr(&a, a.grad, which, 0, 1), *ref = attn_ptr(&a, a.grad, which, 0, 0);
        const size_t rows = which == 0 || s->interleaved ? s->Tq : Tk_total, width = which == 0 ? HD : KD;
        const size_t stride = s->interleaved ? a.shape.q_stride : width;
        snprintf(label, sizeof label, "attention %s: %s (+= init)", what, names[which]);
        check_rows(got, ref, rows, width, stride, BF16, label);
    }
    for (int k = 0; k < n_store; k++) {
        snprintf(label, sizeof label, "attention %s: backward rerun (%s)", what, s->interleaved ? "dqkv" : names[k]);
        check_dev_same(a.grad[k].d, again[k].d, a.store[k].n * sizeof(float), label);
    }

    for (int k = 0; k < n_store; k++) {
        free(zero[k].h), free(init[k]);
        fbuf_free(&a.store[k]), fbuf_free(&a.grad[k]), fbuf_free(&again[k]);
    }
    fbuf_free(&a.out), fbuf_free(&a.lse), fbuf_free(&a.dout), fbuf_free(&a.delta), fbuf_free(&out2), fbuf_free(&lse2);
    rt_be_device_free(gpu, a.q_pos_d);
    if (a.q_first_d) rt_be_device_free(gpu, a.q_first_d);
    for (int b = 0; b < s->n_blocks; b++)
        rt_be_device_free(gpu, a.k_pos_d[b]);
    rt_be_device_free(gpu, gpu_ws);
    free(cpu_ws), free(out0);
}

static int64_t *range_pos(size_t n, int64_t first) {
    int64_t *p = malloc_check(n * sizeof(int64_t));
    for (size_t i = 0; i < n; i++)
        p[i] = first + (int64_t)i;
    return p;
}

/* The positions sequence-parallel rank r of 2 holds under zigzag: chunks r and 3 - r of 4 chunks of c tokens. */
static int64_t *zigzag_pos(size_t c, int r) {
    int64_t *p = malloc_check(2 * c * sizeof(int64_t));
    for (size_t i = 0; i < c; i++) {
        p[i] = (int64_t)(r * c + i);
        p[c + i] = (int64_t)((3 - r) * c + i);
    }
    return p;
}

/* The causal diagonal block (queries and keys the same tokens), GQA 8:2, D = 64 packed and D = 128 as qkv rows. */
static void test_attention_causal_diagonal(void) {
    int64_t *pos300 = range_pos(300, 0), *pos1000 = range_pos(1000, 0);
    attn_spec a = {.H = 8,
                   .Hkv = 2,
                   .D = 64,
                   .causal = 1,
                   .Tq = 300,
                   .q_pos = pos300,
                   .n_blocks = 1,
                   .Tk = {300},
                   .k_pos = {pos300}};
    check_attention(&a, 2000, "causal diagonal T=300 H=8 Hkv=2 D=64");
    attn_spec b = {.H = 8,
                   .Hkv = 2,
                   .D = 128,
                   .causal = 1,
                   .interleaved = 1,
                   .Tq = 1000,
                   .q_pos = pos1000,
                   .n_blocks = 1,
                   .Tk = {1000},
                   .k_pos = {pos1000}};
    check_attention(&b, 2010, "causal diagonal T=1000 H=8 Hkv=2 D=128, qkv rows, padded out");
    free(pos300), free(pos1000);
}

/* Keys all before the queries (a later rank's queries on an earlier rank's block): every key visible. */
static void test_attention_whole_block_visible(void) {
    int64_t *q_pos = range_pos(300, 1000), *k_pos = range_pos(257, 0);
    attn_spec a = {.H = 8,
                   .Hkv = 2,
                   .D = 64,
                   .causal = 1,
                   .Tq = 300,
                   .q_pos = q_pos,
                   .n_blocks = 1,
                   .Tk = {257},
                   .k_pos = {k_pos}};
    check_attention(&a, 2100, "whole block visible Tq=300 Tk=257 H=8 Hkv=2 D=64");
    attn_spec b = {.H = 4,
                   .Hkv = 4,
                   .D = 128,
                   .causal = 0,
                   .Tq = 200,
                   .q_pos = k_pos,
                   .n_blocks = 1,
                   .Tk = {257},
                   .k_pos = {q_pos}};
    check_attention(&b, 2110, "non-causal Tq=200 Tk=257 H=4 Hkv=4 D=128 (keys after queries)");
    free(q_pos), free(k_pos);
}

/* Zigzag positions on 2 ranks (chunks of 100): each rank merges its own block, then the other rank's, from
 * out = 0 and lse = -inf; the running merge and the partly visible blocks (a chunk sees all or none of a chunk). */
static void test_attention_zigzag_two_blocks(void) {
    int64_t *rank0 = zigzag_pos(100, 0), *rank1 = zigzag_pos(100, 1);
    attn_spec a = {.H = 8,
                   .Hkv = 2,
                   .D = 64,
                   .causal = 1,
                   .Tq = 200,
                   .q_pos = rank0,
                   .n_blocks = 2,
                   .Tk = {200, 200},
                   .k_pos = {rank0, rank1}};
    check_attention(&a, 2200, "zigzag rank 0 of 2, own block then rank 1's, D=64");
    attn_spec b = {.H = 8,
                   .Hkv = 2,
                   .D = 128,
                   .causal = 1,
                   .Tq = 200,
                   .q_pos = rank1,
                   .n_blocks = 2,
                   .Tk = {200, 200},
                   .k_pos = {rank1, rank0}};
    check_attention(&b, 2210, "zigzag rank 1 of 2, own block then rank 0's, D=128");
    free(rank0), free(rank1);
}

/* Queries before every key: their rows stay out = 0, lse = -inf, and no gradient moves (MQA, D = 64). */
static void test_attention_no_visible_key(void) {
    int64_t *q_pos = range_pos(100, 0), *k_pos = range_pos(130, 100);
    attn_spec a = {.H = 4,
                   .Hkv = 1,
                   .D = 64,
                   .causal = 1,
                   .Tq = 100,
                   .q_pos = q_pos,
                   .n_blocks = 1,
                   .Tk = {130},
                   .k_pos = {k_pos}};
    check_attention(&a, 2300, "no visible key Tq=100 Tk=130 H=4 Hkv=1 D=64");
    free(q_pos), free(k_pos);
}

/* The small head dims (the kernels' DP = 16 and 32 instantiations; the tiny presets have D = 16): a causal
 * diagonal block with a tail tile, and a running merge of two zigzag blocks. */
static void test_attention_small_head_dims(void) {
    int64_t *pos130 = range_pos(130, 0), *rank0 = zigzag_pos(100, 0), *rank1 = zigzag_pos(100, 1);
    attn_spec a = {.H = 4,
                   .Hkv = 2,
                   .D = 16,
                   .causal = 1,
                   .Tq = 130,
                   .q_pos = pos130,
                   .n_blocks = 1,
                   .Tk = {130},
                   .k_pos = {pos130}};
    check_attention(&a, 2500, "causal diagonal T=130 H=4 Hkv=2 D=16");
    attn_spec b = {.H = 6,
                   .Hkv = 3,
                   .D = 32,
                   .causal = 1,
                   .Tq = 200,
                   .q_pos = rank0,
                   .n_blocks = 2,
                   .Tk = {200, 200},
                   .k_pos = {rank0, rank1}};
    check_attention(&b, 2510, "zigzag rank 0 of 2, own block then rank 1's, H=6 Hkv=3 D=32");
    free(pos130), free(rank0), free(rank1);
}

/* q_first of queries at q_pos (n): the last of the document starts (ascending, starts[0] = 0) at or before each. */
static int64_t *doc_first(const int64_t *q_pos, size_t n, const int64_t *starts, size_t n_starts) {
    int64_t *first = malloc_check(n * sizeof(int64_t));
    for (size_t i = 0; i < n; i++) {
        size_t d = 0;
        while (d + 1 < n_starts && starts[d + 1] <= q_pos[i])
            d++;
        first[i] = starts[d];
    }
    return first;
}

/* Packed documents (q_first): a causal diagonal block with documents starting at and one off the kernels' 64-row
 * tile edges (1-token documents among them), GQA 8:2 at D = 64 and 4:2 at D = 16; zigzag running merges of two
 * blocks with documents that span tiles and chunks (D = 128 and D = 32); and a first block every key of which is
 * before every query's document (the whole block skipped: rows untouched by it, its keys get no gradient). */
static void test_attention_documents(void) {
    static const int64_t edges[] = {0, 1, 2, 63, 64, 65, 127, 128, 129, 130, 200, 255, 256, 257, 299};
    static const int64_t spanning[] = {0, 30, 90, 150, 151, 260, 330, 399};
    const size_t n_edges = sizeof edges / sizeof edges[0], n_spanning = sizeof spanning / sizeof spanning[0];
    int64_t *pos300 = range_pos(300, 0), *pos130 = range_pos(130, 0);
    int64_t *rank0 = zigzag_pos(100, 0), *rank1 = zigzag_pos(100, 1);
    int64_t *first300 = doc_first(pos300, 300, edges, n_edges), *first130 = doc_first(pos130, 130, edges, n_edges);
    int64_t *first_r0 = doc_first(rank0, 200, spanning, n_spanning);
    int64_t *first_r1 = doc_first(rank1, 200, spanning, n_spanning);
    attn_spec a = {.H = 8,
                   .Hkv = 2,
                   .D = 64,
                   .causal = 1,
                   .Tq = 300,
                   .q_pos = pos300,
                   .n_blocks = 1,
                   .Tk = {300},
                   .k_pos = {pos300},
                   .q_first = first300};
    check_attention(&a, 2600, "documents at tile edges, causal diagonal T=300 H=8 Hkv=2 D=64");
    attn_spec b = {.H = 4,
                   .Hkv = 2,
                   .D = 16,
                   .causal = 1,
                   .interleaved = 1,
                   .Tq = 130,
                   .q_pos = pos130,
                   .n_blocks = 1,
                   .Tk = {130},
                   .k_pos = {pos130},
                   .q_first = first130};
    check_attention(&b, 2610, "documents at tile edges, causal diagonal T=130 H=4 Hkv=2 D=16, qkv rows");
    attn_spec c = {.H = 8,
                   .Hkv = 2,
                   .D = 128,
                   .causal = 1,
                   .Tq = 200,
                   .q_pos = rank0,
                   .n_blocks = 2,
                   .Tk = {200, 200},
                   .k_pos = {rank0, rank1},
                   .q_first = first_r0};
    check_attention(&c, 2620, "documents spanning tiles, zigzag rank 0 of 2, own block then rank 1's, D=128");
    attn_spec d = {.H = 6,
                   .Hkv = 3,
                   .D = 32,
                   .causal = 1,
                   .Tq = 200,
                   .q_pos = rank1,
                   .n_blocks = 2,
                   .Tk = {200, 200},
                   .k_pos = {rank1, rank0},
                   .q_first = first_r1};
    check_attention(&d, 2630, "documents spanning tiles, zigzag rank 1 of 2, own block then rank 0's, H=6 Hkv=3 D=32");
    static const int64_t late[] = {0, 150, 250};
    int64_t *q_pos = range_pos(100, 200), *k_early = range_pos(130, 0), *k_late = range_pos(170, 130);
    int64_t *first_late = doc_first(q_pos, 100, late, 3);
    attn_spec e = {.H = 4,
                   .Hkv = 1,
                   .D = 64,
                   .causal = 1,
                   .Tq = 100,
                   .q_pos = q_pos,
                   .n_blocks = 2,
                   .Tk = {130, 170},
                   .k_pos = {k_early, k_late},
                   .q_first = first_late};
    check_attention(&e, 2640, "documents, a first block before every query's document Tq=100 H=4 Hkv=1 D=64");
    free(pos300), free(pos130), free(rank0), free(rank1);
    free(first300), free(first130), free(first_r0), free(first_r1);
    free(q_pos), free(k_early), free(k_late), free(first_late);
}

/* attn_delta alone, on identical inputs: an fp32 row sum. */
static void test_attn_delta(void) {
    const size_t Tq = 1000;
    const rt_attn_shape shape = {8, 2, 128, 8 * 128, 2 * 128, 8 * 128 + 4, 1};
    fbuf out = fbuf_rand(Tq * shape.out_stride, -1.0f, 1.0f, 2400),
         dout = fbuf_rand(Tq * shape.out_stride, -1.0f, 1.0f, 2401);
    fbuf delta = fbuf_fill(Tq * 8, 0.0f);
    rt_be_attn_delta(cpu, delta.h, out.h, dout.h, Tq, &shape);
    rt_be_attn_delta(gpu, delta.d, out.d, dout.d, Tq, &shape);
    check_dev(delta.d, delta.h, Tq * 8, FP32, "attn_delta Tq=1000 H=8 D=128, padded rows");
    fbuf_free(&out), fbuf_free(&dout), fbuf_free(&delta);
}

/* ----------------------------------------------------------------------------
 * copy engine
 */

/* About 25 ms of compute on an H200 (64 Mi floats) that leaves x as it was: 200 negations on the compute stream. */
static void busy_compute(float *x, size_t n) {
    for (int i = 0; i < 200; i++)
        rt_be_scale(gpu, x, -1.0f, n);
}

static void test_copy_engine(void) {
    /* 256 MiB: milliseconds per copy on the GPU (the harness check on the CPU takes 16 MiB) */
    const size_t n = on_gpu ? (size_t)64 << 20 : (size_t)4 << 20, bytes = n * sizeof(float);
    float *src = rt_be_host_alloc(gpu, bytes), *dst = rt_be_host_alloc(gpu, bytes),
          *dst2 = rt_be_host_alloc(gpu, bytes);
    CU_ASSERT_PTR_NOT_NULL_FATAL(src);
    CU_ASSERT_PTR_NOT_NULL_FATAL(dst);
    CU_ASSERT_PTR_NOT_NULL_FATAL(dst2);
    void *tiny1 = rt_be_host_alloc(gpu, 0), *tiny2 = rt_be_host_alloc(gpu, 0);
    CU_ASSERT(tiny1 && tiny2 && tiny1 != tiny2);
    rt_be_host_free(gpu, tiny1);
    rt_be_host_free(gpu, tiny2);
    test_fill_uniform(src, n, -1.0f, 1.0f, 3000);
    float *twice = malloc_check(bytes);
    for (size_t i = 0; i < n; i++)
        twice[i] = 2.0f * src[i];
    float *d = dev_alloc(bytes), *d2 = dev_alloc(bytes);
    rt_stream *s = rt_be_stream_create(gpu), *s2 = rt_be_stream_create(gpu);
    rt_event *e = rt_be_event_create(gpu), *e2 = rt_be_event_create(gpu);

    /* an event never recorded is complete */
    CU_ASSERT_EQUAL(rt_be_event_query(gpu, e), 1);
    rt_be_event_synchronize(gpu, e);

    /* host -> device on s; compute waits for it (stream_wait_event on NULL) and then sees the copied data */
    rt_be_memset_zero(gpu, d, bytes);
    rt_be_copy_async(gpu, s, d, src, bytes);
    rt_be_event_record(gpu, e, s);
    rt_be_stream_wait_event(gpu, NULL, e);
    rt_be_scale(gpu, d, 2.0f, n);
    rt_be_copy(gpu, dst, d, bytes);
    assert_same_bits(dst, twice, bytes, "compute after stream_wait_event(NULL, e) sees the copy");

    /* device -> host on s starts after the compute issued before it (~25 ms of it): pending just after */
    rt_be_copy(gpu, d, src, bytes);
    memset(dst, 0, bytes);
    busy_compute(d, n);
    rt_be_scale(gpu, d, 2.0f, n);
    rt_be_copy_async(gpu, s, dst, d, bytes);
    rt_be_event_record(gpu, e, s);
    const int pending = rt_be_event_query(gpu, e) == 0;
    if (on_gpu && !pending)
        fprintf(stderr, "\n  event_query said complete right after a copy queued behind ~25 ms of compute");
    if (on_gpu) CU_ASSERT(pending); /* on the CPU the compute is done by now and the copy may be too */
    rt_be_event_synchronize(gpu, e);
    CU_ASSERT_EQUAL(rt_be_event_query(gpu, e), 1);
    assert_same_bits(dst, twice, bytes, "copy_async device -> host after compute sees its result");

    /* an event on the compute stream (NULL): pending behind compute, complete after synchronize */
    busy_compute(d, n);
    rt_be_event_record(gpu, e2, NULL);
    if (on_gpu) CU_ASSERT_EQUAL(rt_be_event_query(gpu, e2), 0); /* on CPU the ops are done: complete at once */
    rt_be_synchronize(gpu);
    CU_ASSERT_EQUAL(rt_be_event_query(gpu, e2), 1);

    /* one copy stream waits for another: s2 copies out d2 only after s has filled it */
    rt_be_copy_async(gpu, s, d2, src, bytes);
    rt_be_event_record(gpu, e, s);
    rt_be_stream_wait_event(gpu, s2, e);
    memset(dst2, 0, bytes);
    rt_be_copy_async(gpu, s2, dst2, d2, bytes);
    rt_be_event_record(gpu, e2, s2);
    rt_be_event_synchronize(gpu, e2);
    assert_same_bits(dst2, src, bytes, "stream_wait_event(s2, e of s) orders s2's copy after s's");

    /* two streams at once, each its own half; then stream_destroy waits for what is queued */
    memset(dst, 0, bytes);
    rt_be_copy_async(gpu, s, dst, d2, bytes / 2);
    rt_be_copy_async(gpu, s2, (char *)dst + bytes / 2, (char *)d2 + bytes / 2, bytes / 2);
    rt_be_stream_destroy(gpu, s);
    rt_be_stream_destroy(gpu, s2);
    assert_same_bits(dst, src, bytes, "copies on two streams, complete after stream_destroy");

    /* an event destroyed with its record pending is waited for first */
    rt_stream *s3 = rt_be_stream_create(gpu);
    busy_compute(d, n);
    rt_be_copy_async(gpu, s3, dst2, d, bytes);
    rt_be_event_record(gpu, e, s3);
    rt_be_event_destroy(gpu, e);
    rt_be_event_destroy(gpu, e2);
    rt_be_stream_destroy(gpu, s3);
    assert_same_bits(dst2, twice, bytes, "copy complete after event_destroy and stream_destroy");

    rt_be_device_free(gpu, d);
    rt_be_device_free(gpu, d2);
    rt_be_host_free(gpu, src);
    rt_be_host_free(gpu, dst);
    rt_be_host_free(gpu, dst2);
    free(twice);
}

int main(void) {
    rt_error err;
    cpu = rt_backend_cpu();
    static rt_backend harness; /* TEST_CUDA_BACKEND=cpu: see the top comment */
    const char *backend_env = getenv("TEST_CUDA_BACKEND");
    if (backend_env && strcmp(backend_env, "cpu") == 0) {
        harness = *cpu;
        harness.name = "cpu, standing in for cuda";
        gpu = &harness;
    } else if (rt_backend_open(&gpu, "cuda", 0, &err) != 0) {
        printf("test_cuda_ops: skipped: %s\n", err.msg);
        return 77;
    } else {
        on_gpu = 1;
    }
    test_case cases[] = {
        {"memory", test_memory},
        {"matmul_forward (bf16)", test_matmul_forward},
        {"matmul_backward (bf16; dbias fp32)", test_matmul_backward},
        {"embedding forward and backward (bit for bit)", test_embedding},
        {"layernorm", test_layernorm},
        {"rmsnorm", test_rmsnorm},
        {"rope", test_rope},
        {"gelu", test_gelu},
        {"swiglu", test_swiglu},
        {"add and scale (bit for bit)", test_add_scale},
        {"dropout (bit for bit)", test_dropout},
        {"softmax_xent", test_softmax_xent},
        {"sum_squares", test_sum_squares},
        {"adamw_update", test_adamw},
        {"attention: causal diagonal block, GQA, D 64 and 128", test_attention_causal_diagonal},
        {"attention: whole block visible; non-causal", test_attention_whole_block_visible},
        {"attention: zigzag positions, running merge of two blocks", test_attention_zigzag_two_blocks},
        {"attention: query with no visible key", test_attention_no_visible_key},
        {"attention: head dims 16 and 32", test_attention_small_head_dims},
        {"attention: packed documents (q_first)", test_attention_documents},
        {"attention: delta", test_attn_delta},
        {"copy engine: streams, events, ordering with compute", test_copy_engine},
    };
    int status = test_run_suite("test_cuda_ops", cases, (int)(sizeof cases / sizeof cases[0]));
    rt_backend_close(gpu);
    return status;
}
