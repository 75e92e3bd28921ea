/* backend_cuda_attention.cu: flash-style attention blocks on bf16 tensor cores (WMMA): block forward merged into a
 * running (out, lse), delta, and a deterministic backward (dK/dV per key tile, dQ per query tile). */
#include <cuda_bf16.h>
#include <cuda_runtime.h>
#include <mma.h>

#include <limits.h>
#include <math.h>
#include <stdint.h>

#include "backend_cuda.h"

/* common.h is a C header; C++ spells _Noreturn differently. */
#define _Noreturn __attribute__((noreturn))
extern "C" {
#include "runtime/core/common.h"
}
#undef _Noreturn

/*
 * Conventions (as in backend_cpu_attention.c): Tq query tokens, Tk key
 * tokens of one block, H query heads, Hkv key/value heads, D head dim,
 * G = H / Hkv query heads per kv head (query head h reads kv head h / G).
 * q (Tq rows at q_stride) holds head h at columns [h*D, (h+1)*D); k and v
 * (Tk rows at kv_stride) hold kv head g at [g*D, (g+1)*D); out and dout
 * (Tq rows at out_stride) like q; lse, delta (Tq, H) contiguous. The
 * softmax scale is 1/sqrt(D), lse is in natural log. Same semantics as the
 * CPU reference: key j is hidden from query i when causal and
 * k_pos[j] > q_pos[i], or when q_first is given (packed documents) and
 * k_pos[j] < q_first[i]; a query that sees no key of a block leaves its
 * out/lse row untouched; backward uses the final lse and delta and ADDS
 * into dq, dk, dv; a query whose final lse is -inf (it saw no key at all)
 * gets no gradient.
 *
 * Tiles. Every kernel works on tiles of TILE = 64 query rows and TILE key
 * rows, with 4 warps (128 threads) per CTA; warp w owns the 16 rows
 * [16w, 16w + 16) of the CTA's own tile (queries in the forward and the dQ
 * kernel, keys in the dK/dV kernel). The head dim is padded to DP, the
 * next of 16, 32, 64, 128 (the kernels are templates on DP): padded
 * columns and tail rows are loaded as zeros, so they add nothing to any
 * product and are never written back. Head dims above 128 are refused
 * (rt_fatal naming D).
 *
 * Precision. Inputs are fp32 in global memory. They are rounded to bf16
 * once, when a tile of q, k, v or dout is copied into shared memory
 * (load_tile); the products run on the tensor cores with fp32 accumulation
 * (WMMA 16x16x16). The probabilities P (forward, dK/dV kernel) and dS
 * (backward) are rounded to bf16 where they are written to shared memory
 * as the A operand of the next product. Everything else is fp32: scores,
 * the running max and sum, the merge, lse, delta, and the accumulated
 * dQ/dK/dV before they are added to the fp32 gradients. The error this
 * adds grows with the size of the logits (bf16 q and k put about |s| 2^-8
 * into each score s): at the scale of the tests (scores of std ~1.3) out,
 * lse and the gradients stay within 1e-2 of an fp32 or fp64 reference,
 * relative to the largest value.
 *
 * Forward (attn_forward_kernel, grid (query tiles, H)). The CTA walks the
 * key tiles of its kv head with the online softmax. Per key tile: K and V
 * tiles to shared memory; each warp computes its scores S (16 x 64) into
 * shared memory; the two lanes 2r, 2r+1 of a warp own row r (32 columns
 * each, in a rotated order that avoids bank conflicts), mask it, take the
 * row max, write P = exp(S - m) as bf16 and the factor alpha = exp(m_old -
 * m) by which the row's accumulator shrinks; the warp then rescales its
 * O accumulators (WMMA fragments in registers; the row of each fragment
 * element comes from a fragment loaded from a matrix of row indices, so no
 * layout is assumed) and adds P V. At the end the block's (O / l, m + log
 * l) is merged into the running (out, lse):
 *     lse_new = logaddexp(lse, lse_b)
 *     out     = out * exp(lse - lse_new) + (O / l) * exp(lse_b - lse_new)
 * (a running lse of -inf gives weight 0 to the old out and 1 to the
 * block's); rows with l = 0 are not touched.
 *
 * Backward, deterministic without atomics: every element of dq, dk, dv is
 * written by one thread, once per call, after a fixed-order sum.
 *   attn_dkv_kernel (grid (key tiles, Hkv)): a CTA owns 64 keys of one kv
 *     head and loops over the G query heads of its group and all their
 *     query tiles, in that order, keeping dK and dV in fragments:
 *         S^T = K Q^T, dP^T = V dO^T (16 queries at a time per warp),
 *         P^T = exp(scale S^T - lse), dS^T = P^T (dP^T - delta) scale,
 *         dV += P^T dO, dK += dS^T Q;
 *     then adds them to dk, dv.
 *   attn_dq_kernel (grid (query tiles, H)): a CTA owns 64 queries of one
 *     head and loops over the key tiles, recomputing P from q, k and the
 *     final lse: dQ += dS K; then adds dQ to dq.
 *
 * Masked tiles are skipped: per 64-row tile, the smallest and largest
 * position of the queries and of the keys (and, with documents, of the
 * queries' q_first) are computed on the device (tile_ranges_kernel) into
 * the workspace; a (query tile, key tile) pair is skipped when, under
 * causal, its smallest key position exceeds the largest query position,
 * or, with documents, its largest key position is below the smallest
 * q_first of the query tile. Positions are arbitrary int64 (not assumed
 * sorted or contiguous): inside a visited tile every element is masked by
 * its own positions.
 *
 * Workspace: [query tile ranges (ceil(Tq/64)) | key tile ranges
 * (ceil(Tk/64)) | q_first tile ranges (ceil(Tq/64), filled only when
 * q_first is given)], pos_range each, every piece at a multiple of 64
 * bytes; nothing else. attn_workspace_bytes reports it for the largest
 * call.
 *
 * Shared memory per CTA (bf16 tiles at leading dimension DP + 8, fp32
 * scores at 68, bf16 P/dS at 72), in KiB for DP = 128 / 64 / 32 / 16:
 *     forward: 63.0 / 47.0 / 39.0 / 35.0 (q tile then scores, K, V, P, rows)
 *     dQ:      89.0 / 57.0 / 41.0 / 33.0 (q, dout, K, V, two 16x16 stages per warp, dS, rows)
 *     dK/dV:   98.0 / 66.0 / 50.0 / 42.0 (K, V, q, dout, stages, P^T, dS^T, rows)
 * so two CTAs fit an SM at DP = 128 (registers allow two as well).
 * (fwd_layout, dq_layout, dkv_layout are the one place that sizes them.)
 */

using namespace nvcuda;
typedef __nv_bfloat16 bf16;

