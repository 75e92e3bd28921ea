/* test_loader.c: the data loader (io/loader.h): the values and positions of each batch over span cuts, the
 * rank slicing (zigzag sequence chunks, data-parallel slices of the global batch), shuffling by seed and epoch,
 * rewind, and the refusals (a token outside the vocabulary, spans past seq_len, too few windows).
 *
 * Every test works in its own mkdtemp directory under /tmp and removes it (tests/support/io_files.h); the
 * token files hold predictable patterns, so each expected value is computed from its position.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/loader.h"
#include "io/tokens.h"
#include "tests/support/io_files.h"
#include "tests/support/testing.h"

static void make_pattern_file(const char *path, size_t n, uint32_t modulus, int vocab) {
    uint32_t *tokens = malloc(n * sizeof *tokens);
    for (size_t i = 0; i < n; i++)
        tokens[i] = (uint32_t)(i % modulus);
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, tokens, n, vocab, &err), 0);
    free(tokens);
}

typedef struct {
    int32_t *inputs, *targets;
    int64_t *pos;
} batch_buffers;

static batch_buffers batch_alloc(size_t n) {
    batch_buffers b = {malloc(n * sizeof(int32_t)), malloc(n * sizeof(int32_t)), malloc(n * sizeof(int64_t))};
    return b;
}

static void batch_free(batch_buffers *b) {
    free(b->inputs);
    free(b->targets);
    free(b->pos);
}

static void test_loader_values_and_positions(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "mod251.tok", path);
    const size_t T = 16, W = 40, B = 4;
    make_pattern_file(path, T * W + 1, 251, 256);
    rt_token_file tf;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    CU_ASSERT_EQUAL(rt_loader_count_windows(&tf, T), W);
    CU_ASSERT_EQUAL(rt_loader_count_windows(&tf, T * W), 1);
    CU_ASSERT_EQUAL(rt_loader_count_windows(&tf, T * W + 1), 0);

    /* no shuffle: batch k holds windows 4k..4k+3; spans cut at 5 and 11 */
    rt_loader loader;
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&loader, &tf, T, 0, W, B, 0, 7, &err), 0);
    rt_span spans[3] = {{0, 5}, {5, 6}, {11, 5}};
    batch_buffers b = batch_alloc(B * T);
    int all_ok = 1;
    for (size_t batch = 0; batch < 3; batch++) {
        CU_ASSERT_EQUAL_FATAL(rt_loader_next(&loader, 0, B, spans, 3, 256, b.inputs, b.targets, b.pos, &err), 0);
        for (size_t s = 0; s < B; s++) {
            size_t window = batch * B + s;
            for (size_t p = 0; p < T; p++) {
                size_t i = s * T + p;
                all_ok &= b.inputs[i] == (int32_t)((window * T + p) % 251);
                all_ok &= b.targets[i] == (int32_t)((window * T + p + 1) % 251);
                all_ok &= b.pos[i] == (int64_t)p;
                if (p + 1 < T) all_ok &= b.targets[i] == b.inputs[i + 1]; /* shifted across span cuts */
            }
        }
    }
    CU_ASSERT(all_ok);

    /* a split starting further in: window indices offset by first_window */
    rt_loader split;
    rt_span full = {0, T};
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&split, &tf, T, 30, 10, 2, 0, 0, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_next(&split, 0, 2, &full, 1, 256, b.inputs, b.targets, b.pos, &err), 0);
    CU_ASSERT_EQUAL(b.inputs[0], (int32_t)(30 * T % 251));
    CU_ASSERT_EQUAL(b.inputs[T], (int32_t)(31 * T % 251));
    rt_loader_free(&split);

    batch_free(&b);
    rt_loader_free(&loader);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

