/* model_file.h: the weights of a model in HDF5 (model.h5, and the /model of a checkpoint): one dataset per view. */
#ifndef RT_MODEL_FILE_H
#define RT_MODEL_FILE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/common.h"
#include "runtime/core/tensor.h"

/*
 * File layout (version 2), independent of how many ranks wrote it:
 *   /                 attributes: format = "ringtrain-checkpoint" (string), version = 2 (int32),
 *                                 step (int64), config (string: the resolved INI text)
 *   /model/<name>     one fp32 dataset per named view, with the view's global shape,
 *                     chunked (<= 4 MiB per chunk) with Fletcher32 checksums
 * A training checkpoint (io/ckpt_store.h) adds /optim/{m,v,master}/<name> with the same shapes, and
 * stores every dataset contiguous with block checksums (io/block_sum.h) instead of Fletcher32. Version 1
 * files (Fletcher32 in checkpoints too) are refused by version.
 * Files are written as PATH.tmp and renamed into place: PATH is always either
 * the previous file or a complete new one. Errors name the path and the HDF5
 * operation; HDF5's own error printing is switched off.
 */
#define RT_CHECKPOINT_FORMAT "ringtrain-checkpoint"
#define RT_CHECKPOINT_VERSION 2

/* Writes every view of table, read from params + view offset (host fp32), from one process: model.h5 and
 * `export` (a training checkpoint is written by all ranks together: ckpt_store.h). */
int rt_model_file_write(const char *path, const rt_view_table *table, const float *params, const char *config_text,
                        int64_t step, rt_error *err);
/* Reads the config text (malloc'd, caller frees) and the step. Either output may be NULL. */
int rt_model_file_read_meta(const char *path, char **config_text, int64_t *step, rt_error *err);
/* Reads every view of table into params + view offset; each dataset must exist with the view's shape. */
int rt_model_file_read_params(const char *path, const rt_view_table *table, float *params, rt_error *err);
/* Where each view goes as it is read, in table order: where(ctx, v) returns the buffer for view v's values
 * (numel floats; it may wait for one to be free; NULL stops the read with an error), done(ctx, v) (may be NULL)
 * says view v is read and checked: a writer on another thread may use it while the rest is read. */
typedef struct {
    float *(*where)(void *ctx, int view);
    void (*done)(void *ctx, int view);
    void *ctx;
} rt_model_file_sink;
int rt_model_file_read_views(const char *path, const rt_view_table *table, const rt_model_file_sink *sink,
                             rt_error *err);
/* Counts the elements of every dataset under /model, checking each is a hard-linked dataset whose data is
 * stored in the file: what a caller compares with its config's parameter count before allocating. */
int rt_model_file_count_params(const char *path, size_t *count, rt_error *err);

#endif
