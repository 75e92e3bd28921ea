/* test_threads.c: OpenMP threads per rank (runtime/comm/threads.c): OMP_NUM_THREADS respected, otherwise the
 * ranks sharing a CPU mask split it; cgroup CPU quotas (v1 and v2) read from hand-written files. Runs under
 * mpirun on 1, 2 and 4 ranks. */
#define _GNU_SOURCE /* sched_setaffinity */
#include <mpi.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/comm/comm.h"
#include "runtime/comm/threads.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

static rt_comm *world;

static void write_text(const char *dir, const char *name, const char *text) {
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *out = fopen(path, "w");
    CU_ASSERT_FATAL(out != NULL);
    fputs(text, out);
    fclose(out);
}

/* cgroup CPU quotas, v2 and v1, against hand-written files: rounded up, "max" and -1 mean none. */
static void test_cgroup_quota(void) {
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/rt_quota_%d_XXXXXX", world->rank);
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    CU_ASSERT_EQUAL(rt_threads_quota_cpus(dir), 0); /* no files */
    write_text(dir, "cpu.max", "250000 100000\n");
    CU_ASSERT_EQUAL(rt_threads_quota_cpus(dir), 3);
    write_text(dir, "cpu.max", "max 100000\n");
    CU_ASSERT_EQUAL(rt_threads_quota_cpus(dir), 0);
    char v1[128];
    snprintf(v1, sizeof v1, "%s/cpu", dir);
    CU_ASSERT_FATAL(mkdir(v1, 0700) == 0);
    write_text(v1, "cpu.cfs_quota_us", "200000\n");
    write_text(v1, "cpu.cfs_period_us", "100000\n");
    CU_ASSERT_EQUAL(rt_threads_quota_cpus(dir), 2);
    write_text(v1, "cpu.cfs_quota_us", "-1\n");
    CU_ASSERT_EQUAL(rt_threads_quota_cpus(dir), 0);
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    CU_ASSERT(system(cmd) == 0);
}

/*
 * Threads per rank: with OMP_NUM_THREADS set it is respected; without, ranks that share one affinity mask
 * (mpirun --oversubscribe does not bind) split its CPUs evenly, at least one thread each.
 */
static void test_threads_default(void) {
    const int before = omp_get_max_threads();
    rt_threads th;
    setenv("OMP_NUM_THREADS", "3", 1);
    omp_set_num_threads(3);
    rt_threads_setup(world, &th);
    CU_ASSERT_EQUAL(th.from_env, 1);
    CU_ASSERT_EQUAL(th.threads, 3);
    CU_ASSERT_EQUAL(th.node_ranks, world->size); /* mpirun on one machine */
    unsetenv("OMP_NUM_THREADS");
    rt_threads_setup(world, &th);
    double spread[2] = {th.cpus, -th.cpus};
    rt_allreduce_max_f64(world, spread, 2);
    CU_ASSERT_EQUAL(th.from_env, 0);
    CU_ASSERT(th.cpus >= 1);
    if (spread[0] == -spread[1]) { /* the same number of CPUs everywhere: taken as one shared mask */
        int expected = th.cpus / world->size > 0 ? th.cpus / world->size : 1;
        if (th.quota_cpus > 0 && expected > th.quota_cpus / world->size)
            expected = th.quota_cpus / world->size > 0 ? th.quota_cpus / world->size : 1;
        if (th.threads != expected)
            fprintf(stderr, "\n  rank %d: %d cpus, %d ranks: %d threads, expected %d\n", world->rank, th.cpus,
                    world->size, th.threads, expected);
        CU_ASSERT_EQUAL(th.threads, expected);
        CU_ASSERT_EQUAL(omp_get_max_threads(), expected);
    }
    setenv("OMP_NUM_THREADS", "1", 1);
    omp_set_num_threads(before);
}

/* A rank bound by its launcher to one CPU, where its node could give it more: counted short, on every rank,
 * and its fair share is the node's CPUs over its ranks. Each rank binds itself to CPU rank % online. */
static void test_short_mask(void) {
    cpu_set_t saved, one;
    CU_ASSERT_FATAL(sched_getaffinity(0, sizeof saved, &saved) == 0);
    const long online = sysconf(_SC_NPROCESSORS_ONLN);
    CPU_ZERO(&one);
    CPU_SET((int)(world->rank % online), &one);
    CU_ASSERT_FATAL(sched_setaffinity(0, sizeof one, &one) == 0);
    const int before = omp_get_max_threads();
    unsetenv("OMP_NUM_THREADS");
    rt_threads th;
    rt_threads_setup(world, &th);
    const int fair = online / world->size > 1 ? (int)(online / world->size) : 1;
    const int quota_fair = th.quota_cpus > 0 && th.quota_cpus < online ? th.quota_cpus / world->size : fair;
    const int expected_fair = quota_fair > 1 ? quota_fair : 1;
    CU_ASSERT_EQUAL(th.cpus, 1);
    CU_ASSERT_EQUAL(th.fair_share, expected_fair);
    /* every rank on its own CPU (or sharing one, when ranks outnumber CPUs): 1 thread each */
    CU_ASSERT_EQUAL(th.threads, 1);
    CU_ASSERT_EQUAL(th.short_ranks, expected_fair > 1 ? world->size : 0);
    /* OMP_NUM_THREADS decides: nobody is short */
    setenv("OMP_NUM_THREADS", "1", 1);
    rt_threads_setup(world, &th);
    CU_ASSERT_EQUAL(th.short_ranks, 0);
    CU_ASSERT_FATAL(sched_setaffinity(0, sizeof saved, &saved) == 0);
    omp_set_num_threads(before);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    int provided = 0;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_FUNNELED) return 3;
    test_case cases[] = {
        {"threads per rank", test_threads_default},
        {"cgroup CPU quota", test_cgroup_quota},
        {"a rank bound to fewer CPUs than its node's share is counted", test_short_mask},
    };
    int worst = test_mpi_run_suite(world, "threads", cases, (int)(sizeof cases / sizeof *cases));
    rt_comm_finalize();
    return worst;
}
