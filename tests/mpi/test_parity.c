/*
 * test_parity.c: multi-rank training against a single-rank run of the same
 * model, data and seed, run under mpirun with 1..4 ranks. Each rank also
 * trains the single-rank reference itself, on a communicator of its own and
 * in a trainer of its own, so every comparison happens inside one job and
 * the reference shares no state with the run under test. The reference is
 * the same code on one rank: it finds what the split (ring, zigzag, mesh,
 * ZeRO shards, reductions) changes, not errors common to both (those are
 * the job of the naive-op, finite-difference and NumPy tests).
 *
 * Compared at every step: the loss, grad_norm, every tensor's reduced
 * gradient BEFORE clipping and the clipped gradient the update used; after
 * the last step, the parameters. Besides, on each run alone: grad_norm is
 * the norm of its pre-clip gradient (computed here, in double), and the
 * clipped gradient is the pre-clip one times min(1, grad_clip / grad_norm).
 *
 *  - sequence parallelism: sp = P, llama with dropout and gpt2, grad_clip = 0;
 *  - meshes: every dp x sp factorization of P, grad_accum = 2;
 *  - ZeRO stages 0, 1, 2 against the 1-rank run (and 12 * ceil(Ψ/P) bytes);
 *  - clipping that really scales (grad_norm > 2 * grad_clip is asserted),
 *    one case per family, on sharded optimizers;
 *  - dropout keys: sequences, micro-batches, steps, layers and sites never
 *    share a mask, and a (seed, step, layer, site, sequence, position) draws
 *    the same mask on any mesh;
 *  - keep, recompute and offload give the same bits, and so does a second
 *    run of the same seed on the same ranks.
 *
 * Error of a tensor: max_i |x_i - ref_i| / max_i |ref_i|, the worst over
 * the model's named tensors; parameters are compared as their change over
 * the run (after - initial), which is what training computed. Scalars:
 * |x - ref| / |ref|.
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
#include "shard/optimizer.h"
#include "tests/support/dropout_probe.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

#define MAX_STEPS 5
#define GRAD_TOL 1e-5 /* fp32 reductions in another order: measured <= 2e-6 */
#define NORM_TOL 1e-5 /* grad_norm and loss */
/* Parameter change over the run: norm weights sit near 1, where fp32 rounds each update to ulp(1) = 1.2e-7,
 * 2e-5 of a 3-step change of 6e-3; runs that differ by a few ulps measured 1e-4. A wrong update is O(1). */
#define PARAM_TOL 1e-3
#define CLIP_TOL 1e-6 /* the clipped gradient against pre-clip * scale, within one run */

static rt_comm *world, *self;
static char data_path[TEST_PATH_MAX];
static char docs_path[TEST_PATH_MAX]; /* packed documents: separator 0 about every 9 tokens */

typedef struct {
    int steps;
    double loss[MAX_STEPS], grad_norm[MAX_STEPS];
    float *preclip[MAX_STEPS];            /* (Ψ) reduced gradient before clipping */
    float *postclip[MAX_STEPS];           /* (Ψ) the gradient the update used */
    float *params_initial, *params_final; /* (Ψ) */
    size_t n_params;
    size_t optimizer_bytes;
} run_record;

/* Adam's eps is 1e-3 (test_base_config says why): later steps still compare arithmetic. */
static void base_config(rt_config *cfg, rt_family family, float dropout) {
    test_base_config(cfg, family, data_path);
    cfg->dropout = dropout;
    cfg->seq_len = 48;    /* divides into 2*sp chunks for sp = 1..4 */
    cfg->batch_size = 12; /* divides by dp = 1..4 */
    cfg->steps = 3;
    cfg->grad_clip = 0.0f; /* the plain cases compare unclipped updates; clipping has its own cases */
}

static float *copy_params(rt_trainer *t, size_t n) {
    float *dst = malloc(n * sizeof *dst);
    rt_trainer_params(t, dst);
    return dst;
}

