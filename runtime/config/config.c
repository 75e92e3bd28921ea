/*
 * config.c: the run configuration: one table of keys drives INI parsing (libinih), --set overrides,
 * range checks and the resolved INI that rt_config_write emits.
 *
 * The key table (config_keys below) is the single description of every
 * setting: section, key, value type, allowed range and where the value lives
 * in rt_config. Parsing, validation and writing all walk it, so adding a key
 * is one line there plus the field in config.h. The FIELD_* macros check at
 * compile time that the field has the C type the table says it has.
 *
 * Loading happens in three steps, on a copy of the caller's config so that a
 * failed load changes nothing:
 *   1. collect: the INI file is read (libinih, through a line-counting reader
 *      so every message can say file:line) and the overrides are split into
 *      section.key=value; unknown sections and keys fail here.
 *   2. apply: the last model.preset given (file first, then --set) is applied
 *      first, then every other entry in order, so explicit model keys win over
 *      the preset wherever they appear.
 *   3. resolve: values that follow from others (gpt2: n_kv_heads = n_heads,
 *      d_ff = 4 * d_model) are filled in unless given explicitly; the
 *      explicit_keys bit mask remembers which keys a file or --set gave.
 *
 * Every error is one line: where (file:line, or --set), the key, the value
 * found and what was expected.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <float.h>
#include <ini.h>
#include <inttypes.h>
#include <math.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

typedef enum { KEY_INT, KEY_UINT64, KEY_FLOAT, KEY_STRING, KEY_ENUM, KEY_BYTES } key_type;

/* Range flags: the bound itself is not allowed. */
enum { MIN_OPEN = 1, MAX_OPEN = 2 };

typedef struct {
    const char *section, *key;
    key_type type;
    size_t offset, size;      /* the field inside rt_config */
    double min, max;          /* int/float/uint64: value range; string: min length (max is the field size) */
    int flags;                /* MIN_OPEN / MAX_OPEN */
    const char *const *names; /* enum: allowed names, NULL-terminated; the index is the enum value */
} key_spec;

/* offsetof(field), and a compile error unless the field's type is T. */
#define FIELD_AS(field, T) (offsetof(rt_config, field) + 0 * sizeof(_Generic(((rt_config *)0)->field, T : 1)))
#define FIELD_SIZE(field) sizeof(((rt_config *)0)->field)

#define INT_KEY(sec, name, field, lo, hi)                                                                              \
    { sec, name, KEY_INT, FIELD_AS(field, int), FIELD_SIZE(field), lo, hi, 0, NULL }
#define FLOAT_KEY(sec, name, field, lo, hi, flags)                                                                     \
    { sec, name, KEY_FLOAT, FIELD_AS(field, float), FIELD_SIZE(field), lo, hi, flags, NULL }
#define UINT64_KEY(sec, name, field)                                                                                   \
    { sec, name, KEY_UINT64, FIELD_AS(field, uint64_t), FIELD_SIZE(field), 0, 18446744073709551615.0, 0, NULL }
#define BYTES_KEY(sec, name, field)                                                                                    \
    { sec, name, KEY_BYTES, FIELD_AS(field, size_t), FIELD_SIZE(field), 0, 0, 0, NULL }
#define STRING_KEY(sec, name, field, min_len)                                                                          \
    { sec, name, KEY_STRING, FIELD_AS(field, char *), FIELD_SIZE(field), min_len, 0, 0, NULL }
/* Enum fields are stored as int: a compile error unless the field has int's size. */
#define ENUM_FIELD(field) (offsetof(rt_config, field) + 0 * sizeof(char[FIELD_SIZE(field) == sizeof(int) ? 1 : -1]))
#define ENUM_KEY(sec, name, field, allowed)                                                                            \
    { sec, name, KEY_ENUM, ENUM_FIELD(field), sizeof(int), 0, 0, 0, allowed }

static const char *const family_names[] = {"llama", "gpt2", NULL};
static const char *const activation_names[] = {"keep", "recompute", "offload", NULL};
static const char *const document_layout_names[] = {"balanced", "zigzag", NULL};
static const char *const device_names[] = {"cpu", "cuda", NULL};
static const char *const bool_names[] = {"false", "true", NULL};

#define BIG INT32_MAX

