/* backend_cpu.c: the CPU backend table: OpenBLAS sgemm for matmuls, plain C with OpenMP for every other op. */
/*
 * Conventions (as in backend.h and llm.c): N = number of local tokens (B*T),
 * C = channels, OC = output channels, F = MLP hidden size, V = vocab,
 * Vp = padded vocab (row stride of logits). All buffers are row-major host
 * memory; every *_backward accumulates (+=) into its gradients, except the
 * in-place ops (rope_backward, dropout) which transform the gradient.
 *
 * Parallelism and determinism. Ops whose outputs are independent per row
 * (token) run `omp parallel for schedule(static)` over rows. Reductions over
 * tokens (weight and bias gradients of matmul, layernorm, rmsnorm, the
 * embedding tables) never use atomics: the outer parallel loop runs over
 * blocks of CPU_CHANNEL_BLOCK channels, and each block sums its tokens in
 * order (in double). Every result is therefore the same bits for any thread
 * count, not only for a fixed one. sum_squares splits its input into fixed
 * chunks and adds the chunk sums sequentially, with the same property.
 *
 * Dropout uses Philox4x32-10 (Salmon et al., "Parallel random numbers: as
 * easy as 1, 2, 3", SC 2011), a counter-based generator: a mask bit is a pure
 * function of (key, global position, channel), so it does not depend on N,
 * on the order of tokens in the buffer, on the rank or on the thread count.
 * The exact derivation is written once, in runtime/backend/philox.h; the
 * CUDA backend includes the same functions and draws bit-identical masks.
 */
#include <cblas.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cpu.h"
#include "backend_cpu_internal.h"
#include "runtime/backend/philox.h"
#include "runtime/core/common.h"

/* Loops with fewer elements than this run on one thread: a parallel region costs a few microseconds. */
#define CPU_OMP_MIN_WORK ((size_t)1 << 15)
/* Channels per block in the deterministic token reductions (two cache lines of floats). */
#define CPU_CHANNEL_BLOCK 32
/* Elements per partial sum in sum_squares; fixed so the reduction order does not depend on threads. */
#define CPU_SUMSQ_CHUNK ((size_t)1 << 16)
/* Partial sums of sum_squares computed per parallel pass (on the stack: 2 KiB, 16M elements a pass). */
#define CPU_SUMSQ_PASS_CHUNKS 256
/* Rope frequencies computed per pass (on the stack: 2 KiB). */
#define CPU_ROPE_FREQ_BLOCK 256

#define GELU_SCALING_FACTOR 0.7978845608028654f /* sqrt(2/pi) */

/* ----------------------------------------------------------------------------
 * raw memory
 */

static void *cpu_device_alloc(CPU_BE, size_t bytes) {
    void *ptr = NULL;
    /* 64-byte aligned for AVX-512 loads; a zero-byte request still gets a unique pointer */
    if (posix_memalign(&ptr, 64, bytes ? bytes : 64) != 0) return NULL;
    return ptr;
}

static void cpu_device_free(CPU_BE, void *ptr) { free(ptr); }

static void cpu_memset_zero(CPU_BE, void *dst, size_t bytes) {
    if (bytes) memset(dst, 0, bytes);
}

static void cpu_copy(CPU_BE, void *dst, const void *src, size_t bytes) {
    if (bytes && dst != src) memcpy(dst, src, bytes);
}

/* ----------------------------------------------------------------------------
 * dense
 */

static int cpu_blas_dim(size_t n, const char *what) {
    if (n > (size_t)INT_MAX) rt_fatal("cpu matmul: %s = %zu exceeds the BLAS int range", what, n);
    return (int)n;
}

/* Adds per-channel src (n_channels) to every row of out (n_rows, n_channels). */
static void cpu_add_row_vector(float *out, const float *src, size_t n_rows, int n_channels) {
#pragma omp parallel for schedule(static) if (n_rows * (size_t)n_channels >= CPU_OMP_MIN_WORK)
    for (size_t n = 0; n < n_rows; n++) {
        float *out_row = out + n * (size_t)n_channels;
        for (int c = 0; c < n_channels; c++)
            out_row[c] += src[c];
    }
}

