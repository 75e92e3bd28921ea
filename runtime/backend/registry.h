/* registry.h: the backends this build has, opened by name (device.kind). */
#ifndef RT_BACKEND_REGISTRY_H
#define RT_BACKEND_REGISTRY_H

#include "runtime/backend/backend.h"
#include "runtime/backend/cpu/backend_cpu.h"

struct rt_error;
/* The backend of device.kind ("cpu" or "cuda"). local_rank picks the GPU (local_rank mod the number of
 * devices) for ranks that share a node. Fails with one line: an unknown kind, a build without the CUDA
 * backend, no CUDA device or driver ("device.kind = cuda: no CUDA device is visible (cudaGetDeviceCount:
 * ...)"). */
int rt_backend_open(const rt_backend **out, const char *kind, int local_rank, struct rt_error *err);
/* Frees an instance from rt_backend_open (the CPU instance stays). Safe on NULL. */
void rt_backend_close(const rt_backend *be);

#endif
