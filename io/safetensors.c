/* safetensors.c: the safetensors reader: the header checked field by field (safetensors.h lists the checks),
 * values widened to fp32 on read. The writer and the fp32 narrowing are in safetensors_write.c. */
#include "safetensors.h"
#include "float_bits.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* The Python library's own bound on the header: a file claiming more is corrupt, and cJSON's tree of a header
 * this size stays well under a gigabyte. */
#define HEADER_LIMIT 100000000u
/* Offsets and shape entries arrive as JSON numbers (doubles): integers beyond 2^53 are not exact there. */
#define JSON_INT_LIMIT 9007199254740992.0

size_t rt_st_dtype_size(rt_st_dtype dtype) { return dtype == RT_ST_F32 ? 4 : 2; }

const char *rt_st_dtype_name(rt_st_dtype dtype) {
    switch (dtype) {
    case RT_ST_F32: return "F32";
    case RT_ST_F16: return "F16";
    case RT_ST_BF16: return "BF16";
    }
    return "?";
}

/* A name as error messages show it: control bytes as '?' (a message is one line), long names cut. */
static const char *shown(const char *name, char out[80]) {
    size_t n = 0;
    for (; name[n] && n < 72; n++)
        out[n] = (unsigned char)name[n] < 0x20 || name[n] == 0x7f ? '?' : name[n];
    if (name[n]) {
        memcpy(out + n, "...", 3);
        n += 3;
    }
    out[n] = '\0';
    return out;
}

static uint64_t read_le64(const unsigned char *b) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--)
        v = v << 8 | b[i];
    return v;
}

/* The header's bytes before JSON parsing: UTF-8 (as the format requires) and no control byte other than JSON's
 * whitespace, which cJSON would otherwise take inside strings. Returns the offset of the first bad byte, or n. */
static size_t first_bad_header_byte(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        unsigned char c = s[i];
        if (c < 0x80) {
            if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') return i;
            i++;
            continue;
        }
        size_t len = c >= 0xc2 && c <= 0xdf ? 2 : c >= 0xe0 && c <= 0xef ? 3 : c >= 0xf0 && c <= 0xf4 ? 4 : 0;
        if (len == 0 || i + len > n) return i;
        for (size_t k = 1; k < len; k++)
            if ((s[i + k] & 0xc0) != 0x80) return i;
        /* overlong three- and four-byte forms, surrogates, code points past U+10FFFF */
        if ((c == 0xe0 && s[i + 1] < 0xa0) || (c == 0xed && s[i + 1] >= 0xa0) || (c == 0xf0 && s[i + 1] < 0x90) ||
            (c == 0xf4 && s[i + 1] >= 0x90))
            return i;
        i += len;
    }
    return n;
}

/* A JSON number that is an integer in [0, 2^53]. */
static int json_index(const cJSON *item, uint64_t *out) {
    if (!cJSON_IsNumber(item)) return -1;
    double d = item->valuedouble;
    if (!(d >= 0.0 && d <= JSON_INT_LIMIT) || d != (double)(uint64_t)d) return -1;
    *out = (uint64_t)d;
    return 0;
}

static int parse_dtype(const rt_st_file *f, const char *name, const cJSON *item, rt_st_dtype *out, rt_error *err) {
    char sn[80], sd[80];
    if (!cJSON_IsString(item))
        return rt_fail(err, "%s: tensor '%s': dtype is not a string, expected \"F32\", \"F16\" or \"BF16\"", f->path,
                       shown(name, sn));
    static const rt_st_dtype known[] = {RT_ST_F32, RT_ST_F16, RT_ST_BF16};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (strcmp(item->valuestring, rt_st_dtype_name(known[i])) == 0) {
            *out = known[i];
            return 0;
        }
    return rt_fail(err, "%s: tensor '%s': dtype '%s' is not supported, expected F32, F16 or BF16", f->path,
                   shown(name, sn), shown(item->valuestring, sd));
}

static int parse_shape(const rt_st_file *f, rt_st_tensor *t, const cJSON *item, rt_error *err) {
    char sn[80];
    if (!cJSON_IsArray(item))
        return rt_fail(err, "%s: tensor '%s': shape is not an array, expected [d0, ...]", f->path, shown(t->name, sn));
    int ndim = cJSON_GetArraySize(item);
    if (ndim > RT_ST_MAX_DIMS)
        return rt_fail(err, "%s: tensor '%s': shape has %d dimensions, expected at most %d", f->path,
                       shown(t->name, sn), ndim, RT_ST_MAX_DIMS);
    t->ndim = ndim;
    int d = 0;
    for (const cJSON *dim = item->child; dim; dim = dim->next, d++) {
        uint64_t v;
        if (json_index(dim, &v) != 0)
            return rt_fail(err, "%s: tensor '%s': shape[%d] is not an integer in [0, 2^53]", f->path,
                           shown(t->name, sn), d);
        t->shape[d] = (int64_t)v;
    }
    /* A zero dimension makes the count 0 whatever the others are, so it is looked for before any product. */
    t->numel = 1;
    for (d = 0; d < ndim; d++)
        if (t->shape[d] == 0) t->numel = 0;
    for (d = 0; d < ndim && t->numel; d++) {
        size_t v = (size_t)t->shape[d];
        if (t->numel > SIZE_MAX / v)
            return rt_fail(err, "%s: tensor '%s': shape's element count overflows %zu bits", f->path,
                           shown(t->name, sn), 8 * sizeof(size_t));
        t->numel *= v;
    }
    return 0;
}

