/* bpe_tokenizer.h: a Hugging Face byte-level BPE tokenizer (the `tokenizers` library's tokenizer.json). */
#ifndef RT_BPE_TOKENIZER_H
#define RT_BPE_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/common.h"

/*
 * Supported (anything else is refused in one line naming the file and the JSON field):
 *   model: type "BPE", vocab, merges ("a b" strings or [a, b] pairs), ignore_merges, unk_token, fuse_unk;
 *          dropout, continuing_subword_prefix and end_of_word_suffix null, byte_fallback false
 *   normalizer: null
 *   pre_tokenizer: ByteLevel (add_prefix_space, use_regex with GPT-2's pattern), or a Sequence of Split
 *          (Regex or String pattern, behavior Isolated, invert false) ending in one ByteLevel
 *   decoder: ByteLevel or null (ids decode through the byte-level table either way)
 *   added_tokens: content, id, special, normalized; lstrip, rstrip and single_word false
 *   post_processor, truncation and padding: ignored (prepare encodes whole documents as raw text, as
 *          encode(text, add_special_tokens=False) does)
 * Input text must be valid UTF-8 (a Python str never holds anything else): encode refuses the first
 * invalid byte, naming its offset.
 */
typedef struct rt_bpe_tokenizer rt_bpe_tokenizer;

/* A growable id array; zero-initialize, rt_bpe_ids_free when done. */
typedef struct {
    uint32_t *ids;
    size_t n, cap;
} rt_bpe_ids;

rt_bpe_tokenizer *rt_bpe_load(const char *path, rt_error *err);
/* json: len bytes (not NUL-terminated); origin names it in messages. */
rt_bpe_tokenizer *rt_bpe_load_text(const char *json, size_t len, const char *origin, rt_error *err);
void rt_bpe_free(rt_bpe_tokenizer *tok);

/* Appends the ids of text to out. Not thread-safe: the tokenizer caches words. */
int rt_bpe_encode(rt_bpe_tokenizer *tok, const char *text, size_t len, rt_bpe_ids *out, rt_error *err);
void rt_bpe_ids_free(rt_bpe_ids *ids);
/* Calls fn(ctx, bytes) with the count of text bytes encoded so far (over every call) after each MiB or so, so a
 * long encode can show progress; fn NULL stops it. */
void rt_bpe_set_progress(rt_bpe_tokenizer *tok, void (*fn)(void *ctx, uint64_t bytes), void *ctx);

/* The bytes one id decodes to (an added token's content, or a vocabulary entry through the byte-level
 * table); NULL for an id that names nothing. */
const char *rt_bpe_token_bytes(const rt_bpe_tokenizer *tok, uint32_t id, size_t *len);
/* Decodes n ids into a malloc'd buffer (*out, *out_len; NUL-terminated for convenience). An id that names
 * nothing is an error naming its position. */
int rt_bpe_decode(const rt_bpe_tokenizer *tok, const uint32_t *ids, size_t n, char **out, size_t *out_len,
                  rt_error *err);

/* Largest id over the vocabulary and the added tokens, plus one. */
int rt_bpe_vocab_size(const rt_bpe_tokenizer *tok);
/* The id of an added token with this content, else of the vocabulary entry; -1 when neither exists. */
int64_t rt_bpe_token_id(const rt_bpe_tokenizer *tok, const char *content);
/* The id of a special added token with this content; -1 when there is none. */
int64_t rt_bpe_special_id(const rt_bpe_tokenizer *tok, const char *content);
/* 64-bit FNV-1a of the tokenizer.json bytes it was loaded from. */
uint64_t rt_bpe_content_hash(const rt_bpe_tokenizer *tok);
uint64_t rt_bpe_fnv1a(const void *data, size_t len);

/* The tokenizer a token file recorded (prepare --tokenizer), loaded: 1 + *tok (and its path) when one is
 * recorded and the file there still has the recorded content; 0 when none is recorded (or the token file does
 * not open); -1 + why when one is recorded but is missing, unreadable or changed since. */
int rt_bpe_load_recorded(const char *token_file, rt_bpe_tokenizer **tok, char *path, size_t cap, rt_error *why);

#endif
