/* doc_layout.c: the work-balanced split of a window packed with documents over a sequence-parallel group (see
 * doc_layout.h). */
#include "doc_layout.h"

#include <stdlib.h>

#include "seqpar.h"

/* One chunk in the LPT order: its work and window index. */
typedef struct {
    uint64_t work;
    size_t index;
} chunk_work;

/* The scratch, carved out of the caller's bytes: per chunk, per rank. */
typedef struct {
    chunk_work *order;
    uint64_t *load;
    size_t *count;
    int *owner;
} layout_scratch;

static layout_scratch carve_scratch(void *scratch, size_t n_chunks, int P) {
    layout_scratch s;
    s.order = scratch;
    s.load = (uint64_t *)(s.order + n_chunks);
    s.count = (size_t *)(s.load + P);
    s.owner = (int *)(s.count + P);
    return s;
}

static uint64_t tri(uint64_t n) { return n * (n + 1) / 2; }

/* The document holding token i: the last d with starts[d] <= i. */
static size_t doc_of(const size_t *starts, size_t n_docs, size_t i) {
    size_t lo = 0, hi = n_docs; /* starts[lo] <= i < starts[hi] (starts[n_docs] read as infinity) */
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (starts[mid] <= i)
            lo = mid;
        else
            hi = mid;
    }
    return lo;
}

int seqpar_doc_starts_check(size_t T, const size_t *starts, size_t n_docs, rt_error *err) {
    if (T < 1 || T > UINT32_MAX) return rt_fail(err, "document layout: window of %zu tokens (1 .. 2^32-1)", T);
    if (n_docs < 1 || !starts) return rt_fail(err, "document layout: a window needs at least one document");
    if (starts[0] != 0) return rt_fail(err, "document layout: the first document starts at %zu, not 0", starts[0]);
    for (size_t d = 1; d < n_docs; d++)
        if (starts[d] <= starts[d - 1] || starts[d] >= T)
            return rt_fail(err,
                           "document layout: document %zu starts at %zu after %zu in a window of %zu tokens "
                           "(starts must increase strictly and stay below the window's length)",
                           d, starts[d], starts[d - 1], T);
    return 0;
}

static int check_group(size_t T, int P, rt_error *err) {
    if (P < 1) return rt_fail(err, "document layout: %d sequence-parallel ranks", P);
    if (T % (2 * (size_t)P) != 0)
        return rt_fail(err, "document layout: a window of %zu tokens does not divide into 2*sp = %zu chunks", T,
                       2 * (size_t)P);
    return 0;
}

size_t seqpar_doc_layout_max_pieces(size_t T, int P) {
    if (P < 1 || T == 0 || T % (2 * (size_t)P) != 0) return 0;
    if (P == 1) return 1;
    size_t k = 2;
    while (2 * k <= SEQPAR_DOC_MAX_CHUNKS && T % (2 * k * (size_t)P) == 0)
        k *= 2;
    return k;
}

size_t seqpar_doc_layout_scratch_bytes(size_t T, int P) {
    size_t k = seqpar_doc_layout_max_pieces(T, P);
    if (k == 0) return 0;
    size_t n_chunks = (P == 1 ? SEQPAR_DOC_MAX_CHUNKS : k) * (size_t)P;
    return n_chunks * (sizeof(chunk_work) + sizeof(int)) + (size_t)P * (sizeof(uint64_t) + sizeof(size_t));
}

uint64_t seqpar_doc_piece_work(size_t T, const size_t *starts, size_t n_docs, rt_span piece) {
    if (piece.len == 0) return 0;
    size_t end = piece.start + piece.len;
    uint64_t work = 0;
    for (size_t d = doc_of(starts, n_docs, piece.start); d < n_docs && starts[d] < end; d++) {
        size_t doc_end = d + 1 < n_docs ? starts[d + 1] : T;
        size_t lo = piece.start > starts[d] ? piece.start : starts[d];
        size_t hi = end < doc_end ? end : doc_end;
        work += tri(hi - starts[d]) - tri(lo - starts[d]); /* tokens lo..hi-1 see lo-s+1 .. hi-s keys */
    }
    return work;
}

void seqpar_doc_layout_work(size_t T, int P, const size_t *starts, size_t n_docs, const rt_span *pieces,
                            const size_t *n_pieces, uint64_t *work) {
    size_t stride = seqpar_doc_layout_max_pieces(T, P);
    for (int r = 0; r < P; r++) {
        work[r] = 0;
        for (size_t i = 0; i < n_pieces[r]; i++)
            work[r] += seqpar_doc_piece_work(T, starts, n_docs, pieces[(size_t)r * stride + i]);
    }
}

int seqpar_doc_zigzag_work(size_t T, int P, const size_t *starts, size_t n_docs, uint64_t *work, rt_error *err) {
    if (check_group(T, P, err) || seqpar_doc_starts_check(T, starts, n_docs, err)) return -1;
    for (int r = 0; r < P; r++) {
        rt_span spans[2];
        if (seqpar_zigzag_spans(r, P, T, spans, err)) return -1;
        work[r] =
            seqpar_doc_piece_work(T, starts, n_docs, spans[0]) + seqpar_doc_piece_work(T, starts, n_docs, spans[1]);
    }
    return 0;
}

