/* backend.h: the compute backend interface; model code runs every op through it and never sees CUDA. */
#ifndef RT_BACKEND_H
#define RT_BACKEND_H

#include <stddef.h>
#include <stdint.h>

/*
 * Conventions (as in llm.c): N = number of local tokens (B*T), C = channels,
 * H = query heads, Hkv = key/value heads, D = head dim, F = MLP hidden size,
 * V = vocab, Vp = padded vocab (row stride of embedding and logits).
 * Weights are (out_features, in_features): out = inp @ weight^T + bias.
 * All pointers are device pointers of the backend (host memory on CPU).
 *
 * Every *_backward ACCUMULATES (+=) into the gradients it writes, both of
 * weights and of inputs, so residual branches and micro-batches add up
 * without extra copies. Callers zero gradient buffers when they start.
 *
 * Positions are global token positions (int64): with sequence parallelism a
 * rank holds tokens from anywhere in the sequence, and RoPE, learned
 * position embeddings, causal masks and dropout masks all key on them.
 *
 * Determinism: for a fixed thread count every op gives the same bits run to
 * run (no atomics, fixed reduction order).
 *
 * A backend is an INSTANCE (rt_backend_open): three tables (memory: raw
 * device memory; ops: the compute ops and synchronize; copy_engine:
 * asynchronous copies on streams) plus the state they run on (CUDA: the device, the compute stream,
 * the cuBLAS handle and its workspace). Every slot takes the instance
 * first. Ops run on the instance's compute stream in issue order and return
 * without waiting for the device (CPU: they run to completion on the calling
 * thread); the host sees their results through copy (synchronous) or after
 * synchronize.
 * Values returned to the host (sum_squares) wait for the work before them.
 *
 * Precision: buffers are fp32 on every backend. The CUDA backend runs the
 * matmuls and attention on bf16 tensor cores with fp32 accumulation (inputs
 * rounded to bf16 inside the kernel or by cuBLAS's 32F_FAST_16BF compute
 * type); everything else, and every reduction, is fp32.
 *
 * No op allocates memory. Scratch that grows with the problem (attention's)
 * comes from a workspace the caller reserves once at setup, sized by the
 * backend for the largest call (attn_workspace_bytes), so it is counted in
 * the device memory accounting like every other buffer; the remaining
 * scratch is bounded and lives on the stack.
 */

/* Layout of one attention call: q rows of H*D floats, k/v rows of Hkv*D floats, each at its own stride. */
typedef struct {
    int n_heads;       /* H */
    int n_kv_heads;    /* Hkv; H % Hkv == 0, query head h uses kv head h / (H / Hkv) */
    int head_dim;      /* D; softmax scale is 1/sqrt(D) */
    size_t q_stride;   /* floats between consecutive tokens in q and dq */
    size_t kv_stride;  /* floats between consecutive tokens in k, v, dk, dv */
    size_t out_stride; /* floats between consecutive tokens in out and dout */
    int causal;        /* mask key j for query i when k_pos[j] > q_pos[i] (and see q_first below) */
} rt_attn_shape;

/* Key of the counter-based RNG: one mask per (seed, step, layer, site); the counter is (global position, channel). */
typedef struct {
    uint64_t seed;
    uint64_t step;
    uint32_t layer;
    uint32_t site; /* which dropout in the layer: 0 attention output, 1 MLP output, ... */
} rt_rng_key;

/* Copy engine handles (opaque): CUDA maps them to cudaStream_t and cudaEvent_t. */
typedef struct rt_stream rt_stream;
typedef struct rt_event rt_event;

typedef struct rt_backend rt_backend;

/* Raw device memory: the accounting lives in memory.h, which calls these. */
typedef struct {
    void *(*device_alloc)(const rt_backend *be, size_t bytes); /* NULL on failure */
    void (*device_free)(const rt_backend *be, void *ptr);
    void (*memset_zero)(const rt_backend *be, void *dst, size_t bytes);
    void (*copy)(const rt_backend *be, void *dst, const void *src, size_t bytes); /* any direction, synchronous */
} rt_backend_memory_ops;