/* Trains cfg on comm (on backend), recording everything compared; the trainer is freed after copying. */
static int record_run_on(const rt_config *cfg, rt_comm *comm, const rt_backend *backend, run_record *rec) {
    rt_trainer *t = NULL;
    rt_error err;
    memset(rec, 0, sizeof *rec);
    if (rt_trainer_init_on(&t, cfg, comm, backend, &err)) {
        fprintf(stderr, "rank %d: trainer init: %s\n", world->rank, err.msg);
        rt_trainer_free(t);
        return -1;
    }
    rec->n_params = rt_trainer_model(t)->table.total;
    rec->steps = cfg->steps;
    rec->params_initial = copy_params(t, rec->n_params);
    for (int s = 0; s < cfg->steps; s++) {
        rec->preclip[s] = malloc(rec->n_params * sizeof(float));
        rec->postclip[s] = malloc(rec->n_params * sizeof(float));
        rt_trainer_probe_preclip_gradients(t, rec->preclip[s]);
        rt_step_metrics m;
        if (rt_trainer_step(t, &m, &err)) {
            fprintf(stderr, "rank %d: step %d: %s\n", world->rank, s, err.msg);
            rt_trainer_free(t);
            return -1;
        }
        rec->loss[s] = m.loss;
        rec->grad_norm[s] = m.grad_norm;
        rec->optimizer_bytes = m.optimizer_bytes;
        rt_trainer_gradients(t, rec->postclip[s]);
    }
    rec->params_final = copy_params(t, rec->n_params);
    rt_trainer_free(t);
    return 0;
}

static int record_run(const rt_config *cfg, rt_comm *comm, run_record *rec) {
    return record_run_on(cfg, comm, rt_backend_cpu(), rec);
}

static void free_record(run_record *rec) {
    for (int s = 0; s < rec->steps; s++) {
        free(rec->preclip[s]);
        free(rec->postclip[s]);
    }
    free(rec->params_initial);
    free(rec->params_final);
}

/* Worst per-tensor error of got against ref over the model's named tensors; with base arrays, of the
 * changes got - got_base against ref - ref_base. (A small model is built for its table.) */
static double tensor_error(const rt_config *cfg, const float *got, const float *got_base, const float *ref,
                           const float *ref_base, char worst_name[64]) {
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
        for (size_t j = v->offset; j < v->offset + v->numel; j++) {
            double g = got[j] - (got_base ? got_base[j] : 0.0), r = ref[j] - (ref_base ? ref_base[j] : 0.0);
            scale = fmax(scale, fabs(r));
            diff = fmax(diff, fabs(g - r));
        }
        double e = scale > 0.0 ? diff / scale : diff;
        if (!(e <= worst)) {
            worst = e;
            snprintf(worst_name, 64, "%s", v->name); /* the table goes with the model */
        }
    }
    rt_model_free(&model);
    rt_device_memory_destroy(&mem);
    return worst;
}

static double rel_diff(double got, double ref) { return fabs(got - ref) / fabs(ref); }

static double norm_of(const float *x, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++)
        sum += (double)x[i] * x[i];
    return sqrt(sum);
}

/* One run on its own: grad_norm is its pre-clip gradient's norm; the update used pre-clip * the clip scale. */
static void check_clip_arithmetic(const run_record *rec, float grad_clip, int expect_clipping, const char *what) {
    for (int s = 0; s < rec->steps; s++) {
        double norm = norm_of(rec->preclip[s], rec->n_params);
        double norm_err = rel_diff(rec->grad_norm[s], norm);
        double scale = grad_clip > 0.0f && norm > grad_clip ? grad_clip / norm : 1.0;
        double worst = 0.0, size = 0.0;
        for (size_t i = 0; i < rec->n_params; i++) {
            size = fmax(size, fabs(rec->preclip[s][i] * scale));
            worst = fmax(worst, fabs(rec->postclip[s][i] - rec->preclip[s][i] * scale));
        }
        double clip_err = worst / size;
        if (world->rank == 0 && (norm_err > NORM_TOL || clip_err > CLIP_TOL))
            fprintf(stderr, "\n  %s step %d: grad_norm %.9g vs norm of the gradient %.9g; clipped gradient err %.2e\n",
                    what, s, rec->grad_norm[s], norm, clip_err);
        CU_ASSERT(norm_err <= NORM_TOL);
        CU_ASSERT(clip_err <= CLIP_TOL);
        if (expect_clipping) {
            if (world->rank == 0 && !(norm > 2.0 * grad_clip))
                fprintf(stderr, "\n  %s step %d: grad_norm %.3g does not exceed 2 x grad_clip %.3g\n", what, s, norm,
                        (double)grad_clip);
            CU_ASSERT(norm > 2.0 * grad_clip);
            CU_ASSERT(fabs(norm_of(rec->postclip[s], rec->n_params) - grad_clip) <= 1e-5 * grad_clip);
        }
    }
}

