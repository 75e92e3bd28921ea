/* test_io.c: token files, the loader's rank slicing, llm.c model files, prepare and HDF5 checkpoints.
 *
 * Every test works in its own mkdtemp directory under /tmp and removes it.
 * Files are built by hand from their documented layouts (not by the code
 * under test) where the format itself is what is being checked.
 */
#define _GNU_SOURCE /* memmem */
#include <dirent.h>
#include <float.h>
#include <hdf5.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/llmc_model.h"
#include "io/loader.h"
#include "io/model_file.h"
#include "io/prepare.h"
#include "io/tokens.h"
#include "tests/support/testing.h"

/* ---- helpers ---- */

typedef struct {
    char dir[64];
} test_dir;

static void dir_make(test_dir *td) {
    strcpy(td->dir, "/tmp/rt_test_io_XXXXXX");
    if (!mkdtemp(td->dir)) {
        perror("mkdtemp");
        abort();
    }
}

static const char *dir_path(const test_dir *td, const char *name, char out[256]) {
    snprintf(out, 256, "%s/%s", td->dir, name);
    return out;
}

/* Number of entries in the directory (not counting . and ..). */
static int dir_count(const test_dir *td) {
    DIR *dir = opendir(td->dir);
    int count = 0;
    for (struct dirent *entry; dir && (entry = readdir(dir));)
        if (strcmp(entry->d_name, ".") && strcmp(entry->d_name, "..")) count++;
    if (dir) closedir(dir);
    return count;
}

static int dir_has_tmp(const test_dir *td) {
    DIR *dir = opendir(td->dir);
    int found = 0;
    for (struct dirent *entry; dir && (entry = readdir(dir));) {
        size_t len = strlen(entry->d_name);
        if (len >= 4 && strcmp(entry->d_name + len - 4, ".tmp") == 0) found = 1;
    }
    if (dir) closedir(dir);
    return found;
}

static void dir_remove(test_dir *td) {
    DIR *dir = opendir(td->dir);
    for (struct dirent *entry; dir && (entry = readdir(dir));) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
        char path[sizeof td->dir + sizeof entry->d_name + 1];
        snprintf(path, sizeof path, "%s/%s", td->dir, entry->d_name);
        unlink(path);
    }
    if (dir) closedir(dir);
    rmdir(td->dir);
}

static int file_exists(const char *path) { return access(path, F_OK) == 0; }

static long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

static void write_raw(const char *path, const void *data, size_t bytes) {
    FILE *file = fopen(path, "wb");
    CU_ASSERT_FATAL(file != NULL);
    CU_ASSERT(fwrite(data, 1, bytes, file) == bytes);
    fclose(file);
}

/* Reads a whole file (malloc'd). */
static unsigned char *read_raw(const char *path, size_t *bytes) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    *bytes = (size_t)ftell(file);
    fseek(file, 0, SEEK_SET);
    unsigned char *data = malloc(*bytes ? *bytes : 1);
    if (fread(data, 1, *bytes, file) != *bytes) *bytes = 0;
    fclose(file);
    return data;
}

/* An llm.c shard by its documented layout: int32[256] header {20240520, 1, n}, then uint16 tokens. */
static void write_llmc_shard(const char *path, const uint16_t *tokens, size_t n) {
    int32_t header[256] = {RT_LLMC_SHARD_MAGIC, 1, (int32_t)n};
    FILE *file = fopen(path, "wb");
    CU_ASSERT_FATAL(file != NULL);
    fwrite(header, sizeof header, 1, file);
    fwrite(tokens, sizeof *tokens, n, file);
    fclose(file);
}

#define ASSERT_MSG_HAS(err, text)                                                                                      \
    do {                                                                                                               \
        if (!strstr((err).msg, (text))) fprintf(stderr, "\n  message '%s' lacks '%s'\n", (err).msg, (text));           \
        CU_ASSERT(strstr((err).msg, (text)) != NULL);                                                                  \
    } while (0)

/* ---- token files ---- */

static void test_tokens_roundtrip_u16(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "a.tok", path);
    size_t n = 5000;
    uint32_t *tokens = malloc(n * sizeof *tokens);
    for (size_t i = 0; i < n; i++)
        tokens[i] = (uint32_t)(i * 7919 % 1000);
    tokens[17] = 999;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, tokens, n, 1000, &err), 0);
    CU_ASSERT(file_size(path) == RT_TOKENS_HEADER_BYTES + 2 * (long)n);
    CU_ASSERT(!dir_has_tmp(&td));

    rt_token_file tf;
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    CU_ASSERT_EQUAL(tf.vocab_size, 1000);
    CU_ASSERT_EQUAL(tf.bytes_per_token, 2);
    CU_ASSERT_EQUAL(tf.is_llmc, 0);
    CU_ASSERT_EQUAL(tf.n_tokens, n);
    int same = 1;
    for (size_t i = 0; i < n; i++)
        same &= rt_tokens_get(&tf, i) == tokens[i];
    CU_ASSERT(same);
    rt_tokens_close(&tf);
    free(tokens);
    dir_remove(&td);
}

