/*
 * test_resume.c: checkpoints of the trainer, saved and loaded through
 * rt_trainer_save / rt_trainer_load, under mpirun.
 *
 *   test_resume              on the job's ranks: 6 steps straight against 3
 *                            steps, save, a new trainer, load, 3 steps: the
 *                            same losses, grad norms, data positions and final
 *                            parameters, bit for bit, at ZeRO stages 0-3,
 *                            llama with dropout and gpt2, over an epoch
 *                            boundary (sp = ranks, or dp 2 x sp 2 on 4); a step abandoned by a stop request
 *                            changes nothing; a changed d_model is refused.
 *   test_resume save DIR     3 steps on dp 2 x sp 2, ZeRO 2; saves DIR/reshard.h5.
 *   test_resume load DIR SP STAGE
 *                            on the job's ranks (dp = ranks / SP): loads
 *                            DIR/reshard.h5 and trains 3 steps; the straight
 *                            6-step run on this layout is the reference: losses
 *                            within 1e-5 and the same global data positions
 *                            (the same sequences come next).
 */
#include <math.h>
#include <mpi.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/model_file.h"
#include "runtime/comm/comm.h"
#include "runtime/train/train.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

#define STEPS 6
#define HALF 3
#define RESHARD_TOL 1e-5 /* fp32 reductions in another order (test_parity measures <= 2e-6) */

static rt_comm *world;
static char data_path[TEST_PATH_MAX], work_dir[TEST_PATH_MAX];
static char docs_path[TEST_PATH_MAX + 16]; /* packed documents: separator 0 about every 9th token */
static int packed;                         /* base_config trains on docs_path */

typedef struct {
    double loss[STEPS], grad_norm[STEPS];
    uint64_t epoch[STEPS];
    size_t cursor[STEPS];
    float *params; /* after the last step */
    size_t n_params;
} record;

/* 2000 tokens hold 41 windows of 48+1: 3 global batches of 12 per epoch, so 6 steps cross two epochs. */
static void base_config(rt_config *cfg, rt_family family, float dropout, int sp, int stage) {
    test_base_config(cfg, family, data_path);
    cfg->dropout = dropout;
    cfg->seq_len = 48;
    cfg->batch_size = 12;
    cfg->steps = STEPS;
    cfg->sp = sp;
    cfg->dp = world->size / sp;
    cfg->zero_stage = stage;
    if (packed) {
        snprintf(cfg->data_train, sizeof cfg->data_train, "%s", docs_path);
        rt_error err;
        CU_ASSERT_FATAL(rt_config_set(cfg, "data", "document_separator", "0", &err) == 0);
    }
}

static rt_trainer *make_trainer(const rt_config *cfg) {
    rt_trainer *t = NULL;
    rt_error err;
    if (rt_trainer_init(&t, cfg, world, &err)) {
        fprintf(stderr, "rank %d: trainer init: %s\n", world->rank, err.msg);
        CU_FAIL_FATAL("trainer init");
    }
    return t;
}

/* Steps [from, to) into rec. */
static void train(rt_trainer *t, int from, int to, record *rec) {
    for (int s = from; s < to; s++) {
        rt_step_metrics m;
        rt_error err;
        int rc = rt_trainer_step(t, &m, &err);
        if (rc) fprintf(stderr, "rank %d: step %d: rc %d %s\n", world->rank, s, rc, err.msg);
        CU_ASSERT_EQUAL_FATAL(rc, 0);
        CU_ASSERT_EQUAL(m.step, s);
        rec->loss[s] = m.loss;
        rec->grad_norm[s] = m.grad_norm;
        rt_trainer_data_position(t, &rec->epoch[s], &rec->cursor[s]);
    }
    rec->n_params = rt_trainer_model(t)->table.total;
    free(rec->params);
    rec->params = malloc(rec->n_params * sizeof(float));
    rt_trainer_params(t, rec->params);
}

