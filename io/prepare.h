/* prepare.h: the logic behind `ringtrain prepare`: text files or llm.c token shards -> ringtrain token files. */
#ifndef RT_PREPARE_H
#define RT_PREPARE_H

#include <stddef.h>
#include <stdio.h>

#include "runtime/core/common.h"

/*
 * Text: byte-level tokens (vocab 256, token = byte) of the input files
 * concatenated in order, with a '\n' inserted before a file when the bytes so
 * far do not end with one. When out_val is not NULL, the last val_fraction of
 * the bytes (floor(val_fraction * total)) goes to out_val and the rest to
 * out_train; both must be non-empty. When out_val is NULL, val_fraction is
 * ignored and everything goes to out_train.
 * Outputs are written atomically; on any error no output of this call is left
 * behind (a train file written before a failing val write is removed).
 * Prints nothing.
 */
int rt_prepare_text(const char *const *inputs, int n_inputs, const char *out_train, const char *out_val,
                    double val_fraction, rt_error *err);
/* Same, and reports the token counts written (either pointer may be NULL; n_val is 0 without out_val). */
int rt_prepare_text_counted(const char *const *inputs, int n_inputs, const char *out_train, const char *out_val,
                            double val_fraction, size_t *n_train, size_t *n_val, rt_error *err);

/*
 * Hugging Face tokenizer: each input file encoded with the tokenizer.json at tokenizer_path (io/bpe_tokenizer.h),
 * the end-of-document id between files: separator's id when given (an added token or a vocabulary entry), else
 * the special added token <|endoftext|>, else <|end_of_text|>; without any of them it is an error asking for
 * one. Tokens are uint16 when the tokenizer's vocab_size <= 65536, else uint32; the header records the
 * tokenizer's absolute path, content hash and the separator (io/tokens.h). The split is by tokens: val = the last
 * floor(val_fraction * total) tokens. progress (may be NULL) gets a line of megabytes done every few seconds.
 * Outputs are atomic as for text.
 */
int rt_prepare_tokenized(const char *tokenizer_path, const char *separator, const char *const *inputs, int n_inputs,
                         const char *out_train, const char *out_val, double val_fraction, FILE *progress,
                         size_t *n_train, size_t *n_val, rt_error *err);

/* llm.c token shard (magic 20240520) -> ringtrain token file with vocab 50257, atomically. A token >= 50257 is
 * an error naming its offset. */
int rt_prepare_llmc(const char *input_shard, const char *out_path, rt_error *err);
/* Same, and reports the token count written (may be NULL). */
int rt_prepare_llmc_counted(const char *input_shard, const char *out_path, size_t *n_tokens, rt_error *err);

#endif