/* Grouped by section, in the order rt_config_write emits them. */
static const key_spec config_keys[] = {
    STRING_KEY("model", "preset", preset, 1),
    ENUM_KEY("model", "family", family, family_names),
    INT_KEY("model", "n_layers", n_layers, 1, 4096),
    INT_KEY("model", "d_model", d_model, 1, 1 << 20),
    INT_KEY("model", "n_heads", n_heads, 1, 1 << 16),
    INT_KEY("model", "n_kv_heads", n_kv_heads, 1, 1 << 16),
    INT_KEY("model", "d_ff", d_ff, 1, BIG),
    INT_KEY("model", "vocab_size", vocab_size, 1, BIG),
    INT_KEY("model", "max_seq_len", max_seq_len, 1, BIG),
    INT_KEY("model", "head_dim", head_dim, 0, 1 << 16),
    ENUM_KEY("model", "tie_embeddings", tie_embeddings, bool_names),
    INT_KEY("model", "padded_vocab", padded_vocab, 0, BIG),
    FLOAT_KEY("model", "dropout", dropout, 0, 1, MAX_OPEN),
    FLOAT_KEY("model", "rope_theta", rope_theta, 0, HUGE_VAL, MIN_OPEN),
    FLOAT_KEY("model", "norm_eps", norm_eps, 0, 1, MIN_OPEN),
    STRING_KEY("model", "init_from", init_from, 0),

    INT_KEY("train", "steps", steps, 1, BIG),
    INT_KEY("train", "batch_size", batch_size, 1, BIG),
    INT_KEY("train", "seq_len", seq_len, 1, BIG),
    INT_KEY("train", "grad_accum", grad_accum, 1, BIG),
    FLOAT_KEY("train", "lr", lr, 0, HUGE_VAL, 0),
    FLOAT_KEY("train", "min_lr", min_lr, 0, HUGE_VAL, 0),
    INT_KEY("train", "warmup_steps", warmup_steps, 0, BIG),
    FLOAT_KEY("train", "weight_decay", weight_decay, 0, HUGE_VAL, 0),
    FLOAT_KEY("train", "grad_clip", grad_clip, 0, HUGE_VAL, 0),
    FLOAT_KEY("train", "adam_beta1", adam_beta1, 0, 1, MAX_OPEN),
    FLOAT_KEY("train", "adam_beta2", adam_beta2, 0, 1, MAX_OPEN),
    FLOAT_KEY("train", "adam_eps", adam_eps, 0, 1, MIN_OPEN),
    UINT64_KEY("train", "seed", seed),
    INT_KEY("train", "val_every", val_every, 0, BIG),
    INT_KEY("train", "val_steps", val_steps, 1, BIG),
    INT_KEY("train", "log_every", log_every, 1, BIG),

    STRING_KEY("data", "train", data_train, 0),
    STRING_KEY("data", "val", data_val, 0),
    FLOAT_KEY("data", "val_fraction", val_fraction, 0, 1, MAX_OPEN),
    INT_KEY("data", "document_separator", document_separator, -1, BIG),
    ENUM_KEY("data", "separator_starts_document", separator_starts_document, bool_names),

    INT_KEY("parallel", "sp", sp, 1, 1 << 20),
    INT_KEY("parallel", "dp", dp, 1, 1 << 20),
    ENUM_KEY("parallel", "document_layout", document_layout, document_layout_names),

    INT_KEY("zero", "stage", zero_stage, 0, 3),

    ENUM_KEY("activations", "mode", activation_mode, activation_names),
    INT_KEY("activations", "mlp_tile_mib", mlp_tile_mib, 0, BIG),

    INT_KEY("offload", "max_inflight", offload_max_inflight, 1, 1024),

    ENUM_KEY("device", "kind", device_kind, device_names),
    BYTES_KEY("device", "memory_limit", memory_limit),

    STRING_KEY("checkpoint", "dir", checkpoint_dir, 0),
    INT_KEY("checkpoint", "every", checkpoint_every, 0, BIG),
    INT_KEY("checkpoint", "keep", checkpoint_keep, 1, BIG),
    STRING_KEY("checkpoint", "resume", checkpoint_resume, 1),

    STRING_KEY("run", "dir", run_dir, 1),
};

#define N_KEYS ((int)(sizeof config_keys / sizeof config_keys[0]))
_Static_assert(sizeof config_keys / sizeof config_keys[0] <= 64, "explicit_keys has one bit per key");

typedef struct {
    const char *name;
    rt_family family;
    int n_layers, d_model, n_heads, n_kv_heads, d_ff, vocab_size, max_seq_len;
} preset_spec;

static const preset_spec presets[] = {
    {"tiny", RT_FAMILY_LLAMA, 2, 64, 4, 2, 128, 256, 256},
    {"small", RT_FAMILY_LLAMA, 4, 256, 8, 4, 688, 256, 1024},
    {"gpt2-124m", RT_FAMILY_GPT2, 12, 768, 12, 12, 3072, 50257, 1024},
    {"llama-336m", RT_FAMILY_LLAMA, 24, 1024, 16, 4, 2816, 32000, 32768},
};

#define N_PRESETS ((int)(sizeof presets / sizeof presets[0]))

/* The keys a preset sets; applying one makes them non-explicit again. */
static const char *const preset_keys[] = {"family",     "n_layers", "d_model",    "n_heads",
                                          "n_kv_heads", "d_ff",     "vocab_size", "max_seq_len"};

/* ---- table lookups ---- */

static int find_key(const char *section, const char *key) {
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0 && strcmp(config_keys[i].key, key) == 0) return i;
    return -1;
}

static bool section_known(const char *section) {
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0) return true;
    return false;
}

static uint64_t key_bit(const char *section, const char *key) {
    int index = find_key(section, key);
    if (index < 0) rt_fatal("config: no key %s.%s in the table", section, key);
    return 1ULL << index;
}

static const preset_spec *find_preset(const char *name) {
    for (int i = 0; i < N_PRESETS; i++)
        if (strcmp(presets[i].name, name) == 0) return &presets[i];
    return NULL;
}

static void *field_ptr(rt_config *cfg, const key_spec *spec) { return (char *)cfg + spec->offset; }
static const void *field_cptr(const rt_config *cfg, const key_spec *spec) { return (const char *)cfg + spec->offset; }

/* Optimal string alignment distance (edits and swaps of neighbours), for did-you-mean hints. */
static int edit_distance(const char *a, const char *b) {
    enum { MAX_LEN = 64 };
    size_t len_a = strlen(a), len_b = strlen(b);
    if (len_a >= MAX_LEN || len_b >= MAX_LEN) return 1000;
    int d[MAX_LEN][MAX_LEN];
    for (size_t i = 0; i <= len_a; i++)
        d[i][0] = (int)i;
    for (size_t j = 0; j <= len_b; j++)
        d[0][j] = (int)j;
    for (size_t i = 1; i <= len_a; i++) {
        for (size_t j = 1; j <= len_b; j++) {
            int cost = a[i - 1] == b[j - 1] ? 0 : 1;
            int best = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < best) best = d[i][j - 1] + 1;
            if (d[i - 1][j - 1] + cost < best) best = d[i - 1][j - 1] + cost;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] && d[i - 2][j - 2] + 1 < best)
                best = d[i - 2][j - 2] + 1;
            d[i][j] = best;
        }
    }
    return d[len_a][len_b];
}

