/* train.h: the training loop behind `ringtrain train`. */
#ifndef RT_TRAIN_H
#define RT_TRAIN_H

#include "comm.h"
#include "common.h"
#include "config.h"

/* What a finished run reports (rank 0's view; identical on every rank). */
typedef struct {
    int steps_done;
    double first_loss, last_loss;
    double last_val_loss; /* NAN when validation never ran */
    int stopped_by_signal;
} rt_train_result;

/*
 * Trains per cfg (already validated) on the world communicator. Every input
 * is checked before the run directory is created, so a bad input leaves no
 * files. Writes <run.dir>/config.ini (resolved), metrics.jsonl (rank 0) and
 * <run.dir>/model.h5 at the end or on SIGINT/SIGTERM (after the current step).
 */
int rt_train(const rt_config *cfg, rt_comm *world, rt_train_result *result, rt_error *err);

#endif
