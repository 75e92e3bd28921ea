/* offload.c: the activation offloader: device slots, host pool, the copy streams and the rules that tie them. */
/*
 * Conventions: L = n_layers, "input l" = the input of layer l, S = n_slots =
 * max_inflight + 1 device slots of bytes_per_layer (at slot_stride bytes
 * apart). Input l < L-1 has its fixed host place at host_pool + l *
 * bytes_per_layer; input L-1 lives in a slot from its input_buffer to its
 * release. Two streams: d2h_stream carries the forward's copies to the host,
 * h2d_stream the backward's copies back, so on CUDA both directions of the
 * bus can be busy at once. Each slot has one event, recorded behind the last
 * copy that read or wrote it.
 *
 * Life of input l (layer state):
 *   NONE      -> input_buffer(l)     -> WRITING  (owns a slot; layer l-1 or the embedding writes it)
 *   WRITING   -> save(l), l < L-1    -> D2H      (copy slot -> host queued on d2h_stream)
 *   WRITING   -> save(L-1)           -> RESIDENT (stays in its slot through the backward)
 *   D2H       -> slot reclaimed      -> ON_HOST  (host copy complete; the slot is free)
 *   ON_HOST   -> prefetch(l)         -> H2D      (copy host -> a free slot queued on h2d_stream)
 *   H2D or RESIDENT -> restore(l)    -> RESTORED (copy waited for; the model reads the slot)
 *   RESTORED  -> release(l)          -> RELEASED (slot free)
 *
 * Slot lifetime rules. A slot is handed out (by input_buffer or for a
 * prefetch) only when no input owns it AND its event has completed; the
 * second part is checked with event_query on every hand-out and a failure
 * is fatal, so a buffer is never reused while a copy reads or writes it.
 *   Forward. While layer l runs it reads input l and writes input l+1, so
 *   both slots are live. save(l) queues input l's copy right after it was
 *   written, before layer l runs: the copy overlaps layer l, which only
 *   reads the slot. The slot of input j is reclaimed by input_buffer(k) when
 *   j <= k-2 (layer j has finished: layer k-1 is about to run, in issue
 *   order) and j's copy completed (event_query); if no slot is free,
 *   input_buffer waits for the oldest copy. Before queueing a copy, save
 *   waits for the oldest copies until fewer than max_inflight are in flight.
 *   Why S = max_inflight + 1 suffices without a wait in input_buffer(k):
 *   the copies of one stream complete in order, so the slots held are those
 *   of the copies in flight (at most max_inflight, input k-1's among them
 *   when it is still copying), or input k-1 alone; one slot is left for k.
 *   A forward-only pass may skip save: an unsaved input's slot is reclaimed
 *   by the same rule (j <= k-2).
 *   Backward. The first prefetch or restore checks that the forward saved
 *   every input, waits for every device -> host copy (in
 *   stats.prefetch_wait_s) and frees the slots of inputs 0..L-2. Input L-1
 *   keeps its slot. prefetch(l) takes a free slot, restore(l) waits for its
 *   event, release(l) frees it: with one prefetch ahead, two slots are held.
 *   The next copy into a released slot is ordered after the compute issued
 *   before it by the copy_async contract (backend.h), so on CUDA the host
 *   never waits for the backward's kernels.
 * Data written by a copy is read only after its event completed: restore
 * makes the compute stream wait for it (stream_wait_event: the host does not
 * wait on CUDA), and the forward's host copies are read only in the
 * backward, after the drain. The drain is the one host wait of a step with
 * copies that keep up with compute: it sits between the forward and the
 * backward, where the last copies to the host have had the head and the
 * loss to finish in; the forward's waits (save, input_buffer) happen only
 * when the copies fall behind, and bound the slots in flight.
 *
 * The ordering rules the model must follow (each checked, fatal otherwise):
 * input_buffer in order 0..L-1, starting a fresh pass; save(l) only for the
 * input just handed out, once; restore in order L-1..0, only after the
 * forward saved every input; release only a restored input; end_pass after
 * every input of a backward was released.
 */
#include "offload.h"

#include <stdlib.h>
#include <string.h>

/* Slots start this many bytes apart (cudaMalloc's alignment). */
#define SLOT_ALIGN ((size_t)256)

typedef enum {
    INPUT_NONE = 0,
    INPUT_WRITING,
    INPUT_D2H,
    INPUT_RESIDENT,
    INPUT_ON_HOST,
    INPUT_H2D,
    INPUT_RESTORED,
    INPUT_RELEASED,
} input_state;

