/*
 * test_config.c: configuration loading, presets, family resolution, validation and the write/load round trip.
 * Every error path is checked for its message: it must name where, the key and the value.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/registry.h"
#include "runtime/config/config.h"
#include "tests/support/testing.h"

static char temp_dir[64];
static int n_temp_files;
static char temp_files[32][128];

/* Writes text to <temp_dir>/name and returns the path (valid until the next call with the same name). */
static const char *write_ini(const char *name, const char *text) {
    static char path[128];
    snprintf(path, sizeof path, "%s/%s", temp_dir, name);
    FILE *file = fopen(path, "w");
    CU_ASSERT_FATAL(file != NULL);
    fputs(text, file);
    fclose(file);
    int known = 0;
    for (int i = 0; i < n_temp_files; i++)
        known |= strcmp(temp_files[i], path) == 0;
    if (!known && n_temp_files < 32) snprintf(temp_files[n_temp_files++], sizeof temp_files[0], "%s", path);
    return path;
}

/* Asserts that msg contains needle, printing both when it does not. */
#define ASSERT_HAS(msg, needle)                                                                                        \
    do {                                                                                                               \
        if (!strstr((msg), (needle))) fprintf(stderr, "\n  message '%s' lacks '%s'\n", (msg), (needle));               \
        CU_ASSERT(strstr((msg), (needle)) != NULL);                                                                    \
    } while (0)

/* Loads text (as a file, or NULL for none) plus overrides on top of defaults; expects failure and returns
 * the message. */
static const char *load_fails(const char *text, const char *const *overrides, int n_overrides) {
    static rt_error err;
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_config before = cfg;
    memset(&err, 0, sizeof err);
    const char *path = text ? write_ini("fail.ini", text) : NULL;
    int rc = rt_config_load(&cfg, path, overrides, n_overrides, &err);
    CU_ASSERT_EQUAL(rc, -1);
    CU_ASSERT(err.msg[0] != '\0');
    CU_ASSERT(memcmp(&cfg, &before, sizeof cfg) == 0); /* a failed load changes nothing */
    return err.msg;
}

static const char *set_fails(const char *override) {
    const char *overrides[] = {override};
    return load_fails(NULL, overrides, 1);
}

/* Defaults with a data file: passes validate. */
static rt_config valid_config(void) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    snprintf(cfg.data_train, sizeof cfg.data_train, "tokens.bin");
    return cfg;
}

static const char *validate_fails(const rt_config *cfg) {
    static rt_error err;
    memset(&err, 0, sizeof err);
    CU_ASSERT_EQUAL(rt_config_validate(cfg, &err), -1);
    return err.msg;
}

static void test_defaults(void) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    CU_ASSERT_STRING_EQUAL(cfg.preset, "tiny");
    CU_ASSERT_EQUAL(cfg.family, RT_FAMILY_LLAMA);
    CU_ASSERT_EQUAL(cfg.n_layers, 2);
    CU_ASSERT_EQUAL(cfg.d_model, 64);
    CU_ASSERT_EQUAL(cfg.n_heads, 4);
    CU_ASSERT_EQUAL(cfg.n_kv_heads, 2);
    CU_ASSERT_EQUAL(cfg.d_ff, 128);
    CU_ASSERT_EQUAL(cfg.vocab_size, 256);
    CU_ASSERT_EQUAL(cfg.max_seq_len, 256);
    CU_ASSERT_EQUAL(cfg.dropout, 0.0f);
    CU_ASSERT_EQUAL(cfg.rope_theta, 10000.0f);
    CU_ASSERT_EQUAL(cfg.norm_eps, 1e-5f);
    CU_ASSERT_STRING_EQUAL(cfg.init_from, "");
    CU_ASSERT_EQUAL(cfg.steps, 100);
    CU_ASSERT_EQUAL(cfg.batch_size, 4);
    CU_ASSERT_EQUAL(cfg.seq_len, 128);
    CU_ASSERT_EQUAL(cfg.grad_accum, 1);
    CU_ASSERT_EQUAL(cfg.lr, 1e-3f);
    CU_ASSERT_EQUAL(cfg.min_lr, 1e-4f);
    CU_ASSERT_EQUAL(cfg.warmup_steps, 10);
    CU_ASSERT_EQUAL(cfg.weight_decay, 0.1f);
    CU_ASSERT_EQUAL(cfg.grad_clip, 1.0f);
    CU_ASSERT_EQUAL(cfg.adam_beta1, 0.9f);
    CU_ASSERT_EQUAL(cfg.adam_beta2, 0.95f);
    CU_ASSERT_EQUAL(cfg.adam_eps, 1e-8f);
    CU_ASSERT_EQUAL(cfg.seed, 1337);
    CU_ASSERT_EQUAL(cfg.val_every, 0);
    CU_ASSERT_EQUAL(cfg.val_steps, 4);
    CU_ASSERT_EQUAL(cfg.log_every, 1);
    CU_ASSERT_STRING_EQUAL(cfg.data_train, "");
    CU_ASSERT_STRING_EQUAL(cfg.data_val, "");
    CU_ASSERT_EQUAL(cfg.val_fraction, 0.05f);
    CU_ASSERT_EQUAL(cfg.sp, 1);
    CU_ASSERT_EQUAL(cfg.dp, 1);
    CU_ASSERT_EQUAL(cfg.zero_stage, 0);
    CU_ASSERT_EQUAL(cfg.activation_mode, RT_ACT_KEEP);
    CU_ASSERT_EQUAL(cfg.mlp_tile_mib, 0);
    CU_ASSERT_EQUAL(cfg.offload_max_inflight, 1);
    CU_ASSERT_EQUAL(cfg.device_kind, RT_DEVICE_CPU);
    CU_ASSERT_EQUAL(cfg.memory_limit, 0);
    CU_ASSERT_STRING_EQUAL(cfg.checkpoint_dir, "");
    CU_ASSERT_EQUAL(cfg.checkpoint_every, 1000);
    CU_ASSERT_EQUAL(cfg.checkpoint_keep, 2);
    CU_ASSERT_STRING_EQUAL(cfg.checkpoint_resume, "none");
    CU_ASSERT_STRING_EQUAL(cfg.run_dir, "runs/latest");
    CU_ASSERT_EQUAL(cfg.explicit_keys, 0);
    CU_ASSERT_STRING_EQUAL(rt_family_name(RT_FAMILY_LLAMA), "llama");
    CU_ASSERT_STRING_EQUAL(rt_family_name(RT_FAMILY_GPT2), "gpt2");

    /* the defaults plus a data file are a valid run */
    cfg = valid_config();
    rt_error err = {{0}};
    CU_ASSERT_EQUAL(rt_config_validate(&cfg, &err), 0);
}

