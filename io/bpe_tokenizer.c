/*
 * bpe_tokenizer.c: byte-level BPE as the `tokenizers` library runs it, from its tokenizer.json.
 *
 * encode(text), in the library's order:
 *   1. added tokens are cut out literally (leftmost-longest), first those with normalized false, then the
 *      rest in what remains (the library's two passes; with no normalizer they see the same text);
 *   2. each remaining segment goes through the pre-tokenizer: every Split in turn (a match and the text
 *      between matches each become a piece), then ByteLevel (a prefix space when asked, GPT-2's pattern
 *      when use_regex);
 *   3. each piece is a word: its bytes map to the byte-level alphabet's symbols, and merges apply lowest
 *      rank first, leftmost first among equal ranks, from a heap checked against the current symbols
 *      exactly as the library's word merging does (so even files where two merges make the same token
 *      tokenize alike). ignore_merges: a word that is itself in the vocabulary is one id.
 * Words repeat, so their ids are cached (cleared when the cache grows past a bound).
 * Patterns run through PCRE2 in UTF mode with Unicode properties (PCRE2_UCP), JIT-compiled; text is
 * checked for valid UTF-8 once, so the matcher runs with PCRE2_NO_UTF_CHECK. A pattern that can match the
 * empty string is refused: the library's Oniguruma and PCRE2 step past empty matches differently.
 */
#include "bpe_tokenizer.h"
#include "tokens.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <cJSON.h>
#include <errno.h>
#include <math.h>
#include <pcre2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define GPT2_PATTERN "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"
#define MAX_ID (1 << 24) /* above every real vocabulary; bounds the id tables a file can ask for */
#define MAX_SPLITS 8
#define CACHE_WORD_MAX 256 /* longer words are rare and not worth keeping */
#define CACHE_ENTRIES_MAX (1u << 20)
#define MATCH_LIMIT 10000000u

uint64_t rt_bpe_fnv1a(const void *data, size_t len) {
    const unsigned char *p = data;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len; i++) {
        h ^= p[i];
        h *= 0x100000001b3ULL;
    }
    return h;
}

/* ------------------------------------------------------------------ byte pool and string map */

typedef struct {
    char *bytes;
    size_t len, cap;
} pool;

static size_t pool_add(pool *p, const void *data, size_t len) {
    if (p->len + len > p->cap) {
        size_t cap = p->cap ? p->cap : 4096;
        while (cap < p->len + len)
            cap *= 2;
        char *grown = realloc(p->bytes, cap);
        if (!grown) rt_fatal("out of host memory for the tokenizer (%zu bytes)", cap);
        p->bytes = grown;
        p->cap = cap;
    }
    size_t off = p->len;
    if (len) memcpy(p->bytes + off, data, len);
    p->len += len;
    return off;
}

/* Open addressing over byte-string keys kept in the map's own pool; values are two uint32. */
typedef struct {
    uint64_t hash;
    size_t key_off;
    uint32_t key_len, a, b, used;
} slot;

typedef struct {
    slot *slots;
    size_t cap, n; /* cap a power of two */
    pool keys;
} strmap;

static slot *strmap_find(const strmap *m, const char *key, size_t len, uint64_t h) {
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)h & mask;; i = (i + 1) & mask) {
        slot *s = &m->slots[i];
        if (!s->used) return s;
        if (s->hash == h && s->key_len == len && memcmp(m->keys.bytes + s->key_off, key, len) == 0) return s;
    }
}

static const slot *strmap_get(const strmap *m, const char *key, size_t len) {
    if (!m->cap) return NULL;
    const slot *s = strmap_find(m, key, len, rt_bpe_fnv1a(key, len));
    return s->used ? s : NULL;
}

static void strmap_grow(strmap *m) {
    slot *old = m->slots;
    size_t old_cap = m->cap;
    m->cap = old_cap ? old_cap * 2 : 1024;
    m->slots = calloc_check(m->cap, sizeof *m->slots);
    for (size_t i = 0; i < old_cap; i++)
        if (old[i].used) *strmap_find(m, m->keys.bytes + old[i].key_off, old[i].key_len, old[i].hash) = old[i];
    free(old);
}

/* Sets key's values (a later key replaces an earlier one, as a JSON object read into a map does). */
static void strmap_put(strmap *m, const char *key, size_t len, uint32_t a, uint32_t b) {
    if ((m->n + 1) * 2 > m->cap) strmap_grow(m);
    uint64_t h = rt_bpe_fnv1a(key, len);
    slot *s = strmap_find(m, key, len, h);
    if (!s->used) {
        *s = (slot){.hash = h, .key_off = pool_add(&m->keys, key, len), .key_len = (uint32_t)len, .used = 1};
        m->n++;
    }
    s->a = a;
    s->b = b;
}

static void strmap_free(strmap *m) {
    free(m->slots);
    free(m->keys.bytes);
    memset(m, 0, sizeof *m);
}

/* ------------------------------------------------------------------ merges: (left, right) -> (rank, new id) */

typedef struct {
    uint64_t key; /* left << 32 | right; UINT64_MAX = empty */
    uint32_t rank, new_id;
} merge_slot;

typedef struct {
    merge_slot *slots;
    size_t cap, n;
} merge_map;

static uint64_t mix64(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    return x;
}

static merge_slot *merge_find(const merge_map *m, uint64_t key) {
    size_t mask = m->cap - 1;
    for (size_t i = (size_t)mix64(key) & mask;; i = (i + 1) & mask)
        if (m->slots[i].key == key || m->slots[i].key == UINT64_MAX) return &m->slots[i];
}

static const merge_slot *merge_get(const merge_map *m, uint32_t left, uint32_t right) {
    if (!m->cap) return NULL;
    const merge_slot *s = merge_find(m, (uint64_t)left << 32 | right);
    return s->key == UINT64_MAX ? NULL : s;
}

