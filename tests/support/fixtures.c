/* fixtures.c: the shared test set-ups of fixtures.h. */
#include "tests/support/fixtures.h"

#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/tokens.h"
#include "runtime/core/common.h"
#include "tests/support/testing.h"

void test_base_config(rt_config *cfg, rt_family family, const char *data_path) {
    rt_config_defaults(cfg);
    cfg->family = family;
    if (family == RT_FAMILY_GPT2) {
        cfg->n_kv_heads = cfg->n_heads;
        cfg->d_ff = 4 * cfg->d_model;
    }
    snprintf(cfg->data_train, sizeof cfg->data_train, "%s", data_path);
    cfg->lr = 3e-3f;
    cfg->warmup_steps = 1;
    cfg->adam_eps = 1e-3f;
}

void test_write_tokens(rt_comm *world, const char *name, size_t n_tokens, uint64_t seed, char *path, char *dir) {
    char made[64] = "";
    if (world->rank == 0) {
        snprintf(made, sizeof made, "/tmp/%s_XXXXXX", name);
        if (!mkdtemp(made)) exit(2);
        uint32_t *tokens = malloc((n_tokens ? n_tokens : 1) * sizeof *tokens);
        if (!tokens) exit(2);
        uint64_t state = seed;
        for (size_t i = 0; i < n_tokens; i++)
            tokens[i] = (uint32_t)(test_rand_u64(&state) % 256);
        char file[128];
        snprintf(file, sizeof file, "%s/tokens.bin", made);
        rt_error err;
        if (rt_tokens_write(file, tokens, n_tokens, 256, &err)) exit(2);
        free(tokens);
    }
    rt_comm_broadcast(world, made, sizeof made, 0);
    snprintf(path, TEST_PATH_MAX, "%s/tokens.bin", made);
    if (dir) snprintf(dir, TEST_PATH_MAX, "%s", made);
}

void test_write_document_tokens(rt_comm *world, const char *path, size_t n_tokens, uint64_t seed) {
    if (world->rank == 0) {
        uint32_t *tokens = malloc((n_tokens ? n_tokens : 1) * sizeof *tokens);
        if (!tokens) exit(2);
        uint64_t state = seed;
        for (size_t i = 0; i < n_tokens; i++) {
            const uint64_t r = test_rand_u64(&state);
            tokens[i] = r % 9 == 0 ? 0 : 1 + (uint32_t)(r / 9 % 255);
        }
        rt_error err;
        if (rt_tokens_write(path, tokens, n_tokens, 256, &err)) rt_fatal("%s", err.msg);
        free(tokens);
    }
    rt_barrier(world);
}

void test_assert_no_failures_anywhere(rt_comm *world, int failures) {
    double total = failures;
    rt_allreduce_sum_f64(world, &total, 1);
    CU_ASSERT_EQUAL(total, 0.0);
}

int test_mpi_run_suite(rt_comm *world, const char *suite_name, const test_case *cases, int n_cases) {
    if (world->rank != 0 && !freopen("/dev/null", "w", stdout)) rt_fatal("%s: cannot silence stdout", suite_name);
    int status = test_run_suite(suite_name, cases, n_cases);
    int worst = status;
    MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    return worst;
}