/* dst[c] += sum_n src[n, c] for src (n_rows, n_channels): blocks of channels in parallel, tokens in order. */
static void cpu_reduce_rows(float *dst, const float *src, size_t n_rows, int n_channels) {
    int n_blocks = (n_channels + CPU_CHANNEL_BLOCK - 1) / CPU_CHANNEL_BLOCK;
#pragma omp parallel for schedule(static) if (n_rows * (size_t)n_channels >= CPU_OMP_MIN_WORK)
    for (int blk = 0; blk < n_blocks; blk++) {
        int c0 = blk * CPU_CHANNEL_BLOCK;
        int width = n_channels - c0 < CPU_CHANNEL_BLOCK ? n_channels - c0 : CPU_CHANNEL_BLOCK;
        double acc[CPU_CHANNEL_BLOCK] = {0};
        for (size_t n = 0; n < n_rows; n++) {
            const float *src_row = src + n * (size_t)n_channels + c0;
            for (int c = 0; c < width; c++)
                acc[c] += (double)src_row[c];
        }
        for (int c = 0; c < width; c++)
            dst[c0 + c] += (float)acc[c];
    }
}

/* out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC): one sgemm, then the bias over rows. */
static void cpu_matmul_forward(CPU_BE, float *out, const float *inp, const float *weight, const float *bias, size_t N,
                               int C, int OC) {
    if (N == 0 || OC <= 0) return;
    int rows = cpu_blas_dim(N, "N");
    if (C > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, OC, C, 1.0f, inp, C, weight, C, 0.0f, out, OC);
    } else {
        memset(out, 0, N * (size_t)OC * sizeof(float));
    }
    if (bias) cpu_add_row_vector(out, bias, N, OC);
}

/* dinp (N,C) += dout (N,OC) @ weight (OC,C); dweight (OC,C) += dout^T @ inp (N,C); dbias (OC) += sum_n dout. */
static void cpu_matmul_backward(CPU_BE, float *dinp, float *dweight, float *dbias, const float *dout, const float *inp,
                                const float *weight, size_t N, int C, int OC) {
    if (N == 0 || OC <= 0) return;
    int rows = cpu_blas_dim(N, "N");
    if (dinp && C > 0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, rows, C, OC, 1.0f, dout, OC, weight, C, 1.0f, dinp, C);
    }
    if (dweight && C > 0) {
        cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, OC, C, rows, 1.0f, dout, OC, inp, C, 1.0f, dweight, C);
    }
    if (dbias) cpu_reduce_rows(dbias, dout, N, OC);
}

/* ----------------------------------------------------------------------------
 * embeddings
 */

/* Negative token ids or positions are programming errors; checked before any parallel region (pos may be NULL). */
static void cpu_check_embedding_rows(const char *op, const int32_t *tokens, const int64_t *pos, size_t N) {
    for (size_t n = 0; n < N; n++) {
        if (tokens[n] < 0) rt_fatal("%s: token %d at row %zu is negative", op, (int)tokens[n], n);
        if (pos && pos[n] < 0) rt_fatal("%s: position %lld at row %zu is negative", op, (long long)pos[n], n);
    }
}

/* out (N,C) = wte[tokens[n]] (+ wpe[pos[n]]); wte (Vp,C), wpe (maxT,C) or NULL. */
static void cpu_embedding_forward(CPU_BE, float *out, const int32_t *tokens, const int64_t *pos, const float *wte,
                                  const float *wpe, size_t N, int C) {
    cpu_check_embedding_rows("embedding_forward", tokens, wpe ? pos : NULL, N);
#pragma omp parallel for schedule(static) if (N * (size_t)C >= CPU_OMP_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        float *out_row = out + n * (size_t)C;
        const float *wte_row = wte + (size_t)tokens[n] * (size_t)C;
        if (wpe) {
            const float *wpe_row = wpe + (size_t)pos[n] * (size_t)C;
            for (int c = 0; c < C; c++)
                out_row[c] = wte_row[c] + wpe_row[c];
        } else {
            memcpy(out_row, wte_row, (size_t)C * sizeof(float));
        }
    }
}

/* dwte[tokens[n]] += dout[n]; dwpe[pos[n]] += dout[n] (dwpe may be NULL). Tokens repeat, so rows of dwte collide:
 * each thread owns a block of channels and walks the tokens in order, which is deterministic without atomics. */
static void cpu_embedding_backward(CPU_BE, float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                                   const int64_t *pos, size_t N, int C) {
    cpu_check_embedding_rows("embedding_backward", tokens, dwpe ? pos : NULL, N);
    int n_blocks = (C + CPU_CHANNEL_BLOCK - 1) / CPU_CHANNEL_BLOCK;
#pragma omp parallel for schedule(static) if (N * (size_t)C >= CPU_OMP_MIN_WORK)
    for (int blk = 0; blk < n_blocks; blk++) {
        int c0 = blk * CPU_CHANNEL_BLOCK;
        int width = C - c0 < CPU_CHANNEL_BLOCK ? C - c0 : CPU_CHANNEL_BLOCK;
        for (size_t n = 0; n < N; n++) {
            const float *dout_row = dout + n * (size_t)C + c0;
            if (dwte) {
                float *dwte_row = dwte + (size_t)tokens[n] * (size_t)C + c0;
                for (int c = 0; c < width; c++)
                    dwte_row[c] += dout_row[c];
            }
            if (dwpe) {
                float *dwpe_row = dwpe + (size_t)pos[n] * (size_t)C + c0;
                for (int c = 0; c < width; c++)
                    dwpe_row[c] += dout_row[c];
            }
        }
    }
}

