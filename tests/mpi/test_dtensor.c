/* test_dtensor.c: the device mesh and placements: local boxes against the documented chunking rule, mesh errors.
 * Runs under mpirun on 1 to 4 ranks. */
#include <mpi.h>
#include <stdio.h>
#include <string.h>

#include "shard/dtensor.h"
#include "shard/mesh.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

#define MAX_MESH_SHAPES 4

static rt_comm *world;

/* ---- the naive reference ---- */

/* The chunking rule: along each tensor dim, mesh dims apply in order; a Shard over n parts cuts what is left into
 * chunks of ceil(extent / n); part c is [c*chunk, (c+1)*chunk) clipped to the extent. */
static void naive_box(int ndim, const size_t *shape, int mesh_ndim, const int *mesh_shape, const rt_placement *pl,
                      const int *coords, size_t *lo_out, size_t *len_out) {
    for (int d = 0; d < ndim; d++) {
        size_t lo = 0, hi = shape[d];
        for (int m = 0; m < mesh_ndim; m++) {
            if (pl[m].kind != RT_SHARD || pl[m].dim != d) continue;
            size_t n = (size_t)mesh_shape[m], chunk = (hi - lo + n - 1) / n;
            size_t a = lo + (size_t)coords[m] * chunk, b = a + chunk;
            lo = a < hi ? a : hi;
            hi = b < hi ? b : hi;
        }
        lo_out[d] = lo;
        len_out[d] = hi - lo;
    }
}

static size_t numel_of(int ndim, const size_t *shape) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= shape[d];
    return n;
}

/* ---- enumeration helpers ---- */

/* Placement number k of (2 + ndim) choices: Replicate, Partial, Shard(0), ..., Shard(ndim-1). */
static rt_placement placement_choice(int k) {
    if (k == 0) return rt_replicate();
    if (k == 1) return rt_partial_sum();
    return rt_shard(k - 2);
}

static void placements_of(int combo, int mesh_ndim, int tensor_ndim, rt_placement *pl) {
    for (int m = mesh_ndim - 1; m >= 0; m--) {
        pl[m] = placement_choice(combo % (2 + tensor_ndim));
        combo /= 2 + tensor_ndim;
    }
}

static int combo_count(int mesh_ndim, int tensor_ndim) {
    int count = 1;
    for (int m = 0; m < mesh_ndim; m++)
        count *= 2 + tensor_ndim;
    return count;
}

/* The dp x sp factorizations of n ranks: 1 x n, ..., n x 1. */
static int mesh_factorizations(int n, int shapes[][2]) {
    int count = 0;
    for (int dp = 1; dp <= n; dp++)
        if (n % dp == 0 && count < MAX_MESH_SHAPES) {
            shapes[count][0] = dp;
            shapes[count][1] = n / dp;
            count++;
        }
    return count;
}

/* ---- mesh ---- */

