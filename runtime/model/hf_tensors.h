/* hf_tensors.h: which Hugging Face tensor fills which rows of which ringtrain parameter, and how. */
#ifndef RT_HF_TENSORS_H
#define RT_HF_TENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"
#include "param_layout.h"

typedef enum {
    HF_COPY,      /* same layout */
    HF_ROPE,      /* rows permuted per head: rotate-half pairs (i, i + D/2) <-> interleaved pairs (2i, 2i+1) */
    HF_TRANSPOSE, /* gpt2's Conv1D: stored (in, out), ringtrain's (out, in) */
} hf_transform;

/* One Hugging Face tensor: rows x cols of ringtrain's layout at offset in the flat table (1-D tensors have
 * cols 1). Several entries may fill one view (q, k, v -> attn.qkv; gate, up -> mlp.fc). */
typedef struct {
    char hf[RT_ST_NAME_LEN];
    int view;                      /* index in the table */
    size_t offset, at, rows, cols; /* offset: in the flat table; at: within the view */
    int ndim;
    hf_transform how;
} hf_entry;

typedef struct {
    hf_entry *entries;
    size_t count, capacity;
} hf_entry_list;

/* The entries of a shape's family, in the order an export writes them; gpt2_prefix is "transformer." (what
 * transformers writes) or "" (the original GPT-2 files). */
void hf_entries_build(hf_entry_list *list, const rt_model_shape *shape, const rt_view_table *table,
                      const char *gpt2_prefix);
void hf_entries_free(hf_entry_list *list);
size_t hf_entry_numel(const hf_entry *e);
/* The tensor's shape as Hugging Face stores it (2-D; a 1-D tensor uses shape[0] only). */
void hf_entry_shape(const hf_entry *e, int64_t shape[2]);
/* 1 for tensors a Hugging Face file may hold that are no parameter of ours: buffers (gpt2's attn.bias, llama's
 * rotary inv_freq) and an LM head stored beside the embedding it is tied to. */
int hf_tensor_ignored(const rt_model_shape *shape, const char *name);

/* hf_values (Hugging Face layout, numel values) into the table's rows of host. */
void hf_to_table(const hf_entry *e, size_t head_dim, const float *hf_values, float *host);
/* The entry's values in Hugging Face layout from its view's values (view_values: the view's first element):
 * view_values itself for HF_COPY, else gathered into scratch (numel). */
const float *hf_from_view(const hf_entry *e, size_t head_dim, const float *view_values, float *scratch);

#endif
