/* run.h: a whole training run (`ringtrain train`): run directory, metrics, progress, checkpoints, stop signals. */
#ifndef RT_RUN_H
#define RT_RUN_H

#include <stddef.h>

#include "metrics.h"
#include "runtime/comm/comm.h"
#include "runtime/config/config.h"
#include "runtime/core/common.h"
#include "runtime/train/train.h"

/* The exit status of `ringtrain train` stopped by a signal after saving its checkpoint (EX_TEMPFAIL: run it
 * again with --resume). 0: finished; 1: failed; 2: bad command line. */
#define RT_EXIT_STOPPED 75

typedef struct {
    int first_step;               /* 0, or the step a resumed run continued from */
    int steps_done;               /* counted from step 0, across resumes */
    double first_loss, last_loss; /* of this process's steps; NAN when it ran none */
    double last_val_loss;         /* NAN when validation never ran */
    int stopped_by_signal;        /* a checkpoint of steps_done was saved; exit with RT_EXIT_STOPPED */
} rt_train_result;

/*
 * A whole run. Every input is checked first, a checkpoint to resume from
 * included (checkpoint.resume = auto: the newest in checkpoint.dir; a path),
 * before any file appears. Then rank 0 writes <run.dir>/config.ini
 * (resolved), metrics.jsonl (a resumed run cuts the lines of steps it will
 * redo and appends), a progress line per train.log_every steps; every
 * checkpoint.every steps all ranks save checkpoint.dir/step_%08d.h5, then
 * `latest` names it and only the newest checkpoint.keep remain. At the end:
 * a final checkpoint and <run.dir>/model.h5 (weights only).
 *
 * SIGTERM, SIGINT and SIGUSR1 stop the run: the ranks agree between two
 * layers (so within one layer's forward or backward, however long the
 * step), abandon the step, save a checkpoint of the last completed step and
 * return with stopped_by_signal. A second signal during the save is noted
 * and ignored; a third ends the process at once (the previous checkpoint
 * stays `latest`). Returns 0 or one of the trainer's failures.
 */
int rt_train(const rt_config *cfg, rt_comm *world, rt_train_result *result, rt_error *err);

#endif
