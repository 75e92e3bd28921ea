/* param_layout.c: the flat parameter buffer's table of named views, and the initial values. */
#include "param_layout.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

rt_model_shape rt_model_shape_from_config(const rt_config *cfg) {
    /* Rounded up in 64 bits: vocab_size near INT_MAX would overflow int. rt_config_validate refuses such a
     * vocabulary with a message; reaching here with one is a caller that skipped validation. */
    int64_t padded = cfg->padded_vocab ? cfg->padded_vocab : ((int64_t)cfg->vocab_size + 127) / 128 * 128;
    if (padded > INT32_MAX || cfg->n_heads <= 0)
        rt_fatal("model shape from an unvalidated config: vocab_size %d (padded %lld), n_heads %d", cfg->vocab_size,
                 (long long)padded, cfg->n_heads);
    rt_model_shape s = {
        .family = cfg->family,
        .n_layers = cfg->n_layers,
        .d_model = cfg->d_model,
        .n_heads = cfg->n_heads,
        .n_kv_heads = cfg->n_kv_heads,
        .head_dim = cfg->head_dim ? cfg->head_dim : cfg->d_model / cfg->n_heads,
        .d_ff = cfg->d_ff,
        .vocab_size = cfg->vocab_size,
        .padded_vocab = (int)padded,
        .max_seq_len = cfg->max_seq_len,
        .tie_embeddings = cfg->tie_embeddings,
        .dropout = cfg->dropout,
        .rope_theta = cfg->rope_theta,
        .norm_eps = cfg->norm_eps,
    };
    return s;
}

void rt_param_name(char full[RT_NAME_LEN], const char *name, int layer) {
    if (layer >= 0)
        snprintf(full, RT_NAME_LEN, "layers.%d.%s", layer, name);
    else
        snprintf(full, RT_NAME_LEN, "%s", name);
}

/* Adds one view. */
static void add_view(rt_view_table *t, const char *name, int layer, size_t d0, size_t d1, int decay) {
    char full[RT_NAME_LEN];
    rt_param_name(full, name, layer);
    size_t shape[2] = {d0, d1};
    rt_view_table_add(t, full, d1 ? 2 : 1, shape, decay);
}

/* Layer-major layout; see param_layout.h. */
void rt_param_table_build(const rt_model_shape *s, rt_view_table *t, size_t *layer_offset) {
    const size_t C = (size_t)s->d_model, QKV = rt_qkv_width(s), FC = rt_fc_width(s), F = (size_t)s->d_ff;
    const size_t HD = (size_t)s->n_heads * s->head_dim;
    const int gpt2 = s->family == RT_FAMILY_GPT2;
    rt_view_table_init(t);
    add_view(t, "wte", -1, (size_t)s->padded_vocab, C, 1);
    if (gpt2) add_view(t, "wpe", -1, (size_t)s->max_seq_len, C, 1);
    for (int l = 0; l < s->n_layers; l++) {
        if (layer_offset) layer_offset[l] = t->total;
        add_view(t, "norm1.weight", l, C, 0, 0);
        if (gpt2) add_view(t, "norm1.bias", l, C, 0, 0);
        add_view(t, "attn.qkv.weight", l, QKV, C, 1);
        if (gpt2) add_view(t, "attn.qkv.bias", l, QKV, 0, 0);
        add_view(t, "attn.proj.weight", l, C, HD, 1);
        if (gpt2) add_view(t, "attn.proj.bias", l, C, 0, 0);
        add_view(t, "norm2.weight", l, C, 0, 0);
        if (gpt2) add_view(t, "norm2.bias", l, C, 0, 0);
        add_view(t, "mlp.fc.weight", l, FC, C, 1);
        if (gpt2) add_view(t, "mlp.fc.bias", l, FC, 0, 0);
        add_view(t, "mlp.proj.weight", l, C, F, 1);
        if (gpt2) add_view(t, "mlp.proj.bias", l, C, 0, 0);
    }
    if (layer_offset) layer_offset[s->n_layers] = t->total;
    add_view(t, "norm_f.weight", -1, C, 0, 0);
    if (gpt2) add_view(t, "norm_f.bias", -1, C, 0, 0);
    if (!rt_shape_tied(s)) add_view(t, "lm_head.weight", -1, (size_t)s->padded_vocab, C, 1);
}

size_t rt_model_param_count(const rt_model_shape *shape) {
    rt_view_table t;
    rt_param_table_build(shape, &t, NULL);
    size_t total = t.total;
    rt_view_table_free(&t);
    return total;
}

/* splitmix64: the init RNG; Box-Muller turns pairs of uniforms into normals. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double uniform_open(uint64_t *state) { return ((double)(splitmix64(state) >> 11) + 0.5) * 0x1.0p-53; }

static void fill_normal(float *x, size_t n, double std, uint64_t *state) {
    for (size_t i = 0; i < n; i += 2) {
        double r = sqrt(-2.0 * log(uniform_open(state))), theta = 2.0 * M_PI * uniform_open(state);
        x[i] = (float)(std * r * cos(theta));
        if (i + 1 < n) x[i + 1] = (float)(std * r * sin(theta));
    }
}

static int ends_with(const char *text, const char *suffix) {
    size_t a = strlen(text), b = strlen(suffix);
    return a >= b && strcmp(text + a - b, suffix) == 0;
}

void rt_param_table_init_values(const rt_model_shape *s, const rt_view_table *table, uint64_t seed, float *host) {
    const double std = 0.02, resid_std = 0.02 / sqrt(2.0 * s->n_layers);
    for (int i = 0; i < table->count; i++) {
        const rt_named_view *v = &table->views[i];
        float *dst = host + v->offset;
        /* Each tensor draws from its own stream so adding a tensor does not shift the others. */
        uint64_t state = seed ^ (0xA24BAED4963EE407ULL * (uint64_t)(i + 1));
        if (v->ndim == 1) {
            float value = ends_with(v->name, ".weight") ? 1.0f : 0.0f;
            for (size_t j = 0; j < v->numel; j++)
                dst[j] = value;
        } else if (ends_with(v->name, "attn.proj.weight") || ends_with(v->name, "mlp.proj.weight")) {
            fill_normal(dst, v->numel, resid_std, &state);
        } else {
            fill_normal(dst, v->numel, std, &state);
        }
        if (strcmp(v->name, "wte") == 0 || strcmp(v->name, "lm_head.weight") == 0)
            memset(dst + (size_t)s->vocab_size * s->d_model, 0,
                   (size_t)(s->padded_vocab - s->vocab_size) * s->d_model * sizeof(float));
    }
}
