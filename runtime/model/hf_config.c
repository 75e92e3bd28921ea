/* hf_config.c: a Hugging Face config.json read into ringtrain's model keys, and written from them. */
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hf_model.h"

int rt_hf_is_dir(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* The whole of a small text file (config.json is a few KiB; 16 MiB is far beyond any real one). */
static char *read_text(const char *path, rt_error *err) {
    FILE *f = fopen(path, "rb");
    struct stat st;
    if (!f || fstat(fileno(f), &st) != 0 || !S_ISREG(st.st_mode)) {
        rt_fail(err, "%s: cannot open as a file: %s", path, f ? "not a regular file" : strerror(errno));
        if (f) fclose(f);
        return NULL;
    }
    if (st.st_size > (16 << 20)) {
        fclose(f);
        rt_fail(err, "%s: %lld bytes; expected a JSON config of at most 16 MiB", path, (long long)st.st_size);
        return NULL;
    }
    size_t size = (size_t)st.st_size;
    char *text = malloc_check(size + 1);
    size_t got = fread(text, 1, size, f);
    fclose(f);
    if (got != size) {
        free(text);
        rt_fail(err, "%s: read %zu of %zu bytes", path, got, size);
        return NULL;
    }
    text[size] = '\0';
    return text;
}

typedef struct {
    const char *path;
    const cJSON *root;
    rt_error *err;
} json_doc;

/* A required or optional number key as an int in [lo, hi]; *out keeps its value when the key is absent or
 * null and not required. */
static int get_int(const json_doc *d, const char *key, int required, int lo, int hi, int *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(d->root, key);
    if (!item || cJSON_IsNull(item)) {
        if (required) return rt_fail(d->err, "%s: key '%s' is missing; expected an integer", d->path, key);
        return 0;
    }
    double v = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!(v >= lo && v <= hi) || v != floor(v))
        return rt_fail(d->err, "%s: key '%s': expected an integer in [%d, %d]", d->path, key, lo, hi);
    *out = (int)v;
    return 0;
}

static int get_float(const json_doc *d, const cJSON *obj, const char *key, double lo, double hi, float *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!item || cJSON_IsNull(item)) return 0;
    double v = cJSON_IsNumber(item) ? item->valuedouble : NAN;
    if (!(v > lo && v <= hi))
        return rt_fail(d->err, "%s: key '%s': expected a number in (%g, %g]", d->path, key, lo, hi);
    *out = (float)v;
    return 0;
}

/* A bool key that must have the value ringtrain implements (absent = the Hugging Face default). */
static int require_bool(const json_doc *d, const char *key, int wanted, const char *why) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(d->root, key);
    if (!item || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsBool(item)) return rt_fail(d->err, "%s: key '%s': expected true or false", d->path, key);
    if (cJSON_IsTrue(item) != wanted)
        return rt_fail(d->err, "%s: key '%s' = %s is not supported: %s", d->path, key, wanted ? "false" : "true", why);
    return 0;
}

static int get_bool(const json_doc *d, const char *key, int *out) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(d->root, key);
    if (!item || cJSON_IsNull(item)) return 0;
    if (!cJSON_IsBool(item)) return rt_fail(d->err, "%s: key '%s': expected true or false", d->path, key);
    *out = cJSON_IsTrue(item);
    return 0;
}

/* A string key whose value must be one of allowed (NULL-terminated); absent is allowed when default_ok. */
static int require_string(const json_doc *d, const char *key, const char *const *allowed, int absent_ok,
                          const char *why) {
    const cJSON *item = cJSON_GetObjectItemCaseSensitive(d->root, key);
    if (!item || cJSON_IsNull(item)) {
        if (absent_ok) return 0;
        return rt_fail(d->err, "%s: key '%s' is missing (%s)", d->path, key, why);
    }
    if (!cJSON_IsString(item)) return rt_fail(d->err, "%s: key '%s': expected a string", d->path, key);
    for (int i = 0; allowed[i]; i++)
        if (strcmp(item->valuestring, allowed[i]) == 0) return 0;
    return rt_fail(d->err, "%s: key '%s' = '%s' is not supported: %s", d->path, key, item->valuestring, why);
}

/* RoPE: only the unscaled rotation. transformers 5 writes {"rope_type": "default", "rope_theta": X} under
 * rope_parameters; older files have rope_theta at the top and rope_scaling null. */