/* Rank r of a zigzag sp=2 layout holds chunks r and 3-r of 4; together they must be the full sequence. */
static void test_loader_zigzag_ranks(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "mod251.tok", path);
    const size_t T = 32, W = 12, B = 3;
    make_pattern_file(path, T * W + 1, 251, 256);
    rt_token_file tf;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);

    rt_loader whole, rank0, rank1;
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&whole, &tf, T, 0, W, B, 1, 42, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&rank0, &tf, T, 0, W, B, 1, 42, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&rank1, &tf, T, 0, W, B, 1, 42, &err), 0);
    rt_span full = {0, T};
    rt_span spans0[2] = {{0, T / 4}, {3 * T / 4, T / 4}};
    rt_span spans1[2] = {{T / 4, T / 4}, {T / 2, T / 4}};
    batch_buffers bw = batch_alloc(B * T), b0 = batch_alloc(B * T / 2), b1 = batch_alloc(B * T / 2);
    int32_t *joined_in = malloc(B * T * sizeof *joined_in), *joined_tg = malloc(B * T * sizeof *joined_tg);
    int all_ok = 1;
    for (int step = 0; step < 9; step++) { /* 4 batches per epoch: crosses two epoch boundaries */
        CU_ASSERT_EQUAL_FATAL(rt_loader_next(&whole, 0, B, &full, 1, 256, bw.inputs, bw.targets, bw.pos, &err), 0);
        CU_ASSERT_EQUAL_FATAL(rt_loader_next(&rank0, 0, B, spans0, 2, 256, b0.inputs, b0.targets, b0.pos, &err), 0);
        CU_ASSERT_EQUAL_FATAL(rt_loader_next(&rank1, 0, B, spans1, 2, 256, b1.inputs, b1.targets, b1.pos, &err), 0);
        memset(joined_in, 0xff, B * T * sizeof *joined_in);
        memset(joined_tg, 0xff, B * T * sizeof *joined_tg);
        for (size_t s = 0; s < B; s++) {
            for (size_t i = 0; i < T / 2; i++) { /* scatter each rank's tokens by their positions */
                size_t k = s * (T / 2) + i;
                joined_in[s * T + (size_t)b0.pos[k]] = b0.inputs[k];
                joined_tg[s * T + (size_t)b0.pos[k]] = b0.targets[k];
                joined_in[s * T + (size_t)b1.pos[k]] = b1.inputs[k];
                joined_tg[s * T + (size_t)b1.pos[k]] = b1.targets[k];
            }
            /* rank 0's positions are exactly its two chunks, in span order */
            all_ok &= b0.pos[s * (T / 2)] == 0 && b0.pos[s * (T / 2) + T / 4] == (int64_t)(3 * T / 4);
            all_ok &= b1.pos[s * (T / 2)] == (int64_t)(T / 4) && b1.pos[s * (T / 2) + T / 4] == (int64_t)(T / 2);
        }
        all_ok &= memcmp(joined_in, bw.inputs, B * T * sizeof *joined_in) == 0;
        all_ok &= memcmp(joined_tg, bw.targets, B * T * sizeof *joined_tg) == 0;
    }
    CU_ASSERT(all_ok);
    CU_ASSERT_EQUAL(whole.epoch, 2);
    free(joined_in);
    free(joined_tg);
    batch_free(&bw);
    batch_free(&b0);
    batch_free(&b1);
    rt_loader_free(&whole);
    rt_loader_free(&rank0);
    rt_loader_free(&rank1);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

/* Token i = i, so a sequence's first input tells which window it came from. */
static void open_identity_file(test_dir *td, rt_token_file *tf, size_t n) {
    char path[256];
    dir_path(td, "identity.tok", path);
    make_pattern_file(path, n, 60000, 60000);
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(tf, path, &err), 0);
}

static void test_loader_dp_slices(void) {
    test_dir td;
    dir_make(&td);
    const size_t T = 8, W = 24, B = 6;
    rt_token_file tf;
    open_identity_file(&td, &tf, T * W + 1);
    rt_error err = {{0}};
    rt_loader whole, dp0, dp1, dp2;
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&whole, &tf, T, 0, W, B, 1, 5, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&dp0, &tf, T, 0, W, B, 1, 5, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&dp1, &tf, T, 0, W, B, 1, 5, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&dp2, &tf, T, 0, W, B, 1, 5, &err), 0);
    rt_span full = {0, T};
    batch_buffers bw = batch_alloc(B * T), bs = batch_alloc(B * T);
    int all_ok = 1;
    for (int step = 0; step < 6; step++) {
        CU_ASSERT_EQUAL_FATAL(rt_loader_next(&whole, 0, B, &full, 1, 60000, bw.inputs, bw.targets, bw.pos, &err), 0);
        /* three dp ranks, two sequences each, written one after another */
        size_t per = B / 3 * T;
        CU_ASSERT_EQUAL_FATAL(rt_loader_next(&dp0, 0, 2, &full, 1, 60000, bs.inputs, bs.targets, bs.pos, &err), 0);
        CU_ASSERT_EQUAL_FATAL(
            rt_loader_next(&dp1, 2, 2, &full, 1, 60000, bs.inputs + per, bs.targets + per, bs.pos + per, &err), 0);
        CU_ASSERT_EQUAL_FATAL(rt_loader_next(&dp2, 4, 2, &full, 1, 60000, bs.inputs + 2 * per, bs.targets + 2 * per,
                                             bs.pos + 2 * per, &err),
                              0);
        all_ok &= memcmp(bw.inputs, bs.inputs, B * T * sizeof *bw.inputs) == 0;
        all_ok &= memcmp(bw.targets, bs.targets, B * T * sizeof *bw.targets) == 0;
        all_ok &= memcmp(bw.pos, bs.pos, B * T * sizeof *bw.pos) == 0;
        /* disjoint: the six windows of the batch are distinct */
        for (size_t a = 0; a < B; a++)
            for (size_t c = a + 1; c < B; c++)
                all_ok &= bs.inputs[a * T] != bs.inputs[c * T];
    }
    CU_ASSERT(all_ok);

    /* asking for sequences past the global batch is an error */
    CU_ASSERT_EQUAL(rt_loader_next(&dp2, 5, 2, &full, 1, 60000, bs.inputs, bs.targets, bs.pos, &err), -1);
    ASSERT_MSG_HAS(err, "[5, 7)");
    batch_free(&bw);
    batch_free(&bs);
    rt_loader_free(&whole);
    rt_loader_free(&dp0);
    rt_loader_free(&dp1);
    rt_loader_free(&dp2);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

