/* cuda_runtime.h (test fake): the part of the CUDA runtime API that runtime/comm/comm_nccl.c calls, for
 * test_comm_nccl_fake (fake_cuda.c). Device memory is host memory; a stream runs each call at once, in order,
 * and counts them; an event remembers how many calls its stream had run when it was recorded, and a stream
 * wait keeps the largest such count per stream waited on, so a test can tell what the compute stream was
 * ordered after. The names are macros onto fake_ functions: nothing clashes with a real libcudart linked in
 * the same program. */
#ifndef RT_FAKE_CUDA_RUNTIME_H
#define RT_FAKE_CUDA_RUNTIME_H

#include <stddef.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { cudaSuccess = 0, cudaErrorInvalidValue = 1 } cudaError_t;
typedef enum {
    cudaMemcpyHostToHost,
    cudaMemcpyHostToDevice,
    cudaMemcpyDeviceToHost,
    cudaMemcpyDeviceToDevice,
    cudaMemcpyDefault
} cudaMemcpyKind;
typedef enum { cudaDevAttrPciBusId = 33, cudaDevAttrPciDeviceId = 34, cudaDevAttrPciDomainId = 50 } cudaDeviceAttr;
#define cudaStreamNonBlocking 0x01
#define cudaEventDisableTiming 0x02

typedef struct fake_stream *cudaStream_t;
typedef struct fake_event *cudaEvent_t;

#define cudaGetErrorString fake_cudaGetErrorString
#define cudaSetDevice fake_cudaSetDevice
#define cudaDeviceGetAttribute fake_cudaDeviceGetAttribute
#define cudaStreamCreateWithFlags fake_cudaStreamCreateWithFlags
#define cudaStreamDestroy fake_cudaStreamDestroy
#define cudaStreamSynchronize fake_cudaStreamSynchronize
#define cudaStreamWaitEvent fake_cudaStreamWaitEvent
#define cudaEventCreateWithFlags fake_cudaEventCreateWithFlags
#define cudaEventDestroy fake_cudaEventDestroy
#define cudaEventRecord fake_cudaEventRecord
#define cudaMemcpyAsync fake_cudaMemcpyAsync

const char *cudaGetErrorString(cudaError_t rc);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t stream);
cudaError_t cudaStreamSynchronize(cudaStream_t stream);
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags);
cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags);
cudaError_t cudaEventDestroy(cudaEvent_t event);
cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