/* The compute ops: run on the instance's compute stream in issue order (conventions at the top). */
typedef struct {
    /* --- dense --- */
    /* out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias (OC) or no bias when NULL. */
    void (*matmul_forward)(const rt_backend *be, float *out, const float *inp, const float *weight, const float *bias,
                           size_t N, int C, int OC);
    /* dinp (N,C) += dout @ weight; dweight (OC,C) += dout^T @ inp; dbias (OC) += sum_n dout. Any may be NULL. */
    void (*matmul_backward)(const rt_backend *be, float *dinp, float *dweight, float *dbias, const float *dout,
                            const float *inp, const float *weight, size_t N, int C, int OC);

    /* --- embeddings --- */
    /* out (N,C) = wte[tokens[n]] (+ wpe[pos[n]] when wpe != NULL). */
    void (*embedding_forward)(const rt_backend *be, float *out, const int32_t *tokens, const int64_t *pos,
                              const float *wte, const float *wpe, size_t N, int C);
    void (*embedding_backward)(const rt_backend *be, float *dwte, float *dwpe, const float *dout, const int32_t *tokens,
                               const int64_t *pos, size_t N, int C);

    /* --- norms --- */
    /* LayerNorm with eps; mean and rstd (N) are saved for backward. */
    void (*layernorm_forward)(const rt_backend *be, float *out, float *mean, float *rstd, const float *inp,
                              const float *weight, const float *bias, size_t N, int C, float eps);
    void (*layernorm_backward)(const rt_backend *be, float *dinp, float *dweight, float *dbias, const float *dout,
                               const float *inp, const float *weight, const float *mean, const float *rstd, size_t N,
                               int C);
    /* RMSNorm: out = inp * rstd * weight, rstd = 1/sqrt(mean(inp^2) + eps). */
    void (*rmsnorm_forward)(const rt_backend *be, float *out, float *rstd, const float *inp, const float *weight,
                            size_t N, int C, float eps);
    void (*rmsnorm_backward)(const rt_backend *be, float *dinp, float *dweight, const float *dout, const float *inp,
                             const float *weight, const float *rstd, size_t N, int C);

    /* --- position --- */
    /* Rotary embedding, in place, on n_heads heads of head_dim per token at the given row stride.
     * Pairs (2i, 2i+1) rotate by angle pos * theta^(-2i/head_dim). Backward rotates by -angle (in place). */
    void (*rope_forward)(const rt_backend *be, float *x, const int64_t *pos, size_t N, int n_heads, int head_dim,
                         size_t stride, float theta);
    void (*rope_backward)(const rt_backend *be, float *dx, const int64_t *pos, size_t N, int n_heads, int head_dim,
                          size_t stride, float theta);

    /* --- pointwise --- */
    /* tanh-approximate GELU (GPT-2). */
    void (*gelu_forward)(const rt_backend *be, float *out, const float *inp, size_t n);
    void (*gelu_backward)(const rt_backend *be, float *dinp, const float *inp, const float *dout, size_t n);
    /* gate_up (N, 2F): gate in [0,F), up in [F,2F) of each row; out (N,F) = silu(gate) * up. */
    void (*swiglu_forward)(const rt_backend *be, float *out, const float *gate_up, size_t N, int F);
    void (*swiglu_backward)(const rt_backend *be, float *dgate_up, const float *dout, const float *gate_up, size_t N,
                            int F);
    /* out = a + b (out may alias a or b). */
    void (*add)(const rt_backend *be, float *out, const float *a, const float *b, size_t n);
    /* Inverted dropout in place on x (N,C): keep with prob 1-p, scale kept by 1/(1-p). The mask depends only on
     * (key, pos[n], channel), so forward, recompute and backward (applied to the gradient) draw the same mask
     * on any number of ranks. p == 0 is a no-op. */
    void (*dropout)(const rt_backend *be, float *x, const int64_t *pos, size_t N, int C, float p, rt_rng_key key);

    /* --- attention (flash-style blocks; seqpar drives them locally or around the ring) --- */
    /* Bytes of device workspace that attn_block_forward and attn_block_backward need for any call with
     * Tq <= max_Tq and Tk <= max_Tk on this shape (strides do not matter). The CPU backend sizes it for
     * omp_get_max_threads() at this call, its per-thread scratch growing with max_Tk when the thread count
     * does not divide n_kv_heads: fix the thread count before setup and do not change it afterwards (a
     * call that needs more than it was given ends the job, naming the size it needs). */
    size_t (*attn_workspace_bytes)(const rt_backend *be, size_t max_Tq, size_t max_Tk, const rt_attn_shape *shape);
    /* Merges the attention of queries q (Tq tokens) onto keys/values k,v (Tk tokens) into the running
     * out (Tq, H*D) and lse (Tq, H), both fp32. Start with out = 0, lse = -INFINITY. A query that sees
     * no key of this block leaves its row untouched. Positions give the masks: key j is visible to query i
     * when k_pos[j] <= q_pos[i] (causal shapes) and, where q_first is not NULL, k_pos[j] >= q_first[i] (the
     * first position of query i's document: packed documents never see each other). workspace: device
     * memory of workspace_bytes, 64-byte aligned (every device allocation is), at least
     * attn_workspace_bytes(Tq, Tk, shape); the op overwrites it (calls on one workspace run one at a
     * time); too small is a programming error (rt_fatal with the size needed). */
    void (*attn_block_forward)(const rt_backend *be, float *out, float *lse, const float *q, const float *k,
                               const float *v, const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos,
                               size_t Tq, size_t Tk, const rt_attn_shape *shape, void *workspace,
                               size_t workspace_bytes);
    /* delta (Tq, H) = rowsum(dout * out) per head: computed once, before any block backward. */
    void (*attn_delta)(const rt_backend *be, float *delta, const float *out, const float *dout, size_t Tq,
                       const rt_attn_shape *shape);
    /* Backward of one block using the FINAL lse and delta: dq += ..., dk += ..., dv += ... (fp32).
     * workspace as for attn_block_forward. */
    void (*attn_block_backward)(const rt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                const float *q, const float *k, const float *v, const float *lse, const float *delta,
                                const int64_t *q_pos, const int64_t *q_first, const int64_t *k_pos, size_t Tq,
                                size_t Tk, const rt_attn_shape *shape, void *workspace, size_t workspace_bytes);

    /* --- loss --- */
    /* For a tile of n tokens: logits (n, Vp) holds x @ wte^T. Writes losses[i] = -log softmax(logits_i)[t_i]
     * over the first V columns (padded columns ignored) and, when dloss_scale != 0, overwrites logits with
     * dlogits = (softmax - onehot) * dloss_scale (padded columns set to 0). A target < 0 is ignored: loss 0,
     * dlogits 0. */
    void (*softmax_xent)(const rt_backend *be, float *logits, float *losses, const int32_t *targets, size_t n, int V,
                         int Vp, float dloss_scale);

    /* --- reductions and optimizer --- */
    /* Sum of squares in double, fixed order. */
    double (*sum_squares)(const rt_backend *be, const float *x, size_t n);
    void (*scale)(const rt_backend *be, float *x, float factor, size_t n);
    /* AdamW with decoupled weight decay and bias correction at step t (1-based), on a flat range:
     * m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p).
     * The caller passes weight_decay = 0 for ranges that take no decay (norms, biases). */
    void (*adamw_update)(const rt_backend *be, float *param, const float *grad, float *m, float *v, size_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, int t);
    /* Blocks the calling thread until every op issued on the compute stream has finished. */
    void (*synchronize)(const rt_backend *be);
} rt_backend_ops;

