/* test_bpe_tokenizer.c: the byte-level BPE tokenizer (io/bpe_tokenizer.h) on a hand-written tokenizer.json whose
 * expected ids are worked out by hand below; added tokens, ignore_merges, Split pre-tokenizers, decoding and the
 * one-line refusals.
 *
 * `test_bpe_tokenizer roundtrip TOKENIZER TEXT IDS` is the e2e test's helper (tests/e2e/hf_tokenizer.py): it
 * encodes TEXT, writes the ids to IDS (uint32 little-endian), decodes them and exits 0 only when the bytes come
 * back exactly.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/bpe_tokenizer.h"
#include "tests/support/testing.h"

/*
 * The vocabulary, in the byte-level alphabet: a space is "Ġ" (U+0120), the bytes of "é" (C3 A9) are "Ã" (U+00C3)
 * and "©" (U+00A9), printable ASCII stands for itself.
 *   a 0  b 1  c 2  Ġ 3  ab 4  bc 5  abc 6  Ġa 7  Ġb 8  ! 9  ' 10  s 11  aa 12  cab 13  Ã 14  © 15  ©a 16
 *   added: <|endoftext|> 17 (special)
 * Merges by rank: 0 "a b", 1 "b c", 2 "ab c", 3 "Ġ a", 4 "a a", 5 "© a".
 */
#define VOCAB                                                                                                          \
    "\"a\":0,\"b\":1,\"c\":2,\"\u0120\":3,\"ab\":4,\"bc\":5,\"abc\":6,\"\u0120a\":7,\"\u0120b\":8,\"!\":9,\"'\":10,"   \
    "\"s\":11,\"aa\":12,\"cab\":13,\"\u00c3\":14,\"\u00a9\":15,\"\u00a9a\":16"
#define MERGES_STRINGS "[\"a b\",\"b c\",\"ab c\",\"\u0120 a\",\"a a\",\"\u00a9 a\"]"
#define MERGES_PAIRS "[[\"a\",\"b\"],[\"b\",\"c\"],[\"ab\",\"c\"],[\"\u0120\",\"a\"],[\"a\",\"a\"],[\"\u00a9\",\"a\"]]"
#define ADDED                                                                                                          \
    "[{\"id\":17,\"content\":\"<|endoftext|>\",\"single_word\":false,\"lstrip\":false,\"rstrip\":false,"               \
    "\"normalized\":false,\"special\":true}]"
#define BYTE_LEVEL(prefix, regex)                                                                                      \
    "{\"type\":\"ByteLevel\",\"add_prefix_space\":" prefix ",\"trim_offsets\":true,\"use_regex\":" regex "}"
#define GPT2_PRE BYTE_LEVEL("false", "true")

/* A tokenizer.json with the given pieces; model_extra goes inside "model" (ignore_merges and the like). */
static char *make_json(const char *pre, const char *merges, const char *added, const char *model_extra,
                       const char *top_extra) {
    const char *fmt = "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,\"added_tokens\":%s,"
                      "\"normalizer\":null,\"pre_tokenizer\":%s,\"post_processor\":null,"
                      "\"decoder\":{\"type\":\"ByteLevel\",\"add_prefix_space\":true,\"trim_offsets\":true,"
                      "\"use_regex\":true},%s"
                      "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":null,"
                      "\"continuing_subword_prefix\":null,\"end_of_word_suffix\":null,\"fuse_unk\":false,"
                      "\"byte_fallback\":false%s,\"vocab\":{" VOCAB "},\"merges\":%s}}";
    size_t n = strlen(fmt) + strlen(pre) + strlen(merges) + strlen(added) + strlen(model_extra) + strlen(top_extra);
    char *json = malloc(n + 1);
    snprintf(json, n + 1, fmt, added, pre, top_extra, model_extra, merges);
    return json;
}

static rt_bpe_tokenizer *load(const char *pre, const char *merges, const char *model_extra, rt_error *err) {
    char *json = make_json(pre, merges, ADDED, model_extra, "");
    rt_bpe_tokenizer *tok = rt_bpe_load_text(json, strlen(json), "tok.json", err);
    free(json);
    return tok;
}

