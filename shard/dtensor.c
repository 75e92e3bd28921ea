/* dtensor.c: local boxes of distributed tensors and redistribution between placements. */
#include "dtensor.h"

#include <stdlib.h>
#include <string.h>

/*
 * A box is the part of the global tensor a buffer covers: offset and size
 * per tensor dim; the buffer holds it row-major and contiguous. Every data
 * movement below is "copy a region, contained in two boxes, from a buffer
 * laid out by one box into a buffer laid out by the other" (copy_region):
 * slicing, packing for a send, unpacking a receive, dropping padding.
 *
 * Redistribution changes one mesh dim m at a time. Ranks that differ only in
 * coordinate m form the group comm[m]. When no later mesh dim shards the
 * tensor dim being moved, the group's members cover one common "group box"
 * (their box with m replicated) and mesh dim m simply splits it, so the move
 * is one collective over comm[m]. Uneven splits use padded chunks: chunk i
 * of the group box is laid out in a frame of ceil(extent / n) rows along the
 * sharded dim (padded_frame) so every rank sends and receives the same count.
 *
 * With nested sharding (a later mesh dim splits the chunks mesh dim m
 * makes), the group box is not common, and the move is a general exchange:
 * every rank sends each other rank the intersection of its old box with
 * that rank's new box (exchange_boxes). A receiver takes each element from
 * exactly one sender: the ranks that agree with it on every mesh dim that is
 * not Shard in the old layout. Their old boxes tile the global tensor, and
 * a Partial dim that stays Partial keeps its own partial sums.
 */

typedef struct {
    size_t offset[RT_DTENSOR_MAX_DIMS];
    size_t size[RT_DTENSOR_MAX_DIMS];
} box;

/* Tag of redistribution messages; one message per ordered pair and move, so MPI's ordering keeps moves apart. */
#define REDISTRIBUTE_TAG 4242

static int same_placement(rt_placement a, rt_placement b) {
    return a.kind == b.kind && (a.kind != RT_SHARD || a.dim == b.dim);
}

static int check_placements(const rt_mesh *mesh, int ndim, const rt_placement *placements, rt_error *err) {
    for (int m = 0; m < mesh->ndim; m++) {
        rt_placement p = placements[m];
        if (p.kind != RT_REPLICATE && p.kind != RT_SHARD && p.kind != RT_PARTIAL_SUM)
            return rt_fail(err, "placement on mesh dim %d: unknown kind %d", m, (int)p.kind);
        if (p.kind == RT_SHARD && (p.dim < 0 || p.dim >= ndim))
            return rt_fail(err, "placement on mesh dim %d is Shard(%d), but the tensor has %d dims", m, p.dim, ndim);
    }
    return 0;
}

int rt_dtensor_init(rt_dtensor *t, const rt_mesh *mesh, int ndim, const size_t *shape, const rt_placement *placements,
                    rt_error *err) {
    memset(t, 0, sizeof *t);
    if (ndim < 1 || ndim > RT_DTENSOR_MAX_DIMS)
        return rt_fail(err, "tensor of %d dims: expected 1 to %d", ndim, RT_DTENSOR_MAX_DIMS);
    if (check_placements(mesh, ndim, placements, err)) return -1;
    t->mesh = mesh;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    memcpy(t->placements, placements, (size_t)mesh->ndim * sizeof *placements);
    return 0;
}

void rt_shard_chunk(size_t extent, int parts, int index, size_t *offset, size_t *size) {
    size_t chunk = (extent + (size_t)parts - 1) / (size_t)parts;
    size_t begin = (size_t)index * chunk, end = begin + chunk;
    if (begin > extent) begin = extent;
    if (end > extent) end = extent;
    *offset = begin;
    *size = end - begin;
}

/* The box of the rank at coords under placements (which may differ from t->placements). */
static void box_of(const rt_dtensor *t, const rt_placement *placements, const int *coords, box *out) {
    for (int d = 0; d < t->ndim; d++) {
        out->offset[d] = 0;
        out->size[d] = t->shape[d];
    }
    for (int m = 0; m < t->mesh->ndim; m++) {
        if (placements[m].kind != RT_SHARD) continue;
        int d = placements[m].dim;
        size_t offset, size;
        rt_shard_chunk(out->size[d], t->mesh->shape[m], coords[m], &offset, &size);
        out->offset[d] += offset;
        out->size[d] = size;
    }
}

static size_t box_numel(int ndim, const box *b) {
    size_t n = 1;
    for (int d = 0; d < ndim; d++)
        n *= b->size[d];
    return n;
}

