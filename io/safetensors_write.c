/* safetensors_write.c: the safetensors writer (header from the declarations, then the values streamed in
 * declaration order) and the fp32 -> bf16 / fp16 rounding it uses. */
#include "float_bits.h"
#include "safetensors.h"

#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Converted values are gathered here and written in pieces of this size. */
#define WRITE_BUFFER_BYTES (4u << 20)

struct rt_st_writer {
    char path[1024];
    int fd;
    rt_st_decl *decls; /* names copied */
    size_t *numel;
    int n_decls;
    int current;        /* the tensor the next value belongs to */
    size_t done;        /* values of decls[current] already put */
    unsigned char *buf; /* converted bytes not yet written */
    size_t buf_bytes;
    int failed; /* a put failed: the file is already removed */
};

static inline uint16_t to_bf16(float x) {
    uint32_t bits = rt_f32_bits(x);
    /* Adding 0x7fff plus the kept part's lowest bit carries exactly when the dropped half rounds up to even. */
    uint16_t rounded = (uint16_t)((bits + 0x7fffu + (bits >> 16 & 1)) >> 16);
    uint16_t quiet_nan = (uint16_t)(bits >> 16 | 0x40); /* sign kept */
    /* a select, not a branch: the writer's loop over a run of values vectorizes */
    return (bits & 0x7fffffffu) > 0x7f800000u ? quiet_nan : rounded;
}

/* Every case is computed and one selected (no branch), so the writer's loop vectorizes. */
static inline uint16_t to_f16(float x) {
    uint32_t bits = rt_f32_bits(x);
    uint16_t sign = (uint16_t)(bits >> 16 & 0x8000);
    uint32_t a = bits & 0x7fffffffu;
    /* normal: rebias the exponent (127 -> 15) and round the 13 dropped bits to nearest even */
    uint32_t rebiased = a - (112u << 23);
    uint32_t normal = (rebiased + 0xfffu + (rebiased >> 13 & 1)) >> 13;
    /* below 2^-14 (fp16 subnormal, value = m * 2^-24): adding 0.5 makes the fp32 ulp 2^-24, so the fp32 addition
     * itself rounds |x| to nearest even at fp16's subnormal spacing; m is what lands in the low bits */
    float shifted = rt_bits_f32(a) + 0.5f;
    uint32_t subnormal = rt_f32_bits(shifted) - 0x3f000000u;
    /* masks rather than branches or selects: GCC vectorizes the writer's loop only then */
    uint32_t is_nan = 0u - (uint32_t)(a > 0x7f800000u);
    uint32_t is_inf = 0u - (uint32_t)(a >= 0x477ff000u); /* 65520 and up: the tie past 65504 rounds to infinity */
    uint32_t is_sub = 0u - (uint32_t)(a < 0x38800000u);  /* may reach 0x400, the smallest normal, correctly */
    uint32_t finite = (subnormal & is_sub) | (normal & ~is_sub);
    uint32_t h = (0x7e00u & is_nan) | (0x7c00u & is_inf & ~is_nan) | (finite & ~is_inf);
    return sign | (uint16_t)h;
}

uint16_t rt_st_f32_to_bf16(float x) { return to_bf16(x); }
uint16_t rt_st_f32_to_f16(float x) { return to_f16(x); }

/* Appends s to the header as a JSON string (quotes, backslashes and control bytes escaped). */
static size_t json_string(char *out, const char *s) {
    size_t n = 0;
    out[n++] = '"';
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            out[n++] = '\\';
            out[n++] = (char)c;
        } else if (c < 0x20) {
            n += (size_t)sprintf(out + n, "\\u%04x", c);
        } else {
            out[n++] = (char)c;
        }
    }
    out[n++] = '"';
    return n;
}

/* The header: __metadata__, then the tensors in declaration order at consecutive offsets, padded with spaces
 * to a multiple of 8 bytes so the data section is aligned (as the Python writer does). *bytes excludes the NUL. */
