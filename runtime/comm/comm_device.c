/*
 * comm_device.c: picks the device plane of a host comm (direct, nccl or staged) and tells planes apart.
 *
 * The choice (see comm_device.h) must be the same on every rank of host:
 * the planes' collectives only match when every rank runs the same kind.
 * So rank 0's RINGTRAIN_DEVICE_PLANE is broadcast over host before anyone
 * looks at it (environments can differ between nodes, e.g. mpirun without
 * -x), the backend kind is the job's (device.kind is one setting of the
 * agreed config, so be->name is the same on every rank), and the one input
 * that really differs per rank, which GPU it uses, goes through the
 * collective rt_comm_nccl_usable, which gives every rank the same answer.
 * Hence a refusal is the same line on every rank, and every rank returns.
 *
 * Unset, the best that works: direct on CPU (its device memory is host
 * memory); otherwise nccl when this build has NCCL and no two ranks share a
 * GPU; otherwise staged.
 *
 * A plane's kind is read off its ops table: the staged and NCCL planes have
 * their own tables; anything else is a host comm, used directly.
 */
#include <stdlib.h>
#include <string.h>

#include "comm.h"
#include "comm_device.h"
#include "runtime/core/common.h"

#define ASKED_LEN 64 /* longer values cannot be a kind; they arrive cut and are refused */

static const char *const kind_names[] = {
    [RT_PLANE_DIRECT] = "direct", [RT_PLANE_NCCL] = "nccl", [RT_PLANE_STAGED] = "staged"};

const char *rt_comm_plane_kind_name(rt_plane_kind kind) {
    if ((int)kind < 0 || (size_t)kind >= sizeof kind_names / sizeof *kind_names) return "unknown";
    return kind_names[kind];
}

rt_plane_kind rt_comm_plane_kind(const rt_comm *plane) {
    if (plane->ops == &rt_comm_staged_ops) return RT_PLANE_STAGED;
#ifdef RINGTRAIN_HAVE_NCCL
    if (plane->ops == &rt_comm_nccl_ops) return RT_PLANE_NCCL;
#endif
    return RT_PLANE_DIRECT;
}

void rt_comm_device_plane_free(rt_comm *plane) {
    if (!plane || rt_comm_plane_kind(plane) == RT_PLANE_DIRECT) return; /* the host comm: not ours */
    rt_comm_destroy(plane);
}

/* What the unset variable means on a device backend. Collective over host (rt_comm_nccl_usable). */
static rt_plane_kind best_device_kind(rt_comm *host, const rt_backend *be) {
#ifdef RINGTRAIN_HAVE_NCCL
    if (rt_comm_nccl_usable(host, be, NULL)) return RT_PLANE_NCCL;
#else
    (void)host, (void)be;
#endif
    return RT_PLANE_STAGED;
}

/* The kind asked for (every rank sees rank 0's text); -1 with err when it cannot run here. Collective. */
static int decide(rt_comm *host, const rt_backend *be, const char *asked, rt_plane_kind *kind, rt_error *err) {
    const int on_cpu = strcmp(be->name, "cpu") == 0;
    if (asked[0] == '\0') {
        *kind = on_cpu ? RT_PLANE_DIRECT : best_device_kind(host, be);
        return 0;
    }
    int known = 0;
    for (size_t k = 0; k < sizeof kind_names / sizeof *kind_names; k++)
        if (strcmp(asked, kind_names[k]) == 0) *kind = (rt_plane_kind)k, known = 1;
    if (!known)
        return rt_fail(err,
                       "RINGTRAIN_DEVICE_PLANE = %s: expected direct, nccl or staged (or unset: the best that "
                       "works here)",
                       asked);
    if (*kind == RT_PLANE_DIRECT && !on_cpu)
        return rt_fail(err,
                       "RINGTRAIN_DEVICE_PLANE = direct: the %s backend's buffers are device memory and MPI takes "
                       "host memory; direct needs device.kind = cpu (use nccl or staged)",
                       be->name);
    if (*kind == RT_PLANE_NCCL) {
#ifdef RINGTRAIN_HAVE_NCCL
        rt_error why = {{0}};
        if (!rt_comm_nccl_usable(host, be, &why)) return rt_fail(err, "RINGTRAIN_DEVICE_PLANE = nccl: %s", why.msg);
#else
        return rt_fail(err, "RINGTRAIN_DEVICE_PLANE = nccl: this build has no NCCL (use staged, or build where "
                            "NCCL is found)");
#endif
    }
    return 0;
}

int rt_comm_device_plane(rt_comm **out, rt_comm *host, const rt_backend *be, rt_error *err) {
    *out = NULL;
    char asked[ASKED_LEN] = {0};
    if (host->rank == 0) {
        const char *env = getenv("RINGTRAIN_DEVICE_PLANE");
        if (env) snprintf(asked, sizeof asked, "%s", env);
    }
    rt_comm_broadcast(host, asked, sizeof asked, 0);
    rt_plane_kind kind = RT_PLANE_DIRECT;
    if (decide(host, be, asked, &kind, err)) return -1;
    switch (kind) {
    case RT_PLANE_DIRECT: *out = host; return 0;
    case RT_PLANE_STAGED: *out = rt_comm_staged_plane(host, be); return 0;
    case RT_PLANE_NCCL: break;
    }
#ifdef RINGTRAIN_HAVE_NCCL
    /* NCCL can fail on one rank (its own error): every rank learns it, the lowest failing rank's line wins. */
    rt_error made = {{0}};
    rt_comm *plane = rt_comm_nccl_plane(host, be, &made);
    if (rt_comm_agree(host, plane ? 0 : -1, &made)) {
        rt_comm_device_plane_free(plane);
        return rt_fail(err, "%s", made.msg);
    }
    *out = plane;
    return 0;
#else
    rt_fatal("device plane: nccl chosen in a build without NCCL"); /* decide refuses it */
#endif
}
