/* backend_cuda_ops.cu: CUDA kernels of every op but matmul and attention: embeddings, norms, rope, pointwise, loss. */
/*
 * Conventions (backend.h): N = tokens, C = channels, F = MLP hidden size,
 * V = vocab, Vp = padded vocab (row stride of logits). Row-major fp32
 * device buffers; every *_backward accumulates into its gradients, except
 * the in-place rope_backward and dropout. Every kernel runs on the compute
 * stream; the arithmetic follows backend_cpu.c expression by expression
 * (fp32 where the CPU is fp32, double where it accumulates in double), so
 * results agree with the CPU to rounding of the libm functions.
 *
 * Determinism without atomics. Every reduction has an order fixed by the
 * shape of the call (never by timing, and never by the GPU model except
 * sum_squares' grid, which follows the SM count):
 *  - over the channels of one row (norm statistics, softmax): each lane sums
 *    a fixed stride of the row, then a shuffle butterfly / shared-memory
 *    tree. IEEE addition is commutative, so every lane of the butterfly ends
 *    with the same bits.
 *  - over tokens, per channel (norm weight and bias gradients, matmul's
 *    dbias): pass 1 splits the rows into n_chunks fixed chunks (a function of
 *    N and C only); a block of 8 warps owns 32 channels of one chunk, each
 *    warp takes every 8th row, and the 8 warp sums are added in warp order
 *    into a double partial in op_scratch. Pass 2 adds the partials of each
 *    channel in chunk order. All in double, as the CPU.
 *  - sum_squares: a grid of at most 4 blocks per SM, each thread a fixed
 *    stride, block trees, then one block adds the block sums in a tree.
 *
 * Embedding backward. Rows of dwte collide (repeated tokens), so the CPU
 * has each thread walk all tokens in order for a block of channels: on a
 * GPU that is a serial loop over N. Instead the token ids are radix-sorted
 * with their row index (CUB, stable: equal ids keep increasing row order);
 * then each run of equal ids is one block that starts from the dwte row,
 * adds the dout rows of the run in increasing token order and writes it
 * back. That is exactly the CPU's float addition order, so dwte comes out
 * bit-identical to the CPU, and no two blocks touch one row. dwpe is the same
 * with the positions as keys. The sort buffers live in op_scratch; when N
 * does not fit they are processed in chunks of tokens, in order, which keeps
 * the addition order (and so the bits) unchanged. A very frequent token is
 * one block's serial loop over its run: fine for text, slow only for a
 * batch that is mostly one id.
 *
 * Bad device-side input (a negative token id or position, a target >= V),
 * which the CPU catches with rt_fatal, stops the kernel with a device-side
 * assert (message, block and thread on stderr); the next checked CUDA call
 * then ends the job. It does not depend on NDEBUG.
 *
 * Dropout draws the CPU's mask to the bit: both backends take Philox4x32-10
 * and the mask derivation from runtime/backend/philox.h. The mask key is
 * computed on the host, each thread draws one Philox block for 4 channels
 * of one token.
 */
#include <limits.h>
#include <math.h>
#include <stdint.h>

#include <cub/device/device_radix_sort.cuh>

/* common.h is a C header; C++ spells _Noreturn differently. */
#define _Noreturn __attribute__((noreturn))
extern "C" {
#include "runtime/core/common.h"
}
#undef _Noreturn

#include "backend_cuda.h"
#include "runtime/backend/philox.h"

#define GELU_SCALING_FACTOR 0.7978845608028654f /* sqrt(2/pi) */

/* Threads of a flat or row kernel; grid-stride loops cap the grid at CUDA_MAX_BLOCKS. */
#define CUDA_THREADS 256
#define CUDA_MAX_BLOCKS ((size_t)1 << 20)
/* Row ops with per-row statistics (norms): one warp per row, this many rows per block. */
#define ROW_WARPS 8
/* Softmax: one block per row of Vp logits. */
#define XENT_THREADS 512
/* Token reductions: a block is COL_WIDTH channels x COL_WARPS warps; about COL_TARGET_BLOCKS blocks in all. */
#define COL_WIDTH 32
#define COL_WARPS 8
#define COL_TARGET_BLOCKS 2048
/* Embedding backward: a block owns EMB_THREADS * EMB_PER_THREAD channels of one run of equal ids. */
#define EMB_THREADS 128
#define EMB_PER_THREAD 4
/* Alignment of each array carved out of op_scratch. */
#define SCRATCH_ALIGN 256

/* Stops the kernel with the message when cond is false (see the top comment); kept under NDEBUG. */
#define RT_DEVICE_REQUIRE(cond, message)                                                                               \
    do {                                                                                                               \
        if (!(cond)) __assert_fail(message, __FILE__, __LINE__, __func__);                                             \
    } while (0)

/* ----------------------------------------------------------------------------
 * helpers
 */

static unsigned grid_for(size_t items, size_t per_block) {
    size_t blocks = (items + per_block - 1) / per_block;
    if (blocks == 0) blocks = 1;
    return (unsigned)(blocks < CUDA_MAX_BLOCKS ? blocks : CUDA_MAX_BLOCKS);
}

static int aligned16(const void *ptr) { return ((uintptr_t)ptr & 15) == 0; }

static size_t align_up(size_t bytes) { return (bytes + SCRATCH_ALIGN - 1) / SCRATCH_ALIGN * SCRATCH_ALIGN; }

static __device__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset >>= 1)
        v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

static __device__ float warp_max(float v) {
    for (int offset = 16; offset > 0; offset >>= 1) {
        float other = __shfl_xor_sync(0xffffffffu, v, offset);
        v = other > v ? other : v;
    }
    return v;
}

/* Sum over the block, returned to every thread (each warp reduces the same warp sums). All threads call it. */
static __device__ double block_sum(double v) {
    __shared__ double warp_sums[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = warp_sum(v);
    __syncthreads(); /* readers of the previous call are done */
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    return warp_sum(lane < n_warps ? warp_sums[lane] : 0.0);
}

static __device__ float block_max(float v) {
    __shared__ float warp_maxes[32];
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, n_warps = (blockDim.x + 31) >> 5;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) warp_maxes[warp] = v;
    __syncthreads();
    return warp_max(lane < n_warps ? warp_maxes[lane] : -INFINITY);
}

