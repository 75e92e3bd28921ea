/*
 * fake_cuda.c: a CUDA runtime and NCCL that run on the CPU, for test_comm_nccl_fake (the NCCL plane of
 * runtime/comm/comm_nccl.c, compiled against this folder's headers, tested like the staged plane against the
 * host plane).
 *
 * What is real: the data. Every NCCL call runs as the MPI call with the same result over the ranks that
 * joined the communicator; a group runs at its end, transfers as one Isend/Irecv/Waitall (NCCL pairs them
 * in posting order, as MPI does on one tag), collectives one after another in posting order. What is
 * modelled: order. A stream runs each call at once and counts it; an event remembers its stream's count
 * when recorded; a stream wait keeps, per stream waited on, the largest count it is ordered after. Then
 * the plane's protocol can be checked: a collective may start only once the comm stream is ordered after
 * every compute op issued before it, and the compute stream must be ordered after a collective before
 * the caller may use its result (a test reads fake_cuda_compute_waited_for_comm). Nothing here runs
 * concurrently, so it cannot find a race, only a missing or misplaced event.
 */
#include <mpi.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_runtime.h"
#include "fake_cuda.h"
#include "nccl.h"
#include "runtime/backend/cuda/backend_cuda.h"
#include "runtime/core/common.h"

#define MAX_STREAMS 16

struct fake_stream {
    int index;
    unsigned long calls;               /* calls run on it */
    unsigned long waited[MAX_STREAMS]; /* per stream: how many of its calls this one is ordered after */
};

struct fake_event {
    struct fake_stream *stream; /* NULL: never recorded */
    unsigned long calls;
};

struct fake_nccl_comm {
    MPI_Comm mpi;
    int rank, size;
};

static int n_streams;
static struct fake_stream *compute_of_backend; /* the one fake backend's compute stream */
static int breaches;

void fake_nccl_breach(const char *fmt, ...) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "\n  fake NCCL, rank %d: ", rank);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    breaches++;
}

int fake_nccl_breaches(void) { return breaches; }

/* ------------------------------------------------------------------ CUDA runtime */

void rt_cuda_check(cudaError_t rc, const char *call, const char *file, int line) {
    if (rc != cudaSuccess) rt_fatal("fake CUDA call %s failed at %s:%d", call, file, line);
}

const char *cudaGetErrorString(cudaError_t rc) { return rc == cudaSuccess ? "no error" : "invalid value"; }
cudaError_t cudaSetDevice(int device) { return device == 0 ? cudaSuccess : cudaErrorInvalidValue; }

/* Every rank its own GPU: the bus id is the world rank. */
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    (void)device;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    *value = attr == cudaDevAttrPciBusId ? rank : 0;
    return cudaSuccess;
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *stream, unsigned flags) {
    (void)flags;
    if (n_streams == MAX_STREAMS) return cudaErrorInvalidValue;
    *stream = calloc_check(1, sizeof **stream);
    (*stream)->index = n_streams++;
    return cudaSuccess;
}

cudaError_t cudaStreamDestroy(cudaStream_t stream) {
    free(stream);
    return cudaSuccess;
}

cudaError_t cudaStreamSynchronize(cudaStream_t stream) { return stream ? cudaSuccess : cudaErrorInvalidValue; }

cudaError_t cudaEventCreateWithFlags(cudaEvent_t *event, unsigned flags) {
    (void)flags;
    *event = calloc_check(1, sizeof **event);
    return cudaSuccess;
}

cudaError_t cudaEventDestroy(cudaEvent_t event) {
    free(event);
    return cudaSuccess;
}

cudaError_t cudaEventRecord(cudaEvent_t event, cudaStream_t stream) {
    event->stream = stream;
    event->calls = stream->calls;
    return cudaSuccess;
}

/* CUDA takes a never-recorded event as complete; the plane never means to wait on one, so it is a breach. */
cudaError_t cudaStreamWaitEvent(cudaStream_t stream, cudaEvent_t event, unsigned flags) {
    (void)flags;
    if (!event->stream) {
        fake_nccl_breach("stream %d waits on an event that was never recorded", stream->index);
        return cudaSuccess;
    }
    unsigned long *w = &stream->waited[event->stream->index];
    if (*w < event->calls) *w = event->calls;
    return cudaSuccess;
}

static int overlap(const void *a, size_t a_bytes, const void *b, size_t b_bytes) {
    const char *x = a, *y = b;
    return a_bytes && b_bytes && x < y + b_bytes && y < x + a_bytes;
}