static char *build_header(const rt_st_writer *w, const char *const (*metadata)[2], int n_metadata, size_t *bytes) {
    size_t cap = 64;
    for (int i = 0; i < n_metadata; i++)
        cap += 6 * (strlen(metadata[i][0]) + strlen(metadata[i][1])) + 8;
    for (int i = 0; i < w->n_decls; i++)
        cap += 6 * strlen(w->decls[i].name) + 128 + 22 * (size_t)w->decls[i].ndim;
    char *h = malloc_check(cap);
    size_t n = 0;
    h[n++] = '{';
    if (n_metadata > 0) {
        n += (size_t)sprintf(h + n, "\"__metadata__\":{");
        for (int i = 0; i < n_metadata; i++) {
            if (i) h[n++] = ',';
            n += json_string(h + n, metadata[i][0]);
            h[n++] = ':';
            n += json_string(h + n, metadata[i][1]);
        }
        h[n++] = '}';
    }
    size_t offset = 0;
    for (int i = 0; i < w->n_decls; i++) {
        const rt_st_decl *d = &w->decls[i];
        if (i || n_metadata > 0) h[n++] = ',';
        n += json_string(h + n, d->name);
        n += (size_t)sprintf(h + n, ":{\"dtype\":\"%s\",\"shape\":[", rt_st_dtype_name(d->dtype));
        for (int k = 0; k < d->ndim; k++)
            n += (size_t)sprintf(h + n, k ? ",%lld" : "%lld", (long long)d->shape[k]);
        size_t end = offset + w->numel[i] * rt_st_dtype_size(d->dtype);
        n += (size_t)sprintf(h + n, "],\"data_offsets\":[%zu,%zu]}", offset, end);
        offset = end;
    }
    h[n++] = '}';
    while (n % 8)
        h[n++] = ' ';
    h[n] = '\0';
    *bytes = n;
    return h;
}

static void writer_free(rt_st_writer *w) {
    if (!w) return;
    if (w->decls)
        for (int i = 0; i < w->n_decls; i++)
            free((char *)w->decls[i].name);
    free(w->decls);
    free(w->numel);
    free(w->buf);
    free(w);
}

/* What the reader would refuse, refused before the file is created. */
static int check_decls(const char *path, const rt_st_decl *decls, int n_decls, size_t *numel, rt_error *err) {
    size_t total = 0;
    for (int i = 0; i < n_decls; i++) {
        const rt_st_decl *d = &decls[i];
        if (!d->name || !d->name[0] || strlen(d->name) >= RT_ST_NAME_LEN || strcmp(d->name, "__metadata__") == 0)
            return rt_fail(err, "%s: tensor %d's name is empty, __metadata__ or %d bytes or longer", path, i,
                           RT_ST_NAME_LEN);
        if (d->dtype != RT_ST_F32 && d->dtype != RT_ST_F16 && d->dtype != RT_ST_BF16)
            return rt_fail(err, "%s: tensor '%s': dtype %d, expected F32, F16 or BF16", path, d->name, (int)d->dtype);
        if (d->ndim < 0 || d->ndim > RT_ST_MAX_DIMS)
            return rt_fail(err, "%s: tensor '%s': %d dimensions, expected 0 to %d", path, d->name, d->ndim,
                           RT_ST_MAX_DIMS);
        for (int j = 0; j < i; j++)
            if (strcmp(decls[j].name, d->name) == 0)
                return rt_fail(err, "%s: tensor '%s' declared twice", path, d->name);
        numel[i] = 1;
        for (int k = 0; k < d->ndim; k++) {
            int64_t v = d->shape[k];
            if (v < 0 || (uint64_t)v > (1ull << 53))
                return rt_fail(err, "%s: tensor '%s': shape[%d] is %lld, expected 0 to 2^53", path, d->name, k,
                               (long long)v);
            numel[i] = v == 0 || numel[i] == 0 ? 0 : numel[i] > (1ull << 53) / (uint64_t)v ? SIZE_MAX : numel[i] * v;
        }
        /* 2^53: offsets beyond it are not exact as JSON numbers (doubles), so the reader refuses them */
        size_t size = rt_st_dtype_size(d->dtype);
        if (numel[i] > (1ull << 53) / size || total + numel[i] * size > (1ull << 53))
            return rt_fail(err, "%s: tensor '%s' ends past 2^53 bytes of data", path, d->name);
        total += numel[i] * size;
    }
    return 0;
}