static const char *const input_state_names[] = {"none",    "writing",           "copying to host", "resident",
                                                "on host", "copying to device", "restored",        "released"};

struct rt_offload_slot {
    int layer;           /* the input that owns the slot; -1 when free */
    rt_event *copy_done; /* recorded behind the last copy that read or wrote the slot */
};

struct rt_offload_layer {
    input_state state;
    int slot;     /* the slot holding it, -1 when none */
    size_t bytes; /* bytes saved (and restored) */
};

static unsigned char *slot_ptr(const rt_offloader *off, int slot) {
    return off->device_slots + (size_t)slot * off->slot_stride;
}

static unsigned char *host_ptr(const rt_offloader *off, int layer) {
    return off->host_pool + (size_t)layer * off->bytes_per_layer;
}

int rt_offloader_init(rt_offloader *off, const rt_backend *backend, rt_device_memory *mem, int n_layers,
                      size_t bytes_per_layer, int max_inflight, rt_error *err) {
    memset(off, 0, sizeof *off);
    if (n_layers < 2)
        return rt_fail(err,
                       "activation offload needs at least 2 layers (the last layer's input stays on the device), "
                       "got n_layers = %d; use activations.mode = recompute",
                       n_layers);
    if (max_inflight < 1) return rt_fail(err, "offload.max_inflight must be >= 1, got %d", max_inflight);
    if (bytes_per_layer == 0) return rt_fail(err, "activation offload: a layer input of 0 bytes");
    if (!rt_be_has_copy_engine(backend))
        return rt_fail(err, "activation offload: backend '%s' has no copy engine", backend->name);

    off->backend = backend;
    off->mem = mem;
    off->n_layers = n_layers;
    off->max_inflight = max_inflight;
    off->n_slots = max_inflight + 1;
    off->output_slot = -1;
    off->bytes_per_layer = bytes_per_layer;
    off->slot_stride = (bytes_per_layer + SLOT_ALIGN - 1) / SLOT_ALIGN * SLOT_ALIGN;

    size_t slot_bytes = (size_t)off->n_slots * off->slot_stride;
    off->device_slots = rt_device_alloc(mem, slot_bytes, "offload device slots", err);
    if (!off->device_slots) return -1;
    size_t host_bytes = (size_t)(n_layers - 1) * bytes_per_layer;
    off->host_pool = rt_be_host_alloc(backend, host_bytes);
    if (!off->host_pool) {
        char want[32];
        rt_device_free(mem, off->device_slots);
        off->device_slots = NULL;
        return rt_fail(err, "activation offload: could not allocate the host pool of %s (%d layer inputs)",
                       rt_format_bytes(host_bytes, want), n_layers - 1);
    }

    off->d2h_stream = rt_be_stream_create(backend);
    off->h2d_stream = rt_be_stream_create(backend);
    off->drain_event = rt_be_event_create(backend);
    off->slots = calloc_check((size_t)off->n_slots, sizeof *off->slots);
    for (int s = 0; s < off->n_slots; s++) {
        off->slots[s].layer = -1;
        off->slots[s].copy_done = rt_be_event_create(backend);
    }
    off->layers = calloc_check((size_t)n_layers, sizeof *off->layers);
    for (int l = 0; l < n_layers; l++)
        off->layers[l].slot = -1;
    off->stats.host_pool_bytes = host_bytes;
    off->stats.device_slot_bytes = slot_bytes;
    return 0;
}

void rt_offloader_free(rt_offloader *off) {
    if (!off->backend) return;
    const rt_backend *be = off->backend;
    if (off->d2h_stream) rt_be_stream_destroy(be, off->d2h_stream); /* drains */
    if (off->h2d_stream) rt_be_stream_destroy(be, off->h2d_stream);
    if (off->drain_event) rt_be_event_destroy(be, off->drain_event);
    for (int s = 0; off->slots && s < off->n_slots; s++)
        rt_be_event_destroy(be, off->slots[s].copy_done);
    free(off->slots);
    free(off->layers);
    if (off->host_pool) rt_be_host_free(be, off->host_pool);
    if (off->device_slots) rt_device_free(off->mem, off->device_slots);
    memset(off, 0, sizeof *off);
}

static void check_layer(const rt_offloader *off, int layer, const char *call) {
    if (layer < 0 || layer >= off->n_layers)
        rt_fatal("offload %s: layer %d is outside [0, %d)", call, layer, off->n_layers);
}

