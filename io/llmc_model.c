/* llmc_model.c: llm.c's fp32 GPT-2 model file (gpt2_124M.bin), read and written.
 *
 * L = n_layers, C = channels, H = n_heads, V = vocab_size, Vp = padded_vocab_size, maxT = max_seq_len.
 * The file is the int32[256] header (see llmc_model.h) followed by exactly
 * sum(sizes) fp32 values, the 16 tensors back to back in file order:
 *   wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C)
 *   attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C)
 *   fcb (L,4C) fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C)
 * A header is valid when every size is positive, C % H == 0, Vp >= V and the
 * parameter count fits size_t. rt_llmc_read_header also checks the header
 * against the file's size, so nobody sizes memory from dimensions the file
 * does not hold: a file shorter or longer than header + parameters is refused
 * (it was cut off, or its header does not describe it). Only regular files are
 * read (a FIFO is refused, not waited on). rt_llmc_read_params refuses NaN or
 * infinite weights. Values are host-order (little-endian on every machine
 * llm.c and ringtrain run on).
 *
 * rt_llmc_write writes PATH.tmp, fsyncs and renames it: never a partial file. A failed write, flush,
 * fsync or close removes PATH.tmp, leaves PATH as it was and names PATH (`ringtrain export` writes here).
 */
#include "llmc_model.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define HEADER_FIELDS 256

static const char *const tensor_names[RT_LLMC_N_TENSORS] = {"wte",      "wpe",      "ln1w", "ln1b", "qkvw", "qkvb",
                                                            "attprojw", "attprojb", "ln2w", "ln2b", "fcw",  "fcb",
                                                            "fcprojw",  "fcprojb",  "lnfw", "lnfb"};

const char *rt_llmc_tensor_name(int index) {
    return index >= 0 && index < RT_LLMC_N_TENSORS ? tensor_names[index] : NULL;
}

void rt_llmc_tensor_sizes(const rt_llmc_header *hdr, size_t sizes[RT_LLMC_N_TENSORS]) {
    size_t Vp = (size_t)hdr->padded_vocab_size, C = (size_t)hdr->channels;
    size_t maxT = (size_t)hdr->max_seq_len, L = (size_t)hdr->n_layers;
    sizes[0] = Vp * C;         /* wte */
    sizes[1] = maxT * C;       /* wpe */
    sizes[2] = L * C;          /* ln1w */
    sizes[3] = L * C;          /* ln1b */
    sizes[4] = L * 3 * C * C;  /* qkvw */
    sizes[5] = L * 3 * C;      /* qkvb */
    sizes[6] = L * C * C;      /* attprojw */
    sizes[7] = L * C;          /* attprojb */
    sizes[8] = L * C;          /* ln2w */
    sizes[9] = L * C;          /* ln2b */
    sizes[10] = L * 4 * C * C; /* fcw */
    sizes[11] = L * 4 * C;     /* fcb */
    sizes[12] = L * C * 4 * C; /* fcprojw */
    sizes[13] = L * C;         /* fcprojb */
    sizes[14] = C;             /* lnfw */
    sizes[15] = C;             /* lnfb */
}

/* Bytes of all parameters, or -1 when that does not fit size_t (a corrupt header). */
static int param_bytes_checked(const rt_llmc_header *hdr, size_t *bytes) {
    const size_t Vp = (size_t)hdr->padded_vocab_size, C = (size_t)hdr->channels;
    const size_t maxT = (size_t)hdr->max_seq_len, L = (size_t)hdr->n_layers;
    /* Per layer: ln1 w+b, qkvw, qkvb, attproj w+b, ln2 w+b, fcw, fcb, fcproj w+b = 12*C*C + 13*C. */
    size_t per_layer = 0, layers = 0, embed = 0, pos = 0, total = 0;
    if (__builtin_mul_overflow(C, C, &per_layer) || __builtin_mul_overflow(per_layer, (size_t)12, &per_layer) ||
        __builtin_add_overflow(per_layer, 13 * C, &per_layer) || __builtin_mul_overflow(per_layer, L, &layers) ||
        __builtin_mul_overflow(Vp, C, &embed) || __builtin_mul_overflow(maxT, C, &pos) ||
        __builtin_add_overflow(embed, pos, &total) || __builtin_add_overflow(total, layers, &total) ||
        __builtin_add_overflow(total, 2 * C, &total) || __builtin_mul_overflow(total, sizeof(float), bytes))
        return -1;
    return 0;
}

