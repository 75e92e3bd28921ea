/*
 * sample.c: autoregressive sampling. Each new token re-runs the forward over
 * the last max_seq_len tokens (no KV cache: sampling is a check of what was
 * learned, not a serving path), takes the last position's logits, and draws
 * with temperature and top-k from a seeded RNG.
 */
#include "sample.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/bpe_tokenizer.h"
#include "io/tokens.h"
#include "io/utf8_stream.h"
#include "runtime/backend/registry.h"
#include "runtime/model/model.h"
#include "runtime/model/model_io.h"

/* Tokens of context at most when sampling from a Hugging Face directory. */
#define HF_WINDOW_MAX 4096

static uint64_t next_random(uint64_t *state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

int rt_sample_draw(float *logits, int V, float temperature, int top_k, uint64_t *rng) {
    int best = 0;
    for (int i = 1; i < V; i++)
        if (logits[i] > logits[best]) best = i;
    if (temperature <= 0.0f) return best;
    float kth = -INFINITY;
    if (top_k > 0 && top_k < V) { /* top_k >= V keeps the whole vocabulary */
        /* The k-th largest logit, by repeated selection: V is small enough and k usually tiny. */
        float *sorted = malloc_check((size_t)V * sizeof *sorted);
        memcpy(sorted, logits, (size_t)V * sizeof *sorted);
        for (int k = 0; k < top_k; k++) {
            int arg = k;
            for (int i = k + 1; i < V; i++)
                if (sorted[i] > sorted[arg]) arg = i;
            float tmp = sorted[k];
            sorted[k] = sorted[arg];
            sorted[arg] = tmp;
        }
        kth = sorted[top_k - 1];
        free(sorted);
    }
    const float max_logit = logits[best]; /* read once: the loop below overwrites logits with weights */
    double total = 0.0;
    for (int i = 0; i < V; i++) {
        double p = logits[i] >= kth ? exp((double)(logits[i] - max_logit) / temperature) : 0.0;
        logits[i] = (float)p;
        total += p;
    }
    double u = (double)(next_random(rng) >> 11) * 0x1.0p-53 * total, acc = 0.0;
    for (int i = 0; i < V; i++) {
        acc += logits[i];
        if (u < acc) return i;
    }
    return best;
}

/* Writes one token as it comes: a tokenizer's bytes or a byte vocabulary's byte as UTF-8 (a character split
 * over tokens is written once its last token is out; bytes that form no character are U+FFFD), else the id. */
static void emit(FILE *out, rt_utf8_stream *text, uint32_t token, int byte_vocab, const rt_bpe_tokenizer *tok) {
    size_t len = 0;
    const char *bytes = tok ? rt_bpe_token_bytes(tok, token, &len) : NULL;
    char buf[32];
    if (bytes) {
        rt_utf8_write(text, bytes, len, out);
    } else if (tok) {
        /* an id the model has and the tokenizer does not (padding) */
        rt_utf8_write(text, buf, (size_t)snprintf(buf, sizeof buf, "<id %u>", token), out);
    } else if (byte_vocab) {
        rt_utf8_write(text, buf, rt_byte_decode(token, buf, sizeof buf), out);
    } else {
        fprintf(out, "%u ", token);
    }
    fflush(out);
}

static int parse_prompt(const char *prompt, int byte_vocab, int V, uint32_t **tokens, size_t *n, rt_error *err) {
    size_t cap = prompt ? strlen(prompt) + 1 : 1;
    *tokens = malloc_check(cap * sizeof **tokens);
    *n = 0;
    if (!prompt || !prompt[0]) {
        (*tokens)[(*n)++] = byte_vocab ? '\n' : (uint32_t)(V - 1); /* newline, or GPT-2's <|endoftext|> */
        return 0;
    }
    if (byte_vocab) {
        for (const char *c = prompt; *c; c++)
            (*tokens)[(*n)++] = (unsigned char)*c;
        return 0;
    }
    const char *c = prompt;
    while (*c) {
        char *end = NULL;
        errno = 0;
        long id = strtol(c, &end, 10);
        if (end == c || errno || id < 0 || id >= V)
            return rt_fail(err,
                           "prompt '%s': expected comma-separated token ids below %d (--prompt-ids, or --prompt "
                           "without a tokenizer for this vocabulary)",
                           prompt, V);
        (*tokens)[(*n)++] = (uint32_t)id;
        c = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return rt_fail(err, "--prompt '%s': unexpected '%c'", prompt, *end);
    }
    return 0;
}

/* The prompt's ids: --prompt-ids, else the text through the tokenizer, else bytes or ids as the vocabulary says. */
static int prompt_tokens(const rt_sample_options *opt, rt_bpe_tokenizer *tok, int V, uint32_t **tokens, size_t *n,
                         rt_error *err) {
    if (opt->prompt_ids) return parse_prompt(opt->prompt_ids, 0, V, tokens, n, err);
    if (!tok || !opt->prompt || !opt->prompt[0])
        return parse_prompt(opt->prompt, V <= RT_BYTE_VOCAB, V, tokens, n, err);
    rt_bpe_ids ids = {0};
    if (rt_bpe_encode(tok, opt->prompt, strlen(opt->prompt), &ids, err)) {
        rt_bpe_ids_free(&ids);
        return rt_fail(err, "--prompt: %s", err->msg);
    }
    for (size_t i = 0; i < ids.n; i++)
        if (ids.ids[i] >= (uint32_t)V) {
            uint32_t id = ids.ids[i];
            rt_bpe_ids_free(&ids);
            return rt_fail(err, "--prompt: the tokenizer gives id %u, outside the model's vocabulary of %d", id, V);
        }
    if (ids.n == 0) { /* a prompt of nothing but dropped bytes */
        rt_bpe_ids_free(&ids);
        return parse_prompt(NULL, 0, V, tokens, n, err);
    }
    *tokens = ids.ids;
    *n = ids.n;
    return 0;
}

/* The tokenizer: the one given, else the one the run's training token file recorded when it is unchanged. */
static int open_tokenizer(const rt_sample_options *opt, const rt_config *cfg, rt_bpe_tokenizer **tok, rt_error *err) {
    *tok = NULL;
    if (opt->tokenizer) return (*tok = rt_bpe_load(opt->tokenizer, err)) ? 0 : -1;
    char path[RT_TOKENS_TOKENIZER_PATH_MAX];
    if (rt_hf_is_dir(opt->model_path)) { /* a Hugging Face directory's own tokenizer.json, when it has one */
        snprintf(path, sizeof path, "%s/tokenizer.json", opt->model_path);
        return access(path, F_OK) != 0 || (*tok = rt_bpe_load(path, err)) ? 0 : -1;
    }
    rt_error why;
    if (rt_bpe_load_recorded(cfg->data_train, tok, path, sizeof path, &why) < 0)
        fprintf(stderr, "ringtrain: warning: %s; printing token ids\n", why.msg);
    return 0;
}

int rt_sample(const rt_sample_options *opt, FILE *out, rt_error *err) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    const int from_hf = rt_hf_is_dir(opt->model_path);
    int from_hdf5 = from_hf ? 0 : rt_model_file_is_hdf5(opt->model_path, err);
    if (from_hdf5 < 0) return -1;
    if (from_hf) {
        /* A Hugging Face directory: its config.json; windows up to HF_WINDOW_MAX tokens (long-context models
         * declare far more positions than a sample needs memory for). */
        if (rt_config_from_hf(&cfg, opt->model_path, err)) return -1;
        cfg.seq_len = cfg.max_seq_len < HF_WINDOW_MAX ? cfg.max_seq_len : HF_WINDOW_MAX;
    } else if (from_hdf5) {
        /* The stored config, checked to describe a valid model the file's tensors back (model.h5 or a
         * checkpoint: both keep the weights as /model). */
        if (rt_config_from_checkpoint(&cfg, opt->model_path, err)) return -1;
    } else {
        /* The llm.c header was checked against the file's size (rt_llmc_read_header) before this point. */
        if (rt_config_from_llmc(&cfg, opt->model_path, err)) return -1;
        cfg.seq_len = cfg.max_seq_len; /* llm.c files carry no training length */
        rt_error inner;
        if (rt_config_validate_model(&cfg, &inner))
            return rt_fail(err, "%s: its header gives an invalid model: %s", opt->model_path, inner.msg);
    }
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    const rt_backend *be = rt_backend_cpu();
    rt_device_memory mem;
    rt_device_memory_init(&mem, be, 0);
    rt_model model;
    int rc = -1;
    uint32_t *tokens = NULL;
    rt_bpe_tokenizer *tok = NULL;
    FILE *logits_file = NULL;
    char logits_tmp[RT_TMP_PATH_LEN];
    if (opt->logits_path &&
        (size_t)snprintf(logits_tmp, sizeof logits_tmp, "%s.tmp", opt->logits_path) >= sizeof logits_tmp)
        return rt_fail(err, "%s: path too long", opt->logits_path);
    if (rt_model_init(&model, &shape, be, &mem,
                      &(rt_model_options){.mode = RT_ACT_RECOMPUTE,
                                          .max_seqs = 1,
                                          .max_local_len = (size_t)(from_hf ? cfg.seq_len : shape.max_seq_len)},
                      err))
        goto done;
    if (rt_model_load_init_file(&model, opt->model_path, err)) goto done;
    const int V = shape.vocab_size, byte_vocab = V <= RT_BYTE_VOCAB;
    size_t n = 0;
    if (open_tokenizer(opt, &cfg, &tok, err)) goto done;
    if (tok && rt_bpe_vocab_size(tok) > V) {
        rc = rt_fail(err, "%s: %d ids, more than the model's vocabulary of %d",
                     opt->tokenizer ? opt->tokenizer : "tokenizer", rt_bpe_vocab_size(tok), V);
        goto done;
    }
    if (prompt_tokens(opt, tok, V, &tokens, &n, err)) goto done;
    if (opt->logits_path && !(logits_file = fopen(logits_tmp, "wb"))) {
        rc = rt_fail(err, "%s: cannot create: %s", logits_tmp, strerror(errno));
        goto done;
    }
    tokens = realloc(tokens, (n + (size_t)opt->n_tokens) * sizeof *tokens);
    if (!tokens) rt_fatal("out of host memory for %d sampled tokens", opt->n_tokens);
    /* A ringtrain model saw positions below train.seq_len only: longer windows ask RoPE or wpe for
     * positions it never learned. llm.c files carry no training length: their max_seq_len. */
    const size_t window_max = (size_t)(from_hdf5 || from_hf ? cfg.seq_len : shape.max_seq_len);
    int32_t *inputs = malloc_check(window_max * sizeof *inputs), *targets = malloc_check(window_max * sizeof *targets);
    int64_t *pos = malloc_check(window_max * sizeof *pos);
    float *logits = malloc_check((size_t)V * sizeof *logits);
    uint64_t rng = opt->seed;
    rt_utf8_stream text = {0};
    for (size_t i = 0; i < n; i++)
        emit(out, &text, tokens[i], byte_vocab, tok);
    int write_rc = 0;
    for (int t = 0; t < opt->n_tokens; t++) {
        size_t window = n < window_max ? n : window_max, first = n - window;
        for (size_t i = 0; i < window; i++) {
            inputs[i] = (int32_t)tokens[first + i];
            targets[i] = -1;
            pos[i] = (int64_t)i;
        }
        rt_batch batch = {.inputs = inputs, .targets = targets, .pos = pos, .n_seqs = 1, .local_len = window};
        rt_model_last_logits(&model, &batch, logits);
        /* raw floats: every platform ringtrain builds for is little-endian */
        if (logits_file && write_rc == 0 && fwrite(logits, sizeof *logits, (size_t)V, logits_file) != (size_t)V)
            write_rc = rt_fail(err, "%s: write failed: %s", logits_tmp, strerror(errno));
        tokens[n] = (uint32_t)rt_sample_draw(logits, V, opt->temperature, opt->top_k, &rng);
        emit(out, &text, tokens[n], byte_vocab, tok);
        n++;
    }
    rt_utf8_finish(&text, out);
    fputc('\n', out);
    free(inputs);
    free(targets);
    free(pos);
    free(logits);
    if (logits_file) {
        rc = rt_commit_tmp_file(logits_file, logits_tmp, opt->logits_path, write_rc, err);
        logits_file = NULL;
    } else {
        rc = 0;
    }
done:
    if (logits_file) {
        fclose(logits_file);
        unlink(logits_tmp);
    }
    rt_bpe_free(tok);
    free(tokens);
    rt_model_free(&model);
    rt_device_memory_destroy(&mem);
    return rc;
}