static void test_tokens_roundtrip_u32(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "big.tok", path);
    uint32_t tokens[] = {0, 1, 65535, 65536, 70000, 99999, 12345};
    size_t n = sizeof tokens / sizeof tokens[0];
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, tokens, n, 100000, &err), 0);
    CU_ASSERT(file_size(path) == RT_TOKENS_HEADER_BYTES + 4 * (long)n);
    rt_token_file tf;
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    CU_ASSERT_EQUAL(tf.vocab_size, 100000);
    CU_ASSERT_EQUAL(tf.bytes_per_token, 4);
    CU_ASSERT_EQUAL(tf.n_tokens, n);
    for (size_t i = 0; i < n; i++)
        CU_ASSERT_EQUAL(rt_tokens_get(&tf, i), tokens[i]);
    rt_tokens_close(&tf);

    /* vocab exactly 65536 still fits uint16 */
    uint32_t edge[] = {65535, 3};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, edge, 2, 65536, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    CU_ASSERT_EQUAL(tf.bytes_per_token, 2);
    CU_ASSERT_EQUAL(rt_tokens_get(&tf, 0), 65535);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

static void test_tokens_llmc_shard(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "shard.bin", path);
    uint16_t tokens[300];
    for (int i = 0; i < 300; i++)
        tokens[i] = (uint16_t)(i * 167 % 50257);
    tokens[5] = 50256;
    write_llmc_shard(path, tokens, 300);
    rt_token_file tf;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    CU_ASSERT_EQUAL(tf.is_llmc, 1);
    CU_ASSERT_EQUAL(tf.vocab_size, 50257);
    CU_ASSERT_EQUAL(tf.bytes_per_token, 2);
    CU_ASSERT_EQUAL(tf.n_tokens, 300);
    for (int i = 0; i < 300; i++)
        CU_ASSERT_EQUAL(rt_tokens_get(&tf, (size_t)i), tokens[i]);
    rt_tokens_close(&tf);
    dir_remove(&td);
}

static void test_tokens_open_errors(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    rt_token_file tf;
    rt_error err = {{0}};

    /* truncated: a valid file cut short */
    dir_path(&td, "cut.tok", path);
    uint32_t tokens[100] = {0};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, tokens, 100, 256, &err), 0);
    CU_ASSERT_EQUAL(truncate(path, RT_TOKENS_HEADER_BYTES + 150), 0);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "truncated: header says 100 tokens (200 bytes) but the file holds 150 bytes");
    CU_ASSERT(tf.map == NULL);

    /* truncated llm.c shard */
    dir_path(&td, "cut.bin", path);
    uint16_t shard_tokens[10] = {1, 2, 3};
    write_llmc_shard(path, shard_tokens, 10);
    CU_ASSERT_EQUAL(truncate(path, 1024 + 12), 0);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, "truncated");

    /* bad magic */
    dir_path(&td, "magic.tok", path);
    int32_t header[256] = {12345, 1};
    write_raw(path, header, sizeof header);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "magic 12345");
    ASSERT_MSG_HAS(err, "20261122");
    ASSERT_MSG_HAS(err, "20240520");

    /* wrong version, bad bytes per token */
    int32_t bad_version[256] = {RT_TOKENS_MAGIC, 7, 256, 2};
    write_raw(path, bad_version, sizeof bad_version);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, "version 7");
    int32_t bad_width[256] = {RT_TOKENS_MAGIC, 1, 256, 3};
    write_raw(path, bad_width, sizeof bad_width);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, "3 bytes per token");
    int32_t bad_vocab[256] = {RT_TOKENS_MAGIC, 1, 0, 2};
    write_raw(path, bad_vocab, sizeof bad_vocab);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, "vocab_size 0");

    /* missing, empty, shorter than a header */
    dir_path(&td, "missing.tok", path);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "No such file");
    dir_path(&td, "empty.tok", path);
    write_raw(path, "", 0);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "empty");
    write_raw(path, header, 100);
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, "truncated");
    dir_remove(&td);
}

static void test_tokens_write_failure(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    uint32_t tokens[4] = {1, 2, 3, 4};
    rt_error err = {{0}};

    /* directory does not exist: error, and neither the file nor its .tmp */
    dir_path(&td, "nodir/x.tok", path);
    CU_ASSERT_EQUAL(rt_tokens_write(path, tokens, 4, 256, &err), -1);
    ASSERT_MSG_HAS(err, "nodir/x.tok.tmp");
    ASSERT_MSG_HAS(err, "No such file");
    CU_ASSERT(!file_exists(path));

    /* token outside the vocabulary: refused before anything is written */
    dir_path(&td, "x.tok", path);
    CU_ASSERT_EQUAL(rt_tokens_write(path, tokens, 4, 4, &err), -1);
    ASSERT_MSG_HAS(err, "token 3 is 4");
    CU_ASSERT_EQUAL(dir_count(&td), 0);

    /* a failed write leaves an existing file untouched */
    CU_ASSERT_EQUAL_FATAL(rt_tokens_write(path, tokens, 4, 256, &err), 0);
    CU_ASSERT_EQUAL(rt_tokens_write(path, tokens, 4, 3, &err), -1);
    rt_token_file tf;
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    CU_ASSERT_EQUAL(tf.n_tokens, 4);
    rt_tokens_close(&tf);
    CU_ASSERT_EQUAL(dir_count(&td), 1);
    dir_remove(&td);
}