static void free_slot(rt_offloader *off, int layer, input_state new_state) {
    struct rt_offload_layer *in = &off->layers[layer];
    off->slots[in->slot].layer = -1;
    in->slot = -1;
    in->state = new_state;
}

/* A free slot whose last copy completed, owned by `layer` from now on; -1 when every slot is taken. */
static int take_slot(rt_offloader *off, int layer, const char *call) {
    for (int s = 0; s < off->n_slots; s++) {
        if (off->slots[s].layer != -1) continue;
        /* In the backward a released slot's prefetch may still be pending as the host sees it (the compute
         * waited for it on the device): the next prefetch into the slot queues behind it on the same stream,
         * after the compute that read it (copy_async's contract). In the forward nothing may be pending. */
        if (!off->in_backward && !rt_be_event_query(off->backend, off->slots[s].copy_done))
            rt_fatal("offload %s(%d): device slot %d is free but a copy on it is still pending", call, layer, s);
        off->slots[s].layer = layer;
        off->layers[layer].slot = s;
        return s;
    }
    return -1;
}

/* The lowest input still copying to the host (the oldest copy of the d2h stream), or -1. */
static int oldest_d2h(const rt_offloader *off, int below) {
    for (int l = 0; l < below; l++) {
        const struct rt_offload_layer *in = &off->layers[l];
        if (in->state == INPUT_D2H && !rt_be_event_query(off->backend, off->slots[in->slot].copy_done)) return l;
    }
    return -1;
}

static int d2h_in_flight(const rt_offloader *off) {
    int count = 0;
    for (int l = 0; l < off->n_layers; l++) {
        const struct rt_offload_layer *in = &off->layers[l];
        count += in->state == INPUT_D2H && !rt_be_event_query(off->backend, off->slots[in->slot].copy_done);
    }
    return count;
}

/* Frees the slots of inputs 0..last whose compute is over: unsaved ones, and saved ones whose copy completed. */
static void reclaim_forward_slots(rt_offloader *off, int last) {
    for (int l = 0; l <= last; l++) {
        struct rt_offload_layer *in = &off->layers[l];
        if (in->state == INPUT_WRITING)
            free_slot(off, l, INPUT_NONE); /* forward-only pass: never saved */
        else if (in->state == INPUT_D2H && rt_be_event_query(off->backend, off->slots[in->slot].copy_done))
            free_slot(off, l, INPUT_ON_HOST);
    }
}

float *rt_offload_input_buffer(rt_offloader *off, int layer) {
    check_layer(off, layer, "input_buffer");
    if (off->in_backward) rt_fatal("offload input_buffer(%d): the pass is in its backward; call end_pass", layer);
    if (layer != off->next_input)
        rt_fatal("offload input_buffer(%d): out of order, expected layer %d%s", layer, off->next_input,
                 layer == 0 ? " (the previous pass did not end: call end_pass)" : "");
    reclaim_forward_slots(off, layer - 2);
    int slot = take_slot(off, layer, "input_buffer");
    while (slot < 0) {
        int oldest = oldest_d2h(off, layer - 1);
        if (oldest < 0) rt_fatal("offload input_buffer(%d): all %d device slots are held", layer, off->n_slots);
        double t0 = rt_now_s();
        rt_be_event_synchronize(off->backend, off->slots[off->layers[oldest].slot].copy_done);
        off->stats.offload_wait_s += rt_now_s() - t0;
        reclaim_forward_slots(off, layer - 2);
        slot = take_slot(off, layer, "input_buffer");
    }
    off->layers[layer].state = INPUT_WRITING;
    off->next_input = layer + 1;
    return (float *)slot_ptr(off, slot);
}

float *rt_offload_output_buffer(rt_offloader *off) {
    if (off->in_backward || off->next_input != off->n_layers || off->output_slot >= 0)
        rt_fatal("offload output_buffer: only once per pass, after input_buffer(%d) and before the backward",
                 off->n_layers - 1);
    /* Layer L-2 has finished (layer L-1 is about to run): its slot returns once its copy completed. */
    for (;;) {
        reclaim_forward_slots(off, off->n_layers - 2);
        for (int s = 0; s < off->n_slots; s++) {
            if (off->slots[s].layer != -1) continue;
            if (!rt_be_event_query(off->backend, off->slots[s].copy_done))
                rt_fatal("offload output_buffer: device slot %d is free but a copy on it is still pending", s);
            off->slots[s].layer = off->n_layers; /* owned by the output */
            off->output_slot = s;
            return (float *)slot_ptr(off, s);
        }
        int oldest = oldest_d2h(off, off->n_layers - 1);
        if (oldest < 0) rt_fatal("offload output_buffer: all %d device slots are held", off->n_slots);
        double t0 = rt_now_s();
        rt_be_event_synchronize(off->backend, off->slots[off->layers[oldest].slot].copy_done);
        off->stats.offload_wait_s += rt_now_s() - t0;
    }
}