static void test_file_and_overrides(void) {
    const char *path = write_ini("run.ini", "; a comment\n"
                                            "# another\n"
                                            "[model]\n"
                                            "n_layers = 6   ; inline comment\n"
                                            "dropout = 0.1\n"
                                            "init_from = /models/gpt2_124M.bin\n"
                                            "\n"
                                            "[train]\n"
                                            "steps = 500\n"
                                            "lr = 3e-4\n"
                                            "seed = 18446744073709551615\n"
                                            "[data]\n"
                                            "train = data/train.tok\n"
                                            "val =\n"
                                            "[parallel]\n"
                                            "sp = 4\n"
                                            "[zero]\n"
                                            "stage = 2\n"
                                            "[activations]\n"
                                            "mode = offload\n"
                                            "[device]\n"
                                            "kind = CPU\n"
                                            "[checkpoint]\n"
                                            "resume = auto\n"
                                            "[run]\n"
                                            "dir = runs/exp1\n");
    const char *overrides[] = {"train.steps=7", " train.lr = 0.01 ", "offload.max_inflight=3", "run.dir=runs/exp2"};
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err = {{0}};
    int rc = rt_config_load(&cfg, path, overrides, 4, &err);
    if (rc) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(cfg.n_layers, 6);
    CU_ASSERT_EQUAL(cfg.d_model, 64); /* from the default preset */
    CU_ASSERT_EQUAL(cfg.dropout, 0.1f);
    CU_ASSERT_STRING_EQUAL(cfg.init_from, "/models/gpt2_124M.bin");
    CU_ASSERT_EQUAL(cfg.steps, 7); /* --set wins over the file */
    CU_ASSERT_EQUAL(cfg.lr, 0.01f);
    CU_ASSERT_EQUAL(cfg.seed, UINT64_MAX);
    CU_ASSERT_STRING_EQUAL(cfg.data_train, "data/train.tok");
    CU_ASSERT_STRING_EQUAL(cfg.data_val, "");
    CU_ASSERT_EQUAL(cfg.sp, 4);
    CU_ASSERT_EQUAL(cfg.zero_stage, 2);
    CU_ASSERT_EQUAL(cfg.activation_mode, RT_ACT_OFFLOAD);
    CU_ASSERT_EQUAL(cfg.offload_max_inflight, 3);
    CU_ASSERT_EQUAL(cfg.device_kind, RT_DEVICE_CPU);
    CU_ASSERT_STRING_EQUAL(cfg.checkpoint_resume, "auto");
    CU_ASSERT_STRING_EQUAL(cfg.run_dir, "runs/exp2");
    CU_ASSERT_EQUAL(cfg.batch_size, 4); /* untouched keys keep their defaults */
    CU_ASSERT(rt_config_is_explicit(&cfg, "model", "n_layers"));
    CU_ASSERT(!rt_config_is_explicit(&cfg, "model", "d_model"));
    CU_ASSERT(rt_config_is_explicit(&cfg, "offload", "max_inflight"));
    CU_ASSERT(!rt_config_is_explicit(&cfg, "nope", "nope"));

    /* overrides only */
    const char *only[] = {"model.preset=small"};
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL(rt_config_load(&cfg, NULL, only, 1, &err), 0);
    CU_ASSERT_EQUAL(cfg.d_model, 256);

    /* rt_config_set directly */
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL(rt_config_set(&cfg, "train", "batch_size", "16", &err), 0);
    CU_ASSERT_EQUAL(cfg.batch_size, 16);
    CU_ASSERT_EQUAL(rt_config_set(&cfg, "train", "batch_size", "zero", &err), -1);
    ASSERT_HAS(err.msg, "train.batch_size");
    ASSERT_HAS(err.msg, "'zero'");
    CU_ASSERT_EQUAL(cfg.batch_size, 16);
}

