/*
 * comm_nccl.c: the NCCL device plane: collectives and ring transfers on CUDA buffers, on the backend's
 * communication stream.
 *
 * One NCCL communicator per plane, over the ranks of its host comm in the
 * same order: rank 0 draws the id (ncclGetUniqueId), the host comm
 * broadcasts it, every rank joins with ncclCommInitRank on the backend's
 * device. Every NCCL call of every plane of a backend instance runs on the
 * instance's one communication stream (rt_cuda_state.comm: two planes on two
 * streams could run their NCCL kernels at once and deadlock, backend_cuda.h);
 * compute keeps the backend's compute stream.
 *
 * Ordering, with events and no host wait:
 *   before a call: record compute_ready on the compute stream and make the
 *     comm stream wait on it, so NCCL reads (and overwrites) buffers only
 *     after the compute issued before the call;
 *   after a blocking collective: record comm_done on the comm stream and
 *     make the compute stream wait on it, so compute issued after the call
 *     sees the result. Re-recording an event is safe: a stream wait takes
 *     the record current at the time of the wait call;
 *   a nonblocking collective (ireduce_scatter_sum_f32_v, iallgather_f32_v)
 *     is a launch like a group of transfers (below): its end is recorded on
 *     a launch event, and only the request's wait makes the compute stream
 *     wait on it, so the compute issued between post and wait (the next
 *     layer's, for ZeRO's gathers and reductions) runs beside it. As on MPI,
 *     the caller leaves its buffers alone until the wait.
 *
 * Transfers. NCCL pairs a send with the peer's receive in posting order and
 * a lone send blocks its stream until the receive runs: the ring's "irecv
 * from r-1, isend to r+1" issued one by one on every rank would deadlock
 * (each rank's receive waits for a send queued behind the peer's receive).
 * So isend/irecv only order the comm stream after compute (as above) and
 * queue the transfer on the plane; the queued transfers launch together,
 * in one ncclGroupStart/End, at the next wait, collective or barrier of the
 * plane. A launch does not wait on the host, so the compute the caller
 * issued between post and wait (already queued on the compute stream) runs
 * beside the transfer. Launch g records launch_done[g % LAUNCH_EVENTS] on
 * the comm stream; a request holds the number g of the latest launch that
 * carries its work (in impl, as an integer: nothing to allocate or free;
 * launches end in order on the one stream, so the latest covers the rest),
 * and wait makes the compute stream wait on that event. A request older
 * than LAUNCH_EVENTS launches finds its slot re-recorded by a later launch,
 * which finishes later on the same stream: the wait is longer, still right,
 * but it would hold compute for work posted after the request; so
 * LAUNCH_EVENTS is more than a step keeps in flight (ZeRO: up to 128
 * reductions and 128 gathers, RT_OPT_MAX_IN_FLIGHT, and the ring's one
 * launch per hop).
 * Tags are not sent (NCCL has none); comm_device.h says so.
 *
 * Reduce-scatter in place. comm.h puts this rank's slice at the start of
 * the buffer; NCCL's in-place form leaves it at buf + rank * count. The
 * plane runs NCCL's in-place form, then moves the slice to the start on the
 * comm stream: [0, count) and [rank * count, (rank+1) * count) never
 * overlap for rank >= 1, and rank 0 has nothing to move, so no scratch.
 *
 * Uneven reduce-scatter (_v): equal counts are the block reduce-scatter.
 * Otherwise one ncclReduce per rank with a non-zero count, rooted there, in
 * one group (a group launches as one operation). Padding every block to the
 * largest count would need a device buffer of size * max(counts) and a
 * repacking copy per call; ZeRO's calls (shard/optimizer.c) cut a chunk of
 * the gradients at shard boundaries, so most counts are 0 and the group is
 * one or two reduces, no extra memory, and the traffic is that of the data.
 * In place, each rank reduces its own part in place and then moves it to
 * the start; when the part starts before its own length ends the move
 * overlaps itself and goes through a device scratch of the plane (grown
 * at the first such call, never in ZeRO's out-of-place steady state; it is
 * a raw device_alloc outside the rt_device_memory accounting).
 *
 * Uneven all-gather (_v): one ncclBroadcast per rank with a non-zero count,
 * rooted there, into its place in recv, in one group; in place the root's
 * send already is that place (NCCL's in-place broadcast).
 *
 * Zero counts skip the NCCL call (every rank passes the same counts, so
 * every rank skips it). NCCL failures end the job: after one, the
 * communicator cannot be trusted, and other ranks would hang.
 */