static void test_mesh_layout(void) {
    int shapes[MAX_MESH_SHAPES][2], n_shapes = mesh_factorizations(world->size, shapes), failures = 0;
    for (int s = 0; s < n_shapes; s++) {
        int dp = shapes[s][0], sp = shapes[s][1];
        rt_mesh mesh;
        rt_error err = {{0}};
        CU_ASSERT_EQUAL_FATAL(rt_mesh_init(&mesh, world, dp, sp, &err), 0);
        failures += mesh.ndim != 2 || mesh.shape[0] != dp || mesh.shape[1] != sp;
        failures += mesh.coords[RT_MESH_DP] != world->rank / sp || mesh.coords[RT_MESH_SP] != world->rank % sp;
        failures += rt_mesh_rank_of(&mesh, mesh.coords) != world->rank;
        for (int m = 0; m < 2; m++) {
            rt_comm *comm = mesh.comm[m];
            failures += comm->size != mesh.shape[m] || comm->rank != mesh.coords[m];
            /* member i of comm[m] is the world rank with coordinate i on m and ours elsewhere */
            float mine = (float)world->rank, members[8];
            rt_allgather_f32(comm, members, &mine, 1);
            for (int i = 0; i < comm->size; i++) {
                int expected = m == RT_MESH_DP ? i * sp + mesh.coords[RT_MESH_SP] : mesh.coords[RT_MESH_DP] * sp + i;
                failures += (int)members[i] != expected;
            }
        }
        rt_mesh_free(&mesh);
    }
    /* a 3-D mesh: 1 x n x 1, and 2 x 1 x 2 on 4 ranks */
    int shapes3[2][3] = {{1, world->size, 1}, {2, 1, 2}};
    for (int s = 0; s < (world->size == 4 ? 2 : 1); s++) {
        rt_mesh mesh;
        rt_error err = {{0}};
        CU_ASSERT_EQUAL_FATAL(rt_mesh_init_nd(&mesh, world, 3, shapes3[s], &err), 0);
        int coords[RT_MESH_MAX_DIMS];
        rt_mesh_coords_of(&mesh, world->rank, coords);
        for (int m = 0; m < 3; m++) {
            failures += coords[m] != mesh.coords[m];
            rt_comm *comm = mesh.comm[m];
            failures += comm->size != mesh.shape[m] || comm->rank != mesh.coords[m];
            float mine = (float)world->rank, members[8];
            rt_allgather_f32(comm, members, &mine, 1);
            for (int i = 0; i < comm->size; i++) {
                int other[RT_MESH_MAX_DIMS];
                memcpy(other, mesh.coords, sizeof other);
                other[m] = i;
                failures += (int)members[i] != rt_mesh_rank_of(&mesh, other);
            }
        }
        rt_mesh_free(&mesh);
    }
    test_assert_no_failures_anywhere(world, failures);
}

static void test_mesh_errors(void) {
    rt_mesh mesh;
    rt_error err = {{0}};
    char expected[256];
    CU_ASSERT_EQUAL(rt_mesh_init(&mesh, world, 2, 3, &err), -1);
    snprintf(expected, sizeof expected, "parallel.dp * parallel.sp = 2 * 3 = 6, but the job has %d ranks", world->size);
    CU_ASSERT_STRING_EQUAL(err.msg, expected);
    CU_ASSERT_EQUAL(rt_mesh_init(&mesh, world, world->size, 2, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "but the job has"));
    CU_ASSERT_EQUAL(rt_mesh_init(&mesh, world, 0, world->size, &err), -1);
    CU_ASSERT_STRING_EQUAL(err.msg, "parallel.dp = 0: expected a positive integer");
    CU_ASSERT_EQUAL(rt_mesh_init(&mesh, world, world->size, -1, &err), -1);
    CU_ASSERT_STRING_EQUAL(err.msg, "parallel.sp = -1: expected a positive integer");
    int shape3[3] = {world->size, 2, 1};
    CU_ASSERT_EQUAL(rt_mesh_init_nd(&mesh, world, 3, shape3, &err), -1);
    snprintf(expected, sizeof expected, "mesh %d x 2 x 1 = %d ranks, but the job has %d ranks", world->size,
             2 * world->size, world->size);
    CU_ASSERT_STRING_EQUAL(err.msg, expected);
    int shape4[4] = {1, 1, 1, world->size};
    CU_ASSERT_EQUAL(rt_mesh_init_nd(&mesh, world, 4, shape4, &err), -1);
    /* a failed init leaves nothing to free; freeing is still safe */
    rt_mesh_free(&mesh);

    /* bad tensor descriptors and placements */
    CU_ASSERT_EQUAL_FATAL(rt_mesh_init(&mesh, world, 1, world->size, &err), 0);
    rt_dtensor t;
    size_t shape[2] = {7, 5};
    rt_placement bad[2] = {rt_replicate(), rt_shard(2)};
    CU_ASSERT_EQUAL(rt_dtensor_init(&t, &mesh, 2, shape, bad, &err), -1);
    CU_ASSERT_STRING_EQUAL(err.msg, "placement on mesh dim 1 is Shard(2), but the tensor has 2 dims");
    rt_placement good[2] = {rt_replicate(), rt_shard(0)};
    CU_ASSERT_EQUAL(rt_dtensor_init(&t, &mesh, 5, shape, good, &err), -1);
    CU_ASSERT_EQUAL_FATAL(rt_dtensor_init(&t, &mesh, 2, shape, good, &err), 0);
    rt_mesh_free(&mesh);
}