rt_st_writer *rt_st_writer_open(const char *path, const rt_st_decl *decls, int n_decls,
                                const char *const (*metadata)[2], int n_metadata, rt_error *err) {
    if (strlen(path) >= sizeof((rt_st_writer *)0)->path) {
        rt_fail(err, "%.64s...: path longer than %zu bytes", path, sizeof((rt_st_writer *)0)->path - 1);
        return NULL;
    }
    for (int i = 0; i < n_metadata; i++)
        if (!metadata[i][0] || !metadata[i][1]) {
            rt_fail(err, "%s: __metadata__ entry %d has no key or no value", path, i);
            return NULL;
        }
    rt_st_writer *w = calloc_check(1, sizeof *w);
    strcpy(w->path, path);
    w->fd = -1;
    w->n_decls = n_decls;
    w->numel = calloc_check(n_decls > 0 ? (size_t)n_decls : 1, sizeof *w->numel);
    if (check_decls(path, decls, n_decls, w->numel, err) != 0) {
        writer_free(w);
        return NULL;
    }
    w->decls = calloc_check(n_decls > 0 ? (size_t)n_decls : 1, sizeof *w->decls);
    for (int i = 0; i < n_decls; i++) {
        w->decls[i] = decls[i];
        w->decls[i].name = strcpy(malloc_check(strlen(decls[i].name) + 1), decls[i].name);
    }
    w->buf = malloc_check(WRITE_BUFFER_BYTES);

    w->fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (w->fd < 0) {
        rt_fail(err, "%s: cannot create safetensors file: %s", path, strerror(errno));
        writer_free(w);
        return NULL;
    }
    size_t header_bytes;
    char *header = build_header(w, metadata, n_metadata, &header_bytes);
    unsigned char length[8];
    for (int i = 0; i < 8; i++)
        length[i] = (unsigned char)((uint64_t)header_bytes >> (8 * i));
    int rc = rt_write_all(w->fd, length, 8, path, err);
    if (rc == 0) rc = rt_write_all(w->fd, header, header_bytes, path, err);
    free(header);
    if (rc != 0) {
        rt_st_writer_abort(w);
        return NULL;
    }
    while (w->current < w->n_decls && w->numel[w->current] == 0)
        w->current++;
    return w;
}

static int flush(rt_st_writer *w, rt_error *err) {
    int rc = rt_write_all(w->fd, w->buf, w->buf_bytes, w->path, err);
    w->buf_bytes = 0;
    return rc;
}

/* Narrows count values into dst in dtype; returns whether any became NaN or infinite there. An or-reduction
 * rather than an early exit keeps the fp32 and bf16 loops vectorizable. */
static int narrow(rt_st_dtype dtype, const float *values, size_t count, unsigned char *dst) {
    unsigned bad = 0;
    if (dtype == RT_ST_F32) {
        memcpy(dst, values, count * 4);
        bad = !rt_f32_all_finite(values, count);
    } else if (dtype == RT_ST_BF16) {
        for (size_t i = 0; i < count; i++) {
            uint16_t h = to_bf16(values[i]);
            memcpy(dst + 2 * i, &h, 2);
            bad |= (h & 0x7f80u) == 0x7f80u;
        }
    } else {
        for (size_t i = 0; i < count; i++) {
            uint16_t h = to_f16(values[i]);
            memcpy(dst + 2 * i, &h, 2);
            bad |= (h & 0x7c00u) == 0x7c00u;
        }
    }
    return bad != 0;
}

