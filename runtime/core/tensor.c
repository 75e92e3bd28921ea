/* tensor.c: tensor views and the named view table. */
#include "tensor.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common.h"

size_t rt_dtype_size(rt_dtype dtype) {
    switch (dtype) {
    case RT_F32: return 4;
    case RT_BF16: return 2;
    case RT_I32: return 4;
    case RT_I64: return 8;
    }
    return 0;
}

size_t rt_tensor_numel(const rt_tensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

rt_tensor rt_tensor_make(void *data, rt_dtype dtype, rt_device device, int ndim, const size_t *shape) {
    rt_tensor t = {.data = data, .dtype = dtype, .device = device, .ndim = ndim};
    for (int d = 0; d < ndim && d < RT_MAX_DIMS; d++)
        t.shape[d] = shape[d];
    return t;
}

void rt_view_table_init(rt_view_table *table) { memset(table, 0, sizeof *table); }

void rt_view_table_free(rt_view_table *table) {
    free(table->views);
    memset(table, 0, sizeof *table);
}

size_t rt_view_table_add(rt_view_table *table, const char *name, int ndim, const size_t *shape, int weight_decay) {
    if (ndim < 1 || ndim > RT_MAX_DIMS) rt_fatal("tensor '%s': %d dims, expected 1..%d", name, ndim, RT_MAX_DIMS);
    if (strlen(name) >= RT_NAME_LEN) rt_fatal("tensor name '%s' longer than %d characters", name, RT_NAME_LEN - 1);
    if (table->count == table->capacity) {
        table->capacity = table->capacity ? 2 * table->capacity : 32;
        rt_named_view *grown = realloc(table->views, (size_t)table->capacity * sizeof *grown);
        if (!grown) rt_fatal("out of host memory growing the tensor table");
        table->views = grown;
    }
    rt_named_view *view = &table->views[table->count++];
    memset(view, 0, sizeof *view);
    strcpy(view->name, name);
    view->ndim = ndim;
    /* Sizes saturate at SIZE_MAX instead of wrapping: a shape from a file or config too large for size_t
     * then reads as "too large" to the caller's checks (rt_model_init refuses it), never as a small count. */
    view->numel = 1;
    for (int d = 0; d < ndim; d++) {
        view->shape[d] = shape[d];
        if (__builtin_mul_overflow(view->numel, shape[d], &view->numel)) view->numel = SIZE_MAX;
    }
    view->offset = table->total;
    view->weight_decay = weight_decay;
    if (__builtin_add_overflow(table->total, view->numel, &table->total)) table->total = SIZE_MAX;
    return view->offset;
}

const rt_named_view *rt_view_table_find(const rt_view_table *table, const char *name) {
    for (int i = 0; i < table->count; i++)
        if (strcmp(table->views[i].name, name) == 0) return &table->views[i];
    return NULL;
}
