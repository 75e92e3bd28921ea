/* test_comm.c: every collective of the MPI communicator against a naive local reference, at segment sizes that
 * force the rounds of large counts. Runs under mpirun on 1, 2 and 4 ranks. */
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "runtime/comm/comm.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

/*
 * Every rank can compute what every other rank sends: rank q's buffer for a
 * case is filled from a generator seeded by (case, q). Values are multiples
 * of 1/8 in [-2, 2), so sums over a few ranks are exact in any order and
 * results are compared bit for bit.
 *
 * Segment sizes: 0 is the default (one MPI call for these counts); the
 * small ones cut every count into rounds, with counts that are not
 * multiples of the round length (max(1, seg / ranks)) and segments below
 * the rank count. Outputs carry a guard of GUARD sentinels past their end,
 * which no collective may touch.
 */

#define GUARD 8
#define SENTINEL 12345.0f

static rt_comm *world;
static const size_t segments[] = {0, 1, 3, 7, 16, 64};
static const size_t counts[] = {0, 1, 5, 17, 33, 100};
#define N_SEGMENTS (sizeof segments / sizeof *segments)
#define N_COUNTS (sizeof counts / sizeof *counts)

static void fill_values(float *x, size_t n, uint64_t seed, int rank) {
    uint64_t state = (seed * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)(rank + 1) * 0xD1B54A32D192ED03ULL);
    for (size_t i = 0; i < n; i++)
        x[i] = (float)((int)(test_rand_u64(&state) >> 59) - 16) / 8.0f;
}

static void fill_sentinel(float *x, size_t n) {
    for (size_t i = 0; i < n; i++)
        x[i] = SENTINEL;
}

/* Counts mismatches of got against want (n) and of the guard after got; reports the first few. */
static int failures_reported;
static int check(const char *what, size_t seg, size_t n, const float *got, const float *want, size_t guard) {
    int bad = 0;
    for (size_t i = 0; i < n; i++)
        if (got[i] != want[i]) {
            if (failures_reported++ < 8)
                fprintf(stderr, "\n  rank %d: %s, segment %zu, %zu elements: [%zu] = %g, expected %g\n", world->rank,
                        what, seg, n, i, (double)got[i], (double)want[i]);
            bad = 1;
            break;
        }
    for (size_t i = 0; i < guard; i++)
        if (got[n + i] != SENTINEL) {
            if (failures_reported++ < 8)
                fprintf(stderr, "\n  rank %d: %s, segment %zu, %zu elements: wrote past the end ([%zu])\n", world->rank,
                        what, seg, n, n + i);
            bad = 1;
            break;
        }
    return bad;
}

/* The sum over ranks q of rank q's buffer (n floats, case seed) at [first, first+count). */
static void naive_sum(float *out, uint64_t seed, size_t n, size_t first, size_t count) {
    float *theirs = malloc_check((n ? n : 1) * sizeof *theirs);
    memset(out, 0, count * sizeof *out);
    for (int q = 0; q < world->size; q++) {
        fill_values(theirs, n, seed, q);
        for (size_t i = 0; i < count; i++)
            out[i] += theirs[first + i];
    }
    free(theirs);
}

static void test_reduce_scatter_block(void) {
    const size_t P = (size_t)world->size;
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < N_COUNTS; c++) {
            size_t per_rank = counts[c], n = per_rank * P;
            uint64_t seed = 100 + c;
            float *send = malloc_check((n + 1) * sizeof *send), *copy = malloc_check((n + 1) * sizeof *copy);
            float *recv = malloc_check((per_rank + GUARD) * sizeof *recv);
            float *buf = malloc_check((n + GUARD) * sizeof *buf), *want = malloc_check((per_rank + 1) * sizeof *want);
            naive_sum(want, seed, n, (size_t)world->rank * per_rank, per_rank);
            fill_values(send, n, seed, world->rank);
            memcpy(copy, send, n * sizeof *send);
            fill_sentinel(recv, per_rank + GUARD);
            rt_reduce_scatter_sum_f32(world, recv, send, n);
            failures += check("reduce_scatter out of place", segments[s], per_rank, recv, want, GUARD);
            failures += check("reduce_scatter left send alone", segments[s], n, send, copy, 0);
            fill_sentinel(buf, n + GUARD);
            fill_values(buf, n, seed, world->rank);
            rt_reduce_scatter_sum_f32(world, buf, buf, n);
            failures += check("reduce_scatter in place", segments[s], per_rank, buf, want, 0);
            failures += check("reduce_scatter in place (guard)", segments[s], 0, buf + n, want, GUARD);
            free(send), free(copy), free(recv), free(buf), free(want);
        }
    }
    rt_comm_mpi_set_segment_elems(0);
    test_assert_no_failures_anywhere(world, failures);
}