/* Runs cfg on the world with (dp, sp, stage) and compares everything with the single-rank run of cfg. */
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
        char pre_name[64] = "?", post_name[64] = "?";
        double loss_err = rel_diff(got.loss[s], ref.loss[s]);
        double norm_err = rel_diff(got.grad_norm[s], ref.grad_norm[s]);
        double pre_err = tensor_error(&cfg, got.preclip[s], NULL, ref.preclip[s], NULL, pre_name);
        double post_err = tensor_error(&cfg, got.postclip[s], NULL, ref.postclip[s], NULL, post_name);
        if (world->rank == 0 &&
            (loss_err > NORM_TOL || norm_err > NORM_TOL || pre_err > GRAD_TOL || post_err > GRAD_TOL))
            fprintf(stderr,
                    "\n  %s dp=%d sp=%d stage=%d step %d: loss err %.2e, grad_norm err %.2e (%.9g vs %.9g), "
                    "pre-clip grad err %.2e (%s), clipped grad err %.2e (%s)\n",
                    what, dp, sp, stage, s, loss_err, norm_err, got.grad_norm[s], ref.grad_norm[s], pre_err, pre_name,
                    post_err, post_name);
        CU_ASSERT(loss_err <= NORM_TOL);
        CU_ASSERT(norm_err <= NORM_TOL);
        CU_ASSERT(pre_err <= GRAD_TOL);
        CU_ASSERT(post_err <= GRAD_TOL);
    }
    char param_name[64] = "?";
    double param_err =
        tensor_error(&cfg, got.params_final, got.params_initial, ref.params_final, ref.params_initial, param_name);
    if (world->rank == 0 && param_err > PARAM_TOL)
        fprintf(stderr, "\n  %s dp=%d sp=%d stage=%d: parameter change err %.2e (%s)\n", what, dp, sp, stage, param_err,
                param_name);
    CU_ASSERT(param_err <= PARAM_TOL);
    check_clip_arithmetic(&ref, cfg.grad_clip, cfg.grad_clip > 0.0f, "1-rank reference");
    check_clip_arithmetic(&got, cfg.grad_clip, cfg.grad_clip > 0.0f, what);
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

/* The mesh the ZeRO cases use: dp x sp = 2 x 2 on 4 ranks, dp = P otherwise. */
static void zero_mesh(rt_config *cfg) {
    cfg->dp = world->size % 4 == 0 ? 2 : world->size;
    cfg->sp = world->size / cfg->dp;
}

static void test_zero_stages(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.0f);
    cfg.steps = 4;
    cfg.grad_accum = 2; /* stage 2 accumulates its shard over micro-batches */
    zero_mesh(&cfg);
    for (int stage = 0; stage < 3; stage++)
        check_against_single_rank(cfg, cfg.dp, cfg.sp, stage, "ZeRO");
    /* Stage >= 1: master weights + two moments for this rank's shard, 12 * ceil(Ψ / P) bytes; stage 0 updates
     * the fp32 parameters in place and keeps the two moments of the whole (padded) buffer. */
    cfg.steps = 1;
    size_t P = (size_t)world->size;
    for (int stage = 0; stage < 3; stage++) {
        run_record rec;
        cfg.zero_stage = stage;
        CU_ASSERT_FATAL(record_run(&cfg, world, &rec) == 0);
        size_t psi = rec.n_params;
        size_t expected = stage == 0 ? 8 * rt_optimizer_padded_size(psi, world->size) : 12 * ((psi + P - 1) / P);
        CU_ASSERT_EQUAL(rec.optimizer_bytes, expected);
        free_record(&rec);
    }
}

/*
 * ZeRO-3 on mesh dp x sp against the stages 0-2 on the same mesh and against one rank: loss and grad_norm of
 * every step, and the parameters themselves after the last (per tensor, max |p - ref| / max |ref|), within
 * same_tol (same rank count) and other_tol (one rank). Against stage 2, which reduces the same ranges in the
 * same order, the gathers only move values: the same bits.
 */
