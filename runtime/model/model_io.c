/*
 * model_io.c: model weights in and out. llm.c GPT-2 files (layer-stacked, read and written) and ringtrain's
 * HDF5 files (model.h5 and checkpoints: /model/<name> per view of the table, the resolved config stored).
 *
 * llm.c stores each per-layer tensor of all L layers back to back (qkvw is (L, 3C, C)); the table is
 * layer-major (layers.0.* then layers.1.* ...). map_llmc walks the 16 llm.c tensors once and copies each
 * layer's slice between the two orders, in the direction asked, so import and export share one mapping.
 * gpt2 ties the LM head to wte, as llm.c does, so the table has no tensor llm.c lacks.
 */
#include "model_io.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf_model.h"
#include "io/bpe_tokenizer.h"
#include "io/model_file.h"

/* Our view name of each llm.c tensor; per-layer ones get the "layers.<l>." prefix. */
static const struct {
    const char *name;
    int per_layer;
} llmc_to_view[RT_LLMC_N_TENSORS] = {
    {"wte", 0},
    {"wpe", 0},
    {"norm1.weight", 1},
    {"norm1.bias", 1},
    {"attn.qkv.weight", 1},
    {"attn.qkv.bias", 1},
    {"attn.proj.weight", 1},
    {"attn.proj.bias", 1},
    {"norm2.weight", 1},
    {"norm2.bias", 1},
    {"mlp.fc.weight", 1},
    {"mlp.fc.bias", 1},
    {"mlp.proj.weight", 1},
    {"mlp.proj.bias", 1},
    {"norm_f.weight", 0},
    {"norm_f.bias", 0},
};

/* llm.c's layernorm epsilon (train_gpt2.c hard-codes it). */
#define LLMC_NORM_EPS 1e-5f

enum { TO_TABLE, TO_FILE };

/* Copies every llm.c tensor between file_params (llm.c order) and host (table order), in direction. */
static void map_llmc(const rt_view_table *table, const rt_llmc_header *hdr, float *file_params, float *host,
                     int direction) {
    size_t sizes[RT_LLMC_N_TENSORS];
    rt_llmc_tensor_sizes(hdr, sizes);
    float *file_tensor = file_params;
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++) {
        int copies = llmc_to_view[i].per_layer ? hdr->n_layers : 1;
        size_t per_copy = sizes[i] / (size_t)copies;
        for (int l = 0; l < copies; l++) {
            char name[RT_NAME_LEN];
            rt_param_name(name, llmc_to_view[i].name, llmc_to_view[i].per_layer ? l : -1);
            const rt_named_view *view = rt_view_table_find(table, name);
            if (!view || view->numel != per_copy)
                rt_fatal("llm.c tensor %s does not match the model's view %s", rt_llmc_tensor_name(i), name);
            float *in_file = file_tensor + (size_t)l * per_copy, *in_table = host + view->offset;
            if (direction == TO_FILE)
                memcpy(in_file, in_table, per_copy * sizeof(float));
            else
                memcpy(in_table, in_file, per_copy * sizeof(float));
        }
        file_tensor += sizes[i];
    }
}

static size_t llmc_total(const rt_llmc_header *hdr) {
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(hdr, sizes);
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++)
        total += sizes[i];
    return total;
}

int rt_config_from_llmc(rt_config *cfg, const char *path, rt_error *err) {
    rt_llmc_header hdr;
    if (rt_llmc_read_header(path, &hdr, err)) return -1;
    cfg->family = RT_FAMILY_GPT2;
    cfg->tie_embeddings = 1; /* llm.c ties the LM head to wte */
    cfg->n_layers = hdr.n_layers;
    cfg->d_model = hdr.channels;
    cfg->n_heads = hdr.n_heads;
    cfg->n_kv_heads = hdr.n_heads;
    cfg->d_ff = 4 * hdr.channels;
    cfg->vocab_size = hdr.vocab_size;
    cfg->max_seq_len = hdr.max_seq_len;
    cfg->padded_vocab = hdr.padded_vocab_size;
    return 0;
}