static void test_byte_decode(void) {
    char out[4];
    CU_ASSERT_EQUAL(rt_byte_decode('A', out, sizeof out), 1);
    CU_ASSERT_EQUAL(out[0], 'A');
    CU_ASSERT_EQUAL(rt_byte_decode(255, out, sizeof out), 1);
    CU_ASSERT_EQUAL((unsigned char)out[0], 255);
    CU_ASSERT_EQUAL(rt_byte_decode(256, out, sizeof out), 0);
    CU_ASSERT_EQUAL(rt_byte_decode('A', out, 0), 0);
}

/* ---- loader ---- */

/* A token file whose token i is i % modulus (so every value is predictable). */
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

/* ---- llm.c model files ---- */

static const rt_llmc_header small_header = {
    .max_seq_len = 6, .vocab_size = 10, .n_layers = 2, .n_heads = 2, .channels = 8, .padded_vocab_size = 12};

static void test_llmc_model_roundtrip(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "model.bin", path);
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(&small_header, sizes);
    /* the documented sizes, from the header comment */
    size_t V = 12, C = 8, L = 2, maxT = 6;
    size_t expect[RT_LLMC_N_TENSORS] = {V * C,         maxT * C, L * C, L * C, L * 3 * C * C, L * 3 * C,
                                        L * C * C,     L * C,    L * C, L * C, L * 4 * C * C, L * 4 * C,
                                        L * C * 4 * C, L * C,    C,     C};
    for (int t = 0; t < RT_LLMC_N_TENSORS; t++) {
        CU_ASSERT_EQUAL(sizes[t], expect[t]);
        total += sizes[t];
    }
    CU_ASSERT_STRING_EQUAL(rt_llmc_tensor_name(0), "wte");
    CU_ASSERT_STRING_EQUAL(rt_llmc_tensor_name(4), "qkvw");
    CU_ASSERT_STRING_EQUAL(rt_llmc_tensor_name(15), "lnfb");
    CU_ASSERT_PTR_NULL(rt_llmc_tensor_name(16));

    float *params = malloc(total * sizeof *params), *back = malloc(total * sizeof *back);
    size_t offset = 0;
    for (int t = 0; t < RT_LLMC_N_TENSORS; t++)
        for (size_t e = 0; e < sizes[t]; e++)
            params[offset++] = (float)(t * 1000) + (float)e * 0.5f;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_llmc_write(path, &small_header, params, &err), 0);
    CU_ASSERT(file_size(path) == 1024 + (long)(total * sizeof(float)));
    CU_ASSERT(!dir_has_tmp(&td));

    /* header fields at their documented places */
    size_t bytes = 0;
    unsigned char *raw = read_raw(path, &bytes);
    int32_t fields[8];
    memcpy(fields, raw, sizeof fields);
    CU_ASSERT(fields[0] == 20240326 && fields[1] == 3 && fields[2] == 6 && fields[3] == 10 && fields[4] == 2 &&
              fields[5] == 2 && fields[6] == 8 && fields[7] == 12);
    free(raw);

    rt_llmc_header hdr;
    CU_ASSERT_EQUAL_FATAL(rt_llmc_read_header(path, &hdr, &err), 0);
    CU_ASSERT(memcmp(&hdr, &small_header, sizeof hdr) == 0);
    CU_ASSERT_EQUAL_FATAL(rt_llmc_read_params(path, &hdr, back, &err), 0);
    int ok = 1;
    offset = 0;
    for (int t = 0; t < RT_LLMC_N_TENSORS; t++)
        for (size_t e = 0; e < sizes[t]; e++, offset++)
            ok &= back[offset] == (float)(t * 1000) + (float)e * 0.5f;
    CU_ASSERT(ok);
    free(params);
    free(back);
    dir_remove(&td);
}

static void test_llmc_model_errors(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "model.bin", path);
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(&small_header, sizes);
    for (int t = 0; t < RT_LLMC_N_TENSORS; t++)
        total += sizes[t];
    float *params = calloc(total, sizeof *params);
    rt_error err = {{0}};
    rt_llmc_header hdr;

    /* bad magic, wrong version: patch the header of a good file */
    CU_ASSERT_EQUAL_FATAL(rt_llmc_write(path, &small_header, params, &err), 0);
    size_t bytes = 0;
    unsigned char *raw = read_raw(path, &bytes);
    int32_t value = 777;
    memcpy(raw, &value, 4);
    write_raw(path, raw, bytes);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "magic 777");
    ASSERT_MSG_HAS(err, "20240326");
    value = RT_LLMC_MODEL_MAGIC;
    memcpy(raw, &value, 4);
    value = 5;
    memcpy(raw + 4, &value, 4);
    write_raw(path, raw, bytes);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "version 5");
    value = 3;
    memcpy(raw + 4, &value, 4);
    value = 3; /* num_heads 3 does not divide channels 8 */
    memcpy(raw + 20, &value, 4);
    write_raw(path, raw, bytes);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "not divisible");
    free(raw);

    /* truncated parameters */
    CU_ASSERT_EQUAL_FATAL(rt_llmc_write(path, &small_header, params, &err), 0);
    CU_ASSERT_EQUAL(truncate(path, (off_t)(1024 + total * sizeof(float) - 100)), 0);
    char expected[200];
    snprintf(expected, sizeof expected, "truncated: expected %zu bytes of parameters, found %zu", total * sizeof(float),
             total * sizeof(float) - 100);
    /* the header is checked against the file's size before anyone sizes memory from it */
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, expected);
    CU_ASSERT_EQUAL(rt_llmc_read_params(path, &small_header, params, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, expected);
    /* a header shorter than 1024 bytes */
    CU_ASSERT_EQUAL(truncate(path, 100), 0);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "truncated");
    /* missing file */
    unlink(path);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "No such file");

    /* invalid header refused on write; no file, no tmp */
    rt_llmc_header bad = small_header;
    bad.padded_vocab_size = 5;
    CU_ASSERT_EQUAL(rt_llmc_write(path, &bad, params, &err), -1);
    ASSERT_MSG_HAS(err, "padded_vocab_size 5");
    CU_ASSERT_EQUAL(dir_count(&td), 0);
    free(params);
    dir_remove(&td);
}

