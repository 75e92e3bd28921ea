/*
 * test_outputs.c: the metrics.jsonl line is valid JSON whatever the numbers: finite values as numbers with
 * the contract's precision, non-finite ones as null with the reason in "<key>_nonfinite", never a bare
 * inf or nan (which no JSON reader accepts); a buffer too small is reported, not overrun.
 */
#include <math.h>
#include <string.h>

#include "runtime/app/run.h"
#include "tests/support/testing.h"

static rt_step_metrics sample_metrics(void) {
    return (rt_step_metrics){.step = 3,
                             .loss = 2.5,
                             .grad_norm = 0.75,
                             .lr = 1e-3f,
                             .step_s = 0.125,
                             .tokens_per_s = 512.0,
                             .val_loss = NAN,
                             .peak_device_bytes = 4096,
                             .optimizer_bytes = 12};
}

/* No "inf" or "nan" outside a string: each occurrence is the start of a quoted reason. */
static int has_bare_nonfinite(const char *line) {
    const char *words[] = {"inf", "nan"};
    for (int w = 0; w < 2; w++)
        for (const char *at = strstr(line, words[w]); at; at = strstr(at + 1, words[w]))
            if (at == line || (at[-1] != '"' && !(at[-1] == '-' && at - 1 > line && at[-2] == '"'))) return 1;
    return 0;
}

static void test_finite_line(void) {
    rt_step_metrics s = sample_metrics();
    char line[1024];
    size_t n = rt_metrics_json_line(&s, line, sizeof line);
    CU_ASSERT_FATAL(n < sizeof line);
    CU_ASSERT_EQUAL(strlen(line), n);
    CU_ASSERT(strncmp(line, "{\"step\": 3, \"loss\": 2.5, \"grad_norm\": 0.75, ", 44) == 0);
    CU_ASSERT(strstr(line, "\"tokens_per_s\": 512.0, \"step_s\": 0.125000") != NULL);
    CU_ASSERT(strstr(line, "\"peak_device_bytes\": 4096") != NULL);
    CU_ASSERT(strstr(line, "val_loss") == NULL); /* no validation this step */
    CU_ASSERT(strstr(line, "null") == NULL);
    CU_ASSERT(strcmp(line + n - 2, "}\n") == 0);
}

static void test_nonfinite_as_null(void) {
    rt_step_metrics s = sample_metrics();
    s.loss = NAN;
    s.grad_norm = INFINITY;
    s.step_s = -INFINITY;
    s.validated = 1;
    s.val_loss = NAN; /* a validation that diverged is reported, not mistaken for none */
    char line[1024];
    size_t n = rt_metrics_json_line(&s, line, sizeof line);
    CU_ASSERT_FATAL(n < sizeof line);
    CU_ASSERT(strstr(line, "\"loss\": null, \"loss_nonfinite\": \"nan\"") != NULL);
    CU_ASSERT(strstr(line, "\"grad_norm\": null, \"grad_norm_nonfinite\": \"inf\"") != NULL);
    CU_ASSERT(strstr(line, "\"step_s\": null, \"step_s_nonfinite\": \"-inf\"") != NULL);
    CU_ASSERT(strstr(line, "\"val_loss\": null, \"val_loss_nonfinite\": \"nan\"") != NULL);
    CU_ASSERT(!has_bare_nonfinite(line));
    CU_ASSERT(strcmp(line + n - 2, "}\n") == 0);
}

static void test_small_buffer(void) {
    rt_step_metrics s = sample_metrics();
    char line[32];
    memset(line, 'x', sizeof line);
    size_t n = rt_metrics_json_line(&s, line, sizeof line);
    CU_ASSERT(n >= sizeof line);
    CU_ASSERT(memchr(line, '\0', sizeof line) != NULL); /* truncated, terminated, not overrun */
}

int main(void) {
    test_case cases[] = {
        {"finite metrics as JSON numbers", test_finite_line},
        {"non-finite metrics as null with the reason", test_nonfinite_as_null},
        {"a short buffer is reported", test_small_buffer},
    };
    return test_run_suite("outputs", cases, 3);
}
