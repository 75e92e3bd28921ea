/* loader.h: batches of sequences from a token file, with each token's global position, for any rank layout. */
#ifndef RT_LOADER_H
#define RT_LOADER_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/tensor.h"
#include "tokens.h"

/*
 * The file is cut into windows of T+1 tokens (window w covers tokens
 * [w*T, w*T+T], so consecutive windows share one token). A split takes the
 * windows [first_window, first_window+n_windows); training uses a seeded
 * shuffle of its split, reshuffled each epoch, validation reads in order.
 *
 * Each call to rt_loader_next advances by one GLOBAL batch of
 * global_batch sequences. A rank asks for the sequences
 * [first_seq, first_seq+n_seqs) of that batch (its data-parallel slice) and,
 * of each sequence, only the positions in its spans (its sequence-parallel
 * chunks). Inputs are tokens at positions p, targets are tokens at p+1:
 * targets are shifted before the sequence is cut, so no label is lost at a
 * chunk boundary. Output order: sequence-major, then spans in order.
 */
typedef struct {
    const rt_token_file *tokens;
    size_t seq_len; /* T */
    size_t first_window, n_windows;
    size_t global_batch;
    int shuffle;
    uint64_t seed;
    /* packed documents (rt_loader_set_documents); separator -1: none */
    int64_t separator;
    int separator_starts_document;
    size_t lookback;
    int64_t *first; /* T+1 entries: scratch, the first position of each position's document in one window */
    int (*split)(void *ctx, size_t seq, const int64_t *first, size_t T, rt_span *spans, int *n_spans, rt_error *err);
    void *split_ctx;
    rt_span *split_spans; /* (max_split_spans) */
    int max_split_spans;
    /* state */
    size_t *order; /* n_windows entries: the current epoch's permutation */
    size_t cursor; /* next index into order */
    uint64_t epoch;
} rt_loader;

/* Number of whole windows of T+1 tokens in the file. */
size_t rt_loader_count_windows(const rt_token_file *tokens, size_t seq_len);

/* Fails (err names the file) when the split holds fewer windows than one global batch. */
int rt_loader_init(rt_loader *loader, const rt_token_file *tokens, size_t seq_len, size_t first_window,
                   size_t n_windows, size_t global_batch, int shuffle, uint64_t seed, rt_error *err);
void rt_loader_free(rt_loader *loader);

/* Fills inputs, targets (int32) and pos (int64), each n_seqs * sum(span lens) entries. A token >= vocab_size
 * fails with an error naming the file, the token offset and the value. */
int rt_loader_next(rt_loader *loader, size_t first_seq, size_t n_seqs, const rt_span *spans, int n_spans,
                   int vocab_size, int32_t *inputs, int32_t *targets, int64_t *pos, rt_error *err);

/*
 * Packed documents. The separator token marks where documents meet: with
 * starts_document it is the first token of a document (llm.c shards), else
 * its last (Hugging Face pipelines). For every position p of a sequence,
 * rt_loader_next_docs gives doc_first[p], the window position where p's
 * document starts (0 for the document the window starts in), and doc_pos[p],
 * p's position inside its document; the target of p is -1 (not trained) where
 * p+1 starts a new document. A window that starts inside a document continues
 * its positions when the document's first token lies at most `lookback`
 * tokens before the window (the caller passes model.max_seq_len - T, so no
 * position exceeds what the model embeds); further back, or at the file's
 * start, positions restart at 0.
 */
void rt_loader_set_documents(rt_loader *loader, int64_t separator, int starts_document, size_t lookback);

/*
 * With documents, each window's split over the sequence-parallel ranks may follow its documents: split(ctx,
 * seq, first, T, spans, n_spans, err) gets sequence seq of the call (0-based) and first[p] for its window's
 * positions p in [0, T), and writes this rank's spans (at most max_spans, together as many tokens as the
 * spans rt_loader_next_docs was given); -1 with err to fail the call. Without split, the given spans.
 */
void rt_loader_set_split(rt_loader *loader,
                         int (*split)(void *ctx, size_t seq, const int64_t *first, size_t T, rt_span *spans,
                                      int *n_spans, rt_error *err),
                         void *ctx, int max_spans);

/* rt_loader_next plus, with documents set, doc_pos and doc_first (int64, as many entries as pos; may be NULL
 * when the loader has no separator). */
int rt_loader_next_docs(rt_loader *loader, size_t first_seq, size_t n_seqs, const rt_span *spans, int n_spans,
                        int vocab_size, int32_t *inputs, int32_t *targets, int64_t *pos, int64_t *doc_pos,
                        int64_t *doc_first, rt_error *err);

/* Restart from the first batch of epoch 0 (validation runs each pass from the start). */
void rt_loader_rewind(rt_loader *loader);

/* Continue from a saved position (a checkpoint's epoch and cursor, in windows of this split): the epoch's
 * order is recomputed from the seed. A cursor that leaves less than one global batch (the batch size may have
 * changed since the save) moves to the next epoch, as rt_loader_next would. Fails (err names the file) for a
 * cursor beyond the split. */
int rt_loader_seek(rt_loader *loader, uint64_t epoch, size_t cursor, rt_error *err);

#endif
