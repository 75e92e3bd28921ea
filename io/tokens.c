/* tokens.c: token files (ringtrain's own format and llm.c shards), opened by mmap and written atomically.
 *
 * Both formats start with 256 little-endian int32 header fields (1024 bytes)
 * and are told apart by the magic in field 0 (see tokens.h for the fields):
 *   ringtrain  20261122: version 1, vocab_size, bytes per token (2 or 4), n_tokens (64 bits in two fields)
 *   llm.c      20240520: version 1, n_tokens (int32); uint16 tokens; vocab 50257 (GPT-2) is assumed
 * Invariants after rt_tokens_open succeeds:
 *   - file size == 1024 + n_tokens * bytes_per_token exactly (a truncated or padded file is refused);
 *   - bytes_per_token == 2 implies vocab_size <= 65536 (every token fits);
 *   - tokens points at the first token inside the read-only mapping.
 * Whether every token is < vocab_size is NOT checked here (it would touch the
 * whole file at open); the loader checks each token it hands out, and the
 * trainer checks every token at start-up with rt_tokens_validate_range, each
 * rank over its share (rt_tokens_share), so the job reads each file once.
 *
 * rt_tokens_write picks uint16 when vocab_size <= 65536, else uint32, writes
 * PATH.tmp, fsyncs it and renames it over PATH. On any failure PATH.tmp is
 * removed and PATH is left as it was: never a partial file.
 */
#include "tokens.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define LLMC_SHARD_VERSION 1
#define LLMC_SHARD_VOCAB 50257
#define HEADER_FIELDS (RT_TOKENS_HEADER_BYTES / 4)

static int32_t read_le32(const unsigned char *bytes) {
    uint32_t v = (uint32_t)bytes[0] | (uint32_t)bytes[1] << 8 | (uint32_t)bytes[2] << 16 | (uint32_t)bytes[3] << 24;
    return (int32_t)v;
}

static void write_le32(unsigned char *bytes, uint32_t v) {
    bytes[0] = (unsigned char)(v & 0xff);
    bytes[1] = (unsigned char)((v >> 8) & 0xff);
    bytes[2] = (unsigned char)((v >> 16) & 0xff);
    bytes[3] = (unsigned char)((v >> 24) & 0xff);
}

/* Reads the header fields and fills tf's format fields; size checks come after. */
static int parse_header(rt_token_file *tf, const unsigned char *header, rt_error *err) {
    int32_t magic = read_le32(header), version = read_le32(header + 4);
    if (magic == RT_TOKENS_MAGIC) {
        if (version != RT_TOKENS_VERSION)
            return rt_fail(err, "%s: unsupported ringtrain token file version %d, expected %d", tf->path, version,
                           RT_TOKENS_VERSION);
        tf->vocab_size = read_le32(header + 8);
        tf->bytes_per_token = read_le32(header + 12);
        uint64_t n_low = (uint32_t)read_le32(header + 16), n_high = (uint32_t)read_le32(header + 20);
        tf->n_tokens = (size_t)(n_low | n_high << 32);
        if (tf->vocab_size <= 0)
            return rt_fail(err, "%s: bad header: vocab_size %d, expected > 0", tf->path, tf->vocab_size);
        if (tf->bytes_per_token != 2 && tf->bytes_per_token != 4)
            return rt_fail(err, "%s: bad header: %d bytes per token, expected 2 or 4", tf->path, tf->bytes_per_token);
        if (tf->bytes_per_token == 2 && tf->vocab_size > 65536)
            return rt_fail(err, "%s: bad header: vocab_size %d does not fit 2-byte tokens (at most 65536)", tf->path,
                           tf->vocab_size);
        tf->is_llmc = 0;
        tf->has_tokenizer = read_le32(header + 24) == 1;
        tf->separator_id = (int64_t)(uint32_t)read_le32(header + 28) - 1;
        const int32_t stands = read_le32(header + 40);
        tf->separator_starts_document = stands == 2 ? 1 : stands == 1 ? 0 : -1;
        tf->tokenizer_hash = (uint64_t)(uint32_t)read_le32(header + 32) | (uint64_t)(uint32_t)read_le32(header + 36)
                                                                              << 32;
        /* strnlen bounds the copy: a corrupt header without a NUL gives a truncated path, not an overread */
        const char *recorded = (const char *)header + RT_TOKENS_TOKENIZER_PATH_OFFSET;
        size_t len = strnlen(recorded, RT_TOKENS_TOKENIZER_PATH_MAX - 1);
        memcpy(tf->tokenizer_path, recorded, len);
        tf->tokenizer_path[len] = '\0';
        return 0;
    }
    if (magic == RT_LLMC_SHARD_MAGIC) {
        if (version != LLMC_SHARD_VERSION)
            return rt_fail(err, "%s: unsupported llm.c shard version %d, expected %d", tf->path, version,
                           LLMC_SHARD_VERSION);
        int32_t n_tokens = read_le32(header + 8);
        if (n_tokens < 0)
            return rt_fail(err, "%s: bad llm.c shard header: %d tokens, expected >= 0", tf->path, n_tokens);
        tf->n_tokens = (size_t)n_tokens;
        tf->vocab_size = LLMC_SHARD_VOCAB;
        tf->bytes_per_token = 2;
        tf->is_llmc = 1;
        tf->separator_id = -1;
        tf->separator_starts_document = -1;
        return 0;
    }
    return rt_fail(err, "%s: not a token file: magic %d, expected %d (ringtrain tokens) or %d (llm.c shard)", tf->path,
                   magic, RT_TOKENS_MAGIC, RT_LLMC_SHARD_MAGIC);
}