/* Appends printf output to buf (of size cap) at *used; never overflows, truncates quietly. */
static void append(char *buf, size_t cap, size_t *used, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void append(char *buf, size_t cap, size_t *used, const char *fmt, ...) {
    if (*used >= cap) return;
    va_list args;
    va_start(args, fmt);
    int written = vsnprintf(buf + *used, cap - *used, fmt, args);
    va_end(args);
    if (written > 0) *used = *used + (size_t)written < cap ? *used + (size_t)written : cap;
}

/* "where: unknown section [x] (did you mean [y]?); sections are ..." */
static int fail_unknown_section(rt_error *err, const char *where, const char *section) {
    char hint[512];
    size_t used = 0;
    hint[0] = '\0';
    const char *best = NULL;
    int best_distance = 3;
    for (int i = 0; i < N_KEYS; i++) {
        if (i > 0 && strcmp(config_keys[i].section, config_keys[i - 1].section) == 0) continue;
        int distance = edit_distance(section, config_keys[i].section);
        if (distance < best_distance) best_distance = distance, best = config_keys[i].section;
    }
    if (best) append(hint, sizeof hint, &used, " (did you mean [%s]?)", best);
    append(hint, sizeof hint, &used, "; sections are");
    for (int i = 0; i < N_KEYS; i++)
        if (i == 0 || strcmp(config_keys[i].section, config_keys[i - 1].section) != 0)
            append(hint, sizeof hint, &used, "%s [%s]", i == 0 ? "" : ",", config_keys[i].section);
    return rt_fail(err, "%s: unknown section [%s]%s", where, section, hint);
}

/* "where: unknown key 'x' in [s] (did you mean 'y'?)", or the section the key belongs to. */
static int fail_unknown_key(rt_error *err, const char *where, const char *section, const char *key) {
    const char *best = NULL;
    int best_distance = 3;
    for (int i = 0; i < N_KEYS; i++) {
        if (strcmp(config_keys[i].section, section) != 0) continue;
        int distance = edit_distance(key, config_keys[i].key);
        if (distance < best_distance) best_distance = distance, best = config_keys[i].key;
    }
    if (best) return rt_fail(err, "%s: unknown key '%s' in [%s] (did you mean '%s'?)", where, key, section, best);
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].key, key) == 0)
            return rt_fail(err, "%s: unknown key '%s' in [%s] ('%s' belongs in [%s])", where, key, section, key,
                           config_keys[i].section);
    char keys[512];
    size_t used = 0;
    keys[0] = '\0';
    for (int i = 0; i < N_KEYS; i++)
        if (strcmp(config_keys[i].section, section) == 0)
            append(keys, sizeof keys, &used, "%s%s", used ? ", " : "", config_keys[i].key);
    return rt_fail(err, "%s: unknown key '%s' in [%s]; its keys are %s", where, key, section, keys);
}

static void list_presets(char *out, size_t cap) {
    size_t used = 0;
    out[0] = '\0';
    for (int i = 0; i < N_PRESETS; i++)
        append(out, cap, &used, "%s%s", i ? ", " : "", presets[i].name);
}

/* ---- values ---- */

/* "[lo, hi]", ">= lo", ... describing the allowed range of a numeric key. */
static void describe_range(const key_spec *spec, char *out, size_t cap) {
    bool has_max = spec->type == KEY_FLOAT ? isfinite(spec->max) : spec->max < (double)BIG;
    const char *g = spec->type == KEY_FLOAT ? "%.9g" : "%.0f";
    char lo[32], hi[32];
    snprintf(lo, sizeof lo, g, spec->min);
    snprintf(hi, sizeof hi, g, spec->max);
    if (has_max)
        snprintf(out, cap, "must be in %c%s, %s%c", spec->flags & MIN_OPEN ? '(' : '[', lo, hi,
                 spec->flags & MAX_OPEN ? ')' : ']');
    else
        snprintf(out, cap, "must be %s %s", spec->flags & MIN_OPEN ? ">" : ">=", lo);
}

static bool in_range(const key_spec *spec, double value) {
    if (spec->flags & MIN_OPEN ? value <= spec->min : value < spec->min) return false;
    if (spec->flags & MAX_OPEN ? value >= spec->max : value > spec->max) return false;
    return true;
}

/* A string survives an INI round trip when libinih gives it back unchanged: no control characters, no
 * leading or trailing blanks (stripped), no ';' at the start or after a blank (an inline comment). */
static const char *ini_unsafe_reason(const char *text) {
    size_t len = strlen(text);
    if (len > 0 && (isspace((unsigned char)text[0]) || isspace((unsigned char)text[len - 1])))
        return "leading or trailing blanks would be lost in an INI file";
    for (size_t i = 0; i < len; i++) {
        if (iscntrl((unsigned char)text[i])) return "control characters are not allowed";
        if (text[i] == ';' && (i == 0 || isspace((unsigned char)text[i - 1])))
            return "';' at the start or after a blank starts an INI comment";
    }
    return NULL;
}

/* The longest value that fits one INI line "key = value" (libinih reads INI_MAX_LINE bytes with the newline). */
static size_t ini_value_max(const key_spec *spec) { return (size_t)INI_MAX_LINE - 2 - strlen(spec->key) - 3; }

static int enum_index(const key_spec *spec, const char *text) {
    for (int i = 0; spec->names[i]; i++)
        if (strcasecmp(spec->names[i], text) == 0) return i;
    return -1;
}

