/* hf_model.c: a Hugging Face directory's safetensors read into the parameter table, and written from it. */
#include "hf_model.h"

#include <cJSON.h>
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "hf_tensors.h"

#define INDEX_NAME "model.safetensors.index.json"
#define SINGLE_NAME "model.safetensors"

/* ---- reading ---- */

typedef struct {
    const char *dir;
    rt_st_file *files;
    unsigned char **claimed; /* per file, per tensor: filled by an entry */
    int n_files;
    cJSON *index; /* weight_map of the index, or NULL for one file */
    char index_path[RT_PATH_LEN + 64];
} hf_source;

static void source_close(hf_source *src) {
    for (int i = 0; i < src->n_files; i++) {
        rt_st_close(&src->files[i]);
        free(src->claimed[i]);
    }
    free(src->files);
    free(src->claimed);
    cJSON_Delete(src->index);
    memset(src, 0, sizeof *src);
}

static int open_file(hf_source *src, const char *name, rt_error *err) {
    char path[RT_PATH_LEN + RT_ST_NAME_LEN];
    snprintf(path, sizeof path, "%s/%s", src->dir, name);
    rt_st_file *f = &src->files[src->n_files];
    if (rt_st_open(f, path, err)) return -1;
    src->claimed[src->n_files] = calloc_check((size_t)f->count + 1, 1);
    src->n_files++;
    return 0;
}

static int file_index_of(const hf_source *src, const char *name) {
    for (int i = 0; i < src->n_files; i++) {
        const char *slash = strrchr(src->files[i].path, '/');
        if (strcmp(slash ? slash + 1 : src->files[i].path, name) == 0) return i;
    }
    return -1;
}

/* The index's weight_map: every shard it names is opened once (a shard named there that cannot be opened is
 * an error naming the index and the tensor). Shard names must be plain file names inside the directory. */
static int open_index(hf_source *src, const char *text, rt_error *err) {
    cJSON *root = cJSON_Parse(text);
    if (!root) return rt_fail(err, "%s: not JSON (expected a safetensors index with a weight_map)", src->index_path);
    cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return rt_fail(err, "%s: field 'weight_map' is missing or not an object", src->index_path);
    }
    src->index = root;
    int n = cJSON_GetArraySize(map);
    src->files = calloc_check((size_t)n + 1, sizeof(rt_st_file));
    src->claimed = calloc_check((size_t)n + 1, sizeof(unsigned char *));
    for (const cJSON *item = map->child; item; item = item->next) {
        if (!cJSON_IsString(item))
            return rt_fail(err, "%s: field 'weight_map.%s': expected a file name", src->index_path, item->string);
        const char *shard = item->valuestring;
        if (!shard[0] || strchr(shard, '/') || strcmp(shard, "..") == 0 || strcmp(shard, ".") == 0)
            return rt_fail(err, "%s: field 'weight_map.%s' = '%s': expected a file name inside the directory",
                           src->index_path, item->string, shard);
        if (file_index_of(src, shard) >= 0) continue;
        rt_error inner;
        if (open_file(src, shard, &inner))
            return rt_fail(err, "%s: field 'weight_map.%s' names shard '%s': %s", src->index_path, item->string, shard,
                           inner.msg);
    }
    return 0;
}

static int source_open(hf_source *src, const char *dir, rt_error *err) {
    memset(src, 0, sizeof *src);
    src->dir = dir;
    snprintf(src->index_path, sizeof src->index_path, "%s/%s", dir, INDEX_NAME);
    FILE *f = fopen(src->index_path, "rb");
    if (!f) {
        src->files = calloc_check(1, sizeof(rt_st_file));
        src->claimed = calloc_check(1, sizeof(unsigned char *));
        if (open_file(src, SINGLE_NAME, err)) {
            source_close(src);
            return -1;
        }
        return 0;
    }
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (size < 0 || size > (64L << 20)) {
        fclose(f);
        return rt_fail(err, "%s: %ld bytes; expected a JSON index of at most 64 MiB", src->index_path, size);
    }
    char *text = malloc_check((size_t)size + 1);
    size_t got = fread(text, 1, (size_t)size, f);
    fclose(f);
    text[got] = '\0';
    int rc = got == (size_t)size ? open_index(src, text, err)
                                 : rt_fail(err, "%s: read %zu of %ld bytes", src->index_path, got, size);
    free(text);
    if (rc) source_close(src);
    return rc;
}