/* Overlapping copies are undefined in CUDA: a breach, not a memmove. */
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t stream) {
    (void)kind;
    if (overlap(dst, bytes, src, bytes))
        fake_nccl_breach("cudaMemcpyAsync of %zu bytes between overlapping ranges", bytes);
    else if (bytes)
        memcpy(dst, src, bytes);
    stream->calls++;
    return cudaSuccess;
}

/* ------------------------------------------------------------------ the backend */

static void *fake_device_alloc(const rt_backend *be, size_t bytes) {
    (void)be;
    return malloc(bytes ? bytes : 1);
}

static void fake_device_free(const rt_backend *be, void *ptr) {
    (void)be;
    free(ptr);
}

const rt_backend *fake_cuda_backend(void) {
    rt_cuda_state *st = calloc_check(1, sizeof *st);
    CUDA_CHECK(cudaStreamCreateWithFlags(&st->compute, cudaStreamNonBlocking));
    CUDA_CHECK(cudaStreamCreateWithFlags(&st->comm, cudaStreamNonBlocking));
    compute_of_backend = st->compute;
    rt_backend *be = calloc_check(1, sizeof *be);
    be->name = "cuda";
    be->state = st;
    be->memory.device_alloc = fake_device_alloc;
    be->memory.device_free = fake_device_free;
    return be;
}

void fake_cuda_backend_free(const rt_backend *be) {
    rt_cuda_state *st = rt_cuda_state_of(be);
    CUDA_CHECK(cudaStreamDestroy(st->comm));
    CUDA_CHECK(cudaStreamDestroy(st->compute));
    compute_of_backend = NULL;
    free(st);
    free((void *)be);
}

void fake_cuda_compute_work(const rt_backend *be) { rt_cuda_state_of(be)->compute->calls++; }
unsigned long fake_cuda_comm_calls(const rt_backend *be) { return rt_cuda_state_of(be)->comm->calls; }
unsigned long fake_cuda_compute_calls(const rt_backend *be) { return rt_cuda_state_of(be)->compute->calls; }
unsigned long fake_cuda_comm_waited_for_compute(const rt_backend *be) {
    const rt_cuda_state *st = rt_cuda_state_of(be);
    return st->comm->waited[st->compute->index];
}
unsigned long fake_cuda_compute_waited_for_comm(const rt_backend *be) {
    const rt_cuda_state *st = rt_cuda_state_of(be);
    return st->compute->waited[st->comm->index];
}

/* ------------------------------------------------------------------ NCCL */

typedef enum { OP_SEND, OP_RECV, OP_ALLREDUCE, OP_REDUCE_SCATTER, OP_ALLGATHER, OP_REDUCE, OP_BROADCAST } op_kind;
static const char *const op_names[] = {"ncclSend",      "ncclRecv",   "ncclAllReduce", "ncclReduceScatter",
                                       "ncclAllGather", "ncclReduce", "ncclBroadcast"};

typedef struct {
    op_kind kind;
    const void *send;
    void *recv;
    size_t count;
    ncclDataType_t type;
    ncclRedOp_t op;
    int peer; /* send/recv: the peer; reduce/broadcast: the root */
    ncclComm_t comm;
    cudaStream_t stream;
} fake_op;

static fake_op *group;
static int n_group, cap_group, group_depth;

const char *ncclGetErrorString(ncclResult_t rc) { return rc == ncclSuccess ? "no error" : "fake NCCL error"; }
const char *ncclGetLastError(ncclComm_t comm) {
    (void)comm;
    return "";
}

/* The id names the world rank that drew it and its count of draws: the color of the world split below. */
ncclResult_t ncclGetUniqueId(ncclUniqueId *id) {
    static int drawn;
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    memset(id, 0, sizeof *id);
    snprintf(id->internal, sizeof id->internal, "%d %d", rank, ++drawn);
    return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t *comm, int nranks, ncclUniqueId id, int rank) {
    int drawer = 0, drawn = 0;
    if (sscanf(id.internal, "%d %d", &drawer, &drawn) != 2 || drawn >= 4096) return ncclInvalidArgument;
    struct fake_nccl_comm *c = calloc_check(1, sizeof *c);
    MPI_Comm_split(MPI_COMM_WORLD, drawer * 4096 + drawn, rank, &c->mpi);
    MPI_Comm_rank(c->mpi, &c->rank);
    MPI_Comm_size(c->mpi, &c->size);
    if (c->size != nranks || c->rank != rank) {
        MPI_Comm_free(&c->mpi);
        free(c);
        return ncclInvalidUsage;
    }
    *comm = c;
    return ncclSuccess;
}

