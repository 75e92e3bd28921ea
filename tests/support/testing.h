/* testing.h: shared helpers for the CUnit tests: seeded random fills, error measures, suite running. */
#ifndef RT_TESTING_H
#define RT_TESTING_H

#include <CUnit/Basic.h>
#include <CUnit/CUnit.h>
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

/* xorshift64*: test data only, independent of the code under test. */
static inline uint64_t test_rand_u64(uint64_t *state) {
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi). */
static inline void test_fill_uniform(float *x, size_t n, float lo, float hi, uint64_t seed) {
    uint64_t state = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < n; i++)
        x[i] = lo + (hi - lo) * (float)((test_rand_u64(&state) >> 40) * 0x1.0p-24);
}

/* max_i |a_i - b_i| / max(|b_i|, floor): relative error against reference b, with an absolute floor for tiny values. */
static inline double test_max_rel_error(const float *a, const float *b, size_t n, double floor) {
    double worst = 0.0;
    for (size_t i = 0; i < n; i++) {
        double denom = fabs((double)b[i]) > floor ? fabs((double)b[i]) : floor;
        double err = fabs((double)a[i] - (double)b[i]) / denom;
        if (!(err <= worst)) worst = err; /* NaN propagates as the worst error */
    }
    return worst;
}

/* Asserts max relative error <= tol and says by how much it missed. */
#define TEST_ASSERT_CLOSE(actual, expected, n, floor, tol, what)                                                       \
    do {                                                                                                               \
        double rel_err_ = test_max_rel_error((actual), (expected), (n), (floor));                                      \
        if (!(rel_err_ <= (tol)))                                                                                      \
            fprintf(stderr, "\n  %s: max rel error %.3g > tol %.3g\n", (what), rel_err_, (double)(tol));               \
        CU_ASSERT(rel_err_ <= (tol));                                                                                  \
    } while (0)

/* The sum of P block counts, and in *first (unless NULL) where block `rank` starts. */
static inline size_t test_counts_total(const size_t *cnt, int P, int rank, size_t *first) {
    size_t total = 0;
    for (int q = 0; q < P; q++) {
        if (q == rank && first) *first = total;
        total += cnt[q];
    }
    return total;
}

typedef struct {
    const char *name;
    void (*fn)(void);
} test_case;

/* Runs one suite; returns the process exit status (non-zero when any assertion failed). */
static inline int test_run_suite(const char *suite_name, const test_case *cases, int n_cases) {
    if (CU_initialize_registry() != CUE_SUCCESS) return 2;
    CU_pSuite suite = CU_add_suite(suite_name, NULL, NULL);
    for (int i = 0; i < n_cases; i++)
        CU_add_test(suite, cases[i].name, cases[i].fn);
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_tests_failed();
    unsigned run = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    return (failed == 0 && run == (unsigned)n_cases) ? 0 : 1;
}

#endif