static void merge_put(merge_map *m, uint32_t left, uint32_t right, uint32_t rank, uint32_t new_id) {
    if ((m->n + 1) * 2 > m->cap) {
        merge_slot *old = m->slots;
        size_t old_cap = m->cap;
        m->cap = old_cap ? old_cap * 2 : 1024;
        m->slots = malloc_check(m->cap * sizeof *m->slots);
        for (size_t i = 0; i < m->cap; i++)
            m->slots[i].key = UINT64_MAX;
        for (size_t i = 0; i < old_cap; i++)
            if (old[i].key != UINT64_MAX) *merge_find(m, old[i].key) = old[i];
        free(old);
    }
    uint64_t key = (uint64_t)left << 32 | right;
    merge_slot *s = merge_find(m, key);
    if (s->key == UINT64_MAX) m->n++;
    *s = (merge_slot){key, rank, new_id}; /* a repeated pair keeps its last rank, as the library's map does */
}

/* ------------------------------------------------------------------ the tokenizer */

typedef struct {
    pcre2_code *code;
    pcre2_match_data *match;
} pattern;

typedef struct {
    size_t off, len; /* content in the added pool */
    uint32_t id;
    int special, normalized;
} added_token;

struct rt_bpe_tokenizer {
    char origin[256];
    uint64_t hash;
    strmap vocab; /* byte-level string -> id */
    merge_map merges;
    int64_t byte_id[256]; /* each byte's one-symbol id, -1 when the vocabulary lacks it */
    int ignore_merges, fuse_unk;
    int64_t unk_id;
    pattern splits[MAX_SPLITS];
    int n_splits;
    pattern byte_regex; /* code NULL unless ByteLevel use_regex */
    int add_prefix_space;
    pcre2_match_context *match_context;
    pcre2_jit_stack *jit_stack;
    added_token *added;
    int n_added;
    pool added_bytes;
    int first_byte_added[256]; /* whether some added token starts with this byte */
    /* id -> decoded bytes (offset, length in dec_bytes); length UINT32_MAX = no such id */
    size_t *dec_off;
    uint32_t *dec_len;
    pool dec_bytes;
    int vocab_size;
    strmap cache; /* word bytes -> (offset, count) in cache_ids */
    uint32_t *cache_ids;
    size_t cache_n, cache_cap;
    void (*progress)(void *ctx, uint64_t bytes);
    void *progress_ctx;
    uint64_t bytes_done, bytes_reported;
    char *scratch; /* a piece with its prefix space */
    size_t scratch_cap;
    /* the merge heap and symbols of the word being merged */
    struct symbol {
        uint32_t id;
        int32_t prev, next;
        uint32_t len;
    } * sym;
    size_t sym_cap;
    struct heap_entry {
        uint32_t rank, pos, new_id;
    } * heap;
    size_t heap_cap;
};

/* GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the rest for 256, 257, ... */
static uint32_t byte_char(int b) {
    static uint32_t table[256];
    static int ready;
    if (!ready) {
        uint32_t next = 256;
        for (int i = 0; i < 256; i++)
            table[i] =
                ((i >= '!' && i <= '~') || (i >= 0xa1 && i <= 0xac) || (i >= 0xae && i <= 0xff)) ? (uint32_t)i : next++;
        ready = 1;
    }
    return table[b];
}

static size_t utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    out[0] = (char)(0xc0 | (cp >> 6)); /* byte-level characters are all below 0x800 */
    out[1] = (char)(0x80 | (cp & 0x3f));
    return 2;
}

/* Length of the valid UTF-8 prefix of s (Rust's rules: no overlongs, surrogates or values past U+10FFFF). */
static size_t utf8_valid_prefix(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        size_t k;
        uint32_t lo = 0x80, hi = 0xbf;
        if (c < 0x80) {
            i++;
            continue;
        } else if (c >= 0xc2 && c <= 0xdf) {
            k = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            k = 2;
            if (c == 0xe0) lo = 0xa0;
            if (c == 0xed) hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            k = 3;
            if (c == 0xf0) lo = 0x90;
            if (c == 0xf4) hi = 0x8f;
        } else {
            return i;
        }
        if (i + k >= n) return i;
        if (s[i + 1] < lo || s[i + 1] > hi) return i;
        for (size_t j = 2; j <= k; j++)
            if ((s[i + j] & 0xc0) != 0x80) return i;
        i += k + 1;
    }
    return n;
}

/* Decodes one UTF-8 character of a byte-level string back to its byte; -1 when it is not one. */
static int byte_of_char(const unsigned char *s, size_t n, size_t *used) {
    uint32_t cp;
    if (n >= 1 && s[0] < 0x80) {
        cp = s[0];
        *used = 1;
    } else if (n >= 2 && (s[0] & 0xe0) == 0xc0 && (s[1] & 0xc0) == 0x80) {
        cp = (uint32_t)(s[0] & 0x1f) << 6 | (s[1] & 0x3f);
        *used = 2;
    } else {
        return -1;
    }
    static int16_t inverse[512];
    static int ready;
    if (!ready) {
        for (int c = 0; c < 512; c++)
            inverse[c] = -1;
        for (int b = 0; b < 256; b++)
            inverse[byte_char(b)] = (int16_t)b; /* byte_char's values are all below 512 */
        ready = 1;
    }
    return cp < 512 ? inverse[cp] : -1;
}

/* ------------------------------------------------------------------ loading */

/* A JSON string fit for a one-line message: at most 48 bytes, control characters as '?'. Rotates over four
 * buffers so one message can quote several. */
static const char *quoted(const char *s) {
    static char bufs[4][49];
    static int next;
    char *buf = bufs[next++ % 4];
    size_t i = 0;
    for (; s && s[i] && i < 48; i++)
        buf[i] = (unsigned char)s[i] < 0x20 || s[i] == 0x7f ? '?' : s[i];
    buf[i] = '\0';
    return s ? buf : "(none)";
}