/* The same count in long double, for messages about headers whose count overflows. */
static long double param_bytes_approx(const rt_llmc_header *hdr) {
    long double Vp = hdr->padded_vocab_size, C = hdr->channels, maxT = hdr->max_seq_len, L = hdr->n_layers;
    return ((Vp + maxT) * C + L * (12 * C * C + 13 * C) + 2 * C) * (long double)sizeof(float);
}

static size_t total_params(const rt_llmc_header *hdr) {
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(hdr, sizes);
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++)
        total += sizes[i];
    return total;
}

static int validate_header(const char *path, const rt_llmc_header *hdr, rt_error *err) {
    const struct {
        const char *name;
        int value;
    } fields[] = {{"max_seq_len", hdr->max_seq_len}, {"vocab_size", hdr->vocab_size},
                  {"num_layers", hdr->n_layers},     {"num_heads", hdr->n_heads},
                  {"channels", hdr->channels},       {"padded_vocab_size", hdr->padded_vocab_size}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i].value <= 0)
            return rt_fail(err, "%s: bad llm.c model header: %s is %d, expected > 0", path, fields[i].name,
                           fields[i].value);
    if (hdr->channels > INT32_MAX / 4) /* d_ff = 4 * channels must fit an int */
        return rt_fail(err, "%s: bad llm.c model header: channels is %d, expected at most %d", path, hdr->channels,
                       INT32_MAX / 4);
    if (hdr->channels % hdr->n_heads != 0)
        return rt_fail(err, "%s: bad llm.c model header: channels %d is not divisible by num_heads %d", path,
                       hdr->channels, hdr->n_heads);
    if (hdr->padded_vocab_size < hdr->vocab_size)
        return rt_fail(err, "%s: bad llm.c model header: padded_vocab_size %d is smaller than vocab_size %d", path,
                       hdr->padded_vocab_size, hdr->vocab_size);
    size_t bytes = 0;
    if (param_bytes_checked(hdr, &bytes) != 0)
        return rt_fail(err,
                       "%s: bad llm.c model header: max_seq_len %d, padded_vocab_size %d, num_layers %d, channels %d "
                       "describe %.0Lf bytes of parameters, more than any file can hold",
                       path, hdr->max_seq_len, hdr->padded_vocab_size, hdr->n_layers, hdr->channels,
                       param_bytes_approx(hdr));
    return 0;
}

/* Opens path for reading, refusing anything but a regular file (a FIFO would block a plain open forever). */
static FILE *open_regular(const char *path, off_t *file_bytes, rt_error *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        rt_fail(err, "%s: cannot open llm.c model file: %s", path, strerror(errno));
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        rt_fail(err, "%s: cannot stat llm.c model file: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        rt_fail(err, "%s: not a regular file (a FIFO, device or directory), expected an llm.c model file", path);
        close(fd);
        return NULL;
    }
    FILE *file = fdopen(fd, "rb");
    if (!file) {
        rt_fail(err, "%s: cannot open llm.c model file: %s", path, strerror(errno));
        close(fd);
        return NULL;
    }
    *file_bytes = st.st_size;
    return file;
}

