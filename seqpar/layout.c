/* layout.c: the zigzag split of a sequence over the ranks of a sequence-parallel group. */
#include "seqpar.h"

int seqpar_zigzag_spans(int rank, int n_ranks, size_t seq_len, rt_span spans[2], rt_error *err) {
    if (n_ranks < 1 || rank < 0 || rank >= n_ranks)
        return rt_fail(err, "sequence-parallel rank %d of %d is not a valid rank", rank, n_ranks);
    size_t n_chunks = 2 * (size_t)n_ranks;
    if (seq_len < n_chunks)
        return rt_fail(err,
                       "train.seq_len = %zu is shorter than the %zu chunks of %d sequence-parallel ranks "
                       "(zigzag cuts each sequence into 2*sp chunks)",
                       seq_len, n_chunks, n_ranks);
    if (seq_len % n_chunks != 0)
        return rt_fail(err,
                       "train.seq_len = %zu does not divide into 2*sp = %zu equal chunks; choose a multiple of %zu",
                       seq_len, n_chunks, n_chunks);
    size_t chunk = seq_len / n_chunks;
    spans[0] = (rt_span){.start = (size_t)rank * chunk, .len = chunk};
    spans[1] = (rt_span){.start = (n_chunks - 1 - (size_t)rank) * chunk, .len = chunk};
    return 0;
}
