/*
 * test_model.c: the whole model against independent references.
 *  - gradient check: every parameter tensor's analytic gradient against
 *    central finite differences of the fp32 loss, on sampled entries
 *    (always including the tensor's largest-gradient entry), both families,
 *    llama with GQA and dropout on;
 *  - keep and recompute modes give bitwise-identical losses and gradients,
 *    and recompute really runs each layer's forward twice;
 *  - an llm.c model file written here lands in the right named tensors;
 *  - the initial loss of a random model is close to ln(V).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/llmc_model.h"
#include "runtime/backend/cpu/backend_cpu_internal.h"
#include "runtime/backend/registry.h"
#include "runtime/model/layer.h"
#include "runtime/model/model.h"
#include "runtime/model/model_io.h"
#include "tests/support/testing.h"

static rt_model_shape tiny_shape(rt_family family, float dropout) {
    rt_model_shape s = {
        .family = family,
        .n_layers = 2,
        .d_model = 16,
        .n_heads = 4,
        .n_kv_heads = family == RT_FAMILY_LLAMA ? 2 : 4,
        .head_dim = 4,
        .d_ff = family == RT_FAMILY_LLAMA ? 24 : 64,
        .vocab_size = 50,
        .padded_vocab = 128,
        .max_seq_len = 32,
        .dropout = dropout,
        .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
    };
    return s;
}

typedef struct {
    int32_t inputs[64], targets[64];
    int64_t pos[64];
    rt_batch batch;
} test_batch;

/* 2 sequences of 12 tokens; one target ignored (-1) to exercise the ignore path. */
static void make_batch(test_batch *tb, int vocab, uint64_t seed) {
    uint64_t state = seed;
    const size_t B = 2, T = 12;
    for (size_t i = 0; i < B * T; i++) {
        tb->inputs[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)vocab);
        tb->targets[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)vocab);
        tb->pos[i] = (int64_t)(i % T);
    }
    tb->targets[5] = -1;
    tb->batch = (rt_batch){.inputs = tb->inputs, .targets = tb->targets, .pos = tb->pos, .n_seqs = B, .local_len = T};
}

typedef struct {
    rt_device_memory mem;
    rt_model model;
} model_fixture;

static void fixture_init(model_fixture *f, const rt_model_shape *shape, rt_activation_mode mode) {
    rt_error err;
    rt_device_memory_init(&f->mem, rt_backend_cpu(), 0);
    int rc = rt_model_init(
        &f->model, shape, rt_backend_cpu(), &f->mem,
        &(rt_model_options){.mode = mode, .offload_max_inflight = 1, .max_seqs = 2, .max_local_len = 12}, &err);
    CU_ASSERT_FATAL(rc == 0);
    rt_model_init_params(&f->model, 42);
}

static void fixture_free(model_fixture *f) {
    rt_model_free(&f->model);
    rt_device_memory_destroy(&f->mem);
}

/* Mean loss with dropout (same plan as the gradient run), computed by the forward-backward path's forward. */
static double mean_loss(rt_model *m, const rt_batch *batch, const rt_dropout_plan *dropout) {
    size_t count = 0;
    float *saved = malloc(m->table.total * sizeof(float));
    memcpy(saved, m->grads, m->table.total * sizeof(float));
    double sum = rt_model_forward_backward(m, batch, dropout, 1.0f, &count);
    memcpy(m->grads, saved, m->table.total * sizeof(float));
    free(saved);
    return sum / (double)count;
}

