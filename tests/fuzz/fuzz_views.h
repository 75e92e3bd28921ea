/* fuzz_views.h: the small tensor table the HDF5 fuzz target reads and the seed corpus is written with. */
#ifndef RT_FUZZ_VIEWS_H
#define RT_FUZZ_VIEWS_H

#include "runtime/core/tensor.h"

/* wte (16, 8), one layer's norm (8) and a 3-d tensor: a few KB of file. */
static inline void fuzz_views_make(rt_view_table *table) {
    rt_view_table_init(table);
    rt_view_table_add(table, "wte", 2, (size_t[]){16, 8}, 1);
    rt_view_table_add(table, "layers.0.norm1.weight", 1, (size_t[]){8}, 0);
    rt_view_table_add(table, "block", 3, (size_t[]){2, 3, 4}, 1);
}

#endif
