/*
 * test_packed.c: a packed window against its documents run alone.
 * The reference: every document of the window run as its own sequence (positions from 0, or from where the
 * window's first document began before the window), with the same parameters, on a model that knows nothing
 * of documents; its losses and gradients summed over the documents. The packed window (one sequence, document
 * masks, positions restarting at every document, the boundary targets untrained) must give the same loss sum
 * and every gradient within 1e-6 of the largest gradient entry, for llama (GQA) and gpt2, with documents of
 * one token, of exactly a key block, crossing key-block and half-window boundaries, and a window that is one
 * document; with key blocks of every length (block_size 0) and of 8 tokens, in keep and recompute modes.
 * And a leak probe: one document's tokens changed, every other token's loss keeps its bits.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend/registry.h"
#include "runtime/model/model.h"
#include "seqpar/seqpar.h"
#include "tests/support/testing.h"

enum { T = 48, MAX_DOCS = 16 };

static rt_model_shape tiny_shape(rt_family family) {
    return (rt_model_shape){
        .family = family,
        .n_layers = 2,
        .d_model = 16,
        .n_heads = 4,
        .n_kv_heads = family == RT_FAMILY_LLAMA ? 2 : 4,
        .head_dim = 4,
        .d_ff = family == RT_FAMILY_LLAMA ? 24 : 64,
        .vocab_size = 50,
        .padded_vocab = 64,
        .max_seq_len = 64,
        .rope_theta = 10000.0f,
        .norm_eps = 1e-5f,
    };
}

typedef struct {
    rt_device_memory mem;
    seqpar_ctx seqpar;
    rt_model model;
} fixture;

static void fixture_init(fixture *f, const rt_model_shape *shape, rt_activation_mode mode, size_t block_size,
                         int packed) {
    rt_error err;
    rt_device_memory_init(&f->mem, rt_backend_cpu(), 0);
    f->seqpar = (seqpar_ctx){.backend = rt_backend_cpu(), .mem = &f->mem, .block_size = block_size};
    int rc = rt_model_init(&f->model, shape, rt_backend_cpu(), &f->mem,
                           &(rt_model_options){.mode = mode,
                                               .offload_max_inflight = 1,
                                               .max_seqs = 1,
                                               .max_local_len = T,
                                               .seqpar = &f->seqpar,
                                               .packed_documents = packed},
                           &err);
    CU_ASSERT_FATAL(rc == 0);
    rt_model_init_params(&f->model, 42);
    rt_model_zero_grads(&f->model);
}

static void fixture_free(fixture *f) {
    rt_model_free(&f->model);
    seqpar_ctx_free(&f->seqpar);
    rt_device_memory_destroy(&f->mem);
}

/* One window: documents starting at starts[0] = 0 < starts[1] < ...; the first began `offset` tokens before
 * the window. */
typedef struct {
    const char *what;
    int n_docs;
    int64_t starts[MAX_DOCS];
    int64_t offset;
} window_case;

static double max_abs(const float *x, size_t n) {
    double m = 0.0;
    for (size_t i = 0; i < n; i++)
        m = fmax(m, fabs((double)x[i]));
    return m;
}

/* The window's documents: each token's document start and position in it (the first document continuing from
 * c->offset), and the target that crosses into the next document untrained, as the loader marks it. */
static void lay_out_documents(const window_case *c, int64_t *doc_first, int64_t *doc_pos, int32_t *targets) {
    for (int d = 0; d < c->n_docs; d++) {
        const int64_t start = c->starts[d], end = d + 1 < c->n_docs ? c->starts[d + 1] : T;
        for (int64_t i = start; i < end; i++) {
            doc_first[i] = start;
            doc_pos[i] = i - start + (d == 0 ? c->offset : 0);
        }
        if (d + 1 < c->n_docs) targets[end - 1] = -1;
    }
}

/* One packed window as a micro-batch of one sequence. */
static rt_batch packed_batch(const int32_t *inputs, const int32_t *targets, const int64_t *pos, const int64_t *doc_pos,
                             const int64_t *doc_first) {
    return (rt_batch){.inputs = inputs,
                      .targets = targets,
                      .pos = pos,
                      .doc_pos = doc_pos,
                      .doc_first = doc_first,
                      .n_seqs = 1,
                      .local_len = T};
}