static int parse_offsets(const rt_st_file *f, rt_st_tensor *t, const cJSON *item, rt_error *err) {
    char sn[80];
    uint64_t begin, end;
    if (!cJSON_IsArray(item) || cJSON_GetArraySize(item) != 2 || json_index(item->child, &begin) != 0 ||
        json_index(item->child->next, &end) != 0)
        return rt_fail(err, "%s: tensor '%s': data_offsets is not [begin, end] of integers in [0, 2^53]", f->path,
                       shown(t->name, sn));
    if (begin > end)
        return rt_fail(err, "%s: tensor '%s': data_offsets [%llu, %llu] ends before it begins", f->path,
                       shown(t->name, sn), (unsigned long long)begin, (unsigned long long)end);
    size_t size = rt_st_dtype_size(t->dtype);
    if (t->numel > SIZE_MAX / size || end - begin != t->numel * size)
        return rt_fail(err, "%s: tensor '%s': data_offsets [%llu, %llu] span %llu bytes, expected %zu elements of %s",
                       f->path, shown(t->name, sn), (unsigned long long)begin, (unsigned long long)end,
                       (unsigned long long)(end - begin), t->numel, rt_st_dtype_name(t->dtype));
    t->begin = (size_t)begin;
    t->end = (size_t)end;
    return 0;
}

static int parse_metadata(const rt_st_file *f, const cJSON *item, rt_error *err) {
    char sk[80];
    if (!cJSON_IsObject(item))
        return rt_fail(err, "%s: __metadata__ is not an object, expected {string: string}", f->path);
    for (const cJSON *entry = item->child; entry; entry = entry->next)
        if (!cJSON_IsString(entry))
            return rt_fail(err, "%s: __metadata__ entry '%s' is not a string", f->path, shown(entry->string, sk));
    return 0;
}

/* One tensor's object: dtype, shape and data_offsets once each (other keys are ignored, as the format allows). */
static int parse_tensor(const rt_st_file *f, rt_st_tensor *t, const cJSON *obj, rt_error *err) {
    char sn[80];
    if (strlen(obj->string) >= RT_ST_NAME_LEN)
        return rt_fail(err, "%s: tensor name '%s' is %zu bytes, expected fewer than %d", f->path,
                       shown(obj->string, sn), strlen(obj->string), RT_ST_NAME_LEN);
    strcpy(t->name, obj->string);
    if (!cJSON_IsObject(obj))
        return rt_fail(err, "%s: tensor '%s': not an object, expected {\"dtype\", \"shape\", \"data_offsets\"}",
                       f->path, shown(t->name, sn));
    static const char *const fields[] = {"dtype", "shape", "data_offsets"};
    const cJSON *found[3] = {NULL, NULL, NULL};
    for (const cJSON *field = obj->child; field; field = field->next)
        for (int k = 0; k < 3; k++)
            if (strcmp(field->string, fields[k]) == 0) {
                if (found[k])
                    return rt_fail(err, "%s: tensor '%s': %s given twice", f->path, shown(t->name, sn), fields[k]);
                found[k] = field;
            }
    for (int k = 0; k < 3; k++)
        if (!found[k]) return rt_fail(err, "%s: tensor '%s': no %s", f->path, shown(t->name, sn), fields[k]);
    if (parse_dtype(f, t->name, found[0], &t->dtype, err) != 0 || parse_shape(f, t, found[1], err) != 0) return -1;
    return parse_offsets(f, t, found[2], err);
}