/* ---- local boxes (pure functions of the mesh shape: a hand-made mesh without communicators) ---- */

static rt_mesh fake_mesh(int ndim, const int *shape) {
    rt_mesh mesh = {0};
    mesh.ndim = ndim;
    memcpy(mesh.shape, shape, (size_t)ndim * sizeof *shape);
    return mesh;
}

static void test_local_box_examples(void) {
    /* 13 over 4: chunks of 4 -> 4, 4, 4, 1 */
    int four[1] = {4};
    rt_mesh mesh = fake_mesh(1, four);
    rt_dtensor t;
    size_t shape13[1] = {13}, offset[4], size[4];
    rt_placement s0[1] = {rt_shard(0)};
    CU_ASSERT_EQUAL_FATAL(rt_dtensor_init(&t, &mesh, 1, shape13, s0, NULL), 0);
    size_t want_offset[4] = {0, 4, 8, 12}, want_size[4] = {4, 4, 4, 1};
    for (int c = 0; c < 4; c++) {
        rt_dtensor_local_box(&t, &c, offset, size);
        CU_ASSERT_EQUAL(offset[0], want_offset[c]);
        CU_ASSERT_EQUAL(size[0], want_size[c]);
        CU_ASSERT_EQUAL(rt_dtensor_local_numel(&t, &c), want_size[c]);
    }
    /* 2 over 4: 1, 1, 0, 0 (empty shards at the end, offsets clipped to the extent) */
    size_t shape2[1] = {2};
    CU_ASSERT_EQUAL_FATAL(rt_dtensor_init(&t, &mesh, 1, shape2, s0, NULL), 0);
    size_t want2_offset[4] = {0, 1, 2, 2}, want2_size[4] = {1, 1, 0, 0};
    for (int c = 0; c < 4; c++) {
        rt_dtensor_local_box(&t, &c, offset, size);
        CU_ASSERT_EQUAL(offset[0], want2_offset[c]);
        CU_ASSERT_EQUAL(size[0], want2_size[c]);
    }
    /* 7x5 on a 2x2 mesh, [Shard(0), Shard(0)] nests: dim 0 gives [0,4) and [4,7), dim 1 halves those */
    int two_by_two[2] = {2, 2};
    mesh = fake_mesh(2, two_by_two);
    size_t shape75[2] = {7, 5};
    rt_placement nested[2] = {rt_shard(0), rt_shard(0)};
    CU_ASSERT_EQUAL_FATAL(rt_dtensor_init(&t, &mesh, 2, shape75, nested, NULL), 0);
    size_t want_rows_offset[4] = {0, 2, 4, 6}, want_rows[4] = {2, 2, 2, 1};
    for (int r = 0; r < 4; r++) {
        int coords[2] = {r / 2, r % 2};
        rt_dtensor_local_box(&t, coords, offset, size);
        CU_ASSERT_EQUAL(offset[0], want_rows_offset[r]);
        CU_ASSERT_EQUAL(size[0], want_rows[r]);
        CU_ASSERT_EQUAL(offset[1], 0);
        CU_ASSERT_EQUAL(size[1], 5);
    }
    /* [Shard(1), Partial]: columns 0-2 and 3-4, all rows on both partial coordinates */
    rt_placement cols[2] = {rt_shard(1), rt_partial_sum()};
    CU_ASSERT_EQUAL_FATAL(rt_dtensor_init(&t, &mesh, 2, shape75, cols, NULL), 0);
    int coords[2] = {1, 1};
    rt_dtensor_local_box(&t, coords, offset, size);
    CU_ASSERT(offset[0] == 0 && size[0] == 7 && offset[1] == 3 && size[1] == 2);
}

