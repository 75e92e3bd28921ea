/* config.h: the run configuration (INI keys: docs/operations.md), presets, validation, resolved output. */
#ifndef RT_CONFIG_H
#define RT_CONFIG_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "runtime/core/common.h"

#define RT_PATH_LEN 1024

typedef enum { RT_FAMILY_LLAMA = 0, RT_FAMILY_GPT2 } rt_family;
typedef enum { RT_ACT_KEEP = 0, RT_ACT_RECOMPUTE, RT_ACT_OFFLOAD } rt_activation_mode;
/* balanced: each packed window split by its documents' attention work (seqpar/doc_layout.h); zigzag: always the
 * zigzag chunks */
enum { RT_DOC_LAYOUT_BALANCED = 0, RT_DOC_LAYOUT_ZIGZAG };
typedef enum { RT_DEVICE_CPU = 0, RT_DEVICE_CUDA } rt_device_kind;

typedef struct {
    /* [model] */
    char preset[32];
    rt_family family;
    int n_layers, d_model, n_heads, n_kv_heads, d_ff, vocab_size, max_seq_len;
    int head_dim;       /* 0 = d_model / n_heads */
    int tie_embeddings; /* 1: the LM head is wte (always for gpt2) */
    int padded_vocab;   /* rows of the embedding and logits; 0 = vocab_size rounded up to a multiple of 128 */
    float dropout;
    float rope_theta; /* llama only */
    float norm_eps;
    char init_from[RT_PATH_LEN]; /* "" = random init */
    /* [train] */
    int steps, batch_size, seq_len, grad_accum;
    float lr, min_lr;
    int warmup_steps;
    float weight_decay, grad_clip, adam_beta1, adam_beta2, adam_eps;
    uint64_t seed;
    int val_every, val_steps; /* val_every 0 = no validation */
    int log_every;
    /* [data] */
    char data_train[RT_PATH_LEN], data_val[RT_PATH_LEN];
    float val_fraction; /* held out of train when data.val is empty */
    /* Packed documents: the id that separates documents, -1 for none. Unless set explicitly, a run takes both from
     * data.train's header (rt_config_is_explicit), where prepare recorded them. */
    int document_separator;
    int separator_starts_document; /* 1: the separator is a document's first token (llm.c); 0: its last */
    /* [parallel] */
    int sp, dp;
    int document_layout; /* RT_DOC_LAYOUT_*: how packed windows split over the sp ranks */
    /* [zero] */
    int zero_stage;
    /* [activations] */
    rt_activation_mode activation_mode;
    int mlp_tile_mib; /* MiB the MLP's per-tile intermediates may take; 0 = untiled (see rt_config_mlp_tile) */
    /* [offload] */
    int offload_max_inflight;
    /* [device] */
    rt_device_kind device_kind;
    size_t memory_limit; /* bytes, 0 = none */
    /* [checkpoint] */
    char checkpoint_dir[RT_PATH_LEN];      /* "" = <run_dir>/checkpoints */
    int checkpoint_every, checkpoint_keep; /* every 0 = no periodic checkpoints; keep >= 1 newest files */
    char checkpoint_resume[RT_PATH_LEN];   /* "none", "auto" or a file */
    /* [run] */
    char run_dir[RT_PATH_LEN];
    /* Bookkeeping, not part of the run (rt_config_write leaves it out): bit i is set when key i of the
     * config table was given by a file or --set rather than by defaults or a preset. Read it with
     * rt_config_is_explicit. */
    uint64_t explicit_keys;
} rt_config;

/* Defaults: preset "tiny" plus the train/data/... defaults listed in docs/operations.md, "Config reference". */
void rt_config_defaults(rt_config *cfg);

/* Applies the model shape of a named preset (tiny, small, gpt2-124m, ...). -1 + err for an unknown name. */
int rt_config_apply_preset(rt_config *cfg, const char *preset, rt_error *err);

/*
 * Loads an INI file on top of cfg, then applies "section.key=value" overrides
 * in order. model.preset is applied first wherever it appears, so explicit
 * model keys win over the preset. Unknown sections/keys, values of the wrong
 * type and out-of-range values fail with one message naming the file (or
 * --set), the key, the value and what was expected.
 */
int rt_config_load(rt_config *cfg, const char *path, const char *const *overrides, int n_overrides, rt_error *err);

/* As rt_config_load, from INI text in memory (a config stored in a model file); origin names it in errors. */
int rt_config_load_text(rt_config *cfg, const char *text, const char *origin, rt_error *err);

/* Sets one "section.key" from text, with the same validation. */
int rt_config_set(rt_config *cfg, const char *section, const char *key, const char *value, rt_error *err);

/* Cross-field checks: heads divide d_model, n_kv_heads divides n_heads, seq_len <= max_seq_len,
 * batch_size divisible by dp, min_lr <= lr, ... (rt_config_validate_model first, then the training keys). */
int rt_config_validate(const rt_config *cfg, rt_error *err);

/* The checks a model needs, for a config that comes with a model file (sample): every key in its range
 * (finite floats), a known preset, the shape's cross-field checks (heads divide d_model, padded vocab fits
 * an int, ...) and seq_len <= max_seq_len. Nothing about data, parallelism or checkpoints. */
int rt_config_validate_model(const rt_config *cfg, rt_error *err);

/* Writes the fully resolved config as INI (every key, so the file alone reproduces the run). */
int rt_config_write(const rt_config *cfg, FILE *out);
/* The same as a malloc'd string (the caller frees). */
char *rt_config_to_text(const rt_config *cfg);

const char *rt_family_name(rt_family family);

/* Fills in values that follow from others unless given explicitly (gpt2: n_kv_heads = n_heads,
 * d_ff = 4 * d_model). rt_config_load calls it; call it after rt_config_set for the same result. */
void rt_config_resolve(rt_config *cfg);

/* 1 when section.key was set by a file or --set (not by defaults or a preset), else 0. */
int rt_config_is_explicit(const rt_config *cfg, const char *section, const char *key);

/* Tokens per MLP tile for activations.mlp_tile_mib and local_tokens per micro-batch: the largest tile whose
 * fc, act, d_fc and d_act ((2*FC + 2*F) floats per token) fit in the MiB, at least 1; 0 (untiled) when the key
 * is 0 or the tile would hold every local token. */
size_t rt_config_mlp_tile(const rt_config *cfg, size_t local_tokens);

#endif