/* ----------------------------------------------------------------------------
 * norms
 */

/* out (N,C) = (inp - mean) * rstd * weight + bias; mean, rstd (N) saved (may be NULL); bias may be NULL. */
static void cpu_layernorm_forward(CPU_BE, float *out, float *mean, float *rstd, const float *inp, const float *weight,
                                  const float *bias, size_t N, int C, float eps) {
#pragma omp parallel for schedule(static) if (N * (size_t)C >= CPU_OMP_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * (size_t)C;
        float *out_row = out + n * (size_t)C;
        double sum = 0.0;
        for (int c = 0; c < C; c++)
            sum += x[c];
        double m = sum / C;
        double var = 0.0;
        for (int c = 0; c < C; c++) {
            double shift = x[c] - m;
            var += shift * shift;
        }
        float mean_n = (float)m;
        float rstd_n = (float)(1.0 / sqrt(var / C + (double)eps));
        for (int c = 0; c < C; c++) {
            float norm = (x[c] - mean_n) * rstd_n;
            out_row[c] = norm * weight[c] + (bias ? bias[c] : 0.0f);
        }
        if (mean) mean[n] = mean_n;
        if (rstd) rstd[n] = rstd_n;
    }
}

/* llm.c's layernorm backward: dinp (N,C) += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), with
 * dnorm = weight * dout; dweight (C) += sum_n norm * dout; dbias (C) += sum_n dout. Any gradient may be NULL. */
static void cpu_layernorm_backward(CPU_BE, float *dinp, float *dweight, float *dbias, const float *dout,
                                   const float *inp, const float *weight, const float *mean, const float *rstd,
                                   size_t N, int C) {
    int parallel = N * (size_t)C >= CPU_OMP_MIN_WORK;
    if (dinp) {
#pragma omp parallel for schedule(static) if (parallel)
        for (size_t n = 0; n < N; n++) {
            const float *x = inp + n * (size_t)C;
            const float *dout_row = dout + n * (size_t)C;
            float *dinp_row = dinp + n * (size_t)C;
            float mean_n = mean[n], rstd_n = rstd[n];
            double dnorm_sum = 0.0, dnorm_norm_sum = 0.0;
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - mean_n) * rstd_n;
                float dnorm = weight[c] * dout_row[c];
                dnorm_sum += dnorm;
                dnorm_norm_sum += (double)dnorm * norm;
            }
            float dnorm_mean = (float)(dnorm_sum / C);
            float dnorm_norm_mean = (float)(dnorm_norm_sum / C);
            for (int c = 0; c < C; c++) {
                float norm = (x[c] - mean_n) * rstd_n;
                float dnorm = weight[c] * dout_row[c];
                dinp_row[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd_n;
            }
        }
    }
    if (dweight || dbias) {
        int n_blocks = (C + CPU_CHANNEL_BLOCK - 1) / CPU_CHANNEL_BLOCK;
#pragma omp parallel for schedule(static) if (parallel)
        for (int blk = 0; blk < n_blocks; blk++) {
            int c0 = blk * CPU_CHANNEL_BLOCK;
            int width = C - c0 < CPU_CHANNEL_BLOCK ? C - c0 : CPU_CHANNEL_BLOCK;
            double dweight_acc[CPU_CHANNEL_BLOCK] = {0}, dbias_acc[CPU_CHANNEL_BLOCK] = {0};
            for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * (size_t)C + c0;
                const float *dout_row = dout + n * (size_t)C + c0;
                float mean_n = mean[n], rstd_n = rstd[n];
                for (int c = 0; c < width; c++) {
                    float norm = (x[c] - mean_n) * rstd_n;
                    dweight_acc[c] += (double)norm * dout_row[c];
                    dbias_acc[c] += dout_row[c];
                }
            }
            for (int c = 0; c < width; c++) {
                if (dweight) dweight[c0 + c] += (float)dweight_acc[c];
                if (dbias) dbias[c0 + c] += (float)dbias_acc[c];
            }
        }
    }
}

