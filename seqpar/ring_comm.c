/* ring_comm.c: the ring's hops over a communicator (see ring_comm.h). */
#include "ring_comm.h"

#include "runtime/core/common.h"

void seqpar_ring_comm_init(seqpar_ring_comm *ring, rt_comm *comm, int tag) {
    const int P = comm->size;
    *ring =
        (seqpar_ring_comm){.comm = comm, .next = (comm->rank + 1) % P, .prev = (comm->rank + P - 1) % P, .tag = tag};
}

void seqpar_ring_comm_post(seqpar_ring_comm *ring, const void *send_buf, void *recv_buf, size_t bytes) {
    if (ring->pending.n != 0)
        rt_fatal("seqpar: a ring hop (tag %d) posted while the previous one is pending", ring->tag);
    /* the receive first: its buffer is ready before the peer's block can arrive */
    rt_comm_irecv(ring->comm, recv_buf, bytes, ring->prev, ring->tag, &ring->pending);
    rt_comm_isend(ring->comm, send_buf, bytes, ring->next, ring->tag, &ring->pending);
}

void seqpar_ring_comm_wait(seqpar_ring_comm *ring) {
    const double t0 = rt_now_s();
    rt_comm_wait(ring->comm, &ring->pending);
    ring->waited_s += rt_now_s() - t0;
}