static void test_preset_applied_first(void) {
    rt_config cfg;
    rt_error err = {{0}};
    /* the preset comes after an explicit key in the file, yet the key wins */
    const char *path = write_ini("preset.ini", "[model]\nn_layers = 3\npreset = small\n");
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, path, NULL, 0, &err), 0);
    CU_ASSERT_STRING_EQUAL(cfg.preset, "small");
    CU_ASSERT_EQUAL(cfg.n_layers, 3);
    CU_ASSERT_EQUAL(cfg.d_model, 256);
    CU_ASSERT_EQUAL(cfg.n_heads, 8);
    CU_ASSERT_EQUAL(cfg.n_kv_heads, 4);
    CU_ASSERT_EQUAL(cfg.d_ff, 688);
    CU_ASSERT_EQUAL(cfg.max_seq_len, 1024);

    /* a --set preset beats the file's preset; explicit file keys still beat both */
    const char *overrides[] = {"model.preset=gpt2-124m", "model.d_model=1536"};
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, path, overrides, 2, &err), 0);
    CU_ASSERT_STRING_EQUAL(cfg.preset, "gpt2-124m");
    CU_ASSERT_EQUAL(cfg.family, RT_FAMILY_GPT2);
    CU_ASSERT_EQUAL(cfg.n_layers, 3);
    CU_ASSERT_EQUAL(cfg.d_model, 1536);
    CU_ASSERT_EQUAL(cfg.vocab_size, 50257);

    /* rt_config_apply_preset */
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL(rt_config_apply_preset(&cfg, "gpt2-124m", &err), 0);
    CU_ASSERT_EQUAL(cfg.n_layers, 12);
    CU_ASSERT_EQUAL(cfg.d_model, 768);
    CU_ASSERT_EQUAL(cfg.n_heads, 12);
    CU_ASSERT_EQUAL(cfg.n_kv_heads, 12);
    CU_ASSERT_EQUAL(cfg.d_ff, 3072);
    CU_ASSERT_EQUAL(cfg.vocab_size, 50257);
    CU_ASSERT_EQUAL(cfg.max_seq_len, 1024);
    CU_ASSERT_EQUAL(rt_config_apply_preset(&cfg, "gpt5", &err), -1);
    ASSERT_HAS(err.msg, "'gpt5'");
    ASSERT_HAS(err.msg, "tiny, small, gpt2-124m");
}

static void test_gpt2_family_resolution(void) {
    rt_config cfg;
    rt_error err = {{0}};
    /* llama preset switched to gpt2: kv heads follow n_heads, d_ff follows d_model */
    const char *switch_family[] = {"model.family=gpt2", "model.d_model=96"};
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, NULL, switch_family, 2, &err), 0);
    CU_ASSERT_EQUAL(cfg.n_kv_heads, 4);
    CU_ASSERT_EQUAL(cfg.d_ff, 384);

    /* explicit values stay */
    const char *explicit_ff[] = {"model.family=gpt2", "model.d_ff=100"};
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, NULL, explicit_ff, 2, &err), 0);
    CU_ASSERT_EQUAL(cfg.d_ff, 100);
    CU_ASSERT_EQUAL(cfg.n_kv_heads, 4);

    /* gpt2 preset, resized */
    const char *resized[] = {"model.preset=gpt2-124m", "model.d_model=1024", "model.n_heads=16"};
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, NULL, resized, 3, &err), 0);
    CU_ASSERT_EQUAL(cfg.n_kv_heads, 16);
    CU_ASSERT_EQUAL(cfg.d_ff, 4096);

    /* llama keeps its grouped-query heads */
    const char *llama[] = {"model.n_heads=8"};
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, NULL, llama, 1, &err), 0);
    CU_ASSERT_EQUAL(cfg.n_kv_heads, 2);
    CU_ASSERT_EQUAL(cfg.d_ff, 128);
}

