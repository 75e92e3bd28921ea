/* threads.c: threads per rank from CPU affinity and the ranks sharing the node (see threads.h). */
#define _GNU_SOURCE /* sched_getaffinity, CPU_SET */
#include "threads.h"

#include <cblas.h>
#include <omp.h>
#include <sched.h>
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

void rt_threads_setup(rt_comm *world, rt_threads *out) {
    double mine[CPU_SETSIZE], users[CPU_SETSIZE];
    out->cpus = mark_affinity(mine);
    for (int c = 0; c < CPU_SETSIZE; c++)
        users[c] = mine[c];
    rt_comm *node = world->ops->split_node(world); /* collective: every rank takes part, env set or not */
    out->node_ranks = node->size;
    node->ops->allreduce_sum_f64(node, users, CPU_SETSIZE);
    node->ops->destroy(node);
    double share = 0.0;
    for (int c = 0; c < CPU_SETSIZE; c++)
        if (mine[c] > 0.0) share += 1.0 / users[c];
    const char *env = getenv("OMP_NUM_THREADS");
    out->from_env = env && env[0];
    if (out->from_env) {
        out->threads = omp_get_max_threads();
        return;
    }
    out->threads = share >= 1.0 ? (int)(share + 1e-9) : 1;
    omp_set_num_threads(out->threads);
    openblas_set_num_threads(out->threads);
}