/* The file holding a tensor: the one the index names, else the single file. NULL + err when missing. */
static const rt_st_tensor *find_tensor(hf_source *src, const char *name, int *file, rt_error *err) {
    if (src->index) {
        const cJSON *where =
            cJSON_GetObjectItemCaseSensitive(cJSON_GetObjectItemCaseSensitive(src->index, "weight_map"), name);
        if (!where) {
            rt_fail(err, "%s: tensor '%s' is missing from field 'weight_map'", src->index_path, name);
            return NULL;
        }
        *file = file_index_of(src, where->valuestring);
    } else {
        *file = 0;
    }
    const rt_st_tensor *t = rt_st_find(&src->files[*file], name);
    if (!t) rt_fail(err, "%s: tensor '%s' is missing", src->files[*file].path, name);
    return t;
}

static int check_shape(const rt_st_file *f, const rt_st_tensor *t, const hf_entry *e, rt_error *err) {
    int64_t want[2];
    hf_entry_shape(e, want);
    int ok = t->ndim == e->ndim && t->shape[0] == want[0] && (e->ndim == 1 || t->shape[1] == want[1]);
    if (ok) return 0;
    char got[128] = "[", *p = got + 1;
    for (int d = 0; d < t->ndim && p < got + sizeof got - 24; d++)
        p += snprintf(p, (size_t)(got + sizeof got - p), "%s%lld", d ? ", " : "", (long long)t->shape[d]);
    snprintf(p, (size_t)(got + sizeof got - p), "]");
    if (e->ndim == 1)
        return rt_fail(err, "%s: tensor '%s': field 'shape' %s disagrees with config.json (expected [%lld])", f->path,
                       t->name, got, (long long)want[0]);
    return rt_fail(err, "%s: tensor '%s': field 'shape' %s disagrees with config.json (expected [%lld, %lld])", f->path,
                   t->name, got, (long long)want[0], (long long)want[1]);
}

/* Every tensor of every file is one of ours or a known buffer: a tensor nobody reads is a layout ringtrain
 * does not implement (biases, extra norms), and silently dropping it would train another model. */
static int check_all_claimed(const hf_source *src, const rt_model_shape *s, rt_error *err) {
    for (int i = 0; i < src->n_files; i++)
        for (int j = 0; j < src->files[i].count; j++) {
            const char *name = src->files[i].tensors[j].name;
            if (!src->claimed[i][j] && !hf_tensor_ignored(s, name))
                return rt_fail(err, "%s: tensor '%s' is no parameter of %s as ringtrain implements it",
                               src->files[i].path, name,
                               s->family == RT_FAMILY_LLAMA ? "LlamaForCausalLM" : "GPT2LMHeadModel");
        }
    return 0;
}

/* "transformer." when the files name gpt2's tensors as transformers writes them, "" for the original files. */
static const char *gpt2_prefix(hf_source *src) {
    rt_error ignored;
    int file;
    return find_tensor(src, "transformer.wte.weight", &file, &ignored) ? "transformer." : "";
}

/* The rows no tensor of the file fills: the padded vocabulary rows of wte and of an untied head. */
static void zero_padded_rows(const rt_model_shape *shape, const rt_view_table *table, float *host) {
    static const char *const padded[] = {"wte", "lm_head.weight"};
    const size_t C = (size_t)shape->d_model;
    for (int i = 0; i < 2; i++) {
        const rt_named_view *v = rt_view_table_find(table, padded[i]);
        if (v)
            memset(host + v->offset + (size_t)shape->vocab_size * C, 0,
                   (size_t)(shape->padded_vocab - shape->vocab_size) * C * sizeof(float));
    }
}