static void gradient_check_shape(rt_model_shape shape) {
    const float dropout_p = shape.dropout;
    model_fixture f;
    fixture_init(&f, &shape, RT_ACT_KEEP);
    rt_model *m = &f.model;
    test_batch tb;
    make_batch(&tb, shape.vocab_size, 7);
    rt_dropout_plan dropout = {.p = dropout_p, .seed = 99, .step = 3};
    size_t count = 0;
    rt_model_zero_grads(m);
    /* dloss_scale = 1/count: 23 valid targets of 24. */
    rt_model_forward_backward(m, &tb.batch, &dropout, 1.0f / 23.0f, &count);
    CU_ASSERT_EQUAL(count, 23);
    /* Central differences of the fp32 loss: per tensor, ||g_fd - g|| / ||g_fd|| over the sampled entries
     * must be <= 2e-2. eps follows the parameter's scale: 1e-2 for weights of O(0.02) (truncation error
     * grows past it), 3e-2 for norm gains of O(1), whose gradients are ~1e-5 and drown in the loss's
     * fp32 round-off (~1e-7 / eps) at the smaller step. */
    const double tol = 2e-2;
    uint64_t state = 1234;
    int tensors_checked = 0;
    for (int i = 0; i < m->table.count; i++) {
        const rt_named_view *v = &m->table.views[i];
        size_t numel = v->numel;
        if (strcmp(v->name, "wte") == 0 || strcmp(v->name, "lm_head.weight") == 0)
            numel = (size_t)shape.vocab_size * shape.d_model; /* padded rows take no gradient */
        size_t largest = 0;
        for (size_t j = 0; j < numel; j++)
            if (fabsf(m->grads[v->offset + j]) > fabsf(m->grads[v->offset + largest])) largest = j;
        int norm_gain = v->ndim == 1 && strstr(v->name, "norm") && strstr(v->name, ".weight");
        const double eps = norm_gain ? 3e-2 : 1e-2;
        double diff2 = 0.0, ref2 = 0.0;
        for (int k = 0; k < 6; k++) {
            size_t j = k == 0 ? largest : (size_t)(test_rand_u64(&state) % numel);
            float *p = &m->params[v->offset + j];
            float saved = *p;
            *p = saved + (float)eps;
            double plus = mean_loss(m, &tb.batch, &dropout);
            *p = saved - (float)eps;
            double minus = mean_loss(m, &tb.batch, &dropout);
            *p = saved;
            double fd = (plus - minus) / (2 * eps), g = m->grads[v->offset + j];
            diff2 += (fd - g) * (fd - g);
            ref2 += fd * fd;
        }
        double rel = sqrt(diff2) / fmax(sqrt(ref2), 1e-6);
        if (!(rel <= tol)) fprintf(stderr, "\n  %s: gradient rel error %.3g > %.3g\n", v->name, rel, tol);
        CU_ASSERT(rel <= tol);
        tensors_checked++;
    }
    CU_ASSERT_EQUAL(tensors_checked, m->table.count);
    fixture_free(&f);
}

static void gradient_check(rt_family family, float dropout_p) { gradient_check_shape(tiny_shape(family, dropout_p)); }

static void test_gradcheck_llama(void) { gradient_check(RT_FAMILY_LLAMA, 0.0f); }
/* Hugging Face models: a head tied to wte (both uses add into one gradient) and heads of 6 while
 * d_model / n_heads is 4, so attention's width H*D = 24 differs from d_model. */
static void test_gradcheck_llama_tied_wide_heads(void) {
    rt_model_shape shape = tiny_shape(RT_FAMILY_LLAMA, 0.0f);
    shape.tie_embeddings = 1;
    shape.head_dim = 6;
    gradient_check_shape(shape);
}
static void test_gradcheck_llama_dropout(void) { gradient_check(RT_FAMILY_LLAMA, 0.2f); }
static void test_gradcheck_gpt2(void) { gradient_check(RT_FAMILY_GPT2, 0.0f); }

/* One micro-batch's loss and gradients in a mode; copies the gradients out (Ψ floats, caller frees). */
static double step_in_mode(const rt_model_shape *shape, rt_activation_mode mode, int max_inflight, float **grads,
                           uint64_t *layer_forwards) {
    rt_error err;
    model_fixture f;
    rt_device_memory_init(&f.mem, rt_backend_cpu(), 0);
    rt_model_options options = {.mode = mode, .offload_max_inflight = max_inflight, .max_seqs = 2, .max_local_len = 12};
    CU_ASSERT_FATAL(rt_model_init(&f.model, shape, rt_backend_cpu(), &f.mem, &options, &err) == 0);
    rt_model_init_params(&f.model, 42);
    test_batch tb;
    make_batch(&tb, shape->vocab_size, 11);
    rt_dropout_plan dropout = {.p = shape->dropout, .seed = 5, .step = 1};
    size_t count = 0;
    rt_model_zero_grads(&f.model);
    double loss = rt_model_forward_backward(&f.model, &tb.batch, &dropout, 0.05f, &count);
    *grads = malloc(f.model.table.total * sizeof(float));
    memcpy(*grads, f.model.grads, f.model.table.total * sizeof(float));
    *layer_forwards = f.model.counters.layer_forwards;
    if (mode == RT_ACT_OFFLOAD) {
        rt_offload_stats stats;
        rt_model_take_offload_stats(&f.model, &stats);
        /* every layer input but the last went to the host: (L-1) * N * C floats */
        CU_ASSERT_EQUAL(stats.offloaded_bytes, (size_t)(shape->n_layers - 1) * 24 * shape->d_model * sizeof(float));
    }
    fixture_free(&f);
    return loss;
}