/* ---- prepare ---- */

static void expect_tokens(const char *path, const unsigned char *bytes, size_t n) {
    rt_token_file tf;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, path, &err), 0);
    CU_ASSERT_EQUAL(tf.vocab_size, 256);
    CU_ASSERT_EQUAL(tf.n_tokens, n);
    int ok = tf.n_tokens == n;
    for (size_t i = 0; ok && i < n; i++)
        ok &= rt_tokens_get(&tf, i) == bytes[i];
    CU_ASSERT(ok);
    rt_tokens_close(&tf);
}

static void test_prepare_text(void) {
    test_dir td;
    dir_make(&td);
    char in_a[256], in_b[256], in_c[256], train[256], val[256];
    dir_path(&td, "a.txt", in_a);
    dir_path(&td, "b.txt", in_b);
    dir_path(&td, "c.txt", in_c);
    dir_path(&td, "train.tok", train);
    dir_path(&td, "val.tok", val);
    write_raw(in_a, "hello", 5);          /* no trailing newline: one is added */
    write_raw(in_b, "w\xc3\xb6rld\n", 7); /* ends with one: none added */
    write_raw(in_c, "\x00\xff!", 3);
    const char *inputs[] = {in_a, in_b, in_c};
    rt_error err = {{0}};
    size_t n_train = 0, n_val = 99;
    CU_ASSERT_EQUAL_FATAL(rt_prepare_text_counted(inputs, 3, train, NULL, 0.5, &n_train, &n_val, &err), 0);
    const unsigned char expected[] = "hello\nw\xc3\xb6rld\n\x00\xff!";
    CU_ASSERT_EQUAL(n_train, sizeof expected - 1);
    CU_ASSERT_EQUAL(n_val, 0);
    expect_tokens(train, expected, sizeof expected - 1);
    unlink(train);

    /* val split: the last floor(0.1 * 1000) bytes go to val */
    unsigned char text[1000];
    for (int i = 0; i < 1000; i++)
        text[i] = (unsigned char)(i * 31 + 7);
    write_raw(in_a, text, sizeof text);
    CU_ASSERT_EQUAL_FATAL(rt_prepare_text_counted(inputs, 1, train, val, 0.1, &n_train, &n_val, &err), 0);
    CU_ASSERT_EQUAL(n_train, 900);
    CU_ASSERT_EQUAL(n_val, 100);
    expect_tokens(train, text, 900);
    expect_tokens(val, text + 900, 100);
    CU_ASSERT(!dir_has_tmp(&td));
    unlink(train);
    unlink(val);
    CU_ASSERT_EQUAL(rt_prepare_text(inputs, 1, train, val, 0.25, &err), 0);
    CU_ASSERT(file_size(val) == 1024 + 2 * 250);
    unlink(train);
    unlink(val);
    dir_remove(&td);
}

static void test_prepare_errors(void) {
    test_dir td;
    dir_make(&td);
    char in_a[256], missing[256], train[256], val[256], bad_val[256];
    dir_path(&td, "a.txt", in_a);
    dir_path(&td, "missing.txt", missing);
    dir_path(&td, "train.tok", train);
    dir_path(&td, "val.tok", val);
    dir_path(&td, "nodir/val.tok", bad_val);
    write_raw(in_a, "some text\n", 10);
    rt_error err = {{0}};

    /* a missing input, even after a good one: named, and nothing written */
    const char *inputs[] = {in_a, missing};
    CU_ASSERT_EQUAL(rt_prepare_text(inputs, 2, train, val, 0.1, &err), -1);
    ASSERT_MSG_HAS(err, missing);
    ASSERT_MSG_HAS(err, "No such file");
    CU_ASSERT_EQUAL(dir_count(&td), 1);

    /* a fraction that leaves val (or train) empty */
    CU_ASSERT_EQUAL(rt_prepare_text(inputs, 1, train, val, 0.05, &err), -1);
    ASSERT_MSG_HAS(err, "0.05");
    ASSERT_MSG_HAS(err, "10 bytes");
    CU_ASSERT_EQUAL(rt_prepare_text(inputs, 1, train, val, 1.5, &err), -1);
    ASSERT_MSG_HAS(err, "1.5");
    CU_ASSERT_EQUAL(dir_count(&td), 1);

    /* the val write fails: the train file of this call is removed too */
    CU_ASSERT_EQUAL(rt_prepare_text(inputs, 1, train, bad_val, 0.5, &err), -1);
    ASSERT_MSG_HAS(err, "nodir/val.tok");
    CU_ASSERT(!file_exists(train));
    CU_ASSERT_EQUAL(dir_count(&td), 1);

    /* empty input */
    write_raw(in_a, "", 0);
    CU_ASSERT_EQUAL(rt_prepare_text(inputs, 1, train, NULL, 0.0, &err), -1);
    ASSERT_MSG_HAS(err, "no bytes");
    CU_ASSERT_EQUAL(dir_count(&td), 1);
    dir_remove(&td);
}