/*
 * Parses text as the value of spec and stores it in cfg. keyref names the key
 * for messages ("train.ini:7: [train] lr", "--set train.lr", "train.lr").
 */
static int set_value(rt_config *cfg, const key_spec *spec, const char *text, const char *keyref, rt_error *err) {
    char range[128];
    char *end = NULL;
    switch (spec->type) {
    case KEY_INT: {
        errno = 0;
        long long value = strtoll(text, &end, 10);
        if (end == text || *end != '\0' || isspace((unsigned char)text[0]))
            return rt_fail(err, "%s = '%s': expected an integer", keyref, text);
        describe_range(spec, range, sizeof range);
        if (errno == ERANGE || !in_range(spec, (double)value))
            return rt_fail(err, "%s = '%s': %s%s", keyref, text, range,
                           errno == ERANGE || value > INT32_MAX || value < INT32_MIN ? " (integer overflow)" : "");
        *(int *)field_ptr(cfg, spec) = (int)value;
        return 0;
    }
    case KEY_UINT64: {
        errno = 0;
        unsigned long long value = strtoull(text, &end, 10);
        if (!isdigit((unsigned char)text[0]) || *end != '\0')
            return rt_fail(err, "%s = '%s': expected an unsigned integer", keyref, text);
        if (errno == ERANGE)
            return rt_fail(err, "%s = '%s': must be <= %" PRIu64 " (integer overflow)", keyref, text, UINT64_MAX);
        *(uint64_t *)field_ptr(cfg, spec) = (uint64_t)value;
        return 0;
    }
    case KEY_FLOAT: {
        errno = 0;
        double value = strtod(text, &end);
        if (end == text || *end != '\0' || isspace((unsigned char)text[0]))
            return rt_fail(err, "%s = '%s': expected a number", keyref, text);
        if (isnan(value) || isinf(value)) return rt_fail(err, "%s = '%s': expected a finite number", keyref, text);
        if (fabs(value) > FLT_MAX)
            return rt_fail(err, "%s = '%s': out of range for a 32-bit float (|x| <= %g)", keyref, text, FLT_MAX);
        describe_range(spec, range, sizeof range);
        if (!in_range(spec, value) || !in_range(spec, (double)(float)value))
            return rt_fail(err, "%s = '%s': %s", keyref, text, range);
        *(float *)field_ptr(cfg, spec) = (float)value;
        return 0;
    }
    case KEY_BYTES: {
        size_t value = 0;
        if (rt_parse_bytes(text, &value) != 0)
            return rt_fail(err, "%s = '%s': expected a byte count such as 0 (no limit), 512M or 4G", keyref, text);
        *(size_t *)field_ptr(cfg, spec) = value;
        return 0;
    }
    case KEY_ENUM: {
        int index = enum_index(spec, text);
        if (index < 0) {
            char allowed[256];
            size_t used = 0;
            allowed[0] = '\0';
            for (int i = 0; spec->names[i]; i++)
                append(allowed, sizeof allowed, &used, "%s%s", i ? ", " : "", spec->names[i]);
            return rt_fail(err, "%s = '%s': expected one of %s", keyref, text, allowed);
        }
        *(int *)field_ptr(cfg, spec) = index;
        return 0;
    }
    case KEY_STRING: {
        size_t len = strlen(text), max_len = ini_value_max(spec);
        if (max_len > spec->size - 1) max_len = spec->size - 1;
        if (len < (size_t)spec->min) return rt_fail(err, "%s = '%s': must not be empty", keyref, text);
        if (len > max_len)
            return rt_fail(err, "%s = '%.40s...': too long (%zu characters, at most %zu)", keyref, text, len, max_len);
        const char *reason = ini_unsafe_reason(text);
        if (reason) return rt_fail(err, "%s = '%s': %s", keyref, text, reason);
        char *field = field_ptr(cfg, spec);
        memset(field, 0, spec->size); /* zero the tail too, so equal configs compare equal bytewise */
        memcpy(field, text, len);
        return 0;
    }
    }
    rt_fatal("config: bad key type %d", (int)spec->type);
}

static void set_string(char *field, size_t size, const char *text) {
    memset(field, 0, size);
    size_t len = strlen(text);
    memcpy(field, text, len < size ? len : size - 1);
}

static void apply_preset(rt_config *cfg, const preset_spec *preset) {
    set_string(cfg->preset, sizeof cfg->preset, preset->name);
    cfg->family = preset->family;
    cfg->n_layers = preset->n_layers;
    cfg->d_model = preset->d_model;
    cfg->n_heads = preset->n_heads;
    cfg->n_kv_heads = preset->n_kv_heads;
    cfg->d_ff = preset->d_ff;
    cfg->vocab_size = preset->vocab_size;
    cfg->max_seq_len = preset->max_seq_len;
    for (size_t i = 0; i < sizeof preset_keys / sizeof preset_keys[0]; i++)
        cfg->explicit_keys &= ~key_bit("model", preset_keys[i]);
}

/* Sets one key (model.preset included) and marks it explicit; keyref as for set_value. */
static int set_key(rt_config *cfg, int index, const char *value, const char *keyref, rt_error *err) {
    const key_spec *spec = &config_keys[index];
    if (spec == &config_keys[find_key("model", "preset")]) {
        const preset_spec *preset = find_preset(value);
        if (!preset) {
            char known[256];
            list_presets(known, sizeof known);
            return rt_fail(err, "%s = '%s': unknown preset; known presets are %s", keyref, value, known);
        }
        apply_preset(cfg, preset);
    } else if (set_value(cfg, spec, value, keyref, err) != 0) {
        return -1;
    }
    cfg->explicit_keys |= 1ULL << index;
    return 0;
}

