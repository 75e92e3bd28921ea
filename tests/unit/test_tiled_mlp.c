/*
 * test_tiled_mlp.c: the MLP over token tiles (model_mlp.c) against the untiled one, for gpt2 and llama, with
 * tiles that divide the N = 24 tokens (8), that do not (7: tiles of 7, 7, 7, 3; 23: 23 and 1) and of one token:
 *  - the MLP alone: untiled is bit for bit a copy, kept here, of the op sequence model_layers.c ran before
 *    tiling; tiled gives its output, d(input) and every gradient (fc and fcproj weights and biases) within
 *    1e-6, and overwrites every d(input) row;
 *  - the whole model (forward-backward, dropout on): loss and every gradient tensor within 1e-6 of untiled;
 *    a tile of N tokens or more is untiled (bitwise), and so is a batch that fits in one tile;
 *  - with tiling on, keep, recompute and offload give bitwise the same loss and gradients;
 *  - the activation bytes fall by exactly the fc/act rows (per activation set) and d_fc/d_act rows
 *    (once) that a tile no longer holds, computed here from the shapes.
 *
 * Tolerance: per tensor, max_i |tiled_i - untiled_i| / max_i |untiled_i| <= 1e-6 (normwise relative). Tiling
 * only reorders the sums over tokens of the weight/bias gradients (and, in BLAS, maybe of small matmuls), so
 * the error is a few fp32 ulps of the tensor's scale: relative to each element it would blow up where a
 * gradient sum cancels to near zero, and an absolute bound would say nothing for gradients of ~1e-4. The loss
 * (a sum near 90) is held to the same bound relative to itself.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend/registry.h"
#include "runtime/model/layer.h"
#include "runtime/model/model.h"
#include "tests/support/testing.h"

enum { B = 2, T = 12, N = B * T };

static const double TOL = 1e-6;
/* tiles that divide N, do not (a short last tile of 3, of 1) and one token */
static const size_t TILES[] = {8, 7, 23, 1};
#define N_TILES (sizeof TILES / sizeof TILES[0])

static rt_model_shape mlp_shape(rt_family family, int n_layers, float dropout) {
    return (rt_model_shape){
        .family = family,
        .n_layers = n_layers,
        .d_model = 32,
        .n_heads = 4,
        .n_kv_heads = family == RT_FAMILY_LLAMA ? 2 : 4,
        .head_dim = 8,
        .d_ff = 64,
        .vocab_size = 50,
        .padded_vocab = 128,
        .max_seq_len = 32,
        .dropout = dropout,
        .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
    };
}

/* Floats per token of the fc output, from the family (not from the model code). */
static size_t fc_width(const rt_model_shape *s) {
    return s->family == RT_FAMILY_LLAMA ? 2 * (size_t)s->d_ff : (size_t)s->d_ff;
}

typedef struct {
    rt_device_memory mem;
    rt_model model;
} fixture;

static void fixture_init(fixture *f, const rt_model_shape *shape, rt_activation_mode mode, size_t tile) {
    rt_error err;
    rt_device_memory_init(&f->mem, rt_backend_cpu(), 0);
    rt_model_options options = {
        .mode = mode, .offload_max_inflight = 1, .max_seqs = B, .max_local_len = T, .mlp_tile_tokens = tile};
    int rc = rt_model_init(&f->model, shape, rt_backend_cpu(), &f->mem, &options, &err);
    if (rc) fprintf(stderr, "\n  rt_model_init: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    rt_model_init_params(&f->model, 42);
}

static void fixture_free(fixture *f) {
    rt_model_free(&f->model);
    rt_device_memory_destroy(&f->mem);
}

/* 64-byte aligned like the arena's buffers, so BLAS sees the same alignment as on model buffers. */
static float *alloc_floats(size_t n) {
    size_t bytes = (n * sizeof(float) + 63) / 64 * 64;
    float *p = aligned_alloc(64, bytes);
    CU_ASSERT_FATAL(p != NULL);
    return p;
}

/* max |a - b| / max |b|; 0 when equal, infinity when b is all zero and a is not. */
static double normwise_error(const float *a, const float *b, size_t n) {
    double diff = 0.0, scale = 0.0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= diff)) diff = d; /* NaN propagates */
        if (fabs((double)b[i]) > scale) scale = fabs((double)b[i]);
    }
    if (diff == 0.0) return 0.0;
    return scale > 0.0 ? diff / scale : INFINITY;
}

static void assert_close(const float *a, const float *b, size_t n, const char *what, size_t tile) {
    double e = normwise_error(a, b, n);
    if (!(e <= TOL)) fprintf(stderr, "\n  %s (tile %zu): normwise error %.3g > %.3g\n", what, tile, e, TOL);
    CU_ASSERT(e <= TOL);
}

