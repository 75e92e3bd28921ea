/* make_corpus.c: writes the fuzzers' seed corpus (small valid files and a few edge cases) under DIR.
 *
 * Usage: make_corpus DIR   (DIR/<target>/<name> for target tokens, llmc_model, config, checkpoint, safetensors)
 * The files are checked in under tests/fuzz/corpus; rerun this after a format change.
 */
#include <errno.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz_views.h"
#include "io/llmc_model.h"
#include "io/model_file.h"
#include "io/safetensors.h"
#include "io/tokens.h"

static const char *out_dir;

static const char *corpus_path(const char *target, const char *name) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", out_dir, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        perror(path);
        exit(1);
    }
    snprintf(path, sizeof path, "%s/%s/%s", out_dir, target, name);
    return path;
}

static void write_bytes(const char *target, const char *name, const void *bytes, size_t n) {
    const char *path = corpus_path(target, name);
    FILE *file = fopen(path, "wb");
    if (!file || fwrite(bytes, 1, n, file) != n || fclose(file) != 0) {
        perror(path);
        exit(1);
    }
}

static void check(int rc, const rt_error *err) {
    if (rc != 0) {
        fprintf(stderr, "make_corpus: %s\n", err->msg);
        exit(1);
    }
}

/* ---- token files ---- */

static void tokens(void) {
    rt_error err;
    uint32_t ids[64];
    for (int i = 0; i < 64; i++)
        ids[i] = (uint32_t)(i * 7 % 256);
    check(rt_tokens_write(corpus_path("tokens", "u16.tok"), ids, 64, 256, &err), &err);
    for (int i = 0; i < 64; i++)
        ids[i] = (uint32_t)(i * 1031 % 70000);
    check(rt_tokens_write(corpus_path("tokens", "u32.tok"), ids, 64, 70000, &err), &err);
    check(rt_tokens_write(corpus_path("tokens", "empty.tok"), ids, 0, 256, &err), &err);

    /* llm.c shard: int32[256] header (magic, version 1, n_tokens), uint16 tokens */
    unsigned char shard[1024 + 2 * 32] = {0};
    int32_t header[256] = {RT_LLMC_SHARD_MAGIC, 1, 32};
    memcpy(shard, header, sizeof header);
    for (int i = 0; i < 32; i++) {
        uint16_t id = (uint16_t)(i * 1571 % 50257);
        memcpy(shard + 1024 + 2 * i, &id, 2);
    }
    write_bytes("tokens", "shard.bin", shard, sizeof shard);
    /* a token at the vocabulary's edge, and one past it */
    uint16_t edge = 50256, past = 50257;
    memcpy(shard + 1024, &edge, 2);
    write_bytes("tokens", "shard_edge.bin", shard, sizeof shard);
    memcpy(shard + 1024, &past, 2);
    write_bytes("tokens", "shard_bad_token.bin", shard, sizeof shard);
    /* header claiming more tokens than the file holds */
    header[2] = 1 << 30;
    memcpy(shard, header, sizeof header);
    write_bytes("tokens", "shard_truncated.bin", shard, sizeof shard);
}

/* ---- llm.c model files ---- */

static void llmc_model(void) {
    rt_error err;
    const rt_llmc_header hdr = {
        .max_seq_len = 4, .vocab_size = 6, .n_layers = 1, .n_heads = 2, .channels = 4, .padded_vocab_size = 8};
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(&hdr, sizes);
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++)
        total += sizes[i];
    float *params = malloc(total * sizeof *params);
    for (size_t i = 0; i < total; i++)
        params[i] = (float)((int)(i % 17) - 8) / 16.0f;
    const char *path = corpus_path("llmc_model", "tiny.bin");
    check(rt_llmc_write(path, &hdr, params, &err), &err);

    /* the same bytes with edits: the header claiming d_model 1048576, a NaN weight */
    size_t bytes = 1024 + total * sizeof(float);
    unsigned char *raw = malloc(bytes);
    FILE *file = fopen(path, "rb");
    if (!file || fread(raw, 1, bytes, file) != bytes) exit(1);
    fclose(file);
    int32_t huge = 1 << 20;
    memcpy(raw + 6 * 4, &huge, 4);
    write_bytes("llmc_model", "huge_channels.bin", raw, bytes);
    int32_t channels = 4;
    memcpy(raw + 6 * 4, &channels, 4);
    memcpy(raw + 2 * 4, &huge, 4); /* max_seq_len */
    write_bytes("llmc_model", "huge_seq_len.bin", raw, bytes);
    int32_t seq_len = 4;
    memcpy(raw + 2 * 4, &seq_len, 4);
    float nan = NAN;
    memcpy(raw + 1024 + 5 * sizeof(float), &nan, sizeof nan);
    write_bytes("llmc_model", "nan_weight.bin", raw, bytes);
    free(raw);
    free(params);
}

/* ---- config text ---- */

static void config(void) {
    static const char valid[] = "[model]\npreset = tiny\nn_layers = 2\n\n[train]\nsteps = 5\nseq_len = 64\nlr = 3e-4\n"
                                "\n[data]\ntrain = data/train.tok\n";
    static const char gpt2[] = "[model]\nfamily = gpt2\nd_model = 96\nn_heads = 4\nvocab_size = 50257\n"
                               "max_seq_len = 256\ndropout = 0.1\n[parallel]\nsp = 2\n[device]\nmemory_limit = 4G\n";
    static const char huge_vocab[] = "[model]\nvocab_size = 2147483600\n";
    static const char bad_heads[] = "[model]\nd_model = 64\nn_heads = 3\n";
    static const char overrides[] = "train.lr=1e-3\nmodel.n_layers=3\nzero.stage=1\nrun.dir=runs/x\n";
    write_bytes("config", "valid.ini", valid, sizeof valid - 1);
    write_bytes("config", "gpt2.ini", gpt2, sizeof gpt2 - 1);
    write_bytes("config", "huge_vocab.ini", huge_vocab, sizeof huge_vocab - 1);
    write_bytes("config", "bad_heads.ini", bad_heads, sizeof bad_heads - 1);
    write_bytes("config", "overrides.txt", overrides, sizeof overrides - 1);
}

/* ---- HDF5 model files ---- */

/* A checkpoint of the fuzz table, then an attribute replaced by hand (name, type, dims; NULL = none).
 * nan_at >= 0 puts a NaN weight there. */
static void checkpoint_with(const char *name, const char *config_text, const char *attr, hid_t type, int ndim,
                            const void *value, int nan_at) {
    rt_view_table table;
    fuzz_views_make(&table);
    float *params = malloc(table.total * sizeof *params);
    for (size_t i = 0; i < table.total; i++)
        params[i] = (float)i / 8.0f;
    if (nan_at >= 0) params[nan_at] = NAN;
    rt_error err;
    const char *path = corpus_path("checkpoint", name);
    check(rt_model_file_write(path, &table, params, config_text, 3, &err), &err);
    if (attr) {
        hid_t file = H5Fopen(path, H5F_ACC_RDWR, H5P_DEFAULT);
        hsize_t dims[1] = {3};
        hid_t space = ndim ? H5Screate_simple(1, dims, NULL) : H5Screate(H5S_SCALAR);
        H5Adelete(file, attr);
        hid_t id = H5Acreate2(file, attr, type, space, H5P_DEFAULT, H5P_DEFAULT);
        if (file < 0 || id < 0 || H5Awrite(id, type, value) < 0) {
            fprintf(stderr, "make_corpus: cannot rewrite attribute %s of %s\n", attr, path);
            exit(1);
        }
        H5Aclose(id);
        H5Sclose(space);
        H5Fclose(file);
    }
    rt_view_table_free(&table);
    free(params);
}

