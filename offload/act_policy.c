/* act_policy.c: the keep, recompute and offload activation policies (act_policy.h). */
#include "act_policy.h"

#include <string.h>

/* --- keep and recompute: every layer input stays in one device buffer of L+1 inputs --- */

static float *stored_input(rt_act_policy *p, int layer, size_t n_tokens) {
    return p->layer_inputs + (size_t)layer * n_tokens * p->d_model;
}

static void nothing_written(rt_act_policy *p, int layer, size_t n_tokens, int training) {
    (void)p, (void)layer, (void)n_tokens, (void)training;
}

static float *stored_final_hidden(rt_act_policy *p, size_t n_tokens) { return stored_input(p, p->n_layers, n_tokens); }

static void nothing_to_release(rt_act_policy *p) { (void)p; }
static void no_layer_to_release(rt_act_policy *p, int layer) { (void)p, (void)layer; }

static void no_stats(rt_act_policy *p, rt_offload_stats *out) {
    (void)p;
    memset(out, 0, sizeof *out);
}

/* keep: the forward's activations of layer l are still in its own set; nothing runs again. */
static float *kept_input(rt_act_policy *p, int layer, size_t n_tokens, float *scratch, float **recompute_out) {
    (void)scratch;
    *recompute_out = NULL;
    return stored_input(p, layer, n_tokens);
}

/* recompute: the re-run's output goes over input l+1, which layer l+1's backward (done) was the last to read. */
static float *recomputed_input(rt_act_policy *p, int layer, size_t n_tokens, float *scratch, float **recompute_out) {
    (void)scratch;
    *recompute_out = stored_input(p, layer + 1, n_tokens);
    return stored_input(p, layer, n_tokens);
}

static const rt_act_policy_ops keep_ops = {
    .forward_input = stored_input,
    .input_written = nothing_written,
    .final_hidden = stored_final_hidden,
    .head_done = nothing_to_release,
    .backward_input = kept_input,
    .layer_done = no_layer_to_release,
    .end_pass = nothing_to_release,
    .abandon_pass = nothing_to_release,
    .take_stats = no_stats,
};

static const rt_act_policy_ops recompute_ops = {
    .forward_input = stored_input,
    .input_written = nothing_written,
    .final_hidden = stored_final_hidden,
    .head_done = nothing_to_release,
    .backward_input = recomputed_input,
    .layer_done = no_layer_to_release,
    .end_pass = nothing_to_release,
    .abandon_pass = nothing_to_release,
    .take_stats = no_stats,
};

/* --- offload: inputs 0..L-1 in the offloader's slots and host pool; the final hidden state in a slot --- */

static float *offload_forward_input(rt_act_policy *p, int layer, size_t n_tokens) {
    (void)n_tokens;
    if (layer < p->n_layers) return rt_offload_input_buffer(&p->offloader, layer);
    return p->final_hidden_buf = rt_offload_output_buffer(&p->offloader);
}

static void offload_input_written(rt_act_policy *p, int layer, size_t n_tokens, int training) {
    if (training && layer < p->n_layers) rt_offload_save(&p->offloader, layer, n_tokens * p->d_model * sizeof(float));
}

static float *offload_final_hidden(rt_act_policy *p, size_t n_tokens) {
    (void)n_tokens;
    return p->final_hidden_buf;
}

/* Its slot takes the first prefetch. */
static void offload_head_done(rt_act_policy *p) { rt_offload_release_output(&p->offloader); }

/* The next input down starts coming back now, overlapping this layer's recompute and backward; the re-run's
 * output goes into the model's scratch. */
static float *offload_backward_input(rt_act_policy *p, int layer, size_t n_tokens, float *scratch,
                                     float **recompute_out) {
    (void)n_tokens;
    if (layer > 0) rt_offload_prefetch(&p->offloader, layer - 1);
    *recompute_out = scratch;
    return rt_offload_restore(&p->offloader, layer);
}

static void offload_layer_done(rt_act_policy *p, int layer) { rt_offload_release(&p->offloader, layer); }
static void offload_end_pass(rt_act_policy *p) { rt_offload_end_pass(&p->offloader); }
static void offload_abandon_pass(rt_act_policy *p) { rt_offload_abandon_pass(&p->offloader); }
static void offload_stats(rt_act_policy *p, rt_offload_stats *out) { rt_offload_take_stats(&p->offloader, out); }
static void offload_free(rt_act_policy *p) { rt_offloader_free(&p->offloader); }

static const rt_act_policy_ops offload_ops = {
    .forward_input = offload_forward_input,
    .input_written = offload_input_written,
    .final_hidden = offload_final_hidden,
    .head_done = offload_head_done,
    .backward_input = offload_backward_input,
    .layer_done = offload_layer_done,
    .end_pass = offload_end_pass,
    .abandon_pass = offload_abandon_pass,
    .take_stats = offload_stats,
    .free = offload_free,
};

int rt_act_policy_init(rt_act_policy *p, rt_activation_mode mode, const rt_backend *backend, rt_device_memory *mem,
                       int n_layers, size_t max_tokens, size_t d_model, int offload_max_inflight, rt_error *err) {
    memset(p, 0, sizeof *p);
    p->n_layers = n_layers;
    p->d_model = d_model;
    p->n_act_sets = mode == RT_ACT_KEEP ? n_layers : 1;
    if (mode == RT_ACT_OFFLOAD) {
        p->ops = &offload_ops;
        return rt_offloader_init(&p->offloader, backend, mem, n_layers, max_tokens * d_model * sizeof(float),
                                 offload_max_inflight, err);
    }
    p->ops = mode == RT_ACT_KEEP ? &keep_ops : &recompute_ops;
    p->layer_inputs =
        rt_device_alloc(mem, ((size_t)n_layers + 1) * max_tokens * d_model * sizeof(float), "layer inputs", err);
    return p->layer_inputs ? 0 : -1;
}

void rt_act_policy_free(rt_act_policy *p) {
    if (p->ops && p->ops->free) p->ops->free(p);
    memset(p, 0, sizeof *p);
}
