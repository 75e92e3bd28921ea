/* fake_cuda.h: what test_comm_nccl_fake asks of the fake CUDA runtime and NCCL (fake_cuda.c), beside the
 * NCCL plane compiled against them. */
#ifndef RT_FAKE_CUDA_H
#define RT_FAKE_CUDA_H

#include "runtime/backend/backend.h"

/* A backend named "cuda" whose device memory is host memory (malloc), with the rt_cuda_state the NCCL plane
 * reads (device 0, fake compute and comm streams); only device_alloc and device_free are in its table. */
const rt_backend *fake_cuda_backend(void);
void fake_cuda_backend_free(const rt_backend *be);
/* One op on be's compute stream: a collective posted after it must be ordered after it. */
void fake_cuda_compute_work(const rt_backend *be);
/* Calls run on be's comm stream so far, and how many of them the compute stream is ordered after. */
unsigned long fake_cuda_comm_calls(const rt_backend *be);
unsigned long fake_cuda_compute_waited_for_comm(const rt_backend *be);
/* How many of compute's ops the comm stream is ordered after, and how many ran. */
unsigned long fake_cuda_compute_calls(const rt_backend *be);
unsigned long fake_cuda_comm_waited_for_compute(const rt_backend *be);
/* Breaches of NCCL's usage or the plane's ordering protocol seen so far on this rank (each printed), and a
 * breach a test found (printed and counted with them). */
int fake_nccl_breaches(void);
void fake_nccl_breach(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