/* Window index of each sequence of the next batch. */
static int next_windows(rt_loader *loader, size_t B, size_t T, size_t *windows) {
    batch_buffers b = batch_alloc(B * T);
    rt_span full = {0, T};
    rt_error err = {{0}};
    int rc = rt_loader_next(loader, 0, B, &full, 1, 60000, b.inputs, b.targets, b.pos, &err);
    for (size_t s = 0; rc == 0 && s < B; s++)
        windows[s] = (size_t)b.inputs[s * T] / T;
    batch_free(&b);
    return rc;
}

static void test_loader_seed_and_epochs(void) {
    test_dir td;
    dir_make(&td);
    const size_t T = 4, W = 40, B = 4;
    rt_token_file tf;
    open_identity_file(&td, &tf, T * W + 1);
    rt_error err = {{0}};
    rt_loader a, same, other;
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&a, &tf, T, 0, W, B, 1, 1234, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&same, &tf, T, 0, W, B, 1, 1234, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&other, &tf, T, 0, W, B, 1, 1235, &err), 0);
    size_t epoch0[40], epoch1[40], same0[40], other0[40];
    for (size_t k = 0; k < W / B; k++) {
        CU_ASSERT_EQUAL_FATAL(next_windows(&a, B, T, epoch0 + k * B), 0);
        CU_ASSERT_EQUAL_FATAL(next_windows(&same, B, T, same0 + k * B), 0);
        CU_ASSERT_EQUAL_FATAL(next_windows(&other, B, T, other0 + k * B), 0);
    }
    CU_ASSERT_EQUAL(a.epoch, 1);
    for (size_t k = 0; k < W / B; k++)
        CU_ASSERT_EQUAL_FATAL(next_windows(&a, B, T, epoch1 + k * B), 0);
    CU_ASSERT_EQUAL(a.epoch, 2);

    CU_ASSERT(memcmp(epoch0, same0, sizeof epoch0) == 0);
    CU_ASSERT(memcmp(epoch0, other0, sizeof epoch0) != 0);
    CU_ASSERT(memcmp(epoch0, epoch1, sizeof epoch0) != 0);
    /* every window exactly once per epoch */
    int seen0[40] = {0}, seen1[40] = {0}, ok = 1, in_order = 1;
    for (size_t i = 0; i < W; i++) {
        ok &= epoch0[i] < W && epoch1[i] < W;
        if (ok) {
            seen0[epoch0[i]]++;
            seen1[epoch1[i]]++;
        }
        in_order &= epoch0[i] == i;
    }
    for (size_t w = 0; w < W; w++)
        ok &= seen0[w] == 1 && seen1[w] == 1;
    CU_ASSERT(ok);
    CU_ASSERT(!in_order); /* shuffled */

    /* rewind replays epoch 0 */
    rt_loader_rewind(&a);
    size_t again[4];
    CU_ASSERT_EQUAL_FATAL(next_windows(&a, B, T, again), 0);
    CU_ASSERT(memcmp(again, epoch0, sizeof again) == 0);
    rt_loader_free(&a);
    rt_loader_free(&same);
    rt_loader_free(&other);

    /* W = 40, B = 3: 13 batches of distinct windows, then a new epoch (the 40th window skipped) */
    rt_loader odd;
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&odd, &tf, T, 0, 40, 3, 1, 9, &err), 0);
    int seen[40] = {0};
    ok = 1;
    for (int k = 0; k < 13; k++) {
        size_t windows[3];
        CU_ASSERT_EQUAL_FATAL(next_windows(&odd, 3, T, windows), 0);
        for (int s = 0; s < 3; s++)
            ok &= windows[s] < 40 && ++seen[windows[s]] == 1;
    }
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL(odd.epoch, 1);
    CU_ASSERT_EQUAL(odd.cursor, 0);
    rt_loader_free(&odd);

    /* without shuffling, validation reads in order */
    rt_loader val;
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&val, &tf, T, 0, W, B, 0, 1234, &err), 0);
    size_t first[4];
    CU_ASSERT_EQUAL_FATAL(next_windows(&val, B, T, first), 0);
    for (size_t s = 0; s < B; s++)
        CU_ASSERT_EQUAL(first[s], s);
    rt_loader_free(&val);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

