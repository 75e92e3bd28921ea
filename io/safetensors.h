/* safetensors.h: Hugging Face's safetensors files, read (checked, converted to fp32) and written. */
#ifndef RT_SAFETENSORS_H
#define RT_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "runtime/core/common.h"

/*
 * A safetensors file: an unsigned little-endian 64-bit header length n, n bytes
 * of UTF-8 JSON, then the data section. The JSON maps each tensor name to
 * {"dtype": "F32"|"F16"|"BF16"|..., "shape": [d0, ...], "data_offsets": [begin, end]}
 * (byte offsets into the data section, end exclusive, little-endian values) and
 * may hold "__metadata__": {string: string}.
 *
 * The reader checks every field before it is used: the header length within the
 * file and at most 100,000,000 bytes (the Python library's bound), the header
 * UTF-8 JSON followed by nothing but whitespace padding, an object of objects,
 * known dtypes only (F32, F16, BF16: other dtypes are refused naming the tensor),
 * shapes of at most RT_ST_MAX_DIMS integers in [0, 2^53] whose product times the
 * dtype size equals end - begin, offsets that, sorted, tile the data section
 * without gaps or overlaps, names unique and shorter than RT_ST_NAME_LEN,
 * "__metadata__" values strings. Keys of a tensor's object other than the three
 * are ignored, as the format allows. Errors name the file, the tensor and the
 * field, on one line (control characters in names shown as '?').
 *
 * Reader and writer copy values as host words: the host must be little-endian,
 * as the values are (checked at compile time).
 */

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors values are little-endian; the reader and writer copy them as host words"
#endif

#define RT_ST_MAX_DIMS 8
#define RT_ST_NAME_LEN 256

typedef enum { RT_ST_F32 = 0, RT_ST_F16, RT_ST_BF16 } rt_st_dtype;

typedef struct {
    char name[RT_ST_NAME_LEN];
    rt_st_dtype dtype;
    int ndim;
    int64_t shape[RT_ST_MAX_DIMS];
    size_t numel;
    size_t begin, end; /* bytes, relative to the data section */
} rt_st_tensor;

typedef struct {
    char path[1024];
    void *map; /* the whole file, mapped read-only */
    size_t map_bytes;
    const unsigned char *data; /* the data section */
    size_t data_bytes;
    rt_st_tensor *tensors; /* in data order */
    int count;
} rt_st_file;

/* Bytes per element of a dtype (4, 2, 2). */
size_t rt_st_dtype_size(rt_st_dtype dtype);
/* "F32", "F16", "BF16". */
const char *rt_st_dtype_name(rt_st_dtype dtype);

/* Maps the file and checks its header (above). On failure nothing stays open. */
int rt_st_open(rt_st_file *f, const char *path, rt_error *err);
/* Same, from bytes in memory that the caller keeps alive until rt_st_close (the fuzz target); origin names
 * them in errors. */
int rt_st_open_bytes(rt_st_file *f, const void *bytes, size_t n_bytes, const char *origin, rt_error *err);
void rt_st_close(rt_st_file *f);

/* The tensor of that name, or NULL. */
const rt_st_tensor *rt_st_find(const rt_st_file *f, const char *name);

/* Elements [first, first + count) of t (row-major) as fp32 into out: bf16 and fp16 widen exactly. A NaN or
 * infinite value is an error naming the file, the tensor and the element's index. */
int rt_st_read_f32(const rt_st_file *f, const rt_st_tensor *t, size_t first, size_t count, float *out, rt_error *err);

/* fp32 -> bf16, round to nearest even (NaN stays NaN); fp32 -> fp16 likewise (overflow to infinity). */
uint16_t rt_st_f32_to_bf16(float x);
uint16_t rt_st_f32_to_f16(float x);

/*
 * Writer: the tensors are declared up front (so the header can be written
 * first), then their values arrive in declaration order as fp32, in pieces of
 * any size, converted to the declared dtype. Writes to path directly (the
 * caller owns atomicity: export writes a directory DIR.tmp and renames it).
 * rt_st_writer_finish fails unless every declared element arrived; any failure
 * removes the file.
 */
typedef struct {
    const char *name;
    rt_st_dtype dtype;
    int ndim;
    int64_t shape[RT_ST_MAX_DIMS];
} rt_st_decl;

typedef struct rt_st_writer rt_st_writer;

/* metadata: NULL or n_metadata key/value string pairs for "__metadata__" (e.g. {"format", "pt"}). */
rt_st_writer *rt_st_writer_open(const char *path, const rt_st_decl *decls, int n_decls,
                                const char *const (*metadata)[2], int n_metadata, rt_error *err);
/* The next count values of the current tensor (moving on to the next tensor when one is complete). A value
 * that is not finite in the tensor's dtype (NaN, infinity, fp16 beyond 65504 after rounding) or a value past
 * the declared ones fails naming the tensor and the element, and removes the file; w is then still freed by
 * rt_st_writer_finish (which fails) or rt_st_writer_abort. */
int rt_st_writer_put(rt_st_writer *w, const float *values, size_t count, rt_error *err);
/* Checks completeness, flushes and closes; frees w in every case. */
int rt_st_writer_finish(rt_st_writer *w, rt_error *err);
/* Closes and removes the file; frees w. */
void rt_st_writer_abort(rt_st_writer *w);

#endif
