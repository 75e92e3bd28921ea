/*
 * comm_staged.c: the staged device plane: device buffer -> host staging -> the host comm's MPI -> device.
 *
 * Every op of this plane is the host plane's op on host copies of the
 * device buffers, so the results are the host plane's, bit for bit: each
 * collective makes the same host call the host plane would make on the
 * same data, in place when the caller's call is in place and out of place
 * otherwise (MPI may pick another algorithm, hence another summation order,
 * for MPI_IN_PLACE).
 *
 * Collectives. One staging buffer per plane (host_alloc: pinned on CUDA),
 * allocated at the first call and grown only when a call needs more than it
 * holds (contents are not kept when it grows), freed by destroy. A call
 * copies its input into it (be->copy, synchronous, ordered after the
 * compute issued before the call), runs the host collective there and copies
 * the result out:
 *   allreduce          stage n, reduce in place, copy n back
 *   reduce_scatter     in place:     stage n, in place, copy n/size back
 *                      out of place: stage n | recv n/size, copy n/size back
 *   reduce_scatter_v   likewise with sum(counts) and counts[rank]
 *   allgather          in place:     stage my block at rank*n, copy size*n back
 *                      out of place: stage recv size*n | send n, copy size*n back
 *   allgather_v        likewise with sum(counts) and counts[rank]
 *   broadcast          root stages, non-roots copy back
 * The nonblocking reduce-scatter and all-gather run at their wait, the
 * latest moment comm.h allows: the plane has no overlap to give (every copy
 * here is synchronous), and running them late makes a caller that reuses a
 * buffer before the wait compute wrong numbers, which the parity suite,
 * run on this plane, then sees.
 * One rank needs no host call: the op is at most one device copy.
 *
 * Transfers. isend copies the device bytes into a transfer buffer and posts
 * the host isend from it (the device buffer is free again on return);
 * irecv posts the host irecv into a transfer buffer, and wait, once the host
 * transfers completed, copies each received buffer to its device
 * destination. Transfer buffers come from a pool of the plane: acquire takes
 * the smallest free buffer that is large enough, else grows the largest
 * free one, else allocates a new one; wait returns them. The ring posts the
 * same transfers every step, so after the first step nothing is allocated.
 * A request's impl is a staged_request (from the plane's free list, also
 * recycled) holding the host request and the transfers wait completes.
 *
 * split and split_node return host-plane comms (the host's own ops).
 */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "comm_device.h"
#include "runtime/core/common.h"

typedef struct transfer_buffer {
    void *ptr; /* host_alloc'd */
    size_t bytes;
    int in_use;
} transfer_buffer;

typedef struct {
    void *device_dst; /* irecv: where wait copies the bytes; NULL for isend */
    size_t bytes;
    transfer_buffer *buffer;
} staged_transfer;

/* A nonblocking collective, run at its wait (see the top). */
typedef enum { DEFERRED_NONE, DEFERRED_REDUCE_SCATTER, DEFERRED_ALLGATHER } deferred_kind;

typedef struct staged_request {
    rt_comm_request host_req; /* every host transfer posted on this request */
    staged_transfer *transfers;
    int n_transfers, cap_transfers;
    deferred_kind deferred;
    float *deferred_recv;
    const float *deferred_send;
    size_t *deferred_counts; /* (size), kept across reuse of the request */
    struct staged_request *next_free;
} staged_request;

typedef struct {
    rt_comm *host;
    const rt_backend *be;
    unsigned char *staging; /* collectives */
    size_t staging_bytes;
    transfer_buffer **buffers; /* the transfer pool */
    int n_buffers, cap_buffers;
    staged_request *free_requests;
    size_t allocations; /* host_alloc calls, for rt_comm_staged_stats_of */
} staged_impl;

static staged_impl *impl_of(const rt_comm *comm) { return comm->impl; }

static size_t checked_mul(size_t a, size_t b, const char *what) {
    size_t product;
    if (__builtin_mul_overflow(a, b, &product)) rt_fatal("staged plane: %s: %zu x %zu overflows size_t", what, a, b);
    return product;
}

static size_t checked_add(size_t a, size_t b, const char *what) {
    size_t sum;
    if (__builtin_add_overflow(a, b, &sum)) rt_fatal("staged plane: %s: %zu + %zu overflows size_t", what, a, b);
    return sum;
}

static void *host_alloc_counted(staged_impl *impl, size_t bytes, const char *what) {
    void *ptr = rt_be_host_alloc(impl->be, bytes);
    if (!ptr) {
        char size[32];
        rt_fatal("staged plane: out of pinned host memory for %s (%s)", what, rt_format_bytes(bytes, size));
    }
    impl->allocations++;
    return ptr;
}

