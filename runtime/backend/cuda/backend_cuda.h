/* backend_cuda.h: the CUDA backend's instance state and the pieces its source files share (not for model code). */
#ifndef RT_BACKEND_CUDA_H
#define RT_BACKEND_CUDA_H

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "runtime/backend/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Blocks per multiprocessor of sum_squares' partial sums: reduce_scratch holds n_sms times this many doubles. */
#define CUDA_REDUCE_BLOCKS_PER_SM 4

/* What rt_backend.state points to on CUDA. */
typedef struct {
    int device;           /* the CUDA device of this instance */
    cudaStream_t compute; /* every op runs here, in issue order */
    /* The NCCL planes' one communication stream (comm_nccl.c), shared by every plane of this instance: NCCL
     * calls of two communicators on two streams may run at once, and then each rank's kernels of one can wait
     * for peers busy in the other (a deadlock NCCL warns of); on one stream they run in posting order, which
     * the same program gives every rank. */
    cudaStream_t comm;
    cublasHandle_t cublas;  /* bound to compute */
    void *cublas_workspace; /* reserved at open (rt_backend.reserved_bytes), given to cuBLAS */
    size_t cublas_workspace_bytes;
    int n_sms;              /* multiprocessors: grid sizes of the reductions */
    double *reduce_scratch; /* device: partial sums of sum_squares (n_sms * CUDA_REDUCE_BLOCKS_PER_SM doubles) */
    double *reduce_host;    /* pinned host: its result */
    /* device, reserved at open: partial sums of the channel reductions (bias, norm weights) and the embedding
     * backward's sort buffers; the ops using it run one at a time on compute, so they share it */
    void *op_scratch;
    size_t op_scratch_bytes;
} rt_cuda_state;

static inline rt_cuda_state *rt_cuda_state_of(const rt_backend *be) { return (rt_cuda_state *)be->state; }
static inline cudaStream_t rt_cuda_compute_stream(const rt_backend *be) { return rt_cuda_state_of(be)->compute; }

/* Ends the job (rt_fatal) with the call, file and line when a CUDA or cuBLAS call fails: after a failed
 * launch or a device fault nothing on the device can be trusted. */
void rt_cuda_check(cudaError_t rc, const char *call, const char *file, int line);
void rt_cublas_check(cublasStatus_t rc, const char *call, const char *file, int line);
#define CUDA_CHECK(call) rt_cuda_check((call), #call, __FILE__, __LINE__)
#define CUBLAS_CHECK(call) rt_cublas_check((call), #call, __FILE__, __LINE__)
/* After a kernel launch: a bad launch configuration is reported here, a fault at the next synchronizing call. */
#define CUDA_CHECK_LAUNCH() rt_cuda_check(cudaGetLastError(), "kernel launch", __FILE__, __LINE__)

/* Opens the CUDA backend on device local_rank % count (backend_cuda.cu). -1 with err: no driver or device. */
struct rt_error;
int rt_backend_cuda_open(const rt_backend **out, int local_rank, struct rt_error *err);

/* The compute ops come in groups, each defined in its own source file and put into the instance's ops table by
 * backend_cuda.cu's open (which sets matmul and the memory and copy engine tables itself). */
void rt_cuda_fill_pointwise_ops(rt_backend_ops *ops); /* backend_cuda_ops.cu: everything but matmul and attention */
void rt_cuda_fill_attention_ops(rt_backend_ops *ops); /* backend_cuda_attention.cu: attn_* */

/* dst (n_cols) += sum_n src[n, :] for src (n_rows, n_cols), in double, in an order fixed by the shape alone
 * (backend_cuda_ops.cu; matmul's dbias uses it). */
void rt_cuda_add_column_sums(const rt_backend *be, float *dst, const float *src, size_t n_rows, int n_cols);

#ifdef __cplusplus
}
#endif

#endif
