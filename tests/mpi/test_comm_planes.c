/* test_comm_planes.c: the staged device plane against the host (direct) plane, bit for bit, on the CPU backend;
 * its staging never reallocated in a steady loop; rt_comm_device_plane's choice and refusals. Runs under mpirun
 * on 1, 2 and 4 ranks. Built a second time as test_comm_nccl_fake (TEST_FAKE_NCCL): the same comparisons on
 * the NCCL plane, compiled against tests/support/fake_cuda (NCCL calls run as MPI calls, streams and events modelled),
 * plus its ordering: compute waits for a nonblocking collective at the wait, not at the post. */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/registry.h"
#include "runtime/comm/comm.h"
#include "runtime/comm/comm_device.h"
#include "runtime/core/common.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"
#ifdef TEST_FAKE_NCCL
#include "tests/support/fake_cuda/fake_cuda.h"
#define PLANE "nccl"
static const rt_backend *fake_be; /* the "cuda" backend the NCCL plane was made for */
static rt_comm *nccl_plane;       /* the plane itself; the tests reach it through a checking wrapper (below) */
#else
#define PLANE "staged"
#endif

/*
 * Every op runs twice on the same inputs: on the host plane (world, what
 * the direct plane is) and on the staged plane over world. Inputs are full
 * random floats (any mantissa), so results agree bit for bit only when the
 * staged plane makes the same MPI call as the host plane, in place or out
 * of place alike (MPI may sum in another order for MPI_IN_PLACE). Buffers
 * are device buffers of the backend with GUARD sentinels past their end,
 * which no op may touch. Segment sizes: 0 (one MPI call) and 7, where the
 * host plane cuts every call into rounds underneath the staging.
 *
 * The fake NCCL sums with MPI calls other than the host plane's (a reduce
 * per root, a reduce-scatter of blocks), which may add in another order;
 * there the inputs are multiples of 2^-10 in [-1, 1), whose sums over 4
 * ranks are exact in any order, so bit-for-bit still holds.
 */

#define GUARD 8
#define SENTINEL 12345.0f

static rt_comm *world, *tested;
static const rt_backend *be;
static const size_t segments[] = {0, 7};
static const size_t counts[] = {0, 1, 5, 17, 100, 1000};
#define N_SEGMENTS (sizeof segments / sizeof *segments)
#define N_COUNTS (sizeof counts / sizeof *counts)

static float *dev_floats(size_t n) {
    float *p = rt_be_device_alloc(be, (n + GUARD) * sizeof(float));
    CU_ASSERT_FATAL(p != NULL);
    return p;
}

/* Random floats in [-1, 1) for (seed, rank), then GUARD sentinels. */
static void fill(float *x, size_t n, uint64_t seed, int rank) {
    test_fill_uniform(x, n, -1.0f, 1.0f, seed * 1000 + (uint64_t)rank);
#ifdef TEST_FAKE_NCCL
    for (size_t i = 0; i < n; i++)
        x[i] = floorf(x[i] * 1024.0f) / 1024.0f;
#endif
    for (size_t i = n; i < n + GUARD; i++)
        x[i] = SENTINEL;
}

static int failures_reported;
/* 1 when the n floats (or bytes, elem 1) of got and want differ; reports the first few. */
static int differs(const char *what, size_t seg, size_t count, const void *got, const void *want, size_t bytes) {
    if (memcmp(got, want, bytes) == 0) return 0;
    if (failures_reported++ < 8) {
        size_t i = 0;
        while (((const unsigned char *)got)[i] == ((const unsigned char *)want)[i])
            i++;
        fprintf(stderr, "\n  rank %d: %s, segment %zu, count %zu: byte %zu of %zu differs from the host plane\n",
                world->rank, what, seg, count, i, bytes);
    }
    return 1;
}

/* Every rank's failures count (test_assert_no_failures_anywhere), and under the fake NCCL the fake's breaches of
 * NCCL's rules since the last check count too. */
static void assert_no_failures_anywhere(int failures) {
#ifdef TEST_FAKE_NCCL
    static int breaches_before;
    failures += fake_nccl_breaches() - breaches_before;
    breaches_before = fake_nccl_breaches();
#endif
    test_assert_no_failures_anywhere(world, failures);
}

/* ------------------------------------------------------------------ collectives */

static void test_allreduce(void) {
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < N_COUNTS; c++) {
            const size_t n = counts[c];
            float *a = dev_floats(n), *b = dev_floats(n);
            fill(a, n, 10 + c, world->rank);
            memcpy(b, a, (n + GUARD) * sizeof *a);
            rt_allreduce_sum_f32(world, a, n);
            rt_allreduce_sum_f32(tested, b, n);
            failures += differs("allreduce_sum_f32", segments[s], n, b, a, (n + GUARD) * sizeof *a);
            double *da = rt_be_device_alloc(be, (n + GUARD) * sizeof *da),
                   *db = rt_be_device_alloc(be, (n + GUARD) * sizeof *db);
            fill(a, n, 20 + c, world->rank);
            for (size_t i = 0; i < n + GUARD; i++)
                da[i] = (double)a[i] + (double)a[(i * 7) % (n + GUARD)] * 0x1p-30; /* bits past float's */
            for (int op = 0; op < 2; op++) {
                memcpy(db, da, (n + GUARD) * sizeof *da);
                double *host_result = malloc_check((n + GUARD) * sizeof *host_result);
                memcpy(host_result, da, (n + GUARD) * sizeof *da);
                if (op == 0) {
                    rt_allreduce_sum_f64(world, host_result, n);
                    rt_allreduce_sum_f64(tested, db, n);
                } else {
                    rt_allreduce_max_f64(world, host_result, n);
                    rt_allreduce_max_f64(tested, db, n);
                }
                failures += differs(op == 0 ? "allreduce_sum_f64" : "allreduce_max_f64", segments[s], n, db,
                                    host_result, (n + GUARD) * sizeof *db);
                free(host_result);
            }
            rt_be_device_free(be, a), rt_be_device_free(be, b), rt_be_device_free(be, da), rt_be_device_free(be, db);
        }
    }
    rt_comm_mpi_set_segment_elems(0);
    assert_no_failures_anywhere(failures);
}

