/*
 * test_parity.c: multi-rank training against a single-rank run of the same
 * model, data and seed, run under mpirun with 1..4 ranks. Each rank also
 * trains the single-rank reference itself (on a communicator of its own),
 * so every comparison happens inside one job.
 *
 *  - sequence parallelism (issue 3): sp = P, 3 steps, llama with dropout and
 *    gpt2: every step's loss and every parameter gradient within 1e-5;
 *  - meshes (issue 4): every dp x sp factorization of P on the same global
 *    batch: losses and gradients within 1e-5;
 *  - ZeRO (issue 4): stages 0, 1 and 2 give the same loss trajectory over 5
 *    steps within 1e-6, and stage >= 1 keeps 12 * ceil(Ψ/P) optimizer bytes.
 *
 * Gradient error of a tensor: max_i |g_i - ref_i| / max_i |ref_i| (the
 * reduced gradient before clipping, gathered from shards). Loss error:
 * |loss - ref| / |ref|.
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../io/tokens.h"
#include "../runtime/comm.h"
#include "../runtime/train.h"
#include "../shard/optimizer.h"
#include "testing.h"

#define MAX_STEPS 5

static rt_comm *world, *self;
static char data_path[256];

typedef struct {
    int steps;
    double loss[MAX_STEPS];
    float *grads[MAX_STEPS]; /* (Ψ) per step */
    size_t n_params;
    size_t optimizer_bytes;
} run_record;

static void base_config(rt_config *cfg, rt_family family, float dropout) {
    rt_config_defaults(cfg);
    rt_error err;
    rt_config_apply_preset(cfg, "tiny", &err);
    cfg->family = family;
    if (family == RT_FAMILY_GPT2) {
        cfg->n_kv_heads = cfg->n_heads;
        cfg->d_ff = 4 * cfg->d_model;
    }
    cfg->dropout = dropout;
    snprintf(cfg->data_train, sizeof cfg->data_train, "%s", data_path);
    cfg->seq_len = 48;    /* divides into 2*sp chunks for sp = 1..4 */
    cfg->batch_size = 12; /* divides by dp = 1..4 */
    cfg->steps = 3;
    cfg->lr = 3e-3f;
    cfg->warmup_steps = 1;
    /* Adam's update lr * g / (|g| + eps) turns rounding noise of near-zero gradients into updates of
     * +-lr when eps is tiny, and the trajectories of two correct runs then drift apart after step 0.
     * With eps = 1e-3 such updates stay proportional to g, so later steps still compare arithmetic. */
    cfg->adam_eps = 1e-3f;
}

/* Trains cfg on comm, recording losses and gradients; the trainer is freed after copying. */
static int record_run(const rt_config *cfg, rt_comm *comm, run_record *rec) {
    rt_trainer *t = NULL;
    rt_error err;
    memset(rec, 0, sizeof *rec);
    if (rt_trainer_init(&t, cfg, comm, &err)) {
        fprintf(stderr, "rank %d: trainer init: %s\n", world->rank, err.msg);
        rt_trainer_free(t);
        return -1;
    }
    rec->n_params = rt_trainer_model(t)->table.total;
    rec->steps = cfg->steps;
    for (int s = 0; s < cfg->steps; s++) {
        rt_step_metrics m;
        if (rt_trainer_step(t, &m, &err)) {
            fprintf(stderr, "rank %d: step %d: %s\n", world->rank, s, err.msg);
            rt_trainer_free(t);
            return -1;
        }
        rec->loss[s] = m.loss;
        rec->optimizer_bytes = m.optimizer_bytes;
        rec->grads[s] = malloc(rec->n_params * sizeof(float));
        rt_trainer_gradients(t, rec->grads[s]);
    }
    rt_trainer_free(t);
    return 0;
}

static void free_record(run_record *rec) {
    for (int s = 0; s < rec->steps; s++)
        free(rec->grads[s]);
}

