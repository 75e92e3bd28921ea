/* model_io.h: model weights in and out: llm.c GPT-2 files and ringtrain's HDF5 model files. */
#ifndef RT_MODEL_IO_H
#define RT_MODEL_IO_H

#include "../io/llmc_model.h"
#include "config.h"
#include "model.h"

/* model.init_from takes the architecture from the file: sets the gpt2 family and the shape keys of cfg. */
int rt_config_from_llmc(rt_config *cfg, const char *path, rt_error *err);

/* Reads an llm.c file's parameters into m, reordering layer-stacked tensors into the layer-major table.
 * The file's shape must be m's shape (error names the differing field). */
int rt_model_load_llmc(rt_model *m, const char *path, rt_error *err);

/* Writes m's parameters with the resolved config text and step (atomic: tmp + rename). */
int rt_model_save(const rt_model *m, const char *path, const char *config_text, int64_t step, rt_error *err);
/* Reads parameters saved by rt_model_save into m (shapes must match the table). */
int rt_model_load(rt_model *m, const char *path, rt_error *err);

#endif
