/*
 * test_utf8_stream.c: the streaming UTF-8 writer against an independent reference built from the definition.
 * The reference encodes every scalar value (U+0000..U+10FFFF without surrogates) with the arithmetic of
 * UTF-8, keeps the set of well-formed sequences and of their prefixes, and decodes by taking at each position
 * the longest prefix of a well-formed sequence: a whole sequence is written, anything else is one U+FFFD
 * (at least one byte consumed). The writer must match it exactly on random bytes fed in random pieces, and
 * on the example of the Unicode standard's chapter 3 (U+FFFD substitution of maximal subparts).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/utf8_stream.h"
#include "tests/support/testing.h"

/* prefixes[k] holds every well-formed prefix of length k+1 packed big-endian; whole[k] flags those that
 * are whole characters. Sorted, for bsearch. */
static uint32_t *prefixes[4];
static unsigned char *whole[4];
static size_t n_prefixes[4];

static int compare_u32(const void *a, const void *b) {
    const uint32_t x = *(const uint32_t *)a, y = *(const uint32_t *)b;
    return (x > y) - (x < y);
}

static int compare_u64(const void *a, const void *b) {
    const uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return (x > y) - (x < y);
}

static int encode(uint32_t cp, unsigned char out[4]) {
    if (cp < 0x80) return out[0] = (unsigned char)cp, 1;
    if (cp < 0x800) return out[0] = (unsigned char)(0xC0 | cp >> 6), out[1] = (unsigned char)(0x80 | (cp & 63)), 2;
    if (cp < 0x10000) {
        out[0] = (unsigned char)(0xE0 | cp >> 12);
        out[1] = (unsigned char)(0x80 | ((cp >> 6) & 63));
        out[2] = (unsigned char)(0x80 | (cp & 63));
        return 3;
    }
    out[0] = (unsigned char)(0xF0 | cp >> 18);
    out[1] = (unsigned char)(0x80 | ((cp >> 12) & 63));
    out[2] = (unsigned char)(0x80 | ((cp >> 6) & 63));
    out[3] = (unsigned char)(0x80 | (cp & 63));
    return 4;
}

static uint32_t pack(const unsigned char *b, int k) {
    uint32_t v = 0;
    for (int i = 0; i < k; i++)
        v = v << 8 | b[i];
    return v;
}

static void build_reference(void) {
    uint64_t *all[4]; /* a prefix and, in the low bit, whether it is a whole character */
    size_t n[4] = {0};
    for (int k = 0; k < 4; k++)
        all[k] = malloc(0x110000 * sizeof(uint64_t));
    for (uint32_t cp = 0; cp < 0x110000; cp++) {
        if (cp >= 0xD800 && cp <= 0xDFFF) continue;
        unsigned char b[4];
        const int len = encode(cp, b);
        for (int k = 1; k <= len; k++)
            all[k - 1][n[k - 1]++] = (uint64_t)pack(b, k) << 1 | (k == len);
    }
    for (int k = 0; k < 4; k++) {
        qsort(all[k], n[k], sizeof(uint64_t), compare_u64);
        prefixes[k] = malloc(n[k] * sizeof(uint32_t));
        whole[k] = malloc(n[k]);
        size_t m = 0;
        for (size_t i = 0; i < n[k]; i++) {
            if (m > 0 && prefixes[k][m - 1] == all[k][i] >> 1) {
                whole[k][m - 1] |= (unsigned char)(all[k][i] & 1);
                continue;
            }
            prefixes[k][m] = (uint32_t)(all[k][i] >> 1);
            whole[k][m++] = (unsigned char)(all[k][i] & 1);
        }
        n_prefixes[k] = m;
        free(all[k]);
    }
}

/* 0 not a prefix, 1 a proper prefix, 2 a whole character */
static int lookup(const unsigned char *b, int k) {
    const uint32_t key = pack(b, k);
    const uint32_t *hit = bsearch(&key, prefixes[k - 1], n_prefixes[k - 1], sizeof key, compare_u32);
    return hit ? 1 + whole[k - 1][hit - prefixes[k - 1]] : 0;
}

static size_t reference_decode(const unsigned char *in, size_t len, unsigned char *out) {
    size_t o = 0;
    for (size_t i = 0; i < len;) {
        int best = 0, kind = 0;
        for (int k = 1; k <= 4 && i + (size_t)k <= len; k++) {
            const int got = lookup(in + i, k);
            if (!got) break;
            best = k;
            kind = got;
        }
        if (kind == 2) {
            memcpy(out + o, in + i, (size_t)best);
            o += (size_t)best;
        } else {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
        }
        i += best > 0 ? (size_t)best : 1;
    }
    return o;
}

