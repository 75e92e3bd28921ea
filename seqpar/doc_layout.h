/* doc_layout.h: how a window packed with documents is split over the P ranks of a sequence-parallel group so that
 * every rank holds T/P tokens and about the same attention work under the per-document causal mask. Pure: no
 * communication, no device, no allocation. */
#ifndef RT_SEQPAR_DOC_LAYOUT_H
#define RT_SEQPAR_DOC_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/common.h"
#include "runtime/core/tensor.h"

/*
 * A window of T tokens holds n_docs >= 1 documents: document d is
 * [starts[d], starts[d+1]) (the last one ends at T), starts[0] == 0 and
 * the starts strictly increase (no empty document). A document cut by the
 * window's start begins at 0 there. Query i sees key j iff both lie in the
 * same document and j <= i, so the work of token i is i - start(i) + 1
 * visible keys, and the work of a set of tokens the sum of theirs.
 *
 * Plain zigzag (seqpar_zigzag_spans) balances one document per window, not
 * a packed one: the measured worst step is 2.6x..3.6x the mean rank's work
 * at T = 32768, P = 4..8 (jobs/bench-doc-balance.sh).
 *
 * The layout here: the window is cut into k*P equal chunks of T/(k*P),
 * and each rank takes k of them, by LPT with a cardinality limit: chunks
 * in decreasing order of work (ties: lower window index first) each go to
 * the least loaded rank that holds fewer than k (ties: lower rank). A
 * rank's chunks, in window order, with touching ones merged, are its
 * pieces. k is the first of 2, 4, 8, 16 (those for which k*P divides T)
 * whose layout keeps the most loaded rank within 1.10x the mean
 * (SEQPAR_DOC_BALANCE_NUM / _DEN, compared in integers); when none does,
 * the k whose most loaded rank carries least (ties: smaller k). With one
 * document, k = 2 gives exactly the zigzag (same spans, balanced to the
 * token), so unpacked windows keep today's layout.
 *
 * Bounds: a rank holds at most k pieces, so at most
 * seqpar_doc_layout_max_pieces(T, P) <= 16 (1 when P == 1). Measured on
 * log-normal packings (medians 1024 and 2048, sigma 1.1, T = 32768, P = 4
 * and 8, 2000 windows each): k = 2 or 4 in 81-97% of windows, 8 in the
 * rest, never 16, so at most 8 pieces there (4-4.7 on average for the
 * busiest rank); every window within 1.10 (mean 1.03-1.04). Fixed k = 4
 * reaches 1.47 at worst, fixed k = 8 stays within 1.05 with 8 pieces
 * always, plain zigzag reaches 3.6.
 *
 * Everything is integer arithmetic on the starts: every rank computes the
 * same layout from the same starts without communicating.
 *
 * Pieces are returned for every rank in one array: rank r's n_pieces[r]
 * pieces at pieces[r * max_pieces], max_pieces =
 * seqpar_doc_layout_max_pieces(T, P), in increasing window order, each of
 * length >= 1, no two touching (merged). They tile [0, T) exactly once and
 * sum to T/P tokens per rank.
 */

/* The imbalance a layout may keep: max rank work <= NUM/DEN x the mean. */
#define SEQPAR_DOC_BALANCE_NUM 11
#define SEQPAR_DOC_BALANCE_DEN 10
/* The largest k tried (chunks per rank). */
#define SEQPAR_DOC_MAX_CHUNKS 16

/* -1 with err unless T >= 1, T < 2^32, n_docs >= 1, starts[0] == 0, starts strictly increasing and < T. */
int seqpar_doc_starts_check(size_t T, const size_t *starts, size_t n_docs, rt_error *err);

/* Pieces per rank the arrays must hold: the largest k in {2, 4, 8, 16} with T % (k*P) == 0 (1 when P == 1);
 * 0 when P < 1 or T is not a multiple of 2P. */
size_t seqpar_doc_layout_max_pieces(size_t T, int P);

/* Bytes of the caller's scratch for seqpar_doc_layout and seqpar_doc_layout_chunks (aligned as malloc aligns):
 * per chunk a work, an index and an owner, per rank a load and a count, for the most chunks any admissible k
 * makes (16 per rank at most; 2688 bytes for P = 8). 0 when P < 1 or T is not a multiple of 2P. */
size_t seqpar_doc_layout_scratch_bytes(size_t T, int P);

/*
 * The balanced layout above. pieces holds P * max_pieces spans, n_pieces P
 * counts, scratch seqpar_doc_layout_scratch_bytes(T, P) bytes; k_out
 * (unless NULL) gets the chosen k. -1 with err when P < 1, T is not a
 * multiple of 2P, or the starts fail seqpar_doc_starts_check.
 */
int seqpar_doc_layout(size_t T, int P, const size_t *starts, size_t n_docs, rt_span *pieces, size_t *n_pieces,
                      void *scratch, size_t *k_out, rt_error *err);

/* The LPT layout for one k (the candidates seqpar_doc_layout chooses from): the same arrays; -1 with err also
 * when k is not 2, 4, 8 or 16 or k*P does not divide T. */
int seqpar_doc_layout_chunks(size_t T, int P, size_t k, const size_t *starts, size_t n_docs, rt_span *pieces,
                             size_t *n_pieces, void *scratch, rt_error *err);

/* Visible (query, key) pairs of the queries in piece (within [0, T)), in closed form per document it meets:
 * sum over document d of S(hi - s_d) - S(lo - s_d), S(n) = n(n+1)/2, [lo, hi) = piece within d. The starts must
 * pass seqpar_doc_starts_check. */
uint64_t seqpar_doc_piece_work(size_t T, const size_t *starts, size_t n_docs, rt_span piece);

/* work[r] = the work of rank r's pieces, for arrays laid out as seqpar_doc_layout writes them. */
void seqpar_doc_layout_work(size_t T, int P, const size_t *starts, size_t n_docs, const rt_span *pieces,
                            const size_t *n_pieces, uint64_t *work);

/* work[r] = the work of rank r's two zigzag chunks (seqpar_zigzag_spans). -1 with err as seqpar_doc_layout. */
int seqpar_doc_zigzag_work(size_t T, int P, const size_t *starts, size_t n_docs, uint64_t *work, rt_error *err);

#endif
