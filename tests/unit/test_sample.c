/*
 * test_sample.c: the sampler's draw against the distribution it claims:
 * empirical frequencies of 40000 draws vs softmax(logits / temperature)
 * computed here in double (tolerance 0.01 absolute per token: ~4 standard
 * deviations at this count); top-k never draws outside the k largest; a
 * temperature of 0 is greedy.
 */
#include <math.h>
#include <string.h>

#include "runtime/app/sample.h"
#include "tests/support/testing.h"

static const float base_logits[6] = {1.0f, 2.5f, -1.0f, 0.3f, 2.0f, -3.0f};

static void frequencies(float temperature, int top_k, double freq[6]) {
    uint64_t rng = 7;
    const int draws = 40000;
    memset(freq, 0, 6 * sizeof(double));
    for (int i = 0; i < draws; i++) {
        float logits[6];
        memcpy(logits, base_logits, sizeof logits);
        int token = rt_sample_draw(logits, 6, temperature, top_k, &rng);
        CU_ASSERT_FATAL(token >= 0 && token < 6);
        freq[token] += 1.0 / draws;
    }
}

static void test_matches_softmax(void) {
    const float temperatures[] = {1.0f, 0.7f, 2.0f};
    for (int t = 0; t < 3; t++) {
        double freq[6], expected[6], total = 0.0;
        frequencies(temperatures[t], 0, freq);
        for (int i = 0; i < 6; i++)
            total += expected[i] = exp(base_logits[i] / temperatures[t]);
        for (int i = 0; i < 6; i++)
            CU_ASSERT(fabs(freq[i] - expected[i] / total) < 0.01);
    }
}

static void test_top_k(void) {
    double freq[6], expected[6], total = 0.0;
    frequencies(1.0f, 2, freq); /* the two largest: 2.5 (index 1) and 2.0 (index 4) */
    for (int i = 0; i < 6; i++)
        expected[i] = (i == 1 || i == 4) ? exp(base_logits[i]) : 0.0;
    for (int i = 0; i < 6; i++)
        total += expected[i];
    for (int i = 0; i < 6; i++)
        CU_ASSERT(fabs(freq[i] - expected[i] / total) < 0.01);
    CU_ASSERT(freq[0] == 0.0 && freq[2] == 0.0 && freq[3] == 0.0 && freq[5] == 0.0);
}

static void test_greedy(void) {
    double freq[6];
    frequencies(0.0f, 0, freq);
    CU_ASSERT(fabs(freq[1] - 1.0) < 1e-9); /* every draw; the sum of 40000 x 1/40000 is not exactly 1 */
}

int main(void) {
    test_case cases[] = {
        {"draws follow softmax(logits / T)", test_matches_softmax},
        {"top-k restricts to the k largest", test_top_k},
        {"temperature 0 is greedy", test_greedy},
    };
    return test_run_suite("sample", cases, 3);
}