static int zero3_close(const run_record *got, const run_record *ref, const rt_config *cfg, double tol,
                       const char *what) {
    double worst_scalar = 0.0;
    for (int s = 0; s < cfg->steps; s++)
        worst_scalar = fmax(worst_scalar,
                            fmax(rel_diff(got->loss[s], ref->loss[s]), rel_diff(got->grad_norm[s], ref->grad_norm[s])));
    char name[64] = "?";
    double param_err = tensor_error(cfg, got->params_final, NULL, ref->params_final, NULL, name);
    int ok = worst_scalar <= tol && param_err <= tol;
    if (!ok && world->rank == 0)
        fprintf(stderr, "\n  ZeRO-3 dp=%d sp=%d vs %s: loss/grad_norm err %.2e, parameter err %.2e (%s), tol %.0e\n",
                cfg->dp, cfg->sp, what, worst_scalar, param_err, name, tol);
    return ok;
}

static int zero3_same_bits(const run_record *a, const run_record *b, const rt_config *cfg) {
    int same = memcmp(a->loss, b->loss, sizeof a->loss) == 0 &&
               memcmp(a->grad_norm, b->grad_norm, sizeof a->grad_norm) == 0 &&
               memcmp(a->params_final, b->params_final, a->n_params * sizeof(float)) == 0;
    for (int s = 0; s < cfg->steps; s++)
        same &= memcmp(a->preclip[s], b->preclip[s], a->n_params * sizeof(float)) == 0;
    if (!same && world->rank == 0)
        fprintf(stderr, "\n  ZeRO-3 dp=%d sp=%d: not the bits of stage 2\n", cfg->dp, cfg->sp);
    return same;
}

#define ZERO3_SAME_TOL 1e-6
#define ZERO3_OTHER_TOL 1e-5

/* stages: the stages below 3 to compare with (bit i: stage i); stage 2 always, for the bitwise check. */
static void check_zero3(rt_config cfg, unsigned stages) {
    run_record single, runs[4];
    rt_config one = cfg;
    one.dp = one.sp = 1;
    one.zero_stage = 0;
    stages |= 1u << 2;
    CU_ASSERT_FATAL(record_run(&one, self, &single) == 0);
    for (int stage = 0; stage < 4; stage++) {
        if (stage < 3 && !(stages & (1u << stage))) continue;
        cfg.zero_stage = stage;
        CU_ASSERT_FATAL(record_run(&cfg, world, &runs[stage]) == 0);
    }
    const char *names[] = {"stage 0", "stage 1", "stage 2"};
    for (int stage = 0; stage < 3; stage++)
        if (stages & (1u << stage)) CU_ASSERT(zero3_close(&runs[3], &runs[stage], &cfg, ZERO3_SAME_TOL, names[stage]));
    CU_ASSERT(zero3_same_bits(&runs[3], &runs[2], &cfg));
    CU_ASSERT(zero3_close(&runs[3], &single, &cfg, ZERO3_OTHER_TOL, "1 rank"));
    check_clip_arithmetic(&runs[3], cfg.grad_clip, cfg.grad_clip > 0.0f, "ZeRO-3");
    free_record(&single);
    for (int stage = 0; stage < 4; stage++)
        if (stage == 3 || (stages & (1u << stage))) free_record(&runs[stage]);
}

/* base_config on packed documents: separator 0, the first (starts) or last token of each document. */
static void docs_config(rt_config *cfg, rt_family family, float dropout, int starts) {
    base_config(cfg, family, dropout);
    snprintf(cfg->data_train, sizeof cfg->data_train, "%s", docs_path);
    rt_error err;
    CU_ASSERT_FATAL(rt_config_set(cfg, "data", "document_separator", "0", &err) == 0);
    CU_ASSERT_FATAL(rt_config_set(cfg, "data", "separator_starts_document", starts ? "true" : "false", &err) == 0);
}

/* Packed documents (documents of 1 to ~40 tokens across chunk and rank boundaries) against one rank, in the
 * balanced layout (parallel.document_layout's default) unless said: llama with dropout at sp = P, balanced and
 * zigzag; gpt2 (separator first) on every dp x sp mesh with grad_accum 2; llama on the ZeRO mesh at stages
 * 0-3. */
