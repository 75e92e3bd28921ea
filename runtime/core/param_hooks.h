/* param_hooks.h: how parallelism reaches a model's parameters and gradients from outside the model. */
#ifndef RT_PARAM_HOOKS_H
#define RT_PARAM_HOOKS_H

#include <stddef.h>

/*
 * A model keeps its parameters and gradients in flat buffers described by a
 * table of named views (tensor.h), laid out layer-major so that each layer
 * is one contiguous range [layer_offset[l], layer_offset[l+1]). A model
 * without hooks allocates both buffers whole. With hooks, somebody else owns
 * them (ZeRO: shard/zero_params.h, shard/zero_grads.h) and the model only
 * says, at layer boundaries, what it is about to use or has finished:
 *
 *   forward:   need_top; for l = 0..L-1: need_layer(l, l+1), layer l
 *   head:      (the top tensors, needed above)
 *   backward:  for l = L-1..0: need_layer(l, l-1); layer_begin(l); layer l's backward; layer_done(l)
 *              then the embedding backward; backward_done
 *   a pass stopped between layers: pass_abandoned on both
 *
 * `reserve` allocates what the owner keeps; rt_model_init calls it at the
 * point where it would allocate that buffer itself, after its shape checks
 * and its collective agreement, so allocation order, error messages and
 * collective order do not depend on who owns the memory. `at` then maps a
 * flat offset to the device address where that element lives; the model
 * binds its views through it once, at init, so an owner must keep every
 * address fixed (ZeRO double-buffers layers by parity: layer l's views point
 * into buffer l % 2). Every rank calls every hook in the same order with the
 * same arguments, so a hook may post collectives.
 */
struct rt_error;

/* The model's parameter layout, as the owner's reserve sees it: layer l is [layer_offset[l], layer_offset[l+1])
 * of a flat buffer of `total` floats; layer_offset has n_layers + 1 entries and outlives the owner. */
typedef struct {
    const size_t *layer_offset;
    int n_layers;
    size_t total;
} rt_param_ranges;
typedef struct {
    void *ctx;
    /* Allocates the owner's buffers for this layout: 0, or -1 with err set (the device memory limit). */
    int (*reserve)(void *ctx, const rt_param_ranges *ranges, struct rt_error *err);
    float *(*at)(void *ctx, size_t offset);
    /* The tensors outside the layers (embeddings, final norm, head) are about to be used. */
    void (*need_top)(void *ctx);
    /* Layer `layer` is about to run (forward or backward); `next` (-1: none) runs after it, so its parameters
     * may start arriving now. */
    void (*need_layer)(void *ctx, int layer, int next);
    /* A pass stops between layers: complete whatever it posted. */
    void (*pass_abandoned)(void *ctx);
    /* The parameters changed (an optimizer update, a checkpoint load): whatever copies the owner holds are
     * stale. */
    void (*changed)(void *ctx);
} rt_param_hooks;

typedef struct {
    void *ctx;
    int (*reserve)(void *ctx, const rt_param_ranges *ranges, struct rt_error *err);
    float *(*at)(void *ctx, size_t offset);
    /* Layer `layer`'s backward begins: its gradient range must read zero. */
    void (*layer_begin)(void *ctx, int layer);
    /* Layer `layer`'s gradients of this micro-batch are complete. */
    void (*layer_done)(void *ctx, int layer);
    /* The backward is complete (the tensors outside the layers too): take them, and zero them for the next
     * micro-batch. */
    void (*backward_done)(void *ctx);
    /* A pass stops between layers: complete whatever it posted. */
    void (*pass_abandoned)(void *ctx);
    /* Zero the gradients of the tensors outside the layers (the start of a step). */
    void (*zero)(void *ctx);
    /* Called between the ops of every layer (NULL: never): lets the reductions in flight move. */
    void (*progress)(void *ctx);
} rt_grad_hooks;

#endif
