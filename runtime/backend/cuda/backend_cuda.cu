/* backend_cuda.cu: the CUDA backend instance: open and close, device memory, cuBLAS matmuls, the copy engine. */
/*
 * Conventions (backend.h): N = tokens, C = input channels, OC = output
 * channels; buffers are row-major fp32 device memory.
 *
 * The instance. rt_backend_cuda_open picks device local_rank % count, makes
 * one non-blocking compute stream on which every op runs in issue order (and
 * the communication stream the NCCL planes share, backend_cuda.h), a
 * cuBLAS handle bound to compute, and reserves everything the ops will ever need
 * beyond their arguments (cuBLAS workspace, the ops' reduction scratch, the
 * sum_squares partials), so no op allocates and rt_backend.reserved_bytes
 * tells the memory accounting the whole cost up front.
 *
 * Matmuls. cuBLAS is column-major; a row-major (r, c) matrix is the
 * column-major (c, r) matrix with the same leading dimension, so each
 * row-major product below is the column-major product of the transposes,
 * spelled out above each call. The compute type CUBLAS_COMPUTE_32F_FAST_16BF
 * rounds the fp32 inputs to bf16 for the tensor cores and accumulates in
 * fp32. cuBLAS is bit-reproducible for a fixed toolkit, GPU model and
 * workspace (its atomics mode stays off by default); the bias gradient is a
 * deterministic column sum (backend_cuda_ops.cu). The int dimensions of
 * cuBLAS bound a call, so N beyond CUDA_GEMM_MAX_ROWS runs as several calls:
 * row slices for out and dinp, and for dweight successive k-slices added
 * with beta = 1.
 *
 * Copy engine. An rt_stream is a non-blocking stream plus an event that
 * copy_async records on compute and makes the stream wait on, which orders
 * the copy after every op issued before it without blocking the host. An
 * rt_event remembers whether it was ever recorded: CUDA treats a fresh event
 * as complete too, but the flag lets the waits skip the call and keeps the
 * contract explicit.
 *
 * Errors. Every CUDA call is checked (CUDA_CHECK): a failure ends the job
 * with the call and place. The exceptions are the ones that are values:
 * device and host allocation return NULL (the accounting reports the
 * out-of-memory with context), and no device at open is an rt_error.
 * Those failed calls leave their error as the thread's "last error", which
 * the next CUDA_CHECK_LAUNCH would take for a bad launch, so it is cleared.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* common.h is a C header; C++ spells _Noreturn differently. */
#define _Noreturn __attribute__((noreturn))
extern "C" {
#include "runtime/core/common.h"
}
#undef _Noreturn

#include "backend_cuda.h"

#define CUDA_CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)
/* The ops' scratch: channel-reduction partials and the embedding backward's sort (backend_cuda_ops.cu sizes
 * its calls to fit, in chunks where needed). */
#define CUDA_OP_SCRATCH_BYTES ((size_t)64 << 20)
/* Rows per cuBLAS call: within int, and a multiple of every tile size. */
#define CUDA_GEMM_MAX_ROWS ((size_t)1 << 30)
/* Smallest device allocation, so a zero-byte request still gets a unique pointer. */
#define CUDA_MIN_ALLOC_BYTES 256

struct rt_stream {
    cudaStream_t stream;
    cudaEvent_t compute_mark; /* recorded on compute by copy_async; the stream waits on it before the copy */
};

struct rt_event {
    cudaEvent_t event;
    int recorded; /* 0: never recorded, complete by definition */
};

void rt_cuda_check(cudaError_t rc, const char *call, const char *file, int line) {
    if (rc != cudaSuccess)
        rt_fatal("CUDA call %s failed at %s:%d: %s (%s)", call, file, line, cudaGetErrorString(rc),
                 cudaGetErrorName(rc));
}

void rt_cublas_check(cublasStatus_t rc, const char *call, const char *file, int line) {
    if (rc != CUBLAS_STATUS_SUCCESS)
        rt_fatal("cuBLAS call %s failed at %s:%d: %s", call, file, line, cublasGetStatusString(rc));
}

/* ----------------------------------------------------------------------------
 * raw memory
 */

