/* unit_buffers.c: the top and two layer buffers of ZeRO stages 2-3 (unit_buffers.h). */
#include "unit_buffers.h"

#include <stdlib.h>
#include <string.h>

int rt_unit_buffers_reserve(rt_unit_buffers *u, rt_device_memory *mem, const rt_param_ranges *ranges,
                            const char *top_what, const char *layer_what, rt_error *err) {
    rt_unit_buffers_free(u);
    u->n_layers = ranges->n_layers;
    u->total = ranges->total;
    const size_t offsets_bytes = ((size_t)ranges->n_layers + 1) * sizeof *u->layer_offset;
    u->layer_offset = malloc_check(offsets_bytes);
    memcpy(u->layer_offset, ranges->layer_offset, offsets_bytes);
    u->top = rt_device_alloc(mem, rt_unit_top_count(u) * sizeof(float), top_what, err);
    for (int i = 0; u->top && i < 2; i++) {
        u->layer[i] = rt_device_alloc(mem, rt_unit_layer_count(u) * sizeof(float), layer_what, err);
        if (!u->layer[i]) return -1;
    }
    return u->top ? 0 : -1;
}

void rt_unit_buffers_free(rt_unit_buffers *u) {
    /* Device buffers belong to the arena. */
    free(u->layer_offset);
    memset(u, 0, sizeof *u);
}

float *rt_unit_buffers_at(const rt_unit_buffers *u, size_t offset) {
    const size_t *lo = u->layer_offset, L = (size_t)u->n_layers;
    if (offset < lo[0]) return u->top + offset;
    if (offset >= lo[L]) return u->top + lo[0] + (offset - lo[L]);
    size_t layer = (offset - lo[0]) / (lo[1] - lo[0]);
    return u->layer[layer % 2] + (offset - lo[layer]);
}
