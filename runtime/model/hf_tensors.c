/* hf_tensors.c: the Hugging Face tensor names of each family, mapped onto ringtrain's parameter table. */
#include "hf_tensors.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void add(hf_entry_list *list, const rt_view_table *table, const char *hf, const char *view, int layer,
                size_t row0, size_t rows, hf_transform how) {
    if (list->count == list->capacity) rt_fatal("hf_tensors: entry list overflow");
    hf_entry *e = &list->entries[list->count++];
    snprintf(e->hf, sizeof e->hf, "%s", hf);
    char full[RT_NAME_LEN];
    rt_param_name(full, view, layer);
    const rt_named_view *v = rt_view_table_find(table, full);
    if (!v) rt_fatal("hf_tensors: the parameter table has no '%s'", full);
    e->cols = v->ndim == 2 ? v->shape[1] : 1;
    e->view = (int)(v - table->views);
    e->at = row0 * e->cols;
    e->offset = v->offset + e->at;
    e->rows = rows;
    e->how = how;
    e->ndim = v->ndim;
}

size_t hf_entry_numel(const hf_entry *e) { return e->rows * e->cols; }

void hf_entry_shape(const hf_entry *e, int64_t shape[2]) {
    shape[0] = (int64_t)(e->how == HF_TRANSPOSE ? e->cols : e->rows);
    shape[1] = (int64_t)(e->how == HF_TRANSPOSE ? e->rows : e->cols);
}

static void llama_entries(hf_entry_list *l, const rt_model_shape *s, const rt_view_table *t) {
    const size_t V = (size_t)s->vocab_size, HD = (size_t)s->n_heads * s->head_dim,
                 KD = (size_t)s->n_kv_heads * s->head_dim, F = (size_t)s->d_ff, C = (size_t)s->d_model;
    char name[RT_ST_NAME_LEN];
    add(l, t, "model.embed_tokens.weight", "wte", -1, 0, V, HF_COPY);
    for (int i = 0; i < s->n_layers; i++) {
#define HF(fmt) (snprintf(name, sizeof name, "model.layers.%d." fmt, i), name)
        add(l, t, HF("input_layernorm.weight"), "norm1.weight", i, 0, C, HF_COPY);
        add(l, t, HF("self_attn.q_proj.weight"), "attn.qkv.weight", i, 0, HD, HF_ROPE);
        add(l, t, HF("self_attn.k_proj.weight"), "attn.qkv.weight", i, HD, KD, HF_ROPE);
        add(l, t, HF("self_attn.v_proj.weight"), "attn.qkv.weight", i, HD + KD, KD, HF_COPY);
        add(l, t, HF("self_attn.o_proj.weight"), "attn.proj.weight", i, 0, C, HF_COPY);
        add(l, t, HF("post_attention_layernorm.weight"), "norm2.weight", i, 0, C, HF_COPY);
        add(l, t, HF("mlp.gate_proj.weight"), "mlp.fc.weight", i, 0, F, HF_COPY); /* swiglu: gate half first */
        add(l, t, HF("mlp.up_proj.weight"), "mlp.fc.weight", i, F, F, HF_COPY);
        add(l, t, HF("mlp.down_proj.weight"), "mlp.proj.weight", i, 0, C, HF_COPY);
#undef HF
    }
    add(l, t, "model.norm.weight", "norm_f.weight", -1, 0, C, HF_COPY);
    if (!rt_shape_tied(s)) add(l, t, "lm_head.weight", "lm_head.weight", -1, 0, V, HF_COPY);
}

static void gpt2_entries(hf_entry_list *l, const rt_model_shape *s, const rt_view_table *t, const char *prefix) {
    const size_t V = (size_t)s->vocab_size, C = (size_t)s->d_model, F = (size_t)s->d_ff, QKV = rt_qkv_width(s);
    char name[RT_ST_NAME_LEN];
#define HF(...) (snprintf(name, sizeof name, __VA_ARGS__), name)
    add(l, t, HF("%swte.weight", prefix), "wte", -1, 0, V, HF_COPY);
    add(l, t, HF("%swpe.weight", prefix), "wpe", -1, 0, (size_t)s->max_seq_len, HF_COPY);
    for (int i = 0; i < s->n_layers; i++) {
        /* Conv1D stores (in, out): every matrix is transposed into ringtrain's (out, in). */
        add(l, t, HF("%sh.%d.ln_1.weight", prefix, i), "norm1.weight", i, 0, C, HF_COPY);
        add(l, t, HF("%sh.%d.ln_1.bias", prefix, i), "norm1.bias", i, 0, C, HF_COPY);
        add(l, t, HF("%sh.%d.attn.c_attn.weight", prefix, i), "attn.qkv.weight", i, 0, QKV, HF_TRANSPOSE);
        add(l, t, HF("%sh.%d.attn.c_attn.bias", prefix, i), "attn.qkv.bias", i, 0, QKV, HF_COPY);
        add(l, t, HF("%sh.%d.attn.c_proj.weight", prefix, i), "attn.proj.weight", i, 0, C, HF_TRANSPOSE);
        add(l, t, HF("%sh.%d.attn.c_proj.bias", prefix, i), "attn.proj.bias", i, 0, C, HF_COPY);
        add(l, t, HF("%sh.%d.ln_2.weight", prefix, i), "norm2.weight", i, 0, C, HF_COPY);
        add(l, t, HF("%sh.%d.ln_2.bias", prefix, i), "norm2.bias", i, 0, C, HF_COPY);
        add(l, t, HF("%sh.%d.mlp.c_fc.weight", prefix, i), "mlp.fc.weight", i, 0, F, HF_TRANSPOSE);
        add(l, t, HF("%sh.%d.mlp.c_fc.bias", prefix, i), "mlp.fc.bias", i, 0, F, HF_COPY);
        add(l, t, HF("%sh.%d.mlp.c_proj.weight", prefix, i), "mlp.proj.weight", i, 0, C, HF_TRANSPOSE);
        add(l, t, HF("%sh.%d.mlp.c_proj.bias", prefix, i), "mlp.proj.bias", i, 0, C, HF_COPY);
    }
    add(l, t, HF("%sln_f.weight", prefix), "norm_f.weight", -1, 0, C, HF_COPY);
    add(l, t, HF("%sln_f.bias", prefix), "norm_f.bias", -1, 0, C, HF_COPY);
#undef HF
}