/* Encodes text and compares with the n expected ids, printing both when they differ. */
static int encodes_to(rt_bpe_tokenizer *tok, const char *text, const uint32_t *expected, size_t n) {
    rt_bpe_ids ids = {0};
    rt_error err = {{0}};
    int same = rt_bpe_encode(tok, text, strlen(text), &ids, &err) == 0 && ids.n == n &&
               (n == 0 || memcmp(ids.ids, expected, n * sizeof *expected) == 0);
    if (!same) {
        fprintf(stderr, "\n  '%s': got", text);
        for (size_t i = 0; i < ids.n; i++)
            fprintf(stderr, " %u", ids.ids[i]);
        fprintf(stderr, ", expected");
        for (size_t i = 0; i < n; i++)
            fprintf(stderr, " %u", expected[i]);
        fprintf(stderr, " %s\n", err.msg);
    }
    rt_bpe_ids_free(&ids);
    return same;
}

#define ENCODES(tok, text, ...)                                                                                        \
    do {                                                                                                               \
        const uint32_t expected_[] = {__VA_ARGS__};                                                                    \
        CU_ASSERT(encodes_to((tok), (text), expected_, sizeof expected_ / sizeof *expected_));                         \
    } while (0)

static void check_merges(rt_bpe_tokenizer *tok) {
    /* a b c: "a b" (rank 0) before "b c" (rank 1), then "ab c" (rank 2) */
    ENCODES(tok, "abc", 6);
    /* b c a: only "b c" applies; "bc a" is no merge */
    ENCODES(tok, "bca", 5, 0);
    /* Ġ a b: "a b" (rank 0) beats "Ġ a" (rank 3); "Ġ ab" is no merge */
    ENCODES(tok, " ab", 3, 4);
    /* a a a: two "a a" pairs of equal rank; the leftmost merges first */
    ENCODES(tok, "aaa", 12, 0);
    /* c a b: "a b" only ("cab" is in the vocabulary but no merge makes it) */
    ENCODES(tok, "cab", 2, 4);
    /* "é" and "a" are one letter run: Ã © a, then "© a" (rank 5) */
    ENCODES(tok,
            "\xc3\xa9"
            "a",
            14, 16);
    /* GPT-2's pattern: "ab", "'s" (a contraction: ' s, no merge), "!" */
    ENCODES(tok, "ab's!", 4, 10, 11, 9);
    /* "a", " " (whitespace not followed by non-space stays alone), " b" (Ġ b: no merge) */
    ENCODES(tok, "a  b", 0, 3, 3, 1);
}

static void test_merges_by_rank(void) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = load(GPT2_PRE, MERGES_STRINGS, "", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    check_merges(tok);
    CU_ASSERT_EQUAL(rt_bpe_vocab_size(tok), 18);
    rt_bpe_free(tok);
}

static void test_merges_as_pairs(void) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = load(GPT2_PRE, MERGES_PAIRS, "", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    check_merges(tok);
    rt_bpe_free(tok);
}

static void test_added_tokens(void) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = load(GPT2_PRE, MERGES_STRINGS, "", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    /* the special token is cut out before the pattern sees "<|" and "endoftext" (neither in the vocabulary) */
    ENCODES(tok, "ab<|endoftext|>c", 4, 17, 2);
    ENCODES(tok, "<|endoftext|><|endoftext|>", 17, 17);
    /* a partial match is plain text: '<', '|', 'e', ... are not in the vocabulary and drop out */
    ENCODES(tok, "ab<|endoftext", 4);
    CU_ASSERT_EQUAL(rt_bpe_special_id(tok, "<|endoftext|>"), 17);
    CU_ASSERT_EQUAL(rt_bpe_token_id(tok, "<|endoftext|>"), 17);
    CU_ASSERT_EQUAL(rt_bpe_token_id(tok, "abc"), 6);
    CU_ASSERT_EQUAL(rt_bpe_token_id(tok, "zz"), -1);
    CU_ASSERT_EQUAL(rt_bpe_special_id(tok, "abc"), -1);
    rt_bpe_free(tok);
}

static void test_prefix_space(void) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = load(BYTE_LEVEL("true", "true"), MERGES_STRINGS, "", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    /* " abc": Ġ, then a b c as before (the pattern keeps " abc" whole: "Ġ a" rank 3 loses to "a b" rank 0) */
    ENCODES(tok, "abc", 3, 6);
    /* already starting with a space: none added */
    ENCODES(tok, " ab", 3, 4);
    /* Ġ a a a: "Ġ a" (rank 3) before either "a a" (rank 4); then "Ġa a" is no merge and the last "a a" is */
    ENCODES(tok, "aaa", 7, 12);
    /* every segment between added tokens gets its own prefix space */
    ENCODES(tok, "ab<|endoftext|>c", 3, 4, 17, 3, 2);
    rt_bpe_free(tok);
}