ncclResult_t ncclCommFinalize(ncclComm_t comm) { return comm ? ncclSuccess : ncclInvalidArgument; }

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
    MPI_Comm_free(&comm->mpi);
    free(comm);
    return ncclSuccess;
}

static MPI_Datatype mpi_type(ncclDataType_t t, size_t *size) {
    switch (t) {
    case ncclFloat: *size = sizeof(float); return MPI_FLOAT;
    case ncclDouble: *size = sizeof(double); return MPI_DOUBLE;
    default: *size = 1; return MPI_UNSIGNED_CHAR;
    }
}

/* One collective, now. Its buffers may overlap only in NCCL's in-place forms. */
static void run_collective(const fake_op *o) {
    struct fake_stream *compute = compute_of_backend;
    if (compute && o->stream != compute && o->stream->waited[compute->index] < compute->calls)
        fake_nccl_breach("%s on stream %d before it waited for the compute issued before it (%lu of %lu ops)",
                         op_names[o->kind], o->stream->index, o->stream->waited[compute->index], compute->calls);
    size_t es = 0;
    const MPI_Datatype t = mpi_type(o->type, &es);
    const MPI_Op op = o->op == ncclMax ? MPI_MAX : MPI_SUM;
    const int n = (int)o->count, P = o->comm->size, me = o->comm->rank;
    const size_t bytes = o->count * es;
    if (o->count > (size_t)INT32_MAX) {
        fake_nccl_breach("%s of %zu elements: beyond this fake's int counts", op_names[o->kind], o->count);
        return;
    }
    switch (o->kind) {
    case OP_ALLREDUCE:
        if (o->send != o->recv && overlap(o->send, bytes, o->recv, bytes))
            fake_nccl_breach("ncclAllReduce: buffers overlap");
        MPI_Allreduce(o->send == o->recv ? MPI_IN_PLACE : o->send, o->recv, n, t, op, o->comm->mpi);
        break;
    case OP_REDUCE_SCATTER: {
        if (o->recv != (const char *)o->send + (size_t)me * bytes &&
            overlap(o->send, bytes * (size_t)P, o->recv, bytes))
            fake_nccl_breach("ncclReduceScatter: recv overlaps send other than at send + rank * recvcount");
        void *tmp = malloc_check(bytes ? bytes : 1);
        MPI_Reduce_scatter_block(o->send, tmp, n, t, op, o->comm->mpi);
        memcpy(o->recv, tmp, bytes);
        free(tmp);
        break;
    }
    case OP_ALLGATHER: {
        if (o->send != (const char *)o->recv + (size_t)me * bytes &&
            overlap(o->send, bytes, o->recv, bytes * (size_t)P))
            fake_nccl_breach("ncclAllGather: send overlaps recv other than at recv + rank * sendcount");
        void *tmp = malloc_check(bytes ? bytes : 1);
        memcpy(tmp, o->send, bytes);
        MPI_Allgather(tmp, n, t, o->recv, n, t, o->comm->mpi);
        free(tmp);
        break;
    }
    case OP_REDUCE:
        if (o->peer < 0 || o->peer >= P) fake_nccl_breach("ncclReduce: root %d of %d ranks", o->peer, P);
        if (me == o->peer && o->send != o->recv && overlap(o->send, bytes, o->recv, bytes))
            fake_nccl_breach("ncclReduce: buffers overlap at the root");
        MPI_Reduce(me == o->peer && o->send == o->recv ? MPI_IN_PLACE : o->send, o->recv, n, t, op, o->peer,
                   o->comm->mpi);
        break;
    case OP_BROADCAST:
        if (o->peer < 0 || o->peer >= P) fake_nccl_breach("ncclBroadcast: root %d of %d ranks", o->peer, P);
        if (me == o->peer && o->send != o->recv) {
            if (overlap(o->send, bytes, o->recv, bytes))
                fake_nccl_breach("ncclBroadcast: buffers overlap at the root");
            else
                memcpy(o->recv, o->send, bytes);
        }
        MPI_Bcast(o->recv, n, t, o->peer, o->comm->mpi);
        break;
    default: break;
    }
    o->stream->calls++;
}

