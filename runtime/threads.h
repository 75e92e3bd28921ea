/* threads.h: how many OpenMP (and OpenBLAS) threads each rank runs: its share of the CPUs it may use. */
#ifndef RT_THREADS_H
#define RT_THREADS_H

#include "comm.h"

/*
 * A rank's share: for each CPU in its affinity mask (sched_getaffinity),
 * 1 / (the number of ranks on its node whose masks hold that CPU), summed
 * and rounded down, at least 1. Unbound ranks (mpirun --oversubscribe, or
 * a launcher that does not bind) split the node's CPUs evenly; ranks bound
 * to disjoint cores keep all of theirs. OMP_NUM_THREADS, when set, is
 * respected as given.
 */
typedef struct {
    int threads;    /* OpenMP threads this rank runs, >= 1 */
    int cpus;       /* CPUs in its affinity mask */
    int node_ranks; /* ranks of the communicator on its node */
    int from_env;   /* 1: OMP_NUM_THREADS decided */
} rt_threads;

/* Collective over world: computes this rank's share and sets OpenMP and OpenBLAS to it (before the first BLAS
 * call, so both follow it). */
void rt_threads_setup(rt_comm *world, rt_threads *out);

#endif