static void test_ignore_merges(void) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = load(GPT2_PRE, MERGES_STRINGS, ",\"ignore_merges\":true", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    ENCODES(tok, "cab", 13); /* the word is in the vocabulary: one id, merges or not */
    ENCODES(tok, "bca", 5, 0);
    rt_bpe_free(tok);
}

static void test_split_sequence(void) {
    rt_error err = {{0}};
    const char *pre =
        "{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":"
        "\"\\\\p{L}+| ?[^\\\\s\\\\p{L}]+|\\\\s+\"},\"behavior\":\"Isolated\",\"invert\":false}," BYTE_LEVEL(
            "false", "false") "]}";
    rt_bpe_tokenizer *tok = load(pre, MERGES_STRINGS, ",\"ignore_merges\":true", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    /* "éa" (letters), " " (whitespace: \s+), "b" */
    ENCODES(tok,
            "\xc3\xa9"
            "a b",
            14, 16, 3, 1);
    /* "cab" whole (ignore_merges), " " , "ab", "!" */
    ENCODES(tok, "cab ab!", 13, 3, 4, 9);
    rt_bpe_free(tok);
}

static void test_decode(void) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = load(GPT2_PRE, MERGES_STRINGS, "", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    const uint32_t ids[] = {3, 4, 17, 2, 14, 16};
    char *text = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(rt_bpe_decode(tok, ids, 6, &text, &len, &err), 0);
    CU_ASSERT_EQUAL(len, strlen(" ab<|endoftext|>c\xc3\xa9"
                                "a"));
    CU_ASSERT_STRING_EQUAL(text, " ab<|endoftext|>c\xc3\xa9"
                                 "a");
    free(text);
    const uint32_t bad[] = {3, 99};
    CU_ASSERT_EQUAL(rt_bpe_decode(tok, bad, 2, &text, &len, &err), -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "id 99 at position 1"));
    rt_bpe_free(tok);
}

static void test_invalid_utf8(void) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = load(GPT2_PRE, MERGES_STRINGS, "", &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tok);
    rt_bpe_ids ids = {0};
    const char *cases[] = {"ab\xff", "ab\xc3", "ab\xed\xa0\x80" /* a surrogate */, "ab\xc0\xaf" /* overlong */};
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(rt_bpe_encode(tok, cases[i], strlen(cases[i]), &ids, &err), -1);
        CU_ASSERT_PTR_NOT_NULL(strstr(err.msg, "invalid UTF-8 at byte offset 2"));
    }
    rt_bpe_ids_free(&ids);
    rt_bpe_free(tok);
}

/* Loading json fails with one line naming tok.json and containing want. */
static void refused(const char *json, const char *want) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = rt_bpe_load_text(json, strlen(json), "tok.json", &err);
    CU_ASSERT_PTR_NULL(tok);
    rt_bpe_free(tok);
    int ok = strncmp(err.msg, "tok.json: ", 10) == 0 && strstr(err.msg, want) && !strchr(err.msg, '\n');
    if (!ok) fprintf(stderr, "\n  expected '%s' in: %s\n", want, err.msg);
    CU_ASSERT(ok);
}

static void refused_with(const char *pre, const char *added, const char *model_extra, const char *top_extra,
                         const char *want) {
    char *json = make_json(pre, MERGES_STRINGS, added, model_extra, top_extra);
    refused(json, want);
    free(json);
}

/* The standard file with its first `from` replaced by `to` (from is longer than to). */
static void refused_edit(const char *from, const char *to, const char *want) {
    char *json = make_json(GPT2_PRE, MERGES_STRINGS, ADDED, "", "");
    char *at = strstr(json, from);
    CU_ASSERT_PTR_NOT_NULL_FATAL(at);
    size_t from_len = strlen(from), to_len = strlen(to);
    memmove(at + to_len, at + from_len, strlen(at + from_len) + 1);
    memcpy(at, to, to_len);
    refused(json, want);
    free(json);
}