static __device__ float4 load4(const float *p) { return *(const float4 *)p; }
static __device__ void store4(float *p, float4 v) { *(float4 *)p = v; }

/*
 * Elementwise ops: Op has apply1(i) for one element and apply4(i) for elements i..i+3 with float4 accesses.
 * VEC (every pointer 16-byte aligned) runs groups of 4 and the ragged tail with apply1; otherwise one element
 * per thread.
 */
template <typename Op, bool VEC> static __global__ void pointwise_kernel(Op op, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (VEC) {
        for (size_t g = tid; g < (n + 3) / 4; g += stride) {
            size_t i = g * 4;
            if (i + 4 <= n) {
                op.apply4(i);
            } else {
                for (size_t j = i; j < n; j++)
                    op.apply1(j);
            }
        }
    } else {
        for (size_t i = tid; i < n; i += stride)
            op.apply1(i);
    }
}

template <typename Op> static void launch_pointwise(const rt_backend *be, const Op &op, size_t n, int vec) {
    if (n == 0) return;
    cudaStream_t stream = rt_cuda_compute_stream(be);
    if (vec) {
        pointwise_kernel<Op, true><<<grid_for((n + 3) / 4, CUDA_THREADS), CUDA_THREADS, 0, stream>>>(op, n);
    } else {
        pointwise_kernel<Op, false><<<grid_for(n, CUDA_THREADS), CUDA_THREADS, 0, stream>>>(op, n);
    }
    CUDA_CHECK_LAUNCH();
}

/* ----------------------------------------------------------------------------
 * deterministic reductions over tokens (see the top comment)
 */

enum { COL_SUM, COL_LAYERNORM, COL_RMSNORM };

/* Pass 1: partials (n_chunks, n_out, C) in double. COL_SUM: a = sum dout. COL_LAYERNORM: a = sum norm * dout,
 * b = sum dout. COL_RMSNORM: a = sum dout * (inp * rstd). */
template <int MODE>
static __global__ void column_partials_kernel(double *partials, const float *dout, const float *inp, const float *mean,
                                              const float *rstd, size_t N, int C, size_t rows_per_chunk) {
    __shared__ double shared_a[COL_WARPS][COL_WIDTH];
    __shared__ double shared_b[COL_WARPS][COL_WIDTH];
    const int c = blockIdx.x * COL_WIDTH + threadIdx.x;
    const size_t row_begin = (size_t)blockIdx.y * rows_per_chunk;
    const size_t row_end = row_begin + rows_per_chunk < N ? row_begin + rows_per_chunk : N;
    double acc_a = 0.0, acc_b = 0.0;
    if (c < C) {
        for (size_t n = row_begin + threadIdx.y; n < row_end; n += COL_WARPS) {
            const size_t at = n * (size_t)C + c;
            const float d = dout[at];
            if (MODE == COL_SUM) {
                acc_a += (double)d;
            } else if (MODE == COL_LAYERNORM) {
                float norm = (inp[at] - mean[n]) * rstd[n];
                acc_a += (double)norm * d;
                acc_b += (double)d;
            } else {
                acc_a += (double)d * (inp[at] * rstd[n]);
            }
        }
    }
    shared_a[threadIdx.y][threadIdx.x] = acc_a;
    shared_b[threadIdx.y][threadIdx.x] = acc_b;
    __syncthreads();
    if (threadIdx.y == 0 && c < C) {
        double sum_a = 0.0, sum_b = 0.0;
        for (int w = 0; w < COL_WARPS; w++) {
            sum_a += shared_a[w][threadIdx.x];
            sum_b += shared_b[w][threadIdx.x];
        }
        const int n_out = MODE == COL_LAYERNORM ? 2 : 1;
        double *chunk = partials + (size_t)blockIdx.y * n_out * C;
        chunk[c] = sum_a;
        if (MODE == COL_LAYERNORM) chunk[C + c] = sum_b;
    }
}

/* Pass 2: dst_a (C) += sum over chunks of partials[:, 0, :], dst_b likewise for [:, 1, :]; either may be NULL. */
static __global__ void column_finish_kernel(float *dst_a, float *dst_b, const double *partials, int n_chunks, int C,
                                            int n_out) {
    const size_t width = (size_t)n_out * C;
    for (size_t j = (size_t)blockIdx.x * blockDim.x + threadIdx.x; j < width; j += (size_t)gridDim.x * blockDim.x) {
        double sum = 0.0;
        for (int chunk = 0; chunk < n_chunks; chunk++)
            sum += partials[(size_t)chunk * width + j];
        float *dst = j < (size_t)C ? dst_a : dst_b;
        if (dst) dst[j % C] += (float)sum;
    }
}

static void column_reduce(const rt_backend *be, int mode, float *dst_a, float *dst_b, const float *dout,
                          const float *inp, const float *mean, const float *rstd, size_t N, int C, const char *op) {
    if (N == 0 || C <= 0 || (!dst_a && !dst_b)) return;
    rt_cuda_state *st = rt_cuda_state_of(be);
    const int n_out = mode == COL_LAYERNORM ? 2 : 1;
    const size_t chunk_bytes = (size_t)n_out * (size_t)C * sizeof(double);
    if (chunk_bytes > st->op_scratch_bytes)
        rt_fatal("%s: C = %d needs %zu bytes of reduction scratch, the CUDA backend reserved %zu", op, C, chunk_bytes,
                 st->op_scratch_bytes);
    /* the chunking depends on N and C only, so the sums are the same bits on any GPU */
    const size_t col_blocks = ((size_t)C + COL_WIDTH - 1) / COL_WIDTH;
    size_t n_chunks = (COL_TARGET_BLOCKS + col_blocks - 1) / col_blocks;
    const size_t max_useful = (N + COL_WARPS - 1) / COL_WARPS;
    if (n_chunks > max_useful) n_chunks = max_useful;
    if (n_chunks > st->op_scratch_bytes / chunk_bytes) n_chunks = st->op_scratch_bytes / chunk_bytes;
    if (n_chunks > 65535) n_chunks = 65535;
    const size_t rows_per_chunk = (N + n_chunks - 1) / n_chunks;
    n_chunks = (N + rows_per_chunk - 1) / rows_per_chunk;

    cudaStream_t stream = rt_cuda_compute_stream(be);
    double *partials = (double *)st->op_scratch;
    dim3 grid((unsigned)col_blocks, (unsigned)n_chunks), block(COL_WIDTH, COL_WARPS);
    switch (mode) {
    case COL_SUM:
        column_partials_kernel<COL_SUM>
            <<<grid, block, 0, stream>>>(partials, dout, inp, mean, rstd, N, C, rows_per_chunk);
        break;
    case COL_LAYERNORM:
        column_partials_kernel<COL_LAYERNORM>
            <<<grid, block, 0, stream>>>(partials, dout, inp, mean, rstd, N, C, rows_per_chunk);
        break;
    default:
        column_partials_kernel<COL_RMSNORM>
            <<<grid, block, 0, stream>>>(partials, dout, inp, mean, rstd, N, C, rows_per_chunk);
        break;
    }
    CUDA_CHECK_LAUNCH();
    column_finish_kernel<<<grid_for((size_t)n_out * C, CUDA_THREADS), CUDA_THREADS, 0, stream>>>(
        dst_a, dst_b, partials, (int)n_chunks, C, n_out);
    CUDA_CHECK_LAUNCH();
}