/* Uneven counts: patterns with zeros, one receiving rank, all zero, and growing blocks. */
static void v_counts(int pattern, int k, size_t *out) {
    const int P = world->size;
    for (int q = 0; q < P; q++) {
        switch (pattern) {
        case 0: out[q] = (size_t)((q * 5 + k * 3) % 11); break;
        case 1: out[q] = q == P - 1 ? (size_t)(7 * k + 3) : 0; break;
        case 2: out[q] = 0; break;
        default: out[q] = (size_t)(k * 9 + q * 4 + 1); break;
        }
    }
}

static void test_reduce_scatter_v(void) {
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
                size_t mine = cnt[world->rank];
                uint64_t seed = 200 + (uint64_t)(pattern * 4 + k);
                float *send = malloc_check((total + 1) * sizeof *send),
                      *copy = malloc_check((total + 1) * sizeof *copy);
                float *recv = malloc_check((mine + GUARD) * sizeof *recv);
                float *buf = malloc_check((total + GUARD) * sizeof *buf),
                      *want = malloc_check((mine + 1) * sizeof *want);
                naive_sum(want, seed, total, first, mine);
                fill_values(send, total, seed, world->rank);
                memcpy(copy, send, total * sizeof *send);
                fill_sentinel(recv, mine + GUARD);
                rt_reduce_scatter_sum_f32_v(world, recv, send, cnt);
                failures += check("reduce_scatter_v out of place", segments[s], mine, recv, want, GUARD);
                failures += check("reduce_scatter_v left send alone", segments[s], total, send, copy, 0);
                fill_sentinel(buf, total + GUARD);
                fill_values(buf, total, seed, world->rank);
                rt_reduce_scatter_sum_f32_v(world, buf, buf, cnt);
                failures += check("reduce_scatter_v in place", segments[s], mine, buf, want, 0);
                failures += check("reduce_scatter_v in place (guard)", segments[s], 0, buf + total, want, GUARD);
                free(send), free(copy), free(recv), free(buf), free(want);
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    free(cnt);
    test_assert_no_failures_anywhere(world, failures);
}

/* Every rank's block is its fill_values at its counts; the segments reach the broadcast path. */
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
                const uint64_t seed = 500 + (uint64_t)(pattern * 4 + k);
                float *want = malloc_check((total + 1) * sizeof *want), *send = malloc_check((mine + 1) * sizeof *send);
                float *recv = malloc_check((total + GUARD) * sizeof *recv);
                for (int q = 0, at = 0; q < P; at += (int)cnt[q], q++)
                    fill_values(want + at, cnt[q], seed, q);
                fill_values(send, mine, seed, world->rank);
                fill_sentinel(recv, total + GUARD);
                rt_allgather_f32_v(world, recv, send, cnt);
                failures += check("allgather_v out of place", segments[s], total, recv, want, GUARD);
                fill_sentinel(recv, total + GUARD);
                fill_values(recv + first, mine, seed, world->rank);
                rt_allgather_f32_v(world, recv, recv + first, cnt);
                failures += check("allgather_v in place", segments[s], total, recv, want, GUARD);
                free(want), free(send), free(recv);
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    free(cnt);
    test_assert_no_failures_anywhere(world, failures);
}

/* Both nonblocking collectives in flight at once, progressed, then waited in the other order than posted (MPI
 * allows it; the staged plane runs each at its wait): results as the naive reference, sends left alone. */