/* Worst per-tensor gradient error over the model's named tensors (a small model built for its table). */
static double gradient_error(const rt_config *cfg, const float *got, const float *ref, const char **worst_name) {
    rt_model_shape shape = rt_model_shape_from_config(cfg);
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    rt_model model;
    rt_error err;
    double worst = 0.0;
    if (rt_model_init(&model, &shape, rt_backend_cpu(), &mem,
                      &(rt_model_options){.mode = RT_ACT_RECOMPUTE, .max_seqs = 1, .max_local_len = 2}, &err) != 0)
        return INFINITY;
    for (int i = 0; i < model.table.count; i++) {
        const rt_named_view *v = &model.table.views[i];
        double scale = 0.0, diff = 0.0;
        for (size_t j = 0; j < v->numel; j++) {
            scale = fmax(scale, fabs((double)ref[v->offset + j]));
            diff = fmax(diff, fabs((double)got[v->offset + j] - (double)ref[v->offset + j]));
        }
        double e = scale > 0.0 ? diff / scale : diff;
        if (!(e <= worst)) {
            worst = e;
            *worst_name = v->name;
        }
    }
    rt_model_free(&model);
    rt_device_memory_destroy(&mem);
    return worst;
}

/* Runs cfg on the world with (dp, sp, stage) and compares with the single-rank run of the same cfg. */
static void check_against_single_rank(rt_config cfg, int dp, int sp, int stage, const char *what) {
    run_record ref, got;
    rt_config single = cfg;
    single.dp = single.sp = 1;
    single.zero_stage = 0;
    cfg.dp = dp;
    cfg.sp = sp;
    cfg.zero_stage = stage;
    CU_ASSERT_FATAL(record_run(&single, self, &ref) == 0);
    CU_ASSERT_FATAL(record_run(&cfg, world, &got) == 0);
    for (int s = 0; s < cfg.steps; s++) {
        double loss_err = fabs(got.loss[s] - ref.loss[s]) / fabs(ref.loss[s]);
        const char *name = "?";
        double grad_err = gradient_error(&cfg, got.grads[s], ref.grads[s], &name);
        if (world->rank == 0 && (loss_err > 1e-5 || grad_err > 1e-5))
            fprintf(stderr, "\n  %s dp=%d sp=%d stage=%d step %d: loss err %.2e, grad err %.2e (%s)\n", what, dp, sp,
                    stage, s, loss_err, grad_err, name);
        CU_ASSERT(loss_err <= 1e-5);
        CU_ASSERT(grad_err <= 1e-5);
    }
    free_record(&ref);
    free_record(&got);
}

static void test_seqpar_llama_dropout(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f);
    check_against_single_rank(cfg, 1, world->size, 0, "llama+dropout");
}

static void test_seqpar_gpt2(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_GPT2, 0.0f);
    check_against_single_rank(cfg, 1, world->size, 0, "gpt2");
}

static void test_meshes(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f);
    cfg.grad_accum = 2;
    for (int dp = 1; dp <= world->size; dp++) {
        if (world->size % dp != 0 || cfg.batch_size % dp != 0) continue;
        check_against_single_rank(cfg, dp, world->size / dp, 0, "mesh");
    }
}