static int check_shape(const rt_model_shape *s, const rt_llmc_header *h, const char *path, rt_error *err) {
    const struct {
        const char *what;
        int file, model;
    } fields[] = {
        {"n_layers", h->n_layers, s->n_layers},
        {"channels", h->channels, s->d_model},
        {"n_heads", h->n_heads, s->n_heads},
        {"vocab_size", h->vocab_size, s->vocab_size},
        {"padded_vocab_size", h->padded_vocab_size, s->padded_vocab},
        {"max_seq_len", h->max_seq_len, s->max_seq_len},
    };
    if (s->family != RT_FAMILY_GPT2) return rt_fail(err, "%s: llm.c model files hold the gpt2 family only", path);
    if (s->d_ff != 4 * s->d_model)
        return rt_fail(err, "%s: llm.c models have d_ff = 4*d_model = %d, the model has %d", path, 4 * s->d_model,
                       s->d_ff);
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        if (fields[i].file != fields[i].model)
            return rt_fail(err, "%s: the file's %s is %d but the model's is %d", path, fields[i].what, fields[i].file,
                           fields[i].model);
    return 0;
}

/* An llm.c file's weights into host (table.total floats, the table's order). */
static int read_llmc(const rt_model_shape *shape, const rt_view_table *table, const char *path, float *host,
                     rt_error *err) {
    rt_llmc_header hdr;
    if (rt_llmc_read_header(path, &hdr, err)) return -1;
    if (check_shape(shape, &hdr, path, err)) return -1;
    float *file_params = malloc_check(llmc_total(&hdr) * sizeof(float));
    int rc = rt_llmc_read_params(path, &hdr, file_params, err);
    if (rc == 0) map_llmc(table, &hdr, file_params, host, TO_TABLE);
    free(file_params);
    return rc;
}

/* Loads into m's full parameter buffer what read fills on the host. */
static int load_through_host(rt_model *m,
                             int (*read)(const rt_model_shape *, const rt_view_table *, const char *, float *,
                                         rt_error *),
                             const char *path, rt_error *err) {
    if (!m->params) rt_fatal("%s: the model's parameters are kept elsewhere; their owner loads them", path);
    float *host = malloc_check(m->table.total * sizeof(float));
    int rc = read(&m->shape, &m->table, path, host, err);
    if (rc == 0) rt_be_copy(m->backend, m->params, host, m->table.total * sizeof(float));
    free(host);
    return rc;
}

int rt_model_load_llmc(rt_model *m, const char *path, rt_error *err) {
    return load_through_host(m, read_llmc, path, err);
}

/* Whether llm.c's train_gpt2.c runs this shape as the same model; the error names what (a file) has it. */
static int check_llmc_exportable(const rt_model_shape *s, const char *what, rt_error *err) {
    if (s->family != RT_FAMILY_GPT2)
        return rt_fail(err,
                       "%s: a %s model cannot be written as an llm.c file: llm.c's train_gpt2.c has the gpt2 "
                       "family only",
                       what, rt_family_name(s->family));
    if (s->d_ff != 4 * s->d_model)
        return rt_fail(err, "%s: model.d_ff is %d, but llm.c's GPT-2 has d_ff = 4 * d_model = %d", what, s->d_ff,
                       4 * s->d_model);
    if (s->norm_eps != LLMC_NORM_EPS)
        return rt_fail(err, "%s: model.norm_eps is %g, but llm.c's layernorm uses %g: it would compute another model",
                       what, (double)s->norm_eps, (double)LLMC_NORM_EPS);
    return 0;
}

/* host (table->total floats, the table's order) as an llm.c file. */
static int write_llmc(const rt_model_shape *s, const rt_view_table *table, const float *host, const char *path,
                      rt_error *err) {
    if (check_llmc_exportable(s, path, err)) return -1;
    rt_llmc_header hdr = {.max_seq_len = s->max_seq_len,
                          .vocab_size = s->vocab_size,
                          .n_layers = s->n_layers,
                          .n_heads = s->n_heads,
                          .channels = s->d_model,
                          .padded_vocab_size = s->padded_vocab};
    size_t total = llmc_total(&hdr);
    if (total != table->total) rt_fatal("llm.c layout holds %zu parameters, the gpt2 table %zu", total, table->total);
    float *file_params = malloc_check(total * sizeof(float));
    map_llmc(table, &hdr, file_params, (float *)host, TO_FILE);
    int rc = rt_llmc_write(path, &hdr, file_params, err);
    free(file_params);
    return rc;
}

int rt_model_save_llmc(const rt_model *m, const char *path, rt_error *err) {
    float *host = malloc_check(m->table.total * sizeof(float));
    rt_be_copy(m->backend, host, m->params, m->table.total * sizeof(float));
    int rc = write_llmc(&m->shape, &m->table, host, path, err);
    free(host);
    return rc;
}

int rt_model_save(const rt_model *m, const char *path, const char *config_text, int64_t step, rt_error *err) {
    float *host = malloc_check(m->table.total * sizeof(float));
    rt_be_copy(m->backend, host, m->params, m->table.total * sizeof(float));
    int rc = rt_model_file_write(path, &m->table, host, config_text, step, err);
    free(host);
    return rc;
}

