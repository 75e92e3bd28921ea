/*
 * bench_memory.c: the longest sequence that fits a device memory limit, per
 * activation mode, for the sequence-parallel group of this job (P = the
 * number of mpirun ranks). Every device allocation of a run goes through the
 * accounted arena and all of them happen at setup (ring buffers included,
 * seqpar_reserve), so "fits" means: model, ring buffers and optimizer state
 * for one sequence of T tokens (T/P per rank) are all granted under the
 * limit. The probe backend allocates lazily (no zero-fill), so probing
 * layouts of many GiB costs nothing.
 *
 *   mpirun -np P bench_memory PRESET LIMIT ZERO_STAGE [--mlp-tile-mib=N] MODE...
 *
 * --mlp-tile-mib=N runs the MLP in tiles whose intermediates take N MiB
 * (activations.mlp_tile_mib) for the modes after it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend/registry.h"
#include "runtime/config/config.h"
#include "runtime/model/model.h"
#include "shard/mesh.h"
#include "shard/optimizer.h"
#include "shard/zero_hooks.h"

static void *lazy_alloc(const rt_backend *be, size_t bytes) { return (void)be, malloc(bytes); }
static void no_zero(const rt_backend *be, void *dst, size_t bytes) { (void)be, (void)dst, (void)bytes; }

/* 1 when setup for one sequence of T tokens fits limit on this rank. */
static int fits(const rt_backend *be, const rt_config *preset, const rt_mesh *mesh, size_t limit, int stage,
                rt_activation_mode mode, size_t T) {
    rt_config cfg = *preset;
    rt_comm *world = mesh->world;
    cfg.max_seq_len = (int)T; /* gpt2's learned positions must cover T (their bytes count too) */
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    rt_device_memory mem;
    rt_device_memory_init(&mem, be, limit);
    seqpar_ctx sp = {.backend = be, .mem = &mem, .comm = world};
    rt_model model;
    rt_optimizer opt = {0};
    rt_error err;
    size_t n_alloc = rt_optimizer_padded_size(rt_model_param_count(&shape), world->size);
    const size_t local = T / (size_t)world->size;
    rt_zero_hooks zero; /* as the trainer wires it (no pass runs: nothing is ever gathered or reduced) */
    rt_zero_hooks_init(&zero, stage, &opt, be, &mem);
    rt_model_options options = {.mode = mode,
                                .offload_max_inflight = cfg.offload_max_inflight,
                                .max_seqs = 1,
                                .max_local_len = local,
                                .n_alloc = n_alloc,
                                .seqpar = &sp,
                                .mlp_tile_tokens = rt_config_mlp_tile(&cfg, local),
                                .param_hooks = rt_zero_param_hooks(&zero),
                                .grad_hooks = rt_zero_grad_hooks(&zero)};
    int ok = rt_model_init(&model, &shape, be, &mem, &options, &err) == 0;
    /* Stage 3 has no full parameter buffer: the initial weights come from the host (untouched pages). */
    float *initial = stage == 3 ? calloc(n_alloc, sizeof(float)) : model.params;
    ok = ok &&
         rt_optimizer_init(&opt, be, &mem, mesh, stage, &model.table, initial, 0.9f, 0.95f, 1e-8f, 0.1f, &err) == 0;
    if (stage == 3) free(initial);
    rt_optimizer_free(&opt);
    seqpar_ctx_free(&sp);
    rt_model_free(&model);
    rt_zero_hooks_free(&zero);
    rt_device_memory_destroy(&mem);
    return ok;
}

int main(int argc, char **argv) {
    rt_comm *world = rt_comm_world_mpi(&argc, &argv);
    if (argc < 5) {
        fprintf(stderr, "usage: mpirun -np P bench_memory PRESET LIMIT ZERO_STAGE MODE...\n");
        return 2;
    }
    rt_config cfg;
    rt_error err;
    rt_config_defaults(&cfg);
    size_t limit = 0;
    if (rt_config_apply_preset(&cfg, argv[1], &err) || rt_parse_bytes(argv[2], &limit)) {
        fprintf(stderr, "bench_memory: bad preset or limit\n");
        return 2;
    }
    rt_config_resolve(&cfg);
    int stage = atoi(argv[3]);
    rt_mesh mesh; /* the job's ranks share one sequence: sp = P */
    if (rt_mesh_init(&mesh, world, 1, world->size, &err)) {
        fprintf(stderr, "bench_memory: %s\n", err.msg);
        return 1;
    }
    rt_backend probe = *rt_backend_cpu();
    probe.memory.device_alloc = lazy_alloc;
    probe.memory.memset_zero = no_zero;
    const size_t grain = 64 * 2 * (size_t)world->size; /* T divides into 2P chunks of whole 64-token tiles */
    for (int a = 4; a < argc; a++) {
        if (strncmp(argv[a], "--mlp-tile-mib=", 15) == 0) {
            cfg.mlp_tile_mib = atoi(argv[a] + 15);
            continue;
        }
        rt_activation_mode mode = strcmp(argv[a], "keep") == 0        ? RT_ACT_KEEP
                                  : strcmp(argv[a], "recompute") == 0 ? RT_ACT_RECOMPUTE
                                                                      : RT_ACT_OFFLOAD;
        size_t lo = 0, hi = grain; /* lo fits (0 = nothing yet), hi does not */
        while (fits(&probe, &cfg, &mesh, limit, stage, mode, hi)) {
            lo = hi;
            hi *= 2;
        }
        while (hi - lo > grain) {
            size_t mid = (lo + hi) / 2 / grain * grain;
            if (fits(&probe, &cfg, &mesh, limit, stage, mode, mid))
                lo = mid;
            else
                hi = mid;
        }
        if (world->rank == 0)
            printf("%-10s P=%d zero=%d mlp_tile_mib=%d %-9s limit %s: longest T = %zu (%zu per rank)\n", argv[1],
                   world->size, stage, cfg.mlp_tile_mib, argv[a], argv[2], lo, lo / (size_t)world->size);
    }
    rt_mesh_free(&mesh);
    rt_comm_finalize();
    return 0;
}
