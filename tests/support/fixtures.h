/* fixtures.h: what several tests set up the same way: a small training config, a random token file, and one
 * verdict over all ranks. Linked as rt_test_fixtures (tests/CMakeLists.txt). */
#ifndef RT_TEST_FIXTURES_H
#define RT_TEST_FIXTURES_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/comm/comm.h"
#include "runtime/config/config.h"
#include "tests/support/testing.h"

/* Bytes of the path buffers test_write_tokens fills. */
#define TEST_PATH_MAX 256

/*
 * The trainer tests' starting point: the defaults (the tiny preset) as `family` (GPT-2 with as many KV heads
 * as heads and d_ff = 4 * d_model), training on the token file data_path at lr 3e-3 after one warmup step,
 * with Adam's eps at 1e-3. Adam's update lr * g / (|g| + eps) turns rounding noise of near-zero gradients
 * into updates of +-lr when eps is tiny, and the trajectories of two correct runs then drift apart after
 * step 0; with eps = 1e-3 such updates stay proportional to g, so later steps still compare arithmetic.
 * Each test then sets its shape, steps, dropout and parallelism.
 */
void test_base_config(rt_config *cfg, rt_family family, const char *data_path);

/*
 * Rank 0 of world writes n_tokens random byte tokens (test_rand_u64 from seed, modulo 256, vocab 256) to
 * tokens.bin in a new directory /tmp/<name>_XXXXXX; every rank gets the file's path in path and, unless
 * NULL, the directory in dir (both TEST_PATH_MAX bytes). Exits 2 when the file cannot be written.
 */
void test_write_tokens(rt_comm *world, const char *name, size_t n_tokens, uint64_t seed, char *path, char *dir);

/* Packed documents: rank 0 of world writes n_tokens byte tokens (vocab 256) to path, about every 9th the separator
 * 0 and the others 1..255 (test_rand_u64 from seed); every rank returns once the file is complete. */
void test_write_document_tokens(rt_comm *world, const char *path, size_t n_tokens, uint64_t seed);

/* Fails the current test on every rank when any rank counted failures, so that rank 0's report tells: a rank
 * that passes must not report success while another failed. */
void test_assert_no_failures_anywhere(rt_comm *world, int failures);

/* Runs the suite on every rank of world with one CUnit report, rank 0's (the others' stdout goes to /dev/null;
 * the tests combine failures over ranks before asserting), and returns the worst status over the ranks. */
int test_mpi_run_suite(rt_comm *world, const char *suite_name, const test_case *cases, int n_cases);

#endif