static void *cuda_device_alloc(const rt_backend *be, size_t bytes) {
    (void)be;
    void *ptr = NULL;
    /* cudaMalloc aligns to 256 bytes, beyond the 64 the interface promises */
    if (cudaMalloc(&ptr, bytes ? bytes : CUDA_MIN_ALLOC_BYTES) != cudaSuccess) {
        (void)cudaGetLastError(); /* out of memory is a value here, not a launch error for the next check */
        return NULL;
    }
    return ptr;
}

static void cuda_device_free(const rt_backend *be, void *ptr) {
    (void)be;
    if (ptr) CUDA_CHECK(cudaFree(ptr));
}

static void cuda_memset_zero(const rt_backend *be, void *dst, size_t bytes) {
    if (bytes) CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, rt_cuda_compute_stream(be)));
}

/* Ordered after the ops before it on compute, and complete when it returns. */
static void cuda_copy(const rt_backend *be, void *dst, const void *src, size_t bytes) {
    cudaStream_t compute = rt_cuda_compute_stream(be);
    if (bytes && dst != src) CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, compute));
    CUDA_CHECK(cudaStreamSynchronize(compute)); /* even with nothing to copy: the host sees the ops before it */
}

/* ----------------------------------------------------------------------------
 * dense
 */

static void cuda_gemm(const rt_backend *be, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                      const float *A, int lda, const float *B, int ldb, float beta, float *Cmat, int ldc) {
    const float alpha = 1.0f;
    CUBLAS_CHECK(cublasGemmEx(rt_cuda_state_of(be)->cublas, transa, transb, m, n, k, &alpha, A, CUDA_R_32F, lda, B,
                              CUDA_R_32F, ldb, &beta, Cmat, CUDA_R_32F, ldc, CUBLAS_COMPUTE_32F_FAST_16BF,
                              CUBLAS_GEMM_DEFAULT));
}

/* out (N, OC) += bias (OC) on every row: one block walks a row at a time, threads across the columns. */
static __global__ void add_bias_kernel(float *out, const float *bias, size_t N, int OC) {
    for (size_t n = blockIdx.x; n < N; n += gridDim.x) {
        float *out_row = out + n * (size_t)OC;
        for (int c = threadIdx.x; c < OC; c += blockDim.x)
            out_row[c] += bias[c];
    }
}

/* out (N,OC) = inp (N,C) @ weight (OC,C)^T + bias. Column-major: out^T (OC,N) = weight (op T of the (C,OC)
 * view) @ inp^T (the (C,N) view). */
static void cuda_matmul_forward(const rt_backend *be, float *out, const float *inp, const float *weight,
                                const float *bias, size_t N, int C, int OC) {
    if (N == 0 || OC <= 0) return;
    if (C > 0) {
        for (size_t n0 = 0; n0 < N; n0 += CUDA_GEMM_MAX_ROWS) {
            int rows = (int)(N - n0 < CUDA_GEMM_MAX_ROWS ? N - n0 : CUDA_GEMM_MAX_ROWS);
            cuda_gemm(be, CUBLAS_OP_T, CUBLAS_OP_N, OC, rows, C, weight, C, inp + n0 * (size_t)C, C, 0.0f,
                      out + n0 * (size_t)OC, OC);
        }
    } else {
        cuda_memset_zero(be, out, N * (size_t)OC * sizeof(float));
    }
    if (bias) {
        size_t blocks = N < 65536 ? N : 65536;
        int threads = OC < 256 ? (OC + 31) / 32 * 32 : 256;
        add_bias_kernel<<<(unsigned)blocks, threads, 0, rt_cuda_compute_stream(be)>>>(out, bias, N, OC);
        CUDA_CHECK_LAUNCH();
    }
}

/* dinp (N,C) += dout (N,OC) @ weight (OC,C)   column-major: dinp^T (C,N) = weight^T (C,OC) @ dout^T (OC,N)
 * dweight (OC,C) += dout^T @ inp (N,C)         column-major: dweight^T (C,OC) = inp^T (C,N) @ dout (op T)
 * dbias (OC) += column sums of dout. */
