/* test_safetensors.c: safetensors files (io/safetensors.h): files built by hand from the format's layout read
 * back exactly; the writer's bytes against hand-written ones; fp32 -> fp16 against the compiler's _Float16
 * conversion and fp32 -> bf16 against a naive nearest-even search in double, over a sampled sweep of all fp32
 * bit patterns and every fp16 rounding boundary; every refusal of a bad header with the message naming the
 * input, the tensor and the field; the writer's failures leave no file.
 *
 * Every comparison of values is exact (tolerance 0): widening is exact and the rounding is specified. */
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/safetensors.h"
#include "tests/support/io_files.h"
#include "tests/support/testing.h"

/* 8-byte little-endian length, the header text as given, then the data bytes. */
static unsigned char *st_bytes(const char *json, const void *data, size_t n_data, size_t *n_bytes) {
    size_t h = strlen(json);
    unsigned char *b = malloc(8 + h + n_data + 1);
    for (int i = 0; i < 8; i++)
        b[i] = (unsigned char)((uint64_t)h >> (8 * i));
    memcpy(b + 8, json, h);
    if (n_data) memcpy(b + 8 + h, data, n_data);
    *n_bytes = 8 + h + n_data;
    return b;
}

static uint32_t bits_of(float x) {
    uint32_t u;
    memcpy(&u, &x, 4);
    return u;
}

static float float_of(uint32_t u) {
    float x;
    memcpy(&x, &u, 4);
    return x;
}

/* The compiler's fp16 (libgcc's conversion routines): independent of the code under test. */
static uint16_t ref_f16(float x) {
    _Float16 h = (_Float16)x;
    uint16_t u;
    memcpy(&u, &h, 2);
    return u;
}

static float ref_f16_widen(uint16_t u) {
    _Float16 h;
    memcpy(&h, &u, 2);
    return (float)h;
}

/* Nearest bf16 by brute force in double: the two candidates around x, ties to the even one; past the largest
 * bf16 the upper candidate is 2^128 (infinity), as IEEE rounding with an unbounded exponent then overflowing. */
static uint16_t ref_bf16(float x) {
    uint32_t u = bits_of(x), sign = u & 0x80000000u, lo = u & 0x7fff0000u, hi = lo + 0x10000u;
    double ax = fabs((double)x), vlo = (double)float_of(lo);
    double vhi = hi == 0x7f800000u ? ldexp(1.0, 128) : (double)float_of(hi);
    uint32_t pick = ax - vlo < vhi - ax ? lo : ax - vlo > vhi - ax ? hi : ((lo >> 16) & 1) ? hi : lo;
    return (uint16_t)((sign | pick) >> 16);
}