static void test_local_box_rule_and_tiling(void) {
    int meshes[][3] = {{1, 4, 0}, {4, 1, 0}, {2, 2, 0}, {3, 2, 0}, {2, 3, 0}, {2, 1, 2}, {3, 2, 2}};
    int mesh_ndims[] = {2, 2, 2, 2, 2, 3, 3};
    size_t shapes[][3] = {{13, 0, 0}, {7, 5, 0}, {3, 4, 5}, {2, 3, 0}, {1, 1, 1}, {0, 4, 0}};
    int tensor_ndims[] = {1, 2, 3, 2, 3, 2};
    int failures = 0;
    for (int k = 0; k < (int)(sizeof mesh_ndims / sizeof *mesh_ndims); k++) {
        rt_mesh mesh = fake_mesh(mesh_ndims[k], meshes[k]);
        int ranks = 1;
        for (int m = 0; m < mesh.ndim; m++)
            ranks *= mesh.shape[m];
        for (int s = 0; s < (int)(sizeof tensor_ndims / sizeof *tensor_ndims); s++) {
            int ndim = tensor_ndims[s];
            size_t numel = numel_of(ndim, shapes[s]);
            unsigned *covered = calloc(numel ? numel : 1, sizeof *covered);
            for (int combo = 0; combo < combo_count(mesh.ndim, ndim); combo++) {
                rt_placement pl[RT_MESH_MAX_DIMS];
                placements_of(combo, mesh.ndim, ndim, pl);
                rt_dtensor t;
                if (rt_dtensor_init(&t, &mesh, ndim, shapes[s], pl, NULL)) {
                    failures++;
                    continue;
                }
                unsigned replicas = 1; /* every element is held once per coordinate of each non-Shard dim */
                for (int m = 0; m < mesh.ndim; m++)
                    if (pl[m].kind != RT_SHARD) replicas *= (unsigned)mesh.shape[m];
                memset(covered, 0, (numel ? numel : 1) * sizeof *covered);
                for (int r = 0; r < ranks; r++) {
                    int coords[RT_MESH_MAX_DIMS];
                    for (int m = mesh.ndim - 1, rest = r; m >= 0; m--) {
                        coords[m] = rest % mesh.shape[m];
                        rest /= mesh.shape[m];
                    }
                    size_t offset[4], size[4], want_offset[4], want_size[4];
                    rt_dtensor_local_box(&t, coords, offset, size);
                    naive_box(ndim, shapes[s], mesh.ndim, mesh.shape, pl, coords, want_offset, want_size);
                    failures += memcmp(offset, want_offset, (size_t)ndim * sizeof *offset) != 0;
                    failures += memcmp(size, want_size, (size_t)ndim * sizeof *size) != 0;
                    failures += rt_dtensor_local_numel(&t, coords) != numel_of(ndim, want_size);
                    for (size_t i = 0; i < numel; i++) {
                        int inside = 1;
                        size_t rest = i;
                        for (int d = ndim - 1; d >= 0; d--) {
                            size_t at = rest % shapes[s][d];
                            rest /= shapes[s][d];
                            inside &= at >= offset[d] && at < offset[d] + size[d];
                        }
                        covered[i] += (unsigned)inside;
                    }
                }
                for (size_t i = 0; i < numel; i++)
                    failures += covered[i] != replicas;
            }
            free(covered);
        }
    }
    CU_ASSERT_EQUAL(failures, 0);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    test_case cases[] = {
        {"mesh layout and communicators", test_mesh_layout},
        {"mesh errors", test_mesh_errors},
        {"local box examples", test_local_box_examples},
        {"local box rule and tiling", test_local_box_rule_and_tiling},
    };
    int worst = test_mpi_run_suite(world, "test_dtensor", cases, (int)(sizeof cases / sizeof *cases));
    rt_comm_finalize();
    return worst;
}
