/* seqpar.h: sequence parallelism: the zigzag layout and exact causal attention over a split sequence. */
#ifndef RT_SEQPAR_H
#define RT_SEQPAR_H

#include <stddef.h>
#include <stdint.h>

#include "../runtime/backend.h"
#include "../runtime/comm.h"
#include "../runtime/common.h"
#include "../runtime/memory.h"
#include "../runtime/tensor.h"

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
    /* stats, accumulated until the caller resets them */
    size_t kv_blocks_received;
    size_t dkv_blocks_received;
    double comm_exposed_s;
    /* Buffers, allocated from mem (accounted) by seqpar_reserve at setup, or on first use and grown when a call
     * needs more; reused across calls; seqpar_ctx_free (or destroying mem) releases them.
     * The attention workspace (every group size): the backend's scratch for attn_block_forward/backward,
     * attn_workspace_bytes(Tl, Tl, shape) for local sequences of up to Tl tokens. Ring buffers: groups of
     * more than one rank. */
    size_t attn_workspace_bytes; /* bytes of attn_workspace */
    void *attn_workspace;
    size_t kv_ring_bytes;  /* bytes of each kv_ring buffer */
    size_t dkv_ring_bytes; /* bytes of each dkv_ring buffer */
    void *kv_ring[2];  /* packed K/V blocks [positions int64 (Tl) | K (Tl, Hkv*D) | V (Tl, Hkv*D)], double-buffered */
    void *dkv_ring[4]; /* fp32 [dK | dV] (Tl, 2*Hkv*D): two partials being computed/sent, two being received */
} seqpar_ctx;

/* Allocates the attention workspace and (groups of more than one rank) the ring buffers for local sequences
 * of up to Tl tokens now, so that training allocates no memory after setup: a run that starts fits. The
 * workspace is sized for the thread count of now (see attn_workspace_bytes in backend.h): set it before.
 * -1 with err when the memory limit refuses. */
int seqpar_reserve(seqpar_ctx *ctx, size_t Tl, const rt_attn_shape *shape, rt_error *err);

/* Frees the workspace and ring buffers (call before destroying ctx->mem); the context stays usable and
 * allocates again. */
void seqpar_ctx_free(seqpar_ctx *ctx);

/*
 * Forward of exact (causal) attention for one sequence: the local tokens'
 * q (Tl rows), k, v and positions pos (Tl) -> out (Tl, H*D) and lse (Tl, H),
 * over the keys of the whole sequence (all ranks of the group).
 */
void seqpar_attention_forward(seqpar_ctx *ctx, float *out, float *lse, const float *q, const float *k, const float *v,
                              const int64_t *pos, size_t Tl, const rt_attn_shape *shape);

/*
 * Backward: given dout, and the out and lse of the forward, accumulates
 * dq (+=) for local queries and dk, dv (+=) for the local keys/values,
 * the latter including the contributions of other ranks' queries.
 * delta (Tl, H) is scratch the caller provides.
 */
void seqpar_attention_backward(seqpar_ctx *ctx, float *dq, float *dk, float *dv, float *delta, const float *dout,
                               const float *out, const float *lse, const float *q, const float *k, const float *v,
                               const int64_t *pos, size_t Tl, const rt_attn_shape *shape);

#endif
