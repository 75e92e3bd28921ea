/*
 * test_cuda_train.c: training steps on the CUDA backend (needs a GPU). An
 * MPI program, run on 1 rank, and on 2 ranks that share the GPU:
 *  - the tiny preset of both families (llama with GQA, RoPE and dropout;
 *    gpt2 with learned positions, tied head, no dropout): 3 steps on the
 *    GPU against the same 3 steps on the CPU backend, from the same
 *    initial weights and data: every step's loss and grad_norm, every
 *    tensor's reduced gradient before clipping, and after the run every
 *    tensor's change of the parameters (TRAIN_TOL);
 *  - on the GPU, keep, recompute and offload give the same bits (losses,
 *    grad norms, gradients, final parameters), as on the CPU (test_parity);
 *  - on 2 ranks: ring attention (sp = 2, zigzag) with ZeRO stage 2 and
 *    grad_accum 2 against the 1-rank GPU run of the same config, which
 *    every rank trains itself on a communicator of its own (SPLIT_TOL).
 *    Two ranks on one GPU cannot use NCCL (comm_device.h), so the device
 *    plane is the staged one: RINGTRAIN_DEVICE_PLANE=staged, set here when
 *    the job did not set it.
 * Without a GPU (or without the CUDA backend) it prints one line,
 * "test_cuda_train: skipped: <why>", and exits 77 (CTest: skipped).
 *
 * Error of a tensor: max_i |x_i - ref_i| / max_i |ref_i|, the worst over
 * the model's named tensors (as test_parity); parameters are compared as
 * their change over the run. Scalars: |x - ref| / |ref|.
 *
 * Tolerances:
 *   TRAIN_TOL 2e-2 (CUDA vs CPU): the matmuls and attention run on bf16
 *     tensor cores (test_cuda_ops: each op within 2e-2 norm-wise of the
 *     CPU, about 3e-3 expected); two layers and the head compound that to
 *     a few 1e-3 of a gradient's largest element. Adam's eps is 1e-3 as in
 *     test_parity, so updates stay proportional to the gradient for tiny
 *     components instead of turning rounding noise into +-lr steps, and
 *     the parameter changes inherit the gradients' error.
 *   SPLIT_TOL 1e-2 (2 ranks vs 1, both CUDA): the same bf16 inputs, but
 *     each block of the ring rounds its own softmax probabilities to bf16
 *     before P V, relative to its own running maximum, and the fp32 sums
 *     over the two ranks' tokens add in another order; expected about
 *     1e-3. (On the CPU the same comparison holds to 1e-5, test_parity.)
 *   bitwise: the activation modes (the same kernels on the same inputs in
 *     the same order; recompute repeats the forward bit for bit).
 * TEST_CUDA_VERBOSE=1 prints every measured error. TEST_CUDA_BACKEND=cpu puts a copy of the CPU backend's
 * table in the GPU's place, which checks the harness on a machine without a GPU (CPU against CPU: every
 * comparison then holds to the CPU's own parity tolerances).
 */
#include <math.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "runtime/backend/registry.h"
#include "runtime/comm/comm.h"
#include "runtime/train/train.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

#define MAX_STEPS 3
#define TRAIN_TOL 2e-2
#define SPLIT_TOL 1e-2

static rt_comm *world, *self;
static const rt_backend *gpu;
static char data_path[TEST_PATH_MAX];

static int verbose(void) { return getenv("TEST_CUDA_VERBOSE") != NULL; }

typedef struct {
    int steps;
    double loss[MAX_STEPS], grad_norm[MAX_STEPS];
    float *preclip[MAX_STEPS];            /* (Ψ) reduced gradient before clipping, host */
    float *params_initial, *params_final; /* (Ψ) host */
    size_t n_params;
    rt_named_view *views; /* the model's named tensors (copied from its table) */
    int n_views;
} run_record;