int rt_llmc_read_header(const char *path, rt_llmc_header *hdr, rt_error *err) {
    memset(hdr, 0, sizeof *hdr);
    off_t file_bytes = 0;
    FILE *file = open_regular(path, &file_bytes, err);
    if (!file) return -1;
    int32_t header[HEADER_FIELDS];
    size_t got = fread(header, 1, sizeof header, file);
    fclose(file);
    if (got != sizeof header)
        return rt_fail(err, "%s: truncated: expected a %zu-byte llm.c model header, found %zu bytes", path,
                       sizeof header, got);
    if (header[0] != RT_LLMC_MODEL_MAGIC)
        return rt_fail(err, "%s: not an llm.c model file: magic %d, expected %d", path, header[0], RT_LLMC_MODEL_MAGIC);
    if (header[1] != RT_LLMC_MODEL_VERSION)
        return rt_fail(err, "%s: unsupported llm.c model version %d, expected %d (fp32 parameters)", path, header[1],
                       RT_LLMC_MODEL_VERSION);
    rt_llmc_header read = {.max_seq_len = header[2],
                           .vocab_size = header[3],
                           .n_layers = header[4],
                           .n_heads = header[5],
                           .channels = header[6],
                           .padded_vocab_size = header[7]};
    if (validate_header(path, &read, err) != 0) return -1;
    /* The dimensions must describe this file before anyone sizes memory from them. */
    size_t expected = total_params(&read) * sizeof(float);
    size_t found = (size_t)file_bytes - sizeof header;
    if (found != expected)
        return rt_fail(err,
                       "%s: %s: expected %zu bytes of parameters, found %zu (the header's max_seq_len %d, "
                       "padded_vocab_size %d, num_layers %d, channels %d do not describe this file)",
                       path, found < expected ? "truncated" : "too long", expected, found, read.max_seq_len,
                       read.padded_vocab_size, read.n_layers, read.channels);
    *hdr = read;
    return 0;
}

int rt_llmc_read_params(const char *path, const rt_llmc_header *hdr, float *params, rt_error *err) {
    if (validate_header(path, hdr, err) != 0) return -1;
    size_t expected = total_params(hdr) * sizeof(float);
    off_t file_bytes = 0;
    FILE *file = open_regular(path, &file_bytes, err);
    if (!file) return -1;
    if (fseek(file, (long)(HEADER_FIELDS * sizeof(int32_t)), SEEK_SET) != 0) {
        int saved = errno;
        fclose(file);
        return rt_fail(err, "%s: cannot seek past the header: %s", path, strerror(saved));
    }
    size_t got = fread(params, 1, expected, file);
    int read_error = ferror(file);
    int extra = got == expected && fgetc(file) != EOF;
    fclose(file);
    if (read_error) return rt_fail(err, "%s: read error after %zu bytes of parameters", path, got);
    if (got != expected)
        return rt_fail(err, "%s: truncated: expected %zu bytes of parameters, found %zu", path, expected, got);
    if (extra)
        return rt_fail(err,
                       "%s: expected %zu bytes of parameters after the header, found more: the header does not "
                       "describe this file",
                       path, expected);
    /* A NaN or infinite weight poisons every forward pass: refuse it here, naming the tensor. */
    size_t sizes[RT_LLMC_N_TENSORS], start = 0;
    rt_llmc_tensor_sizes(hdr, sizes);
    for (int t = 0; t < RT_LLMC_N_TENSORS; t++) {
        for (size_t i = 0; i < sizes[t]; i++)
            if (!isfinite(params[start + i]))
                return rt_fail(err, "%s: tensor %s element %zu is %g, expected a finite weight", path, tensor_names[t],
                               i, (double)params[start + i]);
        start += sizes[t];
    }
    return 0;
}

int rt_llmc_write(const char *path, const rt_llmc_header *hdr, const float *params, rt_error *err) {
    if (validate_header(path, hdr, err) != 0) return -1;
    char tmp_path[1100];
    if ((size_t)snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path) >= sizeof tmp_path)
        return rt_fail(err, "%s: path too long", path);
    FILE *file = fopen(tmp_path, "wb");
    if (!file) return rt_fail(err, "%s: cannot create: %s", tmp_path, strerror(errno));

    int32_t header[HEADER_FIELDS] = {RT_LLMC_MODEL_MAGIC, RT_LLMC_MODEL_VERSION, hdr->max_seq_len,
                                     hdr->vocab_size,     hdr->n_layers,         hdr->n_heads,
                                     hdr->channels,       hdr->padded_vocab_size};
    size_t param_bytes = total_params(hdr) * sizeof(float);
    int rc = 0;
    errno = 0;
    if (fwrite(header, 1, sizeof header, file) != sizeof header ||
        fwrite(params, 1, param_bytes, file) != param_bytes || fflush(file) != 0)
        rc = rt_fail(err, "%s: write failed: %s", path, errno ? strerror(errno) : "short write (a full disk?)");
    return rt_commit_tmp_file(file, tmp_path, path, rc, err);
}