/* out (N,C) = inp * rstd * weight, rstd (N) = 1/sqrt(mean(inp^2) + eps), saved (may be NULL). */
static void cpu_rmsnorm_forward(CPU_BE, float *out, float *rstd, const float *inp, const float *weight, size_t N, int C,
                                float eps) {
#pragma omp parallel for schedule(static) if (N * (size_t)C >= CPU_OMP_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *x = inp + n * (size_t)C;
        float *out_row = out + n * (size_t)C;
        double sum_sq = 0.0;
        for (int c = 0; c < C; c++)
            sum_sq += (double)x[c] * x[c];
        float rstd_n = (float)(1.0 / sqrt(sum_sq / C + (double)eps));
        for (int c = 0; c < C; c++)
            out_row[c] = x[c] * rstd_n * weight[c];
        if (rstd) rstd[n] = rstd_n;
    }
}

/* dinp (N,C) += rstd * weight * dout - inp * rstd^3 / C * sum_c(dout * weight * inp); dweight (C) += sum_n dout *
 * inp * rstd. Either gradient may be NULL. */
static void cpu_rmsnorm_backward(CPU_BE, float *dinp, float *dweight, const float *dout, const float *inp,
                                 const float *weight, const float *rstd, size_t N, int C) {
    int parallel = N * (size_t)C >= CPU_OMP_MIN_WORK;
    if (dinp) {
#pragma omp parallel for schedule(static) if (parallel)
        for (size_t n = 0; n < N; n++) {
            const float *x = inp + n * (size_t)C;
            const float *dout_row = dout + n * (size_t)C;
            float *dinp_row = dinp + n * (size_t)C;
            float rstd_n = rstd[n];
            double dot = 0.0;
            for (int c = 0; c < C; c++)
                dot += (double)dout_row[c] * weight[c] * x[c];
            float coef = (float)(dot * rstd_n * rstd_n * rstd_n / C);
            for (int c = 0; c < C; c++)
                dinp_row[c] += rstd_n * weight[c] * dout_row[c] - x[c] * coef;
        }
    }
    if (dweight) {
        int n_blocks = (C + CPU_CHANNEL_BLOCK - 1) / CPU_CHANNEL_BLOCK;
#pragma omp parallel for schedule(static) if (parallel)
        for (int blk = 0; blk < n_blocks; blk++) {
            int c0 = blk * CPU_CHANNEL_BLOCK;
            int width = C - c0 < CPU_CHANNEL_BLOCK ? C - c0 : CPU_CHANNEL_BLOCK;
            double acc[CPU_CHANNEL_BLOCK] = {0};
            for (size_t n = 0; n < N; n++) {
                const float *x = inp + n * (size_t)C + c0;
                const float *dout_row = dout + n * (size_t)C + c0;
                float rstd_n = rstd[n];
                for (int c = 0; c < width; c++)
                    acc[c] += (double)dout_row[c] * (x[c] * rstd_n);
            }
            for (int c = 0; c < width; c++)
                dweight[c0 + c] += (float)acc[c];
        }
    }
}

/* ----------------------------------------------------------------------------
 * position
 */

/* Rotates pairs (2i, 2i+1) of each of n_heads heads in each row of x by sign * pos[n] * theta^(-2i/head_dim).
 * Frequencies and angles are in double: at positions near 1e6 a float angle would be off by a radian fraction.
 * The frequencies are computed on the stack, CPU_ROPE_FREQ_BLOCK at a time (one pass up to head_dim 512). */
static void cpu_rope_rotate(float *x, const int64_t *pos, size_t N, int n_heads, int head_dim, size_t stride,
                            float theta, double sign) {
    if (head_dim % 2 != 0) rt_fatal("rope: head_dim %d is odd", head_dim);
    const int half = head_dim / 2;
    double inv_freq[CPU_ROPE_FREQ_BLOCK]; /* pairs [i0, i0 + n_freq) */
    for (int i0 = 0; i0 < half; i0 += CPU_ROPE_FREQ_BLOCK) {
        const int n_freq = half - i0 < CPU_ROPE_FREQ_BLOCK ? half - i0 : CPU_ROPE_FREQ_BLOCK;
        for (int i = 0; i < n_freq; i++)
            inv_freq[i] = pow((double)theta, -2.0 * (i0 + i) / head_dim);
#pragma omp parallel for schedule(static) if (N * (size_t)n_heads * (size_t)head_dim >= CPU_OMP_MIN_WORK)
        for (size_t n = 0; n < N; n++) {
            float *row = x + n * stride;
            for (int i = 0; i < n_freq; i++) {
                double angle = sign * (double)pos[n] * inv_freq[i];
                float cos_a = (float)cos(angle), sin_a = (float)sin(angle);
                for (int h = 0; h < n_heads; h++) {
                    float *pair = row + (size_t)h * head_dim + 2 * (i0 + i);
                    float x0 = pair[0], x1 = pair[1];
                    pair[0] = x0 * cos_a - x1 * sin_a;
                    pair[1] = x0 * sin_a + x1 * cos_a;
                }
            }
        }
    }
}

