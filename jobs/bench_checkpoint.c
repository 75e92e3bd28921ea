/*
 * bench_checkpoint.c: seconds to save and to load a trainer's whole state
 * (weights and AdamW state, one collective HDF5 file: runtime/train_state.c)
 * on however many ranks mpirun starts. jobs/bench-checkpoint.sh runs it on
 * 1, 2 and 4 ranks next to dd on the same disk. Not a test: numbers depend
 * on the machine and its disk.
 *
 *   mpirun -np P bench_checkpoint DIR [--repeats N] [--set section.key=value ...]
 *
 * Defaults: preset gpt2-124m, T=64, one sequence per data-parallel rank
 * (dp = P), ZeRO stage 1 (each rank holds 12 bytes per parameter / P of
 * optimizer state), recompute. No step is taken: the weights are the random
 * init, the optimizer state its initial copy, which is as large as any
 * other. Each save writes DIR/bench.h5 (replacing the last one), each load
 * reads it back. A measurement is the wall time from a barrier to the
 * collective's return, the maximum over ranks.
 *
 * Output, rank 0, one line per measurement:
 *   op=save run=1 ranks=P s=... file_bytes=... moved_bytes=...
 * file_bytes is the checkpoint's size on disk; moved_bytes what the
 * operation transfers: a save writes /model, /optim/master, /optim/m and
 * /optim/v (16 bytes per parameter, the whole file), a load reads only the
 * optimizer groups (12 bytes per parameter; /model equals the master weights
 * on the CPU backend). The file was just written, so unless it is larger
 * than memory the load reads from the page cache (nothing is dropped).
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../runtime/comm.h"
#include "../runtime/config.h"
#include "../runtime/threads.h"
#include "../runtime/train.h"

/* The wall time of the slowest rank, from a barrier before to this rank's return. */
static double slowest(rt_comm *world, double start_s) {
    double elapsed = rt_now_s() - start_s;
    world->ops->allreduce_max_f64(world, &elapsed, 1);
    return elapsed;
}

int main(int argc, char **argv) {
    rt_comm *world = rt_comm_world_mpi(&argc, &argv);
    rt_threads threads;
    rt_threads_setup(world, &threads); /* before any BLAS call */
    if (argc < 2 || argv[1][0] == '-') {
        if (world->rank == 0)
            fprintf(stderr, "usage: bench_checkpoint DIR [--repeats N] [--set section.key=value ...]\n");
        rt_comm_finalize();
        return 2;
    }
    const char *dir = argv[1];
    int repeats = 2;
    /* the benchmark's defaults first, so --set overrides them */
    char dp_key[64], batch_key[64];
    snprintf(dp_key, sizeof dp_key, "parallel.dp=%d", world->size);
    snprintf(batch_key, sizeof batch_key, "train.batch_size=%d", world->size);
    const char *defaults[] = {"model.preset=gpt2-124m",
                              "train.seq_len=64",
                              batch_key,
                              dp_key,
                              "parallel.sp=1",
                              "zero.stage=1",
                              "activations.mode=recompute",
                              "train.val_every=0",
                              "data.train=data/corpus/train.bin"};
    const int n_defaults = (int)(sizeof defaults / sizeof defaults[0]);
    const char **overrides = calloc_check((size_t)(n_defaults + argc), sizeof *overrides);
    int n_overrides = 0;
    for (int i = 0; i < n_defaults; i++)
        overrides[n_overrides++] = defaults[i];
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--set") == 0 && i + 1 < argc) {
            overrides[n_overrides++] = argv[++i];
        } else if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc && atoi(argv[i + 1]) >= 1) {
            repeats = atoi(argv[++i]);
        } else {
            if (world->rank == 0) fprintf(stderr, "bench_checkpoint: unexpected argument '%s'\n", argv[i]);
            rt_comm_finalize();
            return 2;
        }
    }
    rt_config cfg;
    rt_error err = {{0}};
    rt_config_defaults(&cfg);
    int rc = rt_config_load(&cfg, NULL, overrides, n_overrides, &err) || rt_config_validate(&cfg, &err);
    free(overrides);
    rt_trainer *t = NULL;
    if (rc == 0 && rt_trainer_init(&t, &cfg, world, &err)) rc = 1;
    if (rc) {
        if (err.msg[0]) fprintf(stderr, "bench_checkpoint: %s\n", err.msg);
        rt_comm_finalize();
        return 1;
    }
    char path[RT_PATH_LEN + 16];
    snprintf(path, sizeof path, "%s/bench.h5", dir);
    const size_t n_params = rt_trainer_model(t)->table.total;
    const size_t save_bytes = 16 * n_params, load_bytes = 12 * n_params;
    if (world->rank == 0) {
        printf("# %s, %zu parameters, %d ranks (dp=%d, ZeRO %d), %d threads per rank; writing %s\n", cfg.preset,
               n_params, world->size, cfg.dp, cfg.zero_stage, threads.threads, path);
        printf("# loads read the file just written: from the page cache unless it is larger than memory\n");
        fflush(stdout);
    }
    for (int run = 1; run <= repeats && rc == 0; run++) {
        world->ops->barrier(world);
        double start = rt_now_s();
        rc = rt_trainer_save(t, path, &err);
        double save_s = slowest(world, start);
        if (rc) break;
        struct stat st;
        long long file_bytes = stat(path, &st) == 0 ? (long long)st.st_size : -1;
        if (world->rank == 0) {
            printf("op=save run=%d ranks=%d s=%.3f file_bytes=%lld moved_bytes=%zu\n", run, world->size, save_s,
                   file_bytes, save_bytes);
            fflush(stdout);
        }
    }
    for (int run = 1; run <= repeats && rc == 0; run++) {
        char changes[256];
        world->ops->barrier(world);
        double start = rt_now_s();
        rc = rt_trainer_load(t, path, changes, sizeof changes, &err);
        double load_s = slowest(world, start);
        if (rc) break;
        struct stat st;
        long long file_bytes = stat(path, &st) == 0 ? (long long)st.st_size : -1;
        if (world->rank == 0) {
            printf("op=load run=%d ranks=%d s=%.3f file_bytes=%lld moved_bytes=%zu\n", run, world->size, load_s,
                   file_bytes, load_bytes);
            fflush(stdout);
        }
    }
    if (rc && err.msg[0]) fprintf(stderr, "bench_checkpoint: %s\n", err.msg);
    rt_trainer_free(t);
    rt_comm_finalize();
    return rc ? 1 : 0;
}