static void test_bytes_suffixes(void) {
    static const struct {
        const char *text;
        size_t bytes;
    } cases[] = {{"0", 0},           {"4096", 4096},        {"4K", 4096},
                 {"16M", 16u << 20}, {"4G", 4294967296ull}, {"2GiB", 2ull << 30}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        char text[64];
        snprintf(text, sizeof text, "[device]\nmemory_limit = %s\n", cases[i].text);
        rt_config cfg;
        rt_config_defaults(&cfg);
        rt_error err = {{0}};
        CU_ASSERT_EQUAL(rt_config_load(&cfg, write_ini("bytes.ini", text), NULL, 0, &err), 0);
        CU_ASSERT_EQUAL(cfg.memory_limit, cases[i].bytes);
    }
    const char *msg = load_fails("[device]\nmemory_limit = 4X\n", NULL, 0);
    ASSERT_HAS(msg, "memory_limit");
    ASSERT_HAS(msg, "'4X'");
    ASSERT_HAS(msg, "512M");
    msg = set_fails("device.memory_limit=-1G");
    ASSERT_HAS(msg, "--set device.memory_limit");
}

static void test_write_load_round_trip(void) {
    const char *overrides[] = {"model.preset=small",     "model.family=gpt2",
                               "model.n_layers=5",       "model.d_model=320",
                               "model.n_heads=10",       "model.vocab_size=1000",
                               "model.max_seq_len=512",  "model.dropout=0.125",
                               "model.rope_theta=50000", "model.norm_eps=1e-6",
                               "model.init_from=m.bin",  "train.steps=12",
                               "train.batch_size=6",     "train.seq_len=64",
                               "train.grad_accum=3",     "train.lr=6e-4",
                               "train.min_lr=6e-5",      "train.warmup_steps=2",
                               "train.weight_decay=0",   "train.grad_clip=0.3",
                               "train.adam_beta1=0.8",   "train.adam_beta2=0.99",
                               "train.adam_eps=1e-7",    "train.seed=42",
                               "train.val_every=5",      "train.val_steps=2",
                               "train.log_every=3",      "data.train=a b/t.tok",
                               "data.val=v.tok",         "data.val_fraction=0.1",
                               "parallel.sp=2",          "parallel.dp=3",
                               "zero.stage=1",           "activations.mode=recompute",
                               "offload.max_inflight=4", "device.memory_limit=3G",
                               "checkpoint.dir=ck",      "checkpoint.every=4",
                               "checkpoint.keep=9",      "checkpoint.resume=ck/step_4.h5",
                               "run.dir=runs/rt"};
    int n = (int)(sizeof overrides / sizeof overrides[0]);
    rt_config original;
    rt_config_defaults(&original);
    rt_error err = {{0}};
    int rc = rt_config_load(&original, NULL, overrides, n, &err);
    if (rc) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT_EQUAL(original.n_kv_heads, 10);
    CU_ASSERT_EQUAL(original.d_ff, 1280);
    /* Every key round-trips. */

    char path[128];
    snprintf(path, sizeof path, "%s/written.ini", temp_dir);
    write_ini("written.ini", "");
    FILE *out = fopen(path, "w");
    CU_ASSERT_FATAL(out != NULL);
    CU_ASSERT_EQUAL(rt_config_write(&original, out), 0);
    fclose(out);

    /* load into something different from the defaults, to show the file alone decides */
    rt_config loaded;
    rt_config_defaults(&loaded);
    CU_ASSERT_EQUAL(rt_config_apply_preset(&loaded, "gpt2-124m", &err), 0);
    rc = rt_config_load(&loaded, path, NULL, 0, &err);
    if (rc) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL_FATAL(rc, 0);
    CU_ASSERT(rt_config_is_explicit(&loaded, "model", "n_kv_heads"));
    loaded.explicit_keys = original.explicit_keys; /* bookkeeping: the written file sets every key */
    CU_ASSERT(memcmp(&loaded, &original, sizeof loaded) == 0);
    CU_ASSERT_EQUAL(loaded.lr, original.lr);
    CU_ASSERT_EQUAL(loaded.d_ff, 1280);
    CU_ASSERT_STRING_EQUAL(loaded.data_train, "a b/t.tok");
    CU_ASSERT_EQUAL(loaded.memory_limit, 3ull << 30);

    /* the defaults round-trip too, and the file is readable INI with every section */
    rt_config defaults;
    rt_config_defaults(&defaults);
    out = fopen(path, "w");
    CU_ASSERT_EQUAL(rt_config_write(&defaults, out), 0);
    fclose(out);
    rt_config_defaults(&loaded);
    CU_ASSERT_EQUAL(rt_config_set(&loaded, "train", "lr", "0.5", &err), 0);
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&loaded, path, NULL, 0, &err), 0);
    loaded.explicit_keys = 0;
    CU_ASSERT(memcmp(&loaded, &defaults, sizeof loaded) == 0);

    char text[8192];
    FILE *in = fopen(path, "r");
    size_t len = fread(text, 1, sizeof text - 1, in);
    fclose(in);
    text[len] = '\0';
    const char *expected[] = {"[model]\npreset = tiny\nfamily = llama\n",
                              "[train]\n",
                              "lr = 0.001\n",
                              "adam_eps = 1e-08\n",
                              "[data]\n",
                              "[parallel]\n",
                              "[zero]\nstage = 0\n",
                              "[activations]\nmode = keep\n",
                              "rope_theta = 10000\n",
                              "init_from =\n",
                              "[offload]\n",
                              "[device]\nkind = cpu\n",
                              "memory_limit = 0\n",
                              "[checkpoint]\n",
                              "resume = none\n",
                              "[run]\ndir = runs/latest\n"};
    for (size_t i = 0; i < sizeof expected / sizeof expected[0]; i++)
        ASSERT_HAS(text, expected[i]);
}

