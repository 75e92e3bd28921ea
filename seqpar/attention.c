/* seqpar/attention.c: exact attention of the local queries over the keys of the whole sequence, block by block. */
#include <math.h>
#include <stdlib.h>

#include "seqpar.h"

/*
 * Tl = local tokens, H = query heads, D = head dim. The local q, k, v rows
 * are the caller's (strides in rt_attn_shape), out (Tl, H*D) at out_stride,
 * lse and delta (Tl, H) contiguous.
 *
 * Forward: out = 0, lse = -inf, then every key/value block this rank holds
 * is merged into (out, lse) by the backend's attn_block_forward, which
 * masks by global positions, so the order of the blocks does not matter.
 * Backward: delta = rowsum(dout * out) once, then every held block adds
 * its share to dq, dk, dv with the final lse (attn_block_backward).
 *
 * Which blocks a rank holds: with comm == NULL or a group of one rank,
 * only its own keys (the whole sequence). With P > 1 ranks, the ring would
 * hold, at step s, the keys of rank (rank - s) mod P, received while the
 * previous step computes, and send dK/dV around a second ring in backward;
 * that path is not in this build yet, and a group of more than one rank
 * is refused with a clear message. The per-held-chunk functions below are
 * what each ring step calls.
 *
 * A held chunk is visited in blocks of at most ctx->block_size keys
 * (0 = the whole chunk as one block).
 */

static void refuse_ring(const seqpar_ctx *ctx) {
    if (ctx->comm != NULL && ctx->comm->size > 1)
        rt_fatal("seqpar: ring attention over %d ranks is not available in this build (the ring attention issue is "
                 "open); run with a sequence-parallel group of 1 rank",
                 ctx->comm->size);
}

/* Rows [j0, j0 + len) of a chunk of keys: how a held chunk is cut into blocks. */
static size_t block_len(const seqpar_ctx *ctx, size_t chunk_len, size_t j0) {
    size_t block = ctx->block_size == 0 ? chunk_len : ctx->block_size;
    return chunk_len - j0 < block ? chunk_len - j0 : block;
}

/* Merges the attention of the local queries onto one held chunk of keys/values (Tk tokens at k_pos). */
static void forward_held_chunk(seqpar_ctx *ctx, float *out, float *lse, const float *q, const int64_t *q_pos, size_t Tq,
                               const float *k, const float *v, const int64_t *k_pos, size_t Tk,
                               const rt_attn_shape *shape) {
    for (size_t j0 = 0; j0 < Tk; j0 += block_len(ctx, Tk, j0)) {
        size_t len = block_len(ctx, Tk, j0);
        ctx->backend->attn_block_forward(out, lse, q, k + j0 * shape->kv_stride, v + j0 * shape->kv_stride, q_pos,
                                         k_pos + j0, Tq, len, shape);
    }
}

/* Adds the gradients through one held chunk: dq of the local queries, dk/dv of the chunk's keys. */
static void backward_held_chunk(seqpar_ctx *ctx, float *dq, float *dk, float *dv, const float *dout, const float *q,
                                const float *lse, const float *delta, const int64_t *q_pos, size_t Tq, const float *k,
                                const float *v, const int64_t *k_pos, size_t Tk, const rt_attn_shape *shape) {
    for (size_t j0 = 0; j0 < Tk; j0 += block_len(ctx, Tk, j0)) {
        size_t len = block_len(ctx, Tk, j0), row = j0 * shape->kv_stride;
        ctx->backend->attn_block_backward(dq, dk + row, dv + row, dout, q, k + row, v + row, lse, delta, q_pos,
                                          k_pos + j0, Tq, len, shape);
    }
}

/* out = 0 (the H*D columns of every row) and lse = -inf, through the backend (device memory). */
static void init_running(const rt_backend *backend, float *out, float *lse, size_t Tl, const rt_attn_shape *shape) {
    size_t row_floats = (size_t)shape->n_heads * (size_t)shape->head_dim;
    if (shape->out_stride == row_floats) {
        backend->memset_zero(out, Tl * row_floats * sizeof(float));
    } else {
        for (size_t i = 0; i < Tl; i++)
            backend->memset_zero(out + i * shape->out_stride, row_floats * sizeof(float));
    }
    size_t n_lse = Tl * (size_t)shape->n_heads;
    float *minus_inf = malloc_check(n_lse * sizeof(float));
    for (size_t i = 0; i < n_lse; i++)
        minus_inf[i] = -INFINITY;
    backend->copy(lse, minus_inf, n_lse * sizeof(float));
    free(minus_inf);
}

void seqpar_attention_forward(seqpar_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                              const int64_t *pos, size_t Tl, const rt_attn_shape *shape) {
    refuse_ring(ctx);
    if (Tl == 0) return;
    init_running(ctx->backend, out, lse, Tl, shape);
    /* the chunks held: with one rank, its own keys */
    forward_held_chunk(ctx, out, lse, q, pos, Tl, k, v, pos, Tl, shape);
}

void seqpar_attention_backward(seqpar_ctx *ctx, float *dq, float *dk, float *dv, float *delta, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k, const float *v,
                               const int64_t *pos, size_t Tl, const rt_attn_shape *shape) {
    refuse_ring(ctx);
    if (Tl == 0) return;
    ctx->backend->attn_delta(delta, out, dout, Tl, shape);
    /* the chunks held: with one rank, its own keys, whose dk/dv are this rank's */
    backward_held_chunk(ctx, dq, dk, dv, dout, q, lse, delta, pos, Tl, k, v, pos, Tl, shape);
}