extern "C" void rt_cuda_add_column_sums(const rt_backend *be, float *dst, const float *src, size_t n_rows, int n_cols) {
    column_reduce(be, COL_SUM, dst, NULL, src, NULL, NULL, NULL, n_rows, n_cols, "matmul_backward (dbias)");
}

/* ----------------------------------------------------------------------------
 * embeddings
 */

/* out (N,C) = wte[tokens[n]] (+ wpe[pos[n]]): one block per row. */
static __global__ void embedding_forward_kernel(float *out, const int32_t *tokens, const int64_t *pos, const float *wte,
                                                const float *wpe, size_t N, int C) {
    for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
        const int32_t token = tokens[n];
        RT_DEVICE_REQUIRE(token >= 0, "embedding_forward: negative token id");
        const float *wte_row = wte + (size_t)token * C;
        float *out_row = out + n * (size_t)C;
        if (wpe) {
            const int64_t position = pos[n];
            RT_DEVICE_REQUIRE(position >= 0, "embedding_forward: negative position");
            const float *wpe_row = wpe + (size_t)position * C;
            for (int c = threadIdx.x; c < C; c += blockDim.x)
                out_row[c] = wte_row[c] + wpe_row[c];
        } else {
            for (int c = threadIdx.x; c < C; c += blockDim.x)
                out_row[c] = wte_row[c];
        }
    }
}

static void cuda_embedding_forward(const rt_backend *be, float *out, const int32_t *tokens, const int64_t *pos,
                                   const float *wte, const float *wpe, size_t N, int C) {
    if (N == 0 || C <= 0) return;
    embedding_forward_kernel<<<grid_for(N, 1), CUDA_THREADS, 0, rt_cuda_compute_stream(be)>>>(out, tokens, pos, wte,
                                                                                              wpe, N, C);
    CUDA_CHECK_LAUNCH();
}

/* Sort inputs of one chunk of n_items tokens: the row index of each and, for dwpe, its position as a 32-bit key. */
static __global__ void embedding_sort_prep_kernel(uint32_t *row_index, uint32_t *pos_keys, const int32_t *tokens,
                                                  const int64_t *pos, size_t n_items) {
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_items; i += (size_t)gridDim.x * blockDim.x) {
        row_index[i] = (uint32_t)i;
        RT_DEVICE_REQUIRE(tokens[i] >= 0, "embedding_backward: negative token id");
        if (pos_keys) {
            const int64_t position = pos[i];
            RT_DEVICE_REQUIRE(position >= 0 && position <= INT32_MAX,
                              "embedding_backward: position negative or beyond 2^31");
            pos_keys[i] = (uint32_t)position;
        }
    }
}

/* table[sorted_keys[i]] += dout rows of the run of equal keys starting at i, in the sorted (= token) order; a
 * block of the grid's x takes one run start, its y one slice of channels. */
static __global__ void embedding_runs_kernel(float *table, const float *dout, const uint32_t *sorted_keys,
                                             const uint32_t *sorted_rows, size_t n_items, int C) {
    const int c_first = blockIdx.y * (EMB_THREADS * EMB_PER_THREAD) + threadIdx.x;
    for (size_t i = blockIdx.x; i < n_items; i += gridDim.x) {
        const uint32_t key = sorted_keys[i];
        if (i > 0 && sorted_keys[i - 1] == key) continue; /* inside a run: its first element's block does it */
        float *table_row = table + (size_t)key * C;
        float acc[EMB_PER_THREAD];
#pragma unroll
        for (int k = 0; k < EMB_PER_THREAD; k++) {
            const int c = c_first + k * EMB_THREADS;
            acc[k] = c < C ? table_row[c] : 0.0f;
        }
        for (size_t j = i; j < n_items && sorted_keys[j] == key; j++) {
            const float *dout_row = dout + (size_t)sorted_rows[j] * C;
#pragma unroll
            for (int k = 0; k < EMB_PER_THREAD; k++) {
                const int c = c_first + k * EMB_THREADS;
                if (c < C) acc[k] += dout_row[c];
            }
        }
#pragma unroll
        for (int k = 0; k < EMB_PER_THREAD; k++) {
            const int c = c_first + k * EMB_THREADS;
            if (c < C) table_row[c] = acc[k];
        }
    }
}

/* The sort buffers of one chunk of tokens, carved out of op_scratch. */
typedef struct {
    uint32_t *pos_keys;    /* positions as keys (dwpe) */
    uint32_t *row_index;   /* 0..n-1, the sort's values */
    uint32_t *sorted_keys; /* sort output */
    uint32_t *sorted_rows; /* sort output: row index of each sorted key */
    void *sort_temp;
    size_t sort_temp_bytes;
} embedding_sort_buffers;

static size_t sort_temp_bytes_for(size_t n_items) {
    size_t bytes = 0;
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(NULL, bytes, (const uint32_t *)NULL, (uint32_t *)NULL,
                                               (const uint32_t *)NULL, (uint32_t *)NULL, (int)n_items, 0, 31));
    return bytes;
}

