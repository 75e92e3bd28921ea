/* act_policy.h: what a layer's input becomes between forward and backward: kept, recomputed from, or offloaded. */
#ifndef RT_ACT_POLICY_H
#define RT_ACT_POLICY_H

#include <stddef.h>

#include "offload.h"
#include "runtime/backend/memory.h"
#include "runtime/config/config.h"

/*
 * The model calls the policy at four points of a pass and never branches on
 * the mode itself:
 *
 *   forward:   x = forward_input(0);  embedding writes x;  input_written(0)
 *              for l: y = forward_input(l + 1); layer l reads x, writes y; input_written(l + 1)
 *              (input L is the final hidden state, the head's input)
 *   head:      head forward and backward read final_hidden(); then head_done()
 *   backward:  for l = L-1..0: x = backward_input(l, scratch, &out);
 *                  out != NULL: re-run layer l's forward from x into out (its output is dead);
 *                  layer l's backward from x;  layer_done(l)
 *   end_pass() after every pass (also forward-only ones); abandon_pass() instead, mid-pass, on a stop.
 *
 * The three policies:
 *   keep       layer inputs stay on the device, and so does every layer's activation set (L sets):
 *              nothing is recomputed.
 *   recompute  layer inputs stay on the device (L+1 buffers of N x C); one activation set, refilled by
 *              re-running each layer's forward right before its backward.
 *   offload    as recompute, but inputs 0..L-1 wait in host memory (offload.h: async copies, bounded slots,
 *              one prefetch ahead), so device memory does not grow with the layer count.
 * All three run the same ops on the same inputs, so their gradients agree bit for bit.
 */
typedef struct rt_act_policy rt_act_policy;

typedef struct {
    /* Forward: the device buffer for layer l's input (l = L: the final hidden state), n_tokens x C floats. */
    float *(*forward_input)(rt_act_policy *p, int layer, size_t n_tokens);
    /* Forward: that buffer is written; a training pass keeps it for the backward. */
    void (*input_written)(rt_act_policy *p, int layer, size_t n_tokens, int training);
    /* The final hidden state (the last forward_input of the pass). */
    float *(*final_hidden)(rt_act_policy *p, size_t n_tokens);
    /* The head's backward is done: the final hidden state's buffer may go. */
    void (*head_done)(rt_act_policy *p);
    /* Backward: layer l's input; *recompute_out = where re-running its forward writes its dead output (NULL: no
     * recompute needed). scratch: an n_tokens x C buffer the model does not read before the layer's backward
     * writes it. */
    float *(*backward_input)(rt_act_policy *p, int layer, size_t n_tokens, float *scratch, float **recompute_out);
    /* Backward: layer l's recompute and backward are issued. */
    void (*layer_done)(rt_act_policy *p, int layer);
    void (*end_pass)(rt_act_policy *p);
    void (*abandon_pass)(rt_act_policy *p);
    /* Offload counters since the last call (zeros for the policies that copy nothing); resets them. */
    void (*take_stats)(rt_act_policy *p, rt_offload_stats *out);
    void (*free)(rt_act_policy *p);
} rt_act_policy_ops;

struct rt_act_policy {
    const rt_act_policy_ops *ops;
    /* Activation sets the model allocates: n_layers (keep) or 1; layer l uses set l % n_act_sets. */
    int n_act_sets;
    int n_layers;
    size_t d_model;
    float *layer_inputs;     /* keep, recompute: (L+1, N, C); layer l's input at l*N*C */
    rt_offloader offloader;  /* offload */
    float *final_hidden_buf; /* offload: the last forward_input's slot during a pass */
};

/* The policy of mode for n_layers layers of up to max_tokens x d_model floats of input: its device buffers
 * come from mem (keep, recompute: the layer inputs; offload: max_inflight + 1 slots and a host pool).
 * Returns 0, or -1 with err set (device memory limit, host memory); free it either way. */
int rt_act_policy_init(rt_act_policy *p, rt_activation_mode mode, const rt_backend *backend, rt_device_memory *mem,
                       int n_layers, size_t max_tokens, size_t d_model, int offload_max_inflight, rt_error *err);
/* Host-side state (device buffers go back with the arena). Safe after a failed init and on a zeroed policy. */
void rt_act_policy_free(rt_act_policy *p);

static inline float *rt_act_forward_input(rt_act_policy *p, int layer, size_t n_tokens) {
    return p->ops->forward_input(p, layer, n_tokens);
}
static inline void rt_act_input_written(rt_act_policy *p, int layer, size_t n_tokens, int training) {
    p->ops->input_written(p, layer, n_tokens, training);
}
static inline float *rt_act_final_hidden(rt_act_policy *p, size_t n_tokens) {
    return p->ops->final_hidden(p, n_tokens);
}
static inline void rt_act_head_done(rt_act_policy *p) { p->ops->head_done(p); }
static inline float *rt_act_backward_input(rt_act_policy *p, int layer, size_t n_tokens, float *scratch,
                                           float **recompute_out) {
    return p->ops->backward_input(p, layer, n_tokens, scratch, recompute_out);
}
static inline void rt_act_layer_done(rt_act_policy *p, int layer) { p->ops->layer_done(p, layer); }
static inline void rt_act_end_pass(rt_act_policy *p) { p->ops->end_pass(p); }
static inline void rt_act_abandon_pass(rt_act_policy *p) { p->ops->abandon_pass(p); }
static inline void rt_act_take_stats(rt_act_policy *p, rt_offload_stats *out) { p->ops->take_stats(p, out); }

#endif