static int read_hdf5(const rt_model_shape *shape, const rt_view_table *table, const char *path, float *host,
                     rt_error *err) {
    (void)shape; /* the stored tensors' shapes are checked against the table */
    return rt_model_file_read_params(path, table, host, err);
}

int rt_model_load(rt_model *m, const char *path, rt_error *err) { return load_through_host(m, read_hdf5, path, err); }

/* ---- telling the file kinds apart, and the config a ringtrain file stores ---- */

int rt_model_file_is_hdf5(const char *path, rt_error *err) {
    static const unsigned char signature[8] = {0x89, 'H', 'D', 'F', '\r', '\n', 0x1a, '\n'};
    unsigned char head[8] = {0};
    /* O_NONBLOCK: a FIFO must not block here; the reader it goes to next refuses it as not regular. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return rt_fail(err, "%s: cannot open model file: %s", path, strerror(errno));
    struct stat st;
    ssize_t got = fstat(fd, &st) == 0 && S_ISREG(st.st_mode) ? read(fd, head, sizeof head) : 0;
    close(fd);
    return got == (ssize_t)sizeof head && memcmp(head, signature, sizeof head) == 0;
}

int rt_config_from_checkpoint(rt_config *cfg, const char *path, rt_error *err) {
    char *config_text = NULL;
    if (rt_model_file_read_meta(path, &config_text, NULL, err)) return -1;
    rt_error inner;
    int rc = rt_config_load_text(cfg, config_text, path, &inner);
    free(config_text);
    if (rc) return rt_fail(err, "%s: its stored config does not load: %s", path, inner.msg);
    /* The same model checks as --config: a stored shape must be one ringtrain could have trained. */
    if (rt_config_validate_model(cfg, &inner))
        return rt_fail(err, "%s: its stored config is not valid: %s", path, inner.msg);
    /* Size memory only from a config the file's tensors agree with: a stored shape far larger than the
     * datasets must be refused here, not after allocating it. */
    rt_model_shape shape = rt_model_shape_from_config(cfg);
    size_t stored = 0, wanted = rt_model_param_count(&shape);
    if (rt_model_file_count_params(path, &stored, err)) return -1;
    if (stored != wanted)
        return rt_fail(err,
                       "%s: its stored config (n_layers %d, d_model %d, d_ff %d, vocab_size %d, max_seq_len %d) "
                       "describes %zu parameters, but the file's /model tensors hold %zu",
                       path, cfg->n_layers, cfg->d_model, cfg->d_ff, cfg->vocab_size, cfg->max_seq_len, wanted, stored);
    return 0;
}

int rt_config_from_init_file(rt_config *cfg, const char *path, rt_error *err) {
    if (rt_hf_is_dir(path)) return rt_config_from_hf(cfg, path, err);
    int hdf5 = rt_model_file_is_hdf5(path, err);
    if (hdf5 < 0) return -1;
    if (!hdf5) return rt_config_from_llmc(cfg, path, err);
    rt_config stored;
    rt_config_defaults(&stored);
    if (rt_config_from_checkpoint(&stored, path, err)) return -1;
    /* The architecture only: the run keeps its own training, data, parallel and dropout settings. */
    cfg->family = stored.family;
    cfg->n_layers = stored.n_layers;
    cfg->d_model = stored.d_model;
    cfg->n_heads = stored.n_heads;
    cfg->n_kv_heads = stored.n_kv_heads;
    cfg->head_dim = stored.head_dim;
    cfg->tie_embeddings = stored.tie_embeddings;
    cfg->d_ff = stored.d_ff;
    cfg->vocab_size = stored.vocab_size;
    cfg->max_seq_len = stored.max_seq_len;
    cfg->padded_vocab = stored.padded_vocab;
    cfg->rope_theta = stored.rope_theta;
    cfg->norm_eps = stored.norm_eps;
    return 0;
}

static int read_hf(const rt_model_shape *shape, const rt_view_table *table, const char *path, float *host,
                   rt_error *err) {
    return rt_hf_read_params(shape, table, path, host, err);
}

int rt_model_load_init_file(rt_model *m, const char *path, rt_error *err) {
    if (rt_hf_is_dir(path)) return load_through_host(m, read_hf, path, err);
    int hdf5 = rt_model_file_is_hdf5(path, err);
    if (hdf5 < 0) return -1;
    return hdf5 ? rt_model_load(m, path, err) : rt_model_load_llmc(m, path, err);
}