static const char *type_of(const cJSON *obj) {
    const cJSON *type = cJSON_GetObjectItemCaseSensitive(obj, "type");
    return cJSON_IsString(type) ? type->valuestring : NULL;
}

/* A boolean field: absent or null gives dflt; anything but a boolean is refused. */
static int get_bool(const cJSON *obj, const char *key, int dflt, const char *origin, const char *where, int *out,
                    rt_error *err) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v || cJSON_IsNull(v)) {
        *out = dflt;
        return 0;
    }
    if (!cJSON_IsBool(v)) return rt_fail(err, "%s: %s.%s: expected true or false", origin, where, key);
    *out = cJSON_IsTrue(v);
    return 0;
}

static int get_id(const cJSON *v, const char *origin, const char *where, uint32_t *out, rt_error *err) {
    if (!cJSON_IsNumber(v) || !isfinite(v->valuedouble) || v->valuedouble < 0 || v->valuedouble >= MAX_ID ||
        v->valuedouble != floor(v->valuedouble))
        return rt_fail(err, "%s: %s: expected a whole id in [0, %d)", origin, where, MAX_ID);
    *out = (uint32_t)v->valuedouble;
    return 0;
}

static int compile_pattern(rt_bpe_tokenizer *tok, pattern *p, const char *text, size_t len, int literal,
                           const char *where, rt_error *err) {
    int code;
    PCRE2_SIZE offset;
    uint32_t flags = PCRE2_UTF | PCRE2_UCP | (literal ? PCRE2_LITERAL : 0);
    p->code = pcre2_compile((PCRE2_SPTR)text, len, flags, &code, &offset, NULL);
    if (!p->code) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(code, msg, sizeof msg);
        return rt_fail(err, "%s: %s: pattern does not compile at offset %zu: %s", tok->origin, where, (size_t)offset,
                       (const char *)msg);
    }
    uint32_t min_length = 0;
    pcre2_pattern_info(p->code, PCRE2_INFO_MINLENGTH, &min_length);
    if (min_length == 0)
        return rt_fail(err, "%s: %s: pattern can match the empty string; ringtrain refuses such splits", tok->origin,
                       where);
    pcre2_jit_compile(p->code, PCRE2_JIT_COMPLETE); /* without JIT, pcre2_match interprets: slower, same result */
    p->match = pcre2_match_data_create_from_pattern(p->code, NULL);
    if (!p->match) rt_fatal("out of host memory for a PCRE2 match block");
    return 0;
}

static int load_model(rt_bpe_tokenizer *tok, const cJSON *model, rt_error *err) {
    const char *o = tok->origin;
    if (!cJSON_IsObject(model)) return rt_fail(err, "%s: model: expected an object", o);
    const char *type = type_of(model);
    if (!type || strcmp(type, "BPE") != 0)
        return rt_fail(err, "%s: model.type '%s': ringtrain implements byte-level BPE only", o, quoted(type));
    const char *must_be_null[] = {"dropout", "continuing_subword_prefix", "end_of_word_suffix"};
    for (size_t i = 0; i < sizeof must_be_null / sizeof *must_be_null; i++) {
        const cJSON *v = cJSON_GetObjectItemCaseSensitive(model, must_be_null[i]);
        if (v && !cJSON_IsNull(v))
            return rt_fail(err, "%s: model.%s is set: ringtrain supports only null there", o, must_be_null[i]);
    }
    int byte_fallback = 0;
    if (get_bool(model, "byte_fallback", 0, o, "model", &byte_fallback, err) ||
        get_bool(model, "ignore_merges", 0, o, "model", &tok->ignore_merges, err) ||
        get_bool(model, "fuse_unk", 0, o, "model", &tok->fuse_unk, err))
        return -1;
    if (byte_fallback)
        return rt_fail(err,
                       "%s: model.byte_fallback true (SentencePiece-style BPE): ringtrain implements byte-level "
                       "BPE only",
                       o);

    const cJSON *vocab = cJSON_GetObjectItemCaseSensitive(model, "vocab");
    if (!cJSON_IsObject(vocab)) return rt_fail(err, "%s: model.vocab: expected an object of token: id", o);
    const cJSON *entry;
    cJSON_ArrayForEach(entry, vocab) {
        uint32_t id = 0;
        char where[128];
        snprintf(where, sizeof where, "model.vocab['%s']", quoted(entry->string));
        if (get_id(entry, o, where, &id, err)) return -1;
        strmap_put(&tok->vocab, entry->string, strlen(entry->string), id, 0);
    }

    const cJSON *unk = cJSON_GetObjectItemCaseSensitive(model, "unk_token");
    tok->unk_id = -1;
    if (unk && !cJSON_IsNull(unk)) {
        const slot *s =
            cJSON_IsString(unk) ? strmap_get(&tok->vocab, unk->valuestring, strlen(unk->valuestring)) : NULL;
        if (!s) return rt_fail(err, "%s: model.unk_token: expected null or a token of model.vocab", o);
        tok->unk_id = s->a;
    }

    const cJSON *merges = cJSON_GetObjectItemCaseSensitive(model, "merges");
    if (!cJSON_IsArray(merges)) return rt_fail(err, "%s: model.merges: expected an array", o);
    uint32_t rank = 0;
    cJSON_ArrayForEach(entry, merges) {
        const char *left = NULL, *right = NULL;
        size_t left_len = 0, right_len = 0;
        if (cJSON_IsString(entry)) {
            const char *space = strchr(entry->valuestring, ' ');
            if (space && !strchr(space + 1, ' ')) {
                left = entry->valuestring;
                left_len = (size_t)(space - left);
                right = space + 1;
                right_len = strlen(right);
            }
        } else if (cJSON_IsArray(entry) && cJSON_GetArraySize(entry) == 2 &&
                   cJSON_IsString(cJSON_GetArrayItem(entry, 0)) && cJSON_IsString(cJSON_GetArrayItem(entry, 1))) {
            left = cJSON_GetArrayItem(entry, 0)->valuestring;
            right = cJSON_GetArrayItem(entry, 1)->valuestring;
            left_len = strlen(left);
            right_len = strlen(right);
        }
        if (!left)
            return rt_fail(err, "%s: model.merges[%u]: expected \"left right\" or [\"left\", \"right\"]", o, rank);
        char *joined = malloc_check(left_len + right_len + 1);
        memcpy(joined, left, left_len);
        memcpy(joined + left_len, right, right_len);
        const slot *a = strmap_get(&tok->vocab, left, left_len), *b = strmap_get(&tok->vocab, right, right_len),
                   *ab = strmap_get(&tok->vocab, joined, left_len + right_len);
        free(joined);
        if (!a || !b || !ab)
            return rt_fail(err, "%s: model.merges[%u]: a part or the merged token is not in model.vocab", o, rank);
        merge_put(&tok->merges, a->a, b->a, rank, ab->a);
        rank++;
    }
    for (int b = 0; b < 256; b++) {
        char ch[2];
        const slot *s = strmap_get(&tok->vocab, ch, utf8_put(byte_char(b), ch));
        tok->byte_id[b] = s ? (int64_t)s->a : -1;
    }
    return 0;
}