static int by_work_desc(const void *a, const void *b) {
    const chunk_work *x = a, *y = b;
    if (x->work != y->work) return x->work > y->work ? -1 : 1;
    return x->index < y->index ? -1 : x->index > y->index;
}

/* LPT of k*P chunks, k per rank: owner[chunk] in s; returns the load of the most loaded rank. */
static uint64_t assign_chunks(size_t T, int P, size_t k, const size_t *starts, size_t n_docs, layout_scratch s) {
    size_t n_chunks = k * (size_t)P, chunk = T / n_chunks;
    for (size_t c = 0; c < n_chunks; c++)
        s.order[c] =
            (chunk_work){.work = seqpar_doc_piece_work(T, starts, n_docs, (rt_span){c * chunk, chunk}), .index = c};
    qsort(s.order, n_chunks, sizeof *s.order, by_work_desc);
    for (int r = 0; r < P; r++)
        s.load[r] = 0, s.count[r] = 0;
    uint64_t max_load = 0;
    for (size_t i = 0; i < n_chunks; i++) {
        int best = -1;
        for (int r = 0; r < P; r++)
            if (s.count[r] < k && (best < 0 || s.load[r] < s.load[best])) best = r;
        s.owner[s.order[i].index] = best;
        s.load[best] += s.order[i].work;
        s.count[best]++;
        if (s.load[best] > max_load) max_load = s.load[best];
    }
    return max_load;
}

/* Rank r's chunks in window order, touching ones merged, into pieces[r * stride ...]. */
static void write_pieces(size_t T, int P, size_t k, layout_scratch s, rt_span *pieces, size_t *n_pieces) {
    size_t stride = seqpar_doc_layout_max_pieces(T, P), n_chunks = k * (size_t)P, chunk = T / n_chunks;
    for (int r = 0; r < P; r++)
        n_pieces[r] = 0;
    for (size_t c = 0; c < n_chunks; c++) {
        int r = s.owner[c];
        rt_span *list = pieces + (size_t)r * stride;
        if (n_pieces[r] > 0 && list[n_pieces[r] - 1].start + list[n_pieces[r] - 1].len == c * chunk)
            list[n_pieces[r] - 1].len += chunk;
        else
            list[n_pieces[r]++] = (rt_span){.start = c * chunk, .len = chunk};
    }
}

static int check_k(size_t T, int P, size_t k, rt_error *err) {
    if (k != 2 && k != 4 && k != 8 && k != 16)
        return rt_fail(err, "document layout: %zu chunks per rank (2, 4, 8 or 16)", k);
    if (T % (k * (size_t)P) != 0)
        return rt_fail(err, "document layout: a window of %zu tokens does not divide into %zu x %d chunks", T, k, P);
    return 0;
}

int seqpar_doc_layout_chunks(size_t T, int P, size_t k, const size_t *starts, size_t n_docs, rt_span *pieces,
                             size_t *n_pieces, void *scratch, rt_error *err) {
    if (check_group(T, P, err) || seqpar_doc_starts_check(T, starts, n_docs, err) || check_k(T, P, k, err)) return -1;
    layout_scratch s = carve_scratch(scratch, k * (size_t)P, P);
    assign_chunks(T, P, k, starts, n_docs, s);
    write_pieces(T, P, k, s, pieces, n_pieces);
    return 0;
}

int seqpar_doc_layout(size_t T, int P, const size_t *starts, size_t n_docs, rt_span *pieces, size_t *n_pieces,
                      void *scratch, size_t *k_out, rt_error *err) {
    if (check_group(T, P, err) || seqpar_doc_starts_check(T, starts, n_docs, err)) return -1;
    size_t k_max = P == 1 ? 2 : seqpar_doc_layout_max_pieces(T, P);
    uint64_t total = seqpar_doc_piece_work(T, starts, n_docs, (rt_span){0, T});
    size_t best_k = 0, last_k = 0;
    uint64_t best_max = 0;
    for (size_t k = 2; k <= k_max; k *= 2) {
        uint64_t max_load = assign_chunks(T, P, k, starts, n_docs, carve_scratch(scratch, k * (size_t)P, P));
        last_k = k;
        /* max <= NUM/DEN x total/P, in 128 bits (max, total < 2^63, P < 2^31) */
        if ((unsigned __int128)max_load * (unsigned)P * SEQPAR_DOC_BALANCE_DEN <=
            (unsigned __int128)total * SEQPAR_DOC_BALANCE_NUM) {
            best_k = k;
            break;
        }
        if (best_k == 0 || max_load < best_max) best_k = k, best_max = max_load;
    }
    layout_scratch s = carve_scratch(scratch, best_k * (size_t)P, P);
    if (best_k != last_k) assign_chunks(T, P, best_k, starts, n_docs, s); /* none was within the bound */
    write_pieces(T, P, best_k, s, pieces, n_pieces);
    if (k_out) *k_out = best_k;
    return 0;
}
