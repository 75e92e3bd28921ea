/* model_io.h: model weights in and out: llm.c GPT-2 files and ringtrain's HDF5 model files and checkpoints. */
#ifndef RT_MODEL_IO_H
#define RT_MODEL_IO_H

#include "hf_model.h"
#include "io/llmc_model.h"
#include "model.h"
#include "runtime/config/config.h"

/* model.init_from takes the architecture from the file: sets the gpt2 family and the shape keys of cfg. */
int rt_config_from_llmc(rt_config *cfg, const char *path, rt_error *err);

/* Reads an llm.c file's parameters into m, reordering layer-stacked tensors into the layer-major table.
 * The file's shape must be m's shape (error names the differing field). */
int rt_model_load_llmc(rt_model *m, const char *path, rt_error *err);

/* Writes m's parameters as an llm.c GPT-2 file (version 3, tied LM head), reordering the layer-major table
 * into llm.c's layer-stacked tensors; atomic (tmp + rename). Refuses what llm.c's train_gpt2.c cannot run
 * as the same model: the llama family, d_ff != 4 * d_model, norm_eps != 1e-5. */
int rt_model_save_llmc(const rt_model *m, const char *path, rt_error *err);

/* Writes m's parameters with the resolved config text and step (atomic: tmp + rename). */
int rt_model_save(const rt_model *m, const char *path, const char *config_text, int64_t step, rt_error *err);
/* Reads parameters saved by rt_model_save, or the /model of a checkpoint, into m (shapes must match the
 * table). */
int rt_model_load(rt_model *m, const char *path, rt_error *err);

/* 1 when path is a regular file that starts with the HDF5 signature (model.h5 or a checkpoint), 0 when it
 * does not (an llm.c file, or something the llm.c reader then refuses), -1 + err when it cannot be opened. */
int rt_model_file_is_hdf5(const char *path, rt_error *err);

/* Loads the config stored in a model.h5 or checkpoint on top of cfg, checks it describes a valid model and
 * that the file's /model tensors hold exactly its parameter count (so nobody sizes memory from a stored
 * shape the file does not back). Errors name the file. */
int rt_config_from_checkpoint(rt_config *cfg, const char *path, rt_error *err);

/* model.init_from: the architecture keys of cfg (family and shape, padded_vocab, rope_theta, norm_eps) from
 * an llm.c file's header, a ringtrain file's stored config (told apart by content, not by name) or a Hugging
 * Face directory's config.json. */
int rt_config_from_init_file(rt_config *cfg, const char *path, rt_error *err);
/* model.init_from: the weights only (the optimizer starts fresh), from either kind of file. */
int rt_model_load_init_file(rt_model *m, const char *path, rt_error *err);
/* The same weights into host (table.total floats) instead: for sharded parameters, whose owner keeps shards. */
int rt_model_read_init_file(const rt_model *m, const char *path, float *host, rt_error *err);

/* `ringtrain export`: the /model of a checkpoint (or model.h5) as an llm.c GPT-2 file at out_path. On
 * success *info (may be NULL) gets the exported config. */
int rt_export_llmc(const char *checkpoint_path, const char *out_path, rt_config *info, rt_error *err);

/* `ringtrain export --hf`: the /model of a checkpoint or model.h5, or a Hugging Face directory's weights, as a
 * new Hugging Face directory out_dir (rt_hf_write_dir). On success *info (may be NULL) gets the config. */
int rt_export_hf(const char *source, const char *out_dir, const rt_hf_write_options *opt, rt_config *info,
                 rt_error *err);

#endif
