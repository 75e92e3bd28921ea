/* ckpt_dir.h: the checkpoint directory: step_%08d.h5 files, the `latest` pointer, keeping the newest K. */
#ifndef RT_CKPT_DIR_H
#define RT_CKPT_DIR_H

#include <stddef.h>

#include "runtime/core/common.h"

/*
 * A checkpoint is complete once its step_N.h5 exists (the store renames it
 * from step_N.h5.tmp after fsync). `latest` is a one-line text file naming
 * the newest complete one, replaced atomically (tmp + rename + directory
 * fsync) only after it is complete; older files are deleted only after
 * that. A step_N.h5.tmp left by a killed save is never read, and removed at
 * the next commit. These run on one rank (rank 0) of a job.
 */

/* dir/step_%08d.h5 into out (cap >= RT_PATH_LEN + 32). */
void rt_ckpt_dir_step_path(const char *dir, int step, char *out, size_t cap);

/* The checkpoint to resume from: the file `latest` names when it exists, else the highest-numbered
 * step_N.h5. Returns 1 with its path in out, 0 when the directory holds none (or does not exist), -1 on
 * an unreadable directory or a `latest` that names a missing file. */
int rt_ckpt_dir_newest(const char *dir, char *out, size_t cap, rt_error *err);

/* After step_N.h5 (file_name, no directory) is complete: `latest` names it; then every step_M.h5 but the
 * newest keep by step number (and file_name itself) is deleted, with every stale step_*.h5.tmp. */
int rt_ckpt_dir_commit(const char *dir, const char *file_name, int keep, rt_error *err);

#endif