static int load_byte_level(rt_bpe_tokenizer *tok, const cJSON *pre, const char *where, rt_error *err) {
    int use_regex = 0;
    if (get_bool(pre, "add_prefix_space", 1, tok->origin, where, &tok->add_prefix_space, err) ||
        get_bool(pre, "use_regex", 1, tok->origin, where, &use_regex, err))
        return -1;
    if (use_regex) return compile_pattern(tok, &tok->byte_regex, GPT2_PATTERN, PCRE2_ZERO_TERMINATED, 0, where, err);
    return 0;
}

static int load_split(rt_bpe_tokenizer *tok, const cJSON *split, const char *where, rt_error *err) {
    const char *o = tok->origin;
    if (tok->n_splits == MAX_SPLITS) return rt_fail(err, "%s: %s: more than %d Split steps", o, where, MAX_SPLITS);
    const cJSON *behavior = cJSON_GetObjectItemCaseSensitive(split, "behavior");
    if (!cJSON_IsString(behavior) || strcmp(behavior->valuestring, "Isolated") != 0)
        return rt_fail(err, "%s: %s.behavior '%s': ringtrain supports Isolated only", o, where,
                       cJSON_IsString(behavior) ? quoted(behavior->valuestring) : "(not a string)");
    int invert = 0;
    if (get_bool(split, "invert", 0, o, where, &invert, err)) return -1;
    if (invert) return rt_fail(err, "%s: %s.invert true: ringtrain supports false only", o, where);
    const cJSON *pat = cJSON_GetObjectItemCaseSensitive(split, "pattern");
    const cJSON *regex = cJSON_GetObjectItemCaseSensitive(pat, "Regex"),
                *string = cJSON_GetObjectItemCaseSensitive(pat, "String");
    const cJSON *text = cJSON_IsString(regex) ? regex : string;
    if (!cJSON_IsString(text))
        return rt_fail(err, "%s: %s.pattern: expected {\"Regex\": ...} or {\"String\": ...}", o, where);
    char field[80];
    snprintf(field, sizeof field, "%s.pattern", where);
    return compile_pattern(tok, &tok->splits[tok->n_splits++], text->valuestring, strlen(text->valuestring),
                           text == string, field, err);
}

static int load_pre_tokenizer(rt_bpe_tokenizer *tok, const cJSON *pre, rt_error *err) {
    const char *o = tok->origin;
    const char *type = cJSON_IsObject(pre) ? type_of(pre) : NULL;
    if (type && strcmp(type, "ByteLevel") == 0) return load_byte_level(tok, pre, "pre_tokenizer", err);
    if (!type || strcmp(type, "Sequence") != 0)
        return rt_fail(err,
                       "%s: pre_tokenizer type '%s': ringtrain supports ByteLevel, or a Sequence of Split ending "
                       "in ByteLevel",
                       o, quoted(type));
    const cJSON *steps = cJSON_GetObjectItemCaseSensitive(pre, "pretokenizers");
    int n = cJSON_IsArray(steps) ? cJSON_GetArraySize(steps) : 0;
    if (n == 0) return rt_fail(err, "%s: pre_tokenizer.pretokenizers: expected a non-empty array", o);
    for (int i = 0; i < n; i++) {
        const cJSON *step = cJSON_GetArrayItem(steps, i);
        const char *step_type = cJSON_IsObject(step) ? type_of(step) : NULL;
        char where[64];
        snprintf(where, sizeof where, "pre_tokenizer.pretokenizers[%d]", i);
        int last = i == n - 1;
        if (last && step_type && strcmp(step_type, "ByteLevel") == 0) {
            if (load_byte_level(tok, step, where, err)) return -1;
        } else if (!last && step_type && strcmp(step_type, "Split") == 0) {
            if (load_split(tok, step, where, err)) return -1;
        } else {
            return rt_fail(err, "%s: %s type '%s': ringtrain supports Split steps, then ByteLevel last", o, where,
                           quoted(step_type));
        }
    }
    return 0;
}