static void test_prepare_llmc(void) {
    test_dir td;
    dir_make(&td);
    char shard[256], out[256];
    dir_path(&td, "shard.bin", shard);
    dir_path(&td, "out.tok", out);
    uint16_t tokens[1000];
    for (int i = 0; i < 1000; i++)
        tokens[i] = (uint16_t)(i * 50 % 50257);
    tokens[999] = 50256;
    write_llmc_shard(shard, tokens, 1000);
    rt_error err = {{0}};
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rt_prepare_llmc_counted(shard, out, &n, &err), 0);
    CU_ASSERT_EQUAL(n, 1000);
    rt_token_file tf;
    CU_ASSERT_EQUAL_FATAL(rt_tokens_open(&tf, out, &err), 0);
    CU_ASSERT_EQUAL(tf.is_llmc, 0);
    CU_ASSERT_EQUAL(tf.vocab_size, 50257);
    CU_ASSERT_EQUAL(tf.n_tokens, 1000);
    int ok = 1;
    for (size_t i = 0; i < 1000; i++)
        ok &= rt_tokens_get(&tf, i) == tokens[i];
    CU_ASSERT(ok);
    rt_tokens_close(&tf);

    /* converting a ringtrain file, or a shard with a token past GPT-2's vocabulary, fails without output */
    unlink(out);
    CU_ASSERT_EQUAL(rt_prepare_llmc(shard, out, &err), 0);
    char again[256];
    dir_path(&td, "again.tok", again);
    CU_ASSERT_EQUAL(rt_prepare_llmc(out, again, &err), -1);
    ASSERT_MSG_HAS(err, "already a ringtrain token file");
    tokens[10] = 60000;
    write_llmc_shard(shard, tokens, 1000);
    CU_ASSERT_EQUAL(rt_prepare_llmc(shard, again, &err), -1);
    ASSERT_MSG_HAS(err, "offset 10 is 60000");
    CU_ASSERT(!file_exists(again));
    CU_ASSERT_EQUAL(dir_count(&td), 2);
    dir_remove(&td);
}

/* ---- checkpoints ---- */

static void make_table(rt_view_table *table, size_t wte_cols) {
    rt_view_table_init(table);
    rt_view_table_add(table, "wte", 2, (size_t[]){10, wte_cols}, 1);
    rt_view_table_add(table, "blocks/0/ln1.weight", 1, (size_t[]){8}, 0);
    rt_view_table_add(table, "attn.qkvw", 3, (size_t[]){2, 3, 4}, 1);
}

static void test_checkpoint_roundtrip(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "step_5.h5", path);
    rt_view_table table;
    make_table(&table, 8);
    /* a tensor over the 4 MiB chunk cap: written in several chunks */
    rt_view_table_add(&table, "big", 2, (size_t[]){1500, 1000}, 1);
    float *params = malloc(table.total * sizeof *params), *back = malloc(table.total * sizeof *back);
    test_fill_uniform(params, table.total, -2.0f, 2.0f, 11);
    params[0] = -0.0f;
    params[1] = 1e-42f;   /* denormal */
    params[2] = -FLT_MAX; /* extremes survive; NaN is refused on read (test_checkpoint_nan_weights) */
    memset(back, 0, table.total * sizeof *back);

    /* a config longer than HDF5's 64 KiB compact attribute limit */
    size_t config_len = 100000;
    char *config = malloc(config_len + 1);
    for (size_t i = 0; i < config_len; i++)
        config[i] = (char)('a' + i % 26);
    memcpy(config, "[model]\npreset = tiny\n", 22);
    config[config_len] = '\0';
    int64_t step = 1234567890123LL;

    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_model_file_write(path, &table, params, config, step, &err), 0);
    CU_ASSERT(!dir_has_tmp(&td));
    CU_ASSERT_EQUAL(dir_count(&td), 1);

    char *config_back = NULL;
    int64_t step_back = 0;
    CU_ASSERT_EQUAL_FATAL(rt_model_file_read_meta(path, &config_back, &step_back, &err), 0);
    CU_ASSERT_EQUAL(step_back, step);
    CU_ASSERT_PTR_NOT_NULL_FATAL(config_back);
    CU_ASSERT_STRING_EQUAL(config_back, config);
    free(config_back);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, &step_back, &err), 0);

    CU_ASSERT_EQUAL_FATAL(rt_model_file_read_params(path, &table, back, &err), 0);
    CU_ASSERT(memcmp(params, back, table.total * sizeof *params) == 0);

    /* the file is what checkpoint.h documents: attributes and a chunked, checksummed /model/wte */
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    CU_ASSERT_FATAL(file >= 0);
    hid_t dset = H5Dopen2(file, "/model/big", H5P_DEFAULT);
    hid_t dcpl = H5Dget_create_plist(dset);
    CU_ASSERT(H5Pget_layout(dcpl) == H5D_CHUNKED);
    hsize_t chunk[2] = {0, 0};
    H5Pget_chunk(dcpl, 2, chunk);
    CU_ASSERT(chunk[0] * chunk[1] * 4 <= (hsize_t)4 << 20);
    CU_ASSERT(chunk[0] >= 1 && chunk[1] == 1000);
    int has_fletcher = 0;
    for (int f = 0; f < H5Pget_nfilters(dcpl); f++) {
        unsigned flags = 0;
        size_t n_values = 0;
        has_fletcher |=
            H5Pget_filter2(dcpl, (unsigned)f, &flags, &n_values, NULL, 0, NULL, NULL) == H5Z_FILTER_FLETCHER32;
    }
    CU_ASSERT(has_fletcher);
    H5Pclose(dcpl);
    H5Dclose(dset);
    hid_t attr = H5Aopen(file, "version", H5P_DEFAULT);
    int version = 0;
    H5Aread(attr, H5T_NATIVE_INT, &version);
    CU_ASSERT_EQUAL(version, 2); /* the version checkpoint.h documents */
    H5Aclose(attr);
    H5Fclose(file);

    /* overwriting an existing checkpoint goes through the tmp file too */
    CU_ASSERT_EQUAL(rt_model_file_write(path, &table, params, "", 6, &err), 0);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, &config_back, &step_back, &err), 0);
    CU_ASSERT_EQUAL(step_back, 6);
    CU_ASSERT_STRING_EQUAL(config_back, "");
    free(config_back);
    CU_ASSERT_EQUAL(dir_count(&td), 1);

    free(config);
    free(params);
    free(back);
    rt_view_table_free(&table);
    dir_remove(&td);
}