static void test_nonblocking(void) {
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
                const uint64_t seed = 700 + (uint64_t)(pattern * 4 + k);
                float *rs_send = malloc_check((total + 1) * sizeof(float)),
                      *rs_copy = malloc_check((total + 1) * sizeof(float));
                float *rs_recv = malloc_check((mine + GUARD) * sizeof(float)),
                      *rs_want = malloc_check((mine + 1) * sizeof(float));
                float *ag_send = malloc_check((mine + 1) * sizeof(float)),
                      *ag_recv = malloc_check((total + GUARD) * sizeof(float)),
                      *ag_want = malloc_check((total + 1) * sizeof(float));
                naive_sum(rs_want, seed, total, first, mine);
                fill_values(rs_send, total, seed, world->rank);
                memcpy(rs_copy, rs_send, total * sizeof(float));
                for (int q = 0, at = 0; q < P; at += (int)cnt[q], q++)
                    fill_values(ag_want + at, cnt[q], seed + 1, q);
                fill_values(ag_send, mine, seed + 1, world->rank);
                fill_sentinel(rs_recv, mine + GUARD);
                fill_sentinel(ag_recv, total + GUARD);
                rt_comm_request rs = {0}, ag = {0};
                rt_ireduce_scatter_sum_f32_v(world, rs_recv, rs_send, cnt, &rs);
                rt_iallgather_f32_v(world, ag_recv, ag_send, cnt, &ag);
                for (int i = 0; i < 3; i++) {
                    rt_comm_progress(world, &rs);
                    rt_comm_progress(world, &ag);
                }
                rt_comm_wait(world, &ag);
                rt_comm_wait(world, &rs);
                failures += rs.n != 0 || ag.n != 0;
                failures += check("ireduce_scatter_v", segments[s], mine, rs_recv, rs_want, GUARD);
                failures += check("ireduce_scatter_v left send alone", segments[s], total, rs_send, rs_copy, 0);
                failures += check("iallgather_v", segments[s], total, ag_recv, ag_want, GUARD);
                free(rs_send), free(rs_copy), free(rs_recv), free(rs_want);
                free(ag_send), free(ag_recv), free(ag_want);
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    free(cnt);
    test_assert_no_failures_anywhere(world, failures);
}

static void test_allgather(void) {
    const size_t P = (size_t)world->size, me = (size_t)world->rank;
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < N_COUNTS; c++) {
            size_t n = counts[c];
            uint64_t seed = 300 + c;
            float *want = malloc_check((P * n + 1) * sizeof *want), *send = malloc_check((n + 1) * sizeof *send);
            float *recv = malloc_check((P * n + GUARD) * sizeof *recv);
            for (size_t q = 0; q < P; q++)
                fill_values(want + q * n, n, seed, (int)q);
            fill_values(send, n, seed, world->rank);
            fill_sentinel(recv, P * n + GUARD);
            rt_allgather_f32(world, recv, send, n);
            failures += check("allgather out of place", segments[s], P * n, recv, want, GUARD);
            fill_sentinel(recv, P * n + GUARD);
            fill_values(recv + me * n, n, seed, world->rank);
            rt_allgather_f32(world, recv, recv + me * n, n);
            failures += check("allgather in place", segments[s], P * n, recv, want, GUARD);
            free(want), free(send), free(recv);
        }
    }
    rt_comm_mpi_set_segment_elems(0);
    test_assert_no_failures_anywhere(world, failures);
}

static void test_allreduce(void) {
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < N_COUNTS; c++) {
            size_t n = counts[c];
            uint64_t seed = 400 + c;
            float *buf = malloc_check((n + GUARD) * sizeof *buf), *got = malloc_check((n + 1) * sizeof *got);
            float *want_sum = malloc_check((n + 1) * sizeof *want_sum), *want_max = malloc_check((n + 1) * sizeof *got);
            double *sum64 = malloc_check((n + GUARD) * sizeof *sum64),
                   *max64 = malloc_check((n + GUARD) * sizeof *max64);
            naive_sum(want_sum, seed, n, 0, n);
            for (size_t i = 0; i < n; i++)
                want_max[i] = -INFINITY;
            for (int q = 0; q < world->size; q++) {
                fill_values(got, n, seed, q);
                for (size_t i = 0; i < n; i++)
                    if (got[i] > want_max[i]) want_max[i] = got[i];
            }
            fill_sentinel(buf, n + GUARD);
            fill_values(buf, n, seed, world->rank);
            for (size_t i = 0; i < n + GUARD; i++)
                sum64[i] = max64[i] = (double)buf[i];
            rt_allreduce_sum_f32(world, buf, n);
            failures += check("allreduce_sum_f32", segments[s], n, buf, want_sum, GUARD);
            rt_allreduce_sum_f64(world, sum64, n);
            rt_allreduce_max_f64(world, max64, n);
            for (size_t i = 0; i < n + GUARD; i++)
                buf[i] = (float)sum64[i];
            failures += check("allreduce_sum_f64", segments[s], n, buf, want_sum, GUARD);
            for (size_t i = 0; i < n + GUARD; i++)
                buf[i] = (float)max64[i];
            failures += check("allreduce_max_f64", segments[s], n, buf, want_max, GUARD);
            free(buf), free(got), free(want_sum), free(want_max), free(sum64), free(max64);
        }
    }
    rt_comm_mpi_set_segment_elems(0);
    test_assert_no_failures_anywhere(world, failures);
}