/* ---- public: defaults, presets, set ---- */

void rt_config_defaults(rt_config *cfg) {
    memset(cfg, 0, sizeof *cfg);
    apply_preset(cfg, find_preset("tiny"));
    cfg->dropout = 0.0f;
    cfg->rope_theta = 10000.0f;
    cfg->norm_eps = 1e-5f;
    cfg->steps = 100;
    cfg->batch_size = 4;
    cfg->seq_len = 128;
    cfg->grad_accum = 1;
    cfg->lr = 1e-3f;
    cfg->min_lr = 1e-4f;
    cfg->warmup_steps = 10;
    cfg->weight_decay = 0.1f;
    cfg->grad_clip = 1.0f;
    cfg->adam_beta1 = 0.9f;
    cfg->adam_beta2 = 0.95f;
    cfg->adam_eps = 1e-8f;
    cfg->seed = 1337;
    cfg->val_every = 0;
    cfg->val_steps = 4;
    cfg->log_every = 1;
    cfg->val_fraction = 0.05f;
    cfg->document_separator = -1;
    cfg->sp = 1;
    cfg->dp = 1;
    cfg->zero_stage = 0;
    cfg->activation_mode = RT_ACT_KEEP;
    cfg->mlp_tile_mib = 0;
    cfg->offload_max_inflight = 1; /* one copy in flight hides behind a layer; each more costs a layer input */
    cfg->device_kind = RT_DEVICE_CPU;
    cfg->memory_limit = 0;
    cfg->checkpoint_every = 1000;
    cfg->checkpoint_keep = 2;
    set_string(cfg->checkpoint_resume, sizeof cfg->checkpoint_resume, "none");
    set_string(cfg->run_dir, sizeof cfg->run_dir, "runs/latest");
    cfg->explicit_keys = 0;
}

int rt_config_apply_preset(rt_config *cfg, const char *preset, rt_error *err) {
    const preset_spec *found = find_preset(preset);
    if (!found) {
        char known[256];
        list_presets(known, sizeof known);
        return rt_fail(err, "unknown preset '%s'; known presets are %s", preset, known);
    }
    apply_preset(cfg, found);
    return 0;
}

int rt_config_set(rt_config *cfg, const char *section, const char *key, const char *value, rt_error *err) {
    char where[256];
    snprintf(where, sizeof where, "%s.%s=%s", section, key, value);
    if (!section_known(section)) return fail_unknown_section(err, where, section);
    int index = find_key(section, key);
    if (index < 0) return fail_unknown_key(err, where, section, key);
    snprintf(where, sizeof where, "%s.%s", section, key);
    return set_key(cfg, index, value, where, err);
}

const char *rt_family_name(rt_family family) {
    switch (family) {
    case RT_FAMILY_LLAMA: return "llama";
    case RT_FAMILY_GPT2: return "gpt2";
    }
    return "unknown";
}

void rt_config_resolve(rt_config *cfg) {
    if (cfg->family == RT_FAMILY_GPT2) {
        if (!(cfg->explicit_keys & key_bit("model", "tie_embeddings"))) cfg->tie_embeddings = 1;
        if (!(cfg->explicit_keys & key_bit("model", "n_kv_heads"))) cfg->n_kv_heads = cfg->n_heads;
        if (!(cfg->explicit_keys & key_bit("model", "d_ff")) && cfg->d_model <= BIG / 4) cfg->d_ff = 4 * cfg->d_model;
    }
}

int rt_config_is_explicit(const rt_config *cfg, const char *section, const char *key) {
    int index = find_key(section, key);
    return index >= 0 && (cfg->explicit_keys >> index) & 1;
}

size_t rt_config_mlp_tile(const rt_config *cfg, size_t local_tokens) {
    if (cfg->mlp_tile_mib <= 0) return 0;
    /* FC as the model has it (rt_fc_width): llama's fc holds gate and up. */
    const size_t F = (size_t)cfg->d_ff, FC = cfg->family == RT_FAMILY_LLAMA ? 2 * F : F;
    const size_t token_bytes = (2 * FC + 2 * F) * sizeof(float);
    size_t tokens = ((size_t)cfg->mlp_tile_mib << 20) / token_bytes;
    if (tokens < 1) tokens = 1;
    return tokens >= local_tokens ? 0 : tokens;
}

/* ---- load: collect entries from the file and the overrides, then apply ---- */

typedef struct {
    int key;     /* index into config_keys */
    char *value; /* owned copy */
    int line;    /* INI line, 0 for an override */
} pending_entry;

typedef struct {
    const char *path;
    FILE *file;
    int line;               /* lines read so far = the line the handler is looking at */
    char raw[INI_MAX_LINE]; /* the text of that line, for continuation detection */
    int error_line;         /* first line that failed in the handler or reader, 0 if none */
    rt_error *err;
    pending_entry *entries;
    int n_entries, cap_entries;
} ini_state;

static void add_entry(ini_state *state, int key, const char *value, int line) {
    if (state->n_entries == state->cap_entries) {
        int cap = state->cap_entries ? 2 * state->cap_entries : 32;
        pending_entry *grown = malloc_check((size_t)cap * sizeof *grown);
        if (state->n_entries) memcpy(grown, state->entries, (size_t)state->n_entries * sizeof *grown);
        free(state->entries);
        state->entries = grown;
        state->cap_entries = cap;
    }
    size_t len = strlen(value);
    char *copy = malloc_check(len + 1);
    memcpy(copy, value, len + 1);
    state->entries[state->n_entries++] = (pending_entry){key, copy, line};
}

static void free_entries(ini_state *state) {
    for (int i = 0; i < state->n_entries; i++)
        free(state->entries[i].value);
    free(state->entries);
    state->entries = NULL;
    state->n_entries = state->cap_entries = 0;
}

