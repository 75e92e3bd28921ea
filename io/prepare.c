/* prepare.c: `ringtrain prepare`: byte-level tokens from text files, and llm.c shards rewritten as token files.
 *
 * Text: all inputs are read into one byte buffer first (in order, '\n'
 * between files where the bytes so far do not end with one), so a missing or
 * unreadable input fails before anything is written. The split is by bytes:
 * val = the last floor(val_fraction * total) bytes, train = the rest.
 *
 * Outputs are staged: each is written whole as PATH.tmp (rt_tokens_write:
 * checked writes, fsync), and only when every output of the command is
 * complete are they renamed into place. A failure removes the staged files,
 * so a failed command deletes or truncates nothing a user already has, and
 * its message names the user's path, not the staged one.
 */
#include "prepare.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "bpe_tokenizer.h"
#include "tokens.h"

typedef struct {
    unsigned char *bytes;
    size_t len, cap;
} byte_buffer;

static void buffer_reserve(byte_buffer *buf, size_t extra) {
    if (buf->len + extra <= buf->cap) return;
    size_t cap = buf->cap ? buf->cap : 1 << 16;
    while (cap < buf->len + extra)
        cap *= 2;
    unsigned char *grown = realloc(buf->bytes, cap);
    if (!grown) rt_fatal("out of host memory reading text inputs (%zu bytes)", cap);
    buf->bytes = grown;
    buf->cap = cap;
}

static int append_file(byte_buffer *buf, const char *path, rt_error *err) {
    FILE *file = fopen(path, "rb");
    if (!file) return rt_fail(err, "%s: cannot open input: %s", path, strerror(errno));
    if (buf->len > 0 && buf->bytes[buf->len - 1] != '\n') {
        buffer_reserve(buf, 1);
        buf->bytes[buf->len++] = '\n';
    }
    for (;;) {
        buffer_reserve(buf, 1 << 16);
        size_t got = fread(buf->bytes + buf->len, 1, buf->cap - buf->len, file);
        buf->len += got;
        if (got == 0) break;
    }
    int failed = ferror(file);
    int saved = errno;
    fclose(file);
    if (failed) return rt_fail(err, "%s: cannot read input: %s", path, strerror(saved));
    return 0;
}

typedef struct {
    const char *path;             /* the user's */
    char staged[RT_TMP_PATH_LEN]; /* PATH.tmp */
} staged_output;

/* Refuses an output that cannot be staged or renamed into place, before anything is written. */
static int stage_output(staged_output *out, const char *path, rt_error *err) {
    struct stat st;
    out->path = path;
    if ((size_t)snprintf(out->staged, sizeof out->staged, "%s.tmp", path) >= sizeof out->staged)
        return rt_fail(err, "%s: path too long", path);
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return rt_fail(err, "%s: is a directory, expected a file", path);
    return 0;
}

/* rt_tokens_write names the file it wrote (STAGED, or its own STAGED.tmp); the user gave PATH. */
static void name_user_path(rt_error *err, const staged_output *out) {
    size_t n = strlen(out->staged);
    if (strncmp(err->msg, out->staged, n) != 0) return;
    const char *rest = err->msg + n;
    if (strncmp(rest, ".tmp", 4) == 0) rest += 4;
    if (rest[0] != ':') return;
    char msg[sizeof err->msg];
    snprintf(msg, sizeof msg, "%s%s", out->path, rest);
    memcpy(err->msg, msg, sizeof msg);
}

/* When rc is 0, renames every staged output into place; otherwise (or when a rename fails) removes them. */
static int commit_outputs(staged_output *outs, int n, int rc, rt_error *err) {
    for (int i = 0; i < n && rc == 0; i++)
        if (rename(outs[i].staged, outs[i].path) != 0)
            rc = rt_fail(err, "%s: cannot rename %s into place: %s", outs[i].path, outs[i].staged, strerror(errno));
    for (int i = 0; i < n && rc != 0; i++)
        unlink(outs[i].staged);
    return rc;
}