/* Bytes of rank q's message for a case: a pattern no two cases or ranks share. */
static unsigned char pattern_byte(uint64_t seed, int q, size_t i) {
    return (unsigned char)((i * 131u + seed * 17u + (size_t)q * 59u + (i >> 8)) & 0xFF);
}

static int check_bytes(const char *what, size_t seg, const unsigned char *got, size_t n, uint64_t seed, int q) {
    for (size_t i = 0; i < n; i++)
        if (got[i] != pattern_byte(seed, q, i)) {
            if (failures_reported++ < 8)
                fprintf(stderr, "\n  rank %d: %s, segment %zu, %zu bytes: byte %zu is %u, expected %u\n", world->rank,
                        what, seg, n, i, got[i], pattern_byte(seed, q, i));
            return 1;
        }
    return 0;
}

static void test_broadcast(void) {
    static const size_t sizes[] = {0, 1, 5, 17, 100, 1000};
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++)
            for (int root = 0; root<world->size; root += world->size> 1 ? world->size - 1 : 1) {
                size_t n = sizes[c];
                uint64_t seed = 500 + c;
                unsigned char *buf = malloc_check(n + GUARD);
                for (size_t i = 0; i < n + GUARD; i++)
                    buf[i] = world->rank == root ? pattern_byte(seed, root, i) : 0xA5;
                rt_comm_broadcast(world, buf, n, root);
                failures += check_bytes("broadcast", segments[s], buf, n, seed, root);
                for (size_t i = n; i < n + GUARD; i++)
                    if (buf[i] != (world->rank == root ? pattern_byte(seed, root, i) : 0xA5)) {
                        fprintf(stderr, "\n  rank %d: broadcast of %zu bytes wrote past the end\n", world->rank, n);
                        failures++;
                        break;
                    }
                free(buf);
            }
    }
    rt_comm_mpi_set_segment_elems(0);
    test_assert_no_failures_anywhere(world, failures);
}

/* A ring exchange of two messages per rank (two tags, both on one request each way), as ring attention does. */
static void test_isend_irecv(void) {
    static const size_t sizes[] = {0, 1, 5, 17, 100, 1000};
    const int P = world->size, to = (world->rank + 1) % P, from = (world->rank + P - 1) % P;
    int failures = 0;
    for (size_t s = 0; s < N_SEGMENTS; s++) {
        rt_comm_mpi_set_segment_elems(segments[s]);
        for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++) {
            size_t n[2] = {sizes[c], sizes[(c + 3) % (sizeof sizes / sizeof *sizes)]};
            uint64_t seed[2] = {600 + c, 700 + c};
            unsigned char *out[2], *in[2];
            rt_comm_request sends = {0}, recvs = {0};
            for (int m = 0; m < 2; m++) {
                out[m] = malloc_check(n[m] + 1);
                in[m] = malloc_check(n[m] + 1);
                for (size_t i = 0; i < n[m]; i++)
                    out[m][i] = pattern_byte(seed[m], world->rank, i);
                memset(in[m], 0xA5, n[m] + 1);
                rt_comm_irecv(world, in[m], n[m], from, 10 + m, &recvs);
            }
            for (int m = 0; m < 2; m++)
                rt_comm_isend(world, out[m], n[m], to, 10 + m, &sends);
            rt_comm_wait(world, &recvs);
            rt_comm_wait(world, &sends);
            for (int m = 0; m < 2; m++) {
                failures += check_bytes("isend/irecv", segments[s], in[m], n[m], seed[m], from);
                if (in[m][n[m]] != 0xA5) {
                    fprintf(stderr, "\n  rank %d: irecv of %zu bytes wrote past the end\n", world->rank, n[m]);
                    failures++;
                }
                free(out[m]), free(in[m]);
            }
        }
    }
    rt_comm_mpi_set_segment_elems(0);
    test_assert_no_failures_anywhere(world, failures);
}