static void test_read_hand_built(void) {
    /* header lists the tensors out of data order; values: F32 1, -2.5; BF16 1.5, -2; F16 1, 2^-24, -65504 */
    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"h\":{\"dtype\":\"F16\",\"shape\":[3],\"data_offsets\":[12,18]},"
                       "\"w\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[2,1],\"data_offsets\":[8,12]},"
                       "\"e\":{\"dtype\":\"F32\",\"shape\":[0,3],\"data_offsets\":[18,18]},"
                       "\"s\":{\"dtype\":\"BF16\",\"shape\":[],\"data_offsets\":[18,20]}}   ";
    const unsigned char data[] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0, 0xc0, 0x3f,
                                  0x00, 0xc0, 0x00, 0x3c, 0x01, 0x00, 0xff, 0xfb, 0x80, 0xbf};
    size_t n;
    unsigned char *bytes = st_bytes(json, data, sizeof data, &n);
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "m.safetensors", path);
    write_raw(path, bytes, n);

    rt_st_file f;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_st_open(&f, path, &err), 0);
    CU_ASSERT_EQUAL(f.count, 5);
    CU_ASSERT_EQUAL(f.data_bytes, sizeof data);
    const char *order[] = {"w", "b", "h", "e", "s"}; /* data order; e and s share offset 18, e is empty */
    for (int i = 0; i < 5 && i < f.count; i++)
        CU_ASSERT_STRING_EQUAL(f.tensors[i].name, order[i]);

    const rt_st_tensor *w = rt_st_find(&f, "w"), *b = rt_st_find(&f, "b"), *h = rt_st_find(&f, "h");
    const rt_st_tensor *e = rt_st_find(&f, "e"), *s = rt_st_find(&f, "s");
    CU_ASSERT_FATAL(w && b && h && e && s);
    CU_ASSERT_PTR_NULL(rt_st_find(&f, "__metadata__"));
    CU_ASSERT(w->dtype == RT_ST_F32 && w->ndim == 1 && w->shape[0] == 2 && w->numel == 2);
    CU_ASSERT(b->dtype == RT_ST_BF16 && b->ndim == 2 && b->shape[0] == 2 && b->shape[1] == 1 && b->numel == 2);
    CU_ASSERT(h->dtype == RT_ST_F16 && h->begin == 12 && h->end == 18 && h->numel == 3);
    CU_ASSERT(e->numel == 0 && e->ndim == 2 && s->ndim == 0 && s->numel == 1);

    float out[3];
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, w, 0, 2, out, &err), 0);
    CU_ASSERT(out[0] == 1.0f && out[1] == -2.5f);
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, b, 0, 2, out, &err), 0);
    CU_ASSERT(out[0] == 1.5f && out[1] == -2.0f);
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, h, 0, 3, out, &err), 0);
    CU_ASSERT(out[0] == 1.0f && out[1] == 0x1p-24f && out[2] == -65504.0f);
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, h, 2, 1, out, &err), 0);
    CU_ASSERT(out[0] == -65504.0f);
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, s, 0, 1, out, &err), 0);
    CU_ASSERT(out[0] == -1.0f);
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, e, 0, 0, out, &err), 0);

    CU_ASSERT_EQUAL(rt_st_read_f32(&f, h, 2, 2, out, &err), -1);
    ASSERT_MSG_HAS(err, "tensor 'h': elements [2, 2 + 2) asked for, it holds 3");
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, h, SIZE_MAX, 2, out, &err), -1);
    rt_st_close(&f);
    CU_ASSERT_PTR_NULL(f.tensors);
    free(bytes);
    dir_remove(&td);
}

/* Every finite fp16 through the reader against the compiler's widening; every non-finite one refused. */
static void test_read_every_f16(void) {
    const char *json = "{\"all\":{\"dtype\":\"F16\",\"shape\":[65536],\"data_offsets\":[0,131072]}}";
    unsigned char *data = malloc(131072);
    for (uint32_t u = 0; u < 65536; u++) {
        data[2 * u] = (unsigned char)(u & 0xff);
        data[2 * u + 1] = (unsigned char)(u >> 8);
    }
    size_t n;
    unsigned char *bytes = st_bytes(json, data, 131072, &n);
    rt_st_file f;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_st_open_bytes(&f, bytes, n, "all.st", &err), 0);
    const rt_st_tensor *t = rt_st_find(&f, "all");
    int wrong = 0, refused_right = 1;
    float x;
    for (uint32_t u = 0; u < 65536; u++) {
        int finite = (u & 0x7c00) != 0x7c00;
        int rc = rt_st_read_f32(&f, t, u, 1, &x, &err);
        if (finite && (rc != 0 || bits_of(x) != bits_of(ref_f16_widen((uint16_t)u)))) wrong++;
        if (!finite && rc == 0) refused_right = 0;
    }
    CU_ASSERT_EQUAL(wrong, 0);
    CU_ASSERT(refused_right);
    float *all = malloc(65536 * sizeof *all);
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, t, 0, 65536, all, &err), -1);
    free(all);
    ASSERT_MSG_HAS(err, "all.st: tensor 'all': element 31744 is NaN or infinite"); /* 0x7c00: +infinity */
    rt_st_close(&f);
    free(bytes);
    free(data);
}