static void base_config(rt_config *cfg, rt_family family) {
    /* Adam's eps is 1e-3: see the top comment */
    test_base_config(cfg, family, data_path);
    cfg->dropout = family == RT_FAMILY_LLAMA ? 0.1f : 0.0f; /* the masks are the CPU's bit for bit */
    cfg->seq_len = 64;                                      /* 2 * sp chunks for sp = 1, 2 */
    cfg->batch_size = 4;
    cfg->steps = MAX_STEPS;
    cfg->grad_clip = 0.0f; /* compare the gradients as computed */
}

static void free_record(run_record *rec) {
    for (int s = 0; s < rec->steps; s++)
        free(rec->preclip[s]);
    free(rec->params_initial);
    free(rec->params_final);
    free(rec->views);
    memset(rec, 0, sizeof *rec);
}

/* Trains cfg on comm and backend for cfg->steps steps, recording what the checks compare. */
static int record_run(const rt_config *cfg, rt_comm *comm, const rt_backend *be, run_record *rec) {
    rt_trainer *t = NULL;
    rt_error err;
    memset(rec, 0, sizeof *rec);
    if (rt_trainer_init_on(&t, cfg, comm, be, &err)) {
        fprintf(stderr, "rank %d: trainer init on %s: %s\n", world->rank, be->name, err.msg);
        rt_trainer_free(t);
        return -1;
    }
    rt_model *model = rt_trainer_model(t);
    rec->n_params = model->table.total;
    rec->n_views = model->table.count;
    rec->views = malloc(rec->n_views * sizeof *rec->views);
    memcpy(rec->views, model->table.views, rec->n_views * sizeof *rec->views);
    rec->steps = cfg->steps;
    rec->params_initial = malloc(rec->n_params * sizeof(float));
    rt_trainer_params(t, rec->params_initial);
    for (int s = 0; s < cfg->steps; s++) {
        rec->preclip[s] = malloc(rec->n_params * sizeof(float));
        rt_trainer_probe_preclip_gradients(t, rec->preclip[s]);
        rt_step_metrics m;
        if (rt_trainer_step(t, &m, &err)) {
            fprintf(stderr, "rank %d: step %d on %s: %s\n", world->rank, s, be->name, err.msg);
            rt_trainer_free(t);
            return -1;
        }
        rec->loss[s] = m.loss;
        rec->grad_norm[s] = m.grad_norm;
    }
    rt_trainer_probe_preclip_gradients(t, NULL);
    rec->params_final = malloc(rec->n_params * sizeof(float));
    rt_trainer_params(t, rec->params_final);
    rt_trainer_free(t);
    return 0;
}

/* Worst per-tensor error of got against ref (with bases: of got - got_base against ref - ref_base). */
static double tensor_error(const run_record *layout, const float *got, const float *got_base, const float *ref,
                           const float *ref_base, char worst_name[64]) {
    double worst = 0.0;
    for (int i = 0; i < layout->n_views; i++) {
        const rt_named_view *v = &layout->views[i];
        double scale = 0.0, diff = 0.0;
        for (size_t j = v->offset; j < v->offset + v->numel; j++) {
            double g = got[j] - (got_base ? got_base[j] : 0.0), r = ref[j] - (ref_base ? ref_base[j] : 0.0);
            scale = fmax(scale, fabs(r));
            diff = fmax(diff, fabs(g - r));
        }
        double e = scale > 0.0 ? diff / scale : diff;
        if (i == 0 || !(e <= worst)) { /* NaN is the worst */
            worst = e;
            snprintf(worst_name, 64, "%s", v->name);
        }
    }
    return worst;
}

static double rel_diff(double got, double ref) { return fabs(got - ref) / fabs(ref); }

