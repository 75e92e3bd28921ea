/* comm_device.h: the device plane of communication: collectives and ring transfers on device buffers. */
#ifndef RT_COMM_DEVICE_H
#define RT_COMM_DEVICE_H

#include "comm.h"
#include "runtime/backend/backend.h"
#include "runtime/core/common.h"

/*
 * Communication runs in two planes. The host plane (the rt_comm of MPI that
 * rt_comm_world_mpi and split make) carries small host values: agreement,
 * loss sums, gradient norms, configuration. The device plane carries device
 * buffers: ring attention's K/V and dK/dV blocks, ZeRO's reduce-scatter and
 * all-gather. A device plane is an rt_comm too, with the same ops table and
 * contract (comm.h), except that every buffer is a device pointer of its
 * backend; seqpar and shard take whichever plane they are given.
 *
 * Kinds, chosen by rt_comm_device_plane:
 * - direct: the backend's device memory is host memory (CPU), so the plane
 *   is the host communicator itself, shared, not owned: free it with
 *   rt_comm_device_plane_free (a no-op for it), never with ops->destroy.
 * - nccl: one NCCL communicator per plane, made from an id that rank 0
 *   draws and the host plane broadcasts; collectives run on the backend
 *   instance's communication stream (one for all its planes), ordered after
 *   the compute issued before them and before the compute issued after them
 *   (a nonblocking one: after its wait; events, no host wait). Needs every
 *   rank of the plane on its own GPU (NCCL refuses two ranks on one).
 * - staged: device -> pinned host -> MPI -> device, through host buffers
 *   the plane allocates once (grown to the largest call, never per step),
 *   for ranks that share a GPU, so the ring and ZeRO logic run and are
 *   tested on one GPU; and on CPU, where the test suite forces it
 *   (RINGTRAIN_DEVICE_PLANE=staged) to keep the path honest.
 * The environment variable RINGTRAIN_DEVICE_PLANE (direct, nccl, staged;
 * unset = the best that works) overrides the choice; the value of rank 0
 * of host wins (host's rank 0, not the world's: one setting per job, as
 * mpirun -x or SLURM's export give, keeps every plane of a job alike).
 *
 * split and split_node of a device plane return host-plane communicators:
 * a device plane is made per mesh dimension from that dimension's host comm.
 */
typedef enum { RT_PLANE_DIRECT = 0, RT_PLANE_NCCL, RT_PLANE_STAGED } rt_plane_kind;

/* The device plane over the ranks of host, for buffers of be. Collective over host. -1 with err (every rank
 * alike) when the kind asked for cannot run here ("RINGTRAIN_DEVICE_PLANE = nccl: this build has no NCCL"). */
int rt_comm_device_plane(rt_comm **out, rt_comm *host, const rt_backend *be, rt_error *err);
/* The kind of a plane from rt_comm_device_plane (told by its ops table; any other comm reads as direct). */
rt_plane_kind rt_comm_plane_kind(const rt_comm *plane);
const char *rt_comm_plane_kind_name(rt_plane_kind kind);
/* Frees a plane from rt_comm_device_plane (not the host comm it came from; a direct plane is that comm, so
 * nothing). Safe on NULL. Every transfer posted on it must have been waited for. */
void rt_comm_device_plane_free(rt_comm *plane);

/* The staged plane (comm_staged.c), on any backend: also what rt_comm_device_plane picks when asked.
 * Collective only in that every rank of host makes one (nothing is exchanged); host must outlive it. */
rt_comm *rt_comm_staged_plane(rt_comm *host, const rt_backend *be);

/* Test only: what the staged plane holds in host_alloc memory and how many host_alloc calls made it, so
 * tests can check that a steady loop allocates nothing. */
typedef struct {
    size_t allocations;      /* host_alloc calls so far (collective staging and transfer buffers) */
    size_t staging_bytes;    /* the collectives' staging buffer */
    size_t transfer_buffers; /* the isend/irecv buffer pool */
    size_t transfer_bytes;
} rt_comm_staged_stats;
void rt_comm_staged_stats_of(const rt_comm *plane, rt_comm_staged_stats *out);

/* The ops tables of the owned planes: rt_comm_plane_kind tells a plane by its table (a plane with any
 * other table is the host comm itself, i.e. direct). */
extern const rt_comm_ops rt_comm_staged_ops;

#ifdef RINGTRAIN_HAVE_NCCL
/* The NCCL plane (comm_nccl.c): NULL with err when NCCL fails to make the communicator. Collective.
 * Tags of isend/irecv are not sent: NCCL matches the transfers between two ranks in the order they were
 * posted, so both sides must post them in the same order (the ring does). */
rt_comm *rt_comm_nccl_plane(rt_comm *host, const rt_backend *be, rt_error *err);
/* Collective over host: 1 when be is a CUDA backend and no two ranks of host use the same GPU (same node,
 * same PCI bus id), the same answer on every rank; else 0 with why (may be NULL) naming the reason. */
int rt_comm_nccl_usable(rt_comm *host, const rt_backend *be, rt_error *why);
extern const rt_comm_ops rt_comm_nccl_ops;
#endif

#endif
