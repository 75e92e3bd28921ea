/* llmc_model.c: llm.c's fp32 GPT-2 model file (gpt2_124M.bin), read and written.
 *
 * L = n_layers, C = channels, H = n_heads, V = vocab_size, Vp = padded_vocab_size, maxT = max_seq_len.
 * The file is the int32[256] header (see llmc_model.h) followed by exactly
 * sum(sizes) fp32 values, the 16 tensors back to back in file order:
 *   wte (Vp,C) wpe (maxT,C) ln1w (L,C) ln1b (L,C) qkvw (L,3C,C) qkvb (L,3C)
 *   attprojw (L,C,C) attprojb (L,C) ln2w (L,C) ln2b (L,C) fcw (L,4C,C)
 *   fcb (L,4C) fcprojw (L,C,4C) fcprojb (L,C) lnfw (C) lnfb (C)
 * A header is valid when every size is positive, C % H == 0 and Vp >= V.
 * A file shorter or longer than header + parameters is refused (it was cut
 * off, or its header does not describe it). Values are host-order (little-
 * endian on every machine llm.c and ringtrain run on).
 *
 * rt_llmc_write writes PATH.tmp, fsyncs and renames it: never a partial file.
 */
#include "llmc_model.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    if (hdr->channels % hdr->n_heads != 0)
        return rt_fail(err, "%s: bad llm.c model header: channels %d is not divisible by num_heads %d", path,
                       hdr->channels, hdr->n_heads);
    if (hdr->padded_vocab_size < hdr->vocab_size)
        return rt_fail(err, "%s: bad llm.c model header: padded_vocab_size %d is smaller than vocab_size %d", path,
                       hdr->padded_vocab_size, hdr->vocab_size);
    return 0;
}

int rt_llmc_read_header(const char *path, rt_llmc_header *hdr, rt_error *err) {
    memset(hdr, 0, sizeof *hdr);
    FILE *file = fopen(path, "rb");
    if (!file) return rt_fail(err, "%s: cannot open llm.c model file: %s", path, strerror(errno));
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
    hdr->max_seq_len = header[2];
    hdr->vocab_size = header[3];
    hdr->n_layers = header[4];
    hdr->n_heads = header[5];
    hdr->channels = header[6];
    hdr->padded_vocab_size = header[7];
    return validate_header(path, hdr, err);
}

int rt_llmc_read_params(const char *path, const rt_llmc_header *hdr, float *params, rt_error *err) {
    if (validate_header(path, hdr, err) != 0) return -1;
    size_t expected = total_params(hdr) * sizeof(float);
    FILE *file = fopen(path, "rb");
    if (!file) return rt_fail(err, "%s: cannot open llm.c model file: %s", path, strerror(errno));
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
        rc = rt_fail(err, "%s: write failed: %s", tmp_path, errno ? strerror(errno) : "short write");
    return rt_commit_tmp_file(file, tmp_path, path, rc, err);
}
