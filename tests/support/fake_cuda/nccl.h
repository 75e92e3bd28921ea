/* nccl.h (test fake): the NCCL calls runtime/comm/comm_nccl.c makes, run as MPI calls over the ranks that joined
 * the communicator (fake_cuda.c), so the plane's data paths run on the CPU against the host plane. A call is
 * checked the way NCCL would refuse or garble it (a collective's buffers overlapping other than in NCCL's
 * in-place form, a send or receive outside a group, a group mixing transfers and collectives) and against
 * the plane's ordering protocol (the comm stream must have waited for all the compute issued before a
 * collective); a breach is counted and printed (fake_cuda.h). Names are macros onto fake_ functions. */
#ifndef RT_FAKE_NCCL_H
#define RT_FAKE_NCCL_H

#include <stddef.h>

#include "cuda_runtime.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ncclSuccess = 0,
    ncclUnhandledCudaError,
    ncclSystemError,
    ncclInternalError,
    ncclInvalidArgument,
    ncclInvalidUsage
} ncclResult_t;
typedef enum { ncclInt8 = 0, ncclUint8 = 1, ncclFloat = 7, ncclDouble = 8 } ncclDataType_t;
typedef enum { ncclSum = 0, ncclMax = 2 } ncclRedOp_t;
typedef struct {
    char internal[128];
} ncclUniqueId;
typedef struct fake_nccl_comm *ncclComm_t;

#define ncclGetErrorString fake_ncclGetErrorString
#define ncclGetLastError fake_ncclGetLastError
#define ncclGetUniqueId fake_ncclGetUniqueId
#define ncclCommInitRank fake_ncclCommInitRank
#define ncclCommFinalize fake_ncclCommFinalize
#define ncclCommDestroy fake_ncclCommDestroy
#define ncclGroupStart fake_ncclGroupStart
#define ncclGroupEnd fake_ncclGroupEnd
#define ncclSend fake_ncclSend
#define ncclRecv fake_ncclRecv
#define ncclAllReduce fake_ncclAllReduce
#define ncclReduceScatter fake_ncclReduceScatter
#define ncclReduce fake_ncclReduce
#define ncclAllGather fake_ncclAllGather
#define ncclBroadcast fake_ncclBroadcast

const char *ncclGetErrorString(ncclResult_t rc);
const char *ncclGetLastError(ncclComm_t comm);
ncclResult_t ncclGetUniqueId(ncclUniqueId *id);
/* Collective over MPI_COMM_WORLD (every world rank joins some communicator at the same time). */
ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank);
ncclResult_t ncclCommFinalize(ncclComm_t comm);
ncclResult_t ncclCommDestroy(ncclComm_t comm);
ncclResult_t ncclGroupStart(void);
ncclResult_t ncclGroupEnd(void);
ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream);
ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op, int root,
                        ncclComm_t comm, cudaStream_t stream);
ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream);
ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif
