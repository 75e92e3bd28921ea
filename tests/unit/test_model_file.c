/* test_model_file.c: the HDF5 model file (io/model_file.h, rt_model_file_*): the round trip (values bit for
 * bit, a config over HDF5's compact attribute limit, chunked and checksummed datasets), shape and name
 * mismatches, corrupted bytes, files that are not checkpoints, failed writes that keep the old file; attributes
 * of the wrong type or shape, NaN weights, the parameter count. fifo_inputs_refused checks every reader of the
 * io layer (token files, llm.c headers, model file meta and params) against a FIFO.
 *
 * Every test works in its own mkdtemp directory under /tmp and removes it (tests/support/io_files.h). Files are
 * inspected and altered with HDF5 directly where the layout itself is what is being checked.
 */
#define _GNU_SOURCE /* memmem */
#include <float.h>
#include <hdf5.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/llmc_model.h"
#include "io/model_file.h"
#include "io/tokens.h"
#include "tests/support/io_files.h"
#include "tests/support/testing.h"

/* The view table of the model file tests: wte (10 x wte_cols), a 1-D and a 3-D tensor. */
static void make_table(rt_view_table *table, size_t wte_cols) {
    rt_view_table_init(table);
    rt_view_table_add(table, "wte", 2, (size_t[]){10, wte_cols}, 1);
    rt_view_table_add(table, "blocks/0/ln1.weight", 1, (size_t[]){8}, 0);
    rt_view_table_add(table, "attn.qkvw", 3, (size_t[]){2, 3, 4}, 1);
}

static void test_model_file_roundtrip(void) {
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
    params[2] = -FLT_MAX; /* extremes survive; NaN is refused on read (model_file_nan_weights_and_count) */
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

    /* the file is what model_file.h documents: attributes and a chunked, checksummed /model/wte */
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
    CU_ASSERT_EQUAL(version, 2); /* the version model_file.h documents */
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

static void test_model_file_errors(void) {
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

static void test_model_file_attribute_checks(void) {
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
    negative = -1; /* the edge: the first value refused */
    write_checkpoint_with_attr(path, &table, params, "step", H5T_NATIVE_INT64, 0, &negative);
    CU_ASSERT_EQUAL(rt_model_file_read_meta(path, NULL, NULL, &err), -1);
    ASSERT_MSG_HAS(err, "attribute 'step' is -1, expected >= 0");
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

static void test_model_file_nan_weights_and_count(void) {
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
        {"model_file_roundtrip", test_model_file_roundtrip},
        {"model_file_errors", test_model_file_errors},
        {"model_file_attribute_checks", test_model_file_attribute_checks},
        {"model_file_nan_weights_and_count", test_model_file_nan_weights_and_count},
        {"fifo_inputs_refused", test_fifo_inputs_refused},
    };
    return test_run_suite("test_model_file", cases, (int)(sizeof cases / sizeof cases[0]));
}