static void test_f32_to_f16(void) {
    size_t wrong = 0, checked = 0;
    /* a sweep of all fp32 bit patterns (a stride prime to every power of two) */
    for (uint64_t u = 0; u < (1ull << 32); u += 251) {
        float x = float_of((uint32_t)u);
        uint16_t got = rt_st_f32_to_f16(x), want = ref_f16(x);
        if (isnan(x) ? !((got & 0x7c00) == 0x7c00 && (got & 0x3ff) && (got & 0x8000) == (want & 0x8000)) : got != want)
            wrong++;
        checked++;
    }
    /* every rounding boundary: the midpoint of each pair of neighbouring fp16 values (exact in fp32), and the
     * fp32 values either side of it, both signs */
    for (uint32_t h = 0; h < 0x7bff; h++) {
        float mid = (ref_f16_widen((uint16_t)h) + ref_f16_widen((uint16_t)(h + 1))) / 2;
        for (int d = -1; d <= 1; d++)
            for (int s = 0; s < 2; s++) {
                float x = float_of((bits_of(mid) + (uint32_t)d) | (s ? 0x80000000u : 0));
                if (rt_st_f32_to_f16(x) != ref_f16(x)) wrong++;
                checked++;
            }
    }
    if (wrong) fprintf(stderr, "\n  fp16 rounding: %zu of %zu wrong\n", wrong, checked);
    CU_ASSERT_EQUAL(wrong, 0);
    CU_ASSERT_EQUAL(rt_st_f32_to_f16(65519.99f), 0x7bff);
    CU_ASSERT_EQUAL(rt_st_f32_to_f16(65520.0f), 0x7c00);
    CU_ASSERT_EQUAL(rt_st_f32_to_f16(-0.0f), 0x8000);
}

static void test_f32_to_bf16(void) {
    size_t wrong = 0;
    for (uint64_t u = 0; u < (1ull << 32); u += 251) {
        float x = float_of((uint32_t)u);
        uint16_t got = rt_st_f32_to_bf16(x);
        if (isnan(x) ? !((got & 0x7f80) == 0x7f80 && (got & 0x7f) && (got & 0x8000) == (u >> 16 & 0x8000))
                     : got != ref_bf16(x))
            wrong++;
    }
    /* ties both ways and the overflow boundary */
    for (uint32_t hi = 0; hi < 0x7f80; hi += 3)
        for (uint32_t low = 0x7fff; low <= 0x8001; low++) {
            float x = float_of(hi << 16 | low);
            if (rt_st_f32_to_bf16(x) != ref_bf16(x)) wrong++;
        }
    if (wrong) fprintf(stderr, "\n  bf16 rounding: %zu wrong\n", wrong);
    CU_ASSERT_EQUAL(wrong, 0);
    CU_ASSERT_EQUAL(rt_st_f32_to_bf16(1.0f + 0x1p-8f), 0x3f80);     /* tie, kept part even: down */
    CU_ASSERT_EQUAL(rt_st_f32_to_bf16(1.0f + 3 * 0x1p-8f), 0x3f82); /* tie, kept part odd: up */
    CU_ASSERT_EQUAL(rt_st_f32_to_bf16(FLT_MAX), 0x7f80);            /* rounds past the largest bf16 */
}

