/*
 * test_train.c: whole training runs through rt_train, on a corpus the test
 * writes (sentences drawn from a small grammar, so there is structure to
 * learn). References are independent of the trainer's own numbers:
 *  - the loss falls by more than 1 nat in 60 steps (a model that learns
 *    nothing stays near ln(256) = 5.55);
 *  - the same seed gives the same bits, run to run: every step's loss and
 *    grad_norm and the parameters after the run (raw bytes, with dropout and
 *    the unit tests' two OpenMP threads);
 *  - batch_size 4 x grad_accum 1 and batch_size 2 x grad_accum 2 see the same
 *    global batch and must give the same losses within 1e-5 relative;
 *  - metrics.jsonl has one object per step with the contract's fields.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/prepare.h"
#include "runtime/app/run.h"
#include "runtime/comm/comm.h"
#include "runtime/config/config.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

static rt_comm *world;
static char work_dir[] = "/tmp/rt_test_train_XXXXXX";
static char train_path[256];

static void write_corpus(void) {
    static const char *subjects[] = {"the cat", "a dog", "my friend", "the old man", "every child"};
    static const char *verbs[] = {"sees", "likes", "finds", "wants", "remembers"};
    static const char *objects[] = {"the red ball", "a warm house", "the river", "some bread", "the quiet garden"};
    char text_path[256];
    snprintf(text_path, sizeof text_path, "%s/corpus.txt", work_dir);
    FILE *out = fopen(text_path, "w");
    uint64_t state = 2024;
    for (int i = 0; i < 3000; i++)
        fprintf(out, "%s %s %s.\n", subjects[test_rand_u64(&state) % 5], verbs[test_rand_u64(&state) % 5],
                objects[test_rand_u64(&state) % 5]);
    fclose(out);
    snprintf(train_path, sizeof train_path, "%s/train.bin", work_dir);
    const char *inputs[] = {text_path};
    rt_error err;
    if (rt_prepare_text(inputs, 1, train_path, NULL, 0.0, &err)) {
        fprintf(stderr, "prepare failed: %s\n", err.msg);
        exit(2);
    }
}

static void base_config(rt_config *cfg, const char *run_name) {
    test_base_config(cfg, RT_FAMILY_LLAMA, train_path);
    snprintf(cfg->run_dir, sizeof cfg->run_dir, "%s/%s", work_dir, run_name);
    cfg->steps = 8;
    cfg->batch_size = 4;
    cfg->seq_len = 64;
    cfg->min_lr = 3e-4f;
    cfg->warmup_steps = 2;
    cfg->adam_eps = 1e-8f; /* the default: these runs train as a user's do */
    cfg->log_every = 1000;
}

/* Reads metrics.jsonl of a run: count lines and collect losses. */
static int read_losses(const char *run_dir, double *losses, int max) {
    char path[512], line[2048];
    snprintf(path, sizeof path, "%s/metrics.jsonl", run_dir);
    FILE *in = fopen(path, "r");
    if (!in) return -1;
    int n = 0;
    while (fgets(line, sizeof line, in) && n < max) {
        const char *at = strstr(line, "\"loss\": ");
        if (!at) break;
        losses[n++] = atof(at + 8);
    }
    fclose(in);
    return n;
}

