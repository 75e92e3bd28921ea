/* loader.c: windows of T+1 tokens, shuffled per epoch, cut into each rank's sequences and spans.
 *
 * T = seq_len, B = global_batch, W = n_windows of the split.
 * Window w covers tokens [w*T, w*T + T] (T+1 tokens; consecutive windows
 * share one token), so a file of N tokens holds (N-1)/T whole windows.
 *
 * Epochs and batches:
 *   - order[] is a permutation of 0..W-1: the identity without shuffling, else
 *     a Fisher-Yates shuffle driven by splitmix64 seeded from (seed, epoch), so
 *     every rank with the same seed computes the same order without talking.
 *   - A global batch is order[cursor .. cursor+B); sequence s of the batch is
 *     window first_window + order[cursor+s].
 *   - After a batch the cursor moves by B. When fewer than B windows remain in
 *     the epoch, they are skipped and a new epoch starts (epoch+1, fresh
 *     shuffle, cursor 0): a batch never mixes epochs, and each epoch visits
 *     floor(W/B)*B distinct windows (all of them when B divides W; with
 *     shuffling the skipped tail differs from epoch to epoch).
 *
 * A call that fails (bad span, token out of range) leaves the position as it
 * was, so the caller may report and stop without a half-advanced state.
 */
#include "loader.h"

#include <stdlib.h>
#include <string.h>

