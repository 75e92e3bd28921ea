/* tokens.h: token files (ringtrain's own format and llm.c shards, told apart by magic) and the byte tokenizer. */
#ifndef RT_TOKENS_H
#define RT_TOKENS_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/common.h"

/*
 * ringtrain token file: a 1024-byte header of little-endian int32 fields
 *   [0] magic 20261122  [1] version 1  [2] vocab_size  [3] bytes per token (2 or 4)
 *   [4] n_tokens low 32 bits  [5] n_tokens high 32 bits
 *   [6] 1 when a tokenizer.json is recorded, else 0  [7] document separator id + 1 (0: none)
 *   [8] [9] the tokenizer.json's 64-bit FNV-1a hash, low and high 32 bits
 *   [10] where the separator stands: 1 last token of a document, 2 first token, 0 not recorded  [11..127] zero
 *   bytes [512, 1024): the tokenizer.json's absolute path, NUL-terminated (all zero when none is recorded)
 * followed by n_tokens tokens (uint16 or uint32). Byte-level files (no tokenizer) have [6..255] zero.
 * llm.c shard: int32[256] header, magic 20240520, version 1, [2] = n_tokens,
 * then uint16 tokens (vocab is not stored: GPT-2's 50257 is assumed).
 */
#define RT_TOKENS_MAGIC 20261122
#define RT_TOKENS_VERSION 1
#define RT_LLMC_SHARD_MAGIC 20240520
#define RT_TOKENS_HEADER_BYTES 1024
#define RT_TOKENS_TOKENIZER_PATH_OFFSET 512
#define RT_TOKENS_TOKENIZER_PATH_MAX (RT_TOKENS_HEADER_BYTES - RT_TOKENS_TOKENIZER_PATH_OFFSET)

typedef struct {
    char path[1024];
    int vocab_size;
    int bytes_per_token; /* 2 or 4 */
    int is_llmc;
    size_t n_tokens;
    void *map; /* whole file mapped read-only */
    size_t map_bytes;
    const unsigned char *tokens; /* first token */
    int has_tokenizer;
    uint64_t tokenizer_hash;
    int64_t separator_id;          /* -1: none */
    int separator_starts_document; /* 1: first token of a document, 0: last, -1: not recorded */
    char tokenizer_path[RT_TOKENS_TOKENIZER_PATH_MAX];
} rt_token_file;

/* What a token file records of the tokenizer that wrote it. */
typedef struct {
    const char *path; /* absolute, shorter than RT_TOKENS_TOKENIZER_PATH_MAX */
    uint64_t hash;
    int64_t separator_id;          /* -1: none */
    int separator_starts_document; /* 1: the separator is a document's first token, 0: its last */
} rt_tokens_tokenizer_record;

/* Opens and validates (magic, version, size matches header, every token < vocab is checked lazily by the
 * loader). Errors name the path and what is wrong. */
int rt_tokens_open(rt_token_file *tf, const char *path, rt_error *err);
void rt_tokens_close(rt_token_file *tf);
static inline uint32_t rt_tokens_get(const rt_token_file *tf, size_t i) {
    if (tf->bytes_per_token == 2) return ((const uint16_t *)(const void *)tf->tokens)[i];
    return ((const uint32_t *)(const void *)tf->tokens)[i];
}

/* Checks every token is below the file's vocab_size; the error names the file, the offset and the value.
 * One pass over the mapping. */
int rt_tokens_validate(const rt_token_file *tf, rt_error *err);

/* Checks that the tokens [first, first+count) (clipped to the file) are below the file's vocab_size; the
 * error names the file, the first bad offset and its value, as rt_tokens_validate does. The trainer checks
 * one share per rank at start-up (rt_tokens_share over the world), so a corrupt file fails before any work
 * and the job reads each file once in all, not once per rank. */
int rt_tokens_validate_range(const rt_token_file *tf, size_t first, size_t count, rt_error *err);

/* Share `part` of `parts` (0 <= part < parts) of n items: [*first, *first + *count), the first n % parts
 * shares one item longer. The shares tile [0, n) in order, so the lowest rank that finds a bad token holds
 * the file's first one, and its message is the one a single rank would print. */
void rt_tokens_share(size_t n, int part, int parts, size_t *first, size_t *count);

/* Writes a token file atomically (path.tmp, then rename); no partial file on failure. */
int rt_tokens_write(const char *path, const uint32_t *tokens, size_t n_tokens, int vocab_size, rt_error *err);
/* Same, recording the tokenizer (record NULL: as rt_tokens_write). A path too long for the header is refused. */
int rt_tokens_write_recorded(const char *path, const uint32_t *tokens, size_t n_tokens, int vocab_size,
                             const rt_tokens_tokenizer_record *record, rt_error *err);
/* Returns 1 and copies the recorded tokenizer.json path (into path, cap bytes; truncated to fit) and hash
 * when the file records one, else 0. */
int rt_tokens_tokenizer(const rt_token_file *tf, char *path, size_t cap, uint64_t *hash);

/* Byte-level tokenizer: vocab 256, token = byte. */
#define RT_BYTE_VOCAB 256
/* Appends the text of one token to out (returns bytes written, at most out_len). */
size_t rt_byte_decode(uint32_t token, char *out, size_t out_len);

#endif
