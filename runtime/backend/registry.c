/* registry.c: opens the backend instance that device.kind names. */
#include "registry.h"

#include <string.h>

#include "runtime/core/common.h"
#ifdef RINGTRAIN_HAVE_CUDA
#include "runtime/backend/cuda/backend_cuda.h"
#endif

int rt_backend_open(const rt_backend **out, const char *kind, int local_rank, rt_error *err) {
    *out = NULL;
    if (strcmp(kind, "cpu") == 0) {
        *out = rt_backend_cpu();
        return 0;
    }
    if (strcmp(kind, "cuda") == 0) {
#ifdef RINGTRAIN_HAVE_CUDA
        return rt_backend_cuda_open(out, local_rank, err);
#else
        (void)local_rank;
        return rt_fail(err, "device.kind = cuda: this build has no CUDA backend (nvcc was not found when it was "
                            "configured; configure with -DRINGTRAIN_CUDA=ON where the CUDA toolkit is installed)");
#endif
    }
    return rt_fail(err, "device.kind = %s: expected cpu or cuda", kind);
}

void rt_backend_close(const rt_backend *be) {
    if (be && be->close) be->close((rt_backend *)be);
}