/* Asserts got within tol of ref: losses, grad norms and gradients at every step, the parameter change after. */
static void compare_runs(const run_record *got, const run_record *ref, double tol, const char *what) {
    CU_ASSERT_FATAL(got->n_params == ref->n_params && got->steps == ref->steps);
    const int report = world->rank == 0;
    for (int s = 0; s < ref->steps; s++) {
        char grad_name[64] = "?";
        const double loss_err = rel_diff(got->loss[s], ref->loss[s]);
        const double norm_err = rel_diff(got->grad_norm[s], ref->grad_norm[s]);
        const double grad_err = tensor_error(ref, got->preclip[s], NULL, ref->preclip[s], NULL, grad_name);
        const int ok = loss_err <= tol && norm_err <= tol && grad_err <= tol;
        if (report && (!ok || verbose()))
            fprintf(stderr,
                    "\n  %s step %d: loss %.7f vs %.7f (err %.2e), grad_norm err %.2e, worst gradient err %.2e (%s), "
                    "tol %.0e%s",
                    what, s, got->loss[s], ref->loss[s], loss_err, norm_err, grad_err, grad_name, tol,
                    ok ? "" : "  FAILED");
        CU_ASSERT(loss_err <= tol);
        CU_ASSERT(norm_err <= tol);
        CU_ASSERT(grad_err <= tol);
    }
    char param_name[64] = "?";
    const double param_err =
        tensor_error(ref, got->params_final, got->params_initial, ref->params_final, ref->params_initial, param_name);
    if (report && (param_err > tol || verbose()))
        fprintf(stderr, "\n  %s: worst parameter change err %.2e (%s), tol %.0e%s", what, param_err, param_name, tol,
                param_err <= tol ? "" : "  FAILED");
    CU_ASSERT(param_err <= tol);
}

/* The tiny preset of each family, 3 steps: CUDA against the CPU backend, on one rank (each rank alone). */
static void test_cuda_vs_cpu(void) {
    const rt_family families[2] = {RT_FAMILY_LLAMA, RT_FAMILY_GPT2};
    for (int f = 0; f < 2; f++) {
        rt_config cfg;
        base_config(&cfg, families[f]);
        run_record on_cpu, on_gpu;
        CU_ASSERT_FATAL(record_run(&cfg, self, rt_backend_cpu(), &on_cpu) == 0);
        CU_ASSERT_FATAL(record_run(&cfg, self, gpu, &on_gpu) == 0);
        /* the same initial weights on both (drawn on the host, copied) */
        CU_ASSERT(memcmp(on_gpu.params_initial, on_cpu.params_initial, on_cpu.n_params * sizeof(float)) == 0);
        compare_runs(&on_gpu, &on_cpu, TRAIN_TOL, f == 0 ? "tiny llama, CUDA vs CPU" : "tiny gpt2, CUDA vs CPU");
        free_record(&on_cpu);
        free_record(&on_gpu);
    }
}

/* keep, recompute and offload on the GPU (the job's ranks, sp = P): the same bits. */
static void test_activation_modes_bitwise(void) {
    const rt_family families[2] = {RT_FAMILY_LLAMA, RT_FAMILY_GPT2};
    const rt_activation_mode modes[3] = {RT_ACT_KEEP, RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD};
    const char *mode_names[3] = {"keep", "recompute", "offload"};
    for (int f = 0; f < 2; f++) {
        rt_config cfg;
        base_config(&cfg, families[f]);
        cfg.sp = world->size;
        cfg.n_layers = 3; /* two layer inputs wait on the host in offload mode */
        run_record runs[3];
        for (int i = 0; i < 3; i++) {
            cfg.activation_mode = modes[i];
            CU_ASSERT_FATAL(record_run(&cfg, world, gpu, &runs[i]) == 0);
        }
        for (int i = 1; i < 3; i++) {
            int same = memcmp(runs[i].params_final, runs[0].params_final, runs[0].n_params * sizeof(float)) == 0;
            for (int s = 0; s < cfg.steps; s++) {
                same &= memcmp(&runs[i].loss[s], &runs[0].loss[s], sizeof(double)) == 0;
                same &= memcmp(&runs[i].grad_norm[s], &runs[0].grad_norm[s], sizeof(double)) == 0;
                same &= memcmp(runs[i].preclip[s], runs[0].preclip[s], runs[0].n_params * sizeof(float)) == 0;
            }
            if (world->rank == 0 && (!same || verbose()))
                fprintf(stderr, "\n  %s %s vs keep on the GPU: %s", families[f] == RT_FAMILY_LLAMA ? "llama" : "gpt2",
                        mode_names[i], same ? "bit for bit" : "DIFFERENT BITS");
            CU_ASSERT(same);
        }
        for (int i = 0; i < 3; i++)
            free_record(&runs[i]);
    }
}

