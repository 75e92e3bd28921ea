/* sample.h: text generation from a trained model (`ringtrain sample`). */
#ifndef RT_SAMPLE_H
#define RT_SAMPLE_H

#include <stdint.h>
#include <stdio.h>

#include "runtime/core/common.h"

typedef struct {
    const char *model_path; /* ringtrain model.h5 or checkpoint, or an llm.c GPT-2 .bin */
    const char *prompt;     /* text (byte vocab) or comma-separated token ids (larger vocabs); may be NULL */
    int n_tokens;           /* tokens to generate */
    float temperature;      /* 0 = greedy */
    int top_k;              /* 0 = whole vocabulary */
    uint64_t seed;
} rt_sample_options;

/* Index drawn from logits (V): greedy when temperature is 0, else softmax(logits / temperature) restricted
 * to the top_k largest (0 = all). Overwrites logits. */
int rt_sample_draw(float *logits, int V, float temperature, int top_k, uint64_t *rng);

/* Generates and writes the prompt and the new tokens to out as they come (bytes for a 256-token vocab,
 * ids otherwise). */
int rt_sample(const rt_sample_options *opt, FILE *out, rt_error *err);

#endif