/* Index of the first of count values that is not finite in dtype (count when none). */
static size_t first_nonfinite(rt_st_dtype dtype, const float *values, size_t count) {
    unsigned char one[4];
    for (size_t i = 0; i < count; i++)
        if (narrow(dtype, values + i, 1, one)) return i;
    return count;
}

/* The next values of the current tensor, at most to its end, converted into the buffer; returns how many it
 * took (at least one), or -1. */
static ptrdiff_t put_run(rt_st_writer *w, const float *values, size_t count, rt_error *err) {
    const rt_st_decl *d = &w->decls[w->current];
    size_t size = rt_st_dtype_size(d->dtype);
    /* fp32 needs no conversion: a run of a buffer or more goes to the file straight from the caller's values,
     * one copy fewer for an fp32 export (a measurable share of its time). */
    const int direct = d->dtype == RT_ST_F32 && count * size >= WRITE_BUFFER_BYTES;
    if (direct && w->buf_bytes > 0 && flush(w, err) != 0) return -1;
    if (!direct && WRITE_BUFFER_BYTES - w->buf_bytes < size && flush(w, err) != 0) return -1;
    size_t room = (WRITE_BUFFER_BYTES - w->buf_bytes) / size;
    if (!direct && count > room) count = room;
    if (direct ? !rt_f32_all_finite(values, count) : narrow(d->dtype, values, count, w->buf + w->buf_bytes)) {
        size_t i = first_nonfinite(d->dtype, values, count);
        return rt_fail(err, "%s: tensor '%s': element %zu is %g, not finite in %s", w->path, d->name, w->done + i,
                       (double)values[i], rt_st_dtype_name(d->dtype));
    }
    if (direct && rt_write_all(w->fd, values, count * size, w->path, err) != 0) return -1;
    if (!direct) w->buf_bytes += count * size;
    w->done += count;
    if (w->done == w->numel[w->current]) {
        w->done = 0;
        do
            w->current++;
        while (w->current < w->n_decls && w->numel[w->current] == 0);
    }
    return (ptrdiff_t)count;
}

/* Closes and removes the file at the first failure, so that no partial file outlives it. */
static int fail_put(rt_st_writer *w) {
    close(w->fd);
    unlink(w->path);
    w->fd = -1;
    w->failed = 1;
    return -1;
}

int rt_st_writer_put(rt_st_writer *w, const float *values, size_t count, rt_error *err) {
    if (w->failed) return rt_fail(err, "%s: an earlier write failed, the file is gone", w->path);
    while (count > 0) {
        if (w->current == w->n_decls) {
            rt_fail(err, "%s: %zu values more than the declared tensors hold", w->path, count);
            return fail_put(w);
        }
        size_t left = w->numel[w->current] - w->done;
        ptrdiff_t n = put_run(w, values, count < left ? count : left, err);
        if (n < 0) return fail_put(w);
        values += n;
        count -= (size_t)n;
    }
    return 0;
}

int rt_st_writer_finish(rt_st_writer *w, rt_error *err) {
    if (w->failed) {
        rt_fail(err, "%s: an earlier write failed, the file is gone", w->path);
        writer_free(w);
        return -1;
    }
    int rc = 0;
    if (w->current < w->n_decls)
        rc = rt_fail(err, "%s: tensor '%s' got %zu of its %zu values before the file was finished", w->path,
                     w->decls[w->current].name, w->done, w->numel[w->current]);
    if (rc == 0) rc = flush(w, err);
    rc = rt_sync_close(w->fd, w->path, rc, err);
    w->fd = -1;
    if (rc != 0) unlink(w->path);
    writer_free(w);
    return rc;
}

void rt_st_writer_abort(rt_st_writer *w) {
    if (!w) return;
    if (w->fd >= 0) {
        close(w->fd);
        unlink(w->path);
    }
    writer_free(w);
}