/* 2 ranks sharing the GPU: ring attention (sp = P) with ZeRO-2 and ZeRO-3 (parameters gathered per layer,
 * nonblocking reductions) and grad_accum 2 against 1 rank, all on CUDA. */
static void test_ring_zero_vs_one_rank(void) {
    if (world->size == 1) {
        if (verbose()) fprintf(stderr, "\n  1 rank: nothing to split (run under mpirun -np 2)");
        return;
    }
    const rt_family families[2] = {RT_FAMILY_LLAMA, RT_FAMILY_GPT2};
    for (int f = 0; f < 2; f++) {
        rt_config cfg;
        base_config(&cfg, families[f]);
        cfg.grad_accum = 2; /* stages 2-3 accumulate their shard over micro-batches */
        rt_config single = cfg;
        run_record one;
        CU_ASSERT_FATAL(record_run(&single, self, gpu, &one) == 0);
        for (int stage = 2; stage <= 3; stage++) {
            cfg.sp = world->size;
            cfg.zero_stage = stage;
            run_record split;
            CU_ASSERT_FATAL(record_run(&cfg, world, gpu, &split) == 0);
            char what[96];
            snprintf(what, sizeof what, "%s sp=%d ZeRO-%d vs 1 rank (CUDA, staged plane)",
                     families[f] == RT_FAMILY_LLAMA ? "llama" : "gpt2", world->size, stage);
            compare_runs(&split, &one, SPLIT_TOL, what);
            free_record(&split);
        }
        free_record(&one);
    }
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    rt_comm *node = rt_comm_split_node(world);
    const int local_rank = node->rank;
    rt_comm_destroy(node);
    rt_error err;
    static rt_backend harness; /* TEST_CUDA_BACKEND=cpu: see the top comment */
    const char *backend_env = getenv("TEST_CUDA_BACKEND");
    int rc = 0;
    if (backend_env && strcmp(backend_env, "cpu") == 0) {
        harness = *rt_backend_cpu(); /* named "cpu": the device planes treat it as the CPU it is */
        gpu = &harness;
    } else {
        rc = rt_backend_open(&gpu, "cuda", local_rank, &err);
    }
    double failed = rc != 0;
    rt_allreduce_max_f64(world, &failed, 1);
    if (failed) { /* every rank skips alike; one line, rank 0's */
        if (world->rank == 0) printf("test_cuda_train: skipped: %s\n", rc ? err.msg : "another rank has no GPU");
        rt_backend_close(gpu);
        rt_comm_finalize();
        return 77;
    }
    if (world->size > 1) setenv("RINGTRAIN_DEVICE_PLANE", "staged", 0);
    self = rt_comm_split(world, world->rank, 0);
    test_write_tokens(world, "rt_cuda_train", 20000, 99, data_path, NULL);
    test_case cases[] = {
        {"tiny llama and gpt2: CUDA == CPU (3 steps)", test_cuda_vs_cpu},
        {"CUDA: keep == recompute == offload, bitwise", test_activation_modes_bitwise},
        {"CUDA, 2 ranks on one GPU: ring attention + ZeRO-2 and ZeRO-3 == 1 rank", test_ring_zero_vs_one_rank},
    };
    int worst = test_mpi_run_suite(world, "cuda_train", cases, (int)(sizeof cases / sizeof cases[0]));
    rt_barrier(world);
    if (world->rank == 0) {
        unlink(data_path);
        *strrchr(data_path, '/') = '\0';
        rmdir(data_path);
    }
    rt_comm_destroy(self);
    rt_backend_close(gpu);
    rt_comm_finalize();
    return worst;
}