void rt_offload_release_output(rt_offloader *off) {
    if (off->output_slot < 0) rt_fatal("offload release_output: no output buffer is held");
    off->slots[off->output_slot].layer = -1;
    off->output_slot = -1;
}

void rt_offload_save(rt_offloader *off, int layer, size_t bytes) {
    check_layer(off, layer, "save");
    struct rt_offload_layer *in = &off->layers[layer];
    if (off->in_backward || layer != off->next_input - 1 || in->state != INPUT_WRITING)
        rt_fatal("offload save(%d): only the input just handed out by input_buffer can be saved, once "
                 "(last handed out: %d, this input is %s%s)",
                 layer, off->next_input - 1, input_state_names[in->state], off->in_backward ? ", in backward" : "");
    if (bytes > off->bytes_per_layer)
        rt_fatal("offload save(%d): %zu bytes exceed the %zu bytes of a layer input", layer, bytes,
                 off->bytes_per_layer);
    in->bytes = bytes;
    if (layer == off->n_layers - 1) {
        in->state = INPUT_RESIDENT;
        return;
    }
    const rt_backend *be = off->backend;
    while (d2h_in_flight(off) >= off->max_inflight) {
        int oldest = oldest_d2h(off, layer);
        if (oldest < 0) break; /* completed between the two queries */
        double t0 = rt_now_s();
        rt_be_event_synchronize(be, off->slots[off->layers[oldest].slot].copy_done);
        off->stats.offload_wait_s += rt_now_s() - t0;
    }
    struct rt_offload_slot *slot = &off->slots[in->slot];
    rt_be_copy_async(be, off->d2h_stream, host_ptr(off, layer), slot_ptr(off, in->slot), bytes);
    rt_be_event_record(be, slot->copy_done, off->d2h_stream);
    in->state = INPUT_D2H;
    off->stats.offloaded_bytes += bytes;
}

/* First backward call of a pass: the forward must be complete; wait for its copies and free their slots. */
static void begin_backward(rt_offloader *off, int layer, const char *call) {
    if (off->in_backward) return;
    for (int l = 0; l < off->n_layers; l++) {
        input_state want = l == off->n_layers - 1 ? INPUT_RESIDENT : INPUT_D2H;
        input_state state = off->layers[l].state;
        if (state != want && !(want == INPUT_D2H && state == INPUT_ON_HOST))
            rt_fatal("offload %s(%d): the backward began but input %d was never saved (it is %s); the forward "
                     "must save every layer's input",
                     call, layer, l, input_state_names[state]);
    }
    const rt_backend *be = off->backend;
    double t0 = rt_now_s();
    rt_be_event_record(be, off->drain_event, off->d2h_stream);
    rt_be_event_synchronize(be, off->drain_event);
    off->stats.prefetch_wait_s += rt_now_s() - t0;
    reclaim_forward_slots(off, off->n_layers - 2);
    for (int l = 0; l < off->n_layers - 1; l++)
        if (off->layers[l].state != INPUT_ON_HOST) rt_fatal("offload: input %d still on the device after the drain", l);
    off->in_backward = 1;
    off->next_restore = off->n_layers - 1;
}

static void issue_prefetch(rt_offloader *off, int layer, const char *call) {
    struct rt_offload_layer *in = &off->layers[layer];
    int s = take_slot(off, layer, call);
    if (s < 0)
        rt_fatal("offload %s(%d): all %d device slots are held (max_inflight + 1); release a restored input before "
                 "prefetching further ahead",
                 call, layer, off->n_slots);
    const rt_backend *be = off->backend;
    rt_be_copy_async(be, off->h2d_stream, slot_ptr(off, s), host_ptr(off, layer), in->bytes);
    rt_be_event_record(be, off->slots[s].copy_done, off->h2d_stream);
    in->state = INPUT_H2D;
    off->stats.restored_bytes += in->bytes;
}

