/* setup_agree.h: the ranks of a job agree at setup, before any collective of training, that every one of
 * them set up, with the same config and the same input files; otherwise the job ends with one clear line. */
#ifndef RT_SETUP_AGREE_H
#define RT_SETUP_AGREE_H

#include "runtime/comm/comm.h"
#include "runtime/config/config.h"
#include "runtime/core/common.h"

/*
 * Why: each rank parses its own command line and config file (mpirun and srun can give ranks different
 * ones, and a file can exist on some nodes only). A rank that fails alone and exits leaves the others
 * waiting forever in their first collective; ranks that set up differently but validly (another
 * n_layers) hang in mismatched collectives or, worse, train silently on different data.
 *
 * rt_setup_agree_status: collective. rc is this rank's setup result (0 or non-zero, message in err).
 * Returns 0 when every rank succeeded. Otherwise every rank returns -1; on the lowest failing rank err
 * holds the message ("rank R: " put in front when some ranks succeeded), on the others it is empty, so
 * the job prints one line.
 *
 * rt_setup_agree_inputs: collective, after a successful status. Compares each rank's resolved config
 * text (rt_config_to_text) with rank 0's and, for data.train, data.val and model.init_from, a digest of
 * the file's size and first 4096 bytes (the token file's header and first tokens; a missing file has its
 * own digest, so "missing on some ranks" differs too). Returns 0 when all agree; else -1 on every rank,
 * the lowest differing rank's err naming itself, the first differing config key with both values, or the
 * file with both sizes.
 */
int rt_setup_agree_status(rt_comm *world, int rc, rt_error *err);
int rt_setup_agree_inputs(rt_comm *world, const rt_config *cfg, rt_error *err);

#endif
