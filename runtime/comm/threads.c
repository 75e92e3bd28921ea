/* threads.c: threads per rank from CPU affinity and the ranks sharing the node (see threads.h). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_SET */
#include "threads.h"

#include <cblas.h>
#include <omp.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

/* users[c] = 1 for every CPU c this rank may run on. */
static int mark_affinity(double users[CPU_SETSIZE]) {
    cpu_set_t mask;
    int cpus = 0;
    CPU_ZERO(&mask);
    if (sched_getaffinity(0, sizeof mask, &mask) != 0) { /* a mask wider than CPU_SETSIZE: take the online CPUs */
        long online = sysconf(_SC_NPROCESSORS_ONLN);
        for (long c = 0; c < online && c < CPU_SETSIZE; c++)
            CPU_SET((int)c, &mask);
    }
    for (int c = 0; c < CPU_SETSIZE; c++) {
        users[c] = CPU_ISSET(c, &mask) ? 1.0 : 0.0;
        cpus += CPU_ISSET(c, &mask) != 0;
    }
    return cpus;
}

/* Reads up to two whole numbers from a small file; returns how many ("max" reads as none). */
static int read_numbers(const char *path, long long *a, long long *b) {
    FILE *in = fopen(path, "r");
    if (!in) return 0;
    int n = fscanf(in, "%lld %lld", a, b);
    fclose(in);
    return n < 0 ? 0 : n;
}

static int quota_to_cpus(long long quota, long long period) {
    if (quota <= 0 || period <= 0) return 0;
    long long cpus = (quota + period - 1) / period;
    return cpus > CPU_SETSIZE ? CPU_SETSIZE : (int)cpus;
}

int rt_threads_quota_cpus(const char *cgroup_root) {
    char path[512];
    long long quota = 0, period = 0;
    snprintf(path, sizeof path, "%s/cpu.max", cgroup_root); /* v2: "QUOTA PERIOD" or "max PERIOD" */
    if (read_numbers(path, &quota, &period) == 2) return quota_to_cpus(quota, period);
    snprintf(path, sizeof path, "%s/cpu/cpu.cfs_quota_us", cgroup_root); /* v1: -1 means none */
    if (read_numbers(path, &quota, &period) != 1) return 0;
    snprintf(path, sizeof path, "%s/cpu/cpu.cfs_period_us", cgroup_root);
    if (read_numbers(path, &period, &(long long){0}) != 1) return 0;
    return quota_to_cpus(quota, period);
}

void rt_threads_setup(rt_comm *world, rt_threads *out) {
    double mine[CPU_SETSIZE], users[CPU_SETSIZE];
    out->cpus = mark_affinity(mine);
    for (int c = 0; c < CPU_SETSIZE; c++)
        users[c] = mine[c];
    rt_comm *node = rt_comm_split_node(world); /* collective: every rank takes part, env set or not */
    out->node_ranks = node->size;
    rt_allreduce_sum_f64(node, users, CPU_SETSIZE);
    rt_comm_destroy(node);
    double share = 0.0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (mine[c] > 0.0) share += 1.0 / users[c];
    const char *env = getenv("OMP_NUM_THREADS");
    out->from_env = env && env[0];
    out->quota_cpus = rt_threads_quota_cpus("/sys/fs/cgroup");
    long node_cpus = sysconf(_SC_NPROCESSORS_ONLN);
    if (out->quota_cpus > 0 && out->quota_cpus < node_cpus) node_cpus = out->quota_cpus;
    out->fair_share = node_cpus / out->node_ranks > 1 ? (int)(node_cpus / out->node_ranks) : 1;
    if (out->from_env) {
        out->threads = omp_get_max_threads();
    } else {
        out->threads = share >= 1.0 ? (int)(share + 1e-9) : 1;
        if (out->quota_cpus > 0 && out->threads > out->quota_cpus / out->node_ranks)
            out->threads = out->quota_cpus / out->node_ranks > 1 ? out->quota_cpus / out->node_ranks : 1;
        omp_set_num_threads(out->threads);
        openblas_set_num_threads(out->threads);
    }
    double short_rank = !out->from_env && out->threads < out->fair_share;
    rt_allreduce_sum_f64(world, &short_rank, 1); /* collective on every rank, env set or not */
    out->short_ranks = (int)short_rank;
}