static void cpu_rope_forward(CPU_BE, float *x, const int64_t *pos, size_t N, int n_heads, int head_dim, size_t stride,
                             float theta) {
    cpu_rope_rotate(x, pos, N, n_heads, head_dim, stride, theta, 1.0);
}

/* The rotation is orthogonal, so the gradient goes back through its transpose: rotation by -angle. */
static void cpu_rope_backward(CPU_BE, float *dx, const int64_t *pos, size_t N, int n_heads, int head_dim, size_t stride,
                              float theta) {
    cpu_rope_rotate(dx, pos, N, n_heads, head_dim, stride, theta, -1.0);
}

/* ----------------------------------------------------------------------------
 * pointwise
 */

/*
 * GELU (tanh form) and SiLU without libm: 0.5 (1 + tanh(u)) = sigmoid(2u), and
 * with e = exp(-|z|) (at most 1: never overflows),
 *     sigmoid(z) = 1 / (1 + e) for z >= 0,  e / (1 + e) for z < 0,
 *     sigmoid'(z) = sigmoid(z) (1 - sigmoid(z)) = e / (1 + e)^2,
 * each without cancellation, so both tails keep their relative accuracy
 * (1 - tanh^2 would cancel; sigmoid'(2u) = sech^2(u) / 4). The inputs are
 * clamped to where e is already 0 (|x| <= CPU_GELU_CLAMP gives |2u| up to
 * 99.4, |gate| <= CPU_SILU_CLAMP) before the exp and the derivative's x u'(x),
 * so huge or infinite inputs give sigmoid 0 or 1 and a derivative term of
 * exactly 0, never inf * 0; the outputs x * sigmoid take the unclamped x:
 * GELU(x) = x for large x, -0 for very negative x (NaN at -inf, as before),
 * gradient 1 or 0. The clamps are ternaries, not fminf/fmaxf, so NaN stays
 * NaN.
 *
 * Vectorization (GCC 12, checked with -fopt-info-vec): the loops compile for
 * AVX-512 and AVX2 (RT_CPU_CLONES) and the baseline. The clamp bound comes in
 * as an argument (a literal lets GCC fold the clamped paths to constants, and
 * the branches then stop the loop from vectorizing, as in attention), and the
 * forward's sigmoid is a select of the numerator (1 or e) over one division:
 * a select between 1 / (1 + e) and e / (1 + e) becomes a multiply on one path,
 * which the SSE2 version cannot if-convert (it could trap). The ops run the
 * loops on fixed spans of CPU_POINTWISE_SPAN elements, so an element's bits do
 * not depend on the thread count.
 */
#define CPU_GELU_CLAMP 10.5f
#define CPU_SILU_CLAMP 100.0f
#define CPU_POINTWISE_SPAN ((size_t)1 << 13)

static RT_CPU_INLINE float cpu_clamp(float x, float bound) { return x < -bound ? -bound : (x > bound ? bound : x); }

/* out = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) = x sigmoid(2u) */
RT_CPU_CLONES static void cpu_gelu_forward_span(float *out, const float *inp, size_t n, float bound) {
    for (size_t i = 0; i < n; i++) {
        float x = inp[i], xc = cpu_clamp(x, bound);
        float u = GELU_SCALING_FACTOR * (xc + 0.044715f * xc * xc * xc);
        float e = rt_cpu_exp_approx(-2.0f * fabsf(u));
        out[i] = x * ((xc >= 0.0f ? 1.0f : e) / (1.0f + e));
    }
}

static void cpu_gelu_forward(CPU_BE, float *out, const float *inp, size_t n) {
    size_t spans = (n + CPU_POINTWISE_SPAN - 1) / CPU_POINTWISE_SPAN;
#pragma omp parallel for schedule(static) if (n >= CPU_OMP_MIN_WORK)
    for (size_t s = 0; s < spans; s++) {
        size_t i0 = s * CPU_POINTWISE_SPAN, len = n - i0 < CPU_POINTWISE_SPAN ? n - i0 : CPU_POINTWISE_SPAN;
        cpu_gelu_forward_span(out + i0, inp + i0, len, CPU_GELU_CLAMP);
    }
}

