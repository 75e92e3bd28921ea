/* comm_mpi.c: the MPI implementation of the communicator interface. */
#include <mpi.h>
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "common.h"

/* MPI counts are int: move large buffers in pieces of at most this many elements. */
#define MPI_CHUNK ((size_t)1 << 30)

static rt_comm *world;

static MPI_Comm mpi_of(rt_comm *comm) { return *(MPI_Comm *)comm->impl; }

static void allreduce(rt_comm *comm, void *buf, size_t n, MPI_Datatype type, size_t elem, MPI_Op op) {
    if (comm->size == 1) return;
    for (size_t done = 0; done < n; done += MPI_CHUNK) {
        size_t count = n - done < MPI_CHUNK ? n - done : MPI_CHUNK;
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

static void reduce_scatter_sum_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    size_t per_rank = n / (size_t)comm->size;
    if (per_rank * (size_t)comm->size != n)
        rt_fatal("reduce_scatter of %zu floats over %d ranks: count must divide by the rank count", n, comm->size);
    if (per_rank > MPI_CHUNK)
        rt_fatal("reduce_scatter of %zu floats per rank is larger than one MPI call takes", per_rank);
    if (send == recv) /* in place: the rank's slice lands at the start of the buffer */
        MPI_Reduce_scatter_block(MPI_IN_PLACE, recv, (int)per_rank, MPI_FLOAT, MPI_SUM, mpi_of(comm));
    else
        MPI_Reduce_scatter_block(send, recv, (int)per_rank, MPI_FLOAT, MPI_SUM, mpi_of(comm));
}

static void reduce_scatter_sum_f32_v(rt_comm *comm, float *recv, const float *send, const size_t *counts) {
    int *int_counts = malloc_check((size_t)comm->size * sizeof *int_counts);
    for (int q = 0; q < comm->size; q++) {
        if (counts[q] > MPI_CHUNK)
            rt_fatal("reduce_scatter of %zu floats to one rank is larger than one MPI call takes", counts[q]);
        int_counts[q] = (int)counts[q];
    }
    if (comm->size == 1)
        memcpy(recv, send, counts[0] * sizeof(float));
    else
        MPI_Reduce_scatter(send, recv, int_counts, MPI_FLOAT, MPI_SUM, mpi_of(comm));
    free(int_counts);
}

static void allgather_f32(rt_comm *comm, float *recv, const float *send, size_t n) {
    if (n > MPI_CHUNK) rt_fatal("allgather of %zu floats per rank is larger than one MPI call takes", n);
    MPI_Allgather(send, (int)n, MPI_FLOAT, recv, (int)n, MPI_FLOAT, mpi_of(comm));
}

static void broadcast(rt_comm *comm, void *buf, size_t bytes, int root) {
    for (size_t done = 0; done < bytes; done += MPI_CHUNK) {
        size_t count = bytes - done < MPI_CHUNK ? bytes - done : MPI_CHUNK;
        MPI_Bcast((char *)buf + done, (int)count, MPI_BYTE, root, mpi_of(comm));
    }
}

static void barrier(rt_comm *comm) { MPI_Barrier(mpi_of(comm)); }

/* Requests are grown one per chunk; one transfer is almost always one chunk. */
static MPI_Request *request_slots(rt_comm_request *req, int extra) {
    MPI_Request *grown = realloc(req->impl, (size_t)(req->n + extra) * sizeof(MPI_Request));
    if (!grown) rt_fatal("out of host memory for MPI requests");
    req->impl = grown;
    MPI_Request *slots = grown + req->n;
    req->n += extra;
    return slots;
}

static void isend(rt_comm *comm, const void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    int chunks = (int)((bytes + MPI_CHUNK - 1) / MPI_CHUNK);
    if (chunks == 0) chunks = 1;
    MPI_Request *slots = request_slots(req, chunks);
    for (int c = 0; c < chunks; c++) {
        size_t off = (size_t)c * MPI_CHUNK, count = bytes - off < MPI_CHUNK ? bytes - off : MPI_CHUNK;
        MPI_Isend((const char *)buf + off, (int)count, MPI_BYTE, peer, tag, mpi_of(comm), &slots[c]);
    }
}

static void irecv(rt_comm *comm, void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    int chunks = (int)((bytes + MPI_CHUNK - 1) / MPI_CHUNK);
    if (chunks == 0) chunks = 1;
    MPI_Request *slots = request_slots(req, chunks);
    for (int c = 0; c < chunks; c++) {
        size_t off = (size_t)c * MPI_CHUNK, count = bytes - off < MPI_CHUNK ? bytes - off : MPI_CHUNK;
        MPI_Irecv((char *)buf + off, (int)count, MPI_BYTE, peer, tag, mpi_of(comm), &slots[c]);
    }
}

static void wait_all(rt_comm *comm, rt_comm_request *req) {
    (void)comm;
    if (req->n) MPI_Waitall(req->n, (MPI_Request *)req->impl, MPI_STATUSES_IGNORE);
    free(req->impl);
    req->impl = NULL;
    req->n = 0;
}

static rt_comm *wrap(MPI_Comm mpi_comm);

static rt_comm *split(rt_comm *comm, int color, int key) {
    MPI_Comm sub;
    MPI_Comm_split(mpi_of(comm), color, key, &sub);
    return wrap(sub);
}

static void destroy(rt_comm *comm) {
    if (!comm) return;
    MPI_Comm mpi_comm = mpi_of(comm);
    if (mpi_comm != MPI_COMM_WORLD) MPI_Comm_free(&mpi_comm);
    if (comm == world) world = NULL;
    free(comm->impl);
    free(comm);
}

static const rt_comm_ops mpi_ops = {
    .allreduce_sum_f32 = allreduce_sum_f32,
    .allreduce_sum_f64 = allreduce_sum_f64,
    .allreduce_max_f64 = allreduce_max_f64,
    .reduce_scatter_sum_f32 = reduce_scatter_sum_f32,
    .reduce_scatter_sum_f32_v = reduce_scatter_sum_f32_v,
    .allgather_f32 = allgather_f32,
    .broadcast = broadcast,
    .barrier = barrier,
    .isend = isend,
    .irecv = irecv,
    .wait = wait_all,
    .split = split,
    .destroy = destroy,
};

static rt_comm *wrap(MPI_Comm mpi_comm) {
    rt_comm *comm = calloc_check(1, sizeof *comm);
    MPI_Comm *held = malloc_check(sizeof *held);
    *held = mpi_comm;
    comm->ops = &mpi_ops;
    comm->impl = held;
    MPI_Comm_rank(mpi_comm, &comm->rank);
    MPI_Comm_size(mpi_comm, &comm->size);
    return comm;
}

static void abort_job(int exit_code) {
    int initialized = 0, finalized = 0;
    MPI_Initialized(&initialized);
    MPI_Finalized(&finalized);
    if (initialized && !finalized) MPI_Abort(MPI_COMM_WORLD, exit_code);
}

rt_comm *rt_comm_world_mpi(int *argc, char ***argv) {
    if (world) return world;
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) MPI_Init(argc, argv);
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