static void test_checkpoint_errors(void) {
    test_dir td;
    dir_make(&td);
    char path[256], other[256];
    dir_path(&td, "ckpt.h5", path);
    rt_view_table table, wider;
    make_table(&table, 8);
    make_table(&wider, 9);
    rt_view_table_add(&wider, "extra", 1, (size_t[]){3}, 0);
    float *params = calloc(wider.total, sizeof *params);
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_model_file_write(path, &table, params, "cfg", 1, &err), 0);

    /* shape mismatch names the tensor and both shapes */
    CU_ASSERT_EQUAL(rt_model_file_read_params(path, &wider, params, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "wte");
    ASSERT_MSG_HAS(err, "expected shape (10, 9), found (10, 8)");
    /* a tensor the file does not hold */
    rt_view_table only_extra;
    rt_view_table_init(&only_extra);
    rt_view_table_add(&only_extra, "extra", 1, (size_t[]){3}, 0);
    rt_view_table_add(&only_extra, "blocks/9/x", 1, (size_t[]){3}, 0);
    CU_ASSERT_EQUAL(rt_model_file_read_params(path, &only_extra, params, &err), -1);
    ASSERT_MSG_HAS(err, "tensor extra missing");
    rt_view_table_free(&only_extra);

    /* a corrupted byte in the data fails the Fletcher32 check */
    rt_view_table probe;
    rt_view_table_init(&probe);
    rt_view_table_add(&probe, "probe", 1, (size_t[]){4}, 0);
    float probe_values[4] = {1234.5f, -9876.25f, 3.125f, 42.0f};
    CU_ASSERT_EQUAL_FATAL(rt_model_file_write(path, &probe, probe_values, "", 0, &err), 0);
    size_t bytes = 0;
    unsigned char *raw = read_raw(path, &bytes);
    unsigned char *hit = memmem(raw, bytes, probe_values, sizeof probe_values);
    CU_ASSERT_PTR_NOT_NULL_FATAL(hit);
    hit[5] ^= 0x10;
    write_raw(path, raw, bytes);
    free(raw);
    float probe_back[4];
    CU_ASSERT_EQUAL(rt_model_file_read_params(path, &probe, probe_back, &err), -1);
    ASSERT_MSG_HAS(err, "/model/probe");
    ASSERT_MSG_HAS(err, "checksum");
    rt_view_table_free(&probe);

    /* not an HDF5 file; missing; an HDF5 file that is not a checkpoint */
    dir_path(&td, "not.h5", other);
    write_raw(other, "this is plain text, not HDF5\n", 29);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(other, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, other);
    ASSERT_MSG_HAS(err, "not an HDF5 file");
    CU_ASSERT_EQUAL(rt_model_file_read_params(other, &table, params, &err), -1);
    ASSERT_MSG_HAS(err, "not an HDF5 file");
    unlink(other);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(other, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "No such file");
    hid_t file = H5Fcreate(other, H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
    H5Fclose(file);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(other, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "not a ringtrain checkpoint");
    unlink(other);

    /* a write that cannot create its file: error names path and operation, nothing left */
    dir_path(&td, "nodir/ckpt.h5", other);
    CU_ASSERT_EQUAL(rt_model_file_write(other, &table, params, "cfg", 1, &err), -1);
    ASSERT_MSG_HAS(err, other);
    ASSERT_MSG_HAS(err, "cannot create"); /* HDF5 builds the file in memory; ringtrain creates PATH.tmp */
    /* a write that fails half way (two views with the same name): tmp removed, old file kept */
    rt_view_table dup;
    rt_view_table_init(&dup);
    rt_view_table_add(&dup, "same", 1, (size_t[]){2}, 0);
    rt_view_table_add(&dup, "same", 1, (size_t[]){2}, 0);
    CU_ASSERT_EQUAL(rt_model_file_write(path, &dup, params, "cfg", 2, &err), -1);
    ASSERT_MSG_HAS(err, "/model/same");
    rt_view_table_free(&dup);
    CU_ASSERT(!dir_has_tmp(&td));
    CU_ASSERT_EQUAL(dir_count(&td), 1);
    int64_t step = -1;
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, &step, &err), 0);
    CU_ASSERT_EQUAL(step, 0);

    free(params);
    rt_view_table_free(&table);
    rt_view_table_free(&wider);
    dir_remove(&td);
}