static void test_error_unknown_section_and_key(void) {
    const char *msg = load_fails("[model]\nn_layers = 2\n[modle]\nd_model = 64\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:4:");
    ASSERT_HAS(msg, "unknown section [modle]");
    ASSERT_HAS(msg, "did you mean [model]");

    msg = load_fails("[model]\n\nn_layer = 3\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:3:");
    ASSERT_HAS(msg, "unknown key 'n_layer' in [model]");
    ASSERT_HAS(msg, "did you mean 'n_layers'");

    msg = load_fails("[model]\nseq_len = 3\n", NULL, 0); /* right key, wrong section */
    ASSERT_HAS(msg, "'seq_len'");
    ASSERT_HAS(msg, "[train]");

    msg = load_fails("[model]\nflux_capacitor = 3\n", NULL, 0); /* nothing close: list the keys */
    ASSERT_HAS(msg, "'flux_capacitor'");
    ASSERT_HAS(msg, "n_kv_heads");

    msg = set_fails("trian.steps=5");
    ASSERT_HAS(msg, "--set trian.steps=5");
    ASSERT_HAS(msg, "unknown section [trian]");
    ASSERT_HAS(msg, "did you mean [train]");

    msg = set_fails("train.setps=5");
    ASSERT_HAS(msg, "--set train.setps=5");
    ASSERT_HAS(msg, "did you mean 'steps'");

    msg = load_fails("steps = 5\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:1:");
    ASSERT_HAS(msg, "'steps'");
    ASSERT_HAS(msg, "before any [section]");

    rt_config cfg;
    rt_error err = {{0}};
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL(rt_config_set(&cfg, "model", "nlayers", "2", &err), -1);
    ASSERT_HAS(err.msg, "did you mean 'n_layers'");
}

static void test_error_values(void) {
    /* wrong type */
    const char *msg = load_fails("[train]\nsteps = 5\nlr = fast\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:3: [train] lr = 'fast': expected a number");

    /* out of range, from --set */
    msg = set_fails("train.steps=-3");
    ASSERT_HAS(msg, "--set train.steps = '-3': must be >= 1");
    msg = set_fails("zero.stage=4");
    ASSERT_HAS(msg, "zero.stage = '4'");
    ASSERT_HAS(msg, "must be in [0, 3]");
    msg = load_fails("[model]\ndropout = 1\n", NULL, 0);
    ASSERT_HAS(msg, "[model] dropout = '1': must be in [0, 1)");
    msg = set_fails("model.norm_eps=0");
    ASSERT_HAS(msg, "model.norm_eps = '0': must be in (0, 1]");

    /* trailing garbage */
    msg = load_fails("[model]\nn_layers = 12x\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:2: [model] n_layers = '12x': expected an integer");
    msg = set_fails("train.lr=1e-3abc");
    ASSERT_HAS(msg, "train.lr = '1e-3abc': expected a number");
    msg = set_fails("train.steps=1.5");
    ASSERT_HAS(msg, "train.steps = '1.5': expected an integer");
    msg = set_fails("train.steps=");
    ASSERT_HAS(msg, "train.steps = '': expected an integer");
    msg = set_fails("train.seed=-1");
    ASSERT_HAS(msg, "train.seed = '-1': expected an unsigned integer");

    /* NaN and infinity */
    msg = set_fails("train.lr=nan");
    ASSERT_HAS(msg, "train.lr = 'nan': expected a finite number");
    msg = load_fails("[train]\ngrad_clip = inf\n", NULL, 0);
    ASSERT_HAS(msg, "[train] grad_clip = 'inf': expected a finite number");
    msg = set_fails("train.lr=1e300");
    ASSERT_HAS(msg, "train.lr = '1e300'");

    /* integer overflow */
    msg = set_fails("train.steps=2147483648");
    ASSERT_HAS(msg, "train.steps = '2147483648'");
    ASSERT_HAS(msg, "overflow");
    msg = set_fails("train.steps=99999999999999999999999");
    ASSERT_HAS(msg, "overflow");
    msg = set_fails("train.seed=18446744073709551616");
    ASSERT_HAS(msg, "train.seed = '18446744073709551616'");
    ASSERT_HAS(msg, "overflow");

    /* bad enum values list the allowed ones */
    msg = load_fails("[activations]\nmode = swap\n", NULL, 0);
    ASSERT_HAS(msg, "[activations] mode = 'swap': expected one of keep, recompute, offload");
    msg = set_fails("model.family=mistral");
    ASSERT_HAS(msg, "model.family = 'mistral': expected one of llama, gpt2");
    msg = set_fails("device.kind=tpu");
    ASSERT_HAS(msg, "expected one of cpu, cuda");

    /* unknown preset lists the known ones */
    msg = load_fails("[model]\npreset = huge\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:2: [model] preset = 'huge'");
    ASSERT_HAS(msg, "tiny, small, gpt2-124m");

    /* strings that cannot be empty, or cannot survive the INI file */
    msg = set_fails("run.dir=");
    ASSERT_HAS(msg, "run.dir = '': must not be empty");
    msg = set_fails("data.train=a ;b");
    ASSERT_HAS(msg, "data.train = 'a ;b'");
    char long_path[400] = "data.train=";
    memset(long_path + strlen(long_path), 'p', 300);
    msg = set_fails(long_path);
    ASSERT_HAS(msg, "data.train");
    ASSERT_HAS(msg, "too long");
}