static void checkpoint(void) {
    static const char config_text[] = "[model]\npreset = tiny\nd_model = 8\nn_heads = 2\nn_kv_heads = 2\n"
                                      "vocab_size = 16\npadded_vocab = 16\nn_layers = 1\n[train]\nseq_len = 16\n";
    checkpoint_with("valid.h5", config_text, NULL, -1, 0, NULL, -1);
    checkpoint_with("nan_weight.h5", config_text, NULL, -1, 0, NULL, 130);
    /* format as an array of three strings (overflowed H5Aread's one-string buffer) */
    hid_t str = H5Tcopy(H5T_C_S1);
    H5Tset_size(str, sizeof RT_CHECKPOINT_FORMAT);
    char formats[3][sizeof RT_CHECKPOINT_FORMAT] = {RT_CHECKPOINT_FORMAT, RT_CHECKPOINT_FORMAT, RT_CHECKPOINT_FORMAT};
    checkpoint_with("format_array.h5", config_text, "format", str, 1, formats, -1);
    H5Tclose(str);
    int32_t versions[3] = {1, 1, 1};
    checkpoint_with("version_array.h5", config_text, "version", H5T_NATIVE_INT32, 1, versions, -1);
    /* a variable-length config string (what h5py writes), and a stored config with heads not dividing d_model */
    hid_t vlen = H5Tcopy(H5T_C_S1);
    H5Tset_size(vlen, H5T_VARIABLE);
    const char *vlen_config = config_text;
    checkpoint_with("config_vlen.h5", config_text, "config", vlen, 0, &vlen_config, -1);
    const char *bad_heads = "[model]\nd_model = 8\nn_heads = 3\n";
    checkpoint_with("config_bad_heads.h5", config_text, "config", vlen, 0, &bad_heads, -1);
    H5Tclose(vlen);
}

/* ---- safetensors ---- */

static void safetensors(void) {
    rt_error err;
    rt_st_decl decls[] = {{"wte", RT_ST_BF16, 2, {4, 3}},
                          {"ln.w", RT_ST_F32, 1, {3}},
                          {"empty", RT_ST_F16, 2, {0, 2}},
                          {"h", RT_ST_F16, 0, {0}}};
    const char *meta[][2] = {{"format", "pt"}};
    float values[16];
    for (int i = 0; i < 16; i++)
        values[i] = (float)(i - 7) * 0.375f;
    rt_st_writer *w = rt_st_writer_open(corpus_path("safetensors", "valid.safetensors"), decls, 4, meta, 1, &err);
    if (!w) check(-1, &err);
    check(rt_st_writer_put(w, values, 16, &err), &err);
    check(rt_st_writer_finish(w, &err), &err);

    /* hand-built edge cases: a NaN stored in BF16, a dtype the reader refuses, offsets with a gap */
    const char *cases[][2] = {
        {"nan.safetensors", "{\"x\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[0,4]}}"},
        {"i64.safetensors", "{\"x\":{\"dtype\":\"I64\",\"shape\":[1],\"data_offsets\":[0,4]}}"},
        {"gap.safetensors", "{\"x\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}"},
    };
    for (size_t c = 0; c < sizeof cases / sizeof cases[0]; c++) {
        unsigned char file[256] = {0};
        size_t n = strlen(cases[c][1]);
        file[0] = (unsigned char)n;
        memcpy(file + 8, cases[c][1], n);
        const unsigned char data[4] = {0x80, 0x3f, 0xc0, 0x7f}; /* bf16 1.0, NaN */
        memcpy(file + 8 + n, data, 4);
        write_bytes("safetensors", cases[c][0], file, 8 + n + 4);
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: make_corpus DIR\n");
        return 2;
    }
    out_dir = argv[1];
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) {
        perror(out_dir);
        return 1;
    }
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    tokens();
    llmc_model();
    config();
    checkpoint();
    safetensors();
    return 0;
}