/* splitmix64 (Steele, Lea, Flood): a small, well-mixed generator; the state advances by a constant. */
static uint64_t splitmix64(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* Uniform in [0, n), n > 0, without modulo bias (rejects the short top range). */
static uint64_t uniform_below(uint64_t *state, uint64_t n) {
    uint64_t threshold = (0 - n) % n; /* 2^64 mod n */
    for (;;) {
        uint64_t r = splitmix64(state);
        if (r >= threshold) return r % n;
    }
}

static void fill_order(rt_loader *loader) {
    for (size_t i = 0; i < loader->n_windows; i++)
        loader->order[i] = i;
    if (!loader->shuffle) return;
    /* Mix the epoch into the seed through one splitmix step so nearby (seed, epoch) pairs diverge. */
    uint64_t state = loader->seed ^ (0xD1B54A32D192ED03ULL * (loader->epoch + 1));
    splitmix64(&state);
    for (size_t i = loader->n_windows; i > 1; i--) {
        size_t j = (size_t)uniform_below(&state, (uint64_t)i);
        size_t swap = loader->order[i - 1];
        loader->order[i - 1] = loader->order[j];
        loader->order[j] = swap;
    }
}

/* Fewer than one global batch left in the epoch: they are skipped and the next epoch starts. */
static void start_epoch_if_short(rt_loader *loader) {
    if (loader->n_windows - loader->cursor >= loader->global_batch) return;
    loader->epoch++;
    loader->cursor = 0;
    fill_order(loader);
}

size_t rt_loader_count_windows(const rt_token_file *tokens, size_t seq_len) {
    if (seq_len == 0 || tokens->n_tokens < seq_len + 1) return 0;
    return (tokens->n_tokens - 1) / seq_len;
}

int rt_loader_init(rt_loader *loader, const rt_token_file *tokens, size_t seq_len, size_t first_window,
                   size_t n_windows, size_t global_batch, int shuffle, uint64_t seed, rt_error *err) {
    memset(loader, 0, sizeof *loader);
    if (seq_len == 0) return rt_fail(err, "%s: seq_len 0, expected > 0", tokens->path);
    if (global_batch == 0) return rt_fail(err, "%s: global batch of 0 sequences, expected > 0", tokens->path);
    size_t available = rt_loader_count_windows(tokens, seq_len);
    if (first_window > available || n_windows > available - first_window)
        return rt_fail(err,
                       "%s: split [%zu, %zu) of windows is outside the file, which holds %zu windows of %zu tokens "
                       "(%zu tokens)",
                       tokens->path, first_window, first_window + n_windows, available, seq_len + 1, tokens->n_tokens);
    if (n_windows < global_batch)
        return rt_fail(err,
                       "%s: split holds %zu windows of %zu tokens, fewer than one global batch of %zu sequences "
                       "(the file holds %zu tokens)",
                       tokens->path, n_windows, seq_len + 1, global_batch, tokens->n_tokens);
    loader->tokens = tokens;
    loader->seq_len = seq_len;
    loader->first_window = first_window;
    loader->n_windows = n_windows;
    loader->global_batch = global_batch;
    loader->shuffle = shuffle;
    loader->seed = seed;
    loader->order = malloc_check(n_windows * sizeof *loader->order);
    loader->separator = -1;
    rt_loader_rewind(loader);
    return 0;
}

void rt_loader_free(rt_loader *loader) {
    free(loader->order);
    free(loader->first);
    free(loader->split_spans);
    memset(loader, 0, sizeof *loader);
}

void rt_loader_rewind(rt_loader *loader) {
    loader->cursor = 0;
    loader->epoch = 0;
    fill_order(loader);
}

void rt_loader_set_documents(rt_loader *loader, int64_t separator, int starts_document, size_t lookback) {
    loader->separator = separator;
    loader->separator_starts_document = starts_document;
    loader->lookback = lookback;
    free(loader->first);
    loader->first = separator >= 0 ? malloc_check((loader->seq_len + 1) * sizeof *loader->first) : NULL;
}

void rt_loader_set_split(rt_loader *loader,
                         int (*split)(void *ctx, size_t seq, const int64_t *first, size_t T, rt_span *spans,
                                      int *n_spans, rt_error *err),
                         void *ctx, int max_spans) {
    loader->split = split;
    loader->split_ctx = ctx;
    loader->max_split_spans = max_spans;
    free(loader->split_spans);
    loader->split_spans = malloc_check((size_t)(max_spans > 0 ? max_spans : 1) * sizeof *loader->split_spans);
}

/* Whether file offset q starts a document (q > 0; the file's first token always does). */
static int starts_document(const rt_loader *loader, size_t q) {
    const rt_token_file *tf = loader->tokens;
    const uint32_t sep = (uint32_t)loader->separator;
    return loader->separator_starts_document ? rt_tokens_get(tf, q) == sep : rt_tokens_get(tf, q - 1) == sep;
}

/* How many tokens of the window's first document lie before the window at file offset base: 0 when a document
 * starts at base, or when its start is more than lookback tokens back (positions restart there). */
static size_t first_document_offset(const rt_loader *loader, size_t base) {
    for (size_t back = 0; back <= loader->lookback && back <= base; back++) {
        const size_t q = base - back;
        if (q == 0 || starts_document(loader, q)) return back;
    }
    return 0;
}

/* loader->first[p] for p in [0, T]: the window position where p's document starts. */
static void find_documents(rt_loader *loader, size_t base) {
    int64_t first = 0;
    for (size_t p = 0; p <= loader->seq_len; p++) {
        if (p > 0 && starts_document(loader, base + p)) first = (int64_t)p;
        loader->first[p] = first;
    }
}

int rt_loader_next(rt_loader *loader, size_t first_seq, size_t n_seqs, const rt_span *spans, int n_spans,
                   int vocab_size, int32_t *inputs, int32_t *targets, int64_t *pos, rt_error *err) {
    return rt_loader_next_docs(loader, first_seq, n_seqs, spans, n_spans, vocab_size, inputs, targets, pos, NULL, NULL,
                               err);
}

int rt_loader_next_docs(rt_loader *loader, size_t first_seq, size_t n_seqs, const rt_span *spans, int n_spans,
                        int vocab_size, int32_t *inputs, int32_t *targets, int64_t *pos, int64_t *doc_pos,
                        int64_t *doc_first, rt_error *err) {
    const rt_token_file *tf = loader->tokens;
    size_t T = loader->seq_len;
    if (first_seq > loader->global_batch || n_seqs > loader->global_batch - first_seq)
        return rt_fail(err, "%s: sequences [%zu, %zu) requested from a global batch of %zu", tf->path, first_seq,
                       first_seq + n_seqs, loader->global_batch);
    if (vocab_size <= 0) return rt_fail(err, "%s: vocab_size %d, expected > 0", tf->path, vocab_size);
    for (int s = 0; s < n_spans; s++)
        if (spans[s].start > T || spans[s].len > T - spans[s].start)
            return rt_fail(err, "%s: span %d covers positions [%zu, %zu), beyond seq_len %zu", tf->path, s,
                           spans[s].start, spans[s].start + spans[s].len, T);

    const int documents = loader->separator >= 0;
    if (documents && (!doc_pos || !doc_first))
        rt_fatal("%s: the loader has a document separator but the caller takes no document positions", tf->path);

    size_t out = 0;
    for (size_t seq = first_seq; seq < first_seq + n_seqs; seq++) {
        size_t window = loader->first_window + loader->order[loader->cursor + seq];
        size_t base = window * T; /* offset of the window's first token */
        size_t offset = 0;
        const rt_span *seq_spans = spans;
        int seq_n_spans = n_spans;
        if (documents) {
            find_documents(loader, base);
            offset = first_document_offset(loader, base);
            if (loader->split) {
                size_t want = 0, got = 0;
                for (int s = 0; s < n_spans; s++)
                    want += spans[s].len;
                if (loader->split(loader->split_ctx, seq - first_seq, loader->first, T, loader->split_spans,
                                  &seq_n_spans, err))
                    return -1;
                for (int s = 0; s < seq_n_spans; s++) {
                    if (loader->split_spans[s].start > T ||
                        loader->split_spans[s].len > T - loader->split_spans[s].start)
                        return rt_fail(err, "%s: a window's split gives span [%zu, %zu), beyond seq_len %zu", tf->path,
                                       loader->split_spans[s].start,
                                       loader->split_spans[s].start + loader->split_spans[s].len, T);
                    got += loader->split_spans[s].len;
                }
                if (seq_n_spans > loader->max_split_spans || got != want)
                    return rt_fail(err, "%s: a window's split gives this rank %zu tokens in %d spans, not %zu",
                                   tf->path, got, seq_n_spans, want);
                seq_spans = loader->split_spans;
            }
        }
        for (int s = 0; s < seq_n_spans; s++) {
            for (size_t p = seq_spans[s].start; p < seq_spans[s].start + seq_spans[s].len; p++, out++) {
                uint32_t input = rt_tokens_get(tf, base + p), target = rt_tokens_get(tf, base + p + 1);
                if (input >= (uint32_t)vocab_size || target >= (uint32_t)vocab_size) {
                    size_t offset = input >= (uint32_t)vocab_size ? base + p : base + p + 1;
                    return rt_fail(err, "%s: token at offset %zu is %u, outside the vocabulary of %d (0..%d)", tf->path,
                                   offset, rt_tokens_get(tf, offset), vocab_size, vocab_size - 1);
                }
                inputs[out] = (int32_t)input;
                targets[out] = (int32_t)target;
                pos[out] = (int64_t)p;
                if (documents) {
                    const int64_t first = loader->first[p];
                    doc_first[out] = first;
                    doc_pos[out] = (int64_t)p - first + (first == 0 ? (int64_t)offset : 0);
                    if (loader->first[p + 1] != first) targets[out] = -1; /* p + 1 starts the next document */
                }
            }
        }
    }

    loader->cursor += loader->global_batch;
    start_epoch_if_short(loader);
    return 0;
}

int rt_loader_seek(rt_loader *loader, uint64_t epoch, size_t cursor, rt_error *err) {
    if (cursor > loader->n_windows)
        return rt_fail(err, "%s: saved loader position %zu is beyond the split of %zu windows", loader->tokens->path,
                       cursor, loader->n_windows);
    loader->epoch = epoch;
    loader->cursor = cursor;
    fill_order(loader);
    start_epoch_if_short(loader);
    return 0;
}