int rt_tokens_open(rt_token_file *tf, const char *path, rt_error *err) {
    memset(tf, 0, sizeof *tf);
    if (strlen(path) >= sizeof tf->path)
        return rt_fail(err, "%s: path longer than %zu bytes", path, sizeof tf->path - 1);
    strcpy(tf->path, path);

    /* O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused as not regular just below. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return rt_fail(err, "%s: cannot open token file: %s", path, strerror(errno));
    struct stat st;
    if (fstat(fd, &st) != 0) {
        int saved = errno;
        close(fd);
        return rt_fail(err, "%s: cannot stat token file: %s", path, strerror(saved));
    }
    if (!S_ISREG(st.st_mode)) {
        close(fd);
        return rt_fail(err, "%s: not a regular file (a FIFO, device or directory), expected a token file", path);
    }
    size_t file_bytes = (size_t)st.st_size;
    if (file_bytes == 0) {
        close(fd);
        return rt_fail(err, "%s: empty file, expected a token file (%d-byte header, then tokens)", path,
                       RT_TOKENS_HEADER_BYTES);
    }
    if (file_bytes < RT_TOKENS_HEADER_BYTES) {
        close(fd);
        return rt_fail(err, "%s: truncated: %zu bytes, shorter than the %d-byte token file header", path, file_bytes,
                       RT_TOKENS_HEADER_BYTES);
    }
    void *map = mmap(NULL, file_bytes, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd); /* the mapping keeps the file alive */
    if (map == MAP_FAILED) return rt_fail(err, "%s: cannot mmap token file: %s", path, strerror(map_errno));
    tf->map = map;
    tf->map_bytes = file_bytes;

    if (parse_header(tf, map, err) != 0) {
        rt_tokens_close(tf);
        return -1;
    }
    size_t payload = file_bytes - RT_TOKENS_HEADER_BYTES;
    size_t bytes = (size_t)tf->bytes_per_token;
    if (tf->n_tokens > payload / bytes) {
        size_t n_tokens = tf->n_tokens;
        rt_tokens_close(tf);
        /* In long double: a corrupt count times the token size may not fit size_t. */
        return rt_fail(err, "%s: truncated: header says %zu tokens (%.0Lf bytes) but the file holds %zu bytes", path,
                       n_tokens, (long double)n_tokens * (long double)bytes, payload);
    }
    if (tf->n_tokens * bytes != payload) {
        size_t n_tokens = tf->n_tokens;
        rt_tokens_close(tf);
        return rt_fail(err, "%s: header says %zu tokens (%zu bytes) but the file holds %zu bytes after the header",
                       path, n_tokens, n_tokens * bytes, payload);
    }
    tf->tokens = (const unsigned char *)map + RT_TOKENS_HEADER_BYTES;
    return 0;
}

void rt_tokens_close(rt_token_file *tf) {
    if (tf->map) munmap(tf->map, tf->map_bytes);
    tf->map = NULL;
    tf->map_bytes = 0;
    tf->tokens = NULL;
}

/* fwrite that reports the failing path and reason. */
static int write_all(FILE *file, const void *data, size_t bytes, const char *path, rt_error *err) {
    if (bytes && fwrite(data, 1, bytes, file) != bytes)
        return rt_fail(err, "%s: write failed: %s", path, errno ? strerror(errno) : "short write");
    return 0;
}

int rt_tokens_write(const char *path, const uint32_t *tokens, size_t n_tokens, int vocab_size, rt_error *err) {
    return rt_tokens_write_recorded(path, tokens, n_tokens, vocab_size, NULL, err);
}

int rt_tokens_tokenizer(const rt_token_file *tf, char *path, size_t cap, uint64_t *hash) {
    if (!tf->has_tokenizer) return 0;
    if (cap) snprintf(path, cap, "%s", tf->tokenizer_path);
    if (hash) *hash = tf->tokenizer_hash;
    return 1;
}

