/* inspect.h: `ringtrain inspect`: what a checkpoint or model.h5 holds, every tensor read and its checksums verified. */
#ifndef RT_INSPECT_H
#define RT_INSPECT_H

#include <stdio.h>

#include "runtime/core/common.h"

/*
 * Prints to out: format and version, step, tokens, optimizer steps, the layout that saved it (world size,
 * dp x sp, ZeRO stage), the stored config text, then one line per dataset ("  /model/wte  (256, 64)  norm
 * 12.3456789": the L2 norm accumulated in double, %.9g), and "checksums: all N datasets verified". Every
 * dataset is read whole and its checksums verified (a checkpoint's block sums, a model.h5's Fletcher32
 * filter). A model.h5 (weights only: /model) is inspected the same way, without the training state. Serial HDF5; needs
 * no MPI. On failure (not an HDF5 file, not a ringtrain file, a checksum error, a truncated file) returns -1 with one
 * line naming the file and, where one is at fault, the dataset.
 */
int rt_inspect(const char *path, FILE *out, rt_error *err);

/* A Hugging Face directory: the model config.json describes, then every tensor as model.init_from = DIR loads it
 * (ringtrain's names and layout) with its L2 norm. Errors as model.init_from's. */
int rt_inspect_hf(const char *dir, FILE *out, rt_error *err);

#endif