/* Every tensor of the gradient buffers (laid out by the same table) within TOL; tol 0 = bitwise. */
static void assert_grads_close(const rt_view_table *table, const float *grads, const float *ref, double tol,
                               size_t tile) {
    for (int i = 0; i < table->count; i++) {
        const rt_named_view *v = &table->views[i];
        double e = normwise_error(grads + v->offset, ref + v->offset, v->numel);
        if (!(e <= tol)) fprintf(stderr, "\n  grad %s (tile %zu): normwise error %.3g > %.3g\n", v->name, tile, e, tol);
        CU_ASSERT(e <= tol);
    }
}

/* The MLP as model_layers.c ran it before tiling, op for op, on N-sized buffers of its own. */
static void reference_mlp(const rt_model *m, int layer, const float *norm2, const float *d_out, float *out,
                          float *d_norm) {
    const rt_backend *be = m->backend;
    const rt_model_shape *s = &m->shape;
    const rt_layer_params *p = &m->layers[layer], *g = &m->layer_grads[layer];
    const size_t C = (size_t)s->d_model, F = (size_t)s->d_ff, FC = fc_width(s);
    float *fc = alloc_floats(N * FC), *act = alloc_floats(N * F), *d_fc = alloc_floats(N * FC),
          *d_act = alloc_floats(N * F);
    rt_be_matmul_forward(be, fc, norm2, p->fc_w, p->fc_b, N, (int)C, (int)FC);
    if (s->family == RT_FAMILY_GPT2)
        rt_be_gelu_forward(be, act, fc, N * F);
    else
        rt_be_swiglu_forward(be, act, fc, N, (int)F);
    rt_be_matmul_forward(be, out, act, p->fcproj_w, p->fcproj_b, N, (int)F, (int)C);
    rt_be_memset_zero(be, d_act, N * F * sizeof(float));
    rt_be_matmul_backward(be, d_act, g->fcproj_w, g->fcproj_b, d_out, act, p->fcproj_w, N, (int)F, (int)C);
    rt_be_memset_zero(be, d_fc, N * FC * sizeof(float));
    if (s->family == RT_FAMILY_GPT2)
        rt_be_gelu_backward(be, d_fc, fc, d_act, N * F);
    else
        rt_be_swiglu_backward(be, d_fc, d_act, fc, N, (int)F);
    rt_be_memset_zero(be, d_norm, N * C * sizeof(float));
    rt_be_matmul_backward(be, d_norm, g->fc_w, g->fc_b, d_fc, norm2, p->fc_w, N, (int)C, (int)FC);
    free(fc);
    free(act);
    free(d_fc);
    free(d_act);
}

/* rt_mlp_forward / rt_mlp_backward of layer 1 on the given input and output gradient; out and d_norm get
 * the results, the model's gradient buffer the gradients (from zero). d_norm starts as garbage: every row
 * must be written. */
static void run_mlp(rt_model *m, const float *norm2, const float *d_out, float *out, float *d_norm) {
    const int layer = 1;
    const size_t C = (size_t)m->shape.d_model;
    rt_layer_acts *a = &m->acts[layer];
    memcpy(a->norm2, norm2, N * C * sizeof(float));
    rt_model_zero_grads(m);
    rt_mlp_forward(&m->layer_ctx, &m->layers[layer], a, m->layer_ctx.branch, N);
    memcpy(out, m->layer_ctx.branch, N * C * sizeof(float));
    for (size_t i = 0; i < N * C; i++)
        m->layer_ctx.d_norm[i] = 1e30f;
    memcpy(m->layer_ctx.d_branch, d_out, N * C * sizeof(float));
    rt_mlp_backward(&m->layer_ctx, &m->layers[layer], &m->layer_grads[layer], a, m->layer_ctx.d_branch,
                    m->layer_ctx.d_norm, N);
    memcpy(d_norm, m->layer_ctx.d_norm, N * C * sizeof(float));
}