/* ---- untrusted input: each class of bad file the fuzzers and the sanitizer runs found ---- */

/* A checkpoint of a small table, then attribute attr rewritten with the given type and 3-element or scalar
 * dataspace. */
static void write_checkpoint_with_attr(const char *path, const rt_view_table *table, const float *params,
                                       const char *attr, hid_t type, int array, const void *value) {
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_model_file_write(path, table, params, "[model]\npreset = tiny\n", 1, &err), 0);
    hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
    hsize_t dims[1] = {3};
    hid_t space = array ? H5Screate_simple(1, dims, NULL) : H5Screate(H5S_SCALAR);
    CU_ASSERT_FATAL(file >= 0 && space >= 0);
    CU_ASSERT(H5Adelete(file, attr) >= 0);
    hid_t id = H5Acreate2(file, attr, type, space, H5P_DEFAULT, H5P_DEFAULT);
    CU_ASSERT_FATAL(id >= 0);
    CU_ASSERT(H5Awrite(id, type, value) >= 0);
    H5Aclose(id);
    H5Sclose(space);
    H5Fclose(file);
}

static void test_checkpoint_attribute_checks(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "model.h5", path);
    rt_view_table table;
    make_table(&table, 4);
    float *params = calloc(table.total, sizeof *params);
    rt_error err = {{0}};

    /* 'format' as an array of strings: H5Aread would write three strings into a buffer for one */
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, sizeof RT_CHECKPOINT_FORMAT);
    char formats[3][sizeof RT_CHECKPOINT_FORMAT] = {RT_CHECKPOINT_FORMAT, RT_CHECKPOINT_FORMAT, RT_CHECKPOINT_FORMAT};
    write_checkpoint_with_attr(path, &table, params, "format", str, 1, formats);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "attribute 'format': expected a single value, found an array of 3 values");
    CU_ASSERT_EQUAL(rt_model_file_read_params(path, &table, params, &err), -1);
    ASSERT_MSG_HAS(err, "'format'");
    H5Tclose(str);

    /* 'version' as an array of integers: H5Aread would write 3 int64s into one */
    int32_t versions[3] = {1, 1, 1};
    write_checkpoint_with_attr(path, &table, params, "version", H5T_NATIVE_INT32, 1, versions);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "attribute 'version': expected a single value, found an array of 3 values");

    /* 'version' as a string, 'format' as an integer, 'step' negative */
    hid_t vlen = H5Tcopy(H5T_C_S1);
    H5Tset_size(vlen, H5T_VARIABLE);
    const char *one = "1";
    write_checkpoint_with_attr(path, &table, params, "version", vlen, 0, &one);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "attribute 'version': expected an integer, found a string");
    int32_t number = 1;
    write_checkpoint_with_attr(path, &table, params, "format", H5T_NATIVE_INT32, 0, &number);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "attribute 'format': expected a string, found an integer");
    int64_t negative = -5;
    write_checkpoint_with_attr(path, &table, params, "step", H5T_NATIVE_INT64, 0, &negative);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "attribute 'step' is -5, expected >= 0");
    /* a variable-length 'config' (what h5py writes) still reads */
    const char *text = "[model]\npreset = small\n";
    write_checkpoint_with_attr(path, &table, params, "config", vlen, 0, &text);
    char *config = NULL;
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, &config, NULL, &err), 0);
    CU_ASSERT(config && strcmp(config, text) == 0);
    free(config);
    H5Tclose(vlen);

    /* every id the reader opened is closed again, on the error paths too */
    CU_ASSERT_EQUAL(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    free(params);
    rt_view_table_free(&table);
    dir_remove(&td);
}

