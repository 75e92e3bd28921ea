/* fuzz_hf_index.c: libFuzzer target for model.safetensors.index.json, read as model.init_from = DIR reads it. */
#include <sys/stat.h>

#include "fuzz_common.h"
#include "runtime/model/hf_model.h"

/* One directory for the whole process: a tiny llama's config.json and model.safetensors, written once by the
 * exporter; each input becomes its index, which then names which file holds each tensor. */
static char dir[4096];
static rt_config cfg;
static rt_model_shape shape;
static rt_view_table table;
static float *host;

static const float *host_view(void *ctx, int v) {
    (void)ctx;
    return host + table.views[v].offset;
}

static void remove_dir(void) {
    static const char *const names[] = {"config.json", "model.safetensors", "model.safetensors.index.json"};
    char path[4200];
    for (int i = 0; i < 3; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

static void make_dir(void) {
    rt_config_defaults(&cfg);
    rt_error err;
    if (rt_config_set(&cfg, "model", "n_layers", "1", &err) || rt_config_set(&cfg, "model", "d_model", "8", &err) ||
        rt_config_set(&cfg, "model", "n_heads", "2", &err) || rt_config_set(&cfg, "model", "n_kv_heads", "1", &err) ||
        rt_config_set(&cfg, "model", "d_ff", "8", &err) || rt_config_set(&cfg, "model", "vocab_size", "16", &err) ||
        rt_config_set(&cfg, "model", "max_seq_len", "16", &err))
        abort();
    shape = rt_model_shape_from_config(&cfg);
    rt_param_table_build(&shape, &table, NULL);
    host = calloc(table.total, sizeof(float));
    if (!host) abort();
    const char *tmp = getenv("TMPDIR");
    char parent[4000];
    snprintf(parent, sizeof parent, "%s/rt_fuzz_hf_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (!mkdtemp(parent)) abort();
    snprintf(dir, sizeof dir, "%s", parent);
    rmdir(dir); /* the exporter makes the directory itself */
    rt_hf_write_options opt = {.dtype = RT_ST_F32};
    if (rt_hf_write_dir(&cfg, &shape, &table, &(rt_hf_view_source){.view = host_view}, dir, &opt, &err)) {
        fprintf(stderr, "fuzz_hf_index: %s\n", err.msg);
        abort();
    }
    atexit(remove_dir);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!dir[0]) make_dir();
    char path[4200];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "wb");
    if (!f || (size && fwrite(data, 1, size, f) != size) || fclose(f) != 0) abort();
    rt_error err = {{0}};
    if (rt_hf_read_params(&shape, &table, dir, host, &err) != 0) fuzz_check_one_line(err.msg);
    return 0;
}