static void test_documents(void) {
    rt_config cfg;
    docs_config(&cfg, RT_FAMILY_LLAMA, 0.1f, 0);
    check_against_single_rank(cfg, 1, world->size, 0, "documents llama+dropout");
    cfg.document_layout = RT_DOC_LAYOUT_ZIGZAG;
    check_against_single_rank(cfg, 1, world->size, 0, "documents llama+dropout, zigzag");
    docs_config(&cfg, RT_FAMILY_GPT2, 0.0f, 1);
    cfg.grad_accum = 2;
    cfg.mlp_tile_mib = 1; /* tiles of 256 tokens: tiled on 1 rank (576 local tokens) and sp 2, untiled at sp 4 */
    for (int dp = 1; dp <= world->size; dp++) {
        if (world->size % dp != 0 || cfg.batch_size % dp != 0) continue;
        check_against_single_rank(cfg, dp, world->size / dp, 0, "documents gpt2 mesh");
    }
    docs_config(&cfg, RT_FAMILY_LLAMA, 0.0f, 0);
    cfg.grad_accum = 2;
    zero_mesh(&cfg);
    check_zero3(cfg, 1u << 0 | 1u << 1);
}

/* Every dp x sp mesh of the job (1x3 and 3x1 on 3 ranks: shards of uneven tensor cuts), 5 steps, against
 * stages 0 and 2. */
static void test_zero3_meshes(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f);
    cfg.steps = 5;
    cfg.grad_accum = 2;
    cfg.n_layers = 3; /* a gather buffer that changes layers within a pass */
    for (int dp = 1; dp <= world->size; dp++) {
        if (world->size % dp != 0 || cfg.batch_size % dp != 0) continue;
        cfg.dp = dp;
        cfg.sp = world->size / dp;
        check_zero3(cfg, 1u << 0);
    }
}

/* Clipping that acts (asserted by check_clip_arithmetic), gpt2 with its tied head, on the ZeRO mesh. */
static void test_zero3_clipped_gpt2(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_GPT2, 0.0f);
    cfg.steps = 5;
    cfg.grad_clip = 0.1f;
    zero_mesh(&cfg);
    check_zero3(cfg, 1u << 0 | 1u << 1);
}

/* Device bytes of a trainer of cfg on the world after setup (parameters, gradients, optimizer, activations). */
static size_t device_bytes(const rt_config *cfg) {
    rt_trainer *t = NULL;
    rt_error err;
    size_t bytes = 0;
    if (rt_trainer_init_on(&t, cfg, world, rt_backend_cpu(), &err) == 0)
        bytes = rt_trainer_device_bytes(t);
    else
        fprintf(stderr, "rank %d: trainer init: %s\n", world->rank, err.msg);
    rt_trainer_free(t);
    return bytes;
}

/*
 * ZeRO-3 drops the full parameter buffer (padded Ψ floats) for two layers' worth of gather buffers and one for
 * the tensors outside the layers: from stage 2 to 3 the device bytes fall by exactly that, with the layer
 * and outside sizes computed here from the llama shape. Every other buffer (gradient shard, moments, master,
 * activations) is the same at both stages.
 */
static void test_zero3_memory(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.0f);
    zero_mesh(&cfg);
    cfg.n_layers = 6; /* more layers than gather buffers */
    const size_t C = (size_t)cfg.d_model, D = C / (size_t)cfg.n_heads, F = (size_t)cfg.d_ff;
    const size_t Vp = ((size_t)cfg.vocab_size + 127) / 128 * 128;
    const size_t layer =
        2 * C + (size_t)(cfg.n_heads + 2 * cfg.n_kv_heads) * D * C + C * (size_t)cfg.n_heads * D + 2 * F * C + C * F;
    const size_t outside = 2 * Vp * C + C; /* wte, lm_head, the final norm */
    const size_t psi = (size_t)cfg.n_layers * layer + outside;
    cfg.zero_stage = 2;
    const size_t stage2 = device_bytes(&cfg);
    cfg.zero_stage = 3;
    const size_t stage3 = device_bytes(&cfg);
    const size_t saved = (rt_optimizer_padded_size(psi, world->size) - outside - 2 * layer) * sizeof(float);
    if (stage2 - stage3 != saved && world->rank == 0)
        fprintf(stderr, "\n  device bytes: stage 2 %zu, stage 3 %zu: %zu saved, expected %zu\n", stage2, stage3,
                stage2 - stage3, saved);
    CU_ASSERT(stage2 > stage3);
    CU_ASSERT_EQUAL(stage2 - stage3, saved);
}

/* Clipping that acts: the pre-clip norms of these runs are above 0.2 (asserted), so 0.1 scales every step. */
static void test_clipping_llama_zero2(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f);
    cfg.grad_clip = 0.1f;
    cfg.grad_accum = 2;
    zero_mesh(&cfg);
    check_against_single_rank(cfg, cfg.dp, cfg.sp, 2, "llama clipped, ZeRO-2");
}