/* The whole file against bytes written out by hand. */
static void test_writer_bytes(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "out.safetensors", path);
    rt_st_decl decls[] = {{"a", RT_ST_F32, 1, {2}}, {"b\"q", RT_ST_BF16, 2, {1, 2}}, {"c", RT_ST_F16, 0, {0}}};
    const char *meta[][2] = {{"format", "pt"}};
    rt_error err = {{0}};
    rt_st_writer *w = rt_st_writer_open(path, decls, 3, meta, 1, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    const float v[] = {1.0f, -2.5f, 1.5f, -2.0f, 0.5f};
    CU_ASSERT_EQUAL(rt_st_writer_put(w, v, 3, &err), 0);
    CU_ASSERT_EQUAL(rt_st_writer_put(w, v + 3, 2, &err), 0);
    CU_ASSERT_EQUAL(rt_st_writer_finish(w, &err), 0);

    const char *json = "{\"__metadata__\":{\"format\":\"pt\"},"
                       "\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
                       "\"b\\\"q\":{\"dtype\":\"BF16\",\"shape\":[1,2],\"data_offsets\":[8,12]},"
                       "\"c\":{\"dtype\":\"F16\",\"shape\":[],\"data_offsets\":[12,14]}}";
    char padded[256];
    snprintf(padded, sizeof padded, "%s%.*s", json, (int)((8 - strlen(json) % 8) % 8), "       ");
    const unsigned char data[] = {0x00, 0x00, 0x80, 0x3f, 0x00, 0x00, 0x20, 0xc0, 0xc0, 0x3f, 0x00, 0xc0, 0x00, 0x38};
    size_t want_n, got_n;
    unsigned char *want = st_bytes(padded, data, sizeof data, &want_n);
    unsigned char *got = read_raw(path, &got_n);
    CU_ASSERT_FATAL(got != NULL);
    CU_ASSERT_EQUAL(got_n, want_n);
    CU_ASSERT(got_n == want_n && memcmp(got, want, want_n) == 0);
    if (got_n != want_n || memcmp(got, want, want_n) != 0)
        fprintf(stderr, "\n  written header: %.*s\n", (int)(got_n > 8 ? got_n - 8 : 0), (const char *)got + 8);
    free(want);
    free(got);
    dir_remove(&td);
}

/* Written in pieces that straddle tensors (empty ones among them), read back against the reference rounding. */
static void test_roundtrip(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "r.safetensors", path);
    /* "odd" leaves the writer's 4 MiB buffer 2 bytes off a 4-byte boundary, so "wide" ends up with 2 bytes of
     * room that no F32 value fits: the flush in the middle of a tensor, and "big" crosses the buffer again. */
    rt_st_decl decls[] = {{"layers.0.w", RT_ST_F32, 2, {3, 5}}, {"empty", RT_ST_F32, 2, {0, 4}},
                          {"layers.0.b", RT_ST_BF16, 1, {7}},   {"h", RT_ST_F16, 3, {2, 3, 2}},
                          {"scalar", RT_ST_BF16, 0, {0}},       {"odd", RT_ST_BF16, 1, {1}},
                          {"wide", RT_ST_F32, 1, {1100000}},    {"big", RT_ST_BF16, 1, {3000000}}};
    enum { N_DECLS = sizeof decls / sizeof decls[0] };
    size_t total = 15 + 7 + 12 + 1 + 1 + 1100000 + 3000000;
    float *x = malloc(total * sizeof *x), *back = malloc(total * sizeof *back);
    test_fill_uniform(x, total, -4.0f, 4.0f, 7);
    x[15] = 1e-6f;    /* a bf16 normal */
    x[22] = 3e-6f;    /* an fp16 subnormal */
    x[23] = 60000.0f; /* near fp16's largest */
    rt_error err = {{0}};
    rt_st_writer *w = rt_st_writer_open(path, decls, N_DECLS, NULL, 0, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    int ok = 1;
    for (size_t at = 0, piece = 1; at < total; at += piece, piece = piece * 3 + 1) {
        if (piece > total - at) piece = total - at;
        ok &= rt_st_writer_put(w, x + at, piece, &err) == 0;
    }
    CU_ASSERT(ok);
    CU_ASSERT_EQUAL_FATAL(rt_st_writer_finish(w, &err), 0);

    rt_st_file f;
    CU_ASSERT_EQUAL_FATAL(rt_st_open(&f, path, &err), 0);
    CU_ASSERT_EQUAL(f.count, N_DECLS);
    CU_ASSERT_EQUAL((f.data - (const unsigned char *)f.map) % 8, 0);
    size_t at = 0;
    size_t wrong = 0;
    for (int i = 0; i < N_DECLS; i++) {
        const rt_st_tensor *t = rt_st_find(&f, decls[i].name);
        CU_ASSERT_FATAL(t != NULL);
        CU_ASSERT(t->dtype == decls[i].dtype && t->ndim == decls[i].ndim);
        CU_ASSERT_EQUAL_FATAL(rt_st_read_f32(&f, t, 0, t->numel, back + at, &err), 0);
        for (size_t k = 0; k < t->numel; k++) {
            float want = t->dtype == RT_ST_F32    ? x[at + k]
                         : t->dtype == RT_ST_BF16 ? float_of((uint32_t)ref_bf16(x[at + k]) << 16)
                                                  : ref_f16_widen(ref_f16(x[at + k]));
            if (bits_of(back[at + k]) != bits_of(want)) wrong++;
        }
        at += t->numel;
    }
    CU_ASSERT_EQUAL(at, total);
    CU_ASSERT_EQUAL(wrong, 0);
    rt_st_close(&f);
    free(x);
    free(back);
    dir_remove(&td);
}