/* Widens bytes to tokens and writes them. */
static int write_bytes_as_tokens(const char *path, const unsigned char *bytes, size_t n, rt_error *err) {
    uint32_t *tokens = malloc_check(n * sizeof *tokens);
    for (size_t i = 0; i < n; i++)
        tokens[i] = bytes[i];
    int rc = rt_tokens_write(path, tokens, n, RT_BYTE_VOCAB, err);
    free(tokens);
    return rc;
}

/* Checks the common arguments of both text paths. */
static int check_split_args(int n_inputs, const char *out_train, const char *out_val, double val_fraction,
                            rt_error *err) {
    if (n_inputs <= 0) return rt_fail(err, "prepare: no input files given");
    if (out_val && !(val_fraction > 0.0 && val_fraction < 1.0))
        return rt_fail(err, "prepare: val_fraction %g, expected a value in (0, 1)", val_fraction);
    if (out_val && strcmp(out_train, out_val) == 0)
        return rt_fail(err, "prepare: train and val outputs are the same file %s", out_train);
    return 0;
}

int rt_prepare_text_counted(const char *const *inputs, int n_inputs, const char *out_train, const char *out_val,
                            double val_fraction, size_t *n_train, size_t *n_val, rt_error *err) {
    if (n_train) *n_train = 0;
    if (n_val) *n_val = 0;
    if (check_split_args(n_inputs, out_train, out_val, val_fraction, err)) return -1;

    byte_buffer text = {0};
    for (int i = 0; i < n_inputs; i++) {
        if (append_file(&text, inputs[i], err) != 0) {
            free(text.bytes);
            return -1;
        }
    }
    size_t total = text.len, val_bytes = 0;
    if (out_val) {
        val_bytes = (size_t)(val_fraction * (double)total);
        if (val_bytes > total) val_bytes = total;
    }
    size_t train_bytes = total - val_bytes;
    int rc = 0;
    if (train_bytes == 0 && !out_val) {
        rc = rt_fail(err, "prepare: the %d input file(s) hold no bytes; nothing to write to %s", n_inputs, out_train);
    } else if (out_val && (train_bytes == 0 || val_bytes == 0)) {
        rc = rt_fail(err,
                     "prepare: val_fraction %g of %zu bytes gives %zu training and %zu validation bytes; both must be "
                     "non-empty",
                     val_fraction, total, train_bytes, val_bytes);
    }
    staged_output outs[2];
    int n_outs = 0;
    if (rc == 0 && (rc = stage_output(&outs[0], out_train, err)) == 0) n_outs = 1;
    if (rc == 0 && out_val && (rc = stage_output(&outs[1], out_val, err)) == 0) n_outs = 2;
    if (rc == 0 && (rc = write_bytes_as_tokens(outs[0].staged, text.bytes, train_bytes, err)) != 0)
        name_user_path(err, &outs[0]);
    if (rc == 0 && out_val &&
        (rc = write_bytes_as_tokens(outs[1].staged, text.bytes + train_bytes, val_bytes, err)) != 0)
        name_user_path(err, &outs[1]);
    rc = commit_outputs(outs, n_outs, rc, err);
    free(text.bytes);
    if (rc == 0) {
        if (n_train) *n_train = train_bytes;
        if (n_val) *n_val = val_bytes;
    }
    return rc;
}

int rt_prepare_text(const char *const *inputs, int n_inputs, const char *out_train, const char *out_val,
                    double val_fraction, rt_error *err) {
    return rt_prepare_text_counted(inputs, n_inputs, out_train, out_val, val_fraction, NULL, NULL, err);
}

typedef struct {
    FILE *out;
    uint64_t done_before; /* bytes of earlier files */
    double total_mb;
    struct timespec last;
} progress_state;