void rt_offload_prefetch(rt_offloader *off, int layer) {
    check_layer(off, layer, "prefetch");
    begin_backward(off, layer, "prefetch");
    if (layer > off->next_restore)
        rt_fatal("offload prefetch(%d): input %d was already restored (next restore: %d)", layer, layer,
                 off->next_restore);
    input_state state = off->layers[layer].state;
    if (state == INPUT_RESIDENT || state == INPUT_H2D) return;
    if (state != INPUT_ON_HOST)
        rt_fatal("offload prefetch(%d): input is %s, not on the host", layer, input_state_names[state]);
    issue_prefetch(off, layer, "prefetch");
}

float *rt_offload_restore(rt_offloader *off, int layer) {
    check_layer(off, layer, "restore");
    begin_backward(off, layer, "restore");
    if (layer != off->next_restore)
        rt_fatal("offload restore(%d): out of order, expected input %d (the backward runs layers L-1..0)", layer,
                 off->next_restore);
    struct rt_offload_layer *in = &off->layers[layer];
    if (in->state == INPUT_ON_HOST) issue_prefetch(off, layer, "restore");
    if (in->state != INPUT_H2D && in->state != INPUT_RESIDENT)
        rt_fatal("offload restore(%d): input is %s", layer, input_state_names[in->state]);
    /* The compute that reads the slot waits for the copy, not the host: on CUDA the host runs ahead and the
     * kernels start when the prefetch lands (on CPU the compute stream is this thread, so this blocks). */
    double t0 = rt_now_s();
    rt_be_stream_wait_event(off->backend, NULL, off->slots[in->slot].copy_done);
    off->stats.prefetch_wait_s += rt_now_s() - t0;
    in->state = INPUT_RESTORED;
    off->next_restore = layer - 1;
    return (float *)slot_ptr(off, in->slot);
}

void rt_offload_release(rt_offloader *off, int layer) {
    check_layer(off, layer, "release");
    struct rt_offload_layer *in = &off->layers[layer];
    if (in->state != INPUT_RESTORED)
        rt_fatal("offload release(%d): input is %s, not restored", layer, input_state_names[in->state]);
    free_slot(off, layer, INPUT_RELEASED);
}

void rt_offload_end_pass(rt_offloader *off) {
    const rt_backend *be = off->backend;
    if (off->in_backward) {
        for (int l = 0; l < off->n_layers; l++)
            if (off->layers[l].state != INPUT_RELEASED)
                rt_fatal("offload end_pass: input %d is %s, not released; the backward must restore and release "
                         "every layer's input",
                         l, input_state_names[off->layers[l].state]);
    } else {
        /* forward-only pass: copies it may have queued are waited for and thrown away */
        rt_be_event_record(be, off->drain_event, off->d2h_stream);
        rt_be_event_synchronize(be, off->drain_event);
        for (int l = 0; l < off->n_layers; l++)
            if (off->layers[l].slot >= 0) free_slot(off, l, INPUT_NONE);
        if (off->output_slot >= 0) rt_offload_release_output(off);
    }
    if (off->output_slot >= 0) rt_fatal("offload end_pass: the output buffer was not released");
    /* After a backward the last prefetches may still be pending on the host's view (see take_slot); the next
     * forward's first copy to the host is ordered behind them by the compute that waited for them. */
    for (int s = 0; s < off->n_slots; s++) {
        if (off->slots[s].layer != -1 || (!off->in_backward && !rt_be_event_query(be, off->slots[s].copy_done)))
            rt_fatal("offload end_pass: device slot %d is still in use", s);
    }
    for (int l = 0; l < off->n_layers; l++) {
        off->layers[l].state = INPUT_NONE;
        off->layers[l].bytes = 0;
    }
    off->next_input = 0;
    off->in_backward = 0;
    off->next_restore = 0;
    off->stats.passes++;
}

void rt_offload_abandon_pass(rt_offloader *off) {
    const rt_backend *be = off->backend;
    rt_be_event_record(be, off->drain_event, off->h2d_stream);
    rt_be_event_synchronize(be, off->drain_event);
    /* Now a forward-only pass as far as end_pass is concerned: it drains the d2h stream, frees every slot
     * still held and the output buffer. */
    off->in_backward = 0;
    rt_offload_end_pass(off);
}

void rt_offload_take_stats(rt_offloader *off, rt_offload_stats *out) {
    *out = off->stats;
    size_t host_bytes = off->stats.host_pool_bytes, slot_bytes = off->stats.device_slot_bytes;
    memset(&off->stats, 0, sizeof off->stats);
    off->stats.host_pool_bytes = host_bytes;
    off->stats.device_slot_bytes = slot_bytes;
}
