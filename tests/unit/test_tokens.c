/* test_tokens.c: token files (io/tokens.h): ringtrain's own format at 2 and 4 bytes per token, llm.c shards,
 * every refusal of a bad or short file with the message naming it, atomic writes; and rt_byte_decode.
 *
 * Every test works in its own mkdtemp directory under /tmp and removes it (tests/support/io_files.h). Files are
 * built by hand from their documented layouts (not by the code under test) where the format itself is what is
 * being checked.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/tokens.h"
#include "tests/support/io_files.h"
#include "tests/support/testing.h"

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

int main(void) {
    test_case cases[] = {
        {"tokens_roundtrip_u16", test_tokens_roundtrip_u16}, {"tokens_roundtrip_u32", test_tokens_roundtrip_u32},
        {"tokens_llmc_shard", test_tokens_llmc_shard},       {"tokens_open_errors", test_tokens_open_errors},
        {"tokens_write_failure", test_tokens_write_failure}, {"byte_decode", test_byte_decode},
    };
    return test_run_suite("test_tokens", cases, (int)(sizeof cases / sizeof cases[0]));
}