static int read_rope(const json_doc *d, rt_config *cfg) {
    if (get_float(d, d->root, "rope_theta", 0, HUGE_VAL, &cfg->rope_theta)) return -1;
    static const char *const keys[] = {"rope_scaling", "rope_parameters"};
    for (int i = 0; i < 2; i++) {
        const cJSON *obj = cJSON_GetObjectItemCaseSensitive(d->root, keys[i]);
        if (!obj || cJSON_IsNull(obj)) continue;
        if (!cJSON_IsObject(obj)) return rt_fail(d->err, "%s: key '%s': expected an object or null", d->path, keys[i]);
        const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "rope_type");
        if (!type) type = cJSON_GetObjectItemCaseSensitive(obj, "type");
        if (type && !(cJSON_IsString(type) && strcmp(type->valuestring, "default") == 0))
            return rt_fail(d->err, "%s: key '%s.rope_type' = '%s' is not supported: ringtrain implements unscaled RoPE",
                           d->path, keys[i], cJSON_IsString(type) ? type->valuestring : "(not a string)");
        if (!type && i == 0)
            return rt_fail(d->err,
                           "%s: key 'rope_scaling' is set without a rope_type: ringtrain implements unscaled "
                           "RoPE",
                           d->path);
        if (get_float(d, obj, "rope_theta", 0, HUGE_VAL, &cfg->rope_theta)) return -1;
    }
    return 0;
}

static int read_llama(const json_doc *d, rt_config *cfg) {
    static const char *const silu[] = {"silu", NULL};
    cfg->family = RT_FAMILY_LLAMA;
    cfg->tie_embeddings = 0; /* LlamaConfig's default */
    cfg->rope_theta = 10000.0f;
    cfg->norm_eps = 1e-6f;
    cfg->max_seq_len = 2048;
    if (get_int(d, "hidden_size", 1, 1, 1 << 20, &cfg->d_model) ||
        get_int(d, "intermediate_size", 1, 1, INT32_MAX, &cfg->d_ff) ||
        get_int(d, "num_hidden_layers", 1, 1, 4096, &cfg->n_layers) ||
        get_int(d, "num_attention_heads", 1, 1, 1 << 16, &cfg->n_heads) ||
        get_int(d, "vocab_size", 1, 1, INT32_MAX, &cfg->vocab_size) ||
        get_int(d, "max_position_embeddings", 0, 1, INT32_MAX, &cfg->max_seq_len))
        return -1;
    cfg->n_kv_heads = cfg->n_heads;
    cfg->head_dim = 0;
    if (get_int(d, "num_key_value_heads", 0, 1, 1 << 16, &cfg->n_kv_heads) ||
        get_int(d, "head_dim", 0, 0, 1 << 16, &cfg->head_dim))
        return -1;
    if ((long long)cfg->head_dim * cfg->n_heads == cfg->d_model)
        cfg->head_dim = 0; /* the derived value: keep configs short */
    if (get_float(d, d->root, "rms_norm_eps", 0, 1, &cfg->norm_eps) || read_rope(d, cfg) ||
        get_bool(d, "tie_word_embeddings", &cfg->tie_embeddings))
        return -1;
    return require_string(d, "hidden_act", silu, 1, "ringtrain's llama MLP is SwiGLU (silu)") ||
           require_bool(d, "attention_bias", 0, "ringtrain's llama attention has no biases") ||
           require_bool(d, "mlp_bias", 0, "ringtrain's llama MLP has no biases");
}

static int read_gpt2(const json_doc *d, rt_config *cfg) {
    static const char *const tanh_gelu[] = {"gelu_new", "gelu_pytorch_tanh", NULL};
    cfg->family = RT_FAMILY_GPT2;
    cfg->tie_embeddings = 1;
    cfg->head_dim = 0;
    cfg->norm_eps = 1e-5f;
    cfg->max_seq_len = 1024;
    if (get_int(d, "n_embd", 1, 1, 1 << 20, &cfg->d_model) || get_int(d, "n_layer", 1, 1, 4096, &cfg->n_layers) ||
        get_int(d, "n_head", 1, 1, 1 << 16, &cfg->n_heads) ||
        get_int(d, "vocab_size", 1, 1, INT32_MAX, &cfg->vocab_size) ||
        get_int(d, "n_positions", 0, 1, INT32_MAX, &cfg->max_seq_len))
        return -1;
    cfg->n_kv_heads = cfg->n_heads;
    cfg->d_ff = cfg->d_model <= INT32_MAX / 4 ? 4 * cfg->d_model : INT32_MAX;
    if (get_int(d, "n_inner", 0, 1, INT32_MAX, &cfg->d_ff) ||
        get_float(d, d->root, "layer_norm_epsilon", 0, 1, &cfg->norm_eps))
        return -1;
    return require_string(d, "activation_function", tanh_gelu, 1, "ringtrain's gpt2 uses the tanh GELU (gelu_new)") ||
           require_bool(d, "tie_word_embeddings", 1, "ringtrain's gpt2 ties its LM head to wte") ||
           require_bool(d, "scale_attn_weights", 1, "ringtrain scales attention scores by 1/sqrt(head_dim)") ||
           require_bool(d, "scale_attn_by_inverse_layer_idx", 0,
                        "ringtrain's attention scale is the same in every layer") ||
           require_bool(d, "add_cross_attention", 0, "ringtrain trains decoder-only models");
}