/* fgets that counts lines and refuses lines libinih would split silently. */
static char *read_counted_line(char *str, int num, void *stream) {
    ini_state *state = stream;
    if (state->error_line) return NULL;
    if (!fgets(str, num, state->file)) return NULL;
    state->line++;
    size_t len = strlen(str);
    if (len + 1 == (size_t)num && str[len - 1] != '\n' && !feof(state->file)) {
        state->error_line = state->line;
        rt_fail(state->err, "%s:%d: line '%.40s...' is longer than %d characters (the INI reader's limit)", state->path,
                state->line, str, num - 2);
        return NULL;
    }
    snprintf(state->raw, sizeof state->raw, "%s", str);
    return str;
}

static void trim(char *text) {
    size_t len = strlen(text);
    while (len > 0 && isspace((unsigned char)text[len - 1]))
        text[--len] = '\0';
    size_t start = 0;
    while (isspace((unsigned char)text[start]))
        start++;
    memmove(text, text + start, len - start + 1);
}

static int on_ini_entry(void *user, const char *section, const char *name, const char *value) {
    ini_state *state = user;
    if (state->error_line) return 0;
    char where[RT_PATH_LEN + 32];
    snprintf(where, sizeof where, "%s:%d", state->path, state->line);
    /* libinih reads an indented line after a key as more of that key's value. */
    char raw[INI_MAX_LINE];
    snprintf(raw, sizeof raw, "%s", state->raw);
    trim(raw);
    if (isspace((unsigned char)state->raw[0]) && strcmp(raw, value) == 0) {
        rt_fail(state->err, "%s: indented line '%s' would continue the value of [%s] %s; remove the indentation", where,
                raw, section, name);
    } else if (section[0] == '\0') {
        rt_fail(state->err, "%s: key '%s' comes before any [section]; put it under one, e.g. [model] or [train]", where,
                name);
    } else if (!section_known(section)) {
        fail_unknown_section(state->err, where, section);
    } else {
        int key = find_key(section, name);
        if (key >= 0) {
            add_entry(state, key, value, state->line);
            return 1;
        }
        fail_unknown_key(state->err, where, section, name);
    }
    state->error_line = state->line;
    return 0;
}

/* Reads INI text from state->file (named path in messages) into state->entries; closes the file. */
static int collect_stream(ini_state *state, const char *path, rt_error *err) {
    int rc = ini_parse_stream(read_counted_line, state, on_ini_entry, state);
    int failed = 0;
    if (rc > 0 && (state->error_line == 0 || rc < state->error_line)) {
        /* a syntax error libinih found before any of ours: show that line */
        char text[INI_MAX_LINE] = "";
        rewind(state->file);
        for (int line = 1; line <= rc && fgets(text, sizeof text, state->file); line++) {
        }
        trim(text);
        failed =
            rt_fail(err, "%s:%d: cannot parse '%s': expected [section], key = value or a ; comment", path, rc, text);
    } else if (state->error_line) {
        failed = -1; /* the message is already in err */
    } else if (rc < 0 || ferror(state->file)) {
        failed = rt_fail(err, "cannot read config file '%s': %s", path, rc == -2 ? "out of memory" : strerror(errno));
    }
    fclose(state->file);
    state->file = NULL;
    return failed;
}

/* Reads the INI file into state->entries. Regular files only: O_NONBLOCK so a FIFO is refused, not waited on. */
static int collect_file(ini_state *state, const char *path, rt_error *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return rt_fail(err, "cannot open config file '%s': %s", path, strerror(errno));
    struct stat st;
    const char *refused = NULL;
    if (fstat(fd, &st) != 0)
        refused = strerror(errno);
    else if (!S_ISREG(st.st_mode))
        refused = "not a regular file (a FIFO, device or directory), expected an INI file";
    if (refused) {
        int failed = rt_fail(err, "cannot read config file '%s': %s", path, refused);
        close(fd);
        return failed;
    }
    state->file = fdopen(fd, "r");
    if (!state->file) {
        int failed = rt_fail(err, "cannot open config file '%s': %s", path, strerror(errno));
        close(fd);
        return failed;
    }
    return collect_stream(state, path, err);
}

/* Splits "section.key=value" overrides into state->entries. */
static int collect_override(ini_state *state, const char *text, rt_error *err) {
    const char *equals = strchr(text, '=');
    const char *dot = equals ? memchr(text, '.', (size_t)(equals - text)) : NULL;
    char section[64], key[64], value[RT_PATH_LEN + 1];
    bool ok = equals && dot;
    if (ok) {
        size_t section_len = (size_t)(dot - text), key_len = (size_t)(equals - dot - 1);
        ok = section_len < sizeof section && key_len < sizeof key && strlen(equals + 1) < sizeof value;
        if (ok) {
            snprintf(section, sizeof section, "%.*s", (int)section_len, text);
            snprintf(key, sizeof key, "%.*s", (int)key_len, dot + 1);
            snprintf(value, sizeof value, "%s", equals + 1);
            trim(section);
            trim(key);
            trim(value);
            ok = section[0] && key[0];
        }
    }
    if (!ok) return rt_fail(err, "--set '%s': expected section.key=value, e.g. --set train.lr=3e-4", text);
    char where[RT_PATH_LEN + 16];
    snprintf(where, sizeof where, "--set %s", text);
    if (!section_known(section)) return fail_unknown_section(err, where, section);
    int index = find_key(section, key);
    if (index < 0) return fail_unknown_key(err, where, section, key);
    add_entry(state, index, value, 0);
    return 0;
}