/* The largest chunk of tokens (at most N) whose buffers fit in op_scratch; the bits do not depend on it. */
static size_t embedding_chunk_tokens(const rt_cuda_state *st, size_t N) {
    size_t chunk = st->op_scratch_bytes / (8 * sizeof(uint32_t));
    if (chunk > N) chunk = N;
    if (chunk > (size_t)INT_MAX) chunk = INT_MAX;
    while (chunk > 0 && 4 * align_up(chunk * sizeof(uint32_t)) + sort_temp_bytes_for(chunk) > st->op_scratch_bytes)
        chunk /= 2;
    if (chunk == 0)
        rt_fatal("embedding_backward: the CUDA backend's scratch of %zu bytes holds no sort", st->op_scratch_bytes);
    return chunk;
}

static embedding_sort_buffers embedding_buffers(const rt_cuda_state *st, size_t chunk) {
    embedding_sort_buffers buf;
    char *at = (char *)st->op_scratch;
    const size_t array_bytes = align_up(chunk * sizeof(uint32_t));
    buf.pos_keys = (uint32_t *)at;
    buf.row_index = (uint32_t *)(at + array_bytes);
    buf.sorted_keys = (uint32_t *)(at + 2 * array_bytes);
    buf.sorted_rows = (uint32_t *)(at + 3 * array_bytes);
    buf.sort_temp = at + 4 * array_bytes;
    buf.sort_temp_bytes = st->op_scratch_bytes - 4 * array_bytes;
    return buf;
}

/* Sorts (keys, row_index) of n_items tokens and adds their dout rows into table by runs of equal keys. */
static void embedding_accumulate(const rt_backend *be, const embedding_sort_buffers *buf, float *table,
                                 const uint32_t *keys, const float *dout, size_t n_items, int C) {
    cudaStream_t stream = rt_cuda_compute_stream(be);
    size_t temp_bytes = buf->sort_temp_bytes;
    /* ids and positions are below 2^31 (checked), so 31 key bits order them */
    CUDA_CHECK(cub::DeviceRadixSort::SortPairs(buf->sort_temp, temp_bytes, keys, buf->sorted_keys, buf->row_index,
                                               buf->sorted_rows, (int)n_items, 0, 31, stream));
    const size_t channels_per_block = EMB_THREADS * EMB_PER_THREAD;
    dim3 grid(grid_for(n_items, 1), (unsigned)(((size_t)C + channels_per_block - 1) / channels_per_block));
    embedding_runs_kernel<<<grid, EMB_THREADS, 0, stream>>>(table, dout, buf->sorted_keys, buf->sorted_rows, n_items,
                                                            C);
    CUDA_CHECK_LAUNCH();
}

/* dwte[tokens[n]] += dout[n]; dwpe[pos[n]] += dout[n] (either may be NULL), by sorted runs (top comment). */
static void cuda_embedding_backward(const rt_backend *be, float *dwte, float *dwpe, const float *dout,
                                    const int32_t *tokens, const int64_t *pos, size_t N, int C) {
    if (N == 0 || C <= 0 || (!dwte && !dwpe)) return;
    if ((size_t)C > (size_t)65535 * EMB_THREADS * EMB_PER_THREAD)
        rt_fatal("embedding_backward: C = %d is beyond the kernel's grid", C);
    const rt_cuda_state *st = rt_cuda_state_of(be);
    const size_t chunk = embedding_chunk_tokens(st, N);
    const embedding_sort_buffers buf = embedding_buffers(st, chunk);
    cudaStream_t stream = rt_cuda_compute_stream(be);
    for (size_t n0 = 0; n0 < N; n0 += chunk) {
        const size_t n_items = N - n0 < chunk ? N - n0 : chunk;
        const float *dout_chunk = dout + n0 * (size_t)C;
        embedding_sort_prep_kernel<<<grid_for(n_items, CUDA_THREADS), CUDA_THREADS, 0, stream>>>(
            buf.row_index, dwpe ? buf.pos_keys : NULL, tokens + n0, dwpe ? pos + n0 : NULL, n_items);
        CUDA_CHECK_LAUNCH();
        if (dwte) embedding_accumulate(be, &buf, dwte, (const uint32_t *)(tokens + n0), dout_chunk, n_items, C);
        if (dwpe) embedding_accumulate(be, &buf, dwpe, buf.pos_keys, dout_chunk, n_items, C);
    }
}

/* ----------------------------------------------------------------------------
 * norms: one warp per row
 */

/* Warp w of block b takes rows b * ROW_WARPS + w, then a grid's worth further; the row is warp-uniform, so the
 * shuffles see all 32 lanes. */
static unsigned row_warp_grid(size_t N) { return grid_for(N, ROW_WARPS); }

static __global__ void layernorm_forward_kernel(float *out, float *mean, float *rstd, const float *inp,
                                                const float *weight, const float *bias, size_t N, int C, float eps) {
    const int lane = threadIdx.x & 31;
    const size_t row_step = (size_t)gridDim.x * ROW_WARPS;
    for (size_t n = (size_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); n < N; n += row_step) {
        const float *x = inp + n * (size_t)C;
        float *out_row = out + n * (size_t)C;
        double sum = 0.0;
        for (int c = lane; c < C; c += 32)
            sum += x[c];
        const double m = warp_sum(sum) / C;
        double var = 0.0;
        for (int c = lane; c < C; c += 32) {
            double shift = x[c] - m;
            var += shift * shift;
        }
        var = warp_sum(var);
        const float mean_n = (float)m;
        const float rstd_n = (float)(1.0 / sqrt(var / C + (double)eps));
        for (int c = lane; c < C; c += 32) {
            float norm = (x[c] - mean_n) * rstd_n;
            out_row[c] = norm * weight[c] + (bias ? bias[c] : 0.0f);
        }
        if (lane == 0) {
            if (mean) mean[n] = mean_n;
            if (rstd) rstd[n] = rstd_n;
        }
    }
}