static void cuda_matmul_backward(const rt_backend *be, float *dinp, float *dweight, float *dbias, const float *dout,
                                 const float *inp, const float *weight, size_t N, int C, int OC) {
    if (N == 0 || OC <= 0) return;
    for (size_t n0 = 0; n0 < N; n0 += CUDA_GEMM_MAX_ROWS) {
        int rows = (int)(N - n0 < CUDA_GEMM_MAX_ROWS ? N - n0 : CUDA_GEMM_MAX_ROWS);
        const float *dout_rows = dout + n0 * (size_t)OC;
        if (dinp && C > 0) {
            cuda_gemm(be, CUBLAS_OP_N, CUBLAS_OP_N, C, rows, OC, weight, C, dout_rows, OC, 1.0f, dinp + n0 * (size_t)C,
                      C);
        }
        if (dweight && C > 0) {
            cuda_gemm(be, CUBLAS_OP_N, CUBLAS_OP_T, C, OC, rows, inp + n0 * (size_t)C, C, dout_rows, OC, 1.0f, dweight,
                      C);
        }
    }
    if (dbias) rt_cuda_add_column_sums(be, dbias, dout, N, OC);
}

/* ----------------------------------------------------------------------------
 * copy engine
 */

static rt_stream *cuda_stream_create(const rt_backend *be) {
    (void)be;
    rt_stream *s = (rt_stream *)calloc_check(1, sizeof *s);
    CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&s->compute_mark, cudaEventDisableTiming));
    return s;
}

static void cuda_stream_destroy(const rt_backend *be, rt_stream *s) {
    (void)be;
    if (!s) return;
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    CUDA_CHECK(cudaEventDestroy(s->compute_mark));
    CUDA_CHECK(cudaStreamDestroy(s->stream));
    free(s);
}

/* The wait captures compute as it is now, so re-recording compute_mark at the next copy is safe. */
static void cuda_copy_async(const rt_backend *be, rt_stream *s, void *dst, const void *src, size_t bytes) {
    if (!bytes) return;
    CUDA_CHECK(cudaEventRecord(s->compute_mark, rt_cuda_compute_stream(be)));
    CUDA_CHECK(cudaStreamWaitEvent(s->stream, s->compute_mark, 0));
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDefault, s->stream));
}

static rt_event *cuda_event_create(const rt_backend *be) {
    (void)be;
    rt_event *e = (rt_event *)calloc_check(1, sizeof *e);
    CUDA_CHECK(cudaEventCreateWithFlags(&e->event, cudaEventDisableTiming));
    return e;
}

static void cuda_event_destroy(const rt_backend *be, rt_event *e) {
    (void)be;
    if (!e) return;
    if (e->recorded) CUDA_CHECK(cudaEventSynchronize(e->event));
    CUDA_CHECK(cudaEventDestroy(e->event));
    free(e);
}

static void cuda_event_record(const rt_backend *be, rt_event *e, rt_stream *s) {
    CUDA_CHECK(cudaEventRecord(e->event, s ? s->stream : rt_cuda_compute_stream(be)));
    e->recorded = 1;
}

static void cuda_stream_wait_event(const rt_backend *be, rt_stream *s, rt_event *e) {
    if (!e->recorded) return;
    CUDA_CHECK(cudaStreamWaitEvent(s ? s->stream : rt_cuda_compute_stream(be), e->event, 0));
}

static void cuda_synchronize(const rt_backend *be) { CUDA_CHECK(cudaStreamSynchronize(rt_cuda_compute_stream(be))); }

static void cuda_event_synchronize(const rt_backend *be, rt_event *e) {
    (void)be;
    if (e->recorded) CUDA_CHECK(cudaEventSynchronize(e->event));
}

static int cuda_event_query(const rt_backend *be, rt_event *e) {
    (void)be;
    if (!e->recorded) return 1;
    cudaError_t rc = cudaEventQuery(e->event);
    if (rc == cudaSuccess) return 1;
    if (rc == cudaErrorNotReady) {
        (void)cudaGetLastError(); /* "not ready" is an answer, not a launch error for the next check */
        return 0;
    }
    rt_cuda_check(rc, "cudaEventQuery(e->event)", __FILE__, __LINE__);
    return 0;
}

static void *cuda_host_alloc(const rt_backend *be, size_t bytes) {
    (void)be;
    void *ptr = NULL;
    if (cudaMallocHost(&ptr, bytes ? bytes : 64) != cudaSuccess) {
        (void)cudaGetLastError();
        return NULL;
    }
    return ptr;
}

static void cuda_host_free(const rt_backend *be, void *ptr) {
    (void)be;
    if (ptr) CUDA_CHECK(cudaFreeHost(ptr));
}

/* ----------------------------------------------------------------------------
 * the instance
 */

