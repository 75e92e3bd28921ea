/* hf_model.h: Hugging Face model directories (config.json + safetensors) in and out. */
#ifndef RT_HF_MODEL_H
#define RT_HF_MODEL_H

#include <stddef.h>

#include "io/safetensors.h"
#include "param_layout.h"
#include "runtime/config/config.h"

/*
 * A Hugging Face directory holds config.json and either model.safetensors or
 * shards named by model.safetensors.index.json. Two architectures map onto
 * ringtrain's families:
 *   LlamaForCausalLM  -> llama: q, k, v stacked into attn.qkv; gate and up
 *                        stacked into mlp.fc (gate first); q and k rows
 *                        permuted per head from Hugging Face's rotate-half
 *                        RoPE (pairs i, i + D/2) to ringtrain's interleaved
 *                        pairs (2i, 2i+1), and back on export.
 *   GPT2LMHeadModel   -> gpt2: Conv1D weights are stored (in, out) and
 *                        transposed to ringtrain's (out, in).
 * The padded vocabulary rows (Vp > V) are zero on import and not exported.
 */

/* 1 when path is a directory (a Hugging Face model directory is one), else 0. */
int rt_hf_is_dir(const char *path);

/* model.init_from = DIR: the architecture keys of cfg (family, shape, head_dim, tie_embeddings, rope_theta,
 * norm_eps) from DIR/config.json. A model_type, activation, RoPE scaling or bias layout ringtrain does not
 * implement is refused in one line naming the file and the key. Training keys (and model.dropout) are the
 * run's own. */
int rt_config_from_hf(rt_config *cfg, const char *dir, rt_error *err);
/* The same from config.json's text; path names it in errors (the fuzz target's entry). */
int rt_config_from_hf_text(rt_config *cfg, const char *text, const char *path, rt_error *err);

/* Every parameter of the table from DIR's safetensors into host (table->total floats): each tensor's shape
 * must match config.json's, every expected tensor must be present and no unexpected one (buffers such as
 * gpt2's attn.bias excepted); values must be finite; bf16 and fp16 widen exactly. */
int rt_hf_read_params(const rt_model_shape *shape, const rt_view_table *table, const char *dir, float *host,
                      rt_error *err);

typedef struct {
    rt_st_dtype dtype;          /* RT_ST_F32 (default) or RT_ST_BF16 */
    size_t shard_bytes;         /* a new shard starts above this many bytes; 0 = one file */
    const char *tokenizer_path; /* copied to DIR/tokenizer.json when not NULL */
} rt_hf_write_options;

/* Where the writer finds each view's values, asked for in table order: view(ctx, v) returns view v's first
 * element (waiting until it is there) or NULL when the source failed; release(ctx, v) (may be NULL) says the
 * writer is done with view v. A whole host buffer is the simplest source; an export streams views through a
 * few reused buffers instead, so its memory is a few tensors, not the model. */
typedef struct {
    const float *(*view)(void *ctx, int v);
    void (*release)(void *ctx, int v);
    void *ctx;
} rt_hf_view_source;

/* Writes DIR (which must not exist) from the views of src: config.json, the safetensors file or shards and
 * their index, tokenizer.json when given. Everything goes into DIR.tmp first, renamed to DIR at the end; on
 * failure nothing is left. */
int rt_hf_write_dir(const rt_config *cfg, const rt_model_shape *shape, const rt_view_table *table,
                    const rt_hf_view_source *src, const char *dir, const rt_hf_write_options *opt, rt_error *err);

/* config.json text for a config (malloc'd; the caller frees). */
char *rt_hf_config_json(const rt_config *cfg, rt_st_dtype dtype);

#endif
