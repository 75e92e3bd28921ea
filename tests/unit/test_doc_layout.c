/* test_doc_layout.c: the document-balanced sequence-parallel layout (seqpar/doc_layout.h): pieces tile the window,
 * equal tokens per rank, the piece bound, closed-form work against a naive count, balance on realistic packings. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "seqpar/doc_layout.h"
#include "seqpar/seqpar.h"
#include "tests/support/testing.h"

/*
 * The reference work is counted pair by pair: visible[i] = #{j : doc(j) ==
 * doc(i), j <= i}, O(T^2) over the window, from a per-token document id
 * (not from the starts' closed form). Windows are small (T <= 256) there;
 * at T = 32768 the per-token sum of i - start(i) + 1 stands in for it.
 *
 * Every call gets exactly the bytes the size functions report, with a
 * guard pattern behind: the pieces array (P * max_pieces) and the scratch
 * (seqpar_doc_layout_scratch_bytes), so writing past either shows.
 */
#define GUARD_BYTES 64
#define GUARD 0xA5

static uint64_t rand_below(uint64_t *state, uint64_t n) { return test_rand_u64(state) % n; }

/* The arrays of one layout call, each with a guard behind it. */
typedef struct {
    size_t T, max_pieces, scratch_bytes;
    int P;
    rt_span *pieces;
    size_t *n_pieces;
    unsigned char *scratch;
} layout_bufs;

static layout_bufs bufs_alloc(size_t T, int P) {
    layout_bufs b = {.T = T, .P = P};
    b.max_pieces = seqpar_doc_layout_max_pieces(T, P);
    b.scratch_bytes = seqpar_doc_layout_scratch_bytes(T, P);
    size_t piece_bytes = (size_t)P * b.max_pieces * sizeof(rt_span);
    b.pieces = malloc(piece_bytes + GUARD_BYTES);
    b.n_pieces = calloc((size_t)P, sizeof(size_t));
    b.scratch = malloc(b.scratch_bytes + GUARD_BYTES);
    memset((unsigned char *)b.pieces + piece_bytes, GUARD, GUARD_BYTES);
    memset(b.scratch + b.scratch_bytes, GUARD, GUARD_BYTES);
    return b;
}

static int guards_intact(const layout_bufs *b) {
    const unsigned char *after_pieces = (const unsigned char *)(b->pieces + (size_t)b->P * b->max_pieces);
    for (size_t i = 0; i < GUARD_BYTES; i++)
        if (after_pieces[i] != GUARD || b->scratch[b->scratch_bytes + i] != GUARD) return 0;
    return 1;
}

static void bufs_free(layout_bufs *b) {
    free(b->pieces);
    free(b->n_pieces);
    free(b->scratch);
}

/* visible[i] for every token, pair by pair. */
static void naive_visible(size_t T, const size_t *starts, size_t n_docs, uint64_t *visible) {
    int *doc = malloc(T * sizeof(int));
    for (size_t d = 0; d < n_docs; d++)
        for (size_t i = starts[d]; i < (d + 1 < n_docs ? starts[d + 1] : T); i++)
            doc[i] = (int)d;
    for (size_t i = 0; i < T; i++) {
        visible[i] = 0;
        for (size_t j = 0; j < T; j++)
            visible[i] += (doc[j] == doc[i] && j <= i);
    }
    free(doc);
}

/* visible[i] = i - start(i) + 1, token by token: the reference for long windows. */
static void per_token_visible(size_t T, const size_t *starts, size_t n_docs, uint64_t *visible) {
    for (size_t d = 0; d < n_docs; d++)
        for (size_t i = starts[d]; i < (d + 1 < n_docs ? starts[d + 1] : T); i++)
            visible[i] = i - starts[d] + 1;
}

static uint64_t sum_over(const uint64_t *visible, rt_span s) {
    uint64_t w = 0;
    for (size_t i = s.start; i < s.start + s.len; i++)
        w += visible[i];
    return w;
}

/* The pieces of every rank tile [0, T) once, T/P tokens each, in increasing order, no two touching, at most bound
 * pieces; rank r's closed-form work (seqpar_doc_layout_work and per piece) equals the reference. Counts the
 * failures. */