/* keep, recompute and offload give bitwise the same loss and gradients; the recompute really runs. */
static void modes_agree(rt_family family) {
    rt_model_shape shape = tiny_shape(family, 0.1f);
    shape.n_layers = 3;
    float *keep_grads, *grads;
    uint64_t forwards;
    double keep_loss = step_in_mode(&shape, RT_ACT_KEEP, 1, &keep_grads, &forwards);
    CU_ASSERT_EQUAL(forwards, 3); /* once per layer */
    const size_t n = rt_model_param_count(&shape);
    const rt_activation_mode modes[] = {RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD};
    for (int i = 0; i < 2; i++) {
        double loss = step_in_mode(&shape, modes[i], 1, &grads, &forwards);
        CU_ASSERT(loss == keep_loss);
        CU_ASSERT(memcmp(grads, keep_grads, n * sizeof(float)) == 0);
        CU_ASSERT_EQUAL(forwards, 6); /* forward and recompute */
        free(grads);
    }
    free(keep_grads);
}

static void test_modes_agree_llama(void) { modes_agree(RT_FAMILY_LLAMA); }
static void test_modes_agree_gpt2(void) { modes_agree(RT_FAMILY_GPT2); }

/* With every device->host copy slowed to 3 ms and one copy in flight, offload still gives keep's bits:
 * no buffer is read before its copy completes or reused before it was copied out. */
static void test_offload_slow_copies(void) {
    rt_model_shape shape = tiny_shape(RT_FAMILY_LLAMA, 0.1f);
    shape.n_layers = 4;
    float *keep_grads, *grads;
    uint64_t forwards;
    double keep_loss = step_in_mode(&shape, RT_ACT_KEEP, 1, &keep_grads, &forwards);
    rt_cpu_copy_engine_set_delay_us(3000);
    double loss = step_in_mode(&shape, RT_ACT_OFFLOAD, 1, &grads, &forwards);
    rt_cpu_copy_engine_set_delay_us(0);
    CU_ASSERT(loss == keep_loss);
    CU_ASSERT(memcmp(grads, keep_grads, rt_model_param_count(&shape) * sizeof(float)) == 0);
    free(grads);
    free(keep_grads);
}

/* Device bytes of everything but parameters and gradients, for L layers. */
static size_t activation_bytes(int n_layers, rt_activation_mode mode) {
    rt_model_shape shape = tiny_shape(RT_FAMILY_LLAMA, 0.0f);
    shape.n_layers = n_layers;
    model_fixture f;
    fixture_init(&f, &shape, mode);
    test_batch tb;
    make_batch(&tb, shape.vocab_size, 1);
    size_t count = 0;
    rt_model_forward_backward(&f.model, &tb.batch, NULL, 0.05f, &count);
    size_t bytes = f.mem.peak - 2 * f.model.n_alloc * sizeof(float);
    fixture_free(&f);
    return bytes;
}