static void test_loss_falls(void) {
    rt_config cfg;
    base_config(&cfg, "falls");
    cfg.steps = 60;
    cfg.val_every = 30;
    rt_train_result result;
    rt_error err;
    int rc = rt_train(&cfg, world, &result, &err);
    if (rc) fprintf(stderr, "\n  rt_train: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    CU_ASSERT_EQUAL(result.steps_done, 60);
    CU_ASSERT(result.first_loss > 5.0);
    CU_ASSERT(result.last_loss < result.first_loss - 1.0);
    CU_ASSERT(result.last_val_loss < result.first_loss - 1.0);
}

/* Trains cfg for its steps and keeps the bits of what a step reports and of the final parameters. */
static float *train_bits(const rt_config *cfg, double *losses, double *norms, size_t *n_params) {
    rt_trainer *t = NULL;
    rt_error err;
    if (rt_trainer_init(&t, cfg, world, &err)) {
        fprintf(stderr, "\n  trainer: %s\n", err.msg);
        rt_trainer_free(t);
        return NULL;
    }
    for (int s = 0; s < cfg->steps; s++) {
        rt_step_metrics m;
        if (rt_trainer_step(t, &m, &err)) {
            rt_trainer_free(t);
            return NULL;
        }
        losses[s] = m.loss;
        norms[s] = m.grad_norm;
    }
    *n_params = rt_trainer_model(t)->table.total;
    float *params = malloc(*n_params * sizeof *params);
    rt_trainer_params(t, params);
    rt_trainer_free(t);
    return params;
}

static void test_determinism_bitwise(void) {
    rt_config cfg;
    base_config(&cfg, "unused");
    cfg.dropout = 0.1f;
    cfg.grad_accum = 2;
    cfg.steps = 5;
    double loss_a[5], loss_b[5], norm_a[5], norm_b[5];
    size_t n_a = 0, n_b = 0;
    float *params_a = train_bits(&cfg, loss_a, norm_a, &n_a);
    float *params_b = train_bits(&cfg, loss_b, norm_b, &n_b);
    CU_ASSERT_FATAL(params_a && params_b && n_a == n_b);
    CU_ASSERT(memcmp(loss_a, loss_b, sizeof loss_a) == 0);
    CU_ASSERT(memcmp(norm_a, norm_b, sizeof norm_a) == 0);
    CU_ASSERT(memcmp(params_a, params_b, n_a * sizeof *params_a) == 0);
    free(params_a);
    free(params_b);
}

static void test_metrics_contract(void) {
    rt_config cfg;
    base_config(&cfg, "det_a");
    rt_train_result a;
    rt_error err;
    CU_ASSERT_FATAL(rt_train(&cfg, world, &a, &err) == 0);
    char dir_a[512];
    snprintf(dir_a, sizeof dir_a, "%s/det_a", work_dir);
    /* Every line names the contract's fields, with step counting from 0. */
    char path[600], line[2048];
    snprintf(path, sizeof path, "%s/metrics.jsonl", dir_a);
    FILE *in = fopen(path, "r");
    CU_ASSERT_FATAL(in != NULL);
    const char *fields[] = {"\"step\": ",           "\"loss\": ",
                            "\"grad_norm\": ",      "\"lr\": ",
                            "\"tokens_per_s\": ",   "\"peak_device_bytes\": ",
                            "\"offloaded_bytes\": "};
    int step = 0;
    while (fgets(line, sizeof line, in)) {
        for (size_t f = 0; f < sizeof fields / sizeof fields[0]; f++)
            CU_ASSERT(strstr(line, fields[f]) != NULL);
        CU_ASSERT_EQUAL(atoi(strstr(line, "\"step\": ") + 8), step);
        step++;
    }
    fclose(in);
    CU_ASSERT_EQUAL(step, 8);
    snprintf(path, sizeof path, "%s/config.ini", dir_a);
    CU_ASSERT(access(path, R_OK) == 0);
    snprintf(path, sizeof path, "%s/model.h5", dir_a);
    CU_ASSERT(access(path, R_OK) == 0);
}

static void test_grad_accum_matches_big_batch(void) {
    rt_config cfg;
    rt_train_result r;
    rt_error err;
    base_config(&cfg, "big_batch");
    CU_ASSERT_FATAL(rt_train(&cfg, world, &r, &err) == 0);
    base_config(&cfg, "accum");
    cfg.batch_size = 2;
    cfg.grad_accum = 2;
    CU_ASSERT_FATAL(rt_train(&cfg, world, &r, &err) == 0);
    double big[16], accum[16];
    char dir[512];
    snprintf(dir, sizeof dir, "%s/big_batch", work_dir);
    CU_ASSERT_EQUAL(read_losses(dir, big, 16), 8);
    CU_ASSERT_EQUAL(read_losses(cfg.run_dir, accum, 16), 8);
    for (int i = 0; i < 8; i++)
        CU_ASSERT(fabs(big[i] - accum[i]) <= 1e-5 * fabs(big[i]));
}

/* 20 offload steps: the host pool and the peak device bytes are the same from the first step on. */
static void test_offload_memory_flat(void) {
    rt_config cfg;
    base_config(&cfg, "offload_flat");
    cfg.steps = 20;
    cfg.n_layers = 4;
    cfg.activation_mode = RT_ACT_OFFLOAD;
    rt_trainer *t = NULL;
    rt_error err;
    int rc = rt_trainer_init(&t, &cfg, world, &err);
    if (rc) fprintf(stderr, "\n  trainer: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    rt_step_metrics first, m;
    for (int s = 0; s < 20; s++) {
        CU_ASSERT_FATAL(rt_trainer_step(t, &m, &err) == 0);
        if (s == 0) first = m;
        CU_ASSERT(m.offloaded_bytes > 0);
        CU_ASSERT_EQUAL(m.peak_device_bytes, first.peak_device_bytes);
        CU_ASSERT_EQUAL(m.offload_host_bytes, first.offload_host_bytes);
    }
    /* 3 of the 4 layer inputs (B*T*C floats each) live on the host. */
    CU_ASSERT_EQUAL(first.offload_host_bytes, 3 * (size_t)cfg.batch_size * cfg.seq_len * cfg.d_model * sizeof(float));
    rt_trainer_free(t);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    if (!mkdtemp(work_dir)) return 2;
    write_corpus();
    test_case cases[] = {
        {"loss falls on a small corpus", test_loss_falls},
        {"metrics contract", test_metrics_contract},
        {"same seed: the same bits, run to run", test_determinism_bitwise},
        {"grad accumulation == bigger batch", test_grad_accum_matches_big_batch},
        {"offload: host pool and peak device bytes flat over 20 steps", test_offload_memory_flat},
    };
    int status = test_run_suite("train", cases, (int)(sizeof cases / sizeof cases[0]));
    char cmd[600];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", work_dir);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", work_dir);
    rt_comm_finalize();
    return status;
}