static void cuda_close(rt_backend *be) {
    if (!be) return;
    rt_cuda_state *st = rt_cuda_state_of(be);
    CUDA_CHECK(cudaSetDevice(st->device));
    CUDA_CHECK(cudaStreamSynchronize(st->compute));
    CUDA_CHECK(cudaStreamSynchronize(st->comm));
    CUBLAS_CHECK(cublasDestroy(st->cublas));
    CUDA_CHECK(cudaFree(st->cublas_workspace));
    CUDA_CHECK(cudaFree(st->op_scratch));
    CUDA_CHECK(cudaFree(st->reduce_scratch));
    CUDA_CHECK(cudaFreeHost(st->reduce_host));
    CUDA_CHECK(cudaStreamDestroy(st->comm));
    CUDA_CHECK(cudaStreamDestroy(st->compute));
    free(st);
    free(be);
}

int rt_backend_cuda_open(const rt_backend **out, int local_rank, rt_error *err) {
    *out = NULL;
    int count = 0;
    cudaError_t rc = cudaGetDeviceCount(&count);
    if (rc != cudaSuccess || count <= 0) {
        const char *why = rc != cudaSuccess ? cudaGetErrorString(rc) : "0 devices";
        (void)cudaGetLastError();
        return rt_fail(err, "device.kind = cuda: no CUDA device is visible (cudaGetDeviceCount: %s)", why);
    }

    rt_cuda_state *st = (rt_cuda_state *)calloc_check(1, sizeof *st);
    st->device = (local_rank % count + count) % count;
    CUDA_CHECK(cudaSetDevice(st->device));
    CUDA_CHECK(cudaDeviceGetAttribute(&st->n_sms, cudaDevAttrMultiProcessorCount, st->device));
    CUDA_CHECK(cudaStreamCreateWithFlags(&st->compute, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&st->comm, cudaStreamNonBlocking));

    CUBLAS_CHECK(cublasCreate(&st->cublas));
    /* cublasSetStream resets the workspace to cuBLAS's own pool, so the workspace is set after it */
    CUBLAS_CHECK(cublasSetStream(st->cublas, st->compute));
    st->cublas_workspace_bytes = CUDA_CUBLAS_WORKSPACE_BYTES;
    CUDA_CHECK(cudaMalloc(&st->cublas_workspace, st->cublas_workspace_bytes));
    CUBLAS_CHECK(cublasSetWorkspace(st->cublas, st->cublas_workspace, st->cublas_workspace_bytes));

    size_t reduce_bytes = (size_t)st->n_sms * CUDA_REDUCE_BLOCKS_PER_SM * sizeof(double);
    CUDA_CHECK(cudaMalloc((void **)&st->reduce_scratch, reduce_bytes));
    CUDA_CHECK(cudaMallocHost((void **)&st->reduce_host, sizeof(double)));
    st->op_scratch_bytes = CUDA_OP_SCRATCH_BYTES;
    CUDA_CHECK(cudaMalloc(&st->op_scratch, st->op_scratch_bytes));

    rt_backend *be = (rt_backend *)calloc_check(1, sizeof *be);
    be->name = "cuda";
    be->state = st;
    be->reserved_bytes = st->cublas_workspace_bytes + st->op_scratch_bytes + reduce_bytes;
    be->close = cuda_close;
    be->memory.device_alloc = cuda_device_alloc;
    be->memory.device_free = cuda_device_free;
    be->memory.memset_zero = cuda_memset_zero;
    be->memory.copy = cuda_copy;
    be->ops.matmul_forward = cuda_matmul_forward;
    be->ops.matmul_backward = cuda_matmul_backward;
    be->copy_engine.stream_create = cuda_stream_create;
    be->copy_engine.stream_destroy = cuda_stream_destroy;
    be->copy_engine.copy_async = cuda_copy_async;
    be->copy_engine.event_create = cuda_event_create;
    be->copy_engine.event_destroy = cuda_event_destroy;
    be->copy_engine.event_record = cuda_event_record;
    be->copy_engine.stream_wait_event = cuda_stream_wait_event;
    be->ops.synchronize = cuda_synchronize;
    be->copy_engine.event_synchronize = cuda_event_synchronize;
    be->copy_engine.event_query = cuda_event_query;
    be->copy_engine.host_alloc = cuda_host_alloc;
    be->copy_engine.host_free = cuda_host_free;
    rt_cuda_fill_pointwise_ops(&be->ops);
    rt_cuda_fill_attention_ops(&be->ops);
    *out = be;
    return 0;
}
