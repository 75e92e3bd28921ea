/* sample.h: text generation from a trained model (`ringtrain sample`). */
#ifndef RT_SAMPLE_H
#define RT_SAMPLE_H

#include <stdint.h>
#include <stdio.h>

#include "runtime/core/common.h"

typedef struct {
    const char *model_path;  /* ringtrain model.h5 or checkpoint, an llm.c GPT-2 .bin, or a Hugging Face directory */
    const char *prompt;      /* text (byte vocab or a tokenizer) or comma-separated token ids; may be NULL */
    const char *prompt_ids;  /* comma-separated token ids, whatever the vocabulary; overrides prompt */
    const char *tokenizer;   /* a tokenizer.json; NULL: the one the run's data.train recorded, if any */
    const char *logits_path; /* NULL, or where each drawn token's float32 logits go (vocab_size per row) */
    int n_tokens;            /* tokens to generate */
    float temperature;       /* 0 = greedy */
    int top_k;               /* 0 = whole vocabulary */
    uint64_t seed;
} rt_sample_options;

/* Index drawn from logits (V): greedy when temperature is 0, else softmax(logits / temperature) restricted
 * to the top_k largest (0 = all). Overwrites logits. */
int rt_sample_draw(float *logits, int V, float temperature, int top_k, uint64_t *rng);

/* Generates and writes the prompt and the new tokens to out as they come: bytes for a 256-token vocab, decoded
 * text with a tokenizer (given, or recorded by the run's training token file with an unchanged hash), ids
 * otherwise. A recorded tokenizer that is missing or changed gives one warning line on stderr, then ids.
 * logits_path gets, atomically, one row of vocab_size little-endian float32 logits per generated token: those
 * it was drawn from. */
int rt_sample(const rt_sample_options *opt, FILE *out, rt_error *err);

#endif