/* gelu'(x) = sigmoid(2u) + 2 x u'(x) sigmoid'(2u), u'(x) = sqrt(2/pi) (1 + 3 * 0.044715 x^2) */
RT_CPU_CLONES static void cpu_gelu_backward_span(float *dinp, const float *inp, const float *dout, size_t n,
                                                 float bound) {
    for (size_t i = 0; i < n; i++) {
        float xc = cpu_clamp(inp[i], bound);
        float u = GELU_SCALING_FACTOR * (xc + 0.044715f * xc * xc * xc);
        float e = rt_cpu_exp_approx(-2.0f * fabsf(u));
        float inv = 1.0f / (1.0f + e), e_inv = e * inv;
        float sig = xc >= 0.0f ? inv : e_inv;
        float du = GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * xc * xc);
        float local_grad = sig + 2.0f * xc * du * (e_inv * inv);
        dinp[i] += local_grad * dout[i];
    }
}

static void cpu_gelu_backward(CPU_BE, float *dinp, const float *inp, const float *dout, size_t n) {
    size_t spans = (n + CPU_POINTWISE_SPAN - 1) / CPU_POINTWISE_SPAN;
#pragma omp parallel for schedule(static) if (n >= CPU_OMP_MIN_WORK)
    for (size_t s = 0; s < spans; s++) {
        size_t i0 = s * CPU_POINTWISE_SPAN, len = n - i0 < CPU_POINTWISE_SPAN ? n - i0 : CPU_POINTWISE_SPAN;
        cpu_gelu_backward_span(dinp + i0, inp + i0, dout + i0, len, CPU_GELU_CLAMP);
    }
}

/* out = silu(gate) * up over one row of F */
RT_CPU_CLONES static void cpu_swiglu_forward_row(float *out, const float *gate, const float *up, int F, float bound) {
    for (int f = 0; f < F; f++) {
        float g = gate[f], gc = cpu_clamp(g, bound);
        float e = rt_cpu_exp_approx(-fabsf(gc));
        out[f] = g * ((gc >= 0.0f ? 1.0f : e) / (1.0f + e)) * up[f];
    }
}

/* out (N,F) = silu(gate) * up, gate_up (N,2F) = [gate | up] per row. */
static void cpu_swiglu_forward(CPU_BE, float *out, const float *gate_up, size_t N, int F) {
#pragma omp parallel for schedule(static) if (N * (size_t)F >= CPU_OMP_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *gate = gate_up + n * 2 * (size_t)F;
        cpu_swiglu_forward_row(out + n * (size_t)F, gate, gate + F, F, CPU_SILU_CLAMP);
    }
}

/* silu'(g) = sig + g sig (1 - sig) = sig + g e / (1 + e)^2 */
RT_CPU_CLONES static void cpu_swiglu_backward_row(float *dgate, float *dup, const float *dout, const float *gate,
                                                  const float *up, int F, float bound) {
    for (int f = 0; f < F; f++) {
        float g = gate[f], gc = cpu_clamp(g, bound);
        float e = rt_cpu_exp_approx(-fabsf(gc));
        float inv = 1.0f / (1.0f + e), e_inv = e * inv;
        float sig = gc >= 0.0f ? inv : e_inv;
        dgate[f] += dout[f] * up[f] * (sig + gc * (e_inv * inv));
        dup[f] += dout[f] * (g * sig);
    }
}

/* dgate += dout * up * silu'(gate); dup += dout * silu(gate); dgate_up (N,2F) like gate_up. */
static void cpu_swiglu_backward(CPU_BE, float *dgate_up, const float *dout, const float *gate_up, size_t N, int F) {
#pragma omp parallel for schedule(static) if (N * (size_t)F >= CPU_OMP_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        const float *gate = gate_up + n * 2 * (size_t)F;
        float *dgate = dgate_up + n * 2 * (size_t)F;
        cpu_swiglu_backward_row(dgate, dgate + F, dout + n * (size_t)F, gate, gate + F, F, CPU_SILU_CLAMP);
    }
}

static void cpu_add(CPU_BE, float *out, const float *a, const float *b, size_t n) {
#pragma omp parallel for schedule(static) if (n >= CPU_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++)
        out[i] = a[i] + b[i];
}

/* ----------------------------------------------------------------------------
 * dropout: Philox4x32-10 (philox.h, shared with the CUDA backend bit for bit)
 */

/* Inverted dropout in place on x (N,C) with the mask of philox.h: kept values are scaled by 1/(1-p), dropped
 * ones set to 0. The same call on the gradient is the backward. */
