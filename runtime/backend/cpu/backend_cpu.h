/* backend_cpu.h: the CPU backend's one instance. */
#ifndef RT_BACKEND_CPU_H
#define RT_BACKEND_CPU_H

#include "runtime/backend/backend.h"

/* The CPU backend: OpenBLAS sgemm for matmuls, C with OpenMP for the rest. It has no state: one shared
 * instance, which rt_backend_open("cpu") also returns. */
const rt_backend *rt_backend_cpu(void);

#endif