static int load_added(rt_bpe_tokenizer *tok, const cJSON *added, rt_error *err) {
    const char *o = tok->origin;
    if (!added || cJSON_IsNull(added)) return 0;
    if (!cJSON_IsArray(added)) return rt_fail(err, "%s: added_tokens: expected an array", o);
    tok->added = calloc_check((size_t)cJSON_GetArraySize(added) + 1, sizeof *tok->added);
    const cJSON *t;
    cJSON_ArrayForEach(t, added) {
        char where[64];
        snprintf(where, sizeof where, "added_tokens[%d]", tok->n_added);
        const cJSON *content = cJSON_GetObjectItemCaseSensitive(t, "content");
        if (!cJSON_IsString(content) || !content->valuestring[0])
            return rt_fail(err, "%s: %s.content: expected a non-empty string", o, where);
        size_t len = strlen(content->valuestring);
        if (utf8_valid_prefix((const unsigned char *)content->valuestring, len) != len)
            return rt_fail(err, "%s: %s.content: not valid UTF-8", o, where);
        added_token *a = &tok->added[tok->n_added];
        char id_where[80];
        snprintf(id_where, sizeof id_where, "%s.id", where);
        if (get_id(cJSON_GetObjectItemCaseSensitive(t, "id"), o, id_where, &a->id, err)) return -1;
        if (get_bool(t, "special", 0, o, where, &a->special, err) ||
            get_bool(t, "normalized", !a->special, o, where, &a->normalized, err))
            return -1;
        const char *flags[] = {"lstrip", "rstrip", "single_word"};
        for (int f = 0; f < 3; f++) {
            int set = 0;
            if (get_bool(t, flags[f], 0, o, where, &set, err)) return -1;
            if (set) return rt_fail(err, "%s: %s.%s true: ringtrain supports false only", o, where, flags[f]);
        }
        a->off = pool_add(&tok->added_bytes, content->valuestring, len);
        a->len = len;
        tok->first_byte_added[(unsigned char)content->valuestring[0]] = 1;
        tok->n_added++;
    }
    return 0;
}

/* id -> bytes: vocabulary entries through the byte-level table (an entry with a character outside it
 * decodes to its own UTF-8, as the library's ByteLevel decoder does), added tokens to their content. */
static void build_decode_table(rt_bpe_tokenizer *tok) {
    uint32_t max_id = 0;
    for (size_t i = 0; i < tok->vocab.cap; i++)
        if (tok->vocab.slots[i].used && tok->vocab.slots[i].a > max_id) max_id = tok->vocab.slots[i].a;
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].id > max_id) max_id = tok->added[i].id;
    tok->vocab_size = tok->vocab.n || tok->n_added ? (int)max_id + 1 : 0;
    tok->dec_off = calloc_check((size_t)tok->vocab_size + 1, sizeof *tok->dec_off);
    tok->dec_len = malloc_check(((size_t)tok->vocab_size + 1) * sizeof *tok->dec_len);
    for (int i = 0; i <= tok->vocab_size; i++)
        tok->dec_len[i] = UINT32_MAX;
    char *bytes = NULL;
    size_t cap = 0;
    for (size_t i = 0; i < tok->vocab.cap; i++) {
        const slot *s = &tok->vocab.slots[i];
        if (!s->used) continue;
        const unsigned char *key = (const unsigned char *)tok->vocab.keys.bytes + s->key_off;
        if (s->key_len > cap) {
            cap = s->key_len;
            free(bytes);
            bytes = malloc_check(cap);
        }
        size_t n = 0, at = 0, used = 0;
        while (at < s->key_len) {
            int b = byte_of_char(key + at, s->key_len - at, &used);
            if (b < 0) break;
            bytes[n++] = (char)b;
            at += used;
        }
        if (at < s->key_len) { /* not all byte-level characters: the entry's own bytes */
            memcpy(bytes, key, s->key_len);
            n = s->key_len;
        }
        tok->dec_off[s->a] = pool_add(&tok->dec_bytes, bytes, n);
        tok->dec_len[s->a] = (uint32_t)n;
    }
    free(bytes);
    for (int i = 0; i < tok->n_added; i++) {
        const added_token *a = &tok->added[i];
        tok->dec_off[a->id] = pool_add(&tok->dec_bytes, tok->added_bytes.bytes + a->off, a->len);
        tok->dec_len[a->id] = (uint32_t)a->len;
    }
}

static int load_json(rt_bpe_tokenizer *tok, const cJSON *root, rt_error *err) {
    const char *o = tok->origin;
    if (!cJSON_IsObject(root)) return rt_fail(err, "%s: expected a JSON object (a tokenizer.json)", o);
    const cJSON *normalizer = cJSON_GetObjectItemCaseSensitive(root, "normalizer");
    if (normalizer && !cJSON_IsNull(normalizer)) {
        const char *type = cJSON_IsObject(normalizer) ? type_of(normalizer) : NULL;
        return rt_fail(err, "%s: normalizer type '%s': ringtrain supports only null (no normalizer)", o, quoted(type));
    }
    const cJSON *decoder = cJSON_GetObjectItemCaseSensitive(root, "decoder");
    if (decoder && !cJSON_IsNull(decoder)) {
        const char *type = cJSON_IsObject(decoder) ? type_of(decoder) : NULL;
        if (!type || strcmp(type, "ByteLevel") != 0)
            return rt_fail(err, "%s: decoder type '%s': ringtrain supports ByteLevel or null", o, quoted(type));
    }
    if (load_model(tok, cJSON_GetObjectItemCaseSensitive(root, "model"), err) ||
        load_pre_tokenizer(tok, cJSON_GetObjectItemCaseSensitive(root, "pre_tokenizer"), err) ||
        load_added(tok, cJSON_GetObjectItemCaseSensitive(root, "added_tokens"), err))
        return -1;
    tok->match_context = pcre2_match_context_create(NULL);
    tok->jit_stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, NULL);
    if (!tok->match_context || !tok->jit_stack) rt_fatal("out of host memory for the PCRE2 match context");
    pcre2_set_match_limit(tok->match_context, MATCH_LIMIT);
    pcre2_jit_stack_assign(tok->match_context, NULL, tok->jit_stack);
    build_decode_table(tok);
    return 0;
}