static void mlp_alone(rt_family family) {
    const rt_model_shape shape = mlp_shape(family, 2, 0.0f);
    const size_t C = (size_t)shape.d_model, n_params = rt_model_param_count(&shape);
    float *norm2 = alloc_floats(N * C), *d_out = alloc_floats(N * C);
    test_fill_uniform(norm2, N * C, -2.0f, 2.0f, 1);
    test_fill_uniform(d_out, N * C, -0.05f, 0.05f, 2);
    float *ref_out = alloc_floats(N * C), *ref_d_norm = alloc_floats(N * C), *ref_grads = alloc_floats(n_params);
    float *out = alloc_floats(N * C), *d_norm = alloc_floats(N * C);

    fixture untiled;
    fixture_init(&untiled, &shape, RT_ACT_KEEP, 0);
    CU_ASSERT_EQUAL(untiled.model.mlp_tile, N);
    rt_model_zero_grads(&untiled.model);
    reference_mlp(&untiled.model, 1, norm2, d_out, ref_out, ref_d_norm);
    memcpy(ref_grads, untiled.model.grads, n_params * sizeof(float));
    run_mlp(&untiled.model, norm2, d_out, out, d_norm);
    CU_ASSERT(memcmp(out, ref_out, N * C * sizeof(float)) == 0);
    CU_ASSERT(memcmp(d_norm, ref_d_norm, N * C * sizeof(float)) == 0);
    CU_ASSERT(memcmp(untiled.model.grads, ref_grads, n_params * sizeof(float)) == 0);
    fixture_free(&untiled);

    for (size_t i = 0; i < N_TILES; i++) {
        fixture tiled;
        fixture_init(&tiled, &shape, RT_ACT_KEEP, TILES[i]);
        CU_ASSERT_EQUAL(tiled.model.mlp_tile, TILES[i]);
        run_mlp(&tiled.model, norm2, d_out, out, d_norm);
        assert_close(out, ref_out, N * C, "mlp output", TILES[i]);
        assert_close(d_norm, ref_d_norm, N * C, "mlp d(input)", TILES[i]);
        assert_grads_close(&tiled.model.table, tiled.model.grads, ref_grads, TOL, TILES[i]);
        fixture_free(&tiled);
    }
    free(norm2);
    free(d_out);
    free(ref_out);
    free(ref_d_norm);
    free(ref_grads);
    free(out);
    free(d_norm);
}

static void test_mlp_alone_gpt2(void) { mlp_alone(RT_FAMILY_GPT2); }
static void test_mlp_alone_llama(void) { mlp_alone(RT_FAMILY_LLAMA); }

typedef struct {
    int32_t inputs[N], targets[N];
    int64_t pos[N];
    rt_batch batch;
} test_batch;

/* n_seqs sequences of T tokens; one target ignored (-1). */
static void make_batch(test_batch *tb, int vocab, size_t n_seqs, uint64_t seed) {
    uint64_t state = seed;
    for (size_t i = 0; i < n_seqs * T; i++) {
        tb->inputs[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)vocab);
        tb->targets[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)vocab);
        tb->pos[i] = (int64_t)(i % T);
    }
    tb->targets[5] = -1;
    tb->batch =
        (rt_batch){.inputs = tb->inputs, .targets = tb->targets, .pos = tb->pos, .n_seqs = n_seqs, .local_len = T};
}

/* Loss and gradients (caller frees) of one forward-backward with dropout. */
static double step(const rt_model_shape *shape, rt_activation_mode mode, size_t tile, size_t n_seqs, float **grads) {
    fixture f;
    fixture_init(&f, shape, mode, tile);
    test_batch tb;
    make_batch(&tb, shape->vocab_size, n_seqs, 11);
    const rt_dropout_plan dropout = {.p = shape->dropout, .seed = 5, .step = 1};
    size_t count = 0;
    rt_model_zero_grads(&f.model);
    double loss = rt_model_forward_backward(&f.model, &tb.batch, &dropout, 0.05f, &count);
    const size_t n = rt_model_param_count(shape);
    *grads = malloc(n * sizeof(float));
    memcpy(*grads, f.model.grads, n * sizeof(float));
    fixture_free(&f);
    return loss;
}

static void whole_model(rt_family family) {
    const rt_model_shape shape = mlp_shape(family, 3, 0.1f);
    const size_t n = rt_model_param_count(&shape);
    fixture probe; /* the table of gradient tensors; capacity N: a tile of N or more tokens is none */
    fixture_init(&probe, &shape, RT_ACT_KEEP, 1000);
    CU_ASSERT_EQUAL(probe.model.mlp_tile, N);
    const rt_view_table *table = &probe.model.table;
    float *ref_grads, *grads;
    const double ref_loss = step(&shape, RT_ACT_KEEP, 0, B, &ref_grads);
    for (size_t i = 0; i < N_TILES; i++) {
        double loss = step(&shape, RT_ACT_KEEP, TILES[i], B, &grads);
        double e = fabs(loss - ref_loss) / fabs(ref_loss);
        if (!(e <= TOL)) fprintf(stderr, "\n  loss (tile %zu): relative error %.3g\n", TILES[i], e);
        CU_ASSERT(e <= TOL);
        assert_grads_close(table, grads, ref_grads, TOL, TILES[i]);
        free(grads);
    }
    /* a tile of N tokens or more is no tile at all */
    const size_t whole[] = {N, 1000};
    for (int i = 0; i < 2; i++) {
        double loss = step(&shape, RT_ACT_KEEP, whole[i], B, &grads);
        CU_ASSERT(loss == ref_loss);
        CU_ASSERT(memcmp(grads, ref_grads, n * sizeof(float)) == 0);
        free(grads);
    }
    free(ref_grads);
    /* a batch of one sequence (12 tokens) fits in a tile of 16: one tile, the untiled ops, the same bits */
    const double small_loss = step(&shape, RT_ACT_KEEP, 0, 1, &ref_grads);
    CU_ASSERT(step(&shape, RT_ACT_KEEP, 16, 1, &grads) == small_loss);
    CU_ASSERT(memcmp(grads, ref_grads, n * sizeof(float)) == 0);
    free(grads);
    free(ref_grads);
    fixture_free(&probe);
}

