/*
 * comm_mpi.c: the MPI implementation of the communicator interface.
 *
 * Large counts. MPI-3.1 (Open MPI 4.1, Debian 12) takes int counts, and
 * Open MPI sums a collective's counts into an int inside its algorithms, so
 * no MPI call here moves more than one segment (seg, at most INT_MAX / 4
 * elements) in total. Counts that fit are one call; larger ones go in
 * rounds:
 *   - allreduce, broadcast, isend/irecv: consecutive pieces of seg elements
 *     (a point-to-point transfer posts one request per piece; pieces of one
 *     transfer match in order, as MPI never reorders messages of one tag).
 *   - reduce-scatter (block and _v): each rank's block is cut into pieces of
 *     len = max(1, seg / size) elements; round r packs piece r of every
 *     rank's block into the staging buffer (size * len floats) and
 *     reduce-scatters it, so rank q receives piece r of its block at offset
 *     r*len of recv. In place this is safe: by the end of round r's packing
 *     every element at an offset below (r+1)*len in any block was read, and
 *     recv's offsets below (r+1)*len are such elements.
 *   - all-gather: round r all-gathers piece r of every rank's send into the
 *     staging buffer and unpacks piece q to recv + q*n + r*len.
 *   - uneven all-gather: above one segment, one broadcast per rank of its
 *     block (broadcast goes in pieces itself); its callers (ZeRO-3's layer
 *     gathers) send pieces far below a segment.
 * Every rank computes the same rounds from the same counts, so the calls
 * match. The MPI-4 large-count calls (MPI_Reduce_scatter_block_c, ...) would
 * do this in the library; the rounds work on every MPI.
 *
 * Threads: MPI_THREAD_FUNNELED. Only the thread that initialized MPI calls
 * it; the copy-engine workers (backend_cpu_stream.c) only copy memory and
 * OpenMP regions never communicate.
 */
#include <limits.h>
#include <mpi.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "comm.h"
#include "comm_mpi.h"
#include "runtime/core/common.h"

#define SEGMENT_DEFAULT ((size_t)1 << 26)
#define SEGMENT_MAX ((size_t)INT_MAX / 4)

typedef struct {
    MPI_Comm mpi;
    float *staging; /* reduce-scatter / all-gather rounds; grown on first use, freed by destroy */
    size_t staging_elems;
} comm_impl;

static rt_comm *world;
static size_t segment_elems = SEGMENT_DEFAULT;

void rt_comm_mpi_set_segment_elems(size_t elems) {
    segment_elems = elems == 0 ? SEGMENT_DEFAULT : elems < SEGMENT_MAX ? elems : SEGMENT_MAX;
}

size_t rt_comm_mpi_segment_elems(void) { return segment_elems; }

static MPI_Comm mpi_of(rt_comm *comm) { return ((comm_impl *)comm->impl)->mpi; }

MPI_Comm rt_comm_mpi_handle(rt_comm *comm) { return mpi_of(comm); }

static size_t min_size(size_t a, size_t b) { return a < b ? a : b; }

static size_t checked_mul(size_t a, size_t b, const char *what) {
    size_t product;
    if (__builtin_mul_overflow(a, b, &product)) rt_fatal("%s: %zu x %zu overflows size_t", what, a, b);
    return product;
}

/* Pieces of each rank's block per round: the round's total (size * len) stays within one segment. */
static size_t round_len(const rt_comm *comm) {
    size_t len = segment_elems / (size_t)comm->size;
    return len > 0 ? len : 1;
}

static float *staging(rt_comm *comm, size_t elems) {
    comm_impl *impl = comm->impl;
    if (impl->staging_elems < elems) {
        free(impl->staging);
        impl->staging = malloc_check(checked_mul(elems, sizeof(float), "communicator staging"));
        impl->staging_elems = elems;
    }
    return impl->staging;
}

