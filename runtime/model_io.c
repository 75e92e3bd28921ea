/* model_io.c: llm.c import (layer-stacked -> layer-major) and HDF5 model files. */
#include "model_io.h"

#include <stdlib.h>
#include <string.h>

#include "../io/checkpoint.h"

/* Our view name of each llm.c tensor; per-layer ones get the "layers.<l>." prefix. */
static const struct {
    const char *name;
    int per_layer;
} llmc_to_view[RT_LLMC_N_TENSORS] = {
    {"wte", 0},
    {"wpe", 0},
    {"norm1.weight", 1},
    {"norm1.bias", 1},
    {"attn.qkv.weight", 1},
    {"attn.qkv.bias", 1},
    {"attn.proj.weight", 1},
    {"attn.proj.bias", 1},
    {"norm2.weight", 1},
    {"norm2.bias", 1},
    {"mlp.fc.weight", 1},
    {"mlp.fc.bias", 1},
    {"mlp.proj.weight", 1},
    {"mlp.proj.bias", 1},
    {"norm_f.weight", 0},
    {"norm_f.bias", 0},
};

int rt_config_from_llmc(rt_config *cfg, const char *path, rt_error *err) {
    rt_llmc_header hdr;
    if (rt_llmc_read_header(path, &hdr, err)) return -1;
    cfg->family = RT_FAMILY_GPT2;
    cfg->n_layers = hdr.n_layers;
    cfg->d_model = hdr.channels;
    cfg->n_heads = hdr.n_heads;
    cfg->n_kv_heads = hdr.n_heads;
    cfg->d_ff = 4 * hdr.channels;
    cfg->vocab_size = hdr.vocab_size;
    cfg->max_seq_len = hdr.max_seq_len;
    cfg->padded_vocab = hdr.padded_vocab_size;
    return 0;
}

static int check_shape(const rt_model_shape *s, const rt_llmc_header *h, const char *path, rt_error *err) {
    const struct {
        const char *what;
        int file, model;
    } fields[] = {
        {"n_layers", h->n_layers, s->n_layers},
        {"channels", h->channels, s->d_model},
        {"n_heads", h->n_heads, s->n_heads},
        {"vocab_size", h->vocab_size, s->vocab_size},
        {"padded_vocab_size", h->padded_vocab_size, s->padded_vocab},
        {"max_seq_len", h->max_seq_len, s->max_seq_len},
    };
    if (s->family != RT_FAMILY_GPT2) return rt_fail(err, "%s: llm.c model files hold the gpt2 family only", path);
    if (s->d_ff != 4 * s->d_model)
        return rt_fail(err, "%s: llm.c models have d_ff = 4*d_model = %d, the model has %d", path, 4 * s->d_model,
                       s->d_ff);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i].file != fields[i].model)
            return rt_fail(err, "%s: the file's %s is %d but the model's is %d", path, fields[i].what, fields[i].file,
                           fields[i].model);
    return 0;
}

int rt_model_load_llmc(rt_model *m, const char *path, rt_error *err) {
    rt_llmc_header hdr;
    if (rt_llmc_read_header(path, &hdr, err)) return -1;
    if (check_shape(&m->shape, &hdr, path, err)) return -1;
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(&hdr, sizes);
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++)
        total += sizes[i];
    float *file_params = malloc_check(total * sizeof(float));
    if (rt_llmc_read_params(path, &hdr, file_params, err)) {
        free(file_params);
        return -1;
    }
    float *host = malloc_check(m->table.total * sizeof(float));
    const float *src = file_params;
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++) {
        int copies = llmc_to_view[i].per_layer ? hdr.n_layers : 1;
        size_t per_copy = sizes[i] / (size_t)copies;
        for (int l = 0; l < copies; l++) {
            char name[RT_NAME_LEN];
            if (llmc_to_view[i].per_layer)
                snprintf(name, sizeof name, "layers.%d.%s", l, llmc_to_view[i].name);
            else
                snprintf(name, sizeof name, "%s", llmc_to_view[i].name);
            const rt_named_view *view = rt_view_table_find(&m->table, name);
            if (!view || view->numel != per_copy)
                rt_fatal("llm.c tensor %s does not match the model's view %s", rt_llmc_tensor_name(i), name);
            memcpy(host + view->offset, src + (size_t)l * per_copy, per_copy * sizeof(float));
        }
        src += sizes[i];
    }
    m->backend->copy(m->params, host, m->table.total * sizeof(float));
    free(host);
    free(file_params);
    return 0;
}

int rt_model_save(const rt_model *m, const char *path, const char *config_text, int64_t step, rt_error *err) {
    float *host = malloc_check(m->table.total * sizeof(float));
    m->backend->copy(host, m->params, m->table.total * sizeof(float));
    int rc = rt_checkpoint_write(path, &m->table, host, config_text, step, err);
    free(host);
    return rc;
}

int rt_model_load(rt_model *m, const char *path, rt_error *err) {
    float *host = malloc_check(m->table.total * sizeof(float));
    int rc = rt_checkpoint_read_params(path, &m->table, host, err);
    if (rc == 0) m->backend->copy(m->params, host, m->table.total * sizeof(float));
    free(host);
    return rc;
}