static int by_offsets(const void *a, const void *b) {
    const rt_st_tensor *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

static int by_name(const void *a, const void *b) {
    return strcmp((*(const rt_st_tensor *const *)a)->name, (*(const rt_st_tensor *const *)b)->name);
}

/* Names unique; offsets, in order, tile [0, data_bytes) exactly. Sorts f->tensors into data order. */
static int check_layout(rt_st_file *f, rt_error *err) {
    char sn[80];
    if (f->count == 0) {
        if (f->data_bytes != 0)
            return rt_fail(err, "%s: no tensors, but %zu bytes of data follow the header", f->path, f->data_bytes);
        return 0;
    }
    const rt_st_tensor **names = malloc_check((size_t)f->count * sizeof *names);
    for (int i = 0; i < f->count; i++)
        names[i] = &f->tensors[i];
    qsort(names, (size_t)f->count, sizeof *names, by_name);
    for (int i = 1; i < f->count; i++)
        if (strcmp(names[i - 1]->name, names[i]->name) == 0) {
            rt_fail(err, "%s: tensor '%s' appears twice in the header", f->path, shown(names[i]->name, sn));
            free(names);
            return -1;
        }
    free(names);

    qsort(f->tensors, (size_t)f->count, sizeof *f->tensors, by_offsets);
    size_t at = 0;
    for (int i = 0; i < f->count; i++) {
        const rt_st_tensor *t = &f->tensors[i];
        if (t->begin != at)
            return rt_fail(err, "%s: tensor '%s': data_offsets begin at %zu, expected %zu (%s)", f->path,
                           shown(t->name, sn), t->begin, at,
                           t->begin > at ? "a gap before it" : "it overlaps the tensor before");
        at = t->end;
    }
    if (at != f->data_bytes)
        return rt_fail(err, "%s: the tensors' data ends at byte %zu, but the data section holds %zu bytes", f->path, at,
                       f->data_bytes);
    return 0;
}

/* Fills f from the whole file's bytes; f->path is set. On failure the caller closes f. */
static int parse_file(rt_st_file *f, const unsigned char *bytes, size_t n_bytes, rt_error *err) {
    if (n_bytes < 8)
        return rt_fail(err, "%s: %zu bytes, shorter than the 8-byte header length of a safetensors file", f->path,
                       n_bytes);
    uint64_t header_bytes = read_le64(bytes);
    if (header_bytes > HEADER_LIMIT)
        return rt_fail(err, "%s: header length %llu, expected at most %u", f->path, (unsigned long long)header_bytes,
                       HEADER_LIMIT);
    if (header_bytes > n_bytes - 8)
        return rt_fail(err, "%s: header length %llu, but only %zu bytes follow it", f->path,
                       (unsigned long long)header_bytes, n_bytes - 8);
    const unsigned char *json = bytes + 8;
    size_t bad = first_bad_header_byte(json, (size_t)header_bytes);
    if (bad < header_bytes)
        return rt_fail(err, "%s: header byte %zu (0x%02x) is not UTF-8 JSON text", f->path, bad, json[bad]);
    const char *json_end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts((const char *)json, (size_t)header_bytes, &json_end, 0);
    if (!root) {
        size_t at = cJSON_GetErrorPtr() ? (size_t)(cJSON_GetErrorPtr() - (const char *)json) : 0;
        return rt_fail(err, "%s: header is not valid JSON (near byte %zu)", f->path, at);
    }
    /* The Python writer pads the header with spaces to a multiple of 8 bytes. */
    for (const char *p = json_end; p < (const char *)json + header_bytes; p++)
        if (*p != ' ' && *p != '\t' && *p != '\n' && *p != '\r') {
            cJSON_Delete(root);
            return rt_fail(err, "%s: header has bytes after its JSON object (byte %zu), expected only spaces", f->path,
                           (size_t)(p - (const char *)json));
        }
    int rc = 0;
    if (!cJSON_IsObject(root)) {
        rc = rt_fail(err, "%s: header is not a JSON object, expected {name: {dtype, shape, data_offsets}, ...}",
                     f->path);
        goto done;
    }
    f->data = json + header_bytes;
    f->data_bytes = n_bytes - 8 - (size_t)header_bytes;
    int n = cJSON_GetArraySize(root);
    f->tensors = calloc_check(n > 0 ? (size_t)n : 1, sizeof *f->tensors);
    int metadata_seen = 0;
    for (const cJSON *item = root->child; item; item = item->next) {
        if (strcmp(item->string, "__metadata__") == 0) {
            if (metadata_seen++) {
                rc = rt_fail(err, "%s: __metadata__ given twice", f->path);
                goto done;
            }
            if ((rc = parse_metadata(f, item, err)) != 0) goto done;
            continue;
        }
        if ((rc = parse_tensor(f, &f->tensors[f->count], item, err)) != 0) goto done;
        f->count++;
    }
    rc = check_layout(f, err);
done:
    cJSON_Delete(root);
    return rc;
}

static int set_path(rt_st_file *f, const char *path, rt_error *err) {
    memset(f, 0, sizeof *f);
    if (strlen(path) >= sizeof f->path)
        return rt_fail(err, "%.64s...: path longer than %zu bytes", path, sizeof f->path - 1);
    strcpy(f->path, path);
    return 0;
}

int rt_st_open_bytes(rt_st_file *f, const void *bytes, size_t n_bytes, const char *origin, rt_error *err) {
    if (set_path(f, origin, err) != 0) return -1;
    if (parse_file(f, bytes, n_bytes, err) != 0) {
        rt_st_close(f);
        return -1;
    }
    return 0;
}

int rt_st_open(rt_st_file *f, const char *path, rt_error *err) {
    if (set_path(f, path, err) != 0) return -1;
    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused as not regular just below. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return rt_fail(err, "%s: cannot open safetensors file: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        return rt_fail(err, "%s: cannot stat safetensors file: %s", path, strerror(saved));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return rt_fail(err, "%s: not a regular file (a FIFO, device or directory), expected a safetensors file", path);
    }
    size_t file_bytes = (size_t)st.st_size;
    if (file_bytes < 8) {
        close(fd);
        return rt_fail(err, "%s: %zu bytes, shorter than the 8-byte header length of a safetensors file", path,
                       file_bytes);
    }
    void *map = mmap(NULL, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return rt_fail(err, "%s: cannot mmap safetensors file: %s", path, strerror(map_errno));
    f->map = map;
    f->map_bytes = file_bytes;
    if (parse_file(f, map, file_bytes, err) != 0) {
        rt_st_close(f);
        return -1;
    }
    return 0;
}

void rt_st_close(rt_st_file *f) {
    if (f->map) munmap(f->map, f->map_bytes);
    free(f->tensors);
    f->map = NULL;
    f->map_bytes = 0;
    f->data = NULL;
    f->data_bytes = 0;
    f->tensors = NULL;
    f->count = 0;
}

const rt_st_tensor *rt_st_find(const rt_st_file *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

/* fp16 bits (finite) to fp32: normal values rebias the exponent (15 -> 127); subnormals are mantissa * 2^-24,
 * exact in fp32. Both are computed and one selected. */
static inline float f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t normal = sign | ((uint32_t)(h & 0x7fff) + (112u << 10)) << 13;
    float sub = (float)(h & 0x3ff) * 0x1p-24f;
    uint32_t subnormal;
    memcpy(&subnormal, &sub, sizeof subnormal);
    uint32_t is_normal = 0u - (uint32_t)((h & 0x7c00) != 0); /* a mask, not a branch: GCC vectorizes the loop */
    return rt_bits_f32((normal & is_normal) | ((sign | subnormal) & ~is_normal));
}

/* Widens count values at src into out; returns whether any was NaN or infinite. Branch-free bodies with an
 * or-reduction, so each loop vectorizes; the caller looks for the offending element only when one exists. */
static int widen(rt_st_dtype dtype, const unsigned char *src, size_t count, float *out) {
    unsigned bad = 0;
    if (dtype == RT_ST_F32) {
        memcpy(out, src, count * 4);
        for (size_t i = 0; i < count; i++) {
            uint32_t u;
            memcpy(&u, out + i, 4);
            bad |= (u & 0x7f800000u) == 0x7f800000u;
        }
    } else if (dtype == RT_ST_BF16) {
        for (size_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = rt_bits_f32((uint32_t)h << 16);
            bad |= (h & 0x7f80u) == 0x7f80u;
        }
    } else {
        for (size_t i = 0; i < count; i++) {
            uint16_t h;
            memcpy(&h, src + 2 * i, 2);
            out[i] = f16_to_f32(h);
            bad |= (h & 0x7c00u) == 0x7c00u;
        }
    }
    return bad != 0;
}

/* Index of the first NaN or infinity among count values at src (count when none). */
static size_t first_nonfinite(rt_st_dtype dtype, const unsigned char *src, size_t count) {
    for (size_t i = 0; i < count; i++) {
        uint32_t u = 0;
        memcpy(&u, src + i * rt_st_dtype_size(dtype), rt_st_dtype_size(dtype));
        uint32_t exp = dtype == RT_ST_F32 ? 0x7f800000u : dtype == RT_ST_BF16 ? 0x7f80u : 0x7c00u;
        if ((u & exp) == exp) return i;
    }
    return count;
}

int rt_st_read_f32(const rt_st_file *f, const rt_st_tensor *t, size_t first, size_t count, float *out, rt_error *err) {
    char sn[80];
    if (first > t->numel || count > t->numel - first)
        return rt_fail(err, "%s: tensor '%s': elements [%zu, %zu + %zu) asked for, it holds %zu", f->path,
                       shown(t->name, sn), first, first, count, t->numel);
    const unsigned char *src = f->data + t->begin + first * rt_st_dtype_size(t->dtype);
    if (widen(t->dtype, src, count, out))
        return rt_fail(err, "%s: tensor '%s': element %zu is NaN or infinite, expected finite values", f->path,
                       shown(t->name, sn), first + first_nonfinite(t->dtype, src, count));
    return 0;
}