int rt_model_read_init_file(const rt_model *m, const char *path, float *host, rt_error *err) {
    if (rt_hf_is_dir(path)) return rt_hf_read_params(&m->shape, &m->table, path, host, err);
    int hdf5 = rt_model_file_is_hdf5(path, err);
    if (hdf5 < 0) return -1;
    return hdf5 ? read_hdf5(&m->shape, &m->table, path, host, err) : read_llmc(&m->shape, &m->table, path, host, err);
}

int rt_export_llmc(const char *checkpoint_path, const char *out_path, rt_config *info, rt_error *err) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    int hdf5 = rt_model_file_is_hdf5(checkpoint_path, err);
    if (hdf5 < 0) return -1;
    if (!hdf5)
        return rt_fail(err, "%s: not an HDF5 file (expected a ringtrain checkpoint or model.h5)", checkpoint_path);
    if (rt_config_from_checkpoint(&cfg, checkpoint_path, err)) return -1;
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    if (check_llmc_exportable(&shape, checkpoint_path, err)) return -1; /* before reading any weights */
    /* The table of weights alone: no model, no device memory. */
    rt_view_table table;
    rt_param_table_build(&shape, &table, NULL);
    float *host = malloc_check(table.total * sizeof(float));
    int rc = read_hdf5(&shape, &table, checkpoint_path, host, err);
    if (rc == 0) rc = write_llmc(&shape, &table, host, out_path, err);
    free(host);
    rt_view_table_free(&table);
    if (rc == 0 && info) *info = cfg;
    return rc;
}

/* An export from a ringtrain file streams: a reader thread reads view after view (HDF5, its checksums) into two
 * reused buffers while the writer converts and writes the one before. Memory is two of the largest tensor, not
 * the model; touching a whole model's worth of fresh pages costs as much as writing it. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    const rt_view_table *table;
    const char *source;
    float *slot[2];
    int holds[2];                            /* the view a slot holds, -1 when free */
    int ready[2];                            /* its values are read and checked */
    int reader_failed, writer_done, stopped; /* stopped: the reader gave up because the writer had */
    rt_error err;
    int rc;
} view_pipe;

static float *pipe_where(void *ctx, int v) { /* reader: a free slot for view v */
    view_pipe *p = ctx;
    pthread_mutex_lock(&p->lock);
    while (p->holds[v & 1] != -1 && !p->writer_done)
        pthread_cond_wait(&p->cond, &p->lock);
    float *slot = p->writer_done ? NULL : p->slot[v & 1];
    if (slot) p->holds[v & 1] = v;
    p->stopped = !slot;
    pthread_mutex_unlock(&p->lock);
    return slot;
}