static void allreduce(rt_comm *comm, void *buf, size_t n, MPI_Datatype type, size_t elem, MPI_Op op) {
    if (comm->size == 1) return;
    for (size_t done = 0; done < n; done += segment_elems) {
        size_t count = min_size(n - done, segment_elems);
        MPI_Allreduce(MPI_IN_PLACE, (char *)buf + done * elem, (int)count, type, op, mpi_of(comm));
    }
}

static void allreduce_sum_f32(rt_comm *comm, float *buf, size_t n) {
    allreduce(comm, buf, n, MPI_FLOAT, sizeof(float), MPI_SUM);
}
static void allreduce_sum_f64(rt_comm *comm, double *buf, size_t n) {
    allreduce(comm, buf, n, MPI_DOUBLE, sizeof(double), MPI_SUM);
}
static void allreduce_max_f64(rt_comm *comm, double *buf, size_t n) {
    allreduce(comm, buf, n, MPI_DOUBLE, sizeof(double), MPI_MAX);
}

/* Reduce-scatter of blocks of counts[q] floats (at the prefix sums of counts in send) in rounds; see the top. */
static void reduce_scatter_rounds(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    const int size = comm->size;
    const size_t len = round_len(comm);
    size_t longest = 0;
    for (int q = 0; q < size; q++)
        if (counts[q] > longest) longest = counts[q];
    float *packed = staging(comm, checked_mul((size_t)size, len, "reduce_scatter round"));
    int *round_counts = malloc_check((size_t)size * sizeof *round_counts);
    for (size_t offset = 0; offset < longest; offset += len) {
        size_t packed_n = 0, block_begin = 0;
        for (int q = 0; q < size; q++) {
            size_t piece = counts[q] > offset ? min_size(counts[q] - offset, len) : 0;
            memcpy(packed + packed_n, send + block_begin + offset, piece * sizeof(float));
            round_counts[q] = (int)piece;
            packed_n += piece;
            block_begin += counts[q];
        }
        MPI_Reduce_scatter(packed, recv + offset, round_counts, MPI_FLOAT, MPI_SUM, mpi_of(comm));
    }
    free(round_counts);
}

static void reduce_scatter_sum_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    size_t per_rank = n / (size_t)comm->size;
    if (per_rank * (size_t)comm->size != n)
        rt_fatal("reduce_scatter of %zu floats over %d ranks: count must divide by the rank count", n, comm->size);
    if (comm->size == 1) {
        if (send != recv) memcpy(recv, send, n * sizeof(float));
    } else if (n <= segment_elems) {
        MPI_Reduce_scatter_block(send == recv ? MPI_IN_PLACE : send, recv, (int)per_rank, MPI_FLOAT, MPI_SUM,
                                 mpi_of(comm));
    } else {
        size_t *counts = malloc_check((size_t)comm->size * sizeof *counts);
        for (int q = 0; q < comm->size; q++)
            counts[q] = per_rank;
        reduce_scatter_rounds(comm, recv, send, counts);
        free(counts);
    }
}

static void reduce_scatter_sum_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    size_t total = 0;
    for (int q = 0; q < comm->size; q++)
        if (__builtin_add_overflow(total, counts[q], &total)) rt_fatal("reduce_scatter counts overflow size_t");
    if (comm->size == 1) {
        if (send != recv) memcpy(recv, send, counts[0] * sizeof(float));
    } else if (total <= segment_elems) {
        int *int_counts = malloc_check((size_t)comm->size * sizeof *int_counts);
        for (int q = 0; q < comm->size; q++)
            int_counts[q] = (int)counts[q];
        MPI_Reduce_scatter(send == recv ? MPI_IN_PLACE : send, recv, int_counts, MPI_FLOAT, MPI_SUM, mpi_of(comm));
        free(int_counts);
    } else {
        reduce_scatter_rounds(comm, recv, send, counts);
    }
}