static int check_layout(const layout_bufs *b, const size_t *starts, size_t n_docs, const uint64_t *visible,
                        size_t bound) {
    size_t T = b->T;
    int P = b->P, bad = 0;
    int *owner = malloc(T * sizeof(int));
    for (size_t i = 0; i < T; i++)
        owner[i] = -1;
    uint64_t *work = malloc((size_t)P * sizeof(uint64_t));
    seqpar_doc_layout_work(T, P, starts, n_docs, b->pieces, b->n_pieces, work);
    for (int r = 0; r < P; r++) {
        const rt_span *list = b->pieces + (size_t)r * b->max_pieces;
        size_t tokens = 0;
        uint64_t ref = 0;
        bad += b->n_pieces[r] < 1 || b->n_pieces[r] > bound || b->n_pieces[r] > b->max_pieces;
        for (size_t i = 0; i < b->n_pieces[r] && i < b->max_pieces; i++) {
            rt_span s = list[i];
            bad += s.len < 1 || s.start >= T || s.len > T - s.start;
            if (i > 0) bad += list[i - 1].start + list[i - 1].len >= s.start; /* increasing, not touching */
            if (s.len < 1 || s.start >= T || s.len > T - s.start) continue;
            for (size_t t = s.start; t < s.start + s.len; t++) {
                bad += owner[t] != -1;
                owner[t] = r;
            }
            tokens += s.len;
            uint64_t piece_ref = sum_over(visible, s);
            bad += seqpar_doc_piece_work(T, starts, n_docs, s) != piece_ref;
            ref += piece_ref;
        }
        bad += tokens != T / (size_t)P;
        bad += work[r] != ref;
    }
    for (size_t i = 0; i < T; i++)
        bad += owner[i] < 0;
    free(work);
    free(owner);
    return bad;
}

/* max rank work <= 1.10 x the mean, as the layout compares it. */
static int within_balance(const uint64_t *work, int P) {
    uint64_t max = 0, total = 0;
    for (int r = 0; r < P; r++) {
        total += work[r];
        max = work[r] > max ? work[r] : max;
    }
    return max * (uint64_t)P * SEQPAR_DOC_BALANCE_DEN <= total * SEQPAR_DOC_BALANCE_NUM;
}

static uint64_t max_of(const uint64_t *work, int P) {
    uint64_t max = 0;
    for (int r = 0; r < P; r++)
        max = work[r] > max ? work[r] : max;
    return max;
}

/* Document starts of one of several kinds of window; returns n_docs. */
static size_t draw_starts(size_t T, int P, int kind, uint64_t *rng, size_t *starts) {
    size_t n = 0;
    switch (kind) {
    case 0: /* one document */ starts[n++] = 0; break;
    case 1: /* every token its own document */
        for (size_t i = 0; i < T; i++)
            starts[n++] = i;
        break;
    case 2: { /* documents of exactly a chunk, T/(k*P) for some k, some merged */
        size_t k = (size_t)2 << rand_below(rng, 4);
        if (T % (k * (size_t)P) != 0) k = 2;
        size_t chunk = T / (k * (size_t)P);
        for (size_t i = 0; i < T; i += chunk)
            if (i == 0 || rand_below(rng, 4) != 0) starts[n++] = i;
        break;
    }
    case 3: /* 1-token documents around one long one */ {
        size_t a = rand_below(rng, T), len = 1 + rand_below(rng, T - a);
        for (size_t i = 0; i < T; i++)
            if (i <= a || i >= a + len) starts[n++] = i;
        break;
    }
    case 4: /* a start at each token with a random probability */ {
        uint64_t p = 1 + rand_below(rng, 64);
        starts[n++] = 0;
        for (size_t i = 1; i < T; i++)
            if (rand_below(rng, 64) < p) starts[n++] = i;
        break;
    }
    default: /* lengths uniform up to a random cap */ {
        size_t cap = 1 + rand_below(rng, T);
        for (size_t i = 0; i < T; i += 1 + rand_below(rng, cap))
            starts[n++] = i;
        break;
    }
    }
    return n;
}

