/* test_prepare.c: prepare (io/prepare.h): text files to byte tokens (newlines between files, the validation
 * split), llm.c shards to ringtrain token files, and the refusals, which leave no output behind.
 *
 * Every test works in its own mkdtemp directory under /tmp and removes it (tests/support/io_files.h); the
 * outputs are read back through io/tokens.h.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/prepare.h"
#include "io/tokens.h"
#include "tests/support/io_files.h"
#include "tests/support/testing.h"

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

int main(void) {
    test_case cases[] = {
        {"prepare_text", test_prepare_text},
        {"prepare_errors", test_prepare_errors},
        {"prepare_llmc", test_prepare_llmc},
    };
    return test_run_suite("test_prepare", cases, (int)(sizeof cases / sizeof cases[0]));
}