int rt_hf_read_params(const rt_model_shape *shape, const rt_view_table *table, const char *dir, float *host,
                      rt_error *err) {
    hf_source src;
    if (source_open(&src, dir, err)) return -1;
    hf_entry_list list;
    hf_entries_build(&list, shape, table, shape->family == RT_FAMILY_GPT2 ? gpt2_prefix(&src) : "");
    zero_padded_rows(shape, table, host);
    size_t scratch_len = 0;
    for (size_t i = 0; i < list.count; i++)
        if (list.entries[i].how != HF_COPY && hf_entry_numel(&list.entries[i]) > scratch_len)
            scratch_len = hf_entry_numel(&list.entries[i]);
    float *scratch = malloc_check((scratch_len ? scratch_len : 1) * sizeof(float));
    int rc = 0;
    for (size_t i = 0; rc == 0 && i < list.count; i++) {
        const hf_entry *e = &list.entries[i];
        int file;
        const rt_st_tensor *t = find_tensor(&src, e->hf, &file, err);
        if (!t || check_shape(&src.files[file], t, e, err)) {
            rc = -1;
            break;
        }
        src.claimed[file][t - src.files[file].tensors] = 1;
        float *dst = e->how == HF_COPY ? host + e->offset : scratch;
        rc = rt_st_read_f32(&src.files[file], t, 0, t->numel, dst, err);
        if (rc == 0 && e->how != HF_COPY) hf_to_table(e, (size_t)shape->head_dim, scratch, host);
    }
    if (rc == 0) rc = check_all_claimed(&src, shape, err);
    free(scratch);
    hf_entries_free(&list);
    source_close(&src);
    return rc;
}

/* ---- writing ---- */

static int write_text(const char *dir, const char *name, const char *text, rt_error *err) {
    char path[RT_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) return rt_fail(err, "%s: cannot create: %s", path, strerror(errno));
    size_t len = strlen(text);
    int ok = fwrite(text, 1, len, f) == len && fputc('\n', f) != EOF;
    ok = (fclose(f) == 0) && ok;
    return ok ? 0 : rt_fail(err, "%s: write failed: %s", path, strerror(errno));
}

static int copy_file(const char *from, const char *dir, const char *name, rt_error *err) {
    char path[RT_PATH_LEN + 64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *in = fopen(from, "rb");
    if (!in) return rt_fail(err, "%s: cannot open: %s", from, strerror(errno));
    FILE *out = fopen(path, "wb");
    if (!out) {
        fclose(in);
        return rt_fail(err, "%s: cannot create: %s", path, strerror(errno));
    }
    char buf[1 << 16];
    size_t got;
    int ok = 1;
    while (ok && (got = fread(buf, 1, sizeof buf, in)) > 0)
        ok = fwrite(buf, 1, got, out) == got;
    ok = ok && !ferror(in);
    fclose(in);
    ok = (fclose(out) == 0) && ok;
    return ok ? 0 : rt_fail(err, "%s: copying %s failed", path, from);
}

/* Removes a directory this export made and the plain files in it. */
static void remove_tree(const char *dir) {
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *ent;
        char path[RT_PATH_LEN + 300];
        while ((ent = readdir(d)))
            if (strcmp(ent->d_name, ".") && strcmp(ent->d_name, "..")) {
                snprintf(path, sizeof path, "%s/%s", dir, ent->d_name);
                unlink(path);
            }
        closedir(d);
    }
    rmdir(dir);
}

/* The view the writer is on: entries come in table order, so each view is asked for once and released when
 * the writer moves past it. */
typedef struct {
    const rt_hf_view_source *src;
    int view;
    const float *values;
} view_cursor;

static const float *cursor_at(view_cursor *c, int view) {
    if (view == c->view) return c->values;
    if (c->view >= 0 && c->src->release) c->src->release(c->src->ctx, c->view);
    c->view = view;
    c->values = c->src->view(c->src->ctx, view);
    return c->values;
}

/* One safetensors file holding entries [first, last). */
static int write_shard(const char *path, const hf_entry_list *list, size_t first, size_t last,
                       const rt_model_shape *shape, view_cursor *cursor, const rt_hf_write_options *opt, float *scratch,
                       rt_error *err) {
    int n = (int)(last - first);
    rt_st_decl *decls = calloc_check((size_t)n, sizeof(rt_st_decl));
    for (int i = 0; i < n; i++) {
        const hf_entry *e = &list->entries[first + (size_t)i];
        decls[i].name = e->hf;
        decls[i].dtype = opt->dtype;
        decls[i].ndim = e->ndim;
        hf_entry_shape(e, decls[i].shape);
    }
    static const char *const metadata[][2] = {{"format", "pt"}};
    rt_st_writer *w = rt_st_writer_open(path, decls, n, metadata, 1, err);
    free(decls);
    if (!w) return -1;
    for (size_t i = first; i < last; i++) {
        const hf_entry *e = &list->entries[i];
        const float *view_values = cursor_at(cursor, e->view);
        if (!view_values) {
            rt_st_writer_abort(w);
            return rt_fail(err, "%s: reading the source failed", path);
        }
        const float *values = hf_from_view(e, (size_t)shape->head_dim, view_values, scratch);
        if (rt_st_writer_put(w, values, hf_entry_numel(e), err)) {
            rt_st_writer_abort(w);
            return -1;
        }
    }
    return rt_st_writer_finish(w, err);
}