typedef struct {
    const char *json;
    size_t n_data;
    const char *message;
} bad_header;

static void test_open_errors(void) {
    char long_name[400];
    snprintf(long_name, sizeof long_name, "{\"%0300d\":{}}", 0);
    static const char *const T = "\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}";
    char gap[256], overlap[256], dup[256], twice[256];
    snprintf(gap, sizeof gap, "{%s,\"b\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[8,12]}}", T);
    snprintf(overlap, sizeof overlap, "{%s,\"b\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}", T);
    snprintf(dup, sizeof dup, "{%s,%s}", T, T);
    snprintf(twice, sizeof twice, "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}");
    const bad_header cases[] = {
        {"{\"a\":", 0, "header is not valid JSON"},
        {"[]", 0, "header is not a JSON object"},
        {"{} x", 0, "header has bytes after its JSON object (byte 3)"},
        {"{}", 4, "no tensors, but 4 bytes of data follow the header"},
        {"{\"a\":1}", 0, "tensor 'a': not an object"},
        {"{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'a': no dtype"},
        {"{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,4]}}", 4, "tensor 'a': no shape"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", 4, "tensor 'a': no data_offsets"},
        {"{\"a\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", 8,
         "tensor 'a': dtype 'F64' is not supported, expected F32, F16 or BF16"},
        {"{\"a\":{\"dtype\":7,\"shape\":[1],\"data_offsets\":[0,4]}}", 4, "tensor 'a': dtype is not a string"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'a': shape[0] is not an integer in [0, 2^53]"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1.5],\"data_offsets\":[0,4]}}", 4, "tensor 'a': shape[1] is not"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":{},\"data_offsets\":[0,4]}}", 4, "tensor 'a': shape is not an array"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1,1,1,1,1,1,1,1,1],\"data_offsets\":[0,4]}}", 4,
         "tensor 'a': shape has 9 dimensions, expected at most 8"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],\"data_offsets\":[0,4]}}", 4,
         "tensor 'a': shape's element count overflows"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0]}}", 4, "tensor 'a': data_offsets is not"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,1e300]}}", 4, "tensor 'a': data_offsets is not"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[4,0]}}", 4,
         "tensor 'a': data_offsets [4, 0] ends before it begins"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}", 4,
         "tensor 'a': data_offsets [0, 4] span 4 bytes, expected 2 elements of F32"},
        {gap, 12, "tensor 'b': data_offsets begin at 8, expected 4 (a gap before it)"},
        {overlap, 4, "tensor 'b': data_offsets begin at 2, expected 4 (it overlaps the tensor before)"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 8,
         "the tensors' data ends at byte 4, but the data section holds 8 bytes"},
        {"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}", 0,
         "the tensors' data ends at byte 4, but the data section holds 0 bytes"},
        {dup, 4, "tensor 'a' appears twice in the header"},
        {twice, 4, "tensor 'a': dtype given twice"},
        {long_name, 0, "is 300 bytes, expected fewer than 256"},
        {"{\"__metadata__\":{\"k\":1}}", 0, "__metadata__ entry 'k' is not a string"},
        {"{\"__metadata__\":[]}", 0, "__metadata__ is not an object"},
        {"{\"__metadata__\":{},\"__metadata__\":{}}", 0, "__metadata__ given twice"},
        {"{\"a\x01\":{}}", 0, "header byte 3 (0x01) is not UTF-8 JSON text"},
        {"{\"a\xff\":{}}", 0, "header byte 3 (0xff) is not UTF-8 JSON text"},
        {"{\"a\xed\xa0\x80\":{}}", 0, "header byte 3 (0xed) is not UTF-8 JSON text"},
        {"{\"x\\ny\":{\"dtype\":\"I8\",\"shape\":[1],\"data_offsets\":[0,1]}}", 1, "tensor 'x?y': dtype 'I8'"},
    };
    unsigned char zeros[16] = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        size_t n;
        unsigned char *bytes = st_bytes(cases[i].json, zeros, cases[i].n_data, &n);
        rt_st_file f;
        rt_error err = {{0}};
        int rc = rt_st_open_bytes(&f, bytes, n, "case.st", &err);
        if (rc == 0) fprintf(stderr, "\n  case %zu accepted: %s\n", i, cases[i].json);
        CU_ASSERT_EQUAL(rc, -1);
        CU_ASSERT(strncmp(err.msg, "case.st: ", 9) == 0);
        CU_ASSERT(strchr(err.msg, '\n') == NULL);
        ASSERT_MSG_HAS(err, cases[i].message);
        CU_ASSERT_PTR_NULL(f.tensors);
        if (rc == 0) rt_st_close(&f);
        free(bytes);
    }

    /* the length field itself: past the bytes that follow, past the format's bound, too short to hold */
    unsigned char raw[16] = {100, 0, 0, 0, 0, 0, 0, 0, '{', '}'};
    rt_st_file f;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL(rt_st_open_bytes(&f, raw, 10, "len.st", &err), -1);
    ASSERT_MSG_HAS(err, "len.st: header length 100, but only 2 bytes follow it");
    raw[0] = 0;
    raw[5] = 1; /* 2^40 */
    CU_ASSERT_EQUAL(rt_st_open_bytes(&f, raw, 10, "len.st", &err), -1);
    ASSERT_MSG_HAS(err, "header length 1099511627776, expected at most 100000000");
    CU_ASSERT_EQUAL(rt_st_open_bytes(&f, raw, 7, "len.st", &err), -1);
    ASSERT_MSG_HAS(err, "len.st: 7 bytes, shorter than the 8-byte header length");

    /* accepted edge cases: no tensors at all, padding after the object */
    size_t n;
    unsigned char *bytes = st_bytes("{}      ", NULL, 0, &n);
    CU_ASSERT_EQUAL(rt_st_open_bytes(&f, bytes, n, "empty.st", &err), 0);
    CU_ASSERT_EQUAL(f.count, 0);
    rt_st_close(&f);
    free(bytes);
}