/* One reduce-scatter (block when cnt is NULL, else _v with cnt), in and out of place, on both planes. */
static int check_reduce_scatter(size_t seg, size_t per_rank, const size_t *cnt, uint64_t seed) {
    const size_t P = (size_t)world->size;
    size_t total = per_rank * P, mine = per_rank;
    if (cnt) {
        total = 0;
        for (size_t q = 0; q < P; q++)
            total += cnt[q];
        mine = cnt[world->rank];
    }
    const char *name = cnt ? "reduce_scatter_v" : "reduce_scatter";
    char what[96];
    int failures = 0;
    float *send = dev_floats(total), *copy = dev_floats(total);
    float *recv_host = dev_floats(mine), *recv_tested = dev_floats(mine);
    fill(send, total, seed, world->rank);
    memcpy(copy, send, (total + GUARD) * sizeof *send);
    fill(recv_host, mine, seed + 1, world->rank);
    memcpy(recv_tested, recv_host, (mine + GUARD) * sizeof *recv_host);
    if (cnt) {
        rt_reduce_scatter_sum_f32_v(world, recv_host, send, cnt);
        rt_reduce_scatter_sum_f32_v(tested, recv_tested, send, cnt);
    } else {
        rt_reduce_scatter_sum_f32(world, recv_host, send, total);
        rt_reduce_scatter_sum_f32(tested, recv_tested, send, total);
    }
    snprintf(what, sizeof what, "%s out of place", name);
    failures += differs(what, seg, mine, recv_tested, recv_host, (mine + GUARD) * sizeof(float));
    snprintf(what, sizeof what, "%s left send alone", name);
    failures += differs(what, seg, total, send, copy, (total + GUARD) * sizeof(float));
    /* in place: this rank's part at the start; the rest of the buffer is unspecified, the guard untouched */
    float *in_host = dev_floats(total), *in_tested = dev_floats(total);
    fill(in_host, total, seed + 2, world->rank); /* not send's values: stale staging must not pass for them */
    memcpy(in_tested, in_host, (total + GUARD) * sizeof *in_host);
    if (cnt) {
        rt_reduce_scatter_sum_f32_v(world, in_host, in_host, cnt);
        rt_reduce_scatter_sum_f32_v(tested, in_tested, in_tested, cnt);
    } else {
        rt_reduce_scatter_sum_f32(world, in_host, in_host, total);
        rt_reduce_scatter_sum_f32(tested, in_tested, in_tested, total);
    }
    snprintf(what, sizeof what, "%s in place", name);
    failures += differs(what, seg, mine, in_tested, in_host, mine * sizeof(float));
    snprintf(what, sizeof what, "%s in place (guard)", name);
    failures += differs(what, seg, total, in_tested + total, copy + total, GUARD * sizeof(float));
    rt_be_device_free(be, send), rt_be_device_free(be, copy), rt_be_device_free(be, recv_host);
    rt_be_device_free(be, recv_tested), rt_be_device_free(be, in_host), rt_be_device_free(be, in_tested);
    return failures;
}

static void test_reduce_scatter_block(void) {
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < N_COUNTS; c++)
            failures += check_reduce_scatter(segments[s], counts[c], NULL, 100 + c);
    }
    rt_comm_mpi_set_segment_elems(0);
    assert_no_failures_anywhere(failures);
}

/* Uneven counts: patterns with zeros, one receiving rank, all zero, growing blocks, and a first block shorter
 * than a later rank's (its in-place part overlaps its own destination). */
static void v_counts(int pattern, int k, size_t *out) {
    const int P = world->size;
    for (int q = 0; q < P; q++) {
        switch (pattern) {
        case 0: out[q] = (size_t)((q * 5 + k * 3) % 11); break;
        case 1: out[q] = q == P - 1 ? (size_t)(7 * k + 3) : 0; break;
        case 2: out[q] = 0; break;
        case 3: out[q] = q == 0 ? 1 : (size_t)(40 * k + 17); break;
        default: out[q] = (size_t)(k * 9 + q * 4 + 1); break;
        }
    }
}

static void test_reduce_scatter_v(void) {
    size_t *cnt = malloc_check((size_t)world->size * sizeof *cnt);
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (int pattern = 0; pattern < 5; pattern++)
            for (int k = 0; k < 4; k++) {
                v_counts(pattern, k, cnt);
                failures += check_reduce_scatter(segments[s], 0, cnt, 200 + (uint64_t)(pattern * 4 + k));
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    free(cnt);
    assert_no_failures_anywhere(failures);
}

static void test_allgather(void) {
    const size_t P = (size_t)world->size, me = (size_t)world->rank;
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < N_COUNTS; c++) {
            const size_t n = counts[c];
            float *send = dev_floats(n), *copy = dev_floats(n);
            float *recv_host = dev_floats(P * n), *recv_tested = dev_floats(P * n);
            fill(send, n, 300 + c, world->rank);
            memcpy(copy, send, (n + GUARD) * sizeof *send);
            fill(recv_host, P * n, 400 + c, world->rank); /* stale contents: every block must be overwritten */
            memcpy(recv_tested, recv_host, (P * n + GUARD) * sizeof *recv_host);
            rt_allgather_f32(world, recv_host, send, n);
            rt_allgather_f32(tested, recv_tested, send, n);
            failures += differs("allgather out of place", segments[s], n, recv_tested, recv_host,
                                (P * n + GUARD) * sizeof(float));
            failures += differs("allgather left send alone", segments[s], n, send, copy, (n + GUARD) * sizeof(float));
            fill(recv_host, P * n, 450 + c, world->rank); /* new values: stale staging must not pass for them */
            fill(send, n, 350 + c, world->rank);
            memcpy(recv_host + me * n, send, n * sizeof *send);
            memcpy(recv_tested, recv_host, (P * n + GUARD) * sizeof *recv_host);
            rt_allgather_f32(world, recv_host, recv_host + me * n, n);
            rt_allgather_f32(tested, recv_tested, recv_tested + me * n, n);
            failures +=
                differs("allgather in place", segments[s], n, recv_tested, recv_host, (P * n + GUARD) * sizeof(float));
            rt_be_device_free(be, send), rt_be_device_free(be, copy);
            rt_be_device_free(be, recv_host), rt_be_device_free(be, recv_tested);
        }
    }
    rt_comm_mpi_set_segment_elems(0);
    assert_no_failures_anywhere(failures);
}