static void cpu_dropout(CPU_BE, float *x, const int64_t *pos, size_t N, int C, float p, rt_rng_key key) {
    if (p == 0.0f) return;
    if (!(p > 0.0f && p < 1.0f)) rt_fatal("dropout: probability %g is outside [0, 1)", (double)p);
    uint32_t mask_key[2];
    rt_dropout_mask_key(key, mask_key);
    float keep_scale = 1.0f / (1.0f - p);
#pragma omp parallel for schedule(static) if (N * (size_t)C >= CPU_OMP_MIN_WORK)
    for (size_t n = 0; n < N; n++) {
        float *row = x + n * (size_t)C;
        uint64_t position = (uint64_t)pos[n];
        for (int c0 = 0; c0 < C; c0 += 4) {
            uint32_t bits[4];
            rt_dropout_group_bits(mask_key, (uint32_t)(c0 / 4), position, bits);
            int width = C - c0 < 4 ? C - c0 : 4;
            for (int j = 0; j < width; j++)
                row[c0 + j] = rt_dropout_keep(bits[j], p) ? row[c0 + j] * keep_scale : 0.0f;
        }
    }
}

/* ----------------------------------------------------------------------------
 * loss
 */

/* Per row i of logits (n,Vp): loss = logsumexp(logits[0..V)) - logits[t]; when dloss_scale != 0 the row becomes
 * (softmax - onehot(t)) * dloss_scale over [0,V) and 0 over [V,Vp). Rows with t < 0 give loss 0 and dlogits 0. */
static void cpu_softmax_xent(CPU_BE, float *logits, float *losses, const int32_t *targets, size_t n, int V, int Vp,
                             float dloss_scale) {
    for (size_t i = 0; i < n; i++) {
        if (targets[i] >= V)
            rt_fatal("softmax_xent: target %d at row %zu is outside the vocab of %d", targets[i], i, V);
    }
#pragma omp parallel for schedule(static) if (n * (size_t)V >= CPU_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) {
        float *row = logits + i * (size_t)Vp;
        int target = targets[i];
        if (target < 0) {
            losses[i] = 0.0f;
            if (dloss_scale != 0.0f) memset(row, 0, (size_t)Vp * sizeof(float));
            continue;
        }
        float max_logit = -INFINITY;
        for (int j = 0; j < V; j++)
            max_logit = row[j] > max_logit ? row[j] : max_logit;
        float target_logit = row[target];
        double sum = 0.0;
        if (dloss_scale != 0.0f) {
            /* keep exp(logit - max) in the row, then normalize in a second pass */
            for (int j = 0; j < V; j++) {
                float e = expf(row[j] - max_logit);
                row[j] = e;
                sum += e;
            }
            float norm = (float)(dloss_scale / sum);
            for (int j = 0; j < V; j++)
                row[j] *= norm;
            row[target] -= dloss_scale;
            for (int j = V; j < Vp; j++)
                row[j] = 0.0f;
        } else {
            for (int j = 0; j < V; j++)
                sum += expf(row[j] - max_logit);
        }
        losses[i] = (float)(log(sum) + (double)max_logit - (double)target_logit);
    }
}

/* ----------------------------------------------------------------------------
 * reductions and optimizer
 */

/* Sum of x^2 over one chunk in double: eight interleaved lanes, added in a fixed order. */
static double cpu_sum_squares_chunk(const float *x, size_t n) {
    double lanes[8] = {0};
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        for (int j = 0; j < 8; j++)
            lanes[j] += (double)x[i + j] * x[i + j];
    }
    for (; i < n; i++)
        lanes[i % 8] += (double)x[i] * x[i];
    return ((lanes[0] + lanes[1]) + (lanes[2] + lanes[3])) + ((lanes[4] + lanes[5]) + (lanes[6] + lanes[7]));
}

/* Fixed chunks of CPU_SUMSQ_CHUNK, partial sums in parallel, then added in chunk order: same bits for any thread
 * count. The partials of up to CPU_SUMSQ_PASS_CHUNKS chunks are computed per pass, on the stack; the total
 * still adds every chunk's sum in chunk order. */
static double cpu_sum_squares(CPU_BE, const float *x, size_t n) {
    size_t n_chunks = (n + CPU_SUMSQ_CHUNK - 1) / CPU_SUMSQ_CHUNK;
    if (n_chunks <= 1) return cpu_sum_squares_chunk(x, n);
    double partial[CPU_SUMSQ_PASS_CHUNKS];
    double total = 0.0;
    for (size_t first = 0; first < n_chunks; first += CPU_SUMSQ_PASS_CHUNKS) {
        const size_t pass = n_chunks - first < CPU_SUMSQ_PASS_CHUNKS ? n_chunks - first : CPU_SUMSQ_PASS_CHUNKS;
#pragma omp parallel for schedule(static)
        for (size_t i = 0; i < pass; i++) {
            size_t start = (first + i) * CPU_SUMSQ_CHUNK;
            size_t len = n - start < CPU_SUMSQ_CHUNK ? n - start : CPU_SUMSQ_CHUNK;
            partial[i] = cpu_sum_squares_chunk(x + start, len);
        }
        for (size_t i = 0; i < pass; i++)
            total += partial[i];
    }
    return total;
}