static void allgather_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    const size_t size = (size_t)comm->size;
    const float *mine = recv + checked_mul((size_t)comm->rank, n, "allgather");
    const int in_place = send == mine;
    if (checked_mul(size, n, "allgather") <= segment_elems) {
        MPI_Allgather(in_place ? MPI_IN_PLACE : send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, mpi_of(comm));
        return;
    }
    const size_t len = round_len(comm);
    float *packed = staging(comm, checked_mul(size, len, "allgather round"));
    for (size_t offset = 0; offset < n; offset += len) {
        size_t piece = min_size(n - offset, len);
        MPI_Allgather(send + offset, (int)piece, MPI_FLOAT, packed, (int)piece, MPI_FLOAT, mpi_of(comm));
        for (size_t q = 0; q < size; q++)
            if (!(in_place && q == (size_t)comm->rank))
                memcpy(recv + q * n + offset, packed + q * piece, piece * sizeof(float));
    }
}

static void broadcast(rt_comm *comm, void *buf, size_t bytes, int root);

static void allgather_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    const int size = comm->size;
    size_t total = 0, mine_at = 0;
    for (int q = 0; q < size; q++) {
        if (q == comm->rank) mine_at = total;
        if (__builtin_add_overflow(total, counts[q], &total)) rt_fatal("allgather counts overflow size_t");
    }
    const int in_place = send == recv + mine_at;
    if (total <= segment_elems) {
        int *int_counts = malloc_check((size_t)size * 2 * sizeof *int_counts), *displs = int_counts + size;
        for (int q = 0, at = 0; q < size; at += int_counts[q], q++) {
            int_counts[q] = (int)counts[q];
            displs[q] = at;
        }
        MPI_Allgatherv(in_place ? MPI_IN_PLACE : send, (int)counts[comm->rank], MPI_FLOAT, recv, int_counts, displs,
                       MPI_FLOAT, mpi_of(comm));
        free(int_counts);
        return;
    }
    if (!in_place) memcpy(recv + mine_at, send, counts[comm->rank] * sizeof(float));
    size_t at = 0;
    for (int q = 0; q < size; q++) {
        broadcast(comm, recv + at, counts[q] * sizeof(float), q);
        at += counts[q];
    }
}

static void broadcast(rt_comm *comm, void *buf, size_t bytes, int root) {
    for (size_t done = 0; done < bytes; done += segment_elems) {
        size_t count = min_size(bytes - done, segment_elems);
        MPI_Bcast((char *)buf + done, (int)count, MPI_BYTE, root, mpi_of(comm));
    }
}

static void barrier(rt_comm *comm) { MPI_Barrier(mpi_of(comm)); }

/* Requests are grown one per piece; one transfer is almost always one piece. */
static MPI_Request *request_slots(rt_comm_request *req, size_t bytes) {
    size_t pieces = bytes / segment_elems + (bytes % segment_elems != 0);
    if (pieces == 0) pieces = 1;
    if (pieces > (size_t)(INT_MAX - req->n)) rt_fatal("transfer of %zu bytes needs too many MPI requests", bytes);
    MPI_Request *grown = realloc(req->impl, ((size_t)req->n + pieces) * sizeof(MPI_Request));
    if (!grown) rt_fatal("out of host memory for MPI requests");
    req->impl = grown;
    MPI_Request *slots = grown + req->n;
    req->n += (int)pieces;
    return slots;
}

static void isend(rt_comm *comm, const void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    MPI_Request *slots = request_slots(req, bytes);
    size_t piece = 0;
    do {
        size_t off = piece * segment_elems, count = min_size(bytes - off, segment_elems);
        MPI_Isend((const char *)buf + off, (int)count, MPI_BYTE, peer, tag, mpi_of(comm), &slots[piece]);
    } while (++piece * segment_elems < bytes);
}

static void irecv(rt_comm *comm, void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    MPI_Request *slots = request_slots(req, bytes);
    size_t piece = 0;
    do {
        size_t off = piece * segment_elems, count = min_size(bytes - off, segment_elems);
        MPI_Irecv((char *)buf + off, (int)count, MPI_BYTE, peer, tag, mpi_of(comm), &slots[piece]);
    } while (++piece * segment_elems < bytes);
}