static void report_progress(void *ctx, uint64_t bytes) {
    progress_state *p = ctx;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if ((double)(now.tv_sec - p->last.tv_sec) + 1e-9 * (double)(now.tv_nsec - p->last.tv_nsec) < 5.0) return;
    p->last = now;
    fprintf(p->out, "prepare: %.1f of %.1f MB tokenized\n", (double)bytes / 1e6, p->total_mb);
    fflush(p->out);
}

/* The end-of-document id: the one named, else <|endoftext|>, else <|end_of_text|> (special added tokens). */
static int find_separator(const rt_bpe_tokenizer *tok, const char *tokenizer_path, const char *separator, uint32_t *id,
                          rt_error *err) {
    int64_t found = -1;
    if (separator) {
        found = rt_bpe_token_id(tok, separator);
        if (found < 0)
            return rt_fail(err, "%s: --document-separator '%s' is neither an added token nor in the vocabulary",
                           tokenizer_path, separator);
    } else if ((found = rt_bpe_special_id(tok, "<|endoftext|>")) < 0 &&
               (found = rt_bpe_special_id(tok, "<|end_of_text|>")) < 0) {
        return rt_fail(err,
                       "%s: no special token <|endoftext|> or <|end_of_text|> to end documents; name one with "
                       "--document-separator TEXT",
                       tokenizer_path);
    }
    *id = (uint32_t)found;
    return 0;
}

/* Encodes every input (the separator between files) into ids. */
static int encode_inputs(rt_bpe_tokenizer *tok, uint32_t separator, const char *const *inputs, int n_inputs,
                         FILE *progress, rt_bpe_ids *ids, rt_error *err) {
    progress_state state = {.out = progress};
    clock_gettime(CLOCK_MONOTONIC, &state.last);
    for (int i = 0; i < n_inputs; i++) {
        struct stat st;
        if (stat(inputs[i], &st) == 0) state.total_mb += (double)st.st_size / 1e6;
    }
    if (progress) rt_bpe_set_progress(tok, report_progress, &state);
    int rc = 0;
    for (int i = 0; i < n_inputs && rc == 0; i++) {
        byte_buffer text = {0};
        if (append_file(&text, inputs[i], err) != 0) {
            rc = -1;
        } else {
            if (i > 0) {
                ids->cap = ids->n + 1 > ids->cap ? 2 * ids->cap + 1 : ids->cap;
                ids->ids = realloc(ids->ids, ids->cap * sizeof *ids->ids);
                if (!ids->ids) rt_fatal("out of host memory for %zu token ids", ids->cap);
                ids->ids[ids->n++] = separator;
            }
            rc = rt_bpe_encode(tok, (const char *)text.bytes, text.len, ids, err);
        }
        free(text.bytes);
    }
    return rc;
}