static void pipe_done(void *ctx, int v) { /* reader: view v is in its slot */
    view_pipe *p = ctx;
    pthread_mutex_lock(&p->lock);
    p->ready[v & 1] = 1;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

static const float *pipe_view(void *ctx, int v) { /* writer: view v once read; NULL when the reader failed */
    view_pipe *p = ctx;
    pthread_mutex_lock(&p->lock);
    while (!(p->holds[v & 1] == v && p->ready[v & 1]) && !p->reader_failed)
        pthread_cond_wait(&p->cond, &p->lock);
    const float *values = p->holds[v & 1] == v && p->ready[v & 1] ? p->slot[v & 1] : NULL;
    pthread_mutex_unlock(&p->lock);
    return values;
}

static void pipe_release(void *ctx, int v) { /* writer: done with view v, its slot is free */
    view_pipe *p = ctx;
    pthread_mutex_lock(&p->lock);
    p->holds[v & 1] = -1;
    p->ready[v & 1] = 0;
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
}

static void *pipe_read(void *arg) {
    view_pipe *p = arg;
    p->rc = rt_model_file_read_views(p->source, p->table,
                                     &(rt_model_file_sink){.where = pipe_where, .done = pipe_done, .ctx = p}, &p->err);
    pthread_mutex_lock(&p->lock);
    if (p->rc) p->reader_failed = 1; /* however early it failed, the writer waiting on it must wake */
    pthread_cond_broadcast(&p->cond);
    pthread_mutex_unlock(&p->lock);
    return NULL;
}

static const float *whole_view(void *ctx, int v) {
    const void *const *host_table = ctx; /* {host, table} */
    const rt_view_table *table = host_table[1];
    return (const float *)host_table[0] + table->views[v].offset;
}

/* From a Hugging Face directory: read whole (it is mapped; conversion is the work), then written. */
static int export_from_hf(const rt_config *cfg, const rt_model_shape *shape, const rt_view_table *table,
                          const char *source, const char *out_dir, const rt_hf_write_options *opt, rt_error *err) {
    float *host = malloc_check(table->total * sizeof(float));
    int rc = rt_hf_read_params(shape, table, source, host, err);
    const void *host_table[2] = {host, table};
    if (rc == 0)
        rc = rt_hf_write_dir(cfg, shape, table, &(rt_hf_view_source){.view = whole_view, .ctx = host_table}, out_dir,
                             opt, err);
    free(host);
    return rc;
}

static int export_from_h5(const rt_config *cfg, const rt_model_shape *shape, const rt_view_table *table,
                          const char *source, const char *out_dir, const rt_hf_write_options *opt, rt_error *err) {
    view_pipe p = {.table = table, .source = source, .holds = {-1, -1}, .rc = -1};
    size_t largest = 1;
    for (int v = 0; v < table->count; v++)
        if (table->views[v].numel > largest) largest = table->views[v].numel;
    p.slot[0] = malloc_check(largest * sizeof(float));
    p.slot[1] = malloc_check(largest * sizeof(float));
    pthread_mutex_init(&p.lock, NULL);
    pthread_cond_init(&p.cond, NULL);
    pthread_t reader;
    if (pthread_create(&reader, NULL, pipe_read, &p) != 0) rt_fatal("export: cannot start a reader thread");
    int rc =
        rt_hf_write_dir(cfg, shape, table, &(rt_hf_view_source){.view = pipe_view, .release = pipe_release, .ctx = &p},
                        out_dir, opt, err);
    pthread_mutex_lock(&p.lock);
    p.writer_done = 1; /* a reader waiting for a slot the writer will never free stops */
    pthread_cond_broadcast(&p.cond);
    pthread_mutex_unlock(&p.lock);
    pthread_join(reader, NULL);
    if (p.rc && !p.stopped && rc) rc = rt_fail(err, "%s", p.err.msg); /* the reader's error is the cause */
    pthread_cond_destroy(&p.cond);
    pthread_mutex_destroy(&p.lock);
    free(p.slot[0]);
    free(p.slot[1]);
    return rc;
}

/* The tokenizer that goes with the weights: the source directory's own, or the one the run's data recorded. */
static const char *tokenizer_for(const rt_config *cfg, const char *source, int from_hf, char *path, size_t cap) {
    if (from_hf) {
        snprintf(path, cap, "%s/tokenizer.json", source);
        return access(path, F_OK) == 0 ? path : NULL;
    }
    rt_bpe_tokenizer *tok = NULL;
    rt_error why;
    int recorded = rt_bpe_load_recorded(cfg->data_train, &tok, path, cap, &why);
    rt_bpe_free(tok);
    if (recorded < 0) fprintf(stderr, "ringtrain: warning: %s; exporting without tokenizer.json\n", why.msg);
    return recorded > 0 ? path : NULL;
}

int rt_export_hf(const char *source, const char *out_dir, const rt_hf_write_options *opt, rt_config *info,
                 rt_error *err) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    int from_hf = rt_hf_is_dir(source);
    if (from_hf) {
        if (rt_config_from_hf(&cfg, source, err)) return -1;
    } else {
        int hdf5 = rt_model_file_is_hdf5(source, err);
        if (hdf5 < 0) return -1;
        if (!hdf5)
            return rt_fail(err,
                           "%s: not an HDF5 file or a directory (expected a ringtrain checkpoint, a model.h5 or "
                           "a Hugging Face directory)",
                           source);
        if (rt_config_from_checkpoint(&cfg, source, err)) return -1;
    }
    struct stat st;
    if (lstat(out_dir, &st) == 0)
        return rt_fail(err, "%s: already exists; export writes a new directory only", out_dir);
    rt_hf_write_options with_tokenizer = *opt;
    char tokenizer[RT_PATH_LEN + 32];
    if (!opt->tokenizer_path)
        with_tokenizer.tokenizer_path = tokenizer_for(&cfg, source, from_hf, tokenizer, sizeof tokenizer);
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    rt_view_table table;
    rt_param_table_build(&shape, &table, NULL);
    int rc = from_hf ? export_from_hf(&cfg, &shape, &table, source, out_dir, &with_tokenizer, err)
                     : export_from_h5(&cfg, &shape, &table, source, out_dir, &with_tokenizer, err);
    rt_view_table_free(&table);
    if (rc == 0 && info) *info = cfg;
    return rc;
}