static void test_allgather_v(void) {
    const int P = world->size;
    size_t *cnt = malloc_check((size_t)P * sizeof *cnt);
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (int pattern = 0; pattern < 4; pattern++)
            for (int k = 0; k < 4; k++) {
                v_counts(pattern, k, cnt);
                size_t first = 0;
                const size_t total = test_counts_total(cnt, P, world->rank, &first);
                const size_t mine = cnt[world->rank];
                const uint64_t seed = 600 + (uint64_t)(pattern * 4 + k);
                float *send = dev_floats(mine), *recv_host = dev_floats(total), *recv_tested = dev_floats(total);
                fill(send, mine, seed, world->rank);
                fill(recv_host, total, seed + 1, world->rank); /* stale contents: every block must be overwritten */
                memcpy(recv_tested, recv_host, (total + GUARD) * sizeof *recv_host);
                rt_allgather_f32_v(world, recv_host, send, cnt);
                rt_allgather_f32_v(tested, recv_tested, send, cnt);
                failures += differs("allgather_v out of place", segments[s], total, recv_tested, recv_host,
                                    (total + GUARD) * sizeof(float));
                fill(recv_host, total, seed + 2, world->rank); /* new values: stale staging must not pass */
                fill(send, mine, seed + 3, world->rank);
                memcpy(recv_host + first, send, mine * sizeof *send);
                memcpy(recv_tested, recv_host, (total + GUARD) * sizeof *recv_host);
                rt_allgather_f32_v(world, recv_host, recv_host + first, cnt);
                rt_allgather_f32_v(tested, recv_tested, recv_tested + first, cnt);
                failures += differs("allgather_v in place", segments[s], total, recv_tested, recv_host,
                                    (total + GUARD) * sizeof(float));
                rt_be_device_free(be, send), rt_be_device_free(be, recv_host), rt_be_device_free(be, recv_tested);
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    free(cnt);
    assert_no_failures_anywhere(failures);
}

/* The staged plane's nonblocking pair, both in flight, progressed and waited in the other order than posted,
 * against the host plane's blocking ops on the same inputs. */
static void test_nonblocking(void) {
    const int P = world->size;
    size_t *cnt = malloc_check((size_t)P * sizeof *cnt);
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (int pattern = 0; pattern < 4; pattern++)
            for (int k = 0; k < 4; k++) {
                v_counts(pattern, k, cnt);
                const size_t total = test_counts_total(cnt, P, world->rank, NULL);
                const size_t mine = cnt[world->rank];
                const uint64_t seed = 800 + (uint64_t)(pattern * 4 + k);
                float *rs_send = dev_floats(total), *rs_copy = dev_floats(total);
                float *rs_host = dev_floats(mine), *rs_tested = dev_floats(mine);
                float *ag_send = dev_floats(mine), *ag_host = dev_floats(total), *ag_tested = dev_floats(total);
                fill(rs_send, total, seed, world->rank);
                memcpy(rs_copy, rs_send, (total + GUARD) * sizeof(float));
                fill(ag_send, mine, seed + 1, world->rank);
                fill(rs_host, mine, seed + 2, world->rank); /* stale contents: must be overwritten */
                memcpy(rs_tested, rs_host, (mine + GUARD) * sizeof(float));
                fill(ag_host, total, seed + 3, world->rank);
                memcpy(ag_tested, ag_host, (total + GUARD) * sizeof(float));
                rt_reduce_scatter_sum_f32_v(world, rs_host, rs_send, cnt);
                rt_allgather_f32_v(world, ag_host, ag_send, cnt);
                rt_comm_request rs = {0}, ag = {0};
                rt_ireduce_scatter_sum_f32_v(tested, rs_tested, rs_send, cnt, &rs);
                rt_iallgather_f32_v(tested, ag_tested, ag_send, cnt, &ag);
                rt_comm_progress(tested, &rs);
                rt_comm_progress(tested, &ag);
                rt_comm_wait(tested, &ag);
                rt_comm_wait(tested, &rs);
                failures += rs.n != 0 || ag.n != 0;
                failures += differs("ireduce_scatter_v", segments[s], total, rs_tested, rs_host,
                                    (mine + GUARD) * sizeof(float));
                failures += differs("ireduce_scatter_v left send alone", segments[s], total, rs_send, rs_copy,
                                    (total + GUARD) * sizeof(float));
                failures +=
                    differs("iallgather_v", segments[s], total, ag_tested, ag_host, (total + GUARD) * sizeof(float));
                rt_be_device_free(be, rs_send), rt_be_device_free(be, rs_copy), rt_be_device_free(be, rs_host);
                rt_be_device_free(be, rs_tested), rt_be_device_free(be, ag_send), rt_be_device_free(be, ag_host);
                rt_be_device_free(be, ag_tested);
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    free(cnt);
    assert_no_failures_anywhere(failures);
}

static void test_broadcast(void) {
    static const size_t sizes[] = {0, 1, 5, 17, 100, 1000};
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++)
            for (int root = 0; root<world->size; root += world->size> 1 ? world->size - 1 : 1) {
                const size_t bytes = sizes[c];
                unsigned char *a = rt_be_device_alloc(be, bytes + GUARD), *b = rt_be_device_alloc(be, bytes + GUARD);
                test_fill_uniform((float *)a, (bytes + GUARD) / sizeof(float), -1, 1, 500 + c + (uint64_t)world->rank);
                for (size_t i = (bytes + GUARD) / sizeof(float) * sizeof(float); i < bytes + GUARD; i++)
                    a[i] = (unsigned char)(world->rank + i);
                memcpy(b, a, bytes + GUARD);
                rt_comm_broadcast(world, a, bytes, root);
                rt_comm_broadcast(tested, b, bytes, root);
                failures += differs("broadcast", segments[s], bytes, b, a, bytes + GUARD);
                rt_be_device_free(be, a), rt_be_device_free(be, b);
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    assert_no_failures_anywhere(failures);
}

/* ------------------------------------------------------------------ transfers */

static unsigned char pattern_byte(uint64_t seed, int q, size_t i) {
    return (unsigned char)((i * 131u + seed * 17u + (size_t)q * 59u + (i >> 8)) & 0xFF);
}

/*
 * A ring exchange on plane: two messages each way (two tags), on one request (one_request) or one request per
 * message; received bytes land in in[m] (with one guard byte 0xA5 after each).
 */
static void ring_exchange(rt_comm *plane, unsigned char *const out[2], unsigned char *const in[2], const size_t n[2],
                          int one_request) {
    const int P = world->size, to = (world->rank + 1) % P, from = (world->rank + P - 1) % P;
    rt_comm_request sends[2] = {{0}, {0}}, recvs[2] = {{0}, {0}};
    for (int m = 0; m < 2; m++)
        rt_comm_irecv(plane, in[m], n[m], from, 10 + m, &recvs[one_request ? 0 : m]);
    for (int m = 0; m < 2; m++)
        rt_comm_isend(plane, out[m], n[m], to, 10 + m, &sends[one_request ? 0 : m]);
    for (int m = 0; m < 2; m++) {
        rt_comm_wait(plane, &recvs[m]); /* a request with nothing posted: a no-op */
        CU_ASSERT(recvs[m].impl == NULL && recvs[m].n == 0);
    }
    for (int m = 0; m < 2; m++)
        rt_comm_wait(plane, &sends[m]);
}

static void test_isend_irecv(void) {
    static const size_t sizes[] = {0, 1, 5, 17, 100, 1000};
    const size_t n_sizes = sizeof sizes / sizeof *sizes;
    const int P = world->size, from = (world->rank + P - 1) % P;
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < n_sizes; c++)
            for (int one_request = 0; one_request < 2; one_request++) {
                const size_t n[2] = {sizes[c], sizes[(c + 3) % n_sizes]};
                const uint64_t seed[2] = {600 + c + 2 * (uint64_t)one_request, 700 + c + 2 * (uint64_t)one_request};
                unsigned char *out[2], *in_host[2], *in_tested[2];
                for (int m = 0; m < 2; m++) {
                    out[m] = rt_be_device_alloc(be, n[m] + 1);
                    in_host[m] = rt_be_device_alloc(be, n[m] + 1);
                    in_tested[m] = rt_be_device_alloc(be, n[m] + 1);
                    for (size_t i = 0; i < n[m]; i++)
                        out[m][i] = pattern_byte(seed[m], world->rank, i);
                    memset(in_host[m], 0xA5, n[m] + 1);
                    memset(in_tested[m], 0xA5, n[m] + 1);
                }
                ring_exchange(world, out, in_host, n, one_request);
                ring_exchange(tested, out, in_tested, n, one_request);
                for (int m = 0; m < 2; m++) {
                    failures += differs("isend/irecv", segments[s], n[m], in_tested[m], in_host[m], n[m] + 1);
                    for (size_t i = 0; i < n[m]; i++)
                        if (in_tested[m][i] != pattern_byte(seed[m], from, i)) {
                            fprintf(stderr, "\n  rank %d: isend/irecv of %zu bytes: byte %zu is not rank %d's\n",
                                    world->rank, n[m], i, from);
                            failures++;
                            break;
                        }
                    rt_be_device_free(be, out[m]), rt_be_device_free(be, in_host[m]),
                        rt_be_device_free(be, in_tested[m]);
                }
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    assert_no_failures_anywhere(failures);
}

#ifndef TEST_FAKE_NCCL /* the staged plane's own: its staging and the choice of plane */
/* ------------------------------------------------------------------ steady state */

/* One training step's communication on the staged plane: ZeRO's reduce-scatter and all-gather, a loss sum,
 * a ring of P-1 double-buffered exchanges of a K/V block and a smaller dK/dV block. */
static void one_step(float *grads, float *params, float *kv[2], float *dkv[2], size_t n, size_t block, int step) {
    const int P = world->size, to = (world->rank + 1) % P, from = (world->rank + P - 1) % P;
    size_t *cnt = malloc_check((size_t)P * sizeof *cnt);
    for (int q = 0; q < P; q++)
        cnt[q] = n / (size_t)P + (q == P - 1 ? n % (size_t)P : 0);
    fill(grads, n, 800 + (uint64_t)step, world->rank);
    rt_reduce_scatter_sum_f32_v(tested, params, grads, cnt); /* out of place into the shard */
    rt_allgather_f32(tested, grads, grads + (size_t)world->rank * (n / (size_t)P), n / (size_t)P);
    rt_allreduce_sum_f32(tested, params, 3);
    for (int s = 0; s + 1 < P; s++) {
        rt_comm_request kv_req = {0}, dkv_req = {0};
        rt_comm_irecv(tested, kv[(s + 1) % 2], block * sizeof(float), from, 1, &kv_req);
        rt_comm_isend(tested, kv[s % 2], block * sizeof(float), to, 1, &kv_req);
        rt_comm_irecv(tested, dkv[(s + 1) % 2], block / 2 * sizeof(float), from, 2, &dkv_req);
        rt_comm_isend(tested, dkv[s % 2], block / 2 * sizeof(float), to, 2, &dkv_req);
        rt_comm_wait(tested, &kv_req);
        rt_comm_wait(tested, &dkv_req);
    }
    free(cnt);
}

static void test_staging_steady(void) {
    const size_t n = 1000, block = 300;
    float *grads = dev_floats(n), *params = dev_floats(n), *kv[2] = {dev_floats(block), dev_floats(block)};
    float *dkv[2] = {dev_floats(block), dev_floats(block)};
    fill(kv[0], block, 1, world->rank), fill(dkv[0], block, 2, world->rank);
    rt_comm *plane = rt_comm_staged_plane(world, be); /* a fresh plane: nothing allocated yet */
    rt_comm *keep = tested;
    tested = plane;
    rt_comm_staged_stats first, later;
    rt_comm_staged_stats_of(plane, &first);
    CU_ASSERT_EQUAL(first.allocations, 0);
    CU_ASSERT_EQUAL(first.transfer_buffers, 0);
    one_step(grads, params, kv, dkv, n, block, 0);
    rt_comm_staged_stats_of(plane, &first);
    if (world->size > 1) {
        CU_ASSERT(first.allocations > 0);
        CU_ASSERT(first.staging_bytes >= n * sizeof(float)); /* the largest call: the gathered n floats */
        CU_ASSERT_EQUAL(first.transfer_buffers, 4);          /* two requests of two transfers in flight */
    }
    int changed = 0;
    for (int step = 1; step <= 20; step++) {
        one_step(grads, params, kv, dkv, n, block, step);
        rt_comm_staged_stats_of(plane, &later);
        changed |= memcmp(&later, &first, sizeof later) != 0;
    }
    if (changed)
        fprintf(stderr,
                "\n  rank %d: staged plane allocated in the steady loop: %zu host_allocs after step 0, %zu later\n",
                world->rank, first.allocations, later.allocations);
    assert_no_failures_anywhere(changed);
    if (world->size > 1) {
        /* grown only when a call needs more than it holds */
        float *big = dev_floats(4 * n);
        fill(big, 4 * n, 3, world->rank);
        rt_allreduce_sum_f32(tested, big, 4 * n);
        rt_comm_staged_stats_of(plane, &later);
        CU_ASSERT_EQUAL(later.allocations, first.allocations + 1);
        CU_ASSERT_EQUAL(later.staging_bytes, 4 * n * sizeof(float));
        rt_allreduce_sum_f32(tested, big, 2 * n);
        rt_comm_staged_stats_of(plane, &first);
        CU_ASSERT_EQUAL(first.allocations, later.allocations);
        rt_be_device_free(be, big);
    }
    tested = keep;
    rt_comm_device_plane_free(plane);
    rt_be_device_free(be, grads), rt_be_device_free(be, params);
    for (int m = 0; m < 2; m++)
        rt_be_device_free(be, kv[m]), rt_be_device_free(be, dkv[m]);
}

#endif

/* split and split_node of the plane are host-plane comms of the same ranks. */
static void test_split(void) {
    rt_comm *halves = rt_comm_split(tested, world->rank % 2, world->rank);
    CU_ASSERT(halves->ops == world->ops);
    CU_ASSERT_EQUAL(halves->size, (world->size + (world->rank % 2 == 0)) / 2);
    CU_ASSERT_EQUAL(halves->rank, world->rank / 2);
    double one = 1.0;
    rt_allreduce_sum_f64(halves, &one, 1);
    CU_ASSERT_EQUAL(one, (double)halves->size);
    rt_comm_destroy(halves);
    rt_comm *node = rt_comm_split_node(tested);
    CU_ASSERT(node->ops == world->ops);
    CU_ASSERT_EQUAL(node->size, world->size); /* mpirun on one machine */
    rt_comm_destroy(node);
#ifdef TEST_FAKE_NCCL
    CU_ASSERT(nccl_plane->ops == &rt_comm_nccl_ops);
    CU_ASSERT(rt_comm_nccl_usable(world, fake_be, NULL)); /* the fake gives each rank its own bus id */
    CU_ASSERT(!rt_comm_nccl_usable(world, be, NULL));     /* the CPU backend's buffers are host memory */
#else
    CU_ASSERT_EQUAL(rt_comm_plane_kind(tested), RT_PLANE_STAGED);
#endif
    CU_ASSERT_EQUAL(tested->rank, world->rank);
    CU_ASSERT_EQUAL(tested->size, world->size);
}

#ifndef TEST_FAKE_NCCL
/* ------------------------------------------------------------------ the choice */

/* 1 when rc and the plane's kind are not the same on every rank: a choice that differs between ranks would
 * hang the next collective of the plane, so it is caught here and the plane is not used. */
static int split_choice(int rc, const rt_comm *plane) {
    const double kind = plane ? (double)rt_comm_plane_kind(plane) : -1.0;
    double v[4] = {(double)rc, kind, -(double)rc, -kind};
    rt_allreduce_max_f64(world, v, 4);
    int split = v[0] != -v[2] || v[1] != -v[3];
    if (split && world->rank == 0) fprintf(stderr, "\n  the ranks chose different device planes\n");
    return split;
}

/* rt_comm_device_plane with RINGTRAIN_DEVICE_PLANE = zero_value on rank 0 and other_value on the others (NULL:
 * unset); *split is set when the ranks disagree. */
static int choose(const char *zero_value, const char *other_value, const rt_backend *backend, rt_comm **plane,
                  rt_error *err, int *split) {
    const char *value = world->rank == 0 ? zero_value : other_value;
    if (value)
        setenv("RINGTRAIN_DEVICE_PLANE", value, 1);
    else
        unsetenv("RINGTRAIN_DEVICE_PLANE");
    err->msg[0] = '\0';
    *plane = world; /* overwritten: NULL on failure */
    int rc = rt_comm_device_plane(plane, world, backend, err);
    *split = split_choice(rc, *plane);
    return rc;
}

/* 1 when every rank failed with a non-empty message that is rank 0's and starts with prefix. */
static int failed_alike(int rc, const rt_comm *plane, const rt_error *err, const char *prefix) {
    rt_error first = *err;
    rt_comm_broadcast(world, first.msg, sizeof first.msg, 0);
    int ok = rc == -1 && plane == NULL && err->msg[0] != '\0' && strcmp(err->msg, first.msg) == 0 &&
             strncmp(err->msg, prefix, strlen(prefix)) == 0 && strchr(err->msg, '\n') == NULL;
    if (!ok) fprintf(stderr, "\n  rank %d: rc %d, '%s' (rank 0: '%s')\n", world->rank, rc, err->msg, first.msg);
    return ok;
}

static void test_choice(void) {
    const char *saved = getenv("RINGTRAIN_DEVICE_PLANE");
    char *restore = saved ? strdup(saved) : NULL;
    rt_comm *plane = NULL;
    rt_error err = {{0}};
    int bad = 0, split = 0, rc;

    /* unset on CPU: direct, the host comm itself, whatever the other ranks' environment says; freeing it
     * leaves world alone */
    rc = choose(NULL, "staged", be, &plane, &err, &split);
    bad += split || rc != 0 || plane != world || rt_comm_plane_kind(plane) != RT_PLANE_DIRECT;
    rt_comm_device_plane_free(plane);
    rt_comm_device_plane_free(NULL);
    rt_barrier(world); /* world still works */

    /* direct, asked for on CPU */
    rc = choose("direct", NULL, be, &plane, &err, &split);
    bad += split || rc != 0 || plane != world;

    /* staged: its own comm over the same ranks */
    rc = choose("staged", "nccl", be, &plane, &err, &split);
    bad += split || rc != 0 || plane == NULL;
    if (!split && plane) {
        bad += rt_comm_plane_kind(plane) != RT_PLANE_STAGED || plane == world;
        bad += plane->rank != world->rank || plane->size != world->size;
        float sum = 1.0f;
        rt_allreduce_sum_f32(plane, &sum, 1);
        bad += sum != (float)world->size;
    }
    if (!split) rt_comm_device_plane_free(plane);

    /* nccl on CPU: one line, every rank, whether the build has NCCL or not */
    rc = choose("nccl", "staged", be, &plane, &err, &split);
    bad += split || !failed_alike(rc, plane, &err, "RINGTRAIN_DEVICE_PLANE = nccl: ");
    bad += strstr(err.msg, "this build has no NCCL") == NULL && strstr(err.msg, "cpu backend") == NULL;

    /* an unknown kind names itself */
    rc = choose("mpi", "direct", be, &plane, &err, &split);
    bad += split || !failed_alike(rc, plane, &err, "RINGTRAIN_DEVICE_PLANE = mpi: expected direct, nccl or staged");

    /* a device backend (the CPU's ops under another name): direct is refused, unset gives staged (NCCL, if
     * built, refuses a backend that is not cuda) */
    rt_backend device = *rt_backend_cpu();
    device.name = "gpu-like";
    rc = choose("direct", NULL, &device, &plane, &err, &split);
    bad += split || !failed_alike(rc, plane, &err, "RINGTRAIN_DEVICE_PLANE = direct: the gpu-like backend");
    rc = choose(NULL, "direct", &device, &plane, &err, &split);
    bad += split || rc != 0 || plane == NULL || rt_comm_plane_kind(plane) != RT_PLANE_STAGED;
    if (!split) rt_comm_device_plane_free(plane);

    CU_ASSERT_STRING_EQUAL(rt_comm_plane_kind_name(RT_PLANE_DIRECT), "direct");
    CU_ASSERT_STRING_EQUAL(rt_comm_plane_kind_name(RT_PLANE_NCCL), "nccl");
    CU_ASSERT_STRING_EQUAL(rt_comm_plane_kind_name(RT_PLANE_STAGED), "staged");

    if (restore)
        setenv("RINGTRAIN_DEVICE_PLANE", restore, 1);
    else
        unsetenv("RINGTRAIN_DEVICE_PLANE");
    free(restore);
    assert_no_failures_anywhere(bad);
}
#endif

#ifdef TEST_FAKE_NCCL
/* ------------------------------------------------------------------ NCCL's ordering (the fake's streams) */

/* Of the calls run on the comm stream so far, how many the compute stream is ordered after; and how many ran. */
static unsigned long compute_waited(void) { return fake_cuda_compute_waited_for_comm(fake_be); }
static unsigned long comm_calls(void) { return fake_cuda_comm_calls(fake_be); }

/* Counts with no zero (every rank's part is a call), their total and this rank's part. */
static size_t ordering_counts(size_t *cnt, size_t *mine) {
    v_counts(0, 1, cnt);
    for (int q = 0; q < world->size; q++)
        cnt[q] += cnt[q] == 0; /* pattern 0 has a zero from 7 ranks on */
    *mine = cnt[world->rank];
    return test_counts_total(cnt, world->size, world->rank, NULL);
}

/*
 * The NCCL plane overlaps by ordering, not by waiting: a blocking collective leaves the compute stream
 * ordered after it; a nonblocking one leaves compute alone until its wait, and that wait orders compute after
 * that request's launch only (not after collectives posted later: with 300 in flight, more than ZeRO's 256, too);
 * transfers queued before a collective launch before it, and their wait does not hold compute for it. The
 * results still equal the host plane's, and the fake saw no breach of NCCL's rules (counted by the assert).
 */
static void test_nccl_ordering(void) {
    enum { MANY = 300 };
    const int P = world->size, to = (world->rank + 1) % P, from = (world->rank + P - 1) % P;
    size_t *cnt = malloc_check((size_t)P * sizeof *cnt), mine = 0;
    const size_t total = ordering_counts(cnt, &mine);
    float *send = dev_floats(total), *part = dev_floats(mine), *shard = dev_floats(mine), *shard2 = dev_floats(mine);
    float *want_shard = dev_floats(mine), *want_gathered = dev_floats(total);
    float *gathered = dev_floats((size_t)MANY * total);
    fill(send, total, 900, world->rank);
    fill(part, mine, 901, world->rank);
    rt_reduce_scatter_sum_f32_v(world, want_shard, send, cnt);
    rt_allgather_f32_v(world, want_gathered, part, cnt);
    int bad = 0;

    fake_cuda_compute_work(fake_be);
    float sum[3] = {1, 2, 3};
    rt_allreduce_sum_f32(tested, sum, 3);
    bad += compute_waited() != comm_calls(); /* blocking: compute sees the result */

    rt_comm_request rs = {0}, ag = {0};
    fake_cuda_compute_work(fake_be);
    const unsigned long before = compute_waited();
    rt_ireduce_scatter_sum_f32_v(tested, shard, send, cnt, &rs);
    const unsigned long rs_end = comm_calls();
    fake_cuda_compute_work(fake_be); /* the next layer's compute, between post and wait */
    rt_iallgather_f32_v(tested, gathered, part, cnt, &ag);
    const unsigned long ag_end = comm_calls();
    bad += compute_waited() != before; /* neither post held compute */
    rt_comm_wait(tested, &rs);
    bad += compute_waited() != rs_end; /* rs's end, not ag's */
    rt_comm_wait(tested, &ag);
    bad += compute_waited() != ag_end;
    bad += rs.n != 0 || ag.n != 0;
    bad += differs("ireduce_scatter_v (ordering)", 0, total, shard, want_shard, mine * sizeof(float));
    bad += differs("iallgather_v (ordering)", 0, total, gathered, want_gathered, total * sizeof(float));

    rt_comm_request many[MANY];
    unsigned long end[MANY];
    memset(many, 0, sizeof many);
    for (int i = 0; i < MANY; i++) {
        fake_cuda_compute_work(fake_be);
        rt_iallgather_f32_v(tested, gathered + (size_t)i * total, part, cnt, &many[i]);
        end[i] = comm_calls();
    }
    for (int i = 0; i < MANY; i++) {
        rt_comm_wait(tested, &many[i]);
        bad += compute_waited() != end[i]; /* the first one's wait does not hold compute for the 299 after it */
        bad += differs("iallgather_v (300 in flight)", 0, total, gathered + (size_t)i * total, want_gathered,
                       total * sizeof(float));
    }

    unsigned char out[5] = {1, 2, 3, 4, (unsigned char)world->rank}, in[5] = {0};
    rt_comm_request ring = {0}, rs2 = {0};
    rt_comm_irecv(tested, in, sizeof in, from, 1, &ring);
    rt_comm_isend(tested, out, sizeof out, to, 1, &ring);
    const unsigned long queued = comm_calls(); /* queued, not launched */
    rt_ireduce_scatter_sum_f32_v(tested, shard2, send, cnt, &rs2);
    const unsigned long after = comm_calls();
    rt_comm_wait(tested, &ring);
    bad += compute_waited() != queued + 2; /* the pair launched first (two calls), and its wait is for them */
    bad += in[4] != (unsigned char)from || in[0] != 1;
    rt_comm_wait(tested, &rs2);
    bad += compute_waited() != after;
    bad += differs("ireduce_scatter_v after transfers", 0, total, shard2, want_shard, mine * sizeof(float));

    rt_be_device_free(be, send), rt_be_device_free(be, part), rt_be_device_free(be, shard),
        rt_be_device_free(be, shard2);
    rt_be_device_free(be, want_shard), rt_be_device_free(be, want_gathered), rt_be_device_free(be, gathered);
    free(cnt);
    assert_no_failures_anywhere(bad);
}
#endif

#ifdef TEST_FAKE_NCCL
/* ------------------------------------------------------------------ the NCCL plane under a checking wrapper */

/*
 * Every test reaches the NCCL plane through this wrapper. Before each op it issues one compute op, so every
 * call has compute before it to be ordered after (the fake then checks each collective's comm-stream wait);
 * after it, the half of the protocol the fake cannot see by itself: a blocking collective leaves the compute
 * stream ordered after all the comm stream ran, and a posted transfer (launched later) has the comm stream
 * ordered after the compute before its post.
 */
static void before_op(void) { fake_cuda_compute_work(fake_be); }

static void after_blocking(const char *op) {
    const unsigned long waited = fake_cuda_compute_waited_for_comm(fake_be), ran = fake_cuda_comm_calls(fake_be);
    if (waited != ran)
        fake_nccl_breach("blocking %s returned with compute ordered after %lu of the comm stream's %lu calls", op,
                         waited, ran);
}

static void after_transfer(const char *op) {
    const unsigned long waited = fake_cuda_comm_waited_for_compute(fake_be), ran = fake_cuda_compute_calls(fake_be);
    if (waited != ran)
        fake_nccl_breach("%s posted with the comm stream ordered after %lu of compute's %lu ops", op, waited, ran);
}

static void w_allreduce_sum_f32(rt_comm *c, float *buf, size_t n) {
    (void)c, before_op();
    rt_allreduce_sum_f32(nccl_plane, buf, n);
    after_blocking("allreduce_sum_f32");
}
static void w_allreduce_sum_f64(rt_comm *c, double *buf, size_t n) {
    (void)c, before_op();
    rt_allreduce_sum_f64(nccl_plane, buf, n);
    after_blocking("allreduce_sum_f64");
}
static void w_allreduce_max_f64(rt_comm *c, double *buf, size_t n) {
    (void)c, before_op();
    rt_allreduce_max_f64(nccl_plane, buf, n);
    after_blocking("allreduce_max_f64");
}
static void w_reduce_scatter_sum_f32(rt_comm *c, float *recv, const float *send, size_t n) {
    (void)c, before_op();
    rt_reduce_scatter_sum_f32(nccl_plane, recv, send, n);
    after_blocking("reduce_scatter_sum_f32");
}
static void w_reduce_scatter_sum_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts) {
    (void)c, before_op();
    rt_reduce_scatter_sum_f32_v(nccl_plane, recv, send, counts);
    after_blocking("reduce_scatter_sum_f32_v");
}
static void w_allgather_f32(rt_comm *c, float *recv, const float *send, size_t n) {
    (void)c, before_op();
    rt_allgather_f32(nccl_plane, recv, send, n);
    after_blocking("allgather_f32");
}
static void w_allgather_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts) {
    (void)c, before_op();
    rt_allgather_f32_v(nccl_plane, recv, send, counts);
    after_blocking("allgather_f32_v");
}
static void w_broadcast(rt_comm *c, void *buf, size_t bytes, int root) {
    (void)c, before_op();
    rt_comm_broadcast(nccl_plane, buf, bytes, root);
    after_blocking("broadcast");
}
static void w_barrier(rt_comm *c) { (void)c, rt_barrier(nccl_plane); }
static void w_isend(rt_comm *c, const void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    (void)c, before_op();
    rt_comm_isend(nccl_plane, buf, bytes, peer, tag, req);
    if (bytes) after_transfer("isend");
}
static void w_irecv(rt_comm *c, void *buf, size_t bytes, int peer, int tag, rt_comm_request *req) {
    (void)c, before_op();
    rt_comm_irecv(nccl_plane, buf, bytes, peer, tag, req);
    if (bytes) after_transfer("irecv");
}
static void w_wait(rt_comm *c, rt_comm_request *req) {
    (void)c, before_op();
    rt_comm_wait(nccl_plane, req);
}
static void w_ireduce_scatter_sum_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts,
                                        rt_comm_request *req) {
    (void)c, before_op();
    rt_ireduce_scatter_sum_f32_v(nccl_plane, recv, send, counts, req);
}
static void w_iallgather_f32_v(rt_comm *c, float *recv, const float *send, const size_t *counts, rt_comm_request *req) {
    (void)c, before_op();
    rt_iallgather_f32_v(nccl_plane, recv, send, counts, req);
}
static void w_progress(rt_comm *c, rt_comm_request *req) { (void)c, rt_comm_progress(nccl_plane, req); }
static rt_comm *w_split(rt_comm *c, int color, int key) {
    (void)c;
    return rt_comm_split(nccl_plane, color, key);
}
static rt_comm *w_split_node(rt_comm *c) {
    (void)c;
    return rt_comm_split_node(nccl_plane);
}
static void w_destroy(rt_comm *c) {
    rt_comm_destroy(nccl_plane);
    free(c);
}