rt_bpe_tokenizer *rt_bpe_load_text(const char *json, size_t len, const char *origin, rt_error *err) {
    rt_bpe_tokenizer *tok = calloc_check(1, sizeof *tok);
    snprintf(tok->origin, sizeof tok->origin, "%s", origin);
    tok->hash = rt_bpe_fnv1a(json, len);
    cJSON *root = cJSON_ParseWithLength(json, len);
    int rc;
    if (!root) {
        const char *at = cJSON_GetErrorPtr();
        size_t offset = at && at >= json && at <= json + len ? (size_t)(at - json) : len;
        rc = rt_fail(err, "%s: not valid JSON (near byte %zu)", origin, offset);
    } else {
        rc = load_json(tok, root, err);
    }
    cJSON_Delete(root);
    if (rc) {
        rt_bpe_free(tok);
        return NULL;
    }
    return tok;
}

rt_bpe_tokenizer *rt_bpe_load(const char *path, rt_error *err) {
    FILE *file = fopen(path, "rb");
    if (!file) {
        rt_fail(err, "%s: cannot open tokenizer: %s", path, strerror(errno));
        return NULL;
    }
    char *bytes = NULL;
    size_t len = 0, cap = 0;
    for (;;) {
        if (len == cap) {
            cap = cap ? cap * 2 : 1 << 20;
            bytes = realloc(bytes, cap);
            if (!bytes) rt_fatal("out of host memory reading %s", path);
        }
        size_t got = fread(bytes + len, 1, cap - len, file);
        len += got;
        if (got == 0) break;
    }
    int failed = ferror(file);
    fclose(file);
    rt_bpe_tokenizer *tok = NULL;
    if (failed)
        rt_fail(err, "%s: cannot read tokenizer", path);
    else
        tok = rt_bpe_load_text(bytes, len, path, err);
    free(bytes);
    return tok;
}

void rt_bpe_free(rt_bpe_tokenizer *tok) {
    if (!tok) return;
    strmap_free(&tok->vocab);
    strmap_free(&tok->cache);
    free(tok->merges.slots);
    for (int i = 0; i < MAX_SPLITS; i++) {
        pcre2_match_data_free(tok->splits[i].match);
        pcre2_code_free(tok->splits[i].code);
    }
    pcre2_match_data_free(tok->byte_regex.match);
    pcre2_code_free(tok->byte_regex.code);
    pcre2_match_context_free(tok->match_context);
    pcre2_jit_stack_free(tok->jit_stack);
    free(tok->added);
    free(tok->added_bytes.bytes);
    free(tok->dec_off);
    free(tok->dec_len);
    free(tok->dec_bytes.bytes);
    free(tok->cache_ids);
    free(tok->scratch);
    free(tok->sym);
    free(tok->heap);
    free(tok);
}

/* ------------------------------------------------------------------ encoding */

static void ids_push(rt_bpe_ids *out, uint32_t id) {
    if (out->n == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 1024;
        out->ids = realloc(out->ids, out->cap * sizeof *out->ids);
        if (!out->ids) rt_fatal("out of host memory for %zu token ids", out->cap);
    }
    out->ids[out->n++] = id;
}

void rt_bpe_set_progress(rt_bpe_tokenizer *tok, void (*fn)(void *ctx, uint64_t bytes), void *ctx) {
    tok->progress = fn;
    tok->progress_ctx = ctx;
}

void rt_bpe_ids_free(rt_bpe_ids *ids) {
    free(ids->ids);
    memset(ids, 0, sizeof *ids);
}

static int heap_less(const struct heap_entry *a, const struct heap_entry *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->pos < b->pos);
}

static void heap_push(rt_bpe_tokenizer *tok, size_t *n, struct heap_entry e) {
    if (*n == tok->heap_cap) {
        tok->heap_cap = tok->heap_cap ? tok->heap_cap * 2 : 256;
        tok->heap = realloc(tok->heap, tok->heap_cap * sizeof *tok->heap);
        if (!tok->heap) rt_fatal("out of host memory for the merge heap");
    }
    size_t i = (*n)++;
    while (i > 0 && heap_less(&e, &tok->heap[(i - 1) / 2])) {
        tok->heap[i] = tok->heap[(i - 1) / 2];
        i = (i - 1) / 2;
    }
    tok->heap[i] = e;
}

static struct heap_entry heap_pop(rt_bpe_tokenizer *tok, size_t *n) {
    struct heap_entry top = tok->heap[0], last = tok->heap[--*n];
    size_t i = 0;
    for (;;) {
        size_t child = 2 * i + 1;
        if (child >= *n) break;
        if (child + 1 < *n && heap_less(&tok->heap[child + 1], &tok->heap[child])) child++;
        if (!heap_less(&tok->heap[child], &last)) break;
        tok->heap[i] = tok->heap[child];
        i = child;
    }
    if (*n > 0) tok->heap[i] = last;
    return top;
}

static void push_pair(rt_bpe_tokenizer *tok, size_t *n_heap, int32_t pos) {
    const struct symbol *s = &tok->sym[pos];
    if (s->next < 0) return;
    const merge_slot *m = merge_get(&tok->merges, s->id, tok->sym[s->next].id);
    if (m) heap_push(tok, n_heap, (struct heap_entry){m->rank, (uint32_t)pos, m->new_id});
}