static void test_activation_memory_vs_layers(void) {
    size_t keep[3], offload[3];
    const int layers[3] = {2, 4, 8};
    for (int i = 0; i < 3; i++) {
        keep[i] = activation_bytes(layers[i], RT_ACT_KEEP);
        offload[i] = activation_bytes(layers[i], RT_ACT_OFFLOAD);
    }
    /* keep: linear in L (equal increments, and growing); offload: the same bytes for every L. */
    CU_ASSERT(keep[1] > keep[0]);
    CU_ASSERT_EQUAL(keep[2] - keep[1], 2 * (keep[1] - keep[0]));
    CU_ASSERT_EQUAL(offload[0], offload[1]);
    CU_ASSERT_EQUAL(offload[1], offload[2]);
    CU_ASSERT(offload[2] < keep[2]);
    /* With one copy in flight, offload saves at least the bytes it moves: L-1 layer inputs of N*C floats. */
    for (int i = 0; i < 3; i++) {
        size_t recompute = activation_bytes(layers[i], RT_ACT_RECOMPUTE);
        size_t moved = (size_t)(layers[i] - 1) * 24 * 16 * sizeof(float);
        CU_ASSERT(recompute >= offload[i] + moved);
    }
}

static void test_initial_loss_near_uniform(void) {
    rt_model_shape shape = tiny_shape(RT_FAMILY_LLAMA, 0.0f);
    model_fixture f;
    fixture_init(&f, &shape, RT_ACT_KEEP);
    test_batch tb;
    make_batch(&tb, shape.vocab_size, 3);
    size_t count = 0;
    double loss = rt_model_forward_loss(&f.model, &tb.batch, &count) / (double)count;
    /* Small random weights give nearly uniform predictions over the 50 real tokens: loss ~ ln(50) = 3.912. */
    CU_ASSERT(fabs(loss - log(50.0)) < 0.05);
    fixture_free(&f);
}

/* Writes an llm.c file whose every value encodes (tensor, layer, index) and checks where each lands. */
static void test_llmc_import_named_tensors(void) {
    rt_model_shape shape = tiny_shape(RT_FAMILY_GPT2, 0.0f);
    rt_llmc_header hdr = {.max_seq_len = shape.max_seq_len,
                          .vocab_size = shape.vocab_size,
                          .n_layers = shape.n_layers,
                          .n_heads = shape.n_heads,
                          .channels = shape.d_model,
                          .padded_vocab_size = shape.padded_vocab};
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(&hdr, sizes);
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++)
        total += sizes[i];
    float *file_params = malloc(total * sizeof(float));
    size_t at = 0;
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++)
        for (size_t j = 0; j < sizes[i]; j++)
            file_params[at++] = (float)(i * 100000 + (int)j);
    char dir[] = "/tmp/rt_test_model_XXXXXX";
    CU_ASSERT_FATAL(mkdtemp(dir) != NULL);
    char path[256];
    snprintf(path, sizeof path, "%s/gpt2.bin", dir);
    rt_error err;
    CU_ASSERT_FATAL(rt_llmc_write(path, &hdr, file_params, &err) == 0);

    model_fixture f;
    fixture_init(&f, &shape, RT_ACT_KEEP);
    CU_ASSERT_FATAL(rt_model_load_llmc(&f.model, path, &err) == 0);
    const size_t C = (size_t)shape.d_model;
    /* llm.c index 4 is qkvw (L, 3C, C): layer 1's slice starts at 3C*C. */
    const rt_named_view *qkv1 = rt_view_table_find(&f.model.table, "layers.1.attn.qkv.weight");
    CU_ASSERT_FATAL(qkv1 != NULL);
    for (size_t j = 0; j < qkv1->numel; j++)
        CU_ASSERT(f.model.params[qkv1->offset + j] == (float)(4 * 100000 + (int)(3 * C * C + j)));
    /* index 13 is fcprojb (L, C): layer 0 is its first C values. */
    const rt_named_view *fcb0 = rt_view_table_find(&f.model.table, "layers.0.mlp.proj.bias");
    for (size_t j = 0; j < C; j++)
        CU_ASSERT(f.model.params[fcb0->offset + j] == (float)(13 * 100000 + (int)j));
    /* wte (0), wpe (1) and lnfb (15) whole. */
    const char *names[] = {"wte", "wpe", "norm_f.bias"};
    const int index[] = {0, 1, 15};
    for (int k = 0; k < 3; k++) {
        const rt_named_view *v = rt_view_table_find(&f.model.table, names[k]);
        CU_ASSERT_FATAL(v != NULL);
        CU_ASSERT_EQUAL(v->numel, sizes[index[k]]);
        CU_ASSERT(f.model.params[v->offset + v->numel - 1] == (float)(index[k] * 100000 + (int)(v->numel - 1)));
    }
    /* A file of another shape is refused with the field named. */
    shape.n_layers = 3;
    model_fixture other;
    fixture_init(&other, &shape, RT_ACT_KEEP);
    CU_ASSERT(rt_model_load_llmc(&other.model, path, &err) != 0);
    CU_ASSERT(strstr(err.msg, "n_layers") != NULL);
    fixture_free(&other);
    fixture_free(&f);
    unlink(path);
    rmdir(dir);
    free(file_params);
}