#include <nccl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "comm_device.h"
#include "runtime/backend/cuda/backend_cuda.h"
#include "runtime/core/common.h"

#define LAUNCH_EVENTS 512 /* see the top: more launches than are ever in flight */

static void nccl_check(ncclResult_t rc, const char *call, const char *file, int line) {
    if (rc != ncclSuccess)
        rt_fatal("%s failed: %s (%s) (%s:%d)", call, ncclGetErrorString(rc), ncclGetLastError(NULL), file, line);
}
#define NCCL_CHECK(call) nccl_check((call), #call, __FILE__, __LINE__)

typedef struct {
    int is_send;
    void *buf; /* device */
    size_t bytes;
    int peer;
} queued_transfer;

typedef struct {
    rt_comm *host;
    const rt_backend *be;
    ncclComm_t nccl;
    cudaStream_t stream;       /* the backend instance's communication stream, shared by its planes */
    cudaEvent_t compute_ready; /* compute before a call: the comm stream waits on it */
    cudaEvent_t comm_done;     /* a collective's end: the compute stream waits on it */
    queued_transfer *queued;   /* posted, not launched yet */
    int n_queued, cap_queued;
    uint64_t launches;                      /* launches so far: groups of queued transfers, nonblocking collectives */
    cudaEvent_t launch_done[LAUNCH_EVENTS]; /* launch g's end at g % LAUNCH_EVENTS */
    float *scratch;                         /* device: in-place reduce_scatter_v whose move overlaps */
    size_t scratch_elems;
} nccl_impl;

static nccl_impl *impl_of(const rt_comm *comm) { return comm->impl; }
static cudaStream_t compute_stream(const nccl_impl *impl) { return rt_cuda_compute_stream(impl->be); }

static void comm_after_compute(nccl_impl *impl) {
    CUDA_CHECK(cudaEventRecord(impl->compute_ready, compute_stream(impl)));
    CUDA_CHECK(cudaStreamWaitEvent(impl->stream, impl->compute_ready, 0));
}

/* The end of what was just issued on the comm stream, as launch number impl->launches. */
static uint64_t record_launch(nccl_impl *impl) {
    impl->launches++;
    CUDA_CHECK(cudaEventRecord(impl->launch_done[impl->launches % LAUNCH_EVENTS], impl->stream));
    return impl->launches;
}

/* The request now also waits for launch g. Launch numbers only grow (g is launches or launches + 1, both at
 * least any number handed out before), so the last one given is the latest, and its end covers the rest. */
static void request_covers(rt_comm_request *req, uint64_t g) {
    req->impl = (void *)(uintptr_t)g;
    req->n++;
}

static void launch_queued(nccl_impl *impl) {
    if (impl->n_queued == 0) return;
    NCCL_CHECK(ncclGroupStart());
    for (int i = 0; i < impl->n_queued; i++) {
        const queued_transfer *t = &impl->queued[i];
        if (t->is_send)
            NCCL_CHECK(ncclSend(t->buf, t->bytes, ncclUint8, t->peer, impl->nccl, impl->stream));
        else
            NCCL_CHECK(ncclRecv(t->buf, t->bytes, ncclUint8, t->peer, impl->nccl, impl->stream));
    }
    NCCL_CHECK(ncclGroupEnd());
    impl->n_queued = 0;
    record_launch(impl);
}

/* Every collective: queued transfers first (posting order is NCCL's order), then after the compute before it. */
static cudaStream_t begin(nccl_impl *impl) {
    launch_queued(impl);
    comm_after_compute(impl);
    return impl->stream;
}

/* After a collective: blocking (req NULL), compute waits for it now; nonblocking, at req's wait. */
static void end(nccl_impl *impl, rt_comm_request *req) {
    if (req) {
        request_covers(req, record_launch(impl));
        return;
    }
    CUDA_CHECK(cudaEventRecord(impl->comm_done, impl->stream));
    CUDA_CHECK(cudaStreamWaitEvent(compute_stream(impl), impl->comm_done, 0));
}