static void test_loader_errors(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "bad.tok", path);
    uint32_t tokens[41];
    for (int i = 0; i < 41; i++)
        tokens[i] = (uint32_t)i % 200;
    tokens[20] = 300;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, tokens, 41, 1000, &err), 0);
    rt_token_file tf;
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    const size_t T = 8; /* 5 windows */

    rt_loader loader;
    CU_ASSERT_EQUAL_FATAL(rt_loader_init(&loader, &tf, T, 0, 5, 1, 0, 0, &err), 0);
    rt_span full = {0, T};
    batch_buffers b = batch_alloc(T);
    CU_ASSERT_EQUAL(rt_loader_next(&loader, 0, 1, &full, 1, 256, b.inputs, b.targets, b.pos, &err), 0);
    /* window 1 covers tokens 8..16; its last target is token 16 */
    CU_ASSERT_EQUAL(rt_loader_next(&loader, 0, 1, &full, 1, 256, b.inputs, b.targets, b.pos, &err), 0);
    /* window 2 covers 16..24 and holds token 20 = 300 */
    CU_ASSERT_EQUAL(rt_loader_next(&loader, 0, 1, &full, 1, 256, b.inputs, b.targets, b.pos, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "offset 20");
    ASSERT_MSG_HAS(err, "300");
    ASSERT_MSG_HAS(err, "256");
    CU_ASSERT_EQUAL(loader.cursor, 2); /* a failed call does not advance */
    /* the same token reached only as a target: window 2, position 3 (input token 19, target token 20) */
    rt_span before = {0, 3}, hits_target = {3, 1};
    CU_ASSERT_EQUAL(rt_loader_next(&loader, 0, 1, &before, 1, 256, b.inputs, b.targets, b.pos, &err), 0);
    rt_loader_rewind(&loader);
    loader.cursor = 2;
    CU_ASSERT_EQUAL(rt_loader_next(&loader, 0, 1, &hits_target, 1, 256, b.inputs, b.targets, b.pos, &err), -1);
    ASSERT_MSG_HAS(err, "offset 20");

    /* a span past seq_len */
    rt_span beyond = {6, 3};
    CU_ASSERT_EQUAL(rt_loader_next(&loader, 0, 1, &beyond, 1, 1000, b.inputs, b.targets, b.pos, &err), -1);
    ASSERT_MSG_HAS(err, "beyond seq_len 8");
    rt_loader_free(&loader);

    /* too few windows for one global batch; a split outside the file */
    CU_ASSERT_EQUAL(rt_loader_init(&loader, &tf, T, 0, 5, 6, 1, 0, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "fewer than one global batch of 6");
    CU_ASSERT_EQUAL(rt_loader_init(&loader, &tf, T, 3, 3, 1, 1, 0, &err), -1);
    ASSERT_MSG_HAS(err, "outside the file");
    CU_ASSERT_EQUAL(rt_loader_init(&loader, &tf, 64, 0, 1, 1, 1, 0, &err), -1);
    batch_free(&b);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

/* Whether file offset q starts a document: the file's first token, else by where the separator stands. */
static int naive_is_start(const uint32_t *tokens, size_t q, uint32_t sep, int starts_document) {
    if (q == 0) return 1;
    return starts_document ? tokens[q] == sep : tokens[q - 1] == sep;
}

/* Packed documents: doc_first, doc_pos and the untrained boundary targets of every position of every sequence,
 * against a naive scan of the file from each position back to its document's start (both conventions, with
 * and without lookback across the window's start), over zigzag spans of 2 ranks and a shuffled order. */
static void test_loader_documents(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "docs.tok", path);
    const size_t T = 32, W = 60, B = 3, N = T * W + 1;
    const uint32_t sep = 7;
    uint32_t *tokens = malloc(N * sizeof *tokens);
    uint64_t state = 99;
    for (size_t i = 0; i < N; i++) {
        tokens[i] = (uint32_t)(test_rand_u64(&state) % 20);
        if (tokens[i] == sep && (i / 200) % 3 == 2) tokens[i] = sep + 1; /* long stretches with no separator */
    }
    tokens[T * 5] = sep;     /* a separator exactly at a window's first token */
    tokens[T * 9 - 1] = sep; /* and just before one */
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, tokens, N, 20, &err), 0);
    rt_token_file tf;
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    rt_span spans[2] = {{8, 8}, {16, 8}}; /* rank 1 of 2: chunks 1 and 2 of 4 */
    const size_t per = B * 16;
    batch_buffers b = batch_alloc(per), plain = batch_alloc(per); /* plain: the order, from a loader without */
    int64_t *doc_pos = malloc(per * sizeof *doc_pos), *doc_first = malloc(per * sizeof *doc_first);
    int mismatches = 0, boundaries = 0, continued = 0;
    for (int starts_document = 0; starts_document < 2; starts_document++)
        for (size_t lookback = 0; lookback <= 40; lookback += 40) {
            rt_loader loader, order;
            CU_ASSERT_EQUAL_FATAL(rt_loader_init(&loader, &tf, T, 0, W, B, 1, 5, &err), 0);
            CU_ASSERT_EQUAL_FATAL(rt_loader_init(&order, &tf, T, 0, W, B, 1, 5, &err), 0);
            rt_loader_set_documents(&loader, sep, starts_document, lookback);
            for (int step = 0; step < 30; step++) {
                const size_t cursor = order.cursor;
                size_t windows[3];
                for (size_t s = 0; s < B; s++)
                    windows[s] = order.order[cursor + s];
                CU_ASSERT_EQUAL_FATAL(rt_loader_next_docs(&loader, 0, B, spans, 2, 20, b.inputs, b.targets, b.pos,
                                                          doc_pos, doc_first, &err),
                                      0);
                CU_ASSERT_EQUAL_FATAL(
                    rt_loader_next(&order, 0, B, spans, 2, 20, plain.inputs, plain.targets, plain.pos, &err), 0);
                for (size_t s = 0; s < B; s++) {
                    const size_t base = windows[s] * T;
                    for (size_t i = 0; i < 16; i++) {
                        const size_t out = s * 16 + i, p = i < 8 ? 8 + i : 16 + (i - 8);
                        size_t start = base + p;
                        while (!naive_is_start(tokens, start, sep, starts_document))
                            start--;
                        int64_t first = 0, position;
                        if (start >= base) {
                            first = (int64_t)(start - base);
                            position = (int64_t)p - first;
                        } else {
                            const size_t before = base - start;
                            position = (int64_t)p + (before <= lookback ? (int64_t)before : 0);
                            continued += before <= lookback && before > 0;
                        }
                        const int boundary = naive_is_start(tokens, base + p + 1, sep, starts_document);
                        boundaries += boundary;
                        const int32_t target = boundary ? -1 : (int32_t)tokens[base + p + 1];
                        mismatches += doc_first[out] != first || doc_pos[out] != position || b.targets[out] != target ||
                                      b.inputs[out] != (int32_t)tokens[base + p];
                    }
                }
            }
            rt_loader_free(&loader);
            rt_loader_free(&order);
        }
    CU_ASSERT_EQUAL(mismatches, 0);
    CU_ASSERT(boundaries > 100); /* the cases were reached */
    CU_ASSERT(continued > 20);
    free(doc_pos);
    free(doc_first);
    batch_free(&b);
    batch_free(&plain);
    free(tokens);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

int main(void) {
    test_case cases[] = {
        {"loader_values_and_positions", test_loader_values_and_positions},
        {"loader_zigzag_ranks", test_loader_zigzag_ranks},
        {"loader_dp_slices", test_loader_dp_slices},
        {"loader_seed_and_epochs", test_loader_seed_and_epochs},
        {"loader_errors", test_loader_errors},
        {"loader_documents", test_loader_documents},
    };
    return test_run_suite("test_loader", cases, (int)(sizeof cases / sizeof cases[0]));
}