static void wait_all(rt_comm *comm, rt_comm_request *req) {
    (void)comm;
    if (req->n) MPI_Waitall(req->n, (MPI_Request *)req->impl, MPI_STATUSES_IGNORE);
    free(req->impl);
    req->impl = NULL;
    req->n = 0;
}

/* A nonblocking collective's request impl: the MPI request first, so wait_all sees an MPI_Request[1], then the
 * int counts and displacements MPI reads until the collective completes. */
typedef struct {
    MPI_Request request;
    int ints[];
} collective_request;

static int *post_collective(rt_comm_request *req, int size) {
    if (req->n != 0) rt_fatal("a nonblocking collective posted on a request that is still pending");
    collective_request *c = malloc_check(sizeof *c + 2 * (size_t)size * sizeof(int));
    req->impl = c;
    req->n = 1;
    return c->ints;
}

/* Sum of counts, or SIZE_MAX when past one segment (then the blocking rounds run at the post). */
static size_t one_segment_total(const rt_comm *comm, const size_t *counts) {
    size_t total = 0;
    for (int q = 0; q < comm->size; q++)
        if (__builtin_add_overflow(total, counts[q], &total) || total > segment_elems) return SIZE_MAX;
    return total;
}

static void ireduce_scatter_sum_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                                      rt_comm_request *req) {
    if (comm->size == 1 || one_segment_total(comm, counts) == SIZE_MAX) {
        reduce_scatter_sum_f32_v(comm, recv, send, counts);
        return;
    }
    int *ints = post_collective(req, comm->size);
    for (int q = 0; q < comm->size; q++)
        ints[q] = (int)counts[q];
    MPI_Ireduce_scatter(send, recv, ints, MPI_FLOAT, MPI_SUM, mpi_of(comm),
                        &((collective_request *)req->impl)->request);
}

static void iallgather_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts,
                             rt_comm_request *req) {
    if (comm->size == 1 || one_segment_total(comm, counts) == SIZE_MAX) {
        allgather_f32_v(comm, recv, send, counts);
        return;
    }
    int *ints = post_collective(req, comm->size), *displs = ints + comm->size;
    for (int q = 0, at = 0; q < comm->size; at += ints[q], q++) {
        ints[q] = (int)counts[q];
        displs[q] = at;
    }
    MPI_Iallgatherv(send, ints[comm->rank], MPI_FLOAT, recv, ints, displs, MPI_FLOAT, mpi_of(comm),
                    &((collective_request *)req->impl)->request);
}

static void progress(rt_comm *comm, rt_comm_request *req) {
    (void)comm;
    int done;
    if (req->n) MPI_Testall(req->n, (MPI_Request *)req->impl, &done, MPI_STATUSES_IGNORE);
}

static rt_comm *wrap(MPI_Comm mpi_comm);

static rt_comm *split(rt_comm *comm, int color, int key) {
    MPI_Comm sub;
    MPI_Comm_split(mpi_of(comm), color, key, &sub);
    return wrap(sub);
}

static rt_comm *split_node(rt_comm *comm) {
    MPI_Comm node;
    MPI_Comm_split_type(mpi_of(comm), MPI_COMM_TYPE_SHARED, comm->rank, MPI_INFO_NULL, &node);
    return wrap(node);
}

static void destroy(rt_comm *comm) {
    if (!comm) return;
    comm_impl *impl = comm->impl;
    if (impl->mpi != MPI_COMM_WORLD) MPI_Comm_free(&impl->mpi);
    if (comm == world) world = NULL;
    free(impl->staging);
    free(impl);
    free(comm);
}

