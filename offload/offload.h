/* offload.h: activation offload: layer inputs go to a host pool asynchronously in forward, come back in backward. */
#ifndef RT_OFFLOAD_H
#define RT_OFFLOAD_H

#include <stddef.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/memory.h"
#include "runtime/core/common.h"

/*
 * L = n_layers; "input l" = the input of layer l (the hidden states it
 * reads, one bytes_per_layer buffer). The offloader owns the device buffers
 * of inputs 0..L-1 and of the final hidden state (the output of layer L-1,
 * the head's input): all of them come from max_inflight + 1 slots. The
 * output of a recompute in backward is dead (nobody reads it): the model
 * writes it into scratch of its own.
 *
 * One pass = the forward (and backward) of one micro-batch:
 *
 *   x = rt_offload_input_buffer(off, 0);   embedding writes x;   rt_offload_save(off, 0, bytes);
 *   for l = 0..L-1:
 *       y = l + 1 < L ? rt_offload_input_buffer(off, l + 1) : rt_offload_output_buffer(off);
 *       layer l forward: reads input l, writes y;
 *       if (l + 1 < L) rt_offload_save(off, l + 1, bytes);
 *   head forward and backward (on the output buffer); rt_offload_release_output(off);
 *   for l = L-1..0:
 *       if (l > 0) rt_offload_prefetch(off, l - 1);      (overlaps layer l's recompute and backward)
 *       x = rt_offload_restore(off, l);
 *       recompute layer l from x (output into scratch), backward of layer l;
 *       rt_offload_release(off, l);
 *   rt_offload_end_pass(off);
 *
 * A forward-only pass (evaluation) calls input_buffer for each layer and
 * end_pass, and may skip save. Every pass ends with end_pass.
 *
 * Device memory is max_inflight + 1 slots of bytes_per_layer, allocated once
 * from the arena: it does not grow with L. Host memory is one pool of
 * (L-1) * bytes_per_layer from rt_be_host_alloc (pinned on CUDA),
 * allocated once; input l (l < L-1) always goes to the same place in it.
 * Input L-1 never leaves the device: its backward comes first.
 *
 * Misuse (out-of-order calls, restore of an input never saved, a slot
 * handed out while a copy on it is pending, a pass left unfinished) is a
 * programming error and ends the job through rt_fatal. The rules are in
 * offload.c.
 */

/* Counters since the last rt_offload_take_stats. */
typedef struct {
    size_t offloaded_bytes;   /* device -> host bytes queued by save (0 in a step that offloaded nothing) */
    size_t restored_bytes;    /* host -> device bytes queued by prefetch / restore */
    double prefetch_wait_s;   /* time backward blocked waiting for its inputs to arrive */
    double offload_wait_s;    /* time forward blocked on max_inflight copies in flight */
    int passes;               /* passes ended */
    size_t host_pool_bytes;   /* (L-1) * bytes_per_layer, fixed at init */
    size_t device_slot_bytes; /* device bytes of the slots, fixed at init */
} rt_offload_stats;

typedef struct rt_offloader {
    const rt_backend *backend;
    rt_device_memory *mem;
    int n_layers, max_inflight, n_slots;
    size_t bytes_per_layer, slot_stride; /* slot_stride = bytes_per_layer rounded up to 256 */
    unsigned char *device_slots;         /* (n_slots, slot_stride) device, from mem */
    unsigned char *host_pool;            /* (n_layers - 1, bytes_per_layer) host_alloc */
    rt_stream *d2h_stream, *h2d_stream;
    rt_event *drain_event;
    struct rt_offload_slot *slots;   /* (n_slots) */
    struct rt_offload_layer *layers; /* (n_layers) */
    int next_input;                  /* forward: the input input_buffer hands out next */
    int in_backward;                 /* the pass's backward began (first prefetch or restore) */
    int next_restore;                /* backward: the input restore expects next */
    int output_slot;                 /* the slot holding the final hidden state, -1 when none */
    rt_offload_stats stats;
} rt_offloader;

/* Allocates the device slots and the host pool. n_layers >= 2 (with one layer nothing can be offloaded),
 * max_inflight >= 1. Returns 0, or -1 with err set (bad argument, device memory limit, host memory). */
int rt_offloader_init(rt_offloader *off, const rt_backend *backend, rt_device_memory *mem, int n_layers,
                      size_t bytes_per_layer, int max_inflight, rt_error *err);
/* Waits for pending copies, frees the slots (back to the arena) and the host pool; safe after a failed init. */
void rt_offloader_free(rt_offloader *off);

/* Forward: the device buffer (bytes_per_layer) that will hold input `layer`; layers in order 0, 1, ..., L-1.
 * Blocks only if no slot is free yet (waits for the oldest device -> host copy). */
float *rt_offload_input_buffer(rt_offloader *off, int layer);
/* Forward, after input_buffer(L-1): a device buffer for the last layer's output (the head's input), from the
 * same slots, so the final hidden state costs no memory of its own. Held until rt_offload_release_output
 * (after the head's backward, before the first prefetch); a forward-only pass may leave it to end_pass. */
float *rt_offload_output_buffer(rt_offloader *off);
void rt_offload_release_output(rt_offloader *off);

/* Forward: input `layer` is completely written (its first `bytes` bytes): queue its copy to the host; called
 * right after the buffer is written, before the next input_buffer. For the last layer nothing is copied.
 * Blocks while max_inflight copies are in flight (time in stats.offload_wait_s). */
void rt_offload_save(rt_offloader *off, int layer, size_t bytes);

/* Backward: start bringing input `layer` back into a free device slot; no-op for the last layer or an input
 * already on its way. At most one input ahead of the one being restored fits with max_inflight = 1. */
void rt_offload_prefetch(rt_offloader *off, int layer);
/* Backward: input `layer` on the device (layers in order L-1, ..., 0), prefetching it first if needed;
 * waits for its copy (time in stats.prefetch_wait_s). Valid until rt_offload_release. */
float *rt_offload_restore(rt_offloader *off, int layer);
/* Backward: the layer's recompute and backward are issued; its slot may take the next prefetch. */
void rt_offload_release(rt_offloader *off, int layer);

/* End of a pass: checks that every restored input was released (after a backward) and no copy is pending,
 * and makes the offloader ready for the next pass. */
void rt_offload_end_pass(rt_offloader *off);
/* Counters since the last call (host_pool_bytes and device_slot_bytes always filled); resets them. */
/* Ends a pass wherever it is (a stop signal abandons a step between layers): waits for every copy in flight
 * on both streams, frees every slot and resets the pass. Its data is lost. */
void rt_offload_abandon_pass(rt_offloader *off);

void rt_offload_take_stats(rt_offloader *off, rt_offload_stats *out);

#endif
