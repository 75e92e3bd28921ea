/* dropout_probe.h: a CPU backend whose dropout records every mask it draws, for the dropout keying tests. */
#ifndef RT_DROPOUT_PROBE_H
#define RT_DROPOUT_PROBE_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/backend/backend.h"

/* One row of one dropout call: the key the model passed, the row's counter and a hash of its mask bits. */
typedef struct {
    uint64_t step;
    uint32_t layer, site;
    int64_t id;         /* (sequence << 40) | position, as the model keys the row */
    uint64_t mask_hash; /* FNV-1a of the row's keep/drop bits */
} dropout_record;

typedef struct {
    dropout_record *rows;
    size_t n, cap;
} dropout_log;

/* The CPU backend with dropout wrapped: while log is non-NULL every row of every dropout call (forward,
 * recompute and backward alike) is appended to it. One log at a time (the backend table has no context). */
const rt_backend *dropout_probe_backend(dropout_log *log);

/* Sorts by (step, layer, site, id) and keeps one row per key. Returns how many keys were drawn with two
 * different masks (forward, recompute and backward must agree: 0). */
size_t dropout_log_unique(dropout_log *log);

/* The row with this key in a unique log, or NULL. */
const dropout_record *dropout_log_find(const dropout_log *log, const dropout_record *key);

/* How many pairs of different keys share one mask in a unique log (0 unless masks repeat). */
size_t dropout_log_shared_masks(const dropout_log *log);

void dropout_log_free(dropout_log *log);

#endif
