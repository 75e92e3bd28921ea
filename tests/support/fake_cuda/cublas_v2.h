/* cublas_v2.h (test fake): the two types runtime/backend/cuda/backend_cuda.h names; nothing of cuBLAS runs in
 * the fake. */
#ifndef RT_FAKE_CUBLAS_V2_H
#define RT_FAKE_CUBLAS_V2_H

typedef struct fake_cublas_context *cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;

#endif