/* ------------------------------------------------------------------ collectives */

static void allreduce(rt_comm *comm, void *buf, size_t n, ncclDataType_t type, ncclRedOp_t op) {
    nccl_impl *impl = impl_of(comm);
    if (n == 0) return;
    cudaStream_t s = begin(impl);
    NCCL_CHECK(ncclAllReduce(buf, buf, n, type, op, impl->nccl, s));
    end(impl, NULL);
}
static void allreduce_sum_f32(rt_comm *comm, float *buf, size_t n) { allreduce(comm, buf, n, ncclFloat, ncclSum); }
static void allreduce_sum_f64(rt_comm *comm, double *buf, size_t n) { allreduce(comm, buf, n, ncclDouble, ncclSum); }
static void allreduce_max_f64(rt_comm *comm, double *buf, size_t n) { allreduce(comm, buf, n, ncclDouble, ncclMax); }

static void reduce_scatter_block(rt_comm *comm, float *recv, const float *send, size_t n, rt_comm_request *req) {
    nccl_impl *impl = impl_of(comm);
    const size_t per_rank = n / (size_t)comm->size, me = (size_t)comm->rank;
    if (per_rank * (size_t)comm->size != n)
        rt_fatal("reduce_scatter of %zu floats over %d ranks: count must divide by the rank count", n, comm->size);
    if (per_rank == 0) return;
    cudaStream_t s = begin(impl);
    if (send == recv) {
        float *slice = recv + me * per_rank; /* NCCL's in-place slice; moved to the start (see the top) */
        NCCL_CHECK(ncclReduceScatter(recv, slice, per_rank, ncclFloat, ncclSum, impl->nccl, s));
        if (me != 0) CUDA_CHECK(cudaMemcpyAsync(recv, slice, per_rank * sizeof(float), cudaMemcpyDeviceToDevice, s));
    } else {
        NCCL_CHECK(ncclReduceScatter(send, recv, per_rank, ncclFloat, ncclSum, impl->nccl, s));
    }
    end(impl, req);
}

static void reduce_scatter_sum_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    reduce_scatter_block(comm, recv, send, n, NULL);
}

/* Device scratch of at least elems floats, grown outside any queued work of the plane. */
static float *scratch(nccl_impl *impl, size_t elems) {
    if (impl->scratch_elems < elems) {
        CUDA_CHECK(cudaStreamSynchronize(impl->stream));
        if (impl->scratch) rt_be_device_free(impl->be, impl->scratch);
        impl->scratch = rt_be_device_alloc(impl->be, elems * sizeof(float));
        if (!impl->scratch) rt_fatal("NCCL plane: out of device memory for %zu floats of scratch", elems);
        impl->scratch_elems = elems;
    }
    return impl->scratch;
}

/* Blocking when req is NULL (see end). */
static void reduce_scatter_v(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                             rt_comm_request *req) {
    nccl_impl *impl = impl_of(comm);
    const int size = comm->size, me = comm->rank;
    size_t total = 0, first = 0;
    int equal = 1;
    for (int q = 0; q < size; q++) {
        if (q == me) first = total;
        if (__builtin_add_overflow(total, counts[q], &total)) rt_fatal("reduce_scatter counts overflow size_t");
        equal &= counts[q] == counts[0];
    }
    if (equal) {
        reduce_scatter_block(comm, recv, send, total, req);
        return;
    }
    const size_t mine = counts[me];
    const int in_place = send == recv;
    /* the in-place move of this rank's part overlaps itself when the part starts before its length ends */
    float *through = in_place && first != 0 && first < mine ? scratch(impl, mine) : NULL;
    cudaStream_t s = begin(impl);
    NCCL_CHECK(ncclGroupStart());
    size_t offset = 0;
    for (int q = 0; q < size; q++) {
        const float *part = send + offset;
        offset += counts[q];
        if (counts[q] == 0) continue;
        float *dst = q != me ? NULL : in_place ? (float *)part : recv; /* only the root's is used */
        NCCL_CHECK(ncclReduce(part, dst, counts[q], ncclFloat, ncclSum, q, impl->nccl, s));
    }
    NCCL_CHECK(ncclGroupEnd());
    if (in_place && first != 0 && mine != 0) {
        const size_t bytes = mine * sizeof(float);
        if (through) {
            CUDA_CHECK(cudaMemcpyAsync(through, recv + first, bytes, cudaMemcpyDeviceToDevice, s));
            CUDA_CHECK(cudaMemcpyAsync(recv, through, bytes, cudaMemcpyDeviceToDevice, s));
        } else {
            CUDA_CHECK(cudaMemcpyAsync(recv, recv + first, bytes, cudaMemcpyDeviceToDevice, s));
        }
    }
    end(impl, req);
}