/*
 * A real count above INT_MAX at the default segment: a broadcast of 2 GiB + 13 bytes, the cheapest collective
 * (one buffer per rank), on 2 ranks only (1 rank moves nothing; 4 would take 8 GiB of the test machine). The
 * bytes repeat with a period of 251 (prime), so a piece landing at a wrong offset shows. The rounds of every
 * other collective are covered above through small segments.
 */
#define PERIOD 251
static void test_broadcast_above_int_max(void) {
    if (world->size != 2) return;
    const size_t n = (size_t)INT_MAX + 14, block = (size_t)PERIOD << 16; /* ~16 MiB */
    const int root = 1;
    unsigned char *pattern = malloc_check(block + 1), *buf = NULL;
    /* Huge pages where the kernel has them: first touch of 2 GiB in 4 KiB pages costs seconds on a VM. */
    CU_ASSERT_EQUAL_FATAL(posix_memalign((void **)&buf, (size_t)2 << 20, n), 0);
    madvise(buf, n & ~(((size_t)2 << 20) - 1), MADV_HUGEPAGE);
    for (size_t i = 0; i <= block; i++)
        pattern[i] = (unsigned char)(i % PERIOD);
    double t0 = MPI_Wtime();
    for (size_t done = 0; done < n; done += block)
        memcpy(buf + done, world->rank == root ? pattern : pattern + 1, n - done < block ? n - done : block);
    double t1 = MPI_Wtime();
    rt_comm_broadcast(world, buf, n, root);
    double t2 = MPI_Wtime();
    size_t bad_block = n;
    for (size_t done = 0; done < n && bad_block == n; done += block)
        if (memcmp(buf + done, pattern, n - done < block ? n - done : block) != 0) bad_block = done;
    if (bad_block != n)
        fprintf(stderr, "\n  rank %d: broadcast of %zu bytes differs in the block at %zu\n", world->rank, n, bad_block);
    if (world->rank == 0) printf("(fill %.1f s, broadcast %.1f s, check %.1f s) ", t1 - t0, t2 - t1, MPI_Wtime() - t2);
    free(buf);
    free(pattern);
    test_assert_no_failures_anywhere(world, bad_block != n);
}

/* The segment hook clamps to what one MPI call takes and 0 restores the default. */
static void test_segment_hook(void) {
    size_t fallback = rt_comm_mpi_segment_elems();
    rt_comm_mpi_set_segment_elems(5);
    CU_ASSERT_EQUAL(rt_comm_mpi_segment_elems(), 5);
    rt_comm_mpi_set_segment_elems(SIZE_MAX);
    CU_ASSERT(rt_comm_mpi_segment_elems() <= (size_t)INT_MAX / 4);
    rt_comm_mpi_set_segment_elems(0);
    CU_ASSERT_EQUAL(rt_comm_mpi_segment_elems(), fallback);
    CU_ASSERT_EQUAL(fallback, (size_t)1 << 26);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    int provided = 0;
    MPI_Query_thread(&provided);
    if (provided < MPI_THREAD_FUNNELED) return 3;
    test_case cases[] = {
        {"segment hook", test_segment_hook},
        {"reduce_scatter (block), in and out of place", test_reduce_scatter_block},
        {"reduce_scatter_v, uneven counts with zeros", test_reduce_scatter_v},
        {"allgather, in and out of place", test_allgather},
        {"allgather_v: uneven and empty blocks, in and out of place", test_allgather_v},
        {"ireduce_scatter_v + iallgather_v in flight together", test_nonblocking},
        {"allreduce f32/f64 sum, f64 max", test_allreduce},
        {"broadcast from first and last rank", test_broadcast},
        {"isend/irecv ring, two tags", test_isend_irecv},
        {"broadcast of more than INT_MAX bytes", test_broadcast_above_int_max},
    };
    int worst = test_mpi_run_suite(world, "test_comm", cases, (int)(sizeof cases / sizeof *cases));
    rt_comm_finalize();
    return worst;
}
