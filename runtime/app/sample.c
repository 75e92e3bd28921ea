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

#include "io/tokens.h"
#include "runtime/backend/registry.h"
#include "runtime/model/model.h"
#include "runtime/model/model_io.h"

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

static void emit(FILE *out, uint32_t token, int byte_vocab) {
    if (byte_vocab) {
        char text[8];
        size_t n = rt_byte_decode(token, text, sizeof text);
        fwrite(text, 1, n, out);
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
                           "--prompt '%s': expected comma-separated token ids below %d (no tokenizer for this "
                           "vocabulary)",
                           prompt, V);
        (*tokens)[(*n)++] = (uint32_t)id;
        c = *end == ',' ? end + 1 : end;
        if (*end && *end != ',') return rt_fail(err, "--prompt '%s': unexpected '%c'", prompt, *end);
    }
    return 0;
}

int rt_sample(const rt_sample_options *opt, FILE *out, rt_error *err) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    int from_hdf5 = rt_model_file_is_hdf5(opt->model_path, err);
    if (from_hdf5 < 0) return -1;
    if (from_hdf5) {
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
    if (rt_model_init(
            &model, &shape, be, &mem,
            &(rt_model_options){.mode = RT_ACT_RECOMPUTE, .max_seqs = 1, .max_local_len = (size_t)shape.max_seq_len},
            err))
        goto done;
    if ((from_hdf5 ? rt_model_load(&model, opt->model_path, err) : rt_model_load_llmc(&model, opt->model_path, err)))
        goto done;
    const int V = shape.vocab_size, byte_vocab = V <= RT_BYTE_VOCAB;
    size_t n = 0;
    if (parse_prompt(opt->prompt, byte_vocab, V, &tokens, &n, err)) goto done;
    tokens = realloc(tokens, (n + (size_t)opt->n_tokens) * sizeof *tokens);
    if (!tokens) rt_fatal("out of host memory for %d sampled tokens", opt->n_tokens);
    /* A ringtrain model saw positions below train.seq_len only: longer windows ask RoPE or wpe for
     * positions it never learned. llm.c files carry no training length: their max_seq_len. */
    const size_t window_max = (size_t)(from_hdf5 ? cfg.seq_len : shape.max_seq_len);
    int32_t *inputs = malloc_check(window_max * sizeof *inputs), *targets = malloc_check(window_max * sizeof *targets);
    int64_t *pos = malloc_check(window_max * sizeof *pos);
    float *logits = malloc_check((size_t)V * sizeof *logits);
    uint64_t rng = opt->seed;
    for (size_t i = 0; i < n; i++)
        emit(out, tokens[i], byte_vocab);
    for (int t = 0; t < opt->n_tokens; t++) {
        size_t window = n < window_max ? n : window_max, first = n - window;
        for (size_t i = 0; i < window; i++) {
            inputs[i] = (int32_t)tokens[first + i];
            targets[i] = -1;
            pos[i] = (int64_t)i;
        }
        rt_batch batch = {.inputs = inputs, .targets = targets, .pos = pos, .n_seqs = 1, .local_len = window};
        rt_model_last_logits(&model, &batch, logits);
        tokens[n] = (uint32_t)rt_sample_draw(logits, V, opt->temperature, opt->top_k, &rng);
        emit(out, tokens[n], byte_vocab);
        n++;
    }
    fputc('\n', out);
    free(inputs);
    free(targets);
    free(pos);
    free(logits);
    rc = 0;
done:
    free(tokens);
    rt_model_free(&model);
    rt_device_memory_destroy(&mem);
    return rc;
}