/* The collectives' staging buffer, at least bytes long. */
static void *staging(staged_impl *impl, size_t bytes) {
    if (impl->staging_bytes < bytes || !impl->staging) {
        if (impl->staging) rt_be_host_free(impl->be, impl->staging);
        impl->staging = host_alloc_counted(impl, bytes, "collective staging");
        impl->staging_bytes = bytes;
    }
    return impl->staging;
}

static void to_host(staged_impl *impl, void *host_dst, const void *device_src, size_t bytes) {
    if (bytes) rt_be_copy(impl->be, host_dst, device_src, bytes);
}
static void to_device(staged_impl *impl, void *device_dst, const void *host_src, size_t bytes) {
    if (bytes) rt_be_copy(impl->be, device_dst, host_src, bytes);
}

/* ------------------------------------------------------------------ collectives */

static void allreduce_sum_f32(rt_comm *comm, float *buf, size_t n) {
    staged_impl *impl = impl_of(comm);
    if (comm->size == 1) return;
    size_t bytes = checked_mul(n, sizeof(float), "allreduce");
    float *host_buf = staging(impl, bytes);
    to_host(impl, host_buf, buf, bytes);
    rt_allreduce_sum_f32(impl->host, host_buf, n);
    to_device(impl, buf, host_buf, bytes);
}

static void allreduce_f64(rt_comm *comm, double *buf, size_t n, int max) {
    staged_impl *impl = impl_of(comm);
    if (comm->size == 1) return;
    size_t bytes = checked_mul(n, sizeof(double), "allreduce");
    double *host_buf = staging(impl, bytes);
    to_host(impl, host_buf, buf, bytes);
    if (max)
        rt_allreduce_max_f64(impl->host, host_buf, n);
    else
        rt_allreduce_sum_f64(impl->host, host_buf, n);
    to_device(impl, buf, host_buf, bytes);
}
static void allreduce_sum_f64(rt_comm *comm, double *buf, size_t n) { allreduce_f64(comm, buf, n, 0); }
static void allreduce_max_f64(rt_comm *comm, double *buf, size_t n) { allreduce_f64(comm, buf, n, 1); }

static void reduce_scatter_sum_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    staged_impl *impl = impl_of(comm);
    const size_t per_rank = n / (size_t)comm->size;
    if (per_rank * (size_t)comm->size != n)
        rt_fatal("reduce_scatter of %zu floats over %d ranks: count must divide by the rank count", n, comm->size);
    if (comm->size == 1) {
        if (send != recv) to_device(impl, recv, send, n * sizeof(float));
        return;
    }
    const int in_place = send == recv;
    size_t elems = in_place ? n : checked_add(n, per_rank, "reduce_scatter");
    float *host_send = staging(impl, checked_mul(elems, sizeof(float), "reduce_scatter"));
    float *host_recv = in_place ? host_send : host_send + n;
    to_host(impl, host_send, send, n * sizeof(float));
    rt_reduce_scatter_sum_f32(impl->host, host_recv, host_send, n);
    to_device(impl, recv, host_recv, per_rank * sizeof(float));
}

static void reduce_scatter_sum_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    staged_impl *impl = impl_of(comm);
    size_t total = 0;
    for (int q = 0; q < comm->size; q++)
        total = checked_add(total, counts[q], "reduce_scatter_v counts");
    const size_t mine = counts[comm->rank];
    if (comm->size == 1) {
        if (send != recv) to_device(impl, recv, send, mine * sizeof(float));
        return;
    }
    const int in_place = send == recv;
    size_t elems = in_place ? total : checked_add(total, mine, "reduce_scatter_v");
    float *host_send = staging(impl, checked_mul(elems, sizeof(float), "reduce_scatter_v"));
    float *host_recv = in_place ? host_send : host_send + total;
    to_host(impl, host_send, send, total * sizeof(float));
    rt_reduce_scatter_sum_f32_v(impl->host, host_recv, host_send, counts);
    to_device(impl, recv, host_recv, mine * sizeof(float));
}

static void allgather_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    staged_impl *impl = impl_of(comm);
    const size_t size = (size_t)comm->size, me = (size_t)comm->rank;
    const size_t gathered = checked_mul(size, n, "allgather");
    const int in_place = send == recv + checked_mul(me, n, "allgather");
    if (comm->size == 1) {
        if (!in_place) to_device(impl, recv, send, n * sizeof(float));
        return;
    }
    size_t elems = in_place ? gathered : checked_add(gathered, n, "allgather");
    float *host_recv = staging(impl, checked_mul(elems, sizeof(float), "allgather"));
    float *host_send = in_place ? host_recv + me * n : host_recv + gathered;
    to_host(impl, host_send, send, n * sizeof(float));
    rt_allgather_f32(impl->host, host_recv, host_send, n);
    to_device(impl, recv, host_recv, gathered * sizeof(float));
}