static void test_error_ini_syntax(void) {
    const char *msg = load_fails("[train]\nsteps = 5\nthis line has no equals sign\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:3:");
    ASSERT_HAS(msg, "'this line has no equals sign'");

    /* libinih reads an indented line as a continuation of the previous value */
    msg = load_fails("[train]\nsteps = 5\n  lr = 0.1\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:3:");
    ASSERT_HAS(msg, "'lr = 0.1'");
    ASSERT_HAS(msg, "indent");

    /* lines libinih would cut are refused, and the line numbers after them stay right */
    char text[600];
    int used = snprintf(text, sizeof text, "[data]\ntrain = ");
    memset(text + used, 'x', 300);
    snprintf(text + used + 300, sizeof text - (size_t)used - 300, "\n");
    msg = load_fails(text, NULL, 0);
    ASSERT_HAS(msg, "fail.ini:2:");
    ASSERT_HAS(msg, "longer than");
    ASSERT_HAS(msg, "'train = xxx");

    /* the first error wins */
    msg = load_fails("[train]\nstep = 5\nbroken\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:2:");
    msg = load_fails("[train]\nbroken\nstep = 5\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:2:");
    ASSERT_HAS(msg, "'broken'");
}

static void test_error_malformed_set_and_missing_file(void) {
    const char *bad[] = {"trainsteps=5", "train.steps", ".steps=5", "train.=5", "=5", ""};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        const char *msg = set_fails(bad[i]);
        char quoted[64];
        snprintf(quoted, sizeof quoted, "--set '%s'", bad[i]);
        ASSERT_HAS(msg, quoted);
        ASSERT_HAS(msg, "section.key=value");
    }
    /* a good override before a bad one changes nothing either */
    const char *mixed[] = {"train.steps=9", "train.lr"};
    const char *msg = load_fails(NULL, mixed, 2);
    ASSERT_HAS(msg, "--set 'train.lr'");

    char missing[128];
    snprintf(missing, sizeof missing, "%s/no_such.ini", temp_dir);
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err = {{0}};
    CU_ASSERT_EQUAL(rt_config_load(&cfg, missing, NULL, 0, &err), -1);
    ASSERT_HAS(err.msg, missing);
    ASSERT_HAS(err.msg, strerror(ENOENT));
}

static void test_validate_cross_field(void) {
    rt_config cfg = valid_config();

    cfg.d_model = 100;
    cfg.n_heads = 3;
    const char *msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "model.d_model = 100");
    ASSERT_HAS(msg, "model.n_heads = 3");

    cfg = valid_config();
    cfg.n_heads = 8;
    cfg.n_kv_heads = 3;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "model.n_heads = 8");
    ASSERT_HAS(msg, "model.n_kv_heads = 3");

    cfg = valid_config();
    cfg.d_model = 60; /* 4 heads of 15: odd, RoPE needs pairs */
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "model.d_model = 60");
    ASSERT_HAS(msg, "head_dim 15");
    ASSERT_HAS(msg, "even");
    cfg.family = RT_FAMILY_GPT2; /* gpt2 has no RoPE: fine once kv heads match */
    cfg.n_kv_heads = cfg.n_heads;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL(rt_config_validate(&cfg, &err), 0);

    cfg = valid_config();
    cfg.family = RT_FAMILY_GPT2;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "gpt2");
    ASSERT_HAS(msg, "n_kv_heads = 2");
    ASSERT_HAS(msg, "n_heads = 4");

    cfg = valid_config();
    cfg.seq_len = 2048;
    cfg.max_seq_len = 1024;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "train.seq_len = 2048 exceeds model.max_seq_len = 1024");

    cfg = valid_config();
    cfg.sp = 4;
    cfg.seq_len = 100;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "train.seq_len = 100");
    ASSERT_HAS(msg, "parallel.sp");

    cfg = valid_config();
    cfg.batch_size = 6;
    cfg.dp = 4;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "train.batch_size = 6");
    ASSERT_HAS(msg, "parallel.dp = 4");

    cfg = valid_config();
    cfg.min_lr = 0.01f;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "train.min_lr = 0.01 exceeds train.lr = 0.001");

    cfg = valid_config();
    cfg.dropout = 1.0f;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "model.dropout = 1");
    cfg = valid_config();
    cfg.dropout = -0.5f;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "model.dropout = -0.5");

    cfg = valid_config();
    cfg.adam_beta1 = 1.0f;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "train.adam_beta1 = 1");
    cfg = valid_config();
    cfg.adam_beta2 = -0.1f;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "train.adam_beta2 = -0.1");

    cfg = valid_config();
    cfg.data_train[0] = '\0';
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "data.train is not set: give a token file (see `ringtrain prepare`)");

    cfg = valid_config();
    cfg.steps = 0;
    msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "train.steps = 0");
}