/*
 * The copy engine: asynchronous copies on streams, completion events (activation offload).
 * CUDA mapping: stream = a non-blocking side stream (cudaStreamCreateWithFlags), copy_async =
 * cudaMemcpyAsync(cudaMemcpyDefault) on it, event = cudaEvent_t (cudaEventDisableTiming), host_alloc =
 * cudaMallocHost (pinned, so the copies really are asynchronous). On CPU each stream is a worker thread.
 *
 * Ordering with compute: a copy_async starts only after every op issued on the compute path before the
 * call has finished (CUDA: the backend records an event on the compute stream and makes s wait on it
 * before the copy), so a copy never reads a buffer before the op writing it is done, nor overwrites one
 * an earlier op still reads. The other direction is the caller's: an op may touch a copy's destination
 * (or overwrite its source) only after the event recorded behind the copy completed, as seen by
 * event_synchronize or event_query on the host, or when the op is ordered after it by
 * stream_wait_event(be, NULL, e). Reading a copy's source concurrently with the copy is fine.
 * Creation failures are fatal (rt_fatal): like out-of-memory, nothing sensible can follow. A table without
 * a copy engine leaves its slots NULL (rt_be_has_copy_engine is then 0; activation offload refuses it).
 */
typedef struct {
    rt_stream *(*stream_create)(const rt_backend *be);
    /* Waits for the work queued on s, then frees it (cudaStreamSynchronize + cudaStreamDestroy). */
    void (*stream_destroy)(const rt_backend *be, rt_stream *s);
    /* Queues a copy of bytes from src to dst (any direction); returns at once. Copies on one stream run in
     * the order they were queued; copies on different streams may overlap. dst and src must stay valid until
     * an event recorded after the copy completes. */
    void (*copy_async)(const rt_backend *be, rt_stream *s, void *dst, const void *src, size_t bytes);
    rt_event *(*event_create)(const rt_backend *be);
    /* Frees e; a record still pending is waited for first. */
    void (*event_destroy)(const rt_backend *be, rt_event *e);
    /* Captures the work queued on s so far (cudaEventRecord): e completes when all of it is done. s == NULL
     * is the compute stream (the ops issued so far; on CPU they are done, so e completes at once). Recording
     * again replaces the earlier capture. An event never recorded counts as complete. */
    void (*event_record)(const rt_backend *be, rt_event *e, rt_stream *s);
    /* Work queued on s after this call (s == NULL: ops issued on the compute stream after it) starts only
     * once e has completed (cudaStreamWaitEvent). Never blocks the host on CUDA, which is how the offloader
     * and the ring order a step's copies and compute without waiting; on CPU a wait of the compute stream
     * blocks the calling thread until e completes (its ops run on that thread), a wait of a copy stream is
     * queued on its worker. */
    void (*stream_wait_event)(const rt_backend *be, rt_stream *s, rt_event *e);
    /* Blocks the calling thread until e completes (cudaEventSynchronize). */
    void (*event_synchronize)(const rt_backend *be, rt_event *e);
    /* 1 when e has completed, 0 while its work is pending; never blocks (cudaEventQuery == cudaSuccess). */
    int (*event_query)(const rt_backend *be, rt_event *e);
    /* Host memory that the copy engine can target asynchronously: pinned on CUDA, 64-byte aligned on CPU.
     * NULL on failure; a zero-byte request still gets a unique pointer. */
    void *(*host_alloc)(const rt_backend *be, size_t bytes);
    void (*host_free)(const rt_backend *be, void *ptr);
} rt_copy_engine;