static void allgather_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    staged_impl *impl = impl_of(comm);
    size_t total = 0, mine_at = 0;
    for (int q = 0; q < comm->size; q++) {
        if (q == comm->rank) mine_at = total;
        total = checked_add(total, counts[q], "allgather_v counts");
    }
    const size_t mine = counts[comm->rank];
    const int in_place = send == recv + mine_at;
    if (comm->size == 1) {
        if (!in_place) to_device(impl, recv, send, mine * sizeof(float));
        return;
    }
    size_t elems = in_place ? total : checked_add(total, mine, "allgather_v");
    float *host_recv = staging(impl, checked_mul(elems, sizeof(float), "allgather_v"));
    float *host_send = in_place ? host_recv + mine_at : host_recv + total;
    to_host(impl, host_send, send, mine * sizeof(float));
    rt_allgather_f32_v(impl->host, host_recv, host_send, counts);
    to_device(impl, recv, host_recv, total * sizeof(float));
}

static void broadcast(rt_comm *comm, void *buf, size_t bytes, int root) {
    staged_impl *impl = impl_of(comm);
    if (comm->size == 1) return;
    void *host_buf = staging(impl, bytes);
    if (comm->rank == root) to_host(impl, host_buf, buf, bytes);
    rt_comm_broadcast(impl->host, host_buf, bytes, root);
    if (comm->rank != root) to_device(impl, buf, host_buf, bytes);
}

/* The ranks meet on the host; every device op before it is already done (each op here copies synchronously). */
static void barrier(rt_comm *comm) {
    staged_impl *impl = impl_of(comm);
    rt_barrier(impl->host);
}

/* ------------------------------------------------------------------ transfers */

static transfer_buffer *acquire_buffer(staged_impl *impl, size_t bytes) {
    transfer_buffer *best = NULL, *largest = NULL;
    for (int i = 0; i < impl->n_buffers; i++) {
        transfer_buffer *b = impl->buffers[i];
        if (b->in_use) continue;
        if (b->bytes >= bytes && (!best || b->bytes < best->bytes)) best = b;
        if (!largest || b->bytes > largest->bytes) largest = b;
    }
    if (!best && largest) { /* grow the largest free one: the pool keeps as many buffers as transfers in flight */
        rt_be_host_free(impl->be, largest->ptr);
        largest->ptr = host_alloc_counted(impl, bytes, "a transfer buffer");
        largest->bytes = bytes;
        best = largest;
    }
    if (!best) {
        if (impl->n_buffers == impl->cap_buffers) {
            int cap = impl->cap_buffers ? 2 * impl->cap_buffers : 8;
            transfer_buffer **grown = malloc_check((size_t)cap * sizeof *grown);
            if (impl->n_buffers) memcpy(grown, impl->buffers, (size_t)impl->n_buffers * sizeof *grown);
            free(impl->buffers);
            impl->buffers = grown;
            impl->cap_buffers = cap;
        }
        best = calloc_check(1, sizeof *best);
        best->ptr = host_alloc_counted(impl, bytes, "a transfer buffer");
        best->bytes = bytes;
        impl->buffers[impl->n_buffers++] = best;
    }
    best->in_use = 1;
    return best;
}

/* The staged_request of req, taken from the free list on the first transfer posted on it. */
static staged_request *request_of(staged_impl *impl, rt_comm_request *req) {
    if (req->impl) return req->impl;
    staged_request *sreq = impl->free_requests;
    if (sreq)
        impl->free_requests = sreq->next_free;
    else
        sreq = calloc_check(1, sizeof *sreq);
    sreq->next_free = NULL;
    sreq->n_transfers = 0;
    req->impl = sreq;
    req->n = 0;
    return sreq;
}

static staged_transfer *add_transfer(staged_request *sreq, rt_comm_request *req) {
    if (sreq->n_transfers == sreq->cap_transfers) {
        int cap = sreq->cap_transfers ? 2 * sreq->cap_transfers : 4;
        staged_transfer *grown = malloc_check((size_t)cap * sizeof *grown);
        if (sreq->n_transfers) memcpy(grown, sreq->transfers, (size_t)sreq->n_transfers * sizeof *grown);
        free(sreq->transfers);
        sreq->transfers = grown;
        sreq->cap_transfers = cap;
    }
    req->n = sreq->n_transfers + 1;
    return &sreq->transfers[sreq->n_transfers++];
}

static void isend(rt_comm *comm, const void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    staged_impl *impl = impl_of(comm);
    staged_request *sreq = request_of(impl, req);
    staged_transfer *t = add_transfer(sreq, req);
    t->device_dst = NULL;
    t->bytes = bytes;
    t->buffer = acquire_buffer(impl, bytes);
    to_host(impl, t->buffer->ptr, buf, bytes);
    rt_comm_isend(impl->host, t->buffer->ptr, bytes, peer, tag, &sreq->host_req);
}

