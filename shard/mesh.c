/* mesh.c: the device mesh: coordinates of every rank and one sub-communicator per mesh dimension. */
#include "mesh.h"

#include <stdio.h>
#include <string.h>

int rt_mesh_rank_of(const rt_mesh *mesh, const int *coords) {
    int rank = 0;
    for (int i = 0; i < mesh->ndim; i++)
        rank = rank * mesh->shape[i] + coords[i];
    return rank;
}

void rt_mesh_coords_of(const rt_mesh *mesh, int rank, int *coords) {
    for (int i = mesh->ndim - 1; i >= 0; i--) {
        coords[i] = rank % mesh->shape[i];
        rank /= mesh->shape[i];
    }
}

/* Formats "2 x 3" into out. */
static void format_shape(char *out, size_t cap, int ndim, const int *shape) {
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < ndim && used < cap; i++)
        used += (size_t)snprintf(out + used, cap - used, i ? " x %d" : "%d", shape[i]);
}

int rt_mesh_init_nd(rt_mesh *mesh, rt_comm *world, int ndim, const int *shape, rt_error *err) {
    memset(mesh, 0, sizeof *mesh);
    if (ndim < 1 || ndim > RT_MESH_MAX_DIMS)
        return rt_fail(err, "mesh of %d dimensions: expected 1 to %d", ndim, RT_MESH_MAX_DIMS);
    long ranks = 1;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 1) return rt_fail(err, "mesh dimension %d has size %d: expected a positive size", i, shape[i]);
        ranks *= shape[i];
    }
    if (ranks != world->size) {
        char text[64];
        format_shape(text, sizeof text, ndim, shape);
        return rt_fail(err, "mesh %s = %ld ranks, but the job has %d ranks", text, ranks, world->size);
    }
    mesh->world = world;
    mesh->ndim = ndim;
    memcpy(mesh->shape, shape, (size_t)ndim * sizeof *shape);
    rt_mesh_coords_of(mesh, world->rank, mesh->coords);
    /* Along dimension i, the ranks that differ only in coords[i] share the color "my rank with coords[i] = 0". */
    for (int i = 0; i < ndim; i++) {
        int line_start[RT_MESH_MAX_DIMS];
        memcpy(line_start, mesh->coords, sizeof line_start);
        line_start[i] = 0;
        mesh->comm[i] = rt_comm_split(world, rt_mesh_rank_of(mesh, line_start), mesh->coords[i]);
    }
    return 0;
}

int rt_mesh_init(rt_mesh *mesh, rt_comm *world, int dp, int sp, rt_error *err) {
    memset(mesh, 0, sizeof *mesh);
    if (dp < 1) return rt_fail(err, "parallel.dp = %d: expected a positive integer", dp);
    if (sp < 1) return rt_fail(err, "parallel.sp = %d: expected a positive integer", sp);
    if ((long)dp * sp != world->size)
        return rt_fail(err, "parallel.dp * parallel.sp = %d * %d = %ld, but the job has %d ranks", dp, sp,
                       (long)dp * sp, world->size);
    int shape[2] = {dp, sp};
    return rt_mesh_init_nd(mesh, world, 2, shape, err);
}

void rt_mesh_free(rt_mesh *mesh) {
    for (int i = 0; i < RT_MESH_MAX_DIMS; i++)
        if (mesh->comm[i]) rt_comm_destroy(mesh->comm[i]);
    memset(mesh, 0, sizeof *mesh);
}