/* The arena refuses an allocation past the limit and says what it was for. */
static void test_memory_limit_refused(void) {
    rt_model_shape shape = tiny_shape(RT_FAMILY_LLAMA, 0.0f);
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 64 * 1024);
    rt_model m;
    rt_error err;
    CU_ASSERT(rt_model_init(&m, &shape, rt_backend_cpu(), &mem,
                            &(rt_model_options){.mode = RT_ACT_KEEP, .max_seqs = 2, .max_local_len = 12}, &err) != 0);
    CU_ASSERT(strstr(err.msg, "device memory limit") != NULL);
    CU_ASSERT(mem.peak <= 64 * 1024);
    rt_model_free(&m);
    rt_device_memory_destroy(&mem);
}

/* Shapes whose sizes do not fit are refused before any allocation, and a parameter count that would wrap
 * size_t saturates instead of reading as small: this gpt2 shape holds 2^64 + 2^20 parameters exactly
 * (computed by hand), which wrapped to 2^20 and matched a 4 MiB file. */
static void test_oversized_shapes_refused(void) {
    rt_model_shape shape = tiny_shape(RT_FAMILY_GPT2, 0.0f);
    shape.n_layers = 4096;
    shape.d_model = 1048576;
    shape.n_heads = shape.n_kv_heads = 1;
    shape.head_dim = shape.d_model;
    shape.d_ff = 2144861184;
    shape.padded_vocab = shape.vocab_size = 2147483647;
    shape.max_seq_len = 2147457028;
    CU_ASSERT_EQUAL(rt_model_param_count(&shape), SIZE_MAX);
    rt_device_memory mem;
    rt_device_memory_init(&mem, rt_backend_cpu(), 0);
    rt_model m;
    rt_error err;
    CU_ASSERT(rt_model_init(&m, &shape, rt_backend_cpu(), &mem,
                            &(rt_model_options){.mode = RT_ACT_RECOMPUTE, .max_seqs = 1, .max_local_len = 2},
                            &err) != 0);
    CU_ASSERT(strstr(err.msg, "parameters, more than the 2^40") != NULL);
    CU_ASSERT_EQUAL(mem.peak, 0);
    /* A model that fits, with activations that do not: refused by their size, nothing allocated. */
    rt_model_shape tiny = tiny_shape(RT_FAMILY_LLAMA, 0.0f);
    CU_ASSERT(rt_model_init(&m, &tiny, rt_backend_cpu(), &mem,
                            &(rt_model_options){.mode = RT_ACT_RECOMPUTE,
                                                .max_seqs = (size_t)1 << 40,
                                                .max_local_len = (size_t)1 << 20},
                            &err) != 0);
    CU_ASSERT(strstr(err.msg, "do not fit in size_t") != NULL);
    CU_ASSERT_EQUAL(mem.peak, 0);
    rt_device_memory_destroy(&mem);
}

/* Every buffer of a step is reserved at setup, attention's scratch included, in every activation mode: the
 * accounted attention workspace is the backend's size for the setup maxima, a forward-backward makes no
 * allocation and no new peak, and at the tightest limit that passes setup the step runs (one byte less refuses
 * setup at the workspace, its last reservation). */