enum { TILE = 64, WARPS = 4, THREADS = WARPS * 32, FRAG = 16, WS_ALIGN = 64, MAX_HEAD_DIM = 128 };
/* Leading dimensions (elements) of the shared tiles: the padding staggers rows across banks. */
enum {
    LD_SCORES = TILE + 4, /* fp32 scores of the forward, and its output staging */
    LD_PROBS = TILE + 8,  /* bf16 P, dS: A operands over a whole key (or query) tile */
    LD_CHUNK = FRAG + 4   /* fp32 16x16 stages of the backward */
};
__host__ __device__ constexpr int ld_tile(int DP) { return DP + 8; } /* bf16 rows of q, k, v, dout tiles */
__host__ __device__ constexpr size_t align128(size_t bytes) { return (bytes + 127) / 128 * 128; }
__host__ __device__ constexpr size_t max_size(size_t a, size_t b) { return a > b ? a : b; }
__host__ __device__ constexpr size_t tile_bytes(int DP) { return align128((size_t)TILE * ld_tile(DP) * sizeof(bf16)); }

typedef struct {
    long long min, max;
} pos_range;

/* One call, unpacked for the kernels. Pointers are at row 0 of the call and column 0 (head 0). */
typedef struct {
    const float *q, *k, *v;
    const int64_t *q_pos, *k_pos;
    const int64_t *q_first;                /* NULL: no document mask */
    const pos_range *q_ranges, *k_ranges;  /* (n_q_tiles), (n_k_tiles), in the workspace */
    const pos_range *q_first_ranges;       /* (n_q_tiles) in the workspace; NULL when q_first is */
    float *out, *lse;                      /* forward: running out (Tq rows at out_stride), lse (Tq, H) */
    const float *dout, *lse_final, *delta; /* backward: dout like out; lse, delta (Tq, H) */
    float *dq, *dk, *dv;
    size_t q_stride, kv_stride, out_stride;
    int Tq, Tk, n_q_tiles, n_k_tiles;
    int H, group, D;
    int causal;
    float scale;
    int vec_q, vec_kv, vec_dout; /* 1: rows may be read as float4 (16-byte aligned, D and stride multiples of 4) */
} attn_args;

/* ------------------------------------------------------------------ device helpers */

typedef wmma::fragment<wmma::matrix_a, FRAG, FRAG, FRAG, bf16, wmma::row_major> frag_a;
typedef wmma::fragment<wmma::matrix_b, FRAG, FRAG, FRAG, bf16, wmma::row_major> frag_b_row;
typedef wmma::fragment<wmma::matrix_b, FRAG, FRAG, FRAG, bf16, wmma::col_major> frag_b_col; /* B = X^T, X row-major */
typedef wmma::fragment<wmma::accumulator, FRAG, FRAG, FRAG, float> frag_acc;

/* Rows [0, rows) of a head slice (D floats per row at src + r * stride) into a (TILE, DP) bf16 tile at leading
 * dimension ld_tile(DP); zeros beyond rows and beyond D. THE bf16 ROUNDING OF q, k, v AND dout IS HERE. */
template <int DP>
static __device__ void load_tile(bf16 *dst, const float *src, size_t stride, int rows, int D, int vec) {
    constexpr int LD = ld_tile(DP);
    if (vec) {
        constexpr int PER_ROW = DP / 4;
        for (int idx = threadIdx.x; idx < TILE * PER_ROW; idx += THREADS) {
            const int r = idx / PER_ROW, c = (idx % PER_ROW) * 4;
            float4 x = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
            if (r < rows && c < D) x = *reinterpret_cast<const float4 *>(src + (size_t)r * stride + c);
            bf16 *d = dst + r * LD + c;
            *reinterpret_cast<__nv_bfloat162 *>(d) = __floats2bfloat162_rn(x.x, x.y);
            *reinterpret_cast<__nv_bfloat162 *>(d + 2) = __floats2bfloat162_rn(x.z, x.w);
        }
    } else {
        for (int idx = threadIdx.x; idx < TILE * DP; idx += THREADS) {
            const int r = idx / DP, c = idx % DP;
            const float x = r < rows && c < D ? src[(size_t)r * stride + c] : 0.0f;
            dst[r * LD + c] = __float2bfloat16_rn(x);
        }
    }
}

/* dst (rows of 16 floats at stride, the top-left of a 16x16 piece of a gradient) += fragment f, for the rows <
 * rows and columns < cols that exist. Goes through the warp's 16x16 stage. */
static __device__ void add_fragment(float *dst, size_t stride, int rows, int cols, const frag_acc &f, float *stage) {
    const int lane = threadIdx.x % 32;
    wmma::store_matrix_sync(stage, f, LD_CHUNK, wmma::mem_row_major);
    __syncwarp();
    const int c = lane % FRAG;
    for (int rr = lane / FRAG; rr < FRAG; rr += 2)
        if (rr < rows && c < cols) dst[(size_t)rr * stride + c] += stage[rr * LD_CHUNK + c];
    __syncwarp();
}

/* Smallest and largest position of every TILE rows of pos (n rows): one warp per tile. */
static __global__ void __launch_bounds__(THREADS)
    tile_ranges_kernel(pos_range *ranges, const int64_t *pos, int n, int n_tiles) {
    const int t = (int)blockIdx.x * WARPS + (int)threadIdx.x / 32, lane = threadIdx.x % 32;
    if (t >= n_tiles) return; /* whole warps leave together */
    long long lo = LLONG_MAX, hi = LLONG_MIN;
    for (int r = lane; r < TILE; r += 32) {
        const int i = t * TILE + r;
        if (i < n) {
            const long long p = (long long)pos[i];
            lo = p < lo ? p : lo;
            hi = p > hi ? p : hi;
        }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        const long long other_lo = __shfl_xor_sync(0xffffffffu, lo, offset);
        const long long other_hi = __shfl_xor_sync(0xffffffffu, hi, offset);
        lo = other_lo < lo ? other_lo : lo;
        hi = other_hi > hi ? other_hi : hi;
    }
    if (lane == 0) ranges[t] = pos_range{lo, hi};
}

/* The smallest q_first of query tile qt (the smallest position any of its queries sees), or LLONG_MIN without
 * documents: a key tile whose largest position is below it is hidden from the whole query tile. */
static __device__ long long q_tile_first_min(const attn_args &a, int qt) {
    return a.q_first_ranges ? a.q_first_ranges[qt].min : LLONG_MIN;
}

/* q_first of query row i (INT64_MIN without documents: no lower bound). */
static __device__ int64_t q_first_of(const attn_args &a, int i) { return a.q_first ? a.q_first[i] : INT64_MIN; }

/* ------------------------------------------------------------------ forward */

/* Shared memory of the forward (byte offsets). The q tile is read into fragments once; its space then holds the
 * scores S (16 rows per warp), and after the last key tile the warps' output staging. */