static void reduce_scatter_sum_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    reduce_scatter_v(comm, recv, send, counts, NULL);
}

/* In place when send is recv + rank*n: NCCL's in-place convention is comm.h's. */
static void allgather_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    nccl_impl *impl = impl_of(comm);
    if (n == 0) return;
    cudaStream_t s = begin(impl);
    NCCL_CHECK(ncclAllGather(send, recv, n, ncclFloat, impl->nccl, s));
    end(impl, NULL);
}

/* Blocking when req is NULL (see end). */
static void allgather_v(rt_comm *comm, float *recv, const float *send, const size_t *counts, rt_comm_request *req) {
    nccl_impl *impl = impl_of(comm);
    cudaStream_t s = begin(impl);
    NCCL_CHECK(ncclGroupStart());
    size_t offset = 0;
    for (int q = 0; q < comm->size; q++) {
        float *part = recv + offset;
        offset += counts[q];
        if (counts[q] == 0) continue;
        NCCL_CHECK(ncclBroadcast(q == comm->rank ? send : part, part, counts[q], ncclFloat, q, impl->nccl, s));
    }
    NCCL_CHECK(ncclGroupEnd());
    end(impl, req);
}

static void allgather_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    allgather_v(comm, recv, send, counts, NULL);
}

static void broadcast(rt_comm *comm, void *buf, size_t bytes, int root) {
    nccl_impl *impl = impl_of(comm);
    if (bytes == 0) return;
    cudaStream_t s = begin(impl);
    NCCL_CHECK(ncclBroadcast(buf, buf, bytes, ncclUint8, root, impl->nccl, s));
    end(impl, NULL);
}

/* The ranks meet on the host (queued transfers launched first); device work is not waited for. */
static void barrier(rt_comm *comm) {
    nccl_impl *impl = impl_of(comm);
    launch_queued(impl);
    rt_barrier(impl->host);
}

/* ------------------------------------------------------------------ transfers */

static void queue_transfer(rt_comm *comm, int is_send, void *buf, size_t bytes, int peer, rt_comm_request *req) {
    nccl_impl *impl = impl_of(comm);
    if (bytes == 0) return; /* both sides skip it: the peer passes the same bytes */
    comm_after_compute(impl);
    if (impl->n_queued == impl->cap_queued) {
        int cap = impl->cap_queued ? 2 * impl->cap_queued : 8;
        queued_transfer *grown = malloc_check((size_t)cap * sizeof *grown);
        if (impl->n_queued) memcpy(grown, impl->queued, (size_t)impl->n_queued * sizeof *grown);
        free(impl->queued);
        impl->queued = grown;
        impl->cap_queued = cap;
    }
    impl->queued[impl->n_queued++] = (queued_transfer){.is_send = is_send, .buf = buf, .bytes = bytes, .peer = peer};
    request_covers(req, impl->launches + 1); /* the launch that will carry it */
}

static void isend(rt_comm *comm, const void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    (void)tag;
    queue_transfer(comm, 1, (void *)buf, bytes, peer, req);
}

static void irecv(rt_comm *comm, void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    (void)tag;
    queue_transfer(comm, 0, buf, bytes, peer, req);
}

static void wait_all(rt_comm *comm, rt_comm_request *req) {
    nccl_impl *impl = impl_of(comm);
    if (req->n == 0) return;
    const uint64_t launch = (uint64_t)(uintptr_t)req->impl;
    if (launch > impl->launches) launch_queued(impl);
    CUDA_CHECK(cudaStreamWaitEvent(compute_stream(impl), impl->launch_done[launch % LAUNCH_EVENTS], 0));
    req->impl = NULL;
    req->n = 0;
}

