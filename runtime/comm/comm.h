/* comm.h: the communicator interface (MPI; the device planes of comm_device.h) used by seqpar, shard and the
 * trainer. */
#ifndef RT_COMM_H
#define RT_COMM_H

#include <stddef.h>

/*
 * A communicator is a group of ranks plus a table of collectives. Buffers
 * are device pointers of the run's backend (host memory on CPU). Counts are
 * size_t and may be any size: the MPI implementation moves at most one
 * segment (rt_comm_mpi_segment_elems, 2^26 elements) per MPI call, in
 * rounds, since MPI counts (and the library's internal sums of them) are
 * int. A collective whose count fits one segment is one MPI call. Above a
 * segment, reduce-scatter and all-gather pack each round's pieces of every
 * rank's block into a staging buffer of at most one segment (or one
 * element per rank, if more) per communicator, in host memory kept until
 * destroy.
 * Every rank of a collective passes the same counts.
 * Point-to-point transfers are nonblocking: post with isend/irecv, then
 * wait, so the ring can overlap the next transfer with compute on the
 * current block.
 */
typedef struct rt_comm rt_comm;
typedef struct {
    void *impl; /* MPI_Request[] or a stream event; opaque */
    int n;
} rt_comm_request;

typedef struct {
    void (*allreduce_sum_f32)(rt_comm *comm, float *buf, size_t n);
    void (*allreduce_sum_f64)(rt_comm *comm, double *buf, size_t n);
    void (*allreduce_max_f64)(rt_comm *comm, double *buf, size_t n);
    /* recv (n/size floats per rank, n divisible by size) = this rank's slice of the sum of send (n). With
     * send == recv it works in place and the slice lands at the start of the buffer. */
    void (*reduce_scatter_sum_f32)(rt_comm *comm, float *recv, const float *send, size_t n);
    /* Uneven reduce-scatter: send holds sum(counts) floats; rank q receives, in recv, the sum over ranks of
     * the counts[q] floats that follow counts[0..q-1] in send. Counts may be 0. With send == recv it works
     * in place and this rank's part lands at the start of the buffer. */
    void (*reduce_scatter_sum_f32_v)(rt_comm *comm, float *recv, const float *send, const size_t *counts);
    /* recv (n*size) = concatenation of every rank's send (n), in rank order. In place when send is
     * recv + rank*n (this rank's block already in recv). */
    void (*allgather_f32)(rt_comm *comm, float *recv, const float *send, size_t n);
    /* Uneven all-gather: recv = concatenation of every rank's counts[q] floats, in rank order (counts may be
     * 0). In place when send is recv + counts[0] + ... + counts[rank-1]. */
    void (*allgather_f32_v)(rt_comm *comm, float *recv, const float *send, const size_t *counts);
    void (*broadcast)(rt_comm *comm, void *buf, size_t bytes, int root);
    void (*barrier)(rt_comm *comm);
    /* Nonblocking byte transfers to/from a peer; wait completes them. */
    void (*isend)(rt_comm *comm, const void *buf, size_t bytes, int peer, int tag, rt_comm_request *req);
    void (*irecv)(rt_comm *comm, void *buf, size_t bytes, int peer, int tag, rt_comm_request *req);
    void (*wait)(rt_comm *comm, rt_comm_request *req);
    /* Nonblocking uneven reduce-scatter and all-gather (as the _v ops above, out of place only: send != recv),
     * on an empty request (zeroed, or waited); wait completes them, and until then neither buffer may be
     * touched. Every rank posts the same collectives in the same order. NCCL launches one at the post on its
     * communication stream and orders the compute stream after it at the wait; MPI may run one at the post
     * (above one segment) and the staged plane runs it at the wait: still correct, only not overlapped. */
    void (*ireduce_scatter_sum_f32_v)(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                                      rt_comm_request *req);
    void (*iallgather_f32_v)(rt_comm *comm, float *recv, const float *send, const size_t *counts, rt_comm_request *req);
    /* Lets the library move the request's data now, without waiting: Open MPI advances large messages only
     * inside MPI calls, so a rank that computes between post and wait calls this now and then. */
    void (*progress)(rt_comm *comm, rt_comm_request *req);
    /* A sub-communicator of the ranks with the same color, ordered by key. */
    rt_comm *(*split)(rt_comm *comm, int color, int key);
    /* A sub-communicator of the ranks that share this rank's node (its shared memory), in rank order. */
    rt_comm *(*split_node)(rt_comm *comm);
    void (*destroy)(rt_comm *comm);
} rt_comm_ops;