static void test_clipping_gpt2_zero1(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_GPT2, 0.0f);
    cfg.grad_clip = 0.1f;
    check_against_single_rank(cfg, 1, world->size, 1, "gpt2 clipped, ZeRO-1");
}

/* Runs cfg on comm through the dropout probe; returns the unique log (every key once). */
static int record_masks(const rt_config *cfg, rt_comm *comm, dropout_log *log) {
    *log = (dropout_log){0};
    run_record rec;
    int rc = record_run_on(cfg, comm, dropout_probe_backend(log), &rec);
    dropout_probe_backend(NULL);
    if (rc == 0) free_record(&rec);
    size_t disagreeing = dropout_log_unique(log);
    if (disagreeing) fprintf(stderr, "\n  rank %d: %zu keys drew two different masks\n", world->rank, disagreeing);
    CU_ASSERT_EQUAL(disagreeing, 0);
    return rc;
}

/*
 * The 1-rank run draws one mask per (step, layer, site, sequence, position):
 * the number of distinct keys is steps * L * 2 sites * B * grad_accum * T,
 * so two sequences, two micro-batches, two steps or two layers that reuse a
 * key show up as too few keys, and keys that reach the same mask as shared
 * masks (p = 0.5 over 64 channels: two independent masks agree with
 * probability 2^-64). Then every mesh of the job draws, for each key it
 * holds, the 1-rank run's mask, and the ranks together hold every key.
 */
static void test_dropout_keys(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.5f);
    cfg.steps = 2;
    cfg.grad_accum = 2;
    cfg.batch_size = 4;
    dropout_log ref;
    CU_ASSERT_FATAL(record_masks(&cfg, self, &ref) == 0);
    size_t expected_keys = (size_t)cfg.steps * cfg.n_layers * 2 * cfg.batch_size * cfg.grad_accum * cfg.seq_len;
    CU_ASSERT_EQUAL(ref.n, expected_keys);
    CU_ASSERT_EQUAL(dropout_log_shared_masks(&ref), 0);
    if (ref.n != expected_keys && world->rank == 0)
        fprintf(stderr, "\n  1 rank: %zu distinct dropout keys, expected %zu\n", ref.n, expected_keys);
    for (int dp = 1; dp <= world->size; dp++) {
        if (world->size % dp != 0 || cfg.batch_size % dp != 0) continue;
        rt_config mesh_cfg = cfg;
        mesh_cfg.dp = dp;
        mesh_cfg.sp = world->size / dp;
        dropout_log got;
        CU_ASSERT_FATAL(record_masks(&mesh_cfg, world, &got) == 0);
        size_t mismatched = 0;
        for (size_t i = 0; i < got.n; i++) {
            const dropout_record *r = dropout_log_find(&ref, &got.rows[i]);
            mismatched += !r || r->mask_hash != got.rows[i].mask_hash;
        }
        double held = (double)got.n;
        rt_allreduce_sum_f64(world, &held, 1);
        if (mismatched && world->rank == 0)
            fprintf(stderr, "\n  dp=%d sp=%d: %zu dropout rows differ from the 1-rank run\n", dp, mesh_cfg.sp,
                    mismatched);
        CU_ASSERT_EQUAL(mismatched, 0);
        CU_ASSERT_EQUAL((size_t)held, expected_keys);
        dropout_log_free(&got);
    }
    dropout_log_free(&ref);
}

/* keep, recompute and offload on the job's ranks (sp = P) at every ZeRO stage: bitwise the same losses, norms,
 * gradients and parameters. */