static const rt_comm_ops checking_ops = {
    .allreduce_sum_f32 = w_allreduce_sum_f32,
    .allreduce_sum_f64 = w_allreduce_sum_f64,
    .allreduce_max_f64 = w_allreduce_max_f64,
    .reduce_scatter_sum_f32 = w_reduce_scatter_sum_f32,
    .reduce_scatter_sum_f32_v = w_reduce_scatter_sum_f32_v,
    .allgather_f32 = w_allgather_f32,
    .allgather_f32_v = w_allgather_f32_v,
    .broadcast = w_broadcast,
    .barrier = w_barrier,
    .isend = w_isend,
    .irecv = w_irecv,
    .wait = w_wait,
    .ireduce_scatter_sum_f32_v = w_ireduce_scatter_sum_f32_v,
    .iallgather_f32_v = w_iallgather_f32_v,
    .progress = w_progress,
    .split = w_split,
    .split_node = w_split_node,
    .destroy = w_destroy,
};

static rt_comm *checking_wrapper(rt_comm *plane) {
    nccl_plane = plane;
    rt_comm *w = calloc_check(1, sizeof *w);
    *w = (rt_comm){.ops = &checking_ops, .rank = plane->rank, .size = plane->size, .impl = NULL};
    return w;
}
#endif

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    be = rt_backend_cpu();
#ifdef TEST_FAKE_NCCL
    fake_be = fake_cuda_backend();
    rt_error err = {{0}};
    rt_comm *plane = rt_comm_nccl_plane(world, fake_be, &err);
    if (!plane) rt_fatal("test_comm_nccl_fake: %s", err.msg);
    tested = checking_wrapper(plane);