struct rt_comm {
    const rt_comm_ops *ops;
    int rank;
    int size;
    void *impl;
};

/* Initializes MPI (once per process) with MPI_THREAD_FUNNELED: only the thread that called it calls MPI (the
 * copy-engine workers and OpenMP threads never do); a library that provides less is refused with one line.
 * Returns the world communicator and installs the abort hook so rt_fatal on any rank ends the whole job.
 * Safe to call again: returns the same world. */
rt_comm *rt_comm_world_mpi(int *argc, char ***argv);
/* Finalizes MPI after destroying the world. */
void rt_comm_finalize(void);

/* Test only: the most elements one MPI call moves (default 2^26; 0 restores it), so tests reach the
 * segmented paths with small buffers. Every rank sets the same value between collectives. The environment
 * variable RINGTRAIN_COMM_SEGMENT, read once by rt_comm_world_mpi, does the same for whole runs. */
void rt_comm_mpi_set_segment_elems(size_t elems);
size_t rt_comm_mpi_segment_elems(void);

/* Collective: 0 when rc is 0 on every rank; else -1 on every rank, the lowest failing rank keeping its
 * err message and the others getting an empty one (the job prints one line, and every rank returns). */
struct rt_error;
int rt_comm_agree(rt_comm *world, int rc, struct rt_error *err);

/* Callers go through these wrappers, never c->ops->op(c, ...). Each does what its slot above says. */
static inline void rt_allreduce_sum_f32(rt_comm *c, float *buf, size_t n) { c->ops->allreduce_sum_f32(c, buf, n); }
static inline void rt_allreduce_sum_f64(rt_comm *c, double *buf, size_t n) { c->ops->allreduce_sum_f64(c, buf, n); }
static inline void rt_allreduce_max_f64(rt_comm *c, double *buf, size_t n) { c->ops->allreduce_max_f64(c, buf, n); }
static inline void rt_reduce_scatter_sum_f32(rt_comm *c, float *recv, const float *send, size_t n) {
    c->ops->reduce_scatter_sum_f32(c, recv, send, n);
}
static inline void rt_reduce_scatter_sum_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts) {
    c->ops->reduce_scatter_sum_f32_v(c, recv, send, counts);
}
static inline void rt_allgather_f32(rt_comm *c, float *recv, const float *send, size_t n) {
    c->ops->allgather_f32(c, recv, send, n);
}
static inline void rt_allgather_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts) {
    c->ops->allgather_f32_v(c, recv, send, counts);
}
static inline void rt_comm_broadcast(rt_comm *c, void *buf, size_t bytes, int root) {
    c->ops->broadcast(c, buf, bytes, root);
}
static inline void rt_barrier(rt_comm *c) { c->ops->barrier(c); }
static inline void rt_comm_isend(rt_comm *c, const void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    c->ops->isend(c, buf, bytes, peer, tag, req);
}
static inline void rt_comm_irecv(rt_comm *c, void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    c->ops->irecv(c, buf, bytes, peer, tag, req);
}
static inline void rt_comm_wait(rt_comm *c, rt_comm_request *req) { c->ops->wait(c, req); }
static inline void rt_ireduce_scatter_sum_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts,
                                                rt_comm_request *req) {
    c->ops->ireduce_scatter_sum_f32_v(c, recv, send, counts, req);
}
static inline void rt_iallgather_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts,
                                       rt_comm_request *req) {
    c->ops->iallgather_f32_v(c, recv, send, counts, req);
}
static inline void rt_comm_progress(rt_comm *c, rt_comm_request *req) { c->ops->progress(c, req); }
static inline rt_comm *rt_comm_split(rt_comm *c, int color, int key) { return c->ops->split(c, color, key); }
static inline rt_comm *rt_comm_split_node(rt_comm *c) { return c->ops->split_node(c); }
static inline void rt_comm_destroy(rt_comm *c) { c->ops->destroy(c); }

#endif