void hf_entries_build(hf_entry_list *list, const rt_model_shape *s, const rt_view_table *table,
                      const char *gpt2_prefix) {
    list->capacity = 4 + 12 * (size_t)s->n_layers;
    list->entries = calloc_check(list->capacity, sizeof(hf_entry));
    list->count = 0;
    if (s->family == RT_FAMILY_LLAMA)
        llama_entries(list, s, table);
    else
        gpt2_entries(list, s, table, gpt2_prefix);
}

void hf_entries_free(hf_entry_list *list) {
    free(list->entries);
    list->entries = NULL;
    list->count = 0;
}

int hf_tensor_ignored(const rt_model_shape *s, const char *name) {
    const char *dot = strrchr(name, '.');
    const char *last = dot ? dot + 1 : name;
    if (s->family == RT_FAMILY_GPT2) {
        /* the causal-mask buffers older GPT-2 files carry, and the LM head some store beside the tied wte */
        size_t n = strlen(name);
        if ((n > 10 && strcmp(name + n - 10, ".attn.bias") == 0) || strcmp(last, "masked_bias") == 0) return 1;
        return strcmp(name, "lm_head.weight") == 0;
    }
    /* rotary frequencies that older Llama files store: recomputed from rope_theta */
    if (strcmp(last, "inv_freq") == 0) return 1;
    return rt_shape_tied(s) && strcmp(name, "lm_head.weight") == 0;
}

/* Row r of a head in Hugging Face's rotate-half order lands at this row of ringtrain's interleaved order. */
static size_t rope_row(size_t r, size_t D) { return r < D / 2 ? 2 * r : 2 * (r - D / 2) + 1; }

void hf_to_table(const hf_entry *e, size_t head_dim, const float *hf_values, float *host) {
    float *dst = host + e->offset;
    const size_t R = e->rows, C = e->cols;
    if (e->how == HF_COPY) {
        memcpy(dst, hf_values, R * C * sizeof(float));
    } else if (e->how == HF_ROPE) {
        for (size_t r = 0; r < R; r++) {
            size_t head = r / head_dim, within = r % head_dim;
            memcpy(dst + (head * head_dim + rope_row(within, head_dim)) * C, hf_values + r * C, C * sizeof(float));
        }
    } else {
        /* hf_values is (C, R); blocked so both sides stay in cache */
        for (size_t r0 = 0; r0 < R; r0 += 32)
            for (size_t c0 = 0; c0 < C; c0 += 32)
                for (size_t r = r0; r < R && r < r0 + 32; r++)
                    for (size_t c = c0; c < C && c < c0 + 32; c++)
                        dst[r * C + c] = hf_values[c * R + r];
    }
}

const float *hf_from_view(const hf_entry *e, size_t head_dim, const float *view_values, float *scratch) {
    const float *src = view_values + e->at;
    const size_t R = e->rows, C = e->cols;
    if (e->how == HF_COPY) return src;
    if (e->how == HF_ROPE) {
        for (size_t r = 0; r < R; r++) {
            size_t head = r / head_dim, within = r % head_dim;
            memcpy(scratch + r * C, src + (head * head_dim + rope_row(within, head_dim)) * C, C * sizeof(float));
        }
    } else {
        for (size_t c0 = 0; c0 < C; c0 += 32)
            for (size_t r0 = 0; r0 < R; r0 += 32)
                for (size_t c = c0; c < C && c < c0 + 32; c++)
                    for (size_t r = r0; r < R && r < r0 + 32; r++)
                        scratch[c * R + r] = src[r * C + c];
    }
    return scratch;
}