static void check_case(rt_family family, rt_activation_mode mode, size_t block_size, const window_case *c) {
    const rt_model_shape shape = tiny_shape(family);
    int32_t inputs[T], targets[T], alone_targets[T];
    int64_t pos[T], doc_pos[T], doc_first[T];
    uint64_t state = 1000 + (uint64_t)c->n_docs;
    for (int i = 0; i < T; i++) {
        inputs[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)shape.vocab_size);
        targets[i] = alone_targets[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)shape.vocab_size);
        pos[i] = i;
    }
    /* the prediction of the next document's first token is not trained, packed or alone */
    lay_out_documents(c, doc_first, doc_pos, targets);
    lay_out_documents(c, doc_first, doc_pos, alone_targets);

    fixture packed, alone;
    fixture_init(&packed, &shape, mode, block_size, 1);
    fixture_init(&alone, &shape, mode, block_size, 0);
    size_t count = 0, count_alone = 0;
    const rt_batch batch = packed_batch(inputs, targets, pos, doc_pos, doc_first);
    const double loss = rt_model_forward_backward(&packed.model, &batch, NULL, 1.0f, &count);
    double loss_alone = 0.0;
    for (int d = 0; d < c->n_docs; d++) {
        const int64_t start = c->starts[d], end = d + 1 < c->n_docs ? c->starts[d + 1] : T;
        int64_t alone_pos[T];
        for (int64_t i = start; i < end; i++)
            alone_pos[i - start] = doc_pos[i];
        const rt_batch one = {.inputs = inputs + start,
                              .targets = alone_targets + start,
                              .pos = alone_pos,
                              .n_seqs = 1,
                              .local_len = (size_t)(end - start)};
        size_t n = 0;
        loss_alone += rt_model_forward_backward(&alone.model, &one, NULL, 1.0f, &n);
        count_alone += n;
    }
    CU_ASSERT_EQUAL(count, count_alone);
    const int loss_ok = fabs(loss - loss_alone) <= 1e-6 * fabs(loss_alone);
    const size_t n = packed.model.table.total;
    const double scale = max_abs(alone.model.grads, n);
    double worst = 0.0;
    for (size_t i = 0; i < n; i++)
        worst = fmax(worst, fabs((double)packed.model.grads[i] - (double)alone.model.grads[i]));
    const int grads_ok = worst <= 1e-6 * scale;
    if (!loss_ok || !grads_ok)
        fprintf(stderr, "\n  %s, %s, %s, block %zu: loss %.9g vs %.9g alone, worst gradient difference %.3g of %.3g\n",
                family == RT_FAMILY_LLAMA ? "llama" : "gpt2", mode == RT_ACT_KEEP ? "keep" : "recompute", c->what,
                block_size, loss, loss_alone, worst, scale);
    CU_ASSERT(loss_ok);
    CU_ASSERT(grads_ok);
    fixture_free(&packed);
    fixture_free(&alone);
}

static const window_case cases[] = {
    {"one document", 1, {0}, 0},
    {"one-token documents at both ends and a block-long one", 6, {0, 1, 2, 10, 18, 47}, 0},
    {"documents across the half-window and block boundaries", 4, {0, 5, 21, 30}, 0},
    {"a window that starts inside a document", 3, {0, 7, 40}, 9},
    {"two documents of exactly half a window (the zigzag chunk of one rank)", 2, {0, 24}, 0},
};

static void run_all(rt_family family) {
    const rt_activation_mode modes[2] = {RT_ACT_KEEP, RT_ACT_RECOMPUTE};
    const size_t blocks[2] = {0, 8};
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++)
        for (int m = 0; m < 2; m++)
            for (int b = 0; b < 2; b++)
                check_case(family, modes[m], blocks[b], &cases[c]);
}

/* Leak probe: every token of one document changed; every token of the other documents keeps its loss, bit for
 * bit (per-token losses of the forward, both families). */
static void leak_probe(rt_family family) {
    const rt_model_shape shape = tiny_shape(family);
    const window_case *c = &cases[1];
    int32_t inputs[T], changed[T], targets[T];
    int64_t pos[T], doc_pos[T], doc_first[T];
    uint64_t state = 77;
    for (int i = 0; i < T; i++) {
        inputs[i] = changed[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)shape.vocab_size);
        targets[i] = (int32_t)(test_rand_u64(&state) % (uint64_t)shape.vocab_size);
        pos[i] = i;
    }
    const int victim = 3; /* the document [10, 18) */
    lay_out_documents(c, doc_first, doc_pos, targets);
    for (int i = 0; i < T; i++)
        if (doc_first[i] == c->starts[victim]) changed[i] = (inputs[i] + 1) % shape.vocab_size;
    fixture f;
    fixture_init(&f, &shape, RT_ACT_KEEP, 8, 1);
    float losses[2][T];
    for (int run = 0; run < 2; run++) {
        const rt_batch batch = packed_batch(run ? changed : inputs, targets, pos, doc_pos, doc_first);
        size_t count = 0;
        rt_model_forward_loss(&f.model, &batch, &count);
        memcpy(losses[run], f.model.host_losses, sizeof losses[run]);
    }
    int others_same = 1, victim_differs = 0;
    for (int i = 0; i < T; i++) {
        const int same = memcmp(&losses[0][i], &losses[1][i], sizeof(float)) == 0;
        if (doc_first[i] == c->starts[victim])
            victim_differs |= !same;
        else
            others_same &= same;
    }
    CU_ASSERT(others_same);
    CU_ASSERT(victim_differs);
    fixture_free(&f);
}

static void test_leak_probe(void) {
    leak_probe(RT_FAMILY_LLAMA);
    leak_probe(RT_FAMILY_GPT2);
}

static void test_llama(void) { run_all(RT_FAMILY_LLAMA); }
static void test_gpt2(void) { run_all(RT_FAMILY_GPT2); }

int main(void) {
    test_case tests[] = {
        {"llama (GQA): a packed window equals its documents alone", test_llama},
        {"gpt2: a packed window equals its documents alone", test_gpt2},
        {"leak probe: one document changed, every other token's loss keeps its bits", test_leak_probe},
    };
    return test_run_suite("packed", tests, 3);
}
