/* seqpar.h: sequence parallelism: the zigzag layout and exact causal attention over a split sequence. */
#ifndef RT_SEQPAR_H
#define RT_SEQPAR_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/memory.h"
#include "runtime/comm/comm.h"
#include "runtime/core/common.h"
#include "runtime/core/tensor.h"

/*
 * Layout: with P ranks in the sequence-parallel group, a sequence of T
 * tokens is cut into 2P chunks of T/(2P); rank r holds chunks r and
 * 2P-1-r, in that order (zigzag: every rank gets the same causal work).
 * With P = 1 the two chunks are the two halves: one contiguous range.
 */
int seqpar_zigzag_spans(int rank, int n_ranks, size_t seq_len, rt_span spans[2], rt_error *err);

/*
 * Attention context of one sequence-parallel group. comm == NULL or a
 * group of one rank computes locally; larger groups run the ring. Keys are
 * visited in blocks of at most block_size tokens, each merged into the
 * running (out, lse) by the backend's attn_block_forward; block_size = 0
 * means one block per chunk.
 */
typedef struct {
    const rt_backend *backend;
    rt_device_memory *mem; /* where the workspace and ring buffers are allocated (accounted) */
    rt_comm *comm;
    size_t block_size;
    /* stats, accumulated until the caller resets them: ring messages received, each carrying the blocks of every
     * sequence of its call (P-1 K/V per forward; P-1 K/V and P-1 dK/dV per backward) */
    size_t kv_blocks_received;
    size_t dkv_blocks_received;
    double comm_exposed_s;
    /* The shapes every ring call has, agreed by the group at setup (seqpar_agree_shapes). */
    int group_agreed;
    size_t group_seqs, group_len, group_kv_width;
    /* Buffers, allocated from mem (accounted) by seqpar_reserve at setup, or on first use and grown when a call
     * needs more; reused across calls; seqpar_ctx_free (or destroying mem) releases them.
     * The attention workspace (every group size): the backend's scratch for attn_block_forward/backward,
     * attn_workspace_bytes(Tl, Tl, shape) for local sequences of up to Tl tokens. Ring buffers and key
     * positions: groups of more than one rank. B = sequences of a call. */
    size_t attn_workspace_bytes; /* bytes of attn_workspace */
    void *attn_workspace;
    size_t kv_ring_bytes;  /* bytes of each kv_ring buffer */
    size_t dkv_ring_bytes; /* bytes of each dkv_ring buffer */
    void *kv_ring[2];      /* fp32 [K (B*Tl, Hkv*D) | V (B*Tl, Hkv*D)]: one message per hop, double-buffered */
    void *dkv_ring[3];     /* fp32 [dK | dV] (B*Tl, Hkv*D) each: two partials being computed/sent, one being received */
    size_t key_positions_bytes;
    void *key_positions; /* int64 (P*Tl) 0, 1, ..., P*Tl - 1: what the kernels mask received keys by */
} seqpar_ctx;

/*
 * How one window is split over the P ranks of a ring when it is not the
 * zigzag: rank r holds n_pieces[r] pieces, pieces[r * max_pieces ...], in
 * increasing window order, its local rows being those pieces one after
 * another (seqpar/doc_layout.h makes them for packed documents). At most
 * SEQPAR_MAX_PIECES pieces per rank.
 */
#define SEQPAR_MAX_PIECES 16
typedef struct {
    size_t max_pieces;
    const rt_span *pieces;  /* (P * max_pieces) */
    const size_t *n_pieces; /* (P) */
} seqpar_window_layout;

/*
 * The tokens of one call: n_seqs sequences of Tl local tokens; row
 * b*Tl + i of q, k, v, out, lse, dq, dk, dv, delta (each at its stride of
 * rt_attn_shape; lse and delta (., H) contiguous) and of the positions is
 * local token i of sequence b.
 */
typedef struct {
    size_t n_seqs, Tl;
    const int64_t *pos;      /* (n_seqs*Tl) device: the kernels mask by these */
    const int64_t *host_pos; /* (n_seqs*Tl) host, the same values: which (query, key block) pairs to compute */
    /* Packed documents (NULL: none): the position where each token's document starts. A query sees only keys
     * at or after it, so documents never see each other; nothing about them travels, since a key's position
     * is all the mask needs and the ring knows every position from the layout. */
    const int64_t *first;      /* (n_seqs*Tl) device */
    const int64_t *host_first; /* (n_seqs*Tl) host, the same values */
    /* (n_seqs) each sequence's split over a ring, the same on every rank; NULL: the zigzag */
    const seqpar_window_layout *layouts;
} seqpar_tokens;

/*
 * Contract of a group of more than one rank (comm->size > 1):
 *  - at setup every rank calls seqpar_agree_shapes (collective), with the
 *    n_seqs and Tl of its calls;
 *  - every call then has exactly those n_seqs and Tl and that kv row width
 *    (checked on each rank, rt_fatal otherwise), and every rank makes the
 *    same calls in the same order: nothing is exchanged per call that could
 *    catch a rank calling with other shapes;
 *  - every sequence's positions are this rank's share of a sequence of
 *    P*Tl tokens: its zigzag chunks (seqpar_zigzag_spans order), or its
 *    pieces of the sequence's layout (tokens->layouts); checked on the host,
 *    rt_fatal otherwise. What the other ranks hold is known from their
 *    spans or pieces, so no positions travel.
 * A group of one rank takes any shapes and any positions (unordered too).
 */

/* Collective over ctx->comm (a no-op without a group of more than one rank): the group agrees that its calls
 * carry n_seqs sequences of Tl local tokens with the kv row width of shape, which the calls then check
 * locally. -1 with err on every rank when the ranks differ, or Tl is no zigzag share (2 chunks) of P*Tl. */
int seqpar_agree_shapes(seqpar_ctx *ctx, size_t n_seqs, size_t Tl, const rt_attn_shape *shape, rt_error *err);

/* Allocates the attention workspace and (groups of more than one rank) the ring buffers and key positions for
 * calls of up to n_seqs sequences of Tl local tokens now, so that training allocates no memory after setup: a
 * run that starts fits. Not collective. The workspace is sized for the thread count of now (see
 * attn_workspace_bytes in backend.h): set it before. -1 with err when the memory limit refuses. */
int seqpar_reserve(seqpar_ctx *ctx, size_t n_seqs, size_t Tl, const rt_attn_shape *shape, rt_error *err);

/* Frees the workspace and ring buffers (call before destroying ctx->mem); the context stays usable and
 * allocates again. */
void seqpar_ctx_free(seqpar_ctx *ctx);

/*
 * Forward of exact (causal) attention for every sequence of tokens at
 * once: the local q, k, v -> out (., H*D) and lse (., H), over the keys of
 * the whole sequence (all ranks of the group). One message per ring hop.
 */
void seqpar_attention_forward(seqpar_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                              const seqpar_tokens *tokens, const rt_attn_shape *shape);

/*
 * Backward: given dout, and the out and lse of the forward, accumulates
 * dq (+=) for local queries and dk, dv (+=) for the local keys/values,
 * the latter including the contributions of other ranks' queries.
 * delta (., H) is scratch the caller provides.
 */
void seqpar_attention_backward(seqpar_ctx *ctx, float *dq, float *dk, float *dv, float *delta, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k, const float *v,
                               const seqpar_tokens *tokens, const rt_attn_shape *shape);

#endif