template <int DP> struct fwd_layout {
    static constexpr size_t qs = 0;
    static constexpr size_t k = qs + align128(max_size(tile_bytes(DP), sizeof(float) * TILE * LD_SCORES));
    static constexpr size_t v = k + tile_bytes(DP);
    static constexpr size_t p = v + tile_bytes(DP);
    static constexpr size_t k_pos = p + align128((size_t)TILE * LD_PROBS * sizeof(bf16));
    static constexpr size_t q_pos = k_pos + align128(TILE * sizeof(int64_t));
    static constexpr size_t alpha = q_pos + align128(TILE * sizeof(int64_t));          /* float per row */
    static constexpr size_t row_index = alpha + align128(TILE * sizeof(float));        /* float (16, 16): value = row */
    static constexpr size_t w_old = row_index + align128(FRAG * FRAG * sizeof(float)); /* merge weights per row */
    static constexpr size_t w_blk = w_old + align128(TILE * sizeof(float));
    static constexpr size_t touched = w_blk + align128(TILE * sizeof(float)); /* int per row: 1 = merged */
    static constexpr size_t bytes = touched + align128(TILE * sizeof(int));
};

template <int DP> static __global__ void __launch_bounds__(THREADS, DP <= 64 ? 3 : 2) attn_forward_kernel(attn_args a) {
    typedef fwd_layout<DP> L;
    constexpr int LD = ld_tile(DP), KSTEPS = DP / FRAG;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *q_s = reinterpret_cast<bf16 *>(smem + L::qs);
    float *scores_s = reinterpret_cast<float *>(smem + L::qs);
    bf16 *k_s = reinterpret_cast<bf16 *>(smem + L::k), *v_s = reinterpret_cast<bf16 *>(smem + L::v);
    bf16 *p_s = reinterpret_cast<bf16 *>(smem + L::p);
    int64_t *k_pos_s = reinterpret_cast<int64_t *>(smem + L::k_pos);
    int64_t *q_pos_s = reinterpret_cast<int64_t *>(smem + L::q_pos);
    float *alpha_s = reinterpret_cast<float *>(smem + L::alpha);
    float *row_index_s = reinterpret_cast<float *>(smem + L::row_index);
    float *w_old_s = reinterpret_cast<float *>(smem + L::w_old), *w_blk_s = reinterpret_cast<float *>(smem + L::w_blk);
    int *touched_s = reinterpret_cast<int *>(smem + L::touched);

    const int qt = a.n_q_tiles - 1 - (int)blockIdx.x; /* under causal the last query tiles see the most keys */
    const int h = blockIdx.y, kvh = h / a.group;
    const int i0 = qt * TILE, nq = min(TILE, a.Tq - i0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const pos_range qr = a.q_ranges[qt];
    const long long qf_min = q_tile_first_min(a, qt);

    load_tile<DP>(q_s, a.q + (size_t)i0 * a.q_stride + (size_t)h * a.D, a.q_stride, nq, a.D, a.vec_q);
    for (int r = threadIdx.x; r < TILE; r += THREADS)
        q_pos_s[r] = r < nq ? a.q_pos[i0 + r] : INT64_MIN;
    for (int e = threadIdx.x; e < FRAG * FRAG; e += THREADS)
        row_index_s[e] = (float)(e / FRAG);
    __syncthreads();

    frag_a q_frag[KSTEPS];
#pragma unroll
    for (int kk = 0; kk < KSTEPS; kk++)
        wmma::load_matrix_sync(q_frag[kk], q_s + warp * FRAG * LD + kk * FRAG, LD);
    frag_acc row_of; /* row_of.x[e] = the row (0..15) of element e of any accumulator fragment */
    wmma::load_matrix_sync(row_of, row_index_s, FRAG, wmma::mem_row_major);
    frag_acc o_frag[KSTEPS]; /* unnormalized output of the warp's 16 rows, columns [16 dt, 16 dt + 16) */
#pragma unroll
    for (int dt = 0; dt < KSTEPS; dt++)
        wmma::fill_fragment(o_frag[dt], 0.0f);
    __syncthreads(); /* every warp has its q fragments: the q tile's space becomes the scores */

    /* lanes 2r and 2r+1 own row r of the warp: the same running max m and sum l in both */
    const int r = lane / 2, half = lane % 2, row = warp * FRAG + r;
    const int64_t my_q_pos = q_pos_s[row];
    const int64_t my_q_first = row < nq ? q_first_of(a, i0 + row) : INT64_MIN; /* keys before it are hidden */
    float *scores_w = scores_s + warp * FRAG * LD_SCORES;
    bf16 *p_w = p_s + warp * FRAG * LD_PROBS;
    float m = -INFINITY, l = 0.0f;

    for (int kt = 0; kt < a.n_k_tiles; kt++) {
        const pos_range kr = a.k_ranges[kt];
        if (a.causal && kr.min > qr.max) continue; /* every key in every query's future (uniform over the CTA) */
        if (kr.max < qf_min) continue;             /* every key before every query's document (likewise) */
        const int j0 = kt * TILE, nk = min(TILE, a.Tk - j0);
        const size_t kv_offset = (size_t)j0 * a.kv_stride + (size_t)kvh * a.D;
        load_tile<DP>(k_s, a.k + kv_offset, a.kv_stride, nk, a.D, a.vec_kv);
        load_tile<DP>(v_s, a.v + kv_offset, a.kv_stride, nk, a.D, a.vec_kv);
        for (int j = threadIdx.x; j < TILE; j += THREADS)
            k_pos_s[j] = j < nk ? a.k_pos[j0 + j] : INT64_MAX;
        __syncthreads();

        /* S (16 x 64) = Q_w K^T */
#pragma unroll
        for (int nt = 0; nt < TILE / FRAG; nt++) {
            frag_acc s;
            wmma::fill_fragment(s, 0.0f);
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                frag_b_col k_frag;
                wmma::load_matrix_sync(k_frag, k_s + nt * FRAG * LD + kk * FRAG, LD);
                wmma::mma_sync(s, q_frag[kk], k_frag, s);
            }
            wmma::store_matrix_sync(scores_w + nt * FRAG, s, LD_SCORES, wmma::mem_row_major);
        }
        __syncwarp();

        /* online softmax of row r: column e of this lane is half*32 + ((e + 2r + half) mod 32), a rotation that
         * puts the 32 lanes on 32 different banks. Each element belongs to one lane, which first rewrites it in
         * place as the masked, scaled score (-inf when hidden), then reads it back for P. */
        float *scores_r = scores_w + r * LD_SCORES;
        float tile_max = -INFINITY;
#pragma unroll 8
        for (int e = 0; e < 32; e++) {
            const int c = half * 32 + ((e + 2 * r + half) & 31);
            const bool visible = c < nk && (!a.causal || k_pos_s[c] <= my_q_pos) && k_pos_s[c] >= my_q_first;
            const float x = visible ? scores_r[c] * a.scale : -INFINITY;
            scores_r[c] = x;
            tile_max = fmaxf(tile_max, x);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(0xffffffffu, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        /* a row that has seen no key yet (m_new = -inf) gets P = 0 and alpha = 0 (its O and l are 0) */
        const float shift = m_new == -INFINITY ? 0.0f : m_new;
        float sum = 0.0f;
#pragma unroll 8
        for (int e = 0; e < 32; e++) {
            const int c = half * 32 + ((e + 2 * r + half) & 31);
            const float p = __expf(scores_r[c] - shift);    /* exp(-inf) = 0 for hidden keys */
            p_w[r * LD_PROBS + c] = __float2bfloat16_rn(p); /* THE bf16 ROUNDING OF P IS HERE */
            sum += p;                                       /* l sums the fp32 p */
        }
        sum += __shfl_xor_sync(0xffffffffu, sum, 1);
        const float alpha = __expf(m - shift); /* 0 when m = -inf */
        l = l * alpha + sum;
        m = m_new;
        if (half == 0) alpha_s[row] = alpha;
        __syncwarp();

        /* O = diag(alpha) O + P V */
        float alpha_e[frag_acc::num_elements];
#pragma unroll
        for (int e = 0; e < frag_acc::num_elements; e++)
            alpha_e[e] = alpha_s[warp * FRAG + (int)row_of.x[e]];
        frag_a p_frag[TILE / FRAG];
#pragma unroll
        for (int kk = 0; kk < TILE / FRAG; kk++)
            wmma::load_matrix_sync(p_frag[kk], p_w + kk * FRAG, LD_PROBS);
#pragma unroll
        for (int dt = 0; dt < KSTEPS; dt++) {
#pragma unroll
            for (int e = 0; e < frag_acc::num_elements; e++)
                o_frag[dt].x[e] *= alpha_e[e];
#pragma unroll
            for (int kk = 0; kk < TILE / FRAG; kk++) {
                frag_b_row v_frag;
                wmma::load_matrix_sync(v_frag, v_s + kk * FRAG * LD + dt * FRAG, LD);
                wmma::mma_sync(o_frag[dt], p_frag[kk], v_frag, o_frag[dt]);
            }
        }
        __syncthreads(); /* K, V, k_pos, P, alpha are free for the next key tile */
    }

    /* merge weights of row r, decided by lane 2r alone (it also writes the row's lse) */
    if (half == 0) {
        float w_old = 1.0f, w_blk = 0.0f;
        int touched = 0;
        if (row < nq && l > 0.0f) {
            float *lse_row = a.lse + (size_t)(i0 + row) * a.H + h;
            const float lse_run = *lse_row, lse_blk = m + logf(l);
            /* logaddexp; a running lse of -inf gives lse_new = lse_blk, w_old = 0 */
            const float lse_new = fmaxf(lse_run, lse_blk) + log1pf(expf(-fabsf(lse_run - lse_blk)));
            w_old = expf(lse_run - lse_new);
            w_blk = expf(lse_blk - lse_new) / l;
            *lse_row = lse_new;
            touched = 1;
        }
        w_old_s[row] = w_old;
        w_blk_s[row] = w_blk;
        touched_s[row] = touched;
    }
    __syncwarp();

    /* out = out * w_old + O * w_blk, 64 columns at a time through the warp's scores rows (free since the last
     * __syncthreads) */
#pragma unroll
    for (int c0 = 0; c0 < DP; c0 += TILE) {
#pragma unroll
        for (int dt = 0; dt < KSTEPS; dt++)
            if (dt * FRAG >= c0 && dt * FRAG < c0 + TILE)
                wmma::store_matrix_sync(scores_w + (dt * FRAG - c0), o_frag[dt], LD_SCORES, wmma::mem_row_major);
        __syncwarp();
        for (int rr = 0; rr < FRAG; rr++) {
            const int out_row = warp * FRAG + rr;
            if (!touched_s[out_row]) continue; /* no visible key, or a tail row: untouched */
            float *o = a.out + (size_t)(i0 + out_row) * a.out_stride + (size_t)h * a.D;
            const float w_old = w_old_s[out_row], w_blk = w_blk_s[out_row];
            for (int cc = lane; cc < TILE; cc += 32) {
                const int c = c0 + cc;
                /* w_old is 0 for a row's first visible block (see above): out is written, not read, as on the CPU,
                 * so whatever the caller left there cannot leak in */
                if (c < a.D) {
                    const float blk = scores_w[rr * LD_SCORES + cc] * w_blk;
                    o[c] = w_old == 0.0f ? blk : o[c] * w_old + blk;
                }
            }
        }
        __syncwarp();
    }
}

/* ------------------------------------------------------------------ delta */

/* delta (Tq, H) = rowsum(dout * out) per head: one warp per (token, head), fixed-order butterfly sum. */
static __global__ void __launch_bounds__(THREADS) attn_delta_kernel(float *delta, const float *out, const float *dout,
                                                                    size_t n_rows, int H, int D, size_t out_stride) {
    const size_t task = (size_t)blockIdx.x * WARPS + threadIdx.x / 32; /* i * H + h */
    const int lane = threadIdx.x % 32;
    if (task >= n_rows) return; /* whole warps leave together */
    const size_t i = task / (size_t)H, h = task % (size_t)H;
    const float *o = out + i * out_stride + h * (size_t)D, *g = dout + i * out_stride + h * (size_t)D;
    float sum = 0.0f;
    for (int c = lane; c < D; c += 32)
        sum = fmaf(o[c], g[c], sum);
    for (int offset = 16; offset > 0; offset /= 2)
        sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) delta[task] = sum;
}

/* ------------------------------------------------------------------ backward: dQ */

template <int DP> struct dq_layout {
    static constexpr size_t q = 0;
    static constexpr size_t dout = q + tile_bytes(DP);
    static constexpr size_t k = dout + tile_bytes(DP);
    static constexpr size_t v = k + tile_bytes(DP);
    static constexpr size_t stage = v + tile_bytes(DP); /* per warp: S and dP stages, 16 x LD_CHUNK floats each */
    static constexpr size_t ds = stage + align128((size_t)WARPS * 2 * FRAG * LD_CHUNK * sizeof(float));
    static constexpr size_t q_pos = ds + align128((size_t)TILE * LD_PROBS * sizeof(bf16));
    static constexpr size_t q_first = q_pos + align128(TILE * sizeof(int64_t));
    static constexpr size_t k_pos = q_first + align128(TILE * sizeof(int64_t));
    static constexpr size_t lse = k_pos + align128(TILE * sizeof(int64_t));
    static constexpr size_t delta = lse + align128(TILE * sizeof(float));
    static constexpr size_t bytes = delta + align128(TILE * sizeof(float));
};

template <int DP> static __global__ void __launch_bounds__(THREADS, DP <= 64 ? 3 : 2) attn_dq_kernel(attn_args a) {
    typedef dq_layout<DP> L;
    constexpr int LD = ld_tile(DP), KSTEPS = DP / FRAG;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *q_s = reinterpret_cast<bf16 *>(smem + L::q), *dout_s = reinterpret_cast<bf16 *>(smem + L::dout);
    bf16 *k_s = reinterpret_cast<bf16 *>(smem + L::k), *v_s = reinterpret_cast<bf16 *>(smem + L::v);
    float *stage_s = reinterpret_cast<float *>(smem + L::stage);
    bf16 *ds_s = reinterpret_cast<bf16 *>(smem + L::ds);
    int64_t *q_pos_s = reinterpret_cast<int64_t *>(smem + L::q_pos);
    int64_t *q_first_s = reinterpret_cast<int64_t *>(smem + L::q_first);
    int64_t *k_pos_s = reinterpret_cast<int64_t *>(smem + L::k_pos);
    float *lse_s = reinterpret_cast<float *>(smem + L::lse), *delta_s = reinterpret_cast<float *>(smem + L::delta);

    const int qt = a.n_q_tiles - 1 - (int)blockIdx.x;
    const int h = blockIdx.y, kvh = h / a.group;
    const int i0 = qt * TILE, nq = min(TILE, a.Tq - i0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const pos_range qr = a.q_ranges[qt];
    const long long qf_min = q_tile_first_min(a, qt);

    load_tile<DP>(q_s, a.q + (size_t)i0 * a.q_stride + (size_t)h * a.D, a.q_stride, nq, a.D, a.vec_q);
    load_tile<DP>(dout_s, a.dout + (size_t)i0 * a.out_stride + (size_t)h * a.D, a.out_stride, nq, a.D, a.vec_dout);
    for (int r = threadIdx.x; r < TILE; r += THREADS) {
        const size_t at = (size_t)(i0 + r) * a.H + h;
        q_pos_s[r] = r < nq ? a.q_pos[i0 + r] : INT64_MIN;
        q_first_s[r] = r < nq ? q_first_of(a, i0 + r) : INT64_MIN;
        lse_s[r] = r < nq ? a.lse_final[at] : -INFINITY; /* -inf: no gradient (tail, or a query that saw no key) */
        delta_s[r] = r < nq ? a.delta[at] : 0.0f;
    }
    float *s_stage = stage_s + warp * 2 * FRAG * LD_CHUNK, *dp_stage = s_stage + FRAG * LD_CHUNK;
    bf16 *ds_w = ds_s + warp * FRAG * LD_PROBS;
    const bf16 *q_w = q_s + warp * FRAG * LD, *dout_w = dout_s + warp * FRAG * LD;
    frag_acc dq_frag[KSTEPS];
#pragma unroll
    for (int dt = 0; dt < KSTEPS; dt++)
        wmma::fill_fragment(dq_frag[dt], 0.0f);

    for (int kt = 0; kt < a.n_k_tiles; kt++) {
        const pos_range kr = a.k_ranges[kt];
        if (a.causal && kr.min > qr.max) continue;
        if (kr.max < qf_min) continue; /* before every query's document */
        const int j0 = kt * TILE, nk = min(TILE, a.Tk - j0);
        __syncthreads(); /* the previous key tile is no longer read (and, at the first, the q tile is loaded) */
        const size_t kv_offset = (size_t)j0 * a.kv_stride + (size_t)kvh * a.D;
        load_tile<DP>(k_s, a.k + kv_offset, a.kv_stride, nk, a.D, a.vec_kv);
        load_tile<DP>(v_s, a.v + kv_offset, a.kv_stride, nk, a.D, a.vec_kv);
        for (int j = threadIdx.x; j < TILE; j += THREADS)
            k_pos_s[j] = j < nk ? a.k_pos[j0 + j] : INT64_MAX;
        __syncthreads();

        /* 16 keys at a time: S = Q_w K_nt^T, dP = dO_w V_nt^T, then dS = P (dP - delta) scale into ds_w */
#pragma unroll 1
        for (int nt = 0; nt < TILE / FRAG; nt++) {
            frag_acc s, dp;
            wmma::fill_fragment(s, 0.0f);
            wmma::fill_fragment(dp, 0.0f);
#pragma unroll
            for (int kk = 0; kk < KSTEPS; kk++) {
                frag_a a_frag;
                frag_b_col b_frag;
                wmma::load_matrix_sync(a_frag, q_w + kk * FRAG, LD);
                wmma::load_matrix_sync(b_frag, k_s + nt * FRAG * LD + kk * FRAG, LD);
                wmma::mma_sync(s, a_frag, b_frag, s);
                wmma::load_matrix_sync(a_frag, dout_w + kk * FRAG, LD);
                wmma::load_matrix_sync(b_frag, v_s + nt * FRAG * LD + kk * FRAG, LD);
                wmma::mma_sync(dp, a_frag, b_frag, dp);
            }
            wmma::store_matrix_sync(s_stage, s, LD_CHUNK, wmma::mem_row_major);
            wmma::store_matrix_sync(dp_stage, dp, LD_CHUNK, wmma::mem_row_major);
            __syncwarp();
            const int c = lane % FRAG, j = nt * FRAG + c;
            const bool key_exists = j < nk;
            const int64_t key_pos = k_pos_s[j];
            for (int rr = lane / FRAG; rr < FRAG; rr += 2) {
                const int qrow = warp * FRAG + rr;
                const float row_lse = lse_s[qrow];
                const bool visible = key_exists && row_lse != -INFINITY && (!a.causal || key_pos <= q_pos_s[qrow]) &&
                                     key_pos >= q_first_s[qrow];
                const float p = visible ? __expf(s_stage[rr * LD_CHUNK + c] * a.scale - row_lse) : 0.0f;
                const float ds = p * (dp_stage[rr * LD_CHUNK + c] - delta_s[qrow]) * a.scale;
                ds_w[rr * LD_PROBS + j] = __float2bfloat16_rn(ds); /* THE bf16 ROUNDING OF dS IS HERE */
            }
            __syncwarp();
        }

        /* dQ_w += dS_w K */
#pragma unroll
        for (int kk = 0; kk < TILE / FRAG; kk++) {
            frag_a ds_frag;
            wmma::load_matrix_sync(ds_frag, ds_w + kk * FRAG, LD_PROBS);
#pragma unroll
            for (int dt = 0; dt < KSTEPS; dt++) {
                frag_b_row k_frag;
                wmma::load_matrix_sync(k_frag, k_s + kk * FRAG * LD + dt * FRAG, LD);
                wmma::mma_sync(dq_frag[dt], ds_frag, k_frag, dq_frag[dt]);
            }
        }
    }

    /* dq += dQ (rows of this warp that exist, columns < D) */
    float *dq_w = a.dq + (size_t)(i0 + warp * FRAG) * a.q_stride + (size_t)h * a.D;
#pragma unroll
    for (int dt = 0; dt < KSTEPS; dt++)
        add_fragment(dq_w + dt * FRAG, a.q_stride, nq - warp * FRAG, a.D - dt * FRAG, dq_frag[dt], s_stage);
}

/* ------------------------------------------------------------------ backward: dK, dV */

template <int DP> struct dkv_layout {
    static constexpr size_t k = 0;
    static constexpr size_t v = k + tile_bytes(DP);
    static constexpr size_t q = v + tile_bytes(DP);
    static constexpr size_t dout = q + tile_bytes(DP);
    static constexpr size_t stage = dout + tile_bytes(DP); /* per warp: S^T and dP^T stages */
    static constexpr size_t pt = stage + align128((size_t)WARPS * 2 * FRAG * LD_CHUNK * sizeof(float));
    static constexpr size_t dst = pt + align128((size_t)TILE * LD_PROBS * sizeof(bf16));
    static constexpr size_t k_pos = dst + align128((size_t)TILE * LD_PROBS * sizeof(bf16));
    static constexpr size_t q_pos = k_pos + align128(TILE * sizeof(int64_t));
    static constexpr size_t q_first = q_pos + align128(TILE * sizeof(int64_t));
    static constexpr size_t lse = q_first + align128(TILE * sizeof(int64_t));
    static constexpr size_t delta = lse + align128(TILE * sizeof(float));
    static constexpr size_t bytes = delta + align128(TILE * sizeof(float));
};

template <int DP> static __global__ void __launch_bounds__(THREADS, 2) attn_dkv_kernel(attn_args a) {
    typedef dkv_layout<DP> L;
    constexpr int LD = ld_tile(DP), KSTEPS = DP / FRAG;
    extern __shared__ __align__(128) unsigned char smem[];
    bf16 *k_s = reinterpret_cast<bf16 *>(smem + L::k), *v_s = reinterpret_cast<bf16 *>(smem + L::v);
    bf16 *q_s = reinterpret_cast<bf16 *>(smem + L::q), *dout_s = reinterpret_cast<bf16 *>(smem + L::dout);
    float *stage_s = reinterpret_cast<float *>(smem + L::stage);
    bf16 *pt_s = reinterpret_cast<bf16 *>(smem + L::pt), *dst_s = reinterpret_cast<bf16 *>(smem + L::dst);
    int64_t *k_pos_s = reinterpret_cast<int64_t *>(smem + L::k_pos);
    int64_t *q_pos_s = reinterpret_cast<int64_t *>(smem + L::q_pos);
    int64_t *q_first_s = reinterpret_cast<int64_t *>(smem + L::q_first);
    float *lse_s = reinterpret_cast<float *>(smem + L::lse), *delta_s = reinterpret_cast<float *>(smem + L::delta);

    const int kt = blockIdx.x, kvh = blockIdx.y;
    const int j0 = kt * TILE, nk = min(TILE, a.Tk - j0);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const pos_range kr = a.k_ranges[kt];

    const size_t kv_offset = (size_t)j0 * a.kv_stride + (size_t)kvh * a.D;
    load_tile<DP>(k_s, a.k + kv_offset, a.kv_stride, nk, a.D, a.vec_kv);
    load_tile<DP>(v_s, a.v + kv_offset, a.kv_stride, nk, a.D, a.vec_kv);
    for (int j = threadIdx.x; j < TILE; j += THREADS)
        k_pos_s[j] = j < nk ? a.k_pos[j0 + j] : INT64_MAX;
    float *st_stage = stage_s + warp * 2 * FRAG * LD_CHUNK, *dpt_stage = st_stage + FRAG * LD_CHUNK;
    bf16 *pt_w = pt_s + warp * FRAG * LD_PROBS, *dst_w = dst_s + warp * FRAG * LD_PROBS;
    const bf16 *k_w = k_s + warp * FRAG * LD, *v_w = v_s + warp * FRAG * LD;
    frag_acc dk_frag[KSTEPS], dv_frag[KSTEPS]; /* the warp's 16 keys, columns [16 dt, 16 dt + 16) */
#pragma unroll
    for (int dt = 0; dt < KSTEPS; dt++) {
        wmma::fill_fragment(dk_frag[dt], 0.0f);
        wmma::fill_fragment(dv_frag[dt], 0.0f);
    }

    /* fixed order: query heads of the group, then query tiles */
    for (int g = 0; g < a.group; g++) {
        const int h = kvh * a.group + g;
        for (int qt = 0; qt < a.n_q_tiles; qt++) {
            const pos_range qr = a.q_ranges[qt];
            if (a.causal && kr.min > qr.max) continue;
            if (kr.max < q_tile_first_min(a, qt)) continue; /* before every query's document */
            const int i0 = qt * TILE, nq = min(TILE, a.Tq - i0);
            __syncthreads(); /* the previous query tile is no longer read */
            load_tile<DP>(q_s, a.q + (size_t)i0 * a.q_stride + (size_t)h * a.D, a.q_stride, nq, a.D, a.vec_q);
            load_tile<DP>(dout_s, a.dout + (size_t)i0 * a.out_stride + (size_t)h * a.D, a.out_stride, nq, a.D,
                          a.vec_dout);
            for (int r = threadIdx.x; r < TILE; r += THREADS) {
                const size_t at = (size_t)(i0 + r) * a.H + h;
                q_pos_s[r] = r < nq ? a.q_pos[i0 + r] : INT64_MIN;
                q_first_s[r] = r < nq ? q_first_of(a, i0 + r) : INT64_MIN;
                lse_s[r] = r < nq ? a.lse_final[at] : -INFINITY;
                delta_s[r] = r < nq ? a.delta[at] : 0.0f;
            }
            __syncthreads();

            /* 16 queries at a time: S^T = K_w Q_nt^T, dP^T = V_w dO_nt^T; P^T and dS^T into pt_w, dst_w */
#pragma unroll 1
            for (int nt = 0; nt < TILE / FRAG; nt++) {
                frag_acc st, dpt;
                wmma::fill_fragment(st, 0.0f);
                wmma::fill_fragment(dpt, 0.0f);
#pragma unroll
                for (int kk = 0; kk < KSTEPS; kk++) {
                    frag_a a_frag;
                    frag_b_col b_frag;
                    wmma::load_matrix_sync(a_frag, k_w + kk * FRAG, LD);
                    wmma::load_matrix_sync(b_frag, q_s + nt * FRAG * LD + kk * FRAG, LD);
                    wmma::mma_sync(st, a_frag, b_frag, st);
                    wmma::load_matrix_sync(a_frag, v_w + kk * FRAG, LD);
                    wmma::load_matrix_sync(b_frag, dout_s + nt * FRAG * LD + kk * FRAG, LD);
                    wmma::mma_sync(dpt, a_frag, b_frag, dpt);
                }
                wmma::store_matrix_sync(st_stage, st, LD_CHUNK, wmma::mem_row_major);
                wmma::store_matrix_sync(dpt_stage, dpt, LD_CHUNK, wmma::mem_row_major);
                __syncwarp();
                const int c = lane % FRAG, i = nt * FRAG + c; /* query column */
                const float col_lse = lse_s[i], col_delta = delta_s[i];
                const int64_t query_pos = q_pos_s[i], query_first = q_first_s[i];
                for (int rr = lane / FRAG; rr < FRAG; rr += 2) { /* key row; tail keys are never written back */
                    const bool visible = col_lse != -INFINITY && warp * FRAG + rr < nk &&
                                         (!a.causal || k_pos_s[warp * FRAG + rr] <= query_pos) &&
                                         k_pos_s[warp * FRAG + rr] >= query_first;
                    const float p = visible ? __expf(st_stage[rr * LD_CHUNK + c] * a.scale - col_lse) : 0.0f;
                    const float ds = p * (dpt_stage[rr * LD_CHUNK + c] - col_delta) * a.scale;
                    pt_w[rr * LD_PROBS + i] = __float2bfloat16_rn(p);   /* THE bf16 ROUNDING OF P^T IS HERE */
                    dst_w[rr * LD_PROBS + i] = __float2bfloat16_rn(ds); /* and of dS^T */
                }
                __syncwarp();
            }

            /* dV_w += P^T_w dO, dK_w += dS^T_w Q */
#pragma unroll
            for (int kk = 0; kk < TILE / FRAG; kk++) {
                frag_a pt_frag, dst_frag;
                wmma::load_matrix_sync(pt_frag, pt_w + kk * FRAG, LD_PROBS);
                wmma::load_matrix_sync(dst_frag, dst_w + kk * FRAG, LD_PROBS);
#pragma unroll
                for (int dt = 0; dt < KSTEPS; dt++) {
                    frag_b_row b_frag;
                    wmma::load_matrix_sync(b_frag, dout_s + kk * FRAG * LD + dt * FRAG, LD);
                    wmma::mma_sync(dv_frag[dt], pt_frag, b_frag, dv_frag[dt]);
                    wmma::load_matrix_sync(b_frag, q_s + kk * FRAG * LD + dt * FRAG, LD);
                    wmma::mma_sync(dk_frag[dt], dst_frag, b_frag, dk_frag[dt]);
                }
            }
        }
    }

    /* dk += dK, dv += dV (keys of this warp that exist, columns < D) */
    const size_t row0 = (size_t)(j0 + warp * FRAG) * a.kv_stride + (size_t)kvh * a.D;
#pragma unroll
    for (int dt = 0; dt < KSTEPS; dt++) {
        add_fragment(a.dk + row0 + dt * FRAG, a.kv_stride, nk - warp * FRAG, a.D - dt * FRAG, dk_frag[dt], st_stage);
        add_fragment(a.dv + row0 + dt * FRAG, a.kv_stride, nk - warp * FRAG, a.D - dt * FRAG, dv_frag[dt], st_stage);
    }
}

/* ------------------------------------------------------------------ host side */

static size_t n_tiles_of(size_t T) { return (T + TILE - 1) / TILE; }
static size_t round_up(size_t bytes) { return (bytes + WS_ALIGN - 1) / WS_ALIGN * WS_ALIGN; }

/* [query tile ranges | key tile ranges | q_first tile ranges]: the whole workspace of a call. */
static size_t workspace_needed(size_t Tq, size_t Tk) {
    return 2 * round_up(n_tiles_of(Tq) * sizeof(pos_range)) + round_up(n_tiles_of(Tk) * sizeof(pos_range));
}

/* The head dim the kernels are instantiated for: the next of 16, 32, 64, 128 (0: none). */
static int padded_head_dim(int D) { return D <= 16 ? 16 : D <= 32 ? 32 : D <= 64 ? 64 : D <= 128 ? 128 : 0; }

static void check_shape(const char *op, const rt_attn_shape *shape) {
    if (shape->n_heads <= 0 || shape->n_kv_heads <= 0 || shape->head_dim <= 0 ||
        shape->n_heads % shape->n_kv_heads != 0)
        rt_fatal("%s: bad heads: n_heads %d, n_kv_heads %d, head_dim %d (need n_heads %% n_kv_heads == 0)", op,
                 shape->n_heads, shape->n_kv_heads, shape->head_dim);
    if (shape->head_dim > MAX_HEAD_DIM)
        rt_fatal("%s: head_dim %d is not supported by the CUDA attention kernels (at most %d)", op, shape->head_dim,
                 (int)MAX_HEAD_DIM);
    if (shape->n_heads > 65535)
        rt_fatal("%s: n_heads %d is more than the CUDA attention kernels take (65535)", op, shape->n_heads);
}

static void check_workspace(const char *op, size_t Tq, size_t Tk, const rt_attn_shape *shape, const void *workspace,
                            size_t workspace_bytes) {
    const size_t needed = workspace_needed(Tq, Tk);
    if (workspace_bytes < needed || workspace == NULL)
        rt_fatal("%s: the attention workspace holds %zu bytes, this call needs %zu (Tq %zu, Tk %zu, n_kv_heads %d, "
                 "head_dim %d); reserve attn_workspace_bytes for the largest call at setup",
                 op, workspace ? workspace_bytes : 0, needed, Tq, Tk, shape->n_kv_heads, shape->head_dim);
    if ((uintptr_t)workspace % WS_ALIGN != 0)
        rt_fatal("%s: the attention workspace %p is not aligned to %d bytes", op, workspace, (int)WS_ALIGN);
    if (Tq > (size_t)(INT_MAX - TILE) || Tk > (size_t)(INT_MAX - TILE))
        rt_fatal("%s: Tq %zu, Tk %zu: the CUDA attention kernels take at most %d tokens a call", op, Tq, Tk,
                 INT_MAX - TILE);
}

/* Rows of D floats at base + r * stride can be read as float4. */
static int rows_are_float4(const void *base, size_t stride, int D) {
    return D % 4 == 0 && stride % 4 == 0 && (uintptr_t)base % 16 == 0;
}

/* The fields every kernel reads; fills the tile ranges of the workspace (on the compute stream). */
static attn_args args_make(const rt_backend *be, const float *q, const float *k, const float *v, const int64_t *q_pos,
                           const int64_t *q_first, const int64_t *k_pos, size_t Tq, size_t Tk,
                           const rt_attn_shape *shape, void *workspace) {
    attn_args a = {};
    a.q = q, a.k = k, a.v = v;
    a.q_pos = q_pos, a.k_pos = k_pos, a.q_first = q_first;
    a.q_stride = shape->q_stride, a.kv_stride = shape->kv_stride, a.out_stride = shape->out_stride;
    a.Tq = (int)Tq, a.Tk = (int)Tk;
    a.n_q_tiles = (int)n_tiles_of(Tq), a.n_k_tiles = (int)n_tiles_of(Tk);
    a.H = shape->n_heads, a.group = shape->n_heads / shape->n_kv_heads, a.D = shape->head_dim;
    a.causal = shape->causal;
    a.scale = 1.0f / sqrtf((float)shape->head_dim);
    a.vec_q = rows_are_float4(q, a.q_stride, a.D);
    a.vec_kv = rows_are_float4(k, a.kv_stride, a.D) && rows_are_float4(v, a.kv_stride, a.D);

    const size_t q_ranges_bytes = round_up(n_tiles_of(Tq) * sizeof(pos_range));
    pos_range *q_ranges = (pos_range *)workspace;
    pos_range *k_ranges = (pos_range *)((unsigned char *)workspace + q_ranges_bytes);
    pos_range *q_first_ranges = (pos_range *)((unsigned char *)k_ranges + round_up(n_tiles_of(Tk) * sizeof(pos_range)));
    a.q_ranges = q_ranges, a.k_ranges = k_ranges;
    a.q_first_ranges = q_first ? q_first_ranges : NULL;
    cudaStream_t stream = rt_cuda_compute_stream(be);
    tile_ranges_kernel<<<(unsigned)((a.n_q_tiles + WARPS - 1) / WARPS), THREADS, 0, stream>>>(q_ranges, q_pos, a.Tq,
                                                                                              a.n_q_tiles);
    CUDA_CHECK_LAUNCH();
    tile_ranges_kernel<<<(unsigned)((a.n_k_tiles + WARPS - 1) / WARPS), THREADS, 0, stream>>>(k_ranges, k_pos, a.Tk,
                                                                                              a.n_k_tiles);
    CUDA_CHECK_LAUNCH();
    if (q_first) {
        tile_ranges_kernel<<<(unsigned)((a.n_q_tiles + WARPS - 1) / WARPS), THREADS, 0, stream>>>(
            q_first_ranges, q_first, a.Tq, a.n_q_tiles);
        CUDA_CHECK_LAUNCH();
    }
    return a;
}

template <int DP> static void launch_forward(const attn_args &a, cudaStream_t stream) {
    const size_t smem = fwd_layout<DP>::bytes;
    CUDA_CHECK(cudaFuncSetAttribute(attn_forward_kernel<DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem));
    const dim3 grid((unsigned)a.n_q_tiles, (unsigned)a.H);
    attn_forward_kernel<DP><<<grid, THREADS, smem, stream>>>(a);
    CUDA_CHECK_LAUNCH();
}

template <int DP> static void launch_backward(const attn_args &a, int n_kv_heads, cudaStream_t stream) {
    const size_t dkv_smem = dkv_layout<DP>::bytes, dq_smem = dq_layout<DP>::bytes;
    CUDA_CHECK(cudaFuncSetAttribute(attn_dkv_kernel<DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dkv_smem));
    CUDA_CHECK(cudaFuncSetAttribute(attn_dq_kernel<DP>, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)dq_smem));
    const dim3 dkv_grid((unsigned)a.n_k_tiles, (unsigned)n_kv_heads);
    attn_dkv_kernel<DP><<<dkv_grid, THREADS, dkv_smem, stream>>>(a);
    CUDA_CHECK_LAUNCH();
    const dim3 dq_grid((unsigned)a.n_q_tiles, (unsigned)a.H);
    attn_dq_kernel<DP><<<dq_grid, THREADS, dq_smem, stream>>>(a);
    CUDA_CHECK_LAUNCH();
}

static size_t cuda_attn_workspace_bytes(const rt_backend *be, size_t max_Tq, size_t max_Tk,
                                        const rt_attn_shape *shape) {
    (void)be;
    check_shape("attn_workspace_bytes", shape);
    return workspace_needed(max_Tq, max_Tk);
}

static void cuda_attn_block_forward(const rt_backend *be, float *out, float *lse, const float *q, const float *k,
                                    const float *v, const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos,
                                    size_t Tq, size_t Tk, const rt_attn_shape *shape, void *workspace,
                                    size_t workspace_bytes) {
    if (Tq == 0 || Tk == 0) return;
    check_shape("attn_block_forward", shape);
    check_workspace("attn_block_forward", Tq, Tk, shape, workspace, workspace_bytes);
    attn_args a = args_make(be, q, k, v, q_pos, q_first, k_pos, Tq, Tk, shape, workspace);
    a.out = out, a.lse = lse;
    cudaStream_t stream = rt_cuda_compute_stream(be);
    switch (padded_head_dim(a.D)) {
    case 16: launch_forward<16>(a, stream); break;
    case 32: launch_forward<32>(a, stream); break;
    case 64: launch_forward<64>(a, stream); break;
    default: launch_forward<128>(a, stream); break; /* check_shape refused D > 128 */
    }
}

static void cuda_attn_delta(const rt_backend *be, float *delta, const float *out, const float *dout, size_t Tq,
                            const rt_attn_shape *shape) {
    if (Tq == 0) return;
    check_shape("attn_delta", shape);
    const size_t n_rows = Tq * (size_t)shape->n_heads;
    const size_t n_blocks = (n_rows + WARPS - 1) / WARPS;
    if (n_blocks > (size_t)INT_MAX) rt_fatal("attn_delta: Tq %zu with %d heads is too many rows", Tq, shape->n_heads);
    attn_delta_kernel<<<(unsigned)n_blocks, THREADS, 0, rt_cuda_compute_stream(be)>>>(
        delta, out, dout, n_rows, shape->n_heads, shape->head_dim, shape->out_stride);
    CUDA_CHECK_LAUNCH();
}

static void cuda_attn_block_backward(const rt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                     const float *q, const float *k, const float *v, const float *lse,
                                     const float *delta, const int64_t *q_pos, const int64_t *q_first,
                                     const int64_t *k_pos, size_t Tq, size_t Tk, const rt_attn_shape *shape,
                                     void *workspace, size_t workspace_bytes) {
    if (Tq == 0 || Tk == 0) return;
    check_shape("attn_block_backward", shape);
    check_workspace("attn_block_backward", Tq, Tk, shape, workspace, workspace_bytes);
    attn_args a = args_make(be, q, k, v, q_pos, q_first, k_pos, Tq, Tk, shape, workspace);
    a.dout = dout, a.lse_final = lse, a.delta = delta;
    a.dq = dq, a.dk = dk, a.dv = dv;
    a.vec_dout = rows_are_float4(dout, a.out_stride, a.D);
    cudaStream_t stream = rt_cuda_compute_stream(be);
    switch (padded_head_dim(a.D)) {
    case 16: launch_backward<16>(a, shape->n_kv_heads, stream); break;
    case 32: launch_backward<32>(a, shape->n_kv_heads, stream); break;
    case 64: launch_backward<64>(a, shape->n_kv_heads, stream); break;
    default: launch_backward<128>(a, shape->n_kv_heads, stream); break;
    }
}

void rt_cuda_fill_attention_ops(rt_backend_ops *ops) {
    ops->attn_workspace_bytes = cuda_attn_workspace_bytes;
    ops->attn_block_forward = cuda_attn_block_forward;
    ops->attn_delta = cuda_attn_delta;
    ops->attn_block_backward = cuda_attn_block_backward;
}