static void save(rt_trainer *t, const char *path) {
    rt_error err;
    int rc = rt_trainer_save(t, path, &err);
    if (rc) fprintf(stderr, "rank %d: save: %s\n", world->rank, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static void load(rt_trainer *t, const char *path) {
    rt_error err;
    char changes[512];
    int rc = rt_trainer_load(t, path, changes, sizeof changes, &err);
    if (rc) fprintf(stderr, "rank %d: load: %s\n", world->rank, err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
}

static void bitwise_case(rt_family family, float dropout, int sp, int stage) {
    rt_config cfg;
    base_config(&cfg, family, dropout, sp, stage);
    char path[300];
    snprintf(path, sizeof path, "%s/bitwise.h5", work_dir);
    record straight = {0}, resumed = {0};
    rt_trainer *t = make_trainer(&cfg);
    train(t, 0, STEPS, &straight);
    rt_trainer_free(t);

    t = make_trainer(&cfg);
    train(t, 0, HALF, &resumed);
    save(t, path);
    /* The file's /model, for weights-only readers, holds the parameters (at stage 3 written from the shards). */
    if (world->rank == 0) {
        float *weights = malloc(resumed.n_params * sizeof(float));
        rt_error err;
        CU_ASSERT_FATAL(rt_model_file_read_params(path, &rt_trainer_model(t)->table, weights, &err) == 0);
        CU_ASSERT(memcmp(weights, resumed.params, resumed.n_params * sizeof(float)) == 0);
        free(weights);
    }
    rt_trainer_free(t);
    t = make_trainer(&cfg); /* a fresh trainer: everything it continues with comes from the file */
    load(t, path);
    CU_ASSERT_EQUAL(rt_trainer_steps_done(t), HALF);
    CU_ASSERT_EQUAL(rt_trainer_tokens_seen(t), (int64_t)HALF * cfg.batch_size * cfg.seq_len);
    train(t, HALF, STEPS, &resumed);
    rt_trainer_free(t);

    CU_ASSERT(memcmp(straight.loss, resumed.loss, sizeof straight.loss) == 0);
    CU_ASSERT(memcmp(straight.grad_norm, resumed.grad_norm, sizeof straight.grad_norm) == 0);
    CU_ASSERT(memcmp(straight.epoch, resumed.epoch, sizeof straight.epoch) == 0);
    CU_ASSERT(memcmp(straight.cursor, resumed.cursor, sizeof straight.cursor) == 0);
    CU_ASSERT(straight.epoch[STEPS - 1] >= 1); /* the run crossed an epoch boundary */
    CU_ASSERT(memcmp(straight.params, resumed.params, straight.n_params * sizeof(float)) == 0);
    if (memcmp(straight.loss, resumed.loss, sizeof straight.loss) != 0 && world->rank == 0)
        for (int s = 0; s < STEPS; s++)
            fprintf(stderr, "  step %d: straight %.17g resumed %.17g\n", s, straight.loss[s], resumed.loss[s]);
    free(straight.params);
    free(resumed.params);
    if (world->rank == 0) unlink(path);
}

/* sp = the whole job on 1 and 2 ranks; on 4 ranks dp 2 x sp 2, which shards over both mesh dimensions (sp = 4
 * alone adds nothing the parity suite does not cover, and doubles the sanitizer build's time). */
static void bitwise_all_layouts(rt_family family, float dropout, int stage) {
    bitwise_case(family, dropout, world->size == 4 ? 2 : world->size, stage);
}

static void test_bitwise_llama_stage0(void) { bitwise_all_layouts(RT_FAMILY_LLAMA, 0.1f, 0); }
static void test_bitwise_llama_stage1(void) { bitwise_all_layouts(RT_FAMILY_LLAMA, 0.1f, 1); }
static void test_bitwise_llama_stage2(void) { bitwise_all_layouts(RT_FAMILY_LLAMA, 0.1f, 2); }
static void test_bitwise_llama_stage3(void) { bitwise_all_layouts(RT_FAMILY_LLAMA, 0.1f, 3); }
static void test_bitwise_gpt2_stage0(void) { bitwise_all_layouts(RT_FAMILY_GPT2, 0.0f, 0); }
static void test_bitwise_gpt2_stage1(void) { bitwise_all_layouts(RT_FAMILY_GPT2, 0.0f, 1); }
static void test_bitwise_gpt2_stage2(void) { bitwise_all_layouts(RT_FAMILY_GPT2, 0.0f, 2); }
static void test_bitwise_gpt2_stage3(void) { bitwise_all_layouts(RT_FAMILY_GPT2, 0.0f, 3); }
/* Packed documents in the balanced layout: windows start inside documents, and the resumed run continues
 * their positions and layouts from the data position alone. */
static void test_bitwise_documents(void) {
    packed = 1;
    bitwise_all_layouts(RT_FAMILY_LLAMA, 0.1f, 2);
    packed = 0;
}

/* A trainer that trained on past its checkpoint loads it and redoes those steps: the straight run's bits (at
 * ZeRO-3 the gathered copies it still holds are of later parameters and must not be used). */
static void test_load_into_used_trainer(void) {
    for (int stage = 0; stage <= 3; stage += 3) {
        rt_config cfg;
        base_config(&cfg, RT_FAMILY_LLAMA, 0.1f, world->size == 4 ? 2 : world->size, stage);
        cfg.val_fraction = 0.2f; /* a validation pass after every step: the last pass before the load gathered */
        cfg.val_every = 1;
        cfg.val_steps = 1;
        char path[300];
        snprintf(path, sizeof path, "%s/used.h5", work_dir);
        record straight = {0}, redone = {0};
        rt_trainer *t = make_trainer(&cfg);
        train(t, 0, STEPS, &straight);
        rt_trainer_free(t);

        t = make_trainer(&cfg);
        train(t, 0, HALF, &redone);
        save(t, path);
        train(t, HALF, STEPS, &redone);
        load(t, path);
        train(t, HALF, STEPS, &redone);
        rt_trainer_free(t);
        CU_ASSERT(memcmp(straight.loss, redone.loss, sizeof straight.loss) == 0);
        CU_ASSERT(memcmp(straight.grad_norm, redone.grad_norm, sizeof straight.grad_norm) == 0);
        CU_ASSERT(memcmp(straight.params, redone.params, straight.n_params * sizeof(float)) == 0);
        free(straight.params);
        free(redone.params);
        if (world->rank == 0) unlink(path);
    }
}

/* A stop request abandons the step at the first layer boundary; the next steps are those of a run never
 * stopped, in every activation mode (offload must drain and free its slots). */
static void interrupted_case(rt_activation_mode mode, int stage) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f, world->size, stage);
    cfg.activation_mode = mode;
    record straight = {0}, stopped = {0};
    rt_trainer *t = make_trainer(&cfg);
    train(t, 0, STEPS, &straight);
    rt_trainer_free(t);

    t = make_trainer(&cfg);
    train(t, 0, HALF, &stopped);
    static volatile sig_atomic_t flag;
    flag = world->rank == world->size - 1; /* one rank's request stops every rank */
    rt_trainer_stop_on(t, &flag);
    rt_step_metrics m;
    rt_error err;
    CU_ASSERT_EQUAL(rt_trainer_step(t, &m, &err), RT_TRAIN_INTERRUPTED);
    CU_ASSERT_EQUAL(rt_trainer_steps_done(t), HALF);
    flag = 0;
    train(t, HALF, STEPS, &stopped);
    rt_trainer_free(t);
    CU_ASSERT(memcmp(straight.loss, stopped.loss, sizeof straight.loss) == 0);
    CU_ASSERT(memcmp(straight.cursor, stopped.cursor, sizeof straight.cursor) == 0);
    CU_ASSERT(memcmp(straight.params, stopped.params, straight.n_params * sizeof(float)) == 0);
    free(straight.params);
    free(stopped.params);
}

static void test_interrupted_step(void) {
    interrupted_case(RT_ACT_KEEP, 2);
    interrupted_case(RT_ACT_OFFLOAD, 1);
    interrupted_case(RT_ACT_RECOMPUTE, 0);
}

/* The shape cannot change on resume: refused by key, every rank alike, before any tensor is read. */
static void test_changed_shape_refused(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.0f, world->size, 1);
    char path[300];
    snprintf(path, sizeof path, "%s/shape.h5", work_dir);
    record rec = {0};
    rt_trainer *t = make_trainer(&cfg);
    train(t, 0, 1, &rec);
    save(t, path);
    rt_trainer_free(t);
    cfg.d_model *= 2;
    cfg.d_ff *= 2;
    t = make_trainer(&cfg);
    rt_error err = {{0}};
    char changes[256];
    CU_ASSERT_NOT_EQUAL(rt_trainer_load(t, path, changes, sizeof changes, &err), 0);
    if (world->rank == 0) {
        CU_ASSERT(strstr(err.msg, "model.d_model") != NULL);
        CU_ASSERT(strstr(err.msg, path) != NULL);
    }
    CU_ASSERT_EQUAL(rt_trainer_steps_done(t), 0);
    rt_trainer_free(t);
    free(rec.params);
    if (world->rank == 0) unlink(path);
}