static void test_step_allocates_nothing(void) {
    const rt_backend *be = rt_backend_cpu();
    rt_model_shape shape = tiny_shape(RT_FAMILY_LLAMA, 0.1f);
    const rt_attn_shape attn = rt_attention_shape(&shape);
    const size_t workspace = rt_be_attn_workspace_bytes(be, 12, 12, &attn);
    const rt_activation_mode modes[] = {RT_ACT_KEEP, RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD};
    test_batch tb;
    make_batch(&tb, shape.vocab_size, 13);
    const rt_dropout_plan dropout = {.p = shape.dropout, .seed = 5, .step = 1};
    rt_error err;
    size_t count;
    for (int i = 0; i < 3; i++) {
        rt_model_options options = {.mode = modes[i], .offload_max_inflight = 1, .max_seqs = 2, .max_local_len = 12};
        /* the attention context in an arena of its own: it holds exactly the workspace */
        rt_device_memory mem, attn_mem;
        rt_device_memory_init(&mem, be, 0);
        rt_device_memory_init(&attn_mem, be, 0);
        seqpar_ctx sp = {.backend = be, .mem = &attn_mem};
        options.seqpar = &sp;
        rt_model m;
        CU_ASSERT_FATAL(rt_model_init(&m, &shape, be, &mem, &options, &err) == 0);
        CU_ASSERT_EQUAL(sp.attn_workspace_bytes, workspace);
        CU_ASSERT_EQUAL(attn_mem.in_use, workspace);
        rt_model_init_params(&m, 42);
        const size_t setup_bytes = mem.in_use, setup_live = mem.n_live;
        rt_device_memory_reset_peak(&mem);
        rt_model_zero_grads(&m);
        rt_model_forward_backward(&m, &tb.batch, &dropout, 0.05f, &count);
        CU_ASSERT_EQUAL(mem.peak, setup_bytes);
        CU_ASSERT_EQUAL(mem.n_live, setup_live);
        CU_ASSERT_EQUAL(attn_mem.peak, workspace);
        CU_ASSERT_EQUAL(attn_mem.n_live, 1);
        seqpar_ctx_free(&sp);
        rt_model_free(&m);
        rt_device_memory_destroy(&mem);
        rt_device_memory_destroy(&attn_mem);

        /* one arena, as the trainer has: the setup total is the limit the step must fit in */
        options.seqpar = NULL;
        rt_device_memory_init(&mem, be, 0);
        CU_ASSERT_FATAL(rt_model_init(&m, &shape, be, &mem, &options, &err) == 0);
        const size_t needed = mem.in_use;
        rt_model_free(&m);
        rt_device_memory_destroy(&mem);
        rt_device_memory_init(&mem, be, needed - 1);
        CU_ASSERT(rt_model_init(&m, &shape, be, &mem, &options, &err) != 0);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "attention workspace"));
        rt_model_free(&m);
        rt_device_memory_destroy(&mem);
        rt_device_memory_init(&mem, be, needed);
        CU_ASSERT_FATAL(rt_model_init(&m, &shape, be, &mem, &options, &err) == 0);
        rt_model_init_params(&m, 42);
        rt_model_zero_grads(&m);
        rt_model_forward_backward(&m, &tb.batch, &dropout, 0.05f, &count); /* an allocation would end the job */
        CU_ASSERT_EQUAL(mem.peak, needed);
        rt_model_free(&m);
        rt_device_memory_destroy(&mem);
    }
}

int main(void) {
    test_case cases[] = {
        {"gradient check llama (GQA)", test_gradcheck_llama},
        {"gradient check llama with dropout", test_gradcheck_llama_dropout},
        {"gradient check llama, tied head, head_dim 6 at d_model 16 / 4 heads", test_gradcheck_llama_tied_wide_heads},
        {"gradient check gpt2", test_gradcheck_gpt2},
        {"keep == recompute == offload, llama", test_modes_agree_llama},
        {"keep == recompute == offload, gpt2", test_modes_agree_gpt2},
        {"offload with slow copies, one in flight", test_offload_slow_copies},
        {"activation memory: keep grows with L, offload flat", test_activation_memory_vs_layers},
        {"initial loss ~ ln(V)", test_initial_loss_near_uniform},
        {"llm.c file -> named tensors", test_llmc_import_named_tensors},
        {"device memory limit refused", test_memory_limit_refused},
        {"oversized shapes refused before allocating", test_oversized_shapes_refused},
        {"a step allocates nothing after setup", test_step_allocates_nothing},
    };
    return test_run_suite("model", cases, (int)(sizeof cases / sizeof cases[0]));
}
