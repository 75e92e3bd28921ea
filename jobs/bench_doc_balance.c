/*
 * bench_doc_balance.c: how evenly sequence-parallel layouts spread the attention work of windows packed with
 * documents (causal within a document only) over the P ranks. Counts, not timings. Not a test.
 *
 *   bench_doc_balance T P MEDIAN SIGMA WINDOWS SEED [header]
 *
 * Packing: document lengths log-normal (median MEDIAN, sigma SIGMA), rounded down and clipped to [1, T],
 * concatenated and cut into WINDOWS windows of T tokens; a document cut by a window boundary continues at 0 in
 * the next one. Work of a rank: its visible (query, key) pairs, seqpar_doc_piece_work per piece.
 *
 * Layouts:
 *   zigzag      today's seqpar_zigzag_spans: 2P chunks, rank r holds r and 2P-1-r
 *   lpt-K       seqpar_doc_layout_chunks: K*P equal chunks, LPT with at most K per rank
 *   pair-K      K*P equal chunks sorted by work, dealt in snake order (round j to ranks 0..P-1, then P-1..0)
 *   doc-zigzag  every document of length L zigzag over 2P pieces of L/(2P) after its first L mod 2P tokens;
 *               those first tokens of all documents, in window order, cut into P equal runs
 *   chosen      seqpar_doc_layout: the first K of 2, 4, 8, 16 whose lpt-K is within 1.10 of the mean
 *
 * One row per layout: max/mean of per-rank work (worst window, 99th percentile, mean over windows), pieces per
 * rank (the most any rank held in any window; the mean of each window's most), kernel calls per rank and layer
 * (the (query piece, key piece) pairs with a visible pair, over the P held blocks of a ring pass, the most any rank
 * makes: mean and worst over windows), and the share of (query, key) pairs that document masking removes from full
 * causal, 1 - work / (T(T+1)/2) (the same for every layout: the window's). For `chosen`, how often each K was
 * taken follows the table.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/core/common.h"
#include "seqpar/doc_layout.h"
#include "seqpar/seqpar.h"

/* Every rank's pieces, in window order: rank r's n[r] at piece[r * stride]. */
typedef struct {
    int P;
    size_t stride;
    size_t *n;
    rt_span *piece;
} layout;

/* A layout's statistics over the windows. */
typedef struct {
    const char *name;
    double *ratio; /* per window */
    size_t max_pieces, calls_max;
    double pieces_sum, calls_sum;
} stats;

