/*
 * test_export.c: writing llm.c GPT-2 files (rt_model_save_llmc, rt_export_llmc).
 *  - layout: the file is llm.c's, checked against this file's own spelling of train_gpt2.c's order (the
 *    header, then wte, wpe, ln1w ... lnfb, each per-layer tensor stacked over L), every value bit for bit
 *    against the model's named views, so a swapped or misplaced tensor fails here even though the
 *    importer shares the exporter's mapping;
 *  - round trip: the file read back by the existing llm.c reader into a second model gives the same
 *    parameters bit for bit, and so does the export of a model.h5 (rt_export_llmc);
 *  - refusals: llama, d_ff != 4 * d_model, norm_eps != 1e-5, a missing directory: -1, one message, no file
 *    and no .tmp left;
 *  - and, for the reader beside the exporter (`ringtrain inspect`, runtime/app/inspect.c): no HDF5 file or object
 *    is left open after a good file or after a flipped byte in a chunk, which it reports naming the dataset
 *    (tests/e2e/checkpoint_tools.py checks its output against h5py).
 */
#include <hdf5.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/llmc_model.h"
#include "runtime/app/inspect.h"
#include "runtime/backend/registry.h"
#include "runtime/model/model.h"
#include "runtime/model/model_io.h"
#include "tests/support/testing.h"

/* gpt2: L = 3, C = 16, H = 4, V = 50 (padded to 64), maxT = 32; extra model keys after them. train.seq_len
 * must fit maxT. */
static const char *gpt2_config(const char *extra_model_keys) {
    static char text[512];
    snprintf(text, sizeof text,
             "[model]\nfamily = gpt2\nn_layers = 3\nd_model = 16\nn_heads = 4\nvocab_size = 50\n"
             "padded_vocab = 64\nmax_seq_len = 32\n%s[train]\nseq_len = 32\n",
             extra_model_keys);
    return text;
}

typedef struct {
    rt_device_memory mem;
    rt_model model;
} model_fixture;

