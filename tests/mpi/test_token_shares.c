/* test_token_shares.c: the shares of a token file the ranks read (rt_tokens_share, io/tokens.c): they tile the file in
 * rank order, and validating the shares finds the first bad token on the lowest failing rank, with the message a
 * whole-file check gives. Runs under mpirun on 1, 2 and 4 ranks. */
#include <mpi.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "io/tokens.h"
#include "runtime/comm/comm.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

static rt_comm *world;

/*
 * Token-file shares tile the file in rank order, and the validation of the shares finds the first bad token on
 * the lowest failing rank, with the message a whole-file check gives.
 */
static void test_token_shares(void) {
    static const size_t sizes[] = {0, 1, 5, 17, 1000};
    for (size_t c = 0; c < sizeof sizes / sizeof *sizes; c++)
        for (int parts = 1; parts <= 5; parts++) {
            size_t next = 0;
            for (int part = 0; part < parts; part++) {
                size_t first, count;
                rt_tokens_share(sizes[c], part, parts, &first, &count);
                CU_ASSERT_EQUAL(first, next);
                CU_ASSERT(count == sizes[c] / (size_t)parts || count == sizes[c] / (size_t)parts + 1);
                next = first + count;
            }
            CU_ASSERT_EQUAL(next, sizes[c]);
        }
    uint16_t tokens[40];
    for (size_t i = 0; i < 40; i++)
        tokens[i] = (uint16_t)(i % 10);
    tokens[29] = 10, tokens[33] = 11; /* vocab 10: the first bad token is at 29 */
    rt_token_file tf = {.path = "shares.bin", .vocab_size = 10, .bytes_per_token = 2, .n_tokens = 40};
    tf.tokens = (const unsigned char *)tokens;
    size_t first, count;
    rt_tokens_share(tf.n_tokens, world->rank, world->size, &first, &count);
    rt_error err = {{0}};
    int rc = rt_tokens_validate_range(&tf, first, count, &err);
    CU_ASSERT_EQUAL(rc != 0, (first <= 29 && 29 < first + count) || (first <= 33 && 33 < first + count));
    double lowest_failing = rc ? -(double)world->rank : -(double)world->size;
    rt_allreduce_max_f64(world, &lowest_failing, 1);
    const char *expected = "shares.bin: token 29 has id 10, not below the file's vocab_size 10";
    int wrong = world->rank == (int)-lowest_failing && strcmp(err.msg, expected) != 0;
    if (wrong) fprintf(stderr, "\n  rank %d: share [%zu, %zu): '%s'\n", world->rank, first, first + count, err.msg);
    test_assert_no_failures_anywhere(world, wrong);
    /* The ends of a range: 29 is the last token of [20, 30) and outside [0, 29). */
    CU_ASSERT_EQUAL(rt_tokens_validate_range(&tf, 20, 10, &err), -1);
    CU_ASSERT_STRING_EQUAL(err.msg, expected);
    CU_ASSERT_EQUAL(rt_tokens_validate_range(&tf, 29, 1, NULL), -1);
    CU_ASSERT_EQUAL(rt_tokens_validate_range(&tf, 0, 29, NULL), 0);
    CU_ASSERT_EQUAL(rt_tokens_validate_range(&tf, 30, 3, NULL), 0);
    CU_ASSERT_EQUAL(rt_tokens_validate_range(&tf, 30, 100, NULL), -1); /* clipped to the file: 33 is in it */
    CU_ASSERT_EQUAL(rt_tokens_validate_range(&tf, 100, 5, NULL), 0);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    test_case cases[] = {
        {"token file shares", test_token_shares},
    };
    int worst = test_mpi_run_suite(world, "token_shares", cases, (int)(sizeof cases / sizeof *cases));
    rt_comm_finalize();
    return worst;
}
