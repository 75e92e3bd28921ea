/* llmc_model.h: read and write llm.c's fp32 GPT-2 model file (gpt2_124M.bin layout). */
#ifndef RT_LLMC_MODEL_H
#define RT_LLMC_MODEL_H

#include <stddef.h>

#include "runtime/core/common.h"

/*
 * Layout: int32[256] header: [0] magic 20240326, [1] version 3, [2] max_seq_len,
 * [3] vocab_size, [4] num_layers, [5] num_heads, [6] channels,
 * [7] padded_vocab_size; then the 16 parameter tensors as fp32, in this
 * order, each layer-stacked (L first):
 *   wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C)
 *   attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C)
 *   fcb (L,4C) fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C)
 */
#define RT_LLMC_MODEL_MAGIC 20240326
#define RT_LLMC_MODEL_VERSION 3
#define RT_LLMC_N_TENSORS 16

typedef struct {
    int max_seq_len, vocab_size, n_layers, n_heads, channels, padded_vocab_size;
} rt_llmc_header;

/* Element counts of the 16 tensors, in file order. */
void rt_llmc_tensor_sizes(const rt_llmc_header *hdr, size_t sizes[RT_LLMC_N_TENSORS]);
/* Names of the 16 tensors, in file order ("wte", "wpe", "ln1w", ...). */
const char *rt_llmc_tensor_name(int index);

/* Reads and validates the header (magic, version, positive sizes, C % H == 0, Vp >= V) and checks that the
 * file's size is exactly header + parameters, before any caller sizes memory from it. Regular files only. */
int rt_llmc_read_header(const char *path, rt_llmc_header *hdr, rt_error *err);
/* Reads all parameters, in file order, into params (sum of sizes floats). Fails on a short or long file and
 * on a NaN or infinite weight (the error names the tensor). */
int rt_llmc_read_params(const char *path, const rt_llmc_header *hdr, float *params, rt_error *err);
/* Writes a model file atomically (tmp + rename). */
int rt_llmc_write(const char *path, const rt_llmc_header *hdr, const float *params, rt_error *err);

#endif