/* ---- resharding: saved by one job, loaded by others ---- */

static const char *reshard_dir;
static int reshard_sp, reshard_stage;

static void reshard_path(char *out, size_t cap) { snprintf(out, cap, "%s/reshard.h5", reshard_dir); }

static void test_reshard_save(void) {
    CU_ASSERT_EQUAL_FATAL(world->size, 4);
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f, 2, 2);
    record rec = {0};
    rt_trainer *t = make_trainer(&cfg);
    train(t, 0, HALF, &rec);
    char path[300];
    reshard_path(path, sizeof path);
    save(t, path);
    rt_trainer_free(t);
    free(rec.params);
}

static void test_reshard_load(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f, reshard_sp, reshard_stage);
    record straight = {0}, resumed = {0};
    rt_trainer *t = make_trainer(&cfg);
    train(t, 0, STEPS, &straight);
    rt_trainer_free(t);
    char path[300];
    reshard_path(path, sizeof path);
    t = make_trainer(&cfg);
    load(t, path);
    train(t, HALF, STEPS, &resumed);
    rt_trainer_free(t);
    for (int s = HALF; s < STEPS; s++) {
        double err = fabs(resumed.loss[s] - straight.loss[s]) / fabs(straight.loss[s]);
        if (!(err <= RESHARD_TOL))
            fprintf(stderr, "\n  step %d: loss %.9g, straight %.9g: rel error %.3g > %.3g\n", s, resumed.loss[s],
                    straight.loss[s], err, RESHARD_TOL);
        CU_ASSERT(err <= RESHARD_TOL);
        CU_ASSERT_EQUAL(resumed.epoch[s], straight.epoch[s]);
        CU_ASSERT_EQUAL(resumed.cursor[s], straight.cursor[s]);
    }
    free(straight.params);
    free(resumed.params);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    test_write_tokens(world, "rt_resume", 2000, 7, data_path, work_dir);
    snprintf(docs_path, sizeof docs_path, "%s/docs.bin", work_dir);
    test_write_document_tokens(world, docs_path, 2000, 8);
    static const test_case save_cases[] = {{"save on dp 2 x sp 2, ZeRO 2", test_reshard_save}};
    static const test_case load_cases[] = {{"load the 4-rank checkpoint here == straight run", test_reshard_load}};
    static const test_case resume_cases[] = {
        {"bitwise resume: llama + dropout, ZeRO 0", test_bitwise_llama_stage0},
        {"bitwise resume: llama + dropout, ZeRO 1", test_bitwise_llama_stage1},
        {"bitwise resume: llama + dropout, ZeRO 2", test_bitwise_llama_stage2},
        {"bitwise resume: llama + dropout, ZeRO 3", test_bitwise_llama_stage3},
        {"bitwise resume: gpt2, ZeRO 0", test_bitwise_gpt2_stage0},
        {"bitwise resume: gpt2, ZeRO 1", test_bitwise_gpt2_stage1},
        {"bitwise resume: gpt2, ZeRO 2", test_bitwise_gpt2_stage2},
        {"bitwise resume: gpt2, ZeRO 3", test_bitwise_gpt2_stage3},
        {"bitwise resume: packed documents, llama + dropout, ZeRO 2", test_bitwise_documents},
        {"a trainer that ran on loads its checkpoint == straight run (ZeRO 0, 3)", test_load_into_used_trainer},
        {"a step abandoned by a stop request changes nothing", test_interrupted_step},
        {"a changed d_model is refused by name", test_changed_shape_refused},
    };
    int worst;
    if (argc == 3 && strcmp(argv[1], "save") == 0) {
        reshard_dir = argv[2];
        worst = test_mpi_run_suite(world, "resume: reshard save", save_cases, 1);
    } else if (argc == 5 && strcmp(argv[1], "load") == 0) {
        reshard_dir = argv[2];
        reshard_sp = atoi(argv[3]);
        reshard_stage = atoi(argv[4]);
        worst = test_mpi_run_suite(world, "resume: reshard load", load_cases, 1);
    } else if (argc == 1) {
        worst = test_mpi_run_suite(world, "resume", resume_cases, (int)(sizeof resume_cases / sizeof resume_cases[0]));
    } else {
        fprintf(stderr, "usage: test_resume [save DIR | load DIR SP STAGE]\n");
        worst = 2;
    }
    rt_barrier(world);
    if (world->rank == 0) {
        unlink(data_path);
        unlink(docs_path);
        rmdir(work_dir);
    }
    rt_comm_finalize();
    return worst;
}