/* One instance: its state and its three tables. */
struct rt_backend {
    const char *name; /* "cpu", "cuda" */
    void *state;      /* the instance's own (CUDA: device, compute stream, cuBLAS handle); NULL on CPU */
    /* Device bytes the instance reserved when it opened (CUDA: the cuBLAS workspace), counted by
     * rt_device_memory_init against the limit so the accounting sees them. */
    size_t reserved_bytes;
    /* Waits for the instance's work and frees its state; NULL for an instance that is never freed (CPU). */
    void (*close)(rt_backend *be);

    rt_backend_memory_ops memory; /* raw device memory */
    rt_backend_ops ops;           /* compute */
    rt_copy_engine copy_engine;   /* streams, events, host memory for asynchronous copies */
};

/* Callers go through these wrappers, never be->ops.matmul_forward(be, ...): the instance is named once, and the table
 * can change shape without touching every call site. Each does exactly what its slot above says. */
static inline void *rt_be_device_alloc(const rt_backend *be, size_t bytes) {
    return be->memory.device_alloc(be, bytes);
}
static inline void rt_be_device_free(const rt_backend *be, void *ptr) { be->memory.device_free(be, ptr); }
static inline void rt_be_memset_zero(const rt_backend *be, void *dst, size_t bytes) {
    be->memory.memset_zero(be, dst, bytes);
}
static inline void rt_be_copy(const rt_backend *be, void *dst, const void *src, size_t bytes) {
    be->memory.copy(be, dst, src, bytes);
}
static inline void rt_be_matmul_forward(const rt_backend *be, float *out, const float *inp, const float *weight,
                                        const float *bias, size_t N, int C, int OC) {
    be->ops.matmul_forward(be, out, inp, weight, bias, N, C, OC);
}
static inline void rt_be_matmul_backward(const rt_backend *be, float *dinp, float *dweight, float *dbias,
                                         const float *dout, const float *inp, const float *weight, size_t N, int C,
                                         int OC) {
    be->ops.matmul_backward(be, dinp, dweight, dbias, dout, inp, weight, N, C, OC);
}
static inline void rt_be_embedding_forward(const rt_backend *be, float *out, const int32_t *tokens, const int64_t *pos,
                                           const float *wte, const float *wpe, size_t N, int C) {
    be->ops.embedding_forward(be, out, tokens, pos, wte, wpe, N, C);
}
static inline void rt_be_embedding_backward(const rt_backend *be, float *dwte, float *dwpe, const float *dout,
                                            const int32_t *tokens, const int64_t *pos, size_t N, int C) {
    be->ops.embedding_backward(be, dwte, dwpe, dout, tokens, pos, N, C);
}
static inline void rt_be_layernorm_forward(const rt_backend *be, float *out, float *mean, float *rstd, const float *inp,
                                           const float *weight, const float *bias, size_t N, int C, float eps) {
    be->ops.layernorm_forward(be, out, mean, rstd, inp, weight, bias, N, C, eps);
}
static inline void rt_be_layernorm_backward(const rt_backend *be, float *dinp, float *dweight, float *dbias,
                                            const float *dout, const float *inp, const float *weight, const float *mean,
                                            const float *rstd, size_t N, int C) {
    be->ops.layernorm_backward(be, dinp, dweight, dbias, dout, inp, weight, mean, rstd, N, C);
}
static inline void rt_be_rmsnorm_forward(const rt_backend *be, float *out, float *rstd, const float *inp,
                                         const float *weight, size_t N, int C, float eps) {
    be->ops.rmsnorm_forward(be, out, rstd, inp, weight, N, C, eps);
}
static inline void rt_be_rmsnorm_backward(const rt_backend *be, float *dinp, float *dweight, const float *dout,
                                          const float *inp, const float *weight, const float *rstd, size_t N, int C) {
    be->ops.rmsnorm_backward(be, dinp, dweight, dout, inp, weight, rstd, N, C);
}
static inline void rt_be_rope_forward(const rt_backend *be, float *x, const int64_t *pos, size_t N, int n_heads,
                                      int head_dim, size_t stride, float theta) {
    be->ops.rope_forward(be, x, pos, N, n_heads, head_dim, stride, theta);
}
static inline void rt_be_rope_backward(const rt_backend *be, float *dx, const int64_t *pos, size_t N, int n_heads,
                                       int head_dim, size_t stride, float theta) {
    be->ops.rope_backward(be, dx, pos, N, n_heads, head_dim, stride, theta);
}
static inline void rt_be_gelu_forward(const rt_backend *be, float *out, const float *inp, size_t n) {
    be->ops.gelu_forward(be, out, inp, n);
}
static inline void rt_be_gelu_backward(const rt_backend *be, float *dinp, const float *inp, const float *dout,
                                       size_t n) {
    be->ops.gelu_backward(be, dinp, inp, dout, n);
}
static inline void rt_be_swiglu_forward(const rt_backend *be, float *out, const float *gate_up, size_t N, int F) {
    be->ops.swiglu_forward(be, out, gate_up, N, F);
}
static inline void rt_be_swiglu_backward(const rt_backend *be, float *dgate_up, const float *dout, const float *gate_up,
                                         size_t N, int F) {
    be->ops.swiglu_backward(be, dgate_up, dout, gate_up, N, F);
}
static inline void rt_be_add(const rt_backend *be, float *out, const float *a, const float *b, size_t n) {
    be->ops.add(be, out, a, b, n);
}
static inline void rt_be_dropout(const rt_backend *be, float *x, const int64_t *pos, size_t N, int C, float p,
                                 rt_rng_key key) {
    be->ops.dropout(be, x, pos, N, C, p, key);
}
static inline size_t rt_be_attn_workspace_bytes(const rt_backend *be, size_t max_Tq, size_t max_Tk,
                                                const rt_attn_shape *shape) {
    return be->ops.attn_workspace_bytes(be, max_Tq, max_Tk, shape);
}
static inline void rt_be_attn_block_forward(const rt_backend *be, float *out, float *lse, const float *q,
                                            const float *k, const float *v, const int64_t *q_pos,
                                            const int64_t *q_first, const int64_t *k_pos, size_t Tq, size_t Tk,
                                            const rt_attn_shape *shape, void *workspace, size_t workspace_bytes) {
    be->ops.attn_block_forward(be, out, lse, q, k, v, q_pos, q_first, k_pos, Tq, Tk, shape, workspace, workspace_bytes);
}
static inline void rt_be_attn_delta(const rt_backend *be, float *delta, const float *out, const float *dout, size_t Tq,
                                    const rt_attn_shape *shape) {
    be->ops.attn_delta(be, delta, out, dout, Tq, shape);
}
static inline void rt_be_attn_block_backward(const rt_backend *be, float *dq, float *dk, float *dv, const float *dout,
                                             const float *q, const float *k, const float *v, const float *lse,
                                             const float *delta, const int64_t *q_pos, const int64_t *q_first,
                                             const int64_t *k_pos, size_t Tq, size_t Tk, const rt_attn_shape *shape,
                                             void *workspace, size_t workspace_bytes) {
    be->ops.attn_block_backward(be, dq, dk, dv, dout, q, k, v, lse, delta, q_pos, q_first, k_pos, Tq, Tk, shape,
                                workspace, workspace_bytes);
}
static inline void rt_be_softmax_xent(const rt_backend *be, float *logits, float *losses, const int32_t *targets,
                                      size_t n, int V, int Vp, float dloss_scale) {
    be->ops.softmax_xent(be, logits, losses, targets, n, V, Vp, dloss_scale);
}
static inline double rt_be_sum_squares(const rt_backend *be, const float *x, size_t n) {
    return be->ops.sum_squares(be, x, n);
}
static inline void rt_be_scale(const rt_backend *be, float *x, float factor, size_t n) {
    be->ops.scale(be, x, factor, n);
}
static inline void rt_be_adamw_update(const rt_backend *be, float *param, const float *grad, float *m, float *v,
                                      size_t n, float lr, float beta1, float beta2, float eps, float weight_decay,
                                      int t) {
    be->ops.adamw_update(be, param, grad, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
}
/* 1 when the table has a copy engine (the slots below are set). */
static inline int rt_be_has_copy_engine(const rt_backend *be) {
    return be->copy_engine.copy_async != NULL && be->copy_engine.host_alloc != NULL;
}
static inline rt_stream *rt_be_stream_create(const rt_backend *be) { return be->copy_engine.stream_create(be); }
static inline void rt_be_stream_destroy(const rt_backend *be, rt_stream *s) { be->copy_engine.stream_destroy(be, s); }
static inline void rt_be_copy_async(const rt_backend *be, rt_stream *s, void *dst, const void *src, size_t bytes) {
    be->copy_engine.copy_async(be, s, dst, src, bytes);
}
static inline rt_event *rt_be_event_create(const rt_backend *be) { return be->copy_engine.event_create(be); }
static inline void rt_be_event_destroy(const rt_backend *be, rt_event *e) { be->copy_engine.event_destroy(be, e); }
static inline void rt_be_event_record(const rt_backend *be, rt_event *e, rt_stream *s) {
    be->copy_engine.event_record(be, e, s);
}
static inline void rt_be_stream_wait_event(const rt_backend *be, rt_stream *s, rt_event *e) {
    be->copy_engine.stream_wait_event(be, s, e);
}
static inline void rt_be_synchronize(const rt_backend *be) { be->ops.synchronize(be); }
static inline void rt_be_event_synchronize(const rt_backend *be, rt_event *e) {
    be->copy_engine.event_synchronize(be, e);
}
static inline int rt_be_event_query(const rt_backend *be, rt_event *e) { return be->copy_engine.event_query(be, e); }
static inline void *rt_be_host_alloc(const rt_backend *be, size_t bytes) {
    return be->copy_engine.host_alloc(be, bytes);
}
static inline void rt_be_host_free(const rt_backend *be, void *ptr) { be->copy_engine.host_free(be, ptr); }

#endif