static void test_zero_stages(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.0f);
    cfg.steps = 5;
    cfg.dp = world->size % 4 == 0 ? 2 : world->size;
    cfg.sp = world->size / cfg.dp;
    run_record runs[3];
    for (int stage = 0; stage < 3; stage++) {
        cfg.zero_stage = stage;
        CU_ASSERT_FATAL(record_run(&cfg, world, &runs[stage]) == 0);
    }
    for (int stage = 1; stage < 3; stage++) {
        for (int s = 0; s < cfg.steps; s++) {
            double err = fabs(runs[stage].loss[s] - runs[0].loss[s]) / fabs(runs[0].loss[s]);
            if (world->rank == 0 && err > 1e-6) fprintf(stderr, "\n  stage %d step %d: loss err %.2e\n", stage, s, err);
            CU_ASSERT(err <= 1e-6);
        }
        /* Master weights + two moments for this rank's shard: 12 * ceil(Ψ / P) bytes. */
        size_t psi = runs[stage].n_params, P = (size_t)world->size;
        CU_ASSERT_EQUAL(runs[stage].optimizer_bytes, 12 * ((psi + P - 1) / P));
    }
    /* Stage 0 updates the fp32 parameters in place: the two moments of the whole (padded) buffer. */
    CU_ASSERT_EQUAL(runs[0].optimizer_bytes, 8 * rt_optimizer_padded_size(runs[0].n_params, world->size));
    for (int stage = 0; stage < 3; stage++)
        free_record(&runs[stage]);
}

/* keep, recompute and offload on the job's ranks (sp = P): bitwise the same losses and gradients. */
static void test_activation_modes_bitwise(void) {
    const rt_family families[] = {RT_FAMILY_LLAMA, RT_FAMILY_GPT2};
    for (int f = 0; f < 2; f++) {
        rt_config cfg;
        base_config(&cfg, families[f], families[f] == RT_FAMILY_LLAMA ? 0.1f : 0.0f);
        cfg.sp = world->size;
        cfg.n_layers = 3;
        run_record runs[3];
        const rt_activation_mode modes[] = {RT_ACT_KEEP, RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD};
        for (int i = 0; i < 3; i++) {
            cfg.activation_mode = modes[i];
            CU_ASSERT_FATAL(record_run(&cfg, world, &runs[i]) == 0);
        }
        for (int i = 1; i < 3; i++)
            for (int s = 0; s < cfg.steps; s++) {
                CU_ASSERT(runs[i].loss[s] == runs[0].loss[s]);
                CU_ASSERT(memcmp(runs[i].grads[s], runs[0].grads[s], runs[0].n_params * sizeof(float)) == 0);
            }
        for (int i = 0; i < 3; i++)
            free_record(&runs[i]);
    }
}

static void write_data(void) {
    char dir[64] = "";
    if (world->rank == 0) {
        strcpy(dir, "/tmp/rt_parity_XXXXXX");
        if (!mkdtemp(dir)) exit(2);
        uint32_t *tokens = malloc(20000 * sizeof *tokens);
        uint64_t state = 99;
        for (size_t i = 0; i < 20000; i++)
            tokens[i] = (uint32_t)(test_rand_u64(&state) % 256);
        char path[128];
        snprintf(path, sizeof path, "%s/tokens.bin", dir);
        rt_error err;
        if (rt_tokens_write(path, tokens, 20000, 256, &err)) exit(2);
        free(tokens);
    }
    world->ops->broadcast(world, dir, sizeof dir, 0);
    snprintf(data_path, sizeof data_path, "%s/tokens.bin", dir);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    self = world->ops->split(world, world->rank, 0);
    write_data();
    if (world->rank != 0 && !freopen("/dev/null", "w", stdout)) return 2; /* one CUnit report, rank 0's */
    test_case cases[] = {
        {"seqpar: llama with dropout == 1 rank", test_seqpar_llama_dropout},
        {"seqpar: gpt2 == 1 rank", test_seqpar_gpt2},
        {"meshes dp x sp == 1 rank", test_meshes},
        {"ZeRO stages 0/1/2 agree", test_zero_stages},
        {"keep == recompute == offload, bitwise", test_activation_modes_bitwise},
    };
    int status = test_run_suite("parity", cases, (int)(sizeof cases / sizeof cases[0]));
    int worst = status;
    MPI_Allreduce(&status, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
    rt_barrier(world);
    if (world->rank == 0) {
        unlink(data_path);
        *strrchr(data_path, '/') = '\0';
        rmdir(data_path);
    }
    self->ops->destroy(self);
    rt_comm_finalize();
    return worst;
}