static const rt_comm_ops mpi_ops = {
    .allreduce_sum_f32 = allreduce_sum_f32,
    .allreduce_sum_f64 = allreduce_sum_f64,
    .allreduce_max_f64 = allreduce_max_f64,
    .reduce_scatter_sum_f32 = reduce_scatter_sum_f32,
    .reduce_scatter_sum_f32_v = reduce_scatter_sum_f32_v,
    .allgather_f32 = allgather_f32,
    .allgather_f32_v = allgather_f32_v,
    .broadcast = broadcast,
    .barrier = barrier,
    .isend = isend,
    .irecv = irecv,
    .wait = wait_all,
    .ireduce_scatter_sum_f32_v = ireduce_scatter_sum_f32_v,
    .iallgather_f32_v = iallgather_f32_v,
    .progress = progress,
    .split = split,
    .split_node = split_node,
    .destroy = destroy,
};

static rt_comm *wrap(MPI_Comm mpi_comm) {
    rt_comm *comm = calloc_check(1, sizeof *comm);
    comm_impl *impl = calloc_check(1, sizeof *impl);
    impl->mpi = mpi_comm;
    comm->ops = &mpi_ops;
    comm->impl = impl;
    MPI_Comm_rank(mpi_comm, &comm->rank);
    MPI_Comm_size(mpi_comm, &comm->size);
    return comm;
}

static pthread_t mpi_thread; /* the thread that initialized MPI: under FUNNELED the only one that may call it */

static void abort_job(int exit_code) {
    /* rt_fatal on an OpenMP or copy-engine thread: MPI may not be called here, so this process ends alone
     * (_exit: no atexit handler touches MPI); mpirun sees a rank die without finalizing and ends the job. */
    if (!pthread_equal(pthread_self(), mpi_thread)) _exit(exit_code);
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

static const char *thread_level_name(int level) {
    switch (level) {
    case MPI_THREAD_SINGLE: return "MPI_THREAD_SINGLE";
    case MPI_THREAD_FUNNELED: return "MPI_THREAD_FUNNELED";
    case MPI_THREAD_SERIALIZED: return "MPI_THREAD_SERIALIZED";
    case MPI_THREAD_MULTIPLE: return "MPI_THREAD_MULTIPLE";
    default: return "an unknown thread level";
    }
}

rt_comm *rt_comm_world_mpi(int *argc, char ***argv) {
    if (world) return world;
    int initialized = 0, provided = MPI_THREAD_SINGLE;
    MPI_Initialized(&initialized);
    if (!initialized)
        MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
    else
        MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_FUNNELED) {
        int rank = 0;
        MPI_Comm_rank(MPI_COMM_WORLD, &rank);
        if (rank == 0)
            fprintf(stderr,
                    "ringtrain: the MPI library provides %s; ringtrain needs MPI_THREAD_FUNNELED (OpenMP and "
                    "copy-engine threads run beside the thread that calls MPI)\n",
                    thread_level_name(provided));
        MPI_Finalize();
        exit(1);
    }
    mpi_thread = pthread_self();
    /* Every rank must cut collectives into the same rounds: rank 0's setting (environments can differ
     * between nodes, e.g. mpirun without -x) is the job's. */
    const char *segment = getenv("RINGTRAIN_COMM_SEGMENT");
    unsigned long long segment_elems = segment && segment[0] ? strtoull(segment, NULL, 10) : 0;
    MPI_Bcast(&segment_elems, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD);
    if (segment_elems) rt_comm_mpi_set_segment_elems((size_t)segment_elems);
    world = wrap(MPI_COMM_WORLD);
    /* A single rank exits normally: MPI_Abort would print a noisy banner for a plain input error. */
    if (world->size > 1) rt_set_abort_hook(abort_job);
    return world;
}

void rt_comm_finalize(void) {
    if (world) destroy(world);
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (!finalized) MPI_Finalize();
}

int rt_comm_agree(rt_comm *world, int rc, rt_error *err) {
    double first_failing = rc ? (double)world->rank : (double)world->size;
    double negated = -first_failing; /* the communicator has max, not min */
    rt_allreduce_max_f64(world, &negated, 1);
    int first = (int)-negated;
    if (first >= world->size) return 0;
    if (world->rank != first) err->msg[0] = '\0';
    return -1;
}