static uint64_t splitmix(uint64_t *s) {
    uint64_t z = (*s += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

static double normal(uint64_t *s) { /* Box-Muller */
    double u1 = ((splitmix(s) >> 11) + 0.5) * 0x1.0p-53, u2 = ((splitmix(s) >> 11) + 0.5) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Appends [start, start + len) to rank r, merged with its last piece when they touch. */
static void push(layout *l, int r, size_t start, size_t len) {
    if (len == 0) return;
    rt_span *list = l->piece + (size_t)r * l->stride;
    if (l->n[r] > 0 && list[l->n[r] - 1].start + list[l->n[r] - 1].len == start)
        list[l->n[r] - 1].len += len;
    else {
        if (l->n[r] == l->stride) rt_fatal("bench_doc_balance: more than %zu pieces on a rank", l->stride);
        list[l->n[r]++] = (rt_span){start, len};
    }
}

static void clear(layout *l) {
    for (int r = 0; r < l->P; r++)
        l->n[r] = 0;
}

/* Chunks c of width `chunk` handed out by owner[c]. */
static void from_owners(layout *l, const int *owner, size_t n_chunks, size_t chunk) {
    clear(l);
    for (size_t c = 0; c < n_chunks; c++)
        push(l, owner[c], c * chunk, chunk);
}

typedef struct {
    uint64_t work;
    size_t index;
} chunk_work;

static int by_work_desc(const void *a, const void *b) {
    const chunk_work *x = a, *y = b;
    if (x->work != y->work) return x->work > y->work ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

static void pair_layout(layout *l, size_t T, size_t K, const size_t *starts, size_t n_docs, chunk_work *cw,
                        int *owner) {
    size_t n_chunks = K * (size_t)l->P, chunk = T / n_chunks;
    for (size_t c = 0; c < n_chunks; c++)
        cw[c] = (chunk_work){seqpar_doc_piece_work(T, starts, n_docs, (rt_span){c * chunk, chunk}), c};
    qsort(cw, n_chunks, sizeof *cw, by_work_desc);
    for (size_t i = 0; i < n_chunks; i++) {
        size_t round = i / (size_t)l->P, at = i % (size_t)l->P;
        owner[cw[i].index] = (int)(round % 2 == 0 ? at : (size_t)l->P - 1 - at);
    }
    from_owners(l, owner, n_chunks, chunk);
}

static void doc_zigzag_layout(layout *l, size_t T, const size_t *starts, size_t n_docs) {
    const size_t P = (size_t)l->P;
    size_t lead = 0; /* the first L mod 2P tokens of every document, all together */
    for (size_t d = 0; d < n_docs; d++)
        lead += ((d + 1 < n_docs ? starts[d + 1] : T) - starts[d]) % (2 * P);
    size_t per_rank = lead / P, dealt = 0; /* lead = T - 2P x (sum of quotients): a multiple of 2P */
    clear(l);
    for (size_t d = 0; d < n_docs; d++) {
        size_t end = d + 1 < n_docs ? starts[d + 1] : T, len = end - starts[d], rem = len % (2 * P), q = len / (2 * P);
        for (size_t at = starts[d]; at < starts[d] + rem;) { /* the lead, dealt in window order */
            size_t r = dealt / per_rank, take = per_rank - dealt % per_rank;
            take = take < starts[d] + rem - at ? take : starts[d] + rem - at;
            push(l, (int)r, at, take);
            at += take, dealt += take;
        }
        for (size_t j = 0; q > 0 && j < 2 * P; j++) {
            size_t at = starts[d] + rem + j * q;
            push(l, (int)(j < P ? j : 2 * P - 1 - j), at, q);
        }
    }
    /* pieces of a rank arrive in window order already: the lead of a document precedes its zigzag pieces */
}

static int cmp_size(const void *a, const void *b) {
    size_t x = *(const size_t *)a, y = *(const size_t *)b;
    return x < y ? -1 : x > y;
}

static size_t count_at_most(const size_t *sorted, size_t n, size_t v) { /* #{sorted[i] <= v} */
    size_t lo = 0, hi = n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (sorted[mid] <= v)
            lo = mid + 1;
        else
            hi = mid;
    }
    return lo;
}

static size_t doc_start_of(const size_t *starts, size_t n_docs, size_t i) {
    return starts[count_at_most(starts, n_docs, i) - 1];
}

/* Checks the layout (tiling, T/P per rank), then records its balance, pieces and kernel calls. */
static void record(stats *st, const layout *l, size_t T, const size_t *starts, size_t n_docs, size_t w, size_t *ends,
                   unsigned char *seen) {
    const int P = l->P;
    uint64_t max = 0, total = 0;
    size_t most_pieces = 0, n_ends = 0;
    memset(seen, 0, T);
    for (int r = 0; r < P; r++) {
        uint64_t work = 0;
        size_t tokens = 0;
        for (size_t i = 0; i < l->n[r]; i++) {
            rt_span s = l->piece[(size_t)r * l->stride + i];
            for (size_t t = s.start; t < s.start + s.len; t++) {
                if (seen[t]) rt_fatal("bench_doc_balance: %s: token %zu held twice", st->name, t);
                seen[t] = 1;
            }
            work += seqpar_doc_piece_work(T, starts, n_docs, s);
            tokens += s.len;
            ends[n_ends++] = s.start + s.len;
        }
        if (tokens != T / (size_t)P) rt_fatal("bench_doc_balance: %s: rank %d holds %zu tokens", st->name, r, tokens);
        total += work;
        max = work > max ? work : max;
        most_pieces = l->n[r] > most_pieces ? l->n[r] : most_pieces;
    }
    st->ratio[w] = (double)max * P / (double)total;
    st->max_pieces = most_pieces > st->max_pieces ? most_pieces : st->max_pieces;
    st->pieces_sum += (double)most_pieces;
    /* kernel calls: query piece q meets key piece k (any rank's) iff k == q, or k ends in (start of q's first
     * document, q.start]: before q, reaching into the document q begins in */
    qsort(ends, n_ends, sizeof *ends, cmp_size);
    size_t most_calls = 0;
    for (int r = 0; r < P; r++) {
        size_t calls = 0;
        for (size_t i = 0; i < l->n[r]; i++) {
            rt_span q = l->piece[(size_t)r * l->stride + i];
            size_t s = doc_start_of(starts, n_docs, q.start);
            calls += 1 + count_at_most(ends, n_ends, q.start) - count_at_most(ends, n_ends, s);
        }
        most_calls = calls > most_calls ? calls : most_calls;
    }
    st->calls_sum += (double)most_calls;
    st->calls_max = most_calls > st->calls_max ? most_calls : st->calls_max;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

int main(int argc, char **argv) {
    if (argc < 7) {
        fprintf(stderr, "usage: bench_doc_balance T P MEDIAN SIGMA WINDOWS SEED [header]\n");
        return 2;
    }
    const size_t T = strtoul(argv[1], NULL, 10), n_windows = strtoul(argv[5], NULL, 10);
    const int P = atoi(argv[2]);
    const double median = atof(argv[3]), sigma = atof(argv[4]);
    uint64_t rng = strtoull(argv[6], NULL, 10);
    const size_t max_pieces = seqpar_doc_layout_max_pieces(T, P), max_k = P == 1 ? 2 : max_pieces;
    if (max_pieces == 0 || n_windows == 0 || P < 1) {
        fprintf(stderr, "bench_doc_balance: T = %zu does not divide into 2P = %d chunks, or no windows\n", T, 2 * P);
        return 2;
    }
    enum { N_LAYOUTS = 10 };
    const char *names[N_LAYOUTS] = {"zigzag", "lpt-2",  "lpt-4",   "lpt-8",      "lpt-16",
                                    "pair-4", "pair-8", "pair-16", "doc-zigzag", "chosen"};
    stats st[N_LAYOUTS];
    for (int i = 0; i < N_LAYOUTS; i++)
        st[i] = (stats){.name = names[i], .ratio = calloc_check(n_windows, sizeof(double))};
    size_t *starts = malloc_check(T * sizeof(size_t)), *ends = malloc_check(T * sizeof(size_t));
    unsigned char *seen = malloc_check(T);
    layout l = {.P = P, .stride = T / (size_t)P, .n = calloc_check((size_t)P, sizeof(size_t))};
    l.piece = malloc_check((size_t)P * l.stride * sizeof(rt_span));
    /* the library's arrays: stride max_pieces */
    rt_span *lib_pieces = malloc_check((size_t)P * max_pieces * sizeof(rt_span));
    size_t *lib_n = malloc_check((size_t)P * sizeof(size_t));
    void *scratch = malloc_check(seqpar_doc_layout_scratch_bytes(T, P));
    chunk_work *cw = malloc_check(16 * (size_t)P * sizeof(chunk_work));
    int *owner = malloc_check(16 * (size_t)P * sizeof(int));
    size_t chosen_k[17] = {0};
    double masked_sum = 0, masked_min = 1, masked_max = 0, docs_sum = 0;
    size_t left = 0;
    rt_error err;
    for (size_t w = 0; w < n_windows; w++) {
        size_t n_docs = 0;
        for (size_t at = 0; at < T;) {
            if (left == 0) {
                double len = floor(median * exp(sigma * normal(&rng)));
                left = len < 1 ? 1 : len > (double)T ? T : (size_t)len;
            }
            starts[n_docs++] = at;
            size_t take = left < T - at ? left : T - at;
            at += take, left -= take;
        }
        docs_sum += (double)n_docs;
        double masked = 1.0 - (double)seqpar_doc_piece_work(T, starts, n_docs, (rt_span){0, T}) /
                                  ((double)T * (double)(T + 1) / 2.0);
        masked_sum += masked;
        masked_min = masked < masked_min ? masked : masked_min;
        masked_max = masked > masked_max ? masked : masked_max;
        for (int i = 0; i < N_LAYOUTS; i++) {
            clear(&l);
            size_t k = 0;
            if (i == 0) {
                for (int r = 0; r < P; r++) {
                    rt_span sp[2];
                    if (seqpar_zigzag_spans(r, P, T, sp, &err)) rt_fatal("bench_doc_balance: %s", err.msg);
                    push(&l, r, sp[0].start, sp[0].len);
                    push(&l, r, sp[1].start, sp[1].len);
                }
            } else if (i <= 4 || i == 9) {
                k = (size_t)1 << i; /* lpt-2 .. lpt-16 */
                if (i <= 4 && k > max_k) continue;
                int rc = i == 9 ? seqpar_doc_layout(T, P, starts, n_docs, lib_pieces, lib_n, scratch, &k, &err)
                                : seqpar_doc_layout_chunks(T, P, k, starts, n_docs, lib_pieces, lib_n, scratch, &err);
                if (rc) rt_fatal("bench_doc_balance: %s", err.msg);
                if (i == 9) chosen_k[k]++;
                for (int r = 0; r < P; r++)
                    for (size_t j = 0; j < lib_n[r]; j++)
                        push(&l, r, lib_pieces[(size_t)r * max_pieces + j].start,
                             lib_pieces[(size_t)r * max_pieces + j].len);
            } else if (i <= 7) {
                k = (size_t)1 << (i - 3); /* pair-4 .. pair-16 */
                if (k > max_k) continue;
                pair_layout(&l, T, k, starts, n_docs, cw, owner);
            } else
                doc_zigzag_layout(&l, T, starts, n_docs);
            record(&st[i], &l, T, starts, n_docs, w, ends, seen);
        }
    }
    if (argc > 7)
        printf("%-6s %-2s %-11s %-7s %-7s %-7s %-13s %-15s %s\n", "median", "P", "layout", "worst", "p99", "mean",
               "pieces max/avg", "calls avg/worst", "masked vs causal (mean, min-max)");
    for (int i = 0; i < N_LAYOUTS; i++) {
        if (st[i].pieces_sum == 0) { /* K*P does not divide T */
            free(st[i].ratio);
            continue;
        }
        qsort(st[i].ratio, n_windows, sizeof(double), cmp_double);
        double mean = 0;
        for (size_t w = 0; w < n_windows; w++)
            mean += st[i].ratio[w];
        size_t p99 = (size_t)ceil(0.99 * (double)n_windows) - 1;
        char pieces[32], calls[32];
        snprintf(pieces, sizeof pieces, "%zu/%.1f", st[i].max_pieces, st[i].pieces_sum / (double)n_windows);
        snprintf(calls, sizeof calls, "%.1f/%zu", st[i].calls_sum / (double)n_windows, st[i].calls_max);
        printf("%-6.0f %-2d %-11s %-7.3f %-7.3f %-7.3f %-13s %-15s %.1f%% (%.1f-%.1f)\n", median, P, names[i],
               st[i].ratio[n_windows - 1], st[i].ratio[p99], mean / (double)n_windows, pieces, calls,
               100 * masked_sum / (double)n_windows, 100 * masked_min, 100 * masked_max);
        free(st[i].ratio);
    }
    printf("  T=%zu P=%d median=%.0f sigma=%.2f: %zu windows, %.1f documents each; chosen K: 2 %zu, 4 %zu, 8 %zu, "
           "16 %zu\n",
           T, P, median, sigma, n_windows, docs_sum / (double)n_windows, chosen_k[2], chosen_k[4], chosen_k[8],
           chosen_k[16]);
    free(starts), free(ends), free(seen), free(l.n), free(l.piece), free(lib_pieces), free(lib_n), free(scratch);
    free(cw), free(owner);
    return 0;
}