int rt_prepare_tokenized(const char *tokenizer_path, const char *separator, const char *const *inputs, int n_inputs,
                         const char *out_train, const char *out_val, double val_fraction, FILE *progress,
                         size_t *n_train, size_t *n_val, rt_error *err) {
    if (n_train) *n_train = 0;
    if (n_val) *n_val = 0;
    if (check_split_args(n_inputs, out_train, out_val, val_fraction, err)) return -1;
    char absolute[PATH_MAX];
    if (!realpath(tokenizer_path, absolute))
        return rt_fail(err, "%s: cannot open tokenizer: %s", tokenizer_path, strerror(errno));
    if (strlen(absolute) >= RT_TOKENS_TOKENIZER_PATH_MAX)
        return rt_fail(err, "%s: absolute path longer than the %d bytes a token file header records", absolute,
                       RT_TOKENS_TOKENIZER_PATH_MAX - 1);
    rt_bpe_tokenizer *tok = rt_bpe_load(tokenizer_path, err);
    if (!tok) return -1;
    uint32_t separator_id = 0;
    rt_bpe_ids ids = {0};
    int rc = find_separator(tok, tokenizer_path, separator, &separator_id, err);
    if (rc == 0) rc = encode_inputs(tok, separator_id, inputs, n_inputs, progress, &ids, err);
    const rt_tokens_tokenizer_record record = {absolute, rt_bpe_content_hash(tok), separator_id, 0};
    const int vocab_size = rt_bpe_vocab_size(tok);
    rt_bpe_free(tok);
    size_t total = ids.n, val_tokens = out_val ? (size_t)(val_fraction * (double)total) : 0;
    if (val_tokens > total) val_tokens = total;
    size_t train_tokens = total - val_tokens;
    if (rc == 0 && train_tokens == 0 && !out_val)
        rc = rt_fail(err, "prepare: the %d input file(s) give no tokens; nothing to write to %s", n_inputs, out_train);
    else if (rc == 0 && out_val && (train_tokens == 0 || val_tokens == 0))
        rc = rt_fail(err,
                     "prepare: val_fraction %g of %zu tokens gives %zu training and %zu validation tokens; both must "
                     "be non-empty",
                     val_fraction, total, train_tokens, val_tokens);
    staged_output outs[2];
    int n_outs = 0;
    if (rc == 0 && (rc = stage_output(&outs[0], out_train, err)) == 0) n_outs = 1;
    if (rc == 0 && out_val && (rc = stage_output(&outs[1], out_val, err)) == 0) n_outs = 2;
    if (rc == 0 &&
        (rc = rt_tokens_write_recorded(outs[0].staged, ids.ids, train_tokens, vocab_size, &record, err)) != 0)
        name_user_path(err, &outs[0]);
    if (rc == 0 && out_val &&
        (rc = rt_tokens_write_recorded(outs[1].staged, ids.ids + train_tokens, val_tokens, vocab_size, &record, err)) !=
            0)
        name_user_path(err, &outs[1]);
    rc = commit_outputs(outs, n_outs, rc, err);
    rt_bpe_ids_free(&ids);
    if (rc == 0) {
        if (n_train) *n_train = train_tokens;
        if (n_val) *n_val = val_tokens;
    }
    return rc;
}

int rt_prepare_llmc_counted(const char *input_shard, const char *out_path, size_t *n_tokens, rt_error *err) {
    if (n_tokens) *n_tokens = 0;
    rt_token_file shard;
    if (rt_tokens_open(&shard, input_shard, err) != 0) return -1;
    if (!shard.is_llmc) {
        rt_tokens_close(&shard);
        return rt_fail(err, "%s: already a ringtrain token file (magic %d), expected an llm.c shard (magic %d)",
                       input_shard, RT_TOKENS_MAGIC, RT_LLMC_SHARD_MAGIC);
    }
    size_t n = shard.n_tokens;
    uint32_t *tokens = malloc_check(n * sizeof *tokens);
    int rc = 0;
    for (size_t i = 0; i < n; i++) {
        tokens[i] = rt_tokens_get(&shard, i);
        if (tokens[i] >= (uint32_t)shard.vocab_size) {
            rc = rt_fail(err, "%s: token at offset %zu is %u, outside the GPT-2 vocabulary of %d", input_shard, i,
                         tokens[i], shard.vocab_size);
            break;
        }
    }
    staged_output out;
    int staged = rc == 0 && (rc = stage_output(&out, out_path, err)) == 0;
    if (rc == 0 && (rc = rt_tokens_write(out.staged, tokens, n, shard.vocab_size, err)) != 0) name_user_path(err, &out);
    if (staged) rc = commit_outputs(&out, 1, rc, err);
    free(tokens);
    rt_tokens_close(&shard);
    if (rc == 0 && n_tokens) *n_tokens = n;
    return rc;
}

int rt_prepare_llmc(const char *input_shard, const char *out_path, rt_error *err) {
    return rt_prepare_llmc_counted(input_shard, out_path, NULL, err);
}