static void test_random_small_windows(void) {
    uint64_t rng = 0x5eed;
    int failures = 0, cases = 0;
    for (int P = 1; P <= 8; P++)
        for (int rep = 0; rep < 240; rep++) {
            size_t m = rep % 3 == 0 ? 8 * (1 + rand_below(&rng, 2)) : 1 + rand_below(&rng, 16); /* T = 2P*m */
            size_t T = 2 * (size_t)P * m;
            size_t *starts = malloc(T * sizeof(size_t));
            uint64_t *visible = malloc(T * sizeof(uint64_t));
            size_t n_docs = draw_starts(T, P, rep % 6, &rng, starts);
            naive_visible(T, starts, n_docs, visible);
            rt_error err;
            layout_bufs b = bufs_alloc(T, P);
            size_t k = 0;
            CU_ASSERT_FATAL(seqpar_doc_layout(T, P, starts, n_docs, b.pieces, b.n_pieces, b.scratch, &k, &err) == 0);
            CU_ASSERT(k == 2 || k == 4 || k == 8 || k == 16);
            CU_ASSERT(P == 1 || k <= b.max_pieces);
            int bad = check_layout(&b, starts, n_docs, visible, P == 1 ? 1 : k);
            CU_ASSERT_EQUAL(bad, 0);
            failures += bad != 0;
            uint64_t *work = malloc((size_t)P * sizeof(uint64_t)), *cand = malloc((size_t)P * sizeof(uint64_t));
            seqpar_doc_layout_work(T, P, starts, n_docs, b.pieces, b.n_pieces, work);
            /* the rule: the first k within the bound; when none is, the least loaded maximum */
            layout_bufs c = bufs_alloc(T, P);
            int any_within = 0;
            uint64_t least_max = UINT64_MAX;
            for (size_t kk = 2; kk <= (P == 1 ? 2 : b.max_pieces); kk *= 2) {
                CU_ASSERT_FATAL(
                    seqpar_doc_layout_chunks(T, P, kk, starts, n_docs, c.pieces, c.n_pieces, c.scratch, &err) == 0);
                CU_ASSERT_EQUAL(check_layout(&c, starts, n_docs, visible, P == 1 ? 1 : kk), 0);
                seqpar_doc_layout_work(T, P, starts, n_docs, c.pieces, c.n_pieces, cand);
                if (kk < k) CU_ASSERT(!within_balance(cand, P));
                if (kk == k) CU_ASSERT(memcmp(cand, work, (size_t)P * sizeof(uint64_t)) == 0);
                any_within |= within_balance(cand, P);
                least_max = max_of(cand, P) < least_max ? max_of(cand, P) : least_max;
            }
            if (any_within) {
                CU_ASSERT(within_balance(work, P));
            } else {
                CU_ASSERT_EQUAL(max_of(work, P), least_max);
            }
            /* zigzag: the closed form against the naive count on its spans */
            uint64_t total = 0, zig_total = 0;
            CU_ASSERT_FATAL(seqpar_doc_zigzag_work(T, P, starts, n_docs, cand, &err) == 0);
            for (int r = 0; r < P; r++) {
                rt_span spans[2];
                CU_ASSERT_FATAL(seqpar_zigzag_spans(r, P, T, spans, &err) == 0);
                CU_ASSERT_EQUAL(cand[r], sum_over(visible, spans[0]) + sum_over(visible, spans[1]));
                total += work[r];
                zig_total += cand[r];
            }
            CU_ASSERT_EQUAL(total, sum_over(visible, (rt_span){0, T}));
            CU_ASSERT_EQUAL(zig_total, total);
            CU_ASSERT(guards_intact(&b) && guards_intact(&c));
            bufs_free(&c);
            bufs_free(&b);
            free(work);
            free(cand);
            free(visible);
            free(starts);
            cases++;
        }
    if (failures) fprintf(stderr, "\n  %d of %d windows broke a layout invariant\n", failures, cases);
}

/* Unpacked windows keep today's layout: with one document the pieces are the zigzag spans (rank P-1's two merged,
 * P == 1 one piece). */
