/* test_llmc_model.c: llm.c GPT-2 model files (io/llmc_model.h): the documented tensor sizes and names, the
 * header fields at their places, the write/read round trip, and every refusal (magic, version, shapes, a file
 * shorter or longer than its header says, dimensions past the file's size, NaN weights), the message naming
 * the field.
 *
 * Every test works in its own mkdtemp directory under /tmp and removes it (tests/support/io_files.h). Headers
 * are patched by hand at their documented offsets.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/llmc_model.h"
#include "tests/support/io_files.h"
#include "tests/support/testing.h"

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

/* ---- untrusted input: each class of bad file the fuzzers and the sanitizer runs found ---- */

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

int main(void) {
    test_case cases[] = {
        {"llmc_model_roundtrip", test_llmc_model_roundtrip},
        {"llmc_model_errors", test_llmc_model_errors},
        {"llmc_header_against_file_size", test_llmc_header_against_file_size},
    };
    return test_run_suite("test_llmc_model", cases, (int)(sizeof cases / sizeof cases[0]));
}