static rt_config config_from_text(const char *text) {
    rt_config cfg;
    rt_error err;
    rt_config_defaults(&cfg);
    int rc = rt_config_load_text(&cfg, text, "test", &err);
    if (rc) fprintf(stderr, "\n  config: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    return cfg;
}

/* A model of cfg's shape with every parameter (padded vocabulary rows too) random and distinct. */
static void fixture_init(model_fixture *f, const rt_config *cfg, uint64_t seed) {
    rt_error err;
    rt_model_shape shape = rt_model_shape_from_config(cfg);
    rt_device_memory_init(&f->mem, rt_backend_cpu(), 0);
    int rc = rt_model_init(&f->model, &shape, rt_backend_cpu(), &f->mem,
                           &(rt_model_options){.mode = RT_ACT_RECOMPUTE, .max_seqs = 1, .max_local_len = 4}, &err);
    CU_ASSERT_FATAL(rc == 0);
    test_fill_uniform(f->model.params, f->model.table.total, -1.0f, 1.0f, seed);
}

static void fixture_free(model_fixture *f) {
    rt_model_free(&f->model);
    rt_device_memory_destroy(&f->mem);
}

static void make_dir(char *dir) { CU_ASSERT_FATAL(mkdtemp(dir) != NULL); }

static int exists(const char *path) { return access(path, F_OK) == 0; }

/* llm.c's train_gpt2.c parameter order, spelled here apart from runtime/model/model_io.c: its name, our view name
 * (per layer: after "layers.<l>."), and its element count per layer (or whole). */
typedef struct {
    const char *llmc, *view;
    int per_layer;
} llmc_tensor;
static const llmc_tensor llmc_order[16] = {
    {"wte", "wte", 0},
    {"wpe", "wpe", 0},
    {"ln1w", "norm1.weight", 1},
    {"ln1b", "norm1.bias", 1},
    {"qkvw", "attn.qkv.weight", 1},
    {"qkvb", "attn.qkv.bias", 1},
    {"attprojw", "attn.proj.weight", 1},
    {"attprojb", "attn.proj.bias", 1},
    {"ln2w", "norm2.weight", 1},
    {"ln2b", "norm2.bias", 1},
    {"fcw", "mlp.fc.weight", 1},
    {"fcb", "mlp.fc.bias", 1},
    {"fcprojw", "mlp.proj.weight", 1},
    {"fcprojb", "mlp.proj.bias", 1},
    {"lnfw", "norm_f.weight", 0},
    {"lnfb", "norm_f.bias", 0},
};

/* Elements of llm.c tensor t for one layer (or whole), from train_gpt2.c's fill_in_parameter_sizes. */
static size_t llmc_elems(int t, size_t Vp, size_t maxT, size_t C) {
    const size_t per[16] = {Vp * C, maxT * C, C,         C,     3 * C * C, 3 * C, C * C, C,
                            C,      C,        4 * C * C, 4 * C, 4 * C * C, C,     C,     C};
    return per[t];
}

/* Reads the int32[256] header and the fp32 parameters of an llm.c file by hand. */
static float *read_raw(const char *path, int32_t header[256], size_t *n_floats) {
    FILE *file = fopen(path, "rb");
    CU_ASSERT_FATAL(file != NULL);
    CU_ASSERT_FATAL(fread(header, sizeof(int32_t), 256, file) == 256);
    CU_ASSERT_FATAL(fseek(file, 0, SEEK_END) == 0);
    long bytes = ftell(file) - 256 * (long)sizeof(int32_t);
    CU_ASSERT_FATAL(bytes >= 0 && bytes % (long)sizeof(float) == 0);
    *n_floats = (size_t)bytes / sizeof(float);
    float *values = malloc(*n_floats * sizeof(float) + 1);
    CU_ASSERT_FATAL(fseek(file, 256 * (long)sizeof(int32_t), SEEK_SET) == 0);
    CU_ASSERT_FATAL(fread(values, sizeof(float), *n_floats, file) == *n_floats);
    fclose(file);
    return values;
}

/* The file at path holds m's parameters in llm.c's layout: header fields and every value bit for bit. */
static void assert_llmc_layout(const rt_model *m, const char *path) {
    const rt_model_shape *s = &m->shape;
    int32_t header[256];
    size_t n_floats = 0;
    float *values = read_raw(path, header, &n_floats);
    const int32_t expected_header[8] = {20240326,    3,          s->max_seq_len, s->vocab_size,
                                        s->n_layers, s->n_heads, s->d_model,     s->padded_vocab};
    for (int i = 0; i < 8; i++)
        CU_ASSERT_EQUAL(header[i], expected_header[i]);
    for (int i = 8; i < 256; i++)
        CU_ASSERT_EQUAL(header[i], 0);
    const size_t Vp = (size_t)s->padded_vocab, maxT = (size_t)s->max_seq_len, C = (size_t)s->d_model;
    size_t at = 0;
    for (int t = 0; t < 16; t++) {
        int copies = llmc_order[t].per_layer ? s->n_layers : 1;
        size_t n = llmc_elems(t, Vp, maxT, C);
        for (int l = 0; l < copies; l++) {
            char name[RT_NAME_LEN];
            if (llmc_order[t].per_layer)
                snprintf(name, sizeof name, "layers.%d.%s", l, llmc_order[t].view);
            else
                snprintf(name, sizeof name, "%s", llmc_order[t].view);
            const rt_named_view *v = rt_view_table_find(&m->table, name);
            CU_ASSERT_FATAL(v != NULL);
            CU_ASSERT_FATAL(v->numel == n && at + n <= n_floats);
            int same = memcmp(values + at, m->params + v->offset, n * sizeof(float)) == 0;
            if (!same)
                fprintf(stderr, "\n  llm.c %s (layer %d) at float %zu is not the model's %s\n", llmc_order[t].llmc, l,
                        at, name);
            CU_ASSERT(same);
            at += n;
        }
    }
    CU_ASSERT_EQUAL(at, n_floats); /* nothing after lnfb */
    CU_ASSERT_EQUAL(n_floats, m->table.total);
    free(values);
}

static void test_layout_and_round_trip(void) {
    rt_config cfg = config_from_text(gpt2_config(""));
    model_fixture a, b;
    fixture_init(&a, &cfg, 11);
    fixture_init(&b, &cfg, 22);
    char dir[] = "/tmp/rt_test_export_XXXXXX", path[256];
    make_dir(dir);
    snprintf(path, sizeof path, "%s/gpt2.bin", dir);
    rt_error err;
    int rc = rt_model_save_llmc(&a.model, path, &err);
    if (rc) fprintf(stderr, "\n  export: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    assert_llmc_layout(&a.model, path);
    /* The existing reader, into a model that held other weights: the same bits everywhere. */
    CU_ASSERT_FATAL(memcmp(a.model.params, b.model.params, a.model.table.total * sizeof(float)) != 0);
    rc = rt_model_load_llmc(&b.model, path, &err);
    if (rc) fprintf(stderr, "\n  import: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    CU_ASSERT(memcmp(a.model.params, b.model.params, a.model.table.total * sizeof(float)) == 0);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CU_ASSERT(!exists(tmp));
    unlink(path);
    rmdir(dir);
    fixture_free(&a);
    fixture_free(&b);
}

/* A model.h5 (what a checkpoint's /model is) exported by rt_export_llmc: its config and weights. */
static void test_export_model_file(void) {
    rt_config cfg = config_from_text(gpt2_config(""));
    model_fixture a, b;
    fixture_init(&a, &cfg, 33);
    fixture_init(&b, &cfg, 44);
    char dir[] = "/tmp/rt_test_export_XXXXXX", h5[256], bin[256];
    make_dir(dir);
    snprintf(h5, sizeof h5, "%s/model.h5", dir);
    snprintf(bin, sizeof bin, "%s/out.bin", dir);
    rt_error err;
    char *text = rt_config_to_text(&cfg);
    CU_ASSERT_FATAL(rt_model_save(&a.model, h5, text, 7, &err) == 0);
    free(text);
    rt_config info;
    int rc = rt_export_llmc(h5, bin, &info, &err);
    if (rc) fprintf(stderr, "\n  export: %s\n", err.msg);
    CU_ASSERT_FATAL(rc == 0);
    CU_ASSERT_EQUAL(info.n_layers, 3);
    CU_ASSERT_EQUAL(info.family, RT_FAMILY_GPT2);
    assert_llmc_layout(&a.model, bin);
    CU_ASSERT_FATAL(rt_model_load_llmc(&b.model, bin, &err) == 0);
    CU_ASSERT(memcmp(a.model.params, b.model.params, a.model.table.total * sizeof(float)) == 0);
    /* model.init_from takes the architecture from either file, alike. */
    rt_config from_h5, from_bin;
    rt_config_defaults(&from_h5);
    rt_config_defaults(&from_bin);
    CU_ASSERT_FATAL(rt_config_from_init_file(&from_h5, h5, &err) == 0);
    CU_ASSERT_FATAL(rt_config_from_init_file(&from_bin, bin, &err) == 0);
    rt_model_shape sh = rt_model_shape_from_config(&from_h5), sb = rt_model_shape_from_config(&from_bin);
    CU_ASSERT(sh.family == sb.family && sh.n_layers == sb.n_layers && sh.d_model == sb.d_model &&
              sh.n_heads == sb.n_heads && sh.d_ff == sb.d_ff && sh.vocab_size == sb.vocab_size &&
              sh.padded_vocab == sb.padded_vocab && sh.max_seq_len == sb.max_seq_len);
    /* ... and the same weights. */
    test_fill_uniform(b.model.params, b.model.table.total, -1.0f, 1.0f, 55);
    CU_ASSERT_FATAL(rt_model_load_init_file(&b.model, h5, &err) == 0);
    CU_ASSERT(memcmp(a.model.params, b.model.params, a.model.table.total * sizeof(float)) == 0);
    unlink(bin);
    unlink(h5);
    rmdir(dir);
    fixture_free(&a);
    fixture_free(&b);
}

/* Each refusal: -1, a message with the given words, and neither the file nor its .tmp. */
static void assert_refused(const rt_model *m, const char *path, const char *word1, const char *word2) {
    rt_error err = {{0}};
    CU_ASSERT(rt_model_save_llmc(m, path, &err) == -1);
    int named = strstr(err.msg, word1) != NULL && strstr(err.msg, word2) != NULL;
    if (!named) fprintf(stderr, "\n  expected '%s' and '%s' in: %s\n", word1, word2, err.msg);
    CU_ASSERT(named);
    char tmp[300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CU_ASSERT(!exists(path) && !exists(tmp));
}

static void test_refusals(void) {
    char dir[] = "/tmp/rt_test_export_XXXXXX", path[256], h5[256], missing[300];
    make_dir(dir);
    snprintf(path, sizeof path, "%s/out.bin", dir);
    model_fixture f;
    /* llama (the tiny preset): llm.c's train_gpt2.c has no llama. */
    rt_config llama = config_from_text("[model]\npreset = tiny\n");
    fixture_init(&f, &llama, 1);
    assert_refused(&f.model, path, "llama", "gpt2");
    /* ... also from a model.h5, named in the message. */
    snprintf(h5, sizeof h5, "%s/llama.h5", dir);
    rt_error err = {{0}};
    char *text = rt_config_to_text(&llama);
    CU_ASSERT_FATAL(rt_model_save(&f.model, h5, text, 1, &err) == 0);
    free(text);
    CU_ASSERT(rt_export_llmc(h5, path, NULL, &err) == -1);
    CU_ASSERT(strstr(err.msg, h5) != NULL && strstr(err.msg, "llama") != NULL);
    CU_ASSERT(!exists(path));
    unlink(h5);
    fixture_free(&f);
    /* gpt2 shapes llm.c would run as another model. */
    rt_config ff = config_from_text(gpt2_config("d_ff = 48\n"));
    fixture_init(&f, &ff, 2);
    assert_refused(&f.model, path, "d_ff", "48");
    fixture_free(&f);
    rt_config eps = config_from_text(gpt2_config("norm_eps = 1e-6\n"));
    fixture_init(&f, &eps, 3);
    assert_refused(&f.model, path, "norm_eps", "1e-06");
    fixture_free(&f);
    /* An output that cannot be created: the error names it. */
    rt_config gpt2 = config_from_text(gpt2_config(""));
    fixture_init(&f, &gpt2, 4);
    snprintf(missing, sizeof missing, "%s/nodir/out.bin", dir);
    assert_refused(&f.model, missing, "nodir/out.bin", "cannot create");
    fixture_free(&f);
    rmdir(dir);
}

/* Flips one byte inside the first copy of needle (n bytes) in the file at path; 0 when not found. */
static int flip_inside(const char *path, const void *needle, size_t n) {
    FILE *file = fopen(path, "r+b");
    CU_ASSERT_FATAL(file != NULL);
    fseek(file, 0, SEEK_END);
    size_t bytes = (size_t)ftell(file);
    unsigned char *image = malloc(bytes);
    rewind(file);
    CU_ASSERT_FATAL(fread(image, 1, bytes, file) == bytes);
    int found = 0;
    for (size_t at = 0; !found && at + n <= bytes; at++) {
        if (memcmp(image + at, needle, n) != 0) continue;
        fseek(file, (long)(at + n / 2), SEEK_SET);
        fputc(image[at + n / 2] ^ 0x40, file);
        found = 1;
    }
    fclose(file);
    free(image);
    return found;
}

static void test_inspect_closes_ids(void) {
    rt_config cfg = config_from_text(gpt2_config(""));
    model_fixture f;
    fixture_init(&f, &cfg, 66);
    char dir[] = "/tmp/rt_test_export_XXXXXX", h5[256];
    make_dir(dir);
    snprintf(h5, sizeof h5, "%s/model.h5", dir);
    rt_error err;
    char *text = rt_config_to_text(&cfg);
    CU_ASSERT_FATAL(rt_model_save(&f.model, h5, text, 3, &err) == 0);
    free(text);
    FILE *sink = fopen("/dev/null", "w");
    CU_ASSERT_FATAL(sink != NULL);
    CU_ASSERT(rt_inspect(h5, sink, &err) == 0);
    CU_ASSERT_EQUAL(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    const rt_named_view *wte = rt_view_table_find(&f.model.table, "wte");
    CU_ASSERT_FATAL(flip_inside(h5, f.model.params + wte->offset, 64 * sizeof(float)));
    CU_ASSERT(rt_inspect(h5, sink, &err) == -1);
    int named = strstr(err.msg, h5) && strstr(err.msg, "/model/wte") && strstr(err.msg, "Fletcher32");
    if (!named) fprintf(stderr, "\n  inspect of a flipped byte: %s\n", err.msg);
    CU_ASSERT(named);
    CU_ASSERT_EQUAL(H5Fget_obj_count(H5F_OBJ_ALL, H5F_OBJ_ALL), 0);
    fclose(sink);
    unlink(h5);
    rmdir(dir);
    fixture_free(&f);
}

int main(void) {
    test_case cases[] = {
        {"export writes llm.c's layout; the reader gets the same bits", test_layout_and_round_trip},
        {"a model.h5 exports the same; init_from reads both kinds alike", test_export_model_file},
        {"llama, other d_ff or norm_eps, unwritable paths are refused", test_refusals},
        {"inspect closes every HDF5 id, also after a checksum error", test_inspect_closes_ids},
    };
    return test_run_suite("export", cases, 4);
}