static void test_one_document_is_zigzag(void) {
    for (int P = 1; P <= 8; P++)
        for (size_t m = 1; m <= 16; m *= 2) {
            size_t T = 2 * (size_t)P * 16 * m, start0 = 0, k = 0;
            rt_error err;
            layout_bufs b = bufs_alloc(T, P);
            CU_ASSERT_FATAL(seqpar_doc_layout(T, P, &start0, 1, b.pieces, b.n_pieces, b.scratch, &k, &err) == 0);
            CU_ASSERT_EQUAL(k, 2);
            uint64_t *work = malloc((size_t)P * sizeof(uint64_t));
            seqpar_doc_layout_work(T, P, &start0, 1, b.pieces, b.n_pieces, work);
            for (int r = 0; r < P; r++) {
                rt_span spans[2], *got = b.pieces + (size_t)r * b.max_pieces;
                CU_ASSERT_FATAL(seqpar_zigzag_spans(r, P, T, spans, &err) == 0);
                if (spans[0].start + spans[0].len == spans[1].start) {
                    CU_ASSERT_EQUAL(b.n_pieces[r], 1);
                    CU_ASSERT(got[0].start == spans[0].start && got[0].len == spans[0].len + spans[1].len);
                } else {
                    CU_ASSERT_EQUAL(b.n_pieces[r], 2);
                    CU_ASSERT(got[0].start == spans[0].start && got[0].len == spans[0].len);
                    CU_ASSERT(got[1].start == spans[1].start && got[1].len == spans[1].len);
                }
                CU_ASSERT_EQUAL(work[r], work[0]); /* balanced to the pair */
            }
            free(work);
            bufs_free(&b);
        }
}

static void test_bounds_and_sizes(void) {
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(32768, 1), 1);
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(32768, 8), 16);
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(24, 4), 2);  /* 24 = 8 x 3 */
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(12, 3), 4);  /* 12 = 4 x 3 */
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(24, 3), 8);  /* 24 = 8 x 3 */
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(96, 3), 16); /* 96 = 32 x 3 */
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(30, 4), 0);  /* no 2P chunks */
    CU_ASSERT_EQUAL(seqpar_doc_layout_max_pieces(32, 0), 0);
    CU_ASSERT_EQUAL(seqpar_doc_layout_scratch_bytes(30, 4), 0);
    CU_ASSERT(seqpar_doc_layout_scratch_bytes(32768, 8) > 0);
    CU_ASSERT(seqpar_doc_layout_scratch_bytes(32768, 8) <= 16 * 8 * 32 + 8 * 16); /* a few KiB at most */
}

static void test_bad_input_is_an_error(void) {
    size_t T = 48, ok[] = {0, 10, 20}, late[] = {0, 48}, back[] = {0, 10, 10}, off[] = {3, 10}; /* 4 x 12 */
    layout_bufs b = bufs_alloc(T, 4);
    rt_error err;
    struct {
        size_t T;
        int P;
        const size_t *starts;
        size_t n_docs;
        const char *what;
    } cases[] = {
        {T, 4, ok, 0, "no document"},  {T, 4, off, 2, "first start not 0"}, {T, 4, back, 3, "repeated start"},
        {T, 4, late, 2, "start at T"}, {60, 4, ok, 3, "T not 2P chunks"},   {T, 0, ok, 3, "no rank"},
        {0, 4, ok, 1, "empty window"},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        err.msg[0] = 0;
        int rc = seqpar_doc_layout(cases[i].T, cases[i].P, cases[i].starts, cases[i].n_docs, b.pieces, b.n_pieces,
                                   b.scratch, NULL, &err);
        if (rc != -1 || err.msg[0] == 0) fprintf(stderr, "\n  %s: accepted\n", cases[i].what);
        CU_ASSERT(rc == -1 && err.msg[0] != 0);
        uint64_t work[4];
        CU_ASSERT(seqpar_doc_zigzag_work(cases[i].T, cases[i].P, cases[i].starts, cases[i].n_docs, work, &err) == -1);
    }
    CU_ASSERT(seqpar_doc_layout_chunks(T, 4, 3, ok, 3, b.pieces, b.n_pieces, b.scratch, &err) == -1);
    CU_ASSERT(seqpar_doc_layout_chunks(T, 4, 32, ok, 3, b.pieces, b.n_pieces, b.scratch, &err) == -1);
    CU_ASSERT(seqpar_doc_layout_chunks(T, 4, 16, ok, 3, b.pieces, b.n_pieces, b.scratch, &err) == -1); /* 48 % 64 */
    CU_ASSERT(seqpar_doc_layout_chunks(T, 4, 8, ok, 3, b.pieces, b.n_pieces, b.scratch, &err) == -1);  /* 48 % 32 */
    CU_ASSERT(seqpar_doc_layout_chunks(T, 4, 4, ok, 3, b.pieces, b.n_pieces, b.scratch, &err) == 0);
    CU_ASSERT(guards_intact(&b));
    bufs_free(&b);
}