/* Merges one word's byte symbols and appends the ids to out. */
static void merge_word(rt_bpe_tokenizer *tok, const unsigned char *word, size_t len, rt_bpe_ids *out) {
    if (len > tok->sym_cap) {
        tok->sym_cap = len;
        free(tok->sym);
        tok->sym = malloc_check(len * sizeof *tok->sym);
    }
    int32_t n = 0;
    for (size_t i = 0; i < len; i++) {
        int64_t id = tok->byte_id[word[i]];
        if (id < 0) {
            if (tok->unk_id < 0) continue; /* no unk token: the library drops the byte */
            if (tok->fuse_unk && n > 0 && tok->sym[n - 1].id == (uint32_t)tok->unk_id) {
                tok->sym[n - 1].len++;
                continue;
            }
            id = tok->unk_id;
        }
        tok->sym[n] = (struct symbol){(uint32_t)id, n - 1, n + 1, 1};
        n++;
    }
    if (n == 0) return;
    tok->sym[n - 1].next = -1;
    size_t n_heap = 0;
    for (int32_t i = 0; i + 1 < n; i++)
        push_pair(tok, &n_heap, i);
    while (n_heap > 0) {
        struct heap_entry top = heap_pop(tok, &n_heap);
        struct symbol *left = &tok->sym[top.pos];
        if (left->len == 0 || left->next < 0) continue;
        struct symbol *right = &tok->sym[left->next];
        const merge_slot *m = merge_get(&tok->merges, left->id, right->id);
        if (!m || m->new_id != top.new_id) continue;
        left->id = top.new_id;
        left->len += right->len;
        left->next = right->next;
        right->len = 0;
        if (left->next >= 0) tok->sym[left->next].prev = (int32_t)top.pos;
        if (left->prev >= 0) push_pair(tok, &n_heap, left->prev);
        push_pair(tok, &n_heap, (int32_t)top.pos);
    }
    for (int32_t i = 0; i >= 0; i = tok->sym[i].next)
        ids_push(out, tok->sym[i].id);
}

/* The ids of one pre-token: the whole word when ignore_merges finds it, else its merges; cached. */
static void encode_word(rt_bpe_tokenizer *tok, const char *word, size_t len, rt_bpe_ids *out) {
    tok->bytes_done += len;
    if (tok->progress && tok->bytes_done - tok->bytes_reported >= (1u << 20)) {
        tok->bytes_reported = tok->bytes_done;
        tok->progress(tok->progress_ctx, tok->bytes_done);
    }
    const int cacheable = len < CACHE_WORD_MAX;
    if (cacheable) {
        const slot *hit = strmap_get(&tok->cache, word, len);
        if (hit) {
            for (uint32_t i = 0; i < hit->b; i++)
                ids_push(out, tok->cache_ids[hit->a + i]);
            return;
        }
    }
    size_t first = out->n;
    const slot *whole = NULL;
    if (tok->ignore_merges) {
        char buf[2 * CACHE_WORD_MAX] = {0};
        char *level = len < CACHE_WORD_MAX ? buf : malloc_check(2 * len);
        size_t n = 0;
        for (size_t i = 0; i < len; i++)
            n += utf8_put(byte_char((unsigned char)word[i]), level + n);
        whole = strmap_get(&tok->vocab, level, n);
        if (level != buf) free(level);
    }
    if (whole)
        ids_push(out, whole->a);
    else
        merge_word(tok, (const unsigned char *)word, len, out);
    if (!cacheable) return;
    if (tok->cache.n >= CACHE_ENTRIES_MAX) { /* a bound on memory over huge corpora: start again */
        strmap_free(&tok->cache);
        tok->cache_n = 0;
    }
    size_t count = out->n - first;
    if (tok->cache_n + count > tok->cache_cap) {
        tok->cache_cap = (tok->cache_n + count) * 2;
        tok->cache_ids = realloc(tok->cache_ids, tok->cache_cap * sizeof *tok->cache_ids);
        if (!tok->cache_ids) rt_fatal("out of host memory for the tokenizer cache");
    }
    memcpy(tok->cache_ids + tok->cache_n, out->ids + first, count * sizeof *out->ids);
    strmap_put(&tok->cache, word, len, (uint32_t)tok->cache_n, (uint32_t)count);
    tok->cache_n += count;
}

/* Calls fn on each match of p in s and on each stretch between matches, in order. */
typedef int (*piece_fn)(rt_bpe_tokenizer *tok, int level, const char *s, size_t n, rt_bpe_ids *out, rt_error *err);

static int split_isolated(rt_bpe_tokenizer *tok, const pattern *p, int level, const char *s, size_t n, piece_fn fn,
                          rt_bpe_ids *out, rt_error *err) {
    size_t at = 0;
    while (at < n) {
        int rc = pcre2_match(p->code, (PCRE2_SPTR)s, n, at, PCRE2_NO_UTF_CHECK, p->match, tok->match_context);
        if (rc == PCRE2_ERROR_NOMATCH) break;
        if (rc < 0) {
            PCRE2_UCHAR msg[256];
            pcre2_get_error_message(rc, msg, sizeof msg);
            return rt_fail(err, "%s: pre-tokenizer pattern failed on the input: %s", tok->origin, (const char *)msg);
        }
        const PCRE2_SIZE *ov = pcre2_get_ovector_pointer(p->match);
        if (ov[1] <= ov[0] || ov[0] < at) /* \K tricks; the pattern's minimum length excludes empty matches */
            return rt_fail(err, "%s: pre-tokenizer pattern gave an empty or backward match", tok->origin);
        if (ov[0] > at && fn(tok, level, s + at, ov[0] - at, out, err)) return -1;
        if (fn(tok, level, s + ov[0], ov[1] - ov[0], out, err)) return -1;
        at = ov[1];
    }
    if (at < n && fn(tok, level, s + at, n - at, out, err)) return -1;
    return 0;
}

static int byte_level_word(rt_bpe_tokenizer *tok, int level, const char *s, size_t n, rt_bpe_ids *out, rt_error *err) {
    (void)level;
    (void)err;
    encode_word(tok, s, n, out);
    return 0;
}