void rt_dtensor_local_box(const rt_dtensor *t, const int *mesh_coords, size_t offset[], size_t size[]) {
    box b;
    box_of(t, t->placements, mesh_coords ? mesh_coords : t->mesh->coords, &b);
    memcpy(offset, b.offset, (size_t)t->ndim * sizeof *offset);
    memcpy(size, b.size, (size_t)t->ndim * sizeof *size);
}

size_t rt_dtensor_local_numel(const rt_dtensor *t, const int *mesh_coords) {
    box b;
    box_of(t, t->placements, mesh_coords ? mesh_coords : t->mesh->coords, &b);
    return box_numel(t->ndim, &b);
}

size_t rt_dtensor_numel(const rt_dtensor *t) {
    size_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

/* out = a intersected with b; returns its element count (0: empty). */
static size_t box_intersect(int ndim, const box *a, const box *b, box *out) {
    for (int d = 0; d < ndim; d++) {
        size_t lo = a->offset[d] > b->offset[d] ? a->offset[d] : b->offset[d];
        size_t a_end = a->offset[d] + a->size[d], b_end = b->offset[d] + b->size[d];
        size_t hi = a_end < b_end ? a_end : b_end;
        out->offset[d] = lo;
        out->size[d] = hi > lo ? hi - lo : 0;
    }
    return box_numel(ndim, out);
}

/* Copies region (inside both boxes) from src, laid out row-major by src_box, into dst, laid out by dst_box. */
static void copy_region(int ndim, float *dst, const box *dst_box, const float *src, const box *src_box,
                        const box *region) {
    if (box_numel(ndim, region) == 0) return;
    size_t dst_stride[RT_DTENSOR_MAX_DIMS], src_stride[RT_DTENSOR_MAX_DIMS];
    dst_stride[ndim - 1] = src_stride[ndim - 1] = 1;
    for (int d = ndim - 2; d >= 0; d--) {
        dst_stride[d] = dst_stride[d + 1] * dst_box->size[d + 1];
        src_stride[d] = src_stride[d + 1] * src_box->size[d + 1];
    }
    size_t row = region->size[ndim - 1];
    size_t index[RT_DTENSOR_MAX_DIMS] = {0}; /* position in the region over dims 0..ndim-2 */
    for (;;) {
        size_t dst_at = 0, src_at = 0;
        for (int d = 0; d < ndim; d++) {
            size_t global = region->offset[d] + (d < ndim - 1 ? index[d] : 0);
            dst_at += (global - dst_box->offset[d]) * dst_stride[d];
            src_at += (global - src_box->offset[d]) * src_stride[d];
        }
        memcpy(dst + dst_at, src + src_at, row * sizeof *dst);
        int d = ndim - 2;
        while (d >= 0 && ++index[d] == region->size[d])
            index[d--] = 0;
        if (d < 0) return;
    }
}

/* coords of this rank's group member with coordinate `member` on mesh dim m. */
static void member_coords(const rt_mesh *mesh, int m, int member, int coords[RT_MESH_MAX_DIMS]) {
    memcpy(coords, mesh->coords, sizeof(int) * RT_MESH_MAX_DIMS);
    coords[m] = member;
}

/* The frame that holds member i's chunk of group_box along tensor dim d, padded to the full chunk length. */
static box padded_frame(const box *group_box, int d, size_t chunk, int member) {
    box frame = *group_box;
    frame.offset[d] = group_box->offset[d] + (size_t)member * chunk;
    frame.size[d] = chunk;
    return frame;
}

static size_t padded_chunk(const box *group_box, int d, int parts) {
    return (group_box->size[d] + (size_t)parts - 1) / (size_t)parts;
}

/* Shard(d) -> Replicate on mesh dim m: all-gather of padded chunks; padding dropped while unpacking. */
static void allgather_padded(const rt_dtensor *from, const float *from_local, const rt_dtensor *to, float *to_local,
                             int m) {
    const rt_mesh *mesh = from->mesh;
    int n = mesh->shape[m], d = from->placements[m].dim, ndim = from->ndim;
    box group_box, my_box;
    box_of(to, to->placements, mesh->coords, &group_box);
    box_of(from, from->placements, mesh->coords, &my_box);
    size_t chunk = padded_chunk(&group_box, d, n);
    box my_frame = padded_frame(&group_box, d, chunk, mesh->coords[m]);
    size_t frame_numel = box_numel(ndim, &my_frame);
    float *send = calloc_check(frame_numel, sizeof *send);
    float *recv = malloc_check((size_t)n * frame_numel * sizeof *recv);
    copy_region(ndim, send, &my_frame, from_local, &my_box, &my_box);
    rt_allgather_f32(mesh->comm[m], recv, send, frame_numel);
    for (int i = 0; i < n; i++) {
        int coords[RT_MESH_MAX_DIMS];
        box member_box, frame = padded_frame(&group_box, d, chunk, i);
        member_coords(mesh, m, i, coords);
        box_of(from, from->placements, coords, &member_box);
        copy_region(ndim, to_local, &group_box, recv + (size_t)i * frame_numel, &frame, &member_box);
    }
    free(send);
    free(recv);
}

/* Partial -> Shard(d) on mesh dim m: reduce-scatter of padded chunks. */
static void reduce_scatter_padded(const rt_dtensor *from, const float *from_local, const rt_dtensor *to,
                                  float *to_local, int m) {
    const rt_mesh *mesh = from->mesh;
    int n = mesh->shape[m], d = to->placements[m].dim, ndim = from->ndim;
    box group_box, my_box;
    box_of(from, from->placements, mesh->coords, &group_box);
    box_of(to, to->placements, mesh->coords, &my_box);
    size_t chunk = padded_chunk(&group_box, d, n);
    box my_frame = padded_frame(&group_box, d, chunk, mesh->coords[m]);
    size_t frame_numel = box_numel(ndim, &my_frame);
    float *send = calloc_check((size_t)n * frame_numel, sizeof *send);
    float *recv = malloc_check(frame_numel * sizeof *recv);
    for (int i = 0; i < n; i++) {
        int coords[RT_MESH_MAX_DIMS];
        box member_box, frame = padded_frame(&group_box, d, chunk, i);
        member_coords(mesh, m, i, coords);
        box_of(to, to->placements, coords, &member_box);
        copy_region(ndim, send + (size_t)i * frame_numel, &frame, from_local, &group_box, &member_box);
    }
    rt_reduce_scatter_sum_f32(mesh->comm[m], recv, send, (size_t)n * frame_numel);
    copy_region(ndim, to_local, &my_box, recv, &my_frame, &my_box);
    free(send);
    free(recv);
}

/* Whether the rank at `other` holds the same kind of data as `coords` under placements: equal on every mesh dim
 * that is not Shard (replicas and partial-sum indices must match; shards may differ). */
static int same_unsharded_coords(const rt_mesh *mesh, const rt_placement *placements, const int *coords,
                                 const int *other) {
    for (int m = 0; m < mesh->ndim; m++)
        if (placements[m].kind != RT_SHARD && coords[m] != other[m]) return 0;
    return 1;
}

/*
 * General move between layouts whose Partial dims are the same: each rank sends every rank the part of its old
 * box that lies in that rank's new box, taking each element from the one sender that agrees with the receiver on
 * all non-Shard mesh dims of the old layout. In the unnested Shard(a) -> Shard(b) case only the members of
 * comm[m] exchange: it is the all-to-all.
 */
static void exchange_boxes(const rt_dtensor *from, const float *from_local, const rt_dtensor *to, float *to_local) {
    const rt_mesh *mesh = from->mesh;
    rt_comm *world = mesh->world;
    int ndim = from->ndim, me = world->rank;
    box my_from, my_to;
    box_of(from, from->placements, mesh->coords, &my_from);
    box_of(to, to->placements, mesh->coords, &my_to);
    float **send_bufs = calloc_check((size_t)world->size, sizeof *send_bufs);
    float **recv_bufs = calloc_check((size_t)world->size, sizeof *recv_bufs);
    box *recv_regions = calloc_check((size_t)world->size, sizeof *recv_regions);
    rt_comm_request sends = {0}, recvs = {0};
    for (int peer = 0; peer < world->size; peer++) {
        int peer_coords[RT_MESH_MAX_DIMS];
        rt_mesh_coords_of(mesh, peer, peer_coords);
        if (!same_unsharded_coords(mesh, from->placements, mesh->coords, peer_coords)) continue;
        box peer_from, peer_to, region;
        box_of(from, from->placements, peer_coords, &peer_from);
        box_of(to, to->placements, peer_coords, &peer_to);
        if (peer == me) {
            if (box_intersect(ndim, &my_from, &my_to, &region))
                copy_region(ndim, to_local, &my_to, from_local, &my_from, &region);
            continue;
        }
        size_t n = box_intersect(ndim, &peer_from, &my_to, &recv_regions[peer]);
        if (n) {
            recv_bufs[peer] = malloc_check(n * sizeof(float));
            rt_comm_irecv(world, recv_bufs[peer], n * sizeof(float), peer, REDISTRIBUTE_TAG, &recvs);
        }
        n = box_intersect(ndim, &my_from, &peer_to, &region);
        if (n) {
            send_bufs[peer] = malloc_check(n * sizeof(float));
            copy_region(ndim, send_bufs[peer], &region, from_local, &my_from, &region);
            rt_comm_isend(world, send_bufs[peer], n * sizeof(float), peer, REDISTRIBUTE_TAG, &sends);
        }
    }
    rt_comm_wait(world, &recvs);
    for (int peer = 0; peer < world->size; peer++)
        if (recv_bufs[peer])
            copy_region(ndim, to_local, &my_to, recv_bufs[peer], &recv_regions[peer], &recv_regions[peer]);
    rt_comm_wait(world, &sends);
    for (int peer = 0; peer < world->size; peer++) {
        free(send_bufs[peer]);
        free(recv_bufs[peer]);
    }
    free(send_bufs);
    free(recv_bufs);
    free(recv_regions);
}

/* Whether a mesh dim after m shards tensor dim d (then mesh dim m's chunks are split further: nesting). */
static int sharded_after(const rt_dtensor *t, int m, int d) {
    for (int later = m + 1; later < t->mesh->ndim; later++)
        if (t->placements[later].kind == RT_SHARD && t->placements[later].dim == d) return 1;
    return 0;
}

/*
 * One primitive move of mesh dim m from placement p = from->placements[m] to q. The caller never asks for
 * Shard -> Partial, nor for Partial -> Shard under nesting (it goes through Replicate).
 * Returns the new local buffer (rt_dtensor_local_numel(to) floats) and fills *to.
 */
static float *move_one(const rt_dtensor *from, const float *from_local, int m, rt_placement q, rt_dtensor *to) {
    *to = *from;
    to->placements[m] = q;
    size_t from_numel = rt_dtensor_local_numel(from, NULL), to_numel = rt_dtensor_local_numel(to, NULL);
    float *to_local = malloc_check(to_numel * sizeof *to_local);
    const rt_mesh *mesh = from->mesh;
    rt_placement p = from->placements[m];
    int nested =
        (p.kind == RT_SHARD && sharded_after(from, m, p.dim)) || (q.kind == RT_SHARD && sharded_after(from, m, q.dim));
    if (p.kind == RT_PARTIAL_SUM && q.kind == RT_REPLICATE) {
        memcpy(to_local, from_local, from_numel * sizeof *to_local);
        rt_allreduce_sum_f32(mesh->comm[m], to_local, to_numel);
    } else if (p.kind == RT_PARTIAL_SUM) {
        reduce_scatter_padded(from, from_local, to, to_local, m);
    } else if (q.kind == RT_PARTIAL_SUM) { /* from Replicate: the box does not change */
        if (mesh->coords[m] == 0)
            memcpy(to_local, from_local, from_numel * sizeof *to_local);
        else
            memset(to_local, 0, to_numel * sizeof *to_local);
    } else if (!nested && p.kind == RT_SHARD && q.kind == RT_REPLICATE) {
        allgather_padded(from, from_local, to, to_local, m);
    } else if (!nested && p.kind == RT_REPLICATE) { /* to Shard: the new box lies inside the old one */
        box from_box, to_box;
        box_of(from, from->placements, mesh->coords, &from_box);
        box_of(to, to->placements, mesh->coords, &to_box);
        copy_region(from->ndim, to_local, &to_box, from_local, &from_box, &to_box);
    } else { /* Shard(a) -> Shard(b) (the all-to-all), or any nested Shard/Replicate move */
        exchange_boxes(from, from_local, to, to_local);
    }
    return to_local;
}

int rt_dtensor_redistribute(const rt_dtensor *src, const float *src_local, const rt_placement *dst_placements,
                            float *dst_local, rt_error *err) {
    if (check_placements(src->mesh, src->ndim, src->placements, err)) return -1;
    if (check_placements(src->mesh, src->ndim, dst_placements, err)) return -1;
    rt_dtensor cur = *src;
    const float *cur_local = src_local;
    float *owned = NULL; /* cur_local when this function allocated it */
    for (int m = 0; m < src->mesh->ndim; m++) {
        rt_placement p = cur.placements[m], q = dst_placements[m];
        if (same_placement(p, q)) continue;
        /* Shard -> Partial, and nested Partial -> Shard, go through Replicate. */
        int via_replicate = (p.kind == RT_SHARD && q.kind == RT_PARTIAL_SUM) ||
                            (p.kind == RT_PARTIAL_SUM && q.kind == RT_SHARD && sharded_after(&cur, m, q.dim));
        rt_placement steps[2] = {via_replicate ? rt_replicate() : q, q};
        for (int s = 0; s < 1 + via_replicate; s++) {
            rt_dtensor next;
            float *next_local = move_one(&cur, cur_local, m, steps[s], &next);
            free(owned);
            owned = next_local;
            cur_local = next_local;
            cur = next;
        }
    }
    memcpy(dst_local, cur_local, rt_dtensor_local_numel(&cur, NULL) * sizeof *dst_local);
    free(owned);
    return 0;
}