/* Standard normal (Box-Muller) from the test generator. */
static double rand_normal(uint64_t *rng) {
    double u1 = ((test_rand_u64(rng) >> 11) + 0.5) * 0x1.0p-53, u2 = ((test_rand_u64(rng) >> 11) + 0.5) * 0x1.0p-53;
    return sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2);
}

/* Realistic packings at T = 32768: log-normal document lengths (medians 1024 and 2048, sigma 1.1, clipped to
 * [1, T]) concatenated and cut into windows; every layout within 1.10 of the mean, the invariants, the work
 * token by token; same starts, same layout. */
static void test_realistic_windows_balanced(void) {
    const size_t T = 32768;
    size_t *starts = malloc(T * sizeof(size_t));
    uint64_t *visible = malloc(T * sizeof(uint64_t));
    int unbalanced = 0, windows = 0;
    for (int P = 4; P <= 8; P += 4)
        for (int median = 1024; median <= 2048; median *= 2) {
            uint64_t rng = 0xd0c5u + (uint64_t)(P * 7 + median);
            size_t left = 0; /* tokens of the current document still to come */
            layout_bufs b = bufs_alloc(T, P), again = bufs_alloc(T, P);
            for (int w = 0; w < 40; w++) {
                size_t n_docs = 0;
                for (size_t at = 0; at < T;) {
                    if (left == 0) {
                        double len = median * exp(1.1 * rand_normal(&rng));
                        left = len < 1 ? 1 : len > (double)T ? T : (size_t)len;
                    }
                    starts[n_docs++] = at;
                    size_t take = left < T - at ? left : T - at;
                    at += take;
                    left -= take;
                }
                per_token_visible(T, starts, n_docs, visible);
                rt_error err;
                CU_ASSERT_FATAL(seqpar_doc_layout(T, P, starts, n_docs, b.pieces, b.n_pieces, b.scratch, NULL, &err) ==
                                0);
                CU_ASSERT_EQUAL(check_layout(&b, starts, n_docs, visible, SEQPAR_DOC_MAX_CHUNKS), 0);
                uint64_t work[8];
                seqpar_doc_layout_work(T, P, starts, n_docs, b.pieces, b.n_pieces, work);
                unbalanced += !within_balance(work, P);
                windows++;
                CU_ASSERT_FATAL(seqpar_doc_layout(T, P, starts, n_docs, again.pieces, again.n_pieces, again.scratch,
                                                  NULL, &err) == 0);
                CU_ASSERT(memcmp(b.n_pieces, again.n_pieces, (size_t)P * sizeof(size_t)) == 0);
                for (int r = 0; r < P; r++)
                    CU_ASSERT(memcmp(b.pieces + (size_t)r * b.max_pieces, again.pieces + (size_t)r * b.max_pieces,
                                     b.n_pieces[r] * sizeof(rt_span)) == 0);
            }
            CU_ASSERT(guards_intact(&b) && guards_intact(&again));
            bufs_free(&b);
            bufs_free(&again);
        }
    if (unbalanced) fprintf(stderr, "\n  %d of %d realistic windows above 1.10x the mean\n", unbalanced, windows);
    CU_ASSERT_EQUAL(unbalanced, 0);
    free(visible);
    free(starts);
}

int main(void) {
    test_case tests[] = {
        {"random small windows: tiling, T/P per rank, order, bound, work = naive count", test_random_small_windows},
        {"one document: the zigzag", test_one_document_is_zigzag},
        {"max pieces and scratch sizes", test_bounds_and_sizes},
        {"bad input is an error", test_bad_input_is_an_error},
        {"realistic packings at T = 32768: within 1.10, deterministic", test_realistic_windows_balanced},
    };
    return test_run_suite("test_doc_layout", tests, (int)(sizeof tests / sizeof tests[0]));
}