/* device.kind picks the backend instance: cpu is the shared CPU table; cuda opens a GPU or, on a machine
 * without one (or a build without CUDA), fails with one line that names device.kind; other kinds are refused. */
static void test_backend_open(void) {
    const rt_backend *be = NULL;
    rt_error err;
    CU_ASSERT_EQUAL(rt_backend_open(&be, "cpu", 0, &err), 0);
    CU_ASSERT_PTR_EQUAL(be, rt_backend_cpu());
    rt_backend_close(be);
    CU_ASSERT_EQUAL(rt_backend_open(&be, "tpu", 0, &err), -1);
    ASSERT_HAS(err.msg, "device.kind = tpu: expected cpu or cuda");
    if (rt_backend_open(&be, "cuda", 0, &err) == 0) {
        CU_ASSERT_STRING_EQUAL(be->name, "cuda");
        rt_backend_close(be);
    } else {
        CU_ASSERT_PTR_NULL(be);
        ASSERT_HAS(err.msg, "device.kind = cuda: ");
        CU_ASSERT(strstr(err.msg, "no CUDA backend") || strstr(err.msg, "no CUDA device is visible"));
        CU_ASSERT_PTR_NULL(strchr(err.msg, '\n'));
    }
}

/* vocab_size near INT_MAX: refused by validation (padding it to 128 overflowed int in the model shape). */
static void test_validate_vocab_near_int_max(void) {
    rt_config cfg = valid_config();
    cfg.vocab_size = 2147483600;
    const char *msg = validate_fails(&cfg);
    ASSERT_HAS(msg, "model.vocab_size = 2147483600");
    ASSERT_HAS(msg, "expected at most 2147483520");
    rt_error err;
    CU_ASSERT_EQUAL(rt_config_validate_model(&cfg, &err), -1);
    ASSERT_HAS(err.msg, "model.vocab_size");
    cfg.vocab_size = 2147483520; /* the largest that pads within an int */
    CU_ASSERT_EQUAL(rt_config_validate_model(&cfg, &err), 0);
    cfg.vocab_size = 2147483600; /* an explicit padded_vocab carries no rounding */
    cfg.padded_vocab = 2147483647;
    CU_ASSERT_EQUAL(rt_config_validate_model(&cfg, &err), 0);
}

/* A config stored in a model file goes through the model checks of --config (sample runs them). */
static void test_validate_stored_config(void) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err;
    CU_ASSERT_EQUAL_FATAL(rt_config_load_text(&cfg, "[model]\nd_model = 64\nn_heads = 3\n", "model.h5", &err), 0);
    CU_ASSERT_EQUAL(rt_config_validate_model(&cfg, &err), -1);
    ASSERT_HAS(err.msg, "model.d_model = 64 is not divisible by model.n_heads = 3");
    /* a NaN value in the stored text never loads */
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL(rt_config_load_text(&cfg, "[model]\ndropout = nan\n", "model.h5", &err), -1);
    ASSERT_HAS(err.msg, "model.h5:2: [model] dropout = 'nan': expected a finite number");
    /* nor does a NaN that reached the struct validate */
    rt_config_defaults(&cfg);
    cfg.norm_eps = NAN;
    CU_ASSERT_EQUAL(rt_config_validate_model(&cfg, &err), -1);
    ASSERT_HAS(err.msg, "model.norm_eps = nan");
    /* the model checks ignore what only training needs (no data file here) */
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL(rt_config_validate_model(&cfg, &err), 0);
}

/* A FIFO as --config is refused at once, not waited on (the alarm fails the test if it blocks). */
static void test_config_fifo_refused(void) {
    char path[128];
    snprintf(path, sizeof path, "%s/config.fifo", temp_dir);
    CU_ASSERT_EQUAL_FATAL(mkfifo(path, 0600), 0);
    alarm(20);
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err;
    CU_ASSERT_EQUAL(rt_config_load(&cfg, path, NULL, 0, &err), -1);
    ASSERT_HAS(err.msg, path);
    ASSERT_HAS(err.msg, "not a regular file");
    alarm(0);
    unlink(path);
}