/* A group's transfers, together (as NCCL launches them). */
static void run_transfers(const fake_op *ops, int n) {
    MPI_Request *reqs = malloc_check((size_t)n * sizeof *reqs);
    for (int i = 0; i < n; i++) {
        const fake_op *o = &ops[i];
        size_t es = 0;
        const MPI_Datatype t = mpi_type(o->type, &es);
        if (o->kind == OP_SEND)
            MPI_Isend(o->send, (int)o->count, t, o->peer, 0, o->comm->mpi, &reqs[i]);
        else
            MPI_Irecv(o->recv, (int)o->count, t, o->peer, 0, o->comm->mpi, &reqs[i]);
    }
    MPI_Waitall(n, reqs, MPI_STATUSES_IGNORE);
    for (int i = 0; i < n; i++)
        ops[i].stream->calls++;
    free(reqs);
}

static ncclResult_t submit(fake_op o) {
    const int transfer = o.kind == OP_SEND || o.kind == OP_RECV;
    if (group_depth == 0) {
        if (transfer) {
            fake_nccl_breach("%s outside a group: the plane launches transfers in groups", op_names[o.kind]);
            run_transfers(&o, 1);
        } else {
            run_collective(&o);
        }
        return ncclSuccess;
    }
    if (n_group == cap_group) {
        cap_group = cap_group ? 2 * cap_group : 16;
        fake_op *grown = malloc_check((size_t)cap_group * sizeof *grown);
        if (n_group) memcpy(grown, group, (size_t)n_group * sizeof *grown);
        free(group);
        group = grown;
    }
    group[n_group++] = o;
    return ncclSuccess;
}

ncclResult_t ncclGroupStart(void) {
    group_depth++;
    return ncclSuccess;
}

ncclResult_t ncclGroupEnd(void) {
    if (group_depth == 0) return ncclInvalidUsage;
    if (--group_depth > 0) return ncclSuccess;
    int transfers = 0;
    for (int i = 0; i < n_group; i++)
        transfers += group[i].kind == OP_SEND || group[i].kind == OP_RECV;
    if (transfers && transfers != n_group) fake_nccl_breach("a group mixes transfers and collectives");
    if (transfers)
        run_transfers(group, n_group);
    else
        for (int i = 0; i < n_group; i++)
            run_collective(&group[i]);
    n_group = 0;
    free(group);
    group = NULL, cap_group = 0;
    return ncclSuccess;
}

ncclResult_t ncclSend(const void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm,
                      cudaStream_t stream) {
    return submit((fake_op){
        .kind = OP_SEND, .send = buf, .count = count, .type = type, .peer = peer, .comm = comm, .stream = stream});
}

ncclResult_t ncclRecv(void *buf, size_t count, ncclDataType_t type, int peer, ncclComm_t comm, cudaStream_t stream) {
    return submit((fake_op){
        .kind = OP_RECV, .recv = buf, .count = count, .type = type, .peer = peer, .comm = comm, .stream = stream});
}

ncclResult_t ncclAllReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op,
                           ncclComm_t comm, cudaStream_t stream) {
    return submit((fake_op){.kind = OP_ALLREDUCE,
                            .send = send,
                            .recv = recv,
                            .count = count,
                            .type = type,
                            .op = op,
                            .comm = comm,
                            .stream = stream});
}

ncclResult_t ncclReduceScatter(const void *send, void *recv, size_t recvcount, ncclDataType_t type, ncclRedOp_t op,
                               ncclComm_t comm, cudaStream_t stream) {
    return submit((fake_op){.kind = OP_REDUCE_SCATTER,
                            .send = send,
                            .recv = recv,
                            .count = recvcount,
                            .type = type,
                            .op = op,
                            .comm = comm,
                            .stream = stream});
}

ncclResult_t ncclReduce(const void *send, void *recv, size_t count, ncclDataType_t type, ncclRedOp_t op, int root,
                        ncclComm_t comm, cudaStream_t stream) {
    return submit((fake_op){.kind = OP_REDUCE,
                            .send = send,
                            .recv = recv,
                            .count = count,
                            .type = type,
                            .op = op,
                            .peer = root,
                            .comm = comm,
                            .stream = stream});
}

ncclResult_t ncclAllGather(const void *send, void *recv, size_t sendcount, ncclDataType_t type, ncclComm_t comm,
                           cudaStream_t stream) {
    return submit((fake_op){.kind = OP_ALLGATHER,
                            .send = send,
                            .recv = recv,
                            .count = sendcount,
                            .type = type,
                            .comm = comm,
                            .stream = stream});
}

ncclResult_t ncclBroadcast(const void *send, void *recv, size_t count, ncclDataType_t type, int root, ncclComm_t comm,
                           cudaStream_t stream) {
    return submit((fake_op){.kind = OP_BROADCAST,
                            .send = send,
                            .recv = recv,
                            .count = count,
                            .type = type,
                            .peer = root,
                            .comm = comm,
                            .stream = stream});
}