/* Launched at the post; the compute stream waits for them at the request's wait (see the top). NCCL progresses
 * on its own. */
static void ireduce_scatter_sum_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                                      rt_comm_request *req) {
    reduce_scatter_v(comm, recv, send, counts, req);
}

static void iallgather_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                             rt_comm_request *req) {
    allgather_v(comm, recv, send, counts, req);
}

static void progress(rt_comm *comm, rt_comm_request *req) { (void)comm, (void)req; }

/* ------------------------------------------------------------------ communicators */

static rt_comm *split(rt_comm *comm, int color, int key) {
    rt_comm *host = impl_of(comm)->host;
    return rt_comm_split(host, color, key);
}

static rt_comm *split_node(rt_comm *comm) {
    rt_comm *host = impl_of(comm)->host;
    return rt_comm_split_node(host);
}

static void destroy(rt_comm *comm) {
    if (!comm) return;
    nccl_impl *impl = impl_of(comm);
    launch_queued(impl);
    CUDA_CHECK(cudaStreamSynchronize(impl->stream));
    NCCL_CHECK(ncclCommFinalize(impl->nccl));
    NCCL_CHECK(ncclCommDestroy(impl->nccl));
    CUDA_CHECK(cudaEventDestroy(impl->compute_ready));
    CUDA_CHECK(cudaEventDestroy(impl->comm_done));
    for (int i = 0; i < LAUNCH_EVENTS; i++)
        CUDA_CHECK(cudaEventDestroy(impl->launch_done[i])); /* the stream is the backend's */
    if (impl->scratch) rt_be_device_free(impl->be, impl->scratch);
    free(impl->queued);
    free(impl);
    free(comm);
}

const rt_comm_ops rt_comm_nccl_ops = {
    .allreduce_sum_f32 = allreduce_sum_f32,
    .allreduce_sum_f64 = allreduce_sum_f64,
    .allreduce_max_f64 = allreduce_max_f64,
    .reduce_scatter_sum_f32 = reduce_scatter_sum_f32,
    .reduce_scatter_sum_f32_v = reduce_scatter_sum_f32_v,
    .allgather_f32 = allgather_f32,
    .allgather_f32_v = allgather_f32_v,
    .broadcast = broadcast,
    .barrier = barrier,
    .isend = isend,
    .irecv = irecv,
    .wait = wait_all,
    .ireduce_scatter_sum_f32_v = ireduce_scatter_sum_f32_v,
    .iallgather_f32_v = iallgather_f32_v,
    .progress = progress,
    .split = split,
    .split_node = split_node,
    .destroy = destroy,
};

rt_comm *rt_comm_nccl_plane(rt_comm *host, const rt_backend *be, rt_error *err) {
    if (strcmp(be->name, "cuda") != 0) { /* the same on every rank: the backend kind is the job's */
        rt_fail(err, "the NCCL plane needs the cuda backend, not %s", be->name);
        return NULL;
    }
    /* rank 0's id and whether drawing it worked, so every rank fails alike */
    struct {
        ncclUniqueId id;
        int rc;
    } drawn;
    memset(&drawn, 0, sizeof drawn);
    if (host->rank == 0) drawn.rc = (int)ncclGetUniqueId(&drawn.id);
    rt_comm_broadcast(host, &drawn, sizeof drawn, 0);
    if (drawn.rc != (int)ncclSuccess) {
        rt_fail(err, "ncclGetUniqueId failed on rank 0: %s", ncclGetErrorString((ncclResult_t)drawn.rc));
        return NULL;
    }
    CUDA_CHECK(cudaSetDevice(rt_cuda_state_of(be)->device));
    ncclComm_t nccl;
    ncclResult_t rc = ncclCommInitRank(&nccl, host->size, drawn.id, host->rank);
    if (rc != ncclSuccess) {
        rt_fail(err, "ncclCommInitRank (rank %d of %d, CUDA device %d) failed: %s (%s)", host->rank, host->size,
                rt_cuda_state_of(be)->device, ncclGetErrorString(rc), ncclGetLastError(NULL));
        return NULL;
    }
    rt_comm *comm = calloc_check(1, sizeof *comm);
    nccl_impl *impl = calloc_check(1, sizeof *impl);
    impl->host = host;
    impl->be = be;
    impl->nccl = nccl;
    impl->stream = rt_cuda_state_of(be)->comm;
    CUDA_CHECK(cudaEventCreateWithFlags(&impl->compute_ready, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&impl->comm_done, cudaEventDisableTiming));
    for (int i = 0; i < LAUNCH_EVENTS; i++)
        CUDA_CHECK(cudaEventCreateWithFlags(&impl->launch_done[i], cudaEventDisableTiming));
    comm->ops = &rt_comm_nccl_ops;
    comm->rank = host->rank;
    comm->size = host->size;
    comm->impl = impl;
    return comm;
}

