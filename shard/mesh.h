/* mesh.h: the device mesh: the world's ranks arranged as dp x sp (or any grid of up to 3 dims), one communicator per
 * mesh dimension. */
#ifndef RT_MESH_H
#define RT_MESH_H

#include "runtime/comm/comm.h"
#include "runtime/core/common.h"

/*
 * A mesh lays the world's ranks out on a row-major grid: the last mesh
 * dimension varies fastest. The trainer's mesh is 2-D, dp x sp:
 *
 *     world rank = dp_rank * sp + sp_rank
 *
 * so the sp ranks that share a sequence are neighbours (ring attention runs
 * over them) and dp ranks see different sequences of the global batch.
 *
 * comm[i] groups the ranks whose coordinates agree on every mesh dimension
 * except i; inside it a rank's rank is its coordinate coords[i] and its size
 * is shape[i]. For dp x sp: comm[RT_MESH_DP] links ranks with the same
 * sp_rank, comm[RT_MESH_SP] ranks with the same dp_rank.
 *
 * Invariants after a successful init: 1 <= ndim <= RT_MESH_MAX_DIMS,
 * prod(shape) == world->size, 0 <= coords[i] < shape[i], and
 * comm[i]->rank == coords[i], comm[i]->size == shape[i].
 */
#define RT_MESH_MAX_DIMS 3

enum { RT_MESH_DP = 0, RT_MESH_SP = 1 };

typedef struct {
    rt_comm *world; /* not owned */
    int ndim;
    int shape[RT_MESH_MAX_DIMS];
    int coords[RT_MESH_MAX_DIMS];    /* this rank's position */
    rt_comm *comm[RT_MESH_MAX_DIMS]; /* owned: one per mesh dimension */
} rt_mesh;

/* The trainer's dp x sp mesh. Collective over world. Fails (every rank alike) when dp or sp is not positive or
 * dp * sp differs from the world size: "parallel.dp * parallel.sp = 2 * 3 = 6, but the job has 4 ranks". */
int rt_mesh_init(rt_mesh *mesh, rt_comm *world, int dp, int sp, rt_error *err);

/* A mesh of ndim (1..RT_MESH_MAX_DIMS) dimensions with the given sizes. Collective over world. */
int rt_mesh_init_nd(rt_mesh *mesh, rt_comm *world, int ndim, const int *shape, rt_error *err);

/* Destroys the per-dimension communicators (collective); the world stays. Safe on a zeroed mesh. */
void rt_mesh_free(rt_mesh *mesh);

/* World rank of the rank at coords, and the coordinates of a world rank. */
int rt_mesh_rank_of(const rt_mesh *mesh, const int *coords);
void rt_mesh_coords_of(const rt_mesh *mesh, int rank, int *coords);

#endif