static void test_checkpoint_nan_weights_and_count(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "model.h5", path);
    rt_view_table table;
    make_table(&table, 4);
    float *params = calloc(table.total, sizeof *params), *back = calloc(table.total, sizeof *back);
    rt_error err = {{0}};
    const rt_named_view *last = &table.views[table.count - 1];
    params[last->offset + 1] = NAN;
    CU_ASSERT_EQUAL_FATAL(rt_model_file_write(path, &table, params, "cfg", 1, &err), 0);
    CU_ASSERT_EQUAL(rt_model_file_read_params(path, &table, back, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, last->name);
    ASSERT_MSG_HAS(err, "element 1 is nan, expected a finite weight");
    /* the element count of /model, what sample compares with its config before allocating */
    size_t count = 0;
    CU_ASSERT_EQUAL(rt_model_file_count_params(path, &count, &err), 0);
    CU_ASSERT_EQUAL(count, table.total);
    CU_ASSERT_EQUAL(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    free(params);
    free(back);
    rt_view_table_free(&table);
    dir_remove(&td);
}

static void test_llmc_header_against_file_size(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "model.bin", path);
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(&small_header, sizes);
    for (int t = 0; t < RT_LLMC_N_TENSORS; t++)
        total += sizes[t];
    float *params = calloc(total, sizeof *params);
    rt_error err = {{0}};
    rt_llmc_header hdr;
    CU_ASSERT_EQUAL_FATAL(rt_llmc_write(path, &small_header, params, &err), 0);
    size_t bytes = 0;
    unsigned char *raw = read_raw(path, &bytes);

    /* channels 1048576 in a small file: refused from its size, nothing allocated (was "96 TiB") */
    int32_t huge = 1 << 20, original = 0;
    memcpy(&original, raw + 6 * 4, 4);
    memcpy(raw + 6 * 4, &huge, 4);
    write_raw(path, raw, bytes);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "channels 1048576");
    ASSERT_MSG_HAS(err, "truncated: expected");
    memcpy(raw + 6 * 4, &original, 4);
    /* max_seq_len 1048576 (was a 9.8 GB allocation in sample before "truncated") */
    memcpy(raw + 2 * 4, &huge, 4);
    write_raw(path, raw, bytes);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "max_seq_len 1048576");
    /* dimensions whose parameter count does not even fit size_t */
    int32_t big = INT32_MAX / 4 - 1; /* even: divisible by num_heads 2 */
    memcpy(raw + 2 * 4, &big, 4);
    memcpy(raw + 4 * 4, &big, 4);
    memcpy(raw + 6 * 4, &big, 4);
    write_raw(path, raw, bytes);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "channels 536870910");
    ASSERT_MSG_HAS(err, "more than any file can hold");
    /* a padded file: the header does not describe it */
    CU_ASSERT_EQUAL_FATAL(rt_llmc_write(path, &small_header, params, &err), 0);
    CU_ASSERT_EQUAL(truncate(path, (off_t)(1024 + total * sizeof(float) + 8)), 0);
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "too long");

    /* a NaN weight is refused, naming the tensor */
    params[sizes[0] + 2] = NAN; /* wpe */
    CU_ASSERT_EQUAL_FATAL(rt_llmc_write(path, &small_header, params, &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_llmc_read_header(path, &hdr, &err), 0);
    CU_ASSERT_EQUAL(rt_llmc_read_params(path, &hdr, params, &err), -1);
    ASSERT_MSG_HAS(err, "tensor wpe element 2 is nan, expected a finite weight");
    free(raw);
    free(params);
    dir_remove(&td);
}

/* A FIFO given as any input is refused at once, never waited on (the alarm fails the test if it blocks). */
static void test_fifo_inputs_refused(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "input.fifo", path);
    CU_ASSERT_EQUAL_FATAL(mkfifo(path, 0600), 0);
    alarm(20);
    rt_error err = {{0}};
    rt_token_file tf;
    CU_ASSERT_EQUAL(rt_tokens_open(&tf, path, &err), -1);
    ASSERT_MSG_HAS(err, path);
    ASSERT_MSG_HAS(err, "not a regular file");
    rt_llmc_header hdr;
    CU_ASSERT_EQUAL(rt_llmc_read_header(path, &hdr, &err), -1);
    ASSERT_MSG_HAS(err, "not a regular file");
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "not a regular file");
    rt_view_table table;
    make_table(&table, 4);
    float *params = calloc(table.total, sizeof *params);
    CU_ASSERT_EQUAL(rt_model_file_read_params(path, &table, params, &err), -1);
    ASSERT_MSG_HAS(err, "not a regular file");
    free(params);
    rt_view_table_free(&table);
    alarm(0);
    dir_remove(&td);
}

int main(void) {
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL); /* the test's own direct HDF5 calls stay quiet too */
    test_case cases[] = {
        {"tokens_roundtrip_u16", test_tokens_roundtrip_u16},
        {"tokens_roundtrip_u32", test_tokens_roundtrip_u32},
        {"tokens_llmc_shard", test_tokens_llmc_shard},
        {"tokens_open_errors", test_tokens_open_errors},
        {"tokens_write_failure", test_tokens_write_failure},
        {"byte_decode", test_byte_decode},
        {"loader_values_and_positions", test_loader_values_and_positions},
        {"loader_zigzag_ranks", test_loader_zigzag_ranks},
        {"loader_dp_slices", test_loader_dp_slices},
        {"loader_seed_and_epochs", test_loader_seed_and_epochs},
        {"loader_errors", test_loader_errors},
        {"llmc_model_roundtrip", test_llmc_model_roundtrip},
        {"llmc_model_errors", test_llmc_model_errors},
        {"prepare_text", test_prepare_text},
        {"prepare_errors", test_prepare_errors},
        {"prepare_llmc", test_prepare_llmc},
        {"checkpoint_roundtrip", test_checkpoint_roundtrip},
        {"checkpoint_errors", test_checkpoint_errors},
        {"checkpoint_attribute_checks", test_checkpoint_attribute_checks},
        {"checkpoint_nan_weights_and_count", test_checkpoint_nan_weights_and_count},
        {"llmc_header_against_file_size", test_llmc_header_against_file_size},
        {"fifo_inputs_refused", test_fifo_inputs_refused},
    };
    return test_run_suite("test_io", cases, (int)(sizeof cases / sizeof cases[0]));
}