/* ------------------------------------------------------------------ can NCCL run here? */

/* Where a rank's GPU is: its node (the lowest host rank sharing its memory) and PCI address. */
typedef struct {
    int node, domain, bus, device, rank;
} gpu_place;

static int compare_places(const void *a, const void *b) {
    const gpu_place *x = a, *y = b;
    const int kx[5] = {x->node, x->domain, x->bus, x->device, x->rank};
    const int ky[5] = {y->node, y->domain, y->bus, y->device, y->rank};
    for (int i = 0; i < 5; i++)
        if (kx[i] != ky[i]) return kx[i] < ky[i] ? -1 : 1;
    return 0;
}

/*
 * Every rank's (node, PCI domain, bus, device) goes around with the host comm's all-gather as floats: they are
 * integers below 2^24 (a rank number, 16-bit domain, 8-bit bus, 5-bit device), so floats carry them exactly,
 * and the check needs nothing beyond the rt_comm interface. Every rank sorts the same table, so every rank
 * gives the same answer and the same line.
 */
int rt_comm_nccl_usable(rt_comm *host, const rt_backend *be, rt_error *why) {
    if (strcmp(be->name, "cuda") != 0) {
        rt_fail(why, "the %s backend's buffers are host memory, not CUDA device memory; nccl needs device.kind = cuda",
                be->name);
        return 0;
    }
    const int device = rt_cuda_state_of(be)->device;
    float mine[4];
    int node = host->rank, domain = 0, bus = 0, pci_device = 0;
    rt_comm *node_comm = rt_comm_split_node(host);
    rt_comm_broadcast(node_comm, &node, sizeof node, 0); /* the host rank of the node's first rank */
    rt_comm_destroy(node_comm);
    CUDA_CHECK(cudaDeviceGetAttribute(&domain, cudaDevAttrPciDomainId, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&bus, cudaDevAttrPciBusId, device));
    CUDA_CHECK(cudaDeviceGetAttribute(&pci_device, cudaDevAttrPciDeviceId, device));
    mine[0] = (float)node, mine[1] = (float)domain, mine[2] = (float)bus, mine[3] = (float)pci_device;
    const size_t P = (size_t)host->size;
    float *all = malloc_check(P * 4 * sizeof *all);
    rt_allgather_f32(host, all, mine, 4);
    gpu_place *places = malloc_check(P * sizeof *places);
    for (size_t q = 0; q < P; q++)
        places[q] = (gpu_place){(int)all[4 * q], (int)all[4 * q + 1], (int)all[4 * q + 2], (int)all[4 * q + 3], (int)q};
    qsort(places, P, sizeof *places, compare_places);
    int usable = 1;
    for (size_t q = 1; q < P && usable; q++) {
        const gpu_place *a = &places[q - 1], *b = &places[q];
        if (a->node == b->node && a->domain == b->domain && a->bus == b->bus && a->device == b->device) {
            rt_fail(why,
                    "ranks %d and %d share one GPU (PCI %04x:%02x:%02x, on the node of rank %d); NCCL needs a GPU "
                    "per rank (use staged)",
                    a->rank, b->rank, (unsigned)a->domain, (unsigned)a->bus, (unsigned)a->device, a->node);
            usable = 0;
        }
    }
    free(places);
    free(all);
    return usable;
}
