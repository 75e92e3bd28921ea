/* ring_comm.h: one hop of the ring: send a block to the next rank while receiving one from the previous. */
#ifndef RT_SEQPAR_RING_COMM_H
#define RT_SEQPAR_RING_COMM_H

#include <stddef.h>

#include "runtime/comm/comm.h"

/*
 * The ring attention's communication, as an object with explicit post and
 * wait steps, so that the loop shows what moves while a block is computed
 * on: post(send block, receive buffer), compute, wait. Rank r sends to
 * r+1 and receives from r-1 (mod P), on one tag; the neighbours are
 * computed once, at init. One hop is in flight at a time: wait completes
 * both the send and the receive, after which both buffers may be touched
 * again. seqpar/attention.c keeps two: K/V blocks (forward and backward)
 * and dK/dV accumulators (backward).
 */
typedef struct {
    rt_comm *comm;
    int next, prev; /* (rank + 1) mod P: where blocks go; (rank - 1) mod P: where they come from */
    int tag;
    rt_comm_request pending; /* the posted hop; empty after wait */
    double waited_s;         /* time spent in wait: communication compute did not hide */
} seqpar_ring_comm;

/* A ring over the ranks of comm (size > 1) whose messages carry tag. */
void seqpar_ring_comm_init(seqpar_ring_comm *ring, rt_comm *comm, int tag);

/* Posts the send of bytes from send_buf to next and the receive of bytes from prev into recv_buf; returns at
 * once. Neither buffer may be touched until wait. A hop must not be pending (rt_fatal). */
void seqpar_ring_comm_post(seqpar_ring_comm *ring, const void *send_buf, void *recv_buf, size_t bytes);

/* Completes the pending hop (receive and send); adds the time it blocked to waited_s. */
void seqpar_ring_comm_wait(seqpar_ring_comm *ring);

#endif
