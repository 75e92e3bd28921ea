/* threads.h: how many OpenMP (and OpenBLAS) threads each rank runs: its share of the CPUs it may use. */
#ifndef RT_THREADS_H
#define RT_THREADS_H

#include "comm.h"

/*
 * A rank's share: for each CPU in its affinity mask (sched_getaffinity),
 * 1 / (the number of ranks on its node whose masks hold that CPU), summed
 * and rounded down, at least 1. Unbound ranks (mpirun --oversubscribe, or
 * a launcher that does not bind) split the node's CPUs evenly; ranks bound
 * to disjoint cores keep all of theirs. A CPU quota of the cgroup (a
 * container's --cpus, a Kubernetes limit) caps the node's ranks together at
 * the quota: sched_getaffinity shows every host CPU there. OMP_NUM_THREADS,
 * when set, is respected as given.
 */
typedef struct {
    int threads;    /* OpenMP threads this rank runs, >= 1 */
    int cpus;       /* CPUs in its affinity mask */
    int node_ranks; /* ranks of the communicator on its node */
    int from_env;   /* 1: OMP_NUM_THREADS decided */
    int quota_cpus; /* CPUs the cgroup quota allows, rounded up; 0: no quota */
    /* The node's fair share: its online CPUs (capped by the quota) over its ranks, at least 1. A rank whose
     * threads come out below it was bound to fewer CPUs by its launcher (Open MPI binds 1-2 ranks to a core
     * each by default); short_ranks counts such ranks over the world (0 when OMP_NUM_THREADS decided). */
    int fair_share;
    int short_ranks;
} rt_threads;

/* CPUs a cgroup quota allows, rounded up, read from cgroup_root (cgroup v2 cpu.max, or v1 cpu/cpu.cfs_quota_us
 * and cpu/cpu.cfs_period_us); 0 when there is no quota or no such file. */
int rt_threads_quota_cpus(const char *cgroup_root);

/* Collective over world: computes this rank's share and sets OpenMP and OpenBLAS to it (before the first BLAS
 * call, so both follow it). */
void rt_threads_setup(rt_comm *world, rt_threads *out);

#endif
