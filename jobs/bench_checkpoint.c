/*
 * bench_checkpoint.c: seconds to save and to load a trainer's whole state
 * (weights and AdamW state, one collective HDF5 file: runtime/train/train_state.c)
 * on however many ranks mpirun starts. jobs/bench-checkpoint.sh runs it on
 * 1, 2 and 4 ranks next to dd on the same disk. Not a test: numbers depend
 * on the machine and its disk.
 *
 *   mpirun -np P bench_checkpoint DIR [--repeats N] [--cold] [--set section.key=value ...]
 *
 * Defaults: preset gpt2-124m, T=64, one sequence per data-parallel rank
 * (dp = P), ZeRO stage 1 (each rank holds 12 bytes per parameter / P of
 * optimizer state), recompute. One training step runs first, so every
 * buffer of the state has been written as in a real run (a save straight
 * after init read untouched optimizer memory: first-touch page faults made
 * it 3x slower, which no real save pays). Each save writes DIR/bench.h5
 * (replacing the last one), each load reads it back. A measurement is the wall time from a barrier to the
 * collective's return, the maximum over ranks.
 *
 * The baseline is measured in the same process, alternated with the
 * operations (baseline, save, baseline, save, ...), because this machine's
 * rate of writing new page-cache pages moves 3x from minute to minute (a VM:
 * dd alone took 2.8 to 7.1 s for 2 GB within one minute): rank 0 writes the
 * checkpoint's size with write(2) in 4 MiB pieces and fsyncs it, as dd
 * conv=fsync does, and reads as many bytes of the checkpoint as a load
 * moves (the page cache holds it as it holds the load's; with --cold, root
 * only, the page cache is emptied before each, so both read the disk, as a
 * resume on a fresh node does). Each save
 * goes to a new file (the old one removed before the clock starts), as a
 * run's step_N.h5 are.
 *
 * Output, rank 0, one line per measurement:
 *   op=save run=1 ranks=P s=... baseline_s=... file_bytes=... moved_bytes=...
 * file_bytes is the checkpoint's size on disk; moved_bytes what the
 * operation transfers: a save writes /model, /optim/master, /optim/m and
 * /optim/v (16 bytes per parameter, the whole file), a load reads only the
 * optimizer groups (12 bytes per parameter; /model equals the master weights
 * on the CPU backend). The file was just written, so unless it is larger
 * than memory the load reads from the page cache (nothing is dropped).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/comm/comm.h"
#include "runtime/comm/threads.h"
#include "runtime/config/config.h"
#include "runtime/train/train.h"

/* The baseline, on rank 0 alone: what dd does. Writes bytes to path in 4 MiB writes, fsyncs and closes it
 * (writing) or reads its first bytes (reading); returns the seconds, or -1 on an error (printed). */
static double raw_io(const char *path, size_t bytes, int writing) {
    enum { CHUNK = 4 << 20 };
    char *buf = malloc_check(CHUNK);
    memset(buf, 0x5A, CHUNK);
    double start = rt_now_s();
    int fd = writing ? open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644) : open(path, O_RDONLY), ok = fd >= 0;
    for (size_t done = 0; ok && done < bytes;) {
        size_t n = bytes - done < CHUNK ? bytes - done : CHUNK;
        ssize_t got = writing ? write(fd, buf, n) : read(fd, buf, n);
        ok = got > 0;
        done += ok ? (size_t)got : 0;
    }
    if (ok && writing) ok = fsync(fd) == 0;
    if (fd >= 0 && close(fd) != 0) ok = 0;
    double seconds = rt_now_s() - start;
    if (!ok)
        fprintf(stderr, "bench_checkpoint: raw %s of %s failed: %s\n", writing ? "write" : "read", path,
                strerror(errno));
    free(buf);
    return ok ? seconds : -1;
}

/* --cold: empties the page cache (root only), so the next read comes from the disk, as a resume on a fresh
 * node does. Returns 0, or -1 with a message. */
static int drop_page_cache(void) {
    sync();
    int fd = open("/proc/sys/vm/drop_caches", O_WRONLY), ok = fd >= 0 && write(fd, "1", 1) == 1;
    if (fd >= 0 && close(fd) != 0) ok = 0;
    if (!ok)
        fprintf(stderr, "bench_checkpoint: --cold: cannot write /proc/sys/vm/drop_caches (needs root): %s\n",
                strerror(errno));
    return ok ? 0 : -1;
}

/* The wall time of the slowest rank, from a barrier before to this rank's return. */
static double slowest(rt_comm *world, double start_s) {
    double elapsed = rt_now_s() - start_s;
    rt_allreduce_max_f64(world, &elapsed, 1);
    return elapsed;
}

int main(int argc, char **argv) {
    rt_comm *world = rt_comm_world_mpi(&argc, &argv);
    rt_threads threads;
    rt_threads_setup(world, &threads); /* before any BLAS call */
    if (argc < 2 || argv[1][0] == '-') {
        if (world->rank == 0)
            fprintf(stderr, "usage: bench_checkpoint DIR [--repeats N] [--cold] [--set section.key=value ...]\n");
        rt_comm_finalize();
        return 2;
    }
    const char *dir = argv[1];
    int repeats = 3, cold = 0;
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
        } else if (strcmp(argv[i], "--cold") == 0) {
            cold = 1;
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
    rt_step_metrics metrics;
    rc = rt_trainer_step(t, &metrics, &err) == 0 ? 0 : 1;
    char raw_path[RT_PATH_LEN + 16];
    snprintf(raw_path, sizeof raw_path, "%s/baseline.bin", dir);
    size_t file_bytes = 0;
    for (int i = 0; i < 2 * repeats && rc == 0; i++) {
        int saving = i < repeats;
        double baseline_s = 0;
        if (world->rank == 0) {
            /* each side gets the pages freed just before it: the old checkpoint's, then the baseline's */
            if (saving) unlink(path);
            if (!saving && cold && drop_page_cache()) baseline_s = -1;
            /* the first save's size is not known yet: the checkpoint's data, 16 bytes per parameter */
            if (baseline_s == 0)
                baseline_s =
                    saving ? raw_io(raw_path, file_bytes ? file_bytes : save_bytes, 1) : raw_io(path, load_bytes, 0);
            if (saving) unlink(raw_path);
            if (!saving && cold && baseline_s >= 0 && drop_page_cache()) baseline_s = -1;
        }
        rt_allreduce_max_f64(world, &baseline_s, 1);
        if (baseline_s < 0) {
            rc = 1;
            break;
        }
        char changes[256];
        rt_barrier(world);
        double start = rt_now_s();
        rc = saving ? rt_trainer_save(t, path, &err) : rt_trainer_load(t, path, changes, sizeof changes, &err);
        double seconds = slowest(world, start);
        if (rc) break;
        struct stat st;
        file_bytes = stat(path, &st) == 0 ? (size_t)st.st_size : 0;
        if (world->rank == 0) {
            printf("op=%s run=%d ranks=%d s=%.3f baseline_s=%.3f file_bytes=%zu moved_bytes=%zu\n",
                   saving ? "save" : "load", i % repeats + 1, world->size, seconds, baseline_s, file_bytes,
                   saving ? save_bytes : load_bytes);
            fflush(stdout);
        }
    }
    if (rc && err.msg[0]) fprintf(stderr, "bench_checkpoint: %s\n", err.msg);
    rt_trainer_free(t);
    rt_comm_finalize();
    return rc ? 1 : 0;
}