static void test_whole_model_gpt2(void) { whole_model(RT_FAMILY_GPT2); }
static void test_whole_model_llama(void) { whole_model(RT_FAMILY_LLAMA); }

/* With tiling on, keep, recompute and offload run the same ops on the same inputs: the same bits. */
static void modes_agree(rt_family family) {
    const rt_model_shape shape = mlp_shape(family, 3, 0.1f);
    const size_t n = rt_model_param_count(&shape);
    const size_t tiles[] = {7, 1};
    for (int t = 0; t < 2; t++) {
        float *keep_grads, *grads;
        const double keep_loss = step(&shape, RT_ACT_KEEP, tiles[t], B, &keep_grads);
        const rt_activation_mode modes[] = {RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD};
        for (int i = 0; i < 2; i++) {
            double loss = step(&shape, modes[i], tiles[t], B, &grads);
            CU_ASSERT(loss == keep_loss);
            CU_ASSERT(memcmp(grads, keep_grads, n * sizeof(float)) == 0);
            free(grads);
        }
        free(keep_grads);
    }
}

static void test_modes_agree_gpt2(void) { modes_agree(RT_FAMILY_GPT2); }
static void test_modes_agree_llama(void) { modes_agree(RT_FAMILY_LLAMA); }

/* Device bytes of everything but parameters and gradients over a forward-backward (as test_model measures). */
static size_t activation_bytes(const rt_model_shape *shape, rt_activation_mode mode, size_t tile) {
    fixture f;
    fixture_init(&f, shape, mode, tile);
    test_batch tb;
    make_batch(&tb, shape->vocab_size, B, 1);
    size_t count = 0;
    rt_model_forward_backward(&f.model, &tb.batch, NULL, 0.05f, &count);
    size_t bytes = f.mem.peak - 2 * f.model.n_alloc * sizeof(float);
    fixture_free(&f);
    return bytes;
}

/* A tile of n tokens holds (N - n) fewer rows of fc (FC) and act (F) in every activation set (L in keep, one
 * otherwise) and of d_fc and d_act in the one gradient scratch. */
static void memory_falls(rt_family family) {
    const rt_model_shape shape = mlp_shape(family, 3, 0.0f);
    const size_t row_bytes = (fc_width(&shape) + (size_t)shape.d_ff) * sizeof(float);
    const rt_activation_mode modes[] = {RT_ACT_KEEP, RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD};
    for (int i = 0; i < 3; i++) {
        const size_t sets = modes[i] == RT_ACT_KEEP ? (size_t)shape.n_layers : 1;
        const size_t untiled = activation_bytes(&shape, modes[i], 0);
        for (size_t t = 0; t < N_TILES; t++) {
            const size_t tiled = activation_bytes(&shape, modes[i], TILES[t]);
            const size_t expected = (sets + 1) * (N - TILES[t]) * row_bytes;
            if (untiled - tiled != expected)
                fprintf(stderr, "\n  mode %d tile %zu: %zu bytes fewer, expected %zu\n", (int)modes[i], TILES[t],
                        untiled - tiled, expected);
            CU_ASSERT(tiled < untiled);
            CU_ASSERT_EQUAL(untiled - tiled, expected);
        }
    }
}

static void test_memory_falls_gpt2(void) { memory_falls(RT_FAMILY_GPT2); }
static void test_memory_falls_llama(void) { memory_falls(RT_FAMILY_LLAMA); }

int main(void) {
    test_case cases[] = {
        {"MLP alone: untiled == pre-tiling ops, tiled within 1e-6, gpt2", test_mlp_alone_gpt2},
        {"MLP alone: untiled == pre-tiling ops, tiled within 1e-6, llama", test_mlp_alone_llama},
        {"whole model: tiled within 1e-6 of untiled, gpt2", test_whole_model_gpt2},
        {"whole model: tiled within 1e-6 of untiled, llama", test_whole_model_llama},
        {"tiled: keep == recompute == offload, gpt2", test_modes_agree_gpt2},
        {"tiled: keep == recompute == offload, llama", test_modes_agree_llama},
        {"activation bytes fall by the untiled rows, gpt2", test_memory_falls_gpt2},
        {"activation bytes fall by the untiled rows, llama", test_memory_falls_llama},
    };
    return test_run_suite("tiled_mlp", cases, (int)(sizeof cases / sizeof cases[0]));
}
