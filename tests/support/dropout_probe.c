/*
 * dropout_probe.c: the mask of a row is read by applying the real CPU
 * dropout to a row of ones (kept entries become 1/(1-p), dropped ones 0),
 * so recording depends neither on the values being dropped nor on how the
 * model encodes its keys; the tests compare keys and masks only.
 */
#include "tests/support/dropout_probe.h"
#include "runtime/backend/registry.h"

#include <stdlib.h>
#include <string.h>

static dropout_log *active_log;
static rt_backend probe_backend;

static void record_rows(const int64_t *pos, size_t N, int C, float p, rt_rng_key key) {
    float *ones = malloc(N * (size_t)C * sizeof *ones);
    if (!ones) abort();
    for (size_t i = 0; i < N * (size_t)C; i++)
        ones[i] = 1.0f;
    rt_be_dropout(rt_backend_cpu(), ones, pos, N, C, p, key);
    if (active_log->n + N > active_log->cap) {
        active_log->cap = 2 * (active_log->n + N);
        active_log->rows = realloc(active_log->rows, active_log->cap * sizeof *active_log->rows);
        if (!active_log->rows) abort();
    }
    for (size_t n = 0; n < N; n++) {
        uint64_t hash = 0xcbf29ce484222325ULL;
        for (int c = 0; c < C; c++)
            hash = (hash ^ (ones[n * (size_t)C + c] != 0.0f)) * 0x100000001b3ULL;
        active_log->rows[active_log->n++] =
            (dropout_record){.step = key.step, .layer = key.layer, .site = key.site, .id = pos[n], .mask_hash = hash};
    }
    free(ones);
}

static void probe_dropout(const rt_backend *be, float *x, const int64_t *pos, size_t N, int C, float p,
                          rt_rng_key key) {
    (void)be; /* the probe's table; the CPU instance does the work */
    if (active_log && p > 0.0f) record_rows(pos, N, C, p, key);
    rt_be_dropout(rt_backend_cpu(), x, pos, N, C, p, key);
}

const rt_backend *dropout_probe_backend(dropout_log *log) {
    probe_backend = *rt_backend_cpu();
    probe_backend.ops.dropout = probe_dropout;
    active_log = log;
    return &probe_backend;
}

static int compare_keys(const void *pa, const void *pb) {
    const dropout_record *a = pa, *b = pb;
    if (a->step != b->step) return a->step < b->step ? -1 : 1;
    if (a->layer != b->layer) return a->layer < b->layer ? -1 : 1;
    if (a->site != b->site) return a->site < b->site ? -1 : 1;
    if (a->id != b->id) return a->id < b->id ? -1 : 1;
    return 0;
}

size_t dropout_log_unique(dropout_log *log) {
    if (log->n == 0) return 0;
    qsort(log->rows, log->n, sizeof *log->rows, compare_keys);
    size_t kept = 1, disagreeing = 0;
    for (size_t i = 1; i < log->n; i++) {
        if (compare_keys(&log->rows[i], &log->rows[kept - 1]) == 0) {
            disagreeing += log->rows[i].mask_hash != log->rows[kept - 1].mask_hash;
            continue;
        }
        log->rows[kept++] = log->rows[i];
    }
    log->n = kept;
    return disagreeing;
}

const dropout_record *dropout_log_find(const dropout_log *log, const dropout_record *key) {
    return bsearch(key, log->rows, log->n, sizeof *log->rows, compare_keys);
}

static int compare_u64(const void *pa, const void *pb) {
    uint64_t a = *(const uint64_t *)pa, b = *(const uint64_t *)pb;
    return a < b ? -1 : a > b;
}

size_t dropout_log_shared_masks(const dropout_log *log) {
    uint64_t *hashes = malloc((log->n ? log->n : 1) * sizeof *hashes);
    if (!hashes) abort();
    for (size_t i = 0; i < log->n; i++)
        hashes[i] = log->rows[i].mask_hash;
    qsort(hashes, log->n, sizeof *hashes, compare_u64);
    size_t shared = 0;
    for (size_t i = 1; i < log->n; i++)
        shared += hashes[i] == hashes[i - 1];
    free(hashes);
    return shared;
}

void dropout_log_free(dropout_log *log) {
    free(log->rows);
    *log = (dropout_log){0};
}