static void cuda_layernorm_forward(const rt_backend *be, float *out, float *mean, float *rstd, const float *inp,
                                   const float *weight, const float *bias, size_t N, int C, float eps) {
    if (N == 0 || C <= 0) return;
    layernorm_forward_kernel<<<row_warp_grid(N), ROW_WARPS * 32, 0, rt_cuda_compute_stream(be)>>>(
        out, mean, rstd, inp, weight, bias, N, C, eps);
    CUDA_CHECK_LAUNCH();
}

/* dinp += rstd * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)), dnorm = weight * dout. */
static __global__ void layernorm_backward_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                                      const float *weight, const float *mean, const float *rstd,
                                                      size_t N, int C) {
    const int lane = threadIdx.x & 31;
    const size_t row_step = (size_t)gridDim.x * ROW_WARPS;
    for (size_t n = (size_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); n < N; n += row_step) {
        const float *x = inp + n * (size_t)C;
        const float *dout_row = dout + n * (size_t)C;
        float *dinp_row = dinp + n * (size_t)C;
        const float mean_n = mean[n], rstd_n = rstd[n];
        double dnorm_sum = 0.0, dnorm_norm_sum = 0.0;
        for (int c = lane; c < C; c += 32) {
            float norm = (x[c] - mean_n) * rstd_n;
            float dnorm = weight[c] * dout_row[c];
            dnorm_sum += dnorm;
            dnorm_norm_sum += (double)dnorm * norm;
        }
        const float dnorm_mean = (float)(warp_sum(dnorm_sum) / C);
        const float dnorm_norm_mean = (float)(warp_sum(dnorm_norm_sum) / C);
        for (int c = lane; c < C; c += 32) {
            float norm = (x[c] - mean_n) * rstd_n;
            float dnorm = weight[c] * dout_row[c];
            dinp_row[c] += (dnorm - dnorm_mean - norm * dnorm_norm_mean) * rstd_n;
        }
    }
}

static void cuda_layernorm_backward(const rt_backend *be, float *dinp, float *dweight, float *dbias, const float *dout,
                                    const float *inp, const float *weight, const float *mean, const float *rstd,
                                    size_t N, int C) {
    if (N == 0 || C <= 0) return;
    if (dinp) {
        layernorm_backward_dinp_kernel<<<row_warp_grid(N), ROW_WARPS * 32, 0, rt_cuda_compute_stream(be)>>>(
            dinp, dout, inp, weight, mean, rstd, N, C);
        CUDA_CHECK_LAUNCH();
    }
    column_reduce(be, COL_LAYERNORM, dweight, dbias, dout, inp, mean, rstd, N, C, "layernorm_backward");
}

static __global__ void rmsnorm_forward_kernel(float *out, float *rstd, const float *inp, const float *weight, size_t N,
                                              int C, float eps) {
    const int lane = threadIdx.x & 31;
    const size_t row_step = (size_t)gridDim.x * ROW_WARPS;
    for (size_t n = (size_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); n < N; n += row_step) {
        const float *x = inp + n * (size_t)C;
        float *out_row = out + n * (size_t)C;
        double sum_sq = 0.0;
        for (int c = lane; c < C; c += 32)
            sum_sq += (double)x[c] * x[c];
        const float rstd_n = (float)(1.0 / sqrt(warp_sum(sum_sq) / C + (double)eps));
        for (int c = lane; c < C; c += 32)
            out_row[c] = x[c] * rstd_n * weight[c];
        if (lane == 0 && rstd) rstd[n] = rstd_n;
    }
}

static void cuda_rmsnorm_forward(const rt_backend *be, float *out, float *rstd, const float *inp, const float *weight,
                                 size_t N, int C, float eps) {
    if (N == 0 || C <= 0) return;
    rmsnorm_forward_kernel<<<row_warp_grid(N), ROW_WARPS * 32, 0, rt_cuda_compute_stream(be)>>>(out, rstd, inp, weight,
                                                                                                N, C, eps);
    CUDA_CHECK_LAUNCH();
}

/* dinp += rstd * weight * dout - inp * rstd^3 / C * sum_c(dout * weight * inp). */
static __global__ void rmsnorm_backward_dinp_kernel(float *dinp, const float *dout, const float *inp,
                                                    const float *weight, const float *rstd, size_t N, int C) {
    const int lane = threadIdx.x & 31;
    const size_t row_step = (size_t)gridDim.x * ROW_WARPS;
    for (size_t n = (size_t)blockIdx.x * ROW_WARPS + (threadIdx.x >> 5); n < N; n += row_step) {
        const float *x = inp + n * (size_t)C;
        const float *dout_row = dout + n * (size_t)C;
        float *dinp_row = dinp + n * (size_t)C;
        const float rstd_n = rstd[n];
        double dot = 0.0;
        for (int c = lane; c < C; c += 32)
            dot += (double)dout_row[c] * weight[c] * x[c];
        const float coef = (float)(warp_sum(dot) * rstd_n * rstd_n * rstd_n / C);
        for (int c = lane; c < C; c += 32)
            dinp_row[c] += rstd_n * weight[c] * dout_row[c] - x[c] * coef;
    }
}

static void cuda_rmsnorm_backward(const rt_backend *be, float *dinp, float *dweight, const float *dout,
                                  const float *inp, const float *weight, const float *rstd, size_t N, int C) {
    if (N == 0 || C <= 0) return;
    if (dinp) {
        rmsnorm_backward_dinp_kernel<<<row_warp_grid(N), ROW_WARPS * 32, 0, rt_cuda_compute_stream(be)>>>(
            dinp, dout, inp, weight, rstd, N, C);
        CUDA_CHECK_LAUNCH();
    }
    column_reduce(be, COL_RMSNORM, dweight, NULL, dout, inp, NULL, rstd, N, C, "rmsnorm_backward");
}

/* ----------------------------------------------------------------------------
 * position
 */

/* One thread per (token, pair i): the angle in double as the CPU (float would be off by a radian fraction at
 * positions near 1e6), then the same rotation for each head. */