/* Non-finite stored values are refused at the element that holds them, in each dtype. */
static void test_read_nonfinite(void) {
    const char *json = "{\"f\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,12]},"
                       "\"b\":{\"dtype\":\"BF16\",\"shape\":[2],\"data_offsets\":[12,16]},"
                       "\"h\":{\"dtype\":\"F16\",\"shape\":[2],\"data_offsets\":[16,20]}}";
    const unsigned char data[] = {0,    0,    0x80, 0x3f, 0, 0, 0xc0, 0x7f, 0, 0, 0x80, 0x3f, /* 1, NaN, 1 */
                                  0x80, 0x3f, 0x80, 0xff,                                     /* 1, -inf */
                                  0x00, 0x3c, 0x00, 0x7e};                                    /* 1, NaN */
    size_t n;
    unsigned char *bytes = st_bytes(json, data, sizeof data, &n);
    rt_st_file f;
    rt_error err = {{0}};
    CU_ASSERT_EQUAL_FATAL(rt_st_open_bytes(&f, bytes, n, "nan.st", &err), 0);
    float out[3];
    const char *names[] = {"f", "b", "h"};
    const size_t bad_at[] = {1, 1, 1};
    for (int i = 0; i < 3; i++) {
        const rt_st_tensor *t = rt_st_find(&f, names[i]);
        CU_ASSERT_EQUAL(rt_st_read_f32(&f, t, 0, t->numel, out, &err), -1);
        char want[96];
        snprintf(want, sizeof want, "nan.st: tensor '%s': element %zu is NaN or infinite", names[i], bad_at[i]);
        ASSERT_MSG_HAS(err, want);
        CU_ASSERT_EQUAL(rt_st_read_f32(&f, t, 0, 1, out, &err), 0);
        CU_ASSERT(out[0] == 1.0f);
    }
    const rt_st_tensor *t = rt_st_find(&f, "f");
    CU_ASSERT_EQUAL(rt_st_read_f32(&f, t, 2, 1, out, &err), 0);
    rt_st_close(&f);
    free(bytes);
}

