/* unit_buffers.h: one flat buffer's tensors held as units: the tensors outside the layers, and two layers. */
#ifndef RT_UNIT_BUFFERS_H
#define RT_UNIT_BUFFERS_H

#include <stddef.h>

#include "runtime/backend/memory.h"
#include "runtime/core/common.h"
#include "runtime/core/param_hooks.h"

/*
 * ZeRO stages 2 and 3 never hold a whole flat buffer of Ψ floats. What they
 * hold instead: `top` (every tensor outside the layers, [0, layer_offset[0])
 * then [layer_offset[L], total), back to back) and `layer[2]` (one layer
 * each; layer l uses layer[l % 2], so while one layer computes, the other
 * buffer can be filled or drained for its neighbour). All layers have the
 * same size.
 */
typedef struct {
    size_t *layer_offset; /* (L+1), a copy */
    int n_layers;
    size_t total;
    float *top;      /* (layer_offset[0] + total - layer_offset[L]) */
    float *layer[2]; /* (layer_offset[1] - layer_offset[0]) each */
} rt_unit_buffers;

/* Allocates the three buffers for ranges from mem, labelled top_what and layer_what (both layer buffers) in the
 * accounting. Returns 0, or -1 with err set (the device memory limit); free it either way. */
int rt_unit_buffers_reserve(rt_unit_buffers *u, rt_device_memory *mem, const rt_param_ranges *ranges,
                            const char *top_what, const char *layer_what, rt_error *err);
void rt_unit_buffers_free(rt_unit_buffers *u);

/* Where flat element `offset` lives. */
float *rt_unit_buffers_at(const rt_unit_buffers *u, size_t offset);

static inline size_t rt_unit_top_count(const rt_unit_buffers *u) {
    return u->layer_offset[0] + (u->total - u->layer_offset[u->n_layers]);
}
static inline size_t rt_unit_layer_count(const rt_unit_buffers *u) { return u->layer_offset[1] - u->layer_offset[0]; }

#endif
