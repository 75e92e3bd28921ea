/* metrics.h: metrics.jsonl, one JSON object per training step, written whole and checked. */
#ifndef RT_METRICS_H
#define RT_METRICS_H

#include <stddef.h>
#include <sys/types.h>

#include "runtime/config/config.h"
#include "runtime/core/common.h"
#include "runtime/train/train.h"

/* One metrics.jsonl line for s (a JSON object and '\n') into out; returns its length (>= cap: it did not
 * fit). JSON has no inf or nan: a non-finite number is written as null, with "<key>_nonfinite": "nan", "inf"
 * or "-inf" beside it. val_loss is left out when the step was not validated. */
size_t rt_metrics_json_line(const rt_step_metrics *s, char *out, size_t cap);

/*
 * The file, open on rank 0 for the whole run. Each line is written with
 * write(2), checked; good_bytes is the file's length after the last
 * complete line, so a failed write (a full disk takes part of a line) is
 * cut back to it: the file always holds whole, valid JSON lines.
 */
typedef struct {
    int fd; /* -1: not open */
    off_t good_bytes;
    char path[RT_PATH_LEN + 32];
} rt_metrics_file;

/* Creates path exclusively: returns 0, 1 when it exists already (err untouched), or -1. */
int rt_metrics_create(rt_metrics_file *f, const char *path, rt_error *err);
/* A resumed run: opens path (created when missing) and cuts it before the first line of a step >= first_step
 * (steps the run will redo) and after the last complete line; new lines append. */
int rt_metrics_reopen(rt_metrics_file *f, const char *path, int first_step, rt_error *err);
/* Appends s's line; on failure the file is cut back to its last complete line. */
int rt_metrics_append(rt_metrics_file *f, const rt_step_metrics *s, rt_error *err);
/* fsync and close (checked); a no-op when not open. */
int rt_metrics_close(rt_metrics_file *f, rt_error *err);

#endif