/* The writer's output for `in` cut into pieces at the given cut points. */
static size_t stream_decode(const unsigned char *in, size_t len, const size_t *cuts, int n_cuts, char **out) {
    size_t out_len = 0;
    FILE *f = open_memstream(out, &out_len);
    rt_utf8_stream s = {0};
    size_t at = 0;
    for (int c = 0; c <= n_cuts; c++) {
        const size_t end = c < n_cuts ? cuts[c] : len;
        rt_utf8_write(&s, in + at, end - at, f);
        at = end;
    }
    rt_utf8_finish(&s, f);
    fclose(f);
    return out_len;
}

static void test_unicode_example(void) {
    /* Unicode 15, section 3.9, "U+FFFD Substitution of Maximal Subparts": 61 F1 80 80 E1 80 C2 62 80 63 80
     * BF 64 decodes to a FFFD FFFD FFFD b FFFD c FFFD FFFD d. */
    const unsigned char in[] = {0x61, 0xF1, 0x80, 0x80, 0xE1, 0x80, 0xC2, 0x62, 0x80, 0x63, 0x80, 0xBF, 0x64};
    const char want[] = "a\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD"
                        "b\xEF\xBF\xBD"
                        "c\xEF\xBF\xBD\xEF\xBF\xBD"
                        "d";
    for (size_t cut = 0; cut <= sizeof in; cut++) {
        char *got = NULL;
        const size_t n = stream_decode(in, sizeof in, &cut, 1, &got);
        CU_ASSERT(n == strlen(want) && memcmp(got, want, n) == 0);
        free(got);
    }
}

static void test_random_against_reference(void) {
    build_reference();
    /* bytes drawn mostly from the ranges where UTF-8's rules bite: leads, boundaries of the second-byte
     * ranges, continuation bytes */
    static const unsigned char interesting[] = {0x00, 0x41, 0x7F, 0x80, 0x8F, 0x90, 0x9F, 0xA0, 0xBF,
                                                0xC0, 0xC1, 0xC2, 0xDF, 0xE0, 0xE1, 0xEC, 0xED, 0xEE,
                                                0xEF, 0xF0, 0xF1, 0xF3, 0xF4, 0xF5, 0xFF};
    uint64_t rng = 12345;
    int mismatches = 0;
    for (int trial = 0; trial < 20000; trial++) {
        unsigned char in[24];
        const size_t len = 1 + trial % 24;
        for (size_t i = 0; i < len; i++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            const unsigned r = (unsigned)(rng >> 33);
            in[i] = r % 3 ? interesting[r / 3 % sizeof interesting] : (unsigned char)(r >> 8);
        }
        size_t cuts[4];
        int n_cuts = 0;
        for (int c = 0; c < 4; c++) {
            rng = rng * 6364136223846793005ULL + 1442695040888963407ULL;
            const size_t at = (size_t)(rng >> 33) % (len + 1);
            if (n_cuts == 0 || at >= cuts[n_cuts - 1]) cuts[n_cuts++] = at;
        }
        unsigned char want[24 * 3];
        const size_t want_len = reference_decode(in, len, want);
        char *got = NULL;
        const size_t got_len = stream_decode(in, len, cuts, n_cuts, &got);
        if (got_len != want_len || memcmp(got, want, want_len) != 0) {
            if (mismatches++ < 3) {
                for (size_t i = 0; i < len; i++)
                    fprintf(stderr, "%02X ", in[i]);
                fprintf(stderr, " cuts");
                for (int c = 0; c < n_cuts; c++)
                    fprintf(stderr, " %zu", cuts[c]);
                fprintf(stderr, "\n want");
                for (size_t i = 0; i < want_len; i++)
                    fprintf(stderr, " %02X", want[i]);
                fprintf(stderr, "\n got ");
                for (size_t i = 0; i < got_len; i++)
                    fprintf(stderr, " %02X", (unsigned char)got[i]);
                fprintf(stderr, "\n");
            }
        }
        free(got);
    }
    CU_ASSERT_EQUAL(mismatches, 0);
    for (int k = 0; k < 4; k++) {
        free(prefixes[k]);
        free(whole[k]);
    }
}

int main(void) {
    test_case cases[] = {
        {"the Unicode standard's example, cut anywhere", test_unicode_example},
        {"random bytes in random pieces match the reference decoder", test_random_against_reference},
    };
    return test_run_suite("utf8_stream", cases, 2);
}