/* activations.mlp_tile_mib: parsed from a file and --set, written and read back, a negative refused naming the
 * key and the range, and turned into tokens per tile: floor(MiB / ((2*FC + 2*F) * 4 bytes)), at least 1, 0
 * (untiled) when that covers every local token. */
static void test_mlp_tile(void) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err = {{0}};
    const char *path = write_ini("tile.ini", "[activations]\nmode = recompute\nmlp_tile_mib = 3\n");
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, path, NULL, 0, &err), 0);
    CU_ASSERT_EQUAL(cfg.mlp_tile_mib, 3);
    CU_ASSERT(rt_config_is_explicit(&cfg, "activations", "mlp_tile_mib"));
    const char *overrides[] = {"activations.mlp_tile_mib=64"};
    CU_ASSERT_EQUAL_FATAL(rt_config_load(&cfg, NULL, overrides, 1, &err), 0);
    CU_ASSERT_EQUAL(cfg.mlp_tile_mib, 64);
    char *text = rt_config_to_text(&cfg);
    ASSERT_HAS(text, "[activations]\nmode = recompute\nmlp_tile_mib = 64\n");
    rt_config loaded;
    rt_config_defaults(&loaded);
    CU_ASSERT_EQUAL(rt_config_load_text(&loaded, text, "stored", &err), 0);
    CU_ASSERT_EQUAL(loaded.mlp_tile_mib, 64);
    free(text);

    const char *msg = set_fails("activations.mlp_tile_mib=-1");
    ASSERT_HAS(msg, "--set activations.mlp_tile_mib = '-1': must be >= 0");
    msg = load_fails("[activations]\nmlp_tile_mib = -8\n", NULL, 0);
    ASSERT_HAS(msg, "fail.ini:2: [activations] mlp_tile_mib = '-8': must be >= 0");
    msg = set_fails("activations.mlp_tile_mib=0.5");
    ASSERT_HAS(msg, "activations.mlp_tile_mib = '0.5': expected an integer");
    rt_config bad = valid_config();
    bad.mlp_tile_mib = -1;
    msg = validate_fails(&bad);
    ASSERT_HAS(msg, "activations.mlp_tile_mib = -1: must be >= 0");

    /* tiny is llama, d_ff 128: FC = 256, (512 + 256) * 4 = 3072 bytes a token, 341 tokens in 1 MiB */
    rt_config_defaults(&cfg);
    CU_ASSERT_EQUAL(rt_config_mlp_tile(&cfg, 512), 0); /* 0 MiB: untiled */
    cfg.mlp_tile_mib = 1;
    CU_ASSERT_EQUAL(rt_config_mlp_tile(&cfg, 512), 341);
    CU_ASSERT_EQUAL(rt_config_mlp_tile(&cfg, 342), 341);
    CU_ASSERT_EQUAL(rt_config_mlp_tile(&cfg, 341), 0); /* one tile holds every token */
    cfg.mlp_tile_mib = 3;
    CU_ASSERT_EQUAL(rt_config_mlp_tile(&cfg, 4096), 1024);
    /* gpt2 has no gate: FC = F = 128, 2048 bytes a token */
    cfg.family = RT_FAMILY_GPT2;
    CU_ASSERT_EQUAL(rt_config_mlp_tile(&cfg, 4096), 1536);
    /* a token needing more than the budget (llama d_ff 2^20: 24 MiB a token) still gets a tile of 1 */
    cfg.family = RT_FAMILY_LLAMA;
    cfg.d_ff = 1 << 20;
    cfg.mlp_tile_mib = 1;
    CU_ASSERT_EQUAL(rt_config_mlp_tile(&cfg, 2), 1);
}

int main(void) {
    snprintf(temp_dir, sizeof temp_dir, "/tmp/test_config_XXXXXX");
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 2;
    }
    test_case cases[] = {
        {"defaults", test_defaults},
        {"file and overrides", test_file_and_overrides},
        {"preset applied first", test_preset_applied_first},
        {"gpt2 family resolution", test_gpt2_family_resolution},
        {"bytes suffixes", test_bytes_suffixes},
        {"write/load round trip", test_write_load_round_trip},
        {"error: unknown section and key", test_error_unknown_section_and_key},
        {"error: values", test_error_values},
        {"error: INI syntax", test_error_ini_syntax},
        {"error: malformed --set, missing file", test_error_malformed_set_and_missing_file},
        {"validate cross-field checks", test_validate_cross_field},
        {"validate: vocab_size near INT_MAX", test_validate_vocab_near_int_max},
        {"backend: device.kind opens the instance it names", test_backend_open},
        {"validate: stored config", test_validate_stored_config},
        {"error: FIFO as config", test_config_fifo_refused},
        {"activations.mlp_tile_mib", test_mlp_tile},
    };
    int status = test_run_suite("test_config", cases, (int)(sizeof cases / sizeof cases[0]));
    for (int i = 0; i < n_temp_files; i++)
        unlink(temp_files[i]);
    rmdir(temp_dir);
    return status;
}