static void test_open_file_errors(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    rt_st_file f;
    rt_error err = {{0}};
    dir_path(&td, "missing.safetensors", path);
    CU_ASSERT_EQUAL(rt_st_open(&f, path, &err), -1);
    ASSERT_MSG_HAS(err, "missing.safetensors: cannot open safetensors file: No such file");
    CU_ASSERT_EQUAL(rt_st_open(&f, td.dir, &err), -1);
    ASSERT_MSG_HAS(err, "not a regular file");
    /* a FIFO with no writer: refused at once, not waited on */
    dir_path(&td, "fifo.safetensors", path);
    CU_ASSERT_EQUAL_FATAL(mkfifo(path, 0600), 0);
    CU_ASSERT_EQUAL(rt_st_open(&f, path, &err), -1);
    ASSERT_MSG_HAS(err, "fifo.safetensors: not a regular file");
    dir_path(&td, "empty.safetensors", path);
    write_raw(path, "", 0);
    CU_ASSERT_EQUAL(rt_st_open(&f, path, &err), -1);
    ASSERT_MSG_HAS(err, "empty.safetensors: 0 bytes, shorter than the 8-byte header length");
    dir_remove(&td);
}

static void test_writer_failures(void) {
    test_dir td;
    dir_make(&td);
    char path[256];
    dir_path(&td, "w.safetensors", path);
    rt_st_decl decls[] = {{"a", RT_ST_F16, 1, {2}}, {"b", RT_ST_BF16, 1, {2}}};
    rt_error err = {{0}};
    float v[] = {1.0f, 65519.0f, 3.0f, 4.0f, 5.0f};

    /* one value too many: refused, file removed at once */
    rt_st_writer *w = rt_st_writer_open(path, decls, 2, NULL, 0, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(rt_st_writer_put(w, v, 5, &err), -1);
    ASSERT_MSG_HAS(err, "w.safetensors: 1 values more than the declared tensors hold");
    CU_ASSERT(!file_exists(path));
    CU_ASSERT_EQUAL(rt_st_writer_finish(w, &err), -1);
    ASSERT_MSG_HAS(err, "an earlier write failed");

    /* too few at finish */
    w = rt_st_writer_open(path, decls, 2, NULL, 0, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT_EQUAL(rt_st_writer_put(w, v, 3, &err), 0);
    CU_ASSERT_EQUAL(rt_st_writer_finish(w, &err), -1);
    ASSERT_MSG_HAS(err, "tensor 'b' got 1 of its 2 values");
    CU_ASSERT(!file_exists(path));

    /* not finite after rounding to the dtype: 65520 is fp16 infinity; FLT_MAX is bf16 infinity; NaN */
    const float bad[][2] = {{1.0f, 65520.0f}, {1.0f, NAN}};
    const char *why[] = {"tensor 'a': element 1 is 65520, not finite in F16", "tensor 'a': element 1 is nan"};
    for (int i = 0; i < 2; i++) {
        w = rt_st_writer_open(path, decls, 2, NULL, 0, &err);
        CU_ASSERT_PTR_NOT_NULL_FATAL(w);
        CU_ASSERT_EQUAL(rt_st_writer_put(w, bad[i], 2, &err), -1);
        ASSERT_MSG_HAS(err, why[i]);
        CU_ASSERT(!file_exists(path));
        rt_st_writer_abort(w);
    }
    w = rt_st_writer_open(path, decls, 2, NULL, 0, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    float big[] = {1.0f, 2.0f, 1.0f, FLT_MAX};
    CU_ASSERT_EQUAL(rt_st_writer_put(w, big, 4, &err), -1);
    ASSERT_MSG_HAS(err, "tensor 'b': element 1 is 3.40282e+38, not finite in BF16");
    rt_st_writer_abort(w);

    /* abort removes what was written */
    w = rt_st_writer_open(path, decls, 2, NULL, 0, &err);
    CU_ASSERT_PTR_NOT_NULL_FATAL(w);
    CU_ASSERT(file_exists(path));
    rt_st_writer_abort(w);
    CU_ASSERT(!file_exists(path));

    /* declarations the reader would refuse: no file is created */
    rt_st_decl twice[] = {{"a", RT_ST_F32, 1, {1}}, {"a", RT_ST_F32, 1, {1}}};
    CU_ASSERT_PTR_NULL(rt_st_writer_open(path, twice, 2, NULL, 0, &err));
    ASSERT_MSG_HAS(err, "tensor 'a' declared twice");
    rt_st_decl dims[] = {{"a", RT_ST_F32, 9, {1}}};
    CU_ASSERT_PTR_NULL(rt_st_writer_open(path, dims, 1, NULL, 0, &err));
    ASSERT_MSG_HAS(err, "tensor 'a': 9 dimensions, expected 0 to 8");
    rt_st_decl neg[] = {{"a", RT_ST_F32, 2, {2, -1}}};
    CU_ASSERT_PTR_NULL(rt_st_writer_open(path, neg, 1, NULL, 0, &err));
    ASSERT_MSG_HAS(err, "tensor 'a': shape[1] is -1");
    rt_st_decl huge[] = {{"a", RT_ST_BF16, 1, {1ll << 52}}, {"b", RT_ST_F32, 2, {1ll << 26, 1ll << 25}}};
    CU_ASSERT_PTR_NULL(rt_st_writer_open(path, huge, 2, NULL, 0, &err)); /* 2^53 bytes, then 2^53 + 2^53 */
    ASSERT_MSG_HAS(err, "tensor 'b' ends past 2^53 bytes of data");
    rt_st_decl meta[] = {{"__metadata__", RT_ST_F32, 0, {0}}};
    CU_ASSERT_PTR_NULL(rt_st_writer_open(path, meta, 1, NULL, 0, &err));
    ASSERT_MSG_HAS(err, "tensor 0's name is empty, __metadata__");
    CU_ASSERT_EQUAL(dir_count(&td), 0);

    dir_path(&td, "nodir/x.safetensors", path);
    CU_ASSERT_PTR_NULL(rt_st_writer_open(path, decls, 2, NULL, 0, &err));
    ASSERT_MSG_HAS(err, "nodir/x.safetensors: cannot create safetensors file: No such file");
    dir_remove(&td);
}

int main(void) {
    test_case cases[] = {
        {"read_hand_built", test_read_hand_built},
        {"read_every_f16", test_read_every_f16},
        {"f32_to_f16", test_f32_to_f16},
        {"f32_to_bf16", test_f32_to_bf16},
        {"writer_bytes", test_writer_bytes},
        {"roundtrip", test_roundtrip},
        {"open_errors", test_open_errors},
        {"read_nonfinite", test_read_nonfinite},
        {"open_file_errors", test_open_file_errors},
        {"writer_failures", test_writer_failures},
    };
    return test_run_suite("test_safetensors", cases, (int)(sizeof cases / sizeof cases[0]));
}
