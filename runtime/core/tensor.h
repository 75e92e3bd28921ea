/* tensor.h: tensor views (shape, dtype, device) and the table of named views carved out of one flat buffer. */
#ifndef RT_TENSOR_H
#define RT_TENSOR_H

#include <stddef.h>

#define RT_MAX_DIMS 4
#define RT_NAME_LEN 64

typedef enum { RT_F32 = 0, RT_BF16, RT_I32, RT_I64 } rt_dtype;
typedef enum { RT_HOST = 0, RT_DEVICE } rt_device;

/* A contiguous range of token positions of one sequence (a rank's chunk of it). */
typedef struct {
    size_t start;
    size_t len;
} rt_span;

/* A view: data is not owned. */
typedef struct {
    void *data;
    rt_dtype dtype;
    rt_device device;
    int ndim;
    size_t shape[RT_MAX_DIMS];
} rt_tensor;

size_t rt_dtype_size(rt_dtype dtype);
size_t rt_tensor_numel(const rt_tensor *t);
rt_tensor rt_tensor_make(void *data, rt_dtype dtype, rt_device device, int ndim, const size_t *shape);

/*
 * A named slice of a flat buffer: the parameter buffer, the gradient buffer,
 * the Adam moments and the master weights all share one table, so the same
 * (offset, numel) addresses a tensor in each of them. Offsets are in
 * elements. weight_decay says whether AdamW decays it (matrices yes,
 * norms/biases no).
 */
typedef struct {
    char name[RT_NAME_LEN];
    int ndim;
    size_t shape[RT_MAX_DIMS];
    size_t offset;
    size_t numel;
    int weight_decay;
} rt_named_view;

typedef struct {
    rt_named_view *views;
    int count;
    int capacity;
    size_t total; /* elements; next free offset; SIZE_MAX when the shapes do not fit size_t */
} rt_view_table;

void rt_view_table_init(rt_view_table *table);
void rt_view_table_free(rt_view_table *table);
/* Appends a view at the current end; returns its offset. */
size_t rt_view_table_add(rt_view_table *table, const char *name, int ndim, const size_t *shape, int weight_decay);
/* Returns the view with that name, or NULL. */
const rt_named_view *rt_view_table_find(const rt_view_table *table, const char *name);

#endif