#else
    tested = rt_comm_staged_plane(world, be);
#endif
    test_case cases[] = {
        {"allreduce f32/f64 sum, f64 max: " PLANE " = host", test_allreduce},
        {"reduce_scatter (block), in and out of place: " PLANE " = host", test_reduce_scatter_block},
        {"reduce_scatter_v, uneven counts with zeros: " PLANE " = host", test_reduce_scatter_v},
        {"allgather_v, uneven counts with zeros: " PLANE " = host", test_allgather_v},
        {"ireduce_scatter_v + iallgather_v in flight together: " PLANE " = host", test_nonblocking},
        {"allgather, in and out of place: " PLANE " = host", test_allgather},
        {"broadcast from first and last rank: " PLANE " = host", test_broadcast},
        {"isend/irecv ring, two tags: " PLANE " = host", test_isend_irecv},
        {"split and split_node give host comms", test_split},
#ifdef TEST_FAKE_NCCL
        {"compute waits at the wait, for that request only; transfers launch before a later collective",
         test_nccl_ordering},
    };
    int worst = test_mpi_run_suite(world, "test_comm_nccl_fake", cases, (int)(sizeof cases / sizeof *cases));
#else
        {"staging allocated once, grown only when needed", test_staging_steady},
        {"rt_comm_device_plane: choice, rank 0's setting, refusals", test_choice},
    };
    int worst = test_mpi_run_suite(world, "test_comm_planes", cases, (int)(sizeof cases / sizeof *cases));
#endif
#ifdef TEST_FAKE_NCCL
    rt_comm_destroy(tested); /* rt_comm_device_plane_free knows the real NCCL plane's table, not this one */
    /* breaches after the last test (the plane's destroy) count too */
    int late = fake_nccl_breaches(), any_late = 0;
    MPI_Allreduce(&late, &any_late, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    if (any_late && worst == 0) worst = 1;
    fake_cuda_backend_free(fake_be);
#else
    rt_comm_device_plane_free(tested);
#endif
    rt_comm_finalize();
    return worst;
}
