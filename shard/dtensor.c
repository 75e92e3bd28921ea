/* dtensor.c: placements of distributed tensors and each rank's local box. */
#include "dtensor.h"

#include <string.h>

/*
 * A box is the part of the global tensor a rank holds: offset and size per
 * tensor dim (a buffer holding it would hold it row-major). Mesh dims
 * apply in order: each Shard splits, by rt_shard_chunk, the extent that the
 * mesh dims before it left along its tensor dim (nesting).
 */

typedef struct {
    size_t offset[RT_DTENSOR_MAX_DIMS];
    size_t size[RT_DTENSOR_MAX_DIMS];
} box;

static int check_placements(const rt_mesh *mesh, int ndim, const rt_placement *placements, rt_error *err) {
    for (int m = 0; m < mesh->ndim; m++) {
        rt_placement p = placements[m];
        if (p.kind != RT_REPLICATE && p.kind != RT_SHARD && p.kind != RT_PARTIAL_SUM)
            return rt_fail(err, "placement on mesh dim %d: unknown kind %d", m, (int)p.kind);
        if (p.kind == RT_SHARD && (p.dim < 0 || p.dim >= ndim))
            return rt_fail(err, "placement on mesh dim %d is Shard(%d), but the tensor has %d dims", m, p.dim, ndim);
    }
    return 0;
}

int rt_dtensor_init(rt_dtensor *t, const rt_mesh *mesh, int ndim, const size_t *shape, const rt_placement *placements,
                    rt_error *err) {
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > RT_DTENSOR_MAX_DIMS)
        return rt_fail(err, "tensor of %d dims: expected 1 to %d", ndim, RT_DTENSOR_MAX_DIMS);
    if (check_placements(mesh, ndim, placements, err)) return -1;
    t->mesh = mesh;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(t->placements, placements, (size_t)mesh->ndim * sizeof *placements);
    return 0;
}

void rt_shard_chunk(size_t extent, int parts, int index, size_t *offset, size_t *size) {
    size_t chunk = (extent + (size_t)parts - 1) / (size_t)parts;
    size_t begin = (size_t)index * chunk, end = begin + chunk;
    if (begin > extent) begin = extent;
    if (end > extent) end = extent;
    *offset = begin;
    *size = end - begin;
}

/* The box of the rank at coords. */
static void box_of(const rt_dtensor *t, const int *coords, box *out) {
    for (int d = 0; d < t->ndim; d++) {
        out->offset[d] = 0;
        out->size[d] = t->shape[d];
    }
    for (int m = 0; m < t->mesh->ndim; m++) {
        if (t->placements[m].kind != RT_SHARD) continue;
        int d = t->placements[m].dim;
        size_t offset, size;
        rt_shard_chunk(out->size[d], t->mesh->shape[m], coords[m], &offset, &size);
        out->offset[d] += offset;
        out->size[d] = size;
    }
}

static size_t box_numel(int ndim, const box *b) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= b->size[d];
    return n;
}

void rt_dtensor_local_box(const rt_dtensor *t, const int *mesh_coords, size_t offset[], size_t size[]) {
    box b;
    box_of(t, mesh_coords ? mesh_coords : t->mesh->coords, &b);
    memcpy(offset, b.offset, (size_t)t->ndim * sizeof *offset);
    memcpy(size, b.size, (size_t)t->ndim * sizeof *size);
}

size_t rt_dtensor_local_numel(const rt_dtensor *t, const int *mesh_coords) {
    box b;
    box_of(t, mesh_coords ? mesh_coords : t->mesh->coords, &b);
    return box_numel(t->ndim, &b);
}