static __global__ void rope_kernel(float *x, const int64_t *pos, size_t N, int n_heads, int head_dim, size_t stride,
                                   float theta, double sign) {
    const int half = head_dim / 2;
    const size_t total = N * (size_t)half;
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t n = idx / half;
        const int i = (int)(idx - n * half);
        const double inv_freq = pow((double)theta, -2.0 * i / head_dim);
        const double angle = sign * (double)pos[n] * inv_freq;
        const float cos_a = (float)cos(angle), sin_a = (float)sin(angle);
        float *row = x + n * stride;
        for (int h = 0; h < n_heads; h++) {
            float *pair = row + (size_t)h * head_dim + 2 * i;
            const float x0 = pair[0], x1 = pair[1];
            pair[0] = x0 * cos_a - x1 * sin_a;
            pair[1] = x0 * sin_a + x1 * cos_a;
        }
    }
}

static void cuda_rope_rotate(const rt_backend *be, float *x, const int64_t *pos, size_t N, int n_heads, int head_dim,
                             size_t stride, float theta, double sign) {
    if (head_dim % 2 != 0) rt_fatal("rope: head_dim %d is odd", head_dim);
    if (N == 0 || n_heads <= 0 || head_dim <= 0) return;
    const size_t total = N * (size_t)(head_dim / 2);
    rope_kernel<<<grid_for(total, CUDA_THREADS), CUDA_THREADS, 0, rt_cuda_compute_stream(be)>>>(
        x, pos, N, n_heads, head_dim, stride, theta, sign);
    CUDA_CHECK_LAUNCH();
}

static void cuda_rope_forward(const rt_backend *be, float *x, const int64_t *pos, size_t N, int n_heads, int head_dim,
                              size_t stride, float theta) {
    cuda_rope_rotate(be, x, pos, N, n_heads, head_dim, stride, theta, 1.0);
}

/* The rotation is orthogonal: the gradient goes back through rotation by -angle. */
static void cuda_rope_backward(const rt_backend *be, float *dx, const int64_t *pos, size_t N, int n_heads, int head_dim,
                               size_t stride, float theta) {
    cuda_rope_rotate(be, dx, pos, N, n_heads, head_dim, stride, theta, -1.0);
}

/* ----------------------------------------------------------------------------
 * pointwise
 */

static __device__ float gelu(float x) {
    float cube = 0.044715f * x * x * x;
    return 0.5f * x * (1.0f + tanhf(GELU_SCALING_FACTOR * (x + cube)));
}

/* sech^2 from coshf (accurate in the tails; coshf overflows to inf, giving the limit 0). The CPU computes it from
 * exp(-|z|) instead: the two agree within the tests' tolerance, not bit for bit. */
static __device__ float gelu_grad(float x) {
    float cube = 0.044715f * x * x * x;
    float tanh_arg = GELU_SCALING_FACTOR * (x + cube);
    float tanh_out = tanhf(tanh_arg);
    float cosh_out = coshf(tanh_arg);
    float sech_sq = 1.0f / (cosh_out * cosh_out);
    return 0.5f * (1.0f + tanh_out) + x * 0.5f * sech_sq * GELU_SCALING_FACTOR * (1.0f + 3.0f * 0.044715f * x * x);
}

struct gelu_forward_op {
    float *out;
    const float *inp;
    __device__ void apply1(size_t i) const { out[i] = gelu(inp[i]); }
    __device__ void apply4(size_t i) const {
        float4 x = load4(inp + i);
        store4(out + i, make_float4(gelu(x.x), gelu(x.y), gelu(x.z), gelu(x.w)));
    }
};

struct gelu_backward_op {
    float *dinp;
    const float *inp, *dout;
    __device__ void apply1(size_t i) const { dinp[i] += gelu_grad(inp[i]) * dout[i]; }
    __device__ void apply4(size_t i) const {
        float4 x = load4(inp + i), d = load4(dout + i), acc = load4(dinp + i);
        acc.x += gelu_grad(x.x) * d.x;
        acc.y += gelu_grad(x.y) * d.y;
        acc.z += gelu_grad(x.z) * d.z;
        acc.w += gelu_grad(x.w) * d.w;
        store4(dinp + i, acc);
    }
};

static void cuda_gelu_forward(const rt_backend *be, float *out, const float *inp, size_t n) {
    gelu_forward_op op = {out, inp};
    launch_pointwise(be, op, n, aligned16(out) && aligned16(inp));
}

static void cuda_gelu_backward(const rt_backend *be, float *dinp, const float *inp, const float *dout, size_t n) {
    gelu_backward_op op = {dinp, inp, dout};
    launch_pointwise(be, op, n, aligned16(dinp) && aligned16(inp) && aligned16(dout));
}

static __device__ float sigmoid(float x) { return 1.0f / (1.0f + expf(-x)); }

/* out (N,F) = silu(gate) * up; gate_up (N,2F) = [gate | up]: one block per row. */
static __global__ void swiglu_forward_kernel(float *out, const float *gate_up, size_t N, int F) {
    for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *gate = gate_up + n * 2 * (size_t)F;
        const float *up = gate + F;
        float *out_row = out + n * (size_t)F;
        for (int f = threadIdx.x; f < F; f += blockDim.x)
            out_row[f] = gate[f] * sigmoid(gate[f]) * up[f];
    }
}

/* dgate += dout * up * sig (1 + gate (1 - sig)); dup += dout * silu(gate). */
static __global__ void swiglu_backward_kernel(float *dgate_up, const float *dout, const float *gate_up, size_t N,
                                              int F) {
    for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
        const float *gate = gate_up + n * 2 * (size_t)F;
        const float *up = gate + F;
        float *dgate = dgate_up + n * 2 * (size_t)F;
        float *dup = dgate + F;
        const float *dout_row = dout + n * (size_t)F;
        for (int f = threadIdx.x; f < F; f += blockDim.x) {
            float sig = sigmoid(gate[f]);
            float silu = gate[f] * sig;
            dgate[f] += dout_row[f] * up[f] * sig * (1.0f + gate[f] * (1.0f - sig));
            dup[f] += dout_row[f] * silu;
        }
    }
}

static void cuda_swiglu_forward(const rt_backend *be, float *out, const float *gate_up, size_t N, int F) {
    if (N == 0 || F <= 0) return;
    swiglu_forward_kernel<<<grid_for(N, 1), CUDA_THREADS, 0, rt_cuda_compute_stream(be)>>>(out, gate_up, N, F);
    CUDA_CHECK_LAUNCH();
}