int rt_config_from_hf_text(rt_config *cfg, const char *text, const char *path, rt_error *err) {
    cJSON *root = cJSON_Parse(text);
    if (!cJSON_IsObject(root)) {
        cJSON_Delete(root);
        return rt_fail(err, "%s: not a JSON object (expected a Hugging Face config.json)", path);
    }
    json_doc d = {.path = path, .root = root, .err = err};
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(root, "model_type");
    int rc;
    if (!cJSON_IsString(type))
        rc = rt_fail(err, "%s: key 'model_type' is missing or not a string; expected \"llama\" or \"gpt2\"", path);
    else if (strcmp(type->valuestring, "llama") == 0)
        rc = read_llama(&d, cfg);
    else if (strcmp(type->valuestring, "gpt2") == 0)
        rc = read_gpt2(&d, cfg);
    else
        rc = rt_fail(err, "%s: key 'model_type' = '%s' is not supported: ringtrain imports llama and gpt2", path,
                     type->valuestring);
    cJSON_Delete(root);
    if (rc) return -1;
    cfg->padded_vocab = 0;
    /* the model's checks only: the run's train.seq_len meets max_seq_len where a run starts (rt_config_validate),
     * and export, inspect and sample have no sequence length */
    rt_config model_only = *cfg;
    model_only.seq_len = 1;
    rt_error inner;
    if (rt_config_validate_model(&model_only, &inner))
        return rt_fail(err, "%s: describes no model ringtrain runs: %s", path, inner.msg);
    return 0;
}

int rt_config_from_hf(rt_config *cfg, const char *dir, rt_error *err) {
    char path[RT_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/config.json", dir);
    char *text = read_text(path, err);
    if (!text) return -1;
    int rc = rt_config_from_hf_text(cfg, text, path, err);
    free(text);
    return rc;
}

static void add_int(cJSON *obj, const char *key, long long value) { cJSON_AddNumberToObject(obj, key, (double)value); }

/* A float as the shortest decimal that reads back as the same float: 1e-06, not the 9.99999997e-07 its
 * double widening would print as. */
static void add_float(cJSON *obj, const char *key, float value) {
    char text[32];
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(text, sizeof text, "%.*g", digits, (double)value);
        if (strtof(text, NULL) == value) break;
    }
    cJSON_AddNumberToObject(obj, key, strtod(text, NULL));
}

char *rt_hf_config_json(const rt_config *cfg, rt_st_dtype dtype) {
    rt_model_shape s = rt_model_shape_from_config(cfg);
    cJSON *root = cJSON_CreateObject();
    cJSON *arch = cJSON_AddArrayToObject(root, "architectures");
    const char *dtype_name = dtype == RT_ST_BF16 ? "bfloat16" : dtype == RT_ST_F16 ? "float16" : "float32";
    if (s.family == RT_FAMILY_LLAMA) {
        cJSON_AddItemToArray(arch, cJSON_CreateString("LlamaForCausalLM"));
        cJSON_AddStringToObject(root, "model_type", "llama");
        add_int(root, "hidden_size", s.d_model);
        add_int(root, "intermediate_size", s.d_ff);
        add_int(root, "num_hidden_layers", s.n_layers);
        add_int(root, "num_attention_heads", s.n_heads);
        add_int(root, "num_key_value_heads", s.n_kv_heads);
        add_int(root, "head_dim", s.head_dim);
        add_int(root, "vocab_size", s.vocab_size);
        add_int(root, "max_position_embeddings", s.max_seq_len);
        add_float(root, "rms_norm_eps", s.norm_eps);
        cJSON_AddStringToObject(root, "hidden_act", "silu");
        cJSON_AddBoolToObject(root, "attention_bias", 0);
        cJSON_AddBoolToObject(root, "mlp_bias", 0);
        add_float(root, "attention_dropout", s.dropout);
        add_float(root, "rope_theta", s.rope_theta);
        cJSON *rope = cJSON_AddObjectToObject(root, "rope_parameters");
        cJSON_AddStringToObject(rope, "rope_type", "default");
        add_float(rope, "rope_theta", s.rope_theta);
        cJSON_AddBoolToObject(root, "tie_word_embeddings", rt_shape_tied(&s));
    } else {
        cJSON_AddItemToArray(arch, cJSON_CreateString("GPT2LMHeadModel"));
        cJSON_AddStringToObject(root, "model_type", "gpt2");
        add_int(root, "n_embd", s.d_model);
        add_int(root, "n_layer", s.n_layers);
        add_int(root, "n_head", s.n_heads);
        add_int(root, "n_inner", s.d_ff);
        add_int(root, "vocab_size", s.vocab_size);
        add_int(root, "n_positions", s.max_seq_len);
        add_float(root, "layer_norm_epsilon", s.norm_eps);
        cJSON_AddStringToObject(root, "activation_function", "gelu_new");
        add_float(root, "attn_pdrop", s.dropout);
        add_float(root, "embd_pdrop", s.dropout);
        add_float(root, "resid_pdrop", s.dropout);
        cJSON_AddBoolToObject(root, "scale_attn_weights", 1);
        cJSON_AddBoolToObject(root, "tie_word_embeddings", 1);
    }
    cJSON_AddStringToObject(root, "dtype", dtype_name);
    cJSON_AddStringToObject(root, "torch_dtype", dtype_name);
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) rt_fatal("out of memory printing config.json");
    return text;
}