static void entry_keyref(const ini_state *state, const pending_entry *entry, char *out, size_t cap) {
    const key_spec *spec = &config_keys[entry->key];
    if (entry->line > 0)
        snprintf(out, cap, "%s:%d: [%s] %s", state->path, entry->line, spec->section, spec->key);
    else
        snprintf(out, cap, "--set %s.%s", spec->section, spec->key);
}

/* Applies the collected entries to cfg (presets first); rc is the collection's result. Frees the entries. */
static int apply_entries(rt_config *cfg, ini_state *state_ptr, int rc, rt_error *err);

int rt_config_load(rt_config *cfg, const char *path, const char *const *overrides, int n_overrides, rt_error *err) {
    ini_state state = {.path = path, .err = err};
    int rc = 0;
    if (path) rc = collect_file(&state, path, err);
    for (int i = 0; rc == 0 && i < n_overrides; i++)
        rc = collect_override(&state, overrides[i], err);
    return apply_entries(cfg, &state, rc, err);
}

int rt_config_load_text(rt_config *cfg, const char *text, const char *origin, rt_error *err) {
    ini_state state = {.path = origin, .err = err};
    state.file = fmemopen((void *)text, strlen(text), "r");
    if (!state.file) return rt_fail(err, "%s: cannot read the stored config: %s", origin, strerror(errno));
    int rc = collect_stream(&state, origin, err);
    return apply_entries(cfg, &state, rc, err);
}

static int apply_entries(rt_config *cfg, ini_state *state_ptr, int rc, rt_error *err) {
    ini_state state = *state_ptr;

    /* Work on a copy: a failed load leaves the caller's config as it was. */
    rt_config *next = malloc_check(sizeof *next);
    memcpy(next, cfg, sizeof *next);
    char keyref[RT_PATH_LEN + 64];
    int preset_key = find_key("model", "preset");
    /* Presets first, in order (each is checked; the last one given wins), then everything else. */
    for (int i = 0; rc == 0 && i < state.n_entries; i++) {
        if (state.entries[i].key != preset_key) continue;
        entry_keyref(&state, &state.entries[i], keyref, sizeof keyref);
        rc = set_key(next, preset_key, state.entries[i].value, keyref, err);
    }
    for (int i = 0; rc == 0 && i < state.n_entries; i++) {
        if (state.entries[i].key == preset_key) continue;
        entry_keyref(&state, &state.entries[i], keyref, sizeof keyref);
        rc = set_key(next, state.entries[i].key, state.entries[i].value, keyref, err);
    }
    if (rc == 0) {
        rt_config_resolve(next);
        memcpy(cfg, next, sizeof *cfg);
    }
    free(next);
    free_entries(&state);
    return rc;
}

/* ---- validation ---- */

int rt_config_validate_model(const rt_config *cfg, rt_error *err) {
    char range[128];
    for (int i = 0; i < N_KEYS; i++) {
        const key_spec *spec = &config_keys[i];
        const void *field = field_cptr(cfg, spec);
        switch (spec->type) {
        case KEY_INT: {
            int value = *(const int *)field;
            describe_range(spec, range, sizeof range);
            if (!in_range(spec, value)) return rt_fail(err, "%s.%s = %d: %s", spec->section, spec->key, value, range);
            break;
        }
        case KEY_FLOAT: {
            float value = *(const float *)field;
            describe_range(spec, range, sizeof range);
            if (!isfinite(value) || !in_range(spec, value))
                return rt_fail(err, "%s.%s = %g: %s", spec->section, spec->key, (double)value, range);
            break;
        }
        case KEY_ENUM: {
            int value = *(const int *)field, count = 0;
            while (spec->names[count])
                count++;
            if (value < 0 || value >= count)
                return rt_fail(err, "%s.%s = %d: not a valid value", spec->section, spec->key, value);
            break;
        }
        case KEY_STRING: {
            const char *value = field;
            if (memchr(value, '\0', spec->size) == NULL)
                return rt_fail(err, "%s.%s: string is not terminated", spec->section, spec->key);
            if (strlen(value) < (size_t)spec->min)
                return rt_fail(err, "%s.%s must not be empty", spec->section, spec->key);
            break;
        }
        case KEY_UINT64:
        case KEY_BYTES: break;
        }
    }
    if (!find_preset(cfg->preset)) {
        char known[256];
        list_presets(known, sizeof known);
        return rt_fail(err, "model.preset = '%s': unknown preset; known presets are %s", cfg->preset, known);
    }
    if (cfg->padded_vocab != 0 && cfg->padded_vocab < cfg->vocab_size)
        return rt_fail(err, "model.padded_vocab = %d is below model.vocab_size = %d (0 pads to a multiple of 128)",
                       cfg->padded_vocab, cfg->vocab_size);
    if (cfg->padded_vocab == 0 && cfg->vocab_size > BIG / 128 * 128)
        return rt_fail(err,
                       "model.vocab_size = %d: padded to a multiple of 128 it exceeds %d (the largest int); expected "
                       "at most %d",
                       cfg->vocab_size, BIG, BIG / 128 * 128);
    if (cfg->head_dim == 0 && cfg->d_model % cfg->n_heads != 0)
        return rt_fail(err, "model.d_model = %d is not divisible by model.n_heads = %d (or set model.head_dim)",
                       cfg->d_model, cfg->n_heads);
    if (cfg->n_heads % cfg->n_kv_heads != 0)
        return rt_fail(err, "model.n_heads = %d is not divisible by model.n_kv_heads = %d", cfg->n_heads,
                       cfg->n_kv_heads);
    int head_dim = cfg->head_dim ? cfg->head_dim : cfg->d_model / cfg->n_heads;
    if (cfg->family == RT_FAMILY_LLAMA && head_dim % 2 != 0 && cfg->head_dim == 0)
        return rt_fail(err,
                       "model.d_model = %d / model.n_heads = %d gives head_dim %d, which must be even for llama "
                       "(RoPE rotates pairs)",
                       cfg->d_model, cfg->n_heads, head_dim);
    if (cfg->family == RT_FAMILY_LLAMA && head_dim % 2 != 0)
        return rt_fail(err, "model.head_dim = %d must be even for llama (RoPE rotates pairs)", head_dim);
    if (cfg->family == RT_FAMILY_GPT2 && cfg->n_kv_heads != cfg->n_heads)
        return rt_fail(err,
                       "model.family = gpt2 needs model.n_kv_heads = model.n_heads, got n_kv_heads = %d, n_heads = %d",
                       cfg->n_kv_heads, cfg->n_heads);
    if (cfg->family == RT_FAMILY_GPT2 && cfg->head_dim != 0 && (long long)cfg->head_dim * cfg->n_heads != cfg->d_model)
        return rt_fail(err, "model.family = gpt2 needs model.head_dim = d_model / n_heads = %d or 0, got %d",
                       cfg->d_model / cfg->n_heads, cfg->head_dim);
    /* gpt2 always ties (the shape says so whatever the key): only an explicit false is a contradiction */
    if (cfg->family == RT_FAMILY_GPT2 && !cfg->tie_embeddings && rt_config_is_explicit(cfg, "model", "tie_embeddings"))
        return rt_fail(err, "model.family = gpt2 ties its LM head to wte: model.tie_embeddings = false is not "
                            "supported");
    if (cfg->seq_len > cfg->max_seq_len)
        return rt_fail(err, "train.seq_len = %d exceeds model.max_seq_len = %d", cfg->seq_len, cfg->max_seq_len);
    return 0;
}