static void cuda_swiglu_backward(const rt_backend *be, float *dgate_up, const float *dout, const float *gate_up,
                                 size_t N, int F) {
    if (N == 0 || F <= 0) return;
    swiglu_backward_kernel<<<grid_for(N, 1), CUDA_THREADS, 0, rt_cuda_compute_stream(be)>>>(dgate_up, dout, gate_up, N,
                                                                                            F);
    CUDA_CHECK_LAUNCH();
}

struct add_op {
    float *out;
    const float *a, *b;
    __device__ void apply1(size_t i) const { out[i] = a[i] + b[i]; }
    __device__ void apply4(size_t i) const {
        float4 x = load4(a + i), y = load4(b + i);
        store4(out + i, make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w));
    }
};

static void cuda_add(const rt_backend *be, float *out, const float *a, const float *b, size_t n) {
    add_op op = {out, a, b};
    launch_pointwise(be, op, n, aligned16(out) && aligned16(a) && aligned16(b));
}

/* ----------------------------------------------------------------------------
 * dropout: Philox4x32-10 (philox.h, shared with the CPU backend bit for bit)
 */

/* One thread per (token n, channel group g of 4): the bits of rt_dropout_group_bits(mask key, g, pos[n]). */
static __global__ void dropout_kernel(float *x, const int64_t *pos, size_t N, int C, float p, float keep_scale,
                                      uint32_t mask_key0, uint32_t mask_key1) {
    const int groups = (C + 3) / 4;
    const size_t total = N * (size_t)groups;
    const uint32_t mask_key[2] = {mask_key0, mask_key1};
    for (size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x; idx < total;
         idx += (size_t)gridDim.x * blockDim.x) {
        const size_t n = idx / groups;
        const int g = (int)(idx - n * groups);
        uint32_t bits[4];
        rt_dropout_group_bits(mask_key, (uint32_t)g, (uint64_t)pos[n], bits);
        float *group = x + n * (size_t)C + 4 * (size_t)g;
        const int width = C - 4 * g < 4 ? C - 4 * g : 4;
#pragma unroll
        for (int j = 0; j < 4; j++) {
            if (j < width) group[j] = rt_dropout_keep(bits[j], p) ? group[j] * keep_scale : 0.0f;
        }
    }
}

static void cuda_dropout(const rt_backend *be, float *x, const int64_t *pos, size_t N, int C, float p, rt_rng_key key) {
    if (p == 0.0f) return;
    if (!(p > 0.0f && p < 1.0f)) rt_fatal("dropout: probability %g is outside [0, 1)", (double)p);
    if (N == 0 || C <= 0) return;
    uint32_t mask_key[2];
    rt_dropout_mask_key(key, mask_key);
    const float keep_scale = 1.0f / (1.0f - p);
    const size_t total = N * (size_t)((C + 3) / 4);
    dropout_kernel<<<grid_for(total, CUDA_THREADS), CUDA_THREADS, 0, rt_cuda_compute_stream(be)>>>(
        x, pos, N, C, p, keep_scale, mask_key[0], mask_key[1]);
    CUDA_CHECK_LAUNCH();
}

/* ----------------------------------------------------------------------------
 * loss
 */

/* One block per row i of logits (n,Vp): loss = logsumexp(logits[0..V)) - logits[t]; with dloss_scale != 0 the
 * row becomes (softmax - onehot(t)) * dloss_scale over [0,V) and 0 over [V,Vp); t < 0 gives 0 and 0. The target
 * logit is read before the reductions' barriers, every write comes after them, each element by its reader. */
static __global__ void softmax_xent_kernel(float *logits, float *losses, const int32_t *targets, size_t n, int V,
                                           int Vp, float dloss_scale) {
    for (size_t i = blockIdx.x; i < n; i += gridDim.x) {
        float *row = logits + i * (size_t)Vp;
        const int target = targets[i];
        RT_DEVICE_REQUIRE(target < V, "softmax_xent: target outside the vocab");
        if (target < 0) { /* block-uniform: no thread reaches a barrier of this row */
            if (threadIdx.x == 0) losses[i] = 0.0f;
            if (dloss_scale != 0.0f) {
                for (int j = threadIdx.x; j < Vp; j += blockDim.x)
                    row[j] = 0.0f;
            }
            continue;
        }
        const float target_logit = row[target];
        float max_logit = -INFINITY;
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            max_logit = row[j] > max_logit ? row[j] : max_logit;
        max_logit = block_max(max_logit);
        double sum = 0.0;
        for (int j = threadIdx.x; j < V; j += blockDim.x)
            sum += expf(row[j] - max_logit);
        sum = block_sum(sum);
        if (dloss_scale != 0.0f) {
            const float norm = (float)(dloss_scale / sum);
            for (int j = threadIdx.x; j < V; j += blockDim.x) {
                float dlogit = expf(row[j] - max_logit) * norm;
                if (j == target) dlogit -= dloss_scale;
                row[j] = dlogit;
            }
            for (int j = V + threadIdx.x; j < Vp; j += blockDim.x)
                row[j] = 0.0f;
        }
        if (threadIdx.x == 0) losses[i] = (float)(log(sum) + (double)max_logit - (double)target_logit);
    }
}

static void cuda_softmax_xent(const rt_backend *be, float *logits, float *losses, const int32_t *targets, size_t n,
                              int V, int Vp, float dloss_scale) {
    if (n == 0) return;
    if (V <= 0 || Vp < V) rt_fatal("softmax_xent: vocab %d with row stride %d", V, Vp);
    softmax_xent_kernel<<<grid_for(n, 1), XENT_THREADS, 0, rt_cuda_compute_stream(be)>>>(logits, losses, targets, n, V,
                                                                                         Vp, dloss_scale);
    CUDA_CHECK_LAUNCH();
}

/* ----------------------------------------------------------------------------
 * reductions and optimizer
 */