/* The shards: a new one starts when the next tensor would take the current one past shard_bytes. */
static int plan_shards(const hf_entry_list *list, size_t shard_bytes, size_t elem, size_t *starts) {
    int n = 0;
    size_t used = 0;
    for (size_t i = 0; i < list->count; i++) {
        size_t bytes = hf_entry_numel(&list->entries[i]) * elem;
        if (i == 0 || (shard_bytes && used > 0 && used + bytes > shard_bytes)) {
            starts[n++] = i;
            used = 0;
        }
        used += bytes;
    }
    starts[n] = list->count;
    return n;
}

static int write_tensors(const char *tmp, const rt_model_shape *shape, const rt_view_table *table,
                         const rt_hf_view_source *src, const rt_hf_write_options *opt, rt_error *err) {
    hf_entry_list list;
    hf_entries_build(&list, shape, table, "transformer.");
    size_t *starts = malloc_check((list.count + 1) * sizeof(size_t)), scratch_len = 1, total = 0;
    const size_t elem = rt_st_dtype_size(opt->dtype);
    for (size_t i = 0; i < list.count; i++) {
        size_t n = hf_entry_numel(&list.entries[i]);
        if (list.entries[i].how != HF_COPY && n > scratch_len) scratch_len = n;
        total += n * elem;
    }
    float *scratch = malloc_check(scratch_len * sizeof(float));
    int n_shards = plan_shards(&list, opt->shard_bytes, elem, starts), rc = 0;
    cJSON *index = cJSON_CreateObject(), *map = cJSON_CreateObject();
    cJSON_AddNumberToObject(cJSON_AddObjectToObject(index, "metadata"), "total_size", (double)total);
    cJSON_AddItemToObject(index, "weight_map", map);
    view_cursor cursor = {.src = src, .view = -1, .values = NULL};
    for (int s = 0; rc == 0 && s < n_shards; s++) {
        char name[64], path[RT_PATH_LEN + 128];
        if (n_shards == 1)
            snprintf(name, sizeof name, SINGLE_NAME);
        else
            snprintf(name, sizeof name, "model-%05d-of-%05d.safetensors", s + 1, n_shards);
        snprintf(path, sizeof path, "%s/%s", tmp, name);
        rc = write_shard(path, &list, starts[s], starts[s + 1], shape, &cursor, opt, scratch, err);
        for (size_t i = starts[s]; i < starts[s + 1]; i++)
            cJSON_AddStringToObject(map, list.entries[i].hf, name);
    }
    if (cursor.view >= 0 && src->release) src->release(src->ctx, cursor.view);
    if (rc == 0 && n_shards > 1) {
        char *text = cJSON_Print(index);
        rc = write_text(tmp, INDEX_NAME, text, err);
        free(text);
    }
    cJSON_Delete(index);
    free(scratch);
    free(starts);
    hf_entries_free(&list);
    return rc;
}

int rt_hf_write_dir(const rt_config *cfg, const rt_model_shape *shape, const rt_view_table *table,
                    const rt_hf_view_source *src, const char *dir, const rt_hf_write_options *opt, rt_error *err) {
    struct stat st;
    if (lstat(dir, &st) == 0) return rt_fail(err, "%s: already exists; export writes a new directory only", dir);
    char tmp[RT_PATH_LEN + 8];
    snprintf(tmp, sizeof tmp, "%s.tmp", dir);
    if (mkdir(tmp, 0755) != 0)
        return rt_fail(err, "%s: cannot create the export's working directory: %s%s", tmp, strerror(errno),
                       errno == EEXIST ? " (left by an export that was killed? remove it)" : "");
    char *config = rt_hf_config_json(cfg, opt->dtype);
    int rc = write_text(tmp, "config.json", config, err);
    free(config);
    if (rc == 0) rc = write_tensors(tmp, shape, table, src, opt, err);
    if (rc == 0 && opt->tokenizer_path) rc = copy_file(opt->tokenizer_path, tmp, "tokenizer.json", err);
    if (rc == 0 && rename(tmp, dir) != 0)
        rc = rt_fail(err, "%s: cannot rename %s to it: %s", dir, tmp, strerror(errno));
    if (rc) remove_tree(tmp);
    return rc;
}