static void test_activation_modes_bitwise(void) {
    const rt_family families[] = {RT_FAMILY_LLAMA, RT_FAMILY_GPT2};
    for (int case_ = 0; case_ < 2 * 4 + 2; case_++) {
        const int f = case_ % 2, stage = case_ < 8 ? case_ / 2 : 3 * (case_ - 8);
        rt_config cfg;
        if (case_ < 8)
            base_config(&cfg, families[f], families[f] == RT_FAMILY_LLAMA ? 0.1f : 0.0f);
        else /* packed documents: llama at stage 0, gpt2 at stage 3 */
            docs_config(&cfg, families[f], families[f] == RT_FAMILY_LLAMA ? 0.1f : 0.0f, f);
        cfg.sp = world->size;
        cfg.n_layers = 3;
        cfg.zero_stage = stage;
        run_record runs[3];
        const rt_activation_mode modes[] = {RT_ACT_KEEP, RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD};
        for (int i = 0; i < 3; i++) {
            cfg.activation_mode = modes[i];
            CU_ASSERT_FATAL(record_run(&cfg, world, &runs[i]) == 0);
        }
        for (int i = 1; i < 3; i++)
            for (int s = 0; s < cfg.steps; s++) {
                CU_ASSERT(memcmp(&runs[i].loss[s], &runs[0].loss[s], sizeof(double)) == 0);
                CU_ASSERT(memcmp(&runs[i].grad_norm[s], &runs[0].grad_norm[s], sizeof(double)) == 0);
                CU_ASSERT(memcmp(runs[i].preclip[s], runs[0].preclip[s], runs[0].n_params * sizeof(float)) == 0);
            }
        for (int i = 1; i < 3; i++)
            CU_ASSERT(memcmp(runs[i].params_final, runs[0].params_final, runs[0].n_params * sizeof(float)) == 0);
        for (int i = 0; i < 3; i++)
            free_record(&runs[i]);
    }
}

/* The same seed on the same ranks gives the same bits, run to run (llama with dropout, ZeRO-2, dp x sp). */
static void test_run_to_run_bitwise(void) {
    rt_config cfg;
    base_config(&cfg, RT_FAMILY_LLAMA, 0.1f);
    cfg.grad_accum = 2;
    cfg.zero_stage = 2;
    zero_mesh(&cfg);
    run_record a, b;
    CU_ASSERT_FATAL(record_run(&cfg, world, &a) == 0);
    CU_ASSERT_FATAL(record_run(&cfg, world, &b) == 0);
    CU_ASSERT(memcmp(a.loss, b.loss, sizeof a.loss) == 0);
    CU_ASSERT(memcmp(a.grad_norm, b.grad_norm, sizeof a.grad_norm) == 0);
    for (int s = 0; s < cfg.steps; s++)
        CU_ASSERT(memcmp(a.preclip[s], b.preclip[s], a.n_params * sizeof(float)) == 0);
    CU_ASSERT(memcmp(a.params_final, b.params_final, a.n_params * sizeof(float)) == 0);
    free_record(&a);
    free_record(&b);
}

int main(int argc, char **argv) {
    world = rt_comm_world_mpi(&argc, &argv);
    self = rt_comm_split(world, world->rank, 0);
    test_write_tokens(world, "rt_parity", 20000, 99, data_path, NULL);
    test_write_tokens(world, "rt_parity_docs", 20000, 98, docs_path, NULL); /* the folder and its cleanup */
    test_write_document_tokens(world, docs_path, 20000, 98);
    test_case cases[] = {
        {"seqpar: llama with dropout == 1 rank", test_seqpar_llama_dropout},
        {"seqpar: gpt2 == 1 rank", test_seqpar_gpt2},
        {"meshes dp x sp == 1 rank", test_meshes},
        {"ZeRO stages 0/1/2 == 1 rank", test_zero_stages},
        {"ZeRO-3 == stages 0-2 == 1 rank, every mesh", test_zero3_meshes},
        {"ZeRO-3 with clipping that acts, gpt2 == stages 0-2 == 1 rank", test_zero3_clipped_gpt2},
        {"ZeRO-3 memory: the full parameter buffer gone, gather buffers instead", test_zero3_memory},
        {"clipping that acts: llama, ZeRO-2 == 1 rank", test_clipping_llama_zero2},
        {"clipping that acts: gpt2, ZeRO-1 == 1 rank", test_clipping_gpt2_zero1},
        {"dropout keys: distinct masks, same on every mesh", test_dropout_keys},
        {"keep == recompute == offload, bitwise, every ZeRO stage, packed documents too",
         test_activation_modes_bitwise},
        {"packed documents: sp, every mesh, ZeRO 0-3 == 1 rank", test_documents},
        {"same seed, same ranks: the same bits, run to run", test_run_to_run_bitwise},
    };
    int worst = test_mpi_run_suite(world, "parity", cases, (int)(sizeof cases / sizeof cases[0]));
    rt_barrier(world);
    if (world->rank == 0) {
        char *paths[2] = {data_path, docs_path};
        for (int i = 0; i < 2; i++) {
            unlink(paths[i]);
            *strrchr(paths[i], '/') = '\0';
            rmdir(paths[i]);
        }
    }
    rt_comm_destroy(self);
    rt_comm_finalize();
    return worst;
}