static void irecv(rt_comm *comm, void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    staged_impl *impl = impl_of(comm);
    staged_request *sreq = request_of(impl, req);
    staged_transfer *t = add_transfer(sreq, req);
    t->device_dst = buf;
    t->bytes = bytes;
    t->buffer = acquire_buffer(impl, bytes);
    rt_comm_irecv(impl->host, t->buffer->ptr, bytes, peer, tag, &sreq->host_req);
}

static void wait_all(rt_comm *comm, rt_comm_request *req) {
    staged_impl *impl = impl_of(comm);
    staged_request *sreq = req->impl;
    if (!sreq) return;
    if (sreq->deferred == DEFERRED_REDUCE_SCATTER)
        reduce_scatter_sum_f32_v(comm, sreq->deferred_recv, sreq->deferred_send, sreq->deferred_counts);
    else if (sreq->deferred == DEFERRED_ALLGATHER)
        allgather_f32_v(comm, sreq->deferred_recv, sreq->deferred_send, sreq->deferred_counts);
    sreq->deferred = DEFERRED_NONE;
    rt_comm_wait(impl->host, &sreq->host_req);
    for (int i = 0; i < sreq->n_transfers; i++) {
        staged_transfer *t = &sreq->transfers[i];
        if (t->device_dst) to_device(impl, t->device_dst, t->buffer->ptr, t->bytes);
        t->buffer->in_use = 0;
    }
    sreq->n_transfers = 0;
    sreq->next_free = impl->free_requests;
    impl->free_requests = sreq;
    req->impl = NULL;
    req->n = 0;
}

static void defer(rt_comm *comm, deferred_kind kind, float *recv, const float *send, const size_t *counts,
                  rt_comm_request *req) {
    staged_request *sreq = request_of(impl_of(comm), req);
    if (sreq->deferred != DEFERRED_NONE || sreq->n_transfers)
        rt_fatal("a nonblocking collective posted on a request that is still pending");
    if (!sreq->deferred_counts) sreq->deferred_counts = malloc_check((size_t)comm->size * sizeof(size_t));
    memcpy(sreq->deferred_counts, counts, (size_t)comm->size * sizeof(size_t));
    sreq->deferred = kind;
    sreq->deferred_recv = recv;
    sreq->deferred_send = send;
    req->n = 1;
}

static void ireduce_scatter_sum_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                                      rt_comm_request *req) {
    defer(comm, DEFERRED_REDUCE_SCATTER, recv, send, counts, req);
}

static void iallgather_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                             rt_comm_request *req) {
    defer(comm, DEFERRED_ALLGATHER, recv, send, counts, req);
}

static void progress(rt_comm *comm, rt_comm_request *req) {
    staged_request *sreq = req->impl;
    if (sreq) rt_comm_progress(impl_of(comm)->host, &sreq->host_req);
}

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
    staged_impl *impl = impl_of(comm);
    for (int i = 0; i < impl->n_buffers; i++) {
        if (impl->buffers[i]->in_use) rt_fatal("staged plane destroyed with a transfer not waited for");
        rt_be_host_free(impl->be, impl->buffers[i]->ptr);
        free(impl->buffers[i]);
    }
    free(impl->buffers);
    while (impl->free_requests) {
        staged_request *next = impl->free_requests->next_free;
        free(impl->free_requests->transfers);
        free(impl->free_requests->deferred_counts);
        free(impl->free_requests);
        impl->free_requests = next;
    }
    if (impl->staging) rt_be_host_free(impl->be, impl->staging);
    free(impl);
    free(comm);
}

const rt_comm_ops rt_comm_staged_ops = {
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

rt_comm *rt_comm_staged_plane(rt_comm *host, const rt_backend *be) {
    rt_comm *comm = calloc_check(1, sizeof *comm);
    staged_impl *impl = calloc_check(1, sizeof *impl);
    impl->host = host;
    impl->be = be;
    comm->ops = &rt_comm_staged_ops;
    comm->rank = host->rank;
    comm->size = host->size;
    comm->impl = impl;
    return comm;
}

void rt_comm_staged_stats_of(const rt_comm *plane, rt_comm_staged_stats *out) {
    memset(out, 0, sizeof *out);
    if (!plane || plane->ops != &rt_comm_staged_ops) return;
    const staged_impl *impl = impl_of(plane);
    out->allocations = impl->allocations;
    out->staging_bytes = impl->staging_bytes;
    out->transfer_buffers = (size_t)impl->n_buffers;
    for (int i = 0; i < impl->n_buffers; i++)
        out->transfer_bytes += impl->buffers[i]->bytes;
}
