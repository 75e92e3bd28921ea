/* dtensor.h: placements (Shard, Replicate, Partial sum) of a global tensor over a device mesh, and each rank's
 * local box. */
#ifndef RT_DTENSOR_H
#define RT_DTENSOR_H

#include <stddef.h>

#include "mesh.h"
#include "runtime/core/common.h"

/*
 * A distributed tensor (the PyTorch DTensor idea) is a global shape, a mesh
 * and one placement per mesh dimension; each rank holds its local part, a
 * row-major contiguous block of floats covering its local box of the global
 * tensor.
 *
 * Placement on mesh dimension i (size n, this rank's coordinate c):
 *   RT_REPLICATE    every coordinate holds the same values;
 *   RT_SHARD, dim d the extent of tensor dim d is cut into chunks of
 *                   ceil(extent / n); coordinate c holds chunk c. The last
 *                   coordinates get a smaller, possibly empty, chunk (as if
 *                   the last shard were padded);
 *   RT_PARTIAL_SUM  the same box on every coordinate; the global values are
 *                   the sum over the coordinates.
 * Mesh dimensions apply in order: when tensor dim d is sharded over mesh
 * dims 0 and 1, dim 1 splits the chunk that dim 0 gave (nesting, as in
 * DTensor). rt_shard_chunk is the rule for one split.
 */
#define RT_DTENSOR_MAX_DIMS 4

typedef enum { RT_REPLICATE, RT_SHARD, RT_PARTIAL_SUM } rt_placement_kind;
typedef struct {
    rt_placement_kind kind;
    int dim; /* the sharded tensor dim for RT_SHARD; 0 otherwise */
} rt_placement;

static inline rt_placement rt_replicate(void) { return (rt_placement){RT_REPLICATE, 0}; }
static inline rt_placement rt_shard(int dim) { return (rt_placement){RT_SHARD, dim}; }
static inline rt_placement rt_partial_sum(void) { return (rt_placement){RT_PARTIAL_SUM, 0}; }

typedef struct {
    const rt_mesh *mesh; /* not owned; outlives the descriptor */
    int ndim;            /* 1..RT_DTENSOR_MAX_DIMS */
    size_t shape[RT_DTENSOR_MAX_DIMS];
    rt_placement placements[RT_MESH_MAX_DIMS]; /* one per mesh dimension */
} rt_dtensor;

/* Fills t after checking ndim, and that every Shard names a tensor dim < ndim. */
int rt_dtensor_init(rt_dtensor *t, const rt_mesh *mesh, int ndim, const size_t *shape, const rt_placement *placements,
                    rt_error *err);

/* One split: the chunk of an extent of `extent` that part `index` of `parts` holds (chunk size ceil(extent/parts),
 * the last parts shorter or empty). */
void rt_shard_chunk(size_t extent, int parts, int index, size_t *offset, size_t *size);

/* The box (offset, size per tensor dim) of the global tensor that the rank at mesh_coords holds; mesh_coords NULL
 * means this rank. Replicate and Partial dims cover the full extent. */
void rt_dtensor_local_box(const rt_dtensor *t, const int *mesh_coords, size_t offset[], size_t size[]);

/* Number of elements in the local part of the rank at mesh_coords (NULL: this rank). */
size_t rt_dtensor_local_numel(const rt_dtensor *t, const int *mesh_coords);

#endif