/* Pre-tokenizer step `level` on one piece: the Splits in turn, then ByteLevel. */
static int pre_tokenize(rt_bpe_tokenizer *tok, int level, const char *s, size_t n, rt_bpe_ids *out, rt_error *err) {
    if (level < tok->n_splits) return split_isolated(tok, &tok->splits[level], level + 1, s, n, pre_tokenize, out, err);
    if (tok->add_prefix_space && s[0] != ' ') {
        if (n + 1 > tok->scratch_cap) {
            tok->scratch_cap = 2 * (n + 1);
            free(tok->scratch);
            tok->scratch = malloc_check(tok->scratch_cap);
        }
        tok->scratch[0] = ' ';
        memcpy(tok->scratch + 1, s, n);
        s = tok->scratch;
        n++;
    }
    if (tok->byte_regex.code) return split_isolated(tok, &tok->byte_regex, level, s, n, byte_level_word, out, err);
    encode_word(tok, s, n, out);
    return 0;
}

/* The longest added token of the given normalized flag starting at s[0], or NULL. */
static const added_token *added_at(const rt_bpe_tokenizer *tok, const char *s, size_t n, int normalized) {
    const added_token *best = NULL;
    for (int i = 0; i < tok->n_added; i++) {
        const added_token *a = &tok->added[i];
        if (a->normalized == normalized && a->len <= n && (!best || a->len > best->len) &&
            memcmp(tok->added_bytes.bytes + a->off, s, a->len) == 0)
            best = a;
    }
    return best;
}

/* Cuts out added tokens: pass 0 those with normalized false, pass 1 the rest; the remainder pre-tokenizes. */
static int split_added(rt_bpe_tokenizer *tok, int pass, const char *s, size_t n, rt_bpe_ids *out, rt_error *err) {
    size_t start = 0;
    for (size_t i = 0; i < n; i++) {
        if (!tok->first_byte_added[(unsigned char)s[i]]) continue;
        const added_token *a = added_at(tok, s + i, n - i, pass);
        if (!a) continue;
        if (i > start) {
            int rc = pass == 0 ? split_added(tok, 1, s + start, i - start, out, err)
                               : pre_tokenize(tok, 0, s + start, i - start, out, err);
            if (rc) return -1;
        }
        ids_push(out, a->id);
        i += a->len - 1;
        start = i + 1;
    }
    if (start < n)
        return pass == 0 ? split_added(tok, 1, s + start, n - start, out, err)
                         : pre_tokenize(tok, 0, s + start, n - start, out, err);
    return 0;
}

int rt_bpe_encode(rt_bpe_tokenizer *tok, const char *text, size_t len, rt_bpe_ids *out, rt_error *err) {
    size_t valid = utf8_valid_prefix((const unsigned char *)text, len);
    if (valid < len)
        return rt_fail(err, "invalid UTF-8 at byte offset %zu (byte 0x%02x); the tokenizer takes UTF-8 text", valid,
                       (unsigned char)text[valid]);
    return split_added(tok, 0, text, len, out, err);
}

/* ------------------------------------------------------------------ decoding and lookups */

const char *rt_bpe_token_bytes(const rt_bpe_tokenizer *tok, uint32_t id, size_t *len) {
    if (id >= (uint32_t)tok->vocab_size || tok->dec_len[id] == UINT32_MAX) return NULL;
    *len = tok->dec_len[id];
    return tok->dec_bytes.bytes + tok->dec_off[id];
}

int rt_bpe_decode(const rt_bpe_tokenizer *tok, const uint32_t *ids, size_t n, char **out, size_t *out_len,
                  rt_error *err) {
    pool text = {0};
    for (size_t i = 0; i < n; i++) {
        size_t len;
        const char *bytes = rt_bpe_token_bytes(tok, ids[i], &len);
        if (!bytes) {
            free(text.bytes);
            return rt_fail(err, "%s: id %u at position %zu is not in the vocabulary", tok->origin, ids[i], i);
        }
        pool_add(&text, bytes, len);
    }
    pool_add(&text, "", 1);
    *out = text.bytes;
    *out_len = text.len - 1;
    return 0;
}

int rt_bpe_vocab_size(const rt_bpe_tokenizer *tok) { return tok->vocab_size; }

int64_t rt_bpe_special_id(const rt_bpe_tokenizer *tok, const char *content) {
    size_t len = strlen(content);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].special && tok->added[i].len == len &&
            memcmp(tok->added_bytes.bytes + tok->added[i].off, content, len) == 0)
            return tok->added[i].id;
    return -1;
}

int64_t rt_bpe_token_id(const rt_bpe_tokenizer *tok, const char *content) {
    size_t len = strlen(content);
    for (int i = 0; i < tok->n_added; i++)
        if (tok->added[i].len == len && memcmp(tok->added_bytes.bytes + tok->added[i].off, content, len) == 0)
            return tok->added[i].id;
    const slot *s = strmap_get(&tok->vocab, content, len);
    return s ? (int64_t)s->a : -1;
}

uint64_t rt_bpe_content_hash(const rt_bpe_tokenizer *tok) { return tok->hash; }

int rt_bpe_load_recorded(const char *token_file, rt_bpe_tokenizer **tok, char *path, size_t cap, rt_error *why) {
    *tok = NULL;
    rt_token_file tf;
    rt_error ignored;
    if (!token_file[0] || rt_tokens_open(&tf, token_file, &ignored)) return 0;
    uint64_t hash = 0;
    int recorded = rt_tokens_tokenizer(&tf, path, cap, &hash);
    rt_tokens_close(&tf);
    if (!recorded) return 0;
    *tok = rt_bpe_load(path, &ignored);
    if (*tok && rt_bpe_content_hash(*tok) == hash) return 1;
    int changed = *tok != NULL;
    rt_bpe_free(*tok);
    *tok = NULL;
    return rt_fail(why, "%s recorded tokenizer %s, which %s", token_file, path,
                   changed ? "has changed since" : "is missing or unreadable");
}