static void test_refusals(void) {
    refused("{\"model\":{\"type\":\"WordPiece\",\"vocab\":{}}}",
            "model.type 'WordPiece': ringtrain implements byte-level BPE only");
    refused("{\"model\":{\"type\":\"Unigram\",\"vocab\":[]}}", "model.type 'Unigram'");
    refused("{\"model\":", "not valid JSON");
    refused_edit("\"byte_fallback\":false", "\"byte_fallback\":0", "model.byte_fallback: expected true or false");
    refused_edit("\"byte_fallback\":false", "\"byte_fallback\":true", "model.byte_fallback true");
    refused_edit("\"normalizer\":null", "\"normalizer\":{\"type\":\"NFC\"}", "normalizer type 'NFC'");
    refused_with("{\"type\":\"Metaspace\"}", ADDED, "", "", "pre_tokenizer type 'Metaspace'");
    refused_with("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a\"},"
                 "\"behavior\":\"Removed\",\"invert\":false}," GPT2_PRE "]}",
                 ADDED, "", "", "pre_tokenizer.pretokenizers[0].behavior 'Removed'");
    refused_with("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"a*\"},"
                 "\"behavior\":\"Isolated\",\"invert\":false}," GPT2_PRE "]}",
                 ADDED, "", "", "pre_tokenizer.pretokenizers[0].pattern: pattern can match the empty string");
    refused_with("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(\"},"
                 "\"behavior\":\"Isolated\",\"invert\":false}," GPT2_PRE "]}",
                 ADDED, "", "", "pre_tokenizer.pretokenizers[0].pattern: pattern does not compile");
    refused_with(GPT2_PRE,
                 "[{\"id\":17,\"content\":\"<x>\",\"lstrip\":true,\"rstrip\":false,\"single_word\":false,"
                 "\"normalized\":false,\"special\":true}]",
                 "", "", "added_tokens[0].lstrip true");
    refused_edit("\"dropout\":null", "\"dropout\":0.1", "model.dropout is set");
    refused_edit("\"decoder\":{\"type\":\"ByteLevel\"", "\"decoder\":{\"type\":\"WordPiece\"",
                 "decoder type 'WordPiece'");
    char *json = make_json(GPT2_PRE, "[\"a b\",\"a z\"]", ADDED, "", "");
    refused(json, "model.merges[1]: a part or the merged token is not in model.vocab");
    free(json);
}

/* The e2e helper: encode, write the ids, decode, compare. */
static int roundtrip(const char *tokenizer, const char *text_path, const char *ids_path) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = rt_bpe_load(tokenizer, &err);
    if (!tok) return fprintf(stderr, "%s\n", err.msg), 1;
    FILE *in = fopen(text_path, "rb");
    if (!in) return fprintf(stderr, "%s: cannot open\n", text_path), 1;
    fseek(in, 0, SEEK_END);
    long len = ftell(in);
    fseek(in, 0, SEEK_SET);
    char *text = malloc((size_t)len + 1);
    size_t got = fread(text, 1, (size_t)len, in);
    fclose(in);
    rt_bpe_ids ids = {0};
    char *back = NULL;
    size_t back_len = 0;
    int rc = got == (size_t)len && rt_bpe_encode(tok, text, got, &ids, &err) == 0 &&
                     rt_bpe_decode(tok, ids.ids, ids.n, &back, &back_len, &err) == 0
                 ? 0
                 : 1;
    if (rc) fprintf(stderr, "%s\n", err.msg);
    FILE *out = rc ? NULL : fopen(ids_path, "wb");
    if (!rc && (!out || fwrite(ids.ids, sizeof *ids.ids, ids.n, out) != ids.n)) rc = 1;
    if (out) fclose(out);
    if (!rc && (back_len != got || memcmp(back, text, got) != 0)) {
        fprintf(stderr, "%s: decoding the ids does not give the text back\n", text_path);
        rc = 1;
    }
    free(back);
    free(text);
    rt_bpe_ids_free(&ids);
    rt_bpe_free(tok);
    return rc;
}

int main(int argc, char **argv) {
    if (argc == 5 && strcmp(argv[1], "roundtrip") == 0) return roundtrip(argv[2], argv[3], argv[4]);
    test_case cases[] = {
        {"merges_by_rank", test_merges_by_rank},
        {"merges_as_pairs", test_merges_as_pairs},
        {"added_tokens", test_added_tokens},
        {"prefix_space", test_prefix_space},
        {"ignore_merges", test_ignore_merges},
        {"split_sequence", test_split_sequence},
        {"decode", test_decode},
        {"invalid_utf8", test_invalid_utf8},
        {"refusals", test_refusals},
    };
    return test_run_suite("test_bpe_tokenizer", cases, (int)(sizeof cases / sizeof cases[0]));
}