/* partials[block] = sum of x^2 (double) over the block's fixed share: float4 groups when VEC, then the tail. */
template <bool VEC> static __global__ void sum_squares_partials_kernel(double *partials, const float *x, size_t n) {
    const size_t stride = (size_t)gridDim.x * blockDim.x;
    const size_t tid = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    double acc = 0.0;
    size_t scalar_begin = 0;
    if (VEC) {
        const size_t n_groups = n / 4;
        for (size_t g = tid; g < n_groups; g += stride) {
            float4 v = load4(x + 4 * g);
            acc += (double)v.x * v.x + (double)v.y * v.y + (double)v.z * v.z + (double)v.w * v.w;
        }
        scalar_begin = n_groups * 4;
    }
    for (size_t i = scalar_begin + tid; i < n; i += stride)
        acc += (double)x[i] * x[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

/* partials[0] = sum of partials[0..count): one block; all reads precede block_sum's barriers, the write follows. */
static __global__ void sum_partials_kernel(double *partials, int count) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x)
        acc += partials[i];
    acc = block_sum(acc);
    if (threadIdx.x == 0) partials[0] = acc;
}

/* Returned to the host, so it waits for the compute stream (and with it every op before). */
static double cuda_sum_squares(const rt_backend *be, const float *x, size_t n) {
    rt_cuda_state *st = rt_cuda_state_of(be);
    cudaStream_t stream = st->compute;
    if (n == 0) {
        CUDA_CHECK(cudaStreamSynchronize(stream));
        return 0.0;
    }
    const int vec = aligned16(x);
    size_t max_blocks = (size_t)st->n_sms * CUDA_REDUCE_BLOCKS_PER_SM; /* the size of reduce_scratch */
    const size_t items = vec ? (n + 3) / 4 : n;                        /* float4s or floats */
    size_t blocks = (items + CUDA_THREADS - 1) / CUDA_THREADS;         /* n > 0: at least 1 */
    if (blocks > max_blocks) blocks = max_blocks;
    if (vec)
        sum_squares_partials_kernel<true><<<(unsigned)blocks, CUDA_THREADS, 0, stream>>>(st->reduce_scratch, x, n);
    else
        sum_squares_partials_kernel<false><<<(unsigned)blocks, CUDA_THREADS, 0, stream>>>(st->reduce_scratch, x, n);
    CUDA_CHECK_LAUNCH();
    sum_partials_kernel<<<1, CUDA_THREADS, 0, stream>>>(st->reduce_scratch, (int)blocks);
    CUDA_CHECK_LAUNCH();
    CUDA_CHECK(cudaMemcpyAsync(st->reduce_host, st->reduce_scratch, sizeof(double), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    return *st->reduce_host;
}

struct scale_op {
    float *x;
    float factor;
    __device__ void apply1(size_t i) const { x[i] *= factor; }
    __device__ void apply4(size_t i) const {
        float4 v = load4(x + i);
        store4(x + i, make_float4(v.x * factor, v.y * factor, v.z * factor, v.w * factor));
    }
};

static void cuda_scale(const rt_backend *be, float *x, float factor, size_t n) {
    scale_op op = {x, factor};
    launch_pointwise(be, op, n, aligned16(x));
}

struct adamw_op {
    float *param, *m, *v;
    const float *grad;
    float lr, beta1, beta2, eps, weight_decay, m_correction, v_correction;

    /* one element, given and returning its values, in the CPU's expression order */
    __device__ void step(float &p, float g, float &m_i, float &v_i) const {
        m_i = beta1 * m_i + (1.0f - beta1) * g;
        v_i = beta2 * v_i + (1.0f - beta2) * g * g;
        float m_hat = m_i * m_correction;
        float v_hat = v_i * v_correction;
        p -= lr * (m_hat / (sqrtf(v_hat) + eps) + weight_decay * p);
    }
    __device__ void apply1(size_t i) const {
        float p = param[i], m_i = m[i], v_i = v[i];
        step(p, grad[i], m_i, v_i);
        param[i] = p;
        m[i] = m_i;
        v[i] = v_i;
    }
    __device__ void apply4(size_t i) const {
        float4 p = load4(param + i), g = load4(grad + i), m4 = load4(m + i), v4 = load4(v + i);
        step(p.x, g.x, m4.x, v4.x);
        step(p.y, g.y, m4.y, v4.y);
        step(p.z, g.z, m4.z, v4.z);
        step(p.w, g.w, m4.w, v4.w);
        store4(param + i, p);
        store4(m + i, m4);
        store4(v + i, v4);
    }
};

static void cuda_adamw_update(const rt_backend *be, float *param, const float *grad, float *m, float *v, size_t n,
                              float lr, float beta1, float beta2, float eps, float weight_decay, int t) {
    if (t < 1) rt_fatal("adamw_update: step %d is not 1-based", t);
    adamw_op op;
    op.param = param;
    op.m = m;
    op.v = v;
    op.grad = grad;
    op.lr = lr;
    op.beta1 = beta1;
    op.beta2 = beta2;
    op.eps = eps;
    op.weight_decay = weight_decay;
    op.m_correction = (float)(1.0 / (1.0 - pow((double)beta1, t)));
    op.v_correction = (float)(1.0 / (1.0 - pow((double)beta2, t)));
    launch_pointwise(be, op, n, aligned16(param) && aligned16(grad) && aligned16(m) && aligned16(v));
}

/* ----------------------------------------------------------------------------
 * the table
 */

extern "C" void rt_cuda_fill_pointwise_ops(rt_backend_ops *ops) {
    ops->embedding_forward = cuda_embedding_forward;
    ops->embedding_backward = cuda_embedding_backward;
    ops->layernorm_forward = cuda_layernorm_forward;
    ops->layernorm_backward = cuda_layernorm_backward;
    ops->rmsnorm_forward = cuda_rmsnorm_forward;
    ops->rmsnorm_backward = cuda_rmsnorm_backward;
    ops->rope_forward = cuda_rope_forward;
    ops->rope_backward = cuda_rope_backward;
    ops->gelu_forward = cuda_gelu_forward;
    ops->gelu_backward = cuda_gelu_backward;
    ops->swiglu_forward = cuda_swiglu_forward;
    ops->swiglu_backward = cuda_swiglu_backward;
    ops->add = cuda_add;
    ops->dropout = cuda_dropout;
    ops->softmax_xent = cuda_softmax_xent;
    ops->sum_squares = cuda_sum_squares;
    ops->scale = cuda_scale;
    ops->adamw_update = cuda_adamw_update;
}