int rt_tokens_write_recorded(const char *path, const uint32_t *tokens, size_t n_tokens, int vocab_size,
                             const rt_tokens_tokenizer_record *record, rt_error *err) {
    if (record && strlen(record->path) >= RT_TOKENS_TOKENIZER_PATH_MAX)
        return rt_fail(err, "%s: tokenizer path %s is longer than the header's %d bytes", path, record->path,
                       RT_TOKENS_TOKENIZER_PATH_MAX - 1);
    if (vocab_size <= 0)
        return rt_fail(err, "%s: cannot write tokens with vocab_size %d, expected > 0", path, vocab_size);
    for (size_t i = 0; i < n_tokens; i++)
        if (tokens[i] >= (uint32_t)vocab_size)
            return rt_fail(err, "%s: token %zu is %u, outside the vocabulary of %d", path, i, tokens[i], vocab_size);
    int bytes_per_token = vocab_size <= 65536 ? 2 : 4;

    char tmp_path[1100];
    if ((size_t)snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path) >= sizeof tmp_path)
        return rt_fail(err, "%s: path too long", path);
    errno = 0;
    FILE *file = fopen(tmp_path, "wb");
    if (!file) return rt_fail(err, "%s: cannot create: %s", tmp_path, strerror(errno));

    unsigned char header[RT_TOKENS_HEADER_BYTES] = {0};
    uint32_t fields[HEADER_FIELDS] = {RT_TOKENS_MAGIC,
                                      RT_TOKENS_VERSION,
                                      (uint32_t)vocab_size,
                                      (uint32_t)bytes_per_token,
                                      (uint32_t)((uint64_t)n_tokens & 0xffffffffu),
                                      (uint32_t)((uint64_t)n_tokens >> 32)};
    if (record) {
        fields[6] = 1;
        fields[7] = (uint32_t)(record->separator_id + 1);
        fields[8] = (uint32_t)(record->hash & 0xffffffffu);
        fields[9] = (uint32_t)(record->hash >> 32);
        if (record->separator_id >= 0) fields[10] = record->separator_starts_document ? 2 : 1;
    }
    for (int f = 0; f < HEADER_FIELDS; f++)
        write_le32(header + 4 * f, fields[f]);
    if (record) memcpy(header + RT_TOKENS_TOKENIZER_PATH_OFFSET, record->path, strlen(record->path));
    int rc = write_all(file, header, sizeof header, tmp_path, err);

    /* Tokens go out in blocks, narrowed to uint16 where the vocabulary allows. */
    enum { BLOCK = 1 << 16 };
    if (rc == 0 && bytes_per_token == 4) {
        rc = write_all(file, tokens, n_tokens * sizeof *tokens, tmp_path, err);
    } else if (rc == 0) {
        uint16_t *block = malloc_check(BLOCK * sizeof *block);
        for (size_t start = 0; rc == 0 && start < n_tokens; start += BLOCK) {
            size_t count = n_tokens - start < BLOCK ? n_tokens - start : BLOCK;
            for (size_t i = 0; i < count; i++)
                block[i] = (uint16_t)tokens[start + i];
            rc = write_all(file, block, count * sizeof *block, tmp_path, err);
        }
        free(block);
    }
    return rt_commit_tmp_file(file, tmp_path, path, rc, err);
}

size_t rt_byte_decode(uint32_t token, char *out, size_t out_len) {
    if (out_len == 0 || token >= RT_BYTE_VOCAB) return 0;
    out[0] = (char)(unsigned char)token;
    return 1;
}

/* ------------------------------------------------------------------ range checks */

void rt_tokens_share(size_t n, int part, int parts, size_t *first, size_t *count) {
    const size_t p = (size_t)part, base = n / (size_t)parts, longer = n % (size_t)parts;
    *first = p * base + (p < longer ? p : longer); /* <= n: no overflow */
    *count = base + (p < longer);
}

int rt_tokens_validate_range(const rt_token_file *tf, size_t first, size_t count, rt_error *err) {
    if (first > tf->n_tokens) first = tf->n_tokens;
    if (count > tf->n_tokens - first) count = tf->n_tokens - first;
    const uint32_t vocab = (uint32_t)tf->vocab_size;
    const size_t end = first + count;
    size_t first_bad = end;
#pragma omp parallel for schedule(static) reduction(min : first_bad)
    for (size_t i = first; i < end; i++)
        if (rt_tokens_get(tf, i) >= vocab && i < first_bad) first_bad = i;
    if (first_bad < end)
        return rt_fail(err, "%s: token %zu has id %u, not below the file's vocab_size %d", tf->path, first_bad,
                       rt_tokens_get(tf, first_bad), tf->vocab_size);
    return 0;
}

int rt_tokens_validate(const rt_token_file *tf, rt_error *err) {
    return rt_tokens_validate_range(tf, 0, tf->n_tokens, err);
}