int rt_config_validate(const rt_config *cfg, rt_error *err) {
    if (rt_config_validate_model(cfg, err) != 0) return -1;
    if (cfg->sp > 1 && cfg->seq_len % (2 * cfg->sp) != 0)
        return rt_fail(err, "train.seq_len = %d must divide into 2 * parallel.sp = %d zigzag chunks", cfg->seq_len,
                       2 * cfg->sp);
    if (cfg->batch_size % cfg->dp != 0)
        return rt_fail(err, "train.batch_size = %d is not divisible by parallel.dp = %d", cfg->batch_size, cfg->dp);
    if (cfg->min_lr > cfg->lr)
        return rt_fail(err, "train.min_lr = %g exceeds train.lr = %g", (double)cfg->min_lr, (double)cfg->lr);
    if (cfg->data_train[0] == '\0')
        return rt_fail(err, "data.train is not set: give a token file (see `ringtrain prepare`)");
    return 0;
}

/* ---- write ---- */

/* The shortest decimal that reads back (as the parser reads it) to exactly value. */
static void format_float(float value, char out[48]) {
    if (value == truncf(value) && fabsf(value) < 1e9f) {
        snprintf(out, 48, "%.0f", (double)value); /* 10000, not 1e+04 */
        return;
    }
    for (int digits = 1; digits <= 9; digits++) {
        snprintf(out, 48, "%.*g", digits, (double)value);
        if ((float)strtod(out, NULL) == value) return;
    }
    snprintf(out, 48, "%a", (double)value);
}

/* A byte count in the largest unit that divides it exactly (4G, 512M, 1000), as rt_parse_bytes reads it. */
static void format_bytes(size_t bytes, char out[32]) {
    static const char units[] = "KMGT";
    int unit = -1;
    while (unit < 3 && bytes != 0 && bytes % ((size_t)1 << (10 * (unit + 2))) == 0)
        unit++;
    if (unit < 0)
        snprintf(out, 32, "%zu", bytes);
    else
        snprintf(out, 32, "%zu%c", bytes >> (10 * (unit + 1)), units[unit]);
}

int rt_config_write(const rt_config *cfg, FILE *out) {
    fprintf(out, "; ringtrain configuration, fully resolved: `ringtrain train --config` reads it back unchanged.\n");
    for (int i = 0; i < N_KEYS; i++) {
        const key_spec *spec = &config_keys[i];
        const void *field = field_cptr(cfg, spec);
        if (i == 0 || strcmp(spec->section, config_keys[i - 1].section) != 0)
            fprintf(out, "%s[%s]\n", i == 0 ? "" : "\n", spec->section);
        fprintf(out, "%s =", spec->key);
        switch (spec->type) {
        case KEY_INT: fprintf(out, " %d\n", *(const int *)field); break;
        case KEY_UINT64: fprintf(out, " %" PRIu64 "\n", *(const uint64_t *)field); break;
        case KEY_BYTES: {
            char text[32];
            format_bytes(*(const size_t *)field, text);
            fprintf(out, " %s\n", text);
            break;
        }
        case KEY_STRING: fprintf(out, "%s%s\n", *(const char *)field ? " " : "", (const char *)field); break;
        case KEY_ENUM: {
            int value = *(const int *)field, count = 0;
            while (spec->names[count])
                count++;
            fprintf(out, " %s\n", value >= 0 && value < count ? spec->names[value] : "?");
            break;
        }
        case KEY_FLOAT: {
            char text[48];
            format_float(*(const float *)field, text);
            fprintf(out, " %s\n", text);
            break;
        }
        }
    }
    return ferror(out) ? -1 : 0;
}

char *rt_config_to_text(const rt_config *cfg) {
    char *text = NULL;
    size_t len = 0;
    FILE *mem = open_memstream(&text, &len);
    if (!mem) rt_fatal("out of host memory formatting the config");
    rt_config_write(cfg, mem);
    fclose(mem);
    return text;
}