static void cpu_scale(CPU_BE, float *x, float factor, size_t n) {
#pragma omp parallel for schedule(static) if (n >= CPU_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++)
        x[i] *= factor;
}

/* One pass over a span: m, v and param read and written once (RT_CPU_CLONES: AVX-512 divides and square roots). */
RT_CPU_CLONES static void cpu_adamw_span(float *param, const float *grad, float *m, float *v, size_t n, float lr,
                                         float beta1, float beta2, float eps, float weight_decay, float m_correction,
                                         float v_correction) {
    for (size_t i = 0; i < n; i++) {
        float g = grad[i];
        float m_i = beta1 * m[i] + (1.0f - beta1) * g;
        float v_i = beta2 * v[i] + (1.0f - beta2) * g * g;
        m[i] = m_i;
        v[i] = v_i;
        float m_hat = m_i * m_correction;
        float v_hat = v_i * v_correction;
        param[i] -= lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * param[i]);
    }
}

/* m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; param -= lr (mhat / (sqrt(vhat) + eps) + wd param), t 1-based. */
static void cpu_adamw_update(CPU_BE, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                             float beta1, float beta2, float eps, float weight_decay, int t) {
    if (t < 1) rt_fatal("adamw_update: step %d is not 1-based", t);
    float m_correction = (float)(1.0 / (1.0 - pow((double)beta1, t)));
    float v_correction = (float)(1.0 / (1.0 - pow((double)beta2, t)));
    size_t spans = (n + CPU_POINTWISE_SPAN - 1) / CPU_POINTWISE_SPAN;
#pragma omp parallel for schedule(static) if (n >= CPU_OMP_MIN_WORK)
    for (size_t s = 0; s < spans; s++) {
        size_t i0 = s * CPU_POINTWISE_SPAN, len = n - i0 < CPU_POINTWISE_SPAN ? n - i0 : CPU_POINTWISE_SPAN;
        cpu_adamw_span(param + i0, grad + i0, m + i0, v + i0, len, lr, beta1, beta2, eps, weight_decay, m_correction,
                       v_correction);
    }
}

/* ----------------------------------------------------------------------------
 * the table
 */

static const rt_backend cpu_backend = {
    .name = "cpu",
    .memory =
        {
            .device_alloc = cpu_device_alloc,
            .device_free = cpu_device_free,
            .memset_zero = cpu_memset_zero,
            .copy = cpu_copy,
        },
    .ops =
        {
            .matmul_forward = cpu_matmul_forward,
            .matmul_backward = cpu_matmul_backward,
            .embedding_forward = cpu_embedding_forward,
            .embedding_backward = cpu_embedding_backward,
            .layernorm_forward = cpu_layernorm_forward,
            .layernorm_backward = cpu_layernorm_backward,
            .rmsnorm_forward = cpu_rmsnorm_forward,
            .rmsnorm_backward = cpu_rmsnorm_backward,
            .rope_forward = cpu_rope_forward,
            .rope_backward = cpu_rope_backward,
            .gelu_forward = cpu_gelu_forward,
            .gelu_backward = cpu_gelu_backward,
            .swiglu_forward = cpu_swiglu_forward,
            .swiglu_backward = cpu_swiglu_backward,
            .add = cpu_add,
            .dropout = cpu_dropout,
            .attn_workspace_bytes = rt_cpu_attn_workspace_bytes,
            .attn_block_forward = rt_cpu_attn_block_forward,
            .attn_delta = rt_cpu_attn_delta,
            .attn_block_backward = rt_cpu_attn_block_backward,
            .softmax_xent = cpu_softmax_xent,
            .sum_squares = cpu_sum_squares,
            .scale = cpu_scale,
            .adamw_update = cpu_adamw_update,
            .synchronize = rt_cpu_synchronize,
        },
    .copy_engine =
        {
            .stream_create = rt_cpu_stream_create,
            .stream_destroy = rt_cpu_stream_destroy,
            .copy_async = rt_cpu_copy_async,
            .event_create = rt_cpu_event_create,
            .event_destroy = rt_cpu_event_destroy,
            .event_record = rt_cpu_event_record,
            .stream_wait_event = rt_cpu_stream_wait_event,
            .event_synchronize = rt_cpu_event_synchronize,
            .event_query = rt_cpu_event_query,
            .host_alloc = rt_cpu_host_alloc,
            .host_free = rt_cpu_host_free,
        },
};

const rt_backend *rt_backend_cpu(void) { return &cpu_backend; }
