/*
 * train_state.c: a trainer's whole state as one checkpoint file, written and
 * read by every rank at once (io/ckpt_store.h), for any rank layout.
 *
 * Memory and file are two placements of the same global tensors. The padded
 * flat buffer of Ψ parameters is split [Shard(0), Shard(0)] over the dp x sp
 * mesh (shard/dtensor.h); rank r writes, of every named tensor, the part that
 * falls in its box. That is its ZeRO shard at stages 1-3, and at stage 0
 * (where every rank holds everything) the same even split, so replicated
 * state is written once and by all ranks in parallel. A flat box cuts 2-D
 * tensors mid-row: the store writes such pieces as hyperslabs, so shard
 * boundaries stay where ZeRO puts them and the file keeps global shapes.
 *
 * Loading reads, of /optim/{master,m,v}, the ranges of this rank's shard
 * under the NEW layout (stage 0: everything); the parameters then come from
 * the master weights exactly as after an update (stage 0 updates them in
 * place; stages 1-2 all-gather the shards; at stage 3 the shards are the
 * parameters, which the model gathers layer by layer). /model is not read back on the
 * fp32 CPU backend, where it equals /optim/master: it is there for
 * weights-only readers (init_from, sample, inspect, export, h5py).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ckpt_format.h"
#include "io/ckpt_store.h"
#include "runtime/comm/comm_mpi.h"
#include "trainer_internal.h"

enum { GROUP_MODEL, GROUP_MASTER, GROUP_M, GROUP_V, N_GROUPS };
static const char *const group_prefix[N_GROUPS] = {"/model/", "/optim/master/", "/optim/m/", "/optim/v/"};

const char *const rt_ckpt_int_attr_keys[RT_CKPT_N_INT_ATTRS] = {"step",
                                                                "tokens",
                                                                "optimizer_steps",
                                                                "world_size",
                                                                "dp",
                                                                "sp",
                                                                "zero_stage",
                                                                "seed",
                                                                "n_params",
                                                                "loader_epoch",
                                                                "loader_cursor",
                                                                "loader_seed",
                                                                "loader_first_window",
                                                                "loader_windows"};

typedef struct {
    rt_ckpt_piece *pieces;
    char (*names)[RT_NAME_LEN + 16];
    int n;
} piece_list;

static void piece_list_free(piece_list *list) {
    free(list->pieces);
    free(list->names);
}

/*
 * One piece per named tensor of each group in groups (a bit mask), covering
 * the flat range [begin, end) of the padded buffer; group g's values are at
 * base[g] + (flat index - base_offset).
 */
static void plan_pieces(piece_list *list, const rt_view_table *table, unsigned groups, size_t begin, size_t end,
                        float *const base[N_GROUPS], size_t base_offset) {
    list->pieces = calloc_check((size_t)N_GROUPS * (size_t)table->count, sizeof *list->pieces);
    list->names = calloc_check((size_t)N_GROUPS * (size_t)table->count, sizeof *list->names);
    list->n = 0;
    for (int g = 0; g < N_GROUPS; g++) {
        if (!(groups & (1u << g))) continue;
        for (int i = 0; i < table->count; i++) {
            const rt_named_view *view = &table->views[i];
            rt_ckpt_piece *p = &list->pieces[list->n];
            snprintf(list->names[list->n], sizeof list->names[0], "%s%s", group_prefix[g], view->name);
            p->name = list->names[list->n];
            p->ndim = view->ndim;
            for (int d = 0; d < view->ndim; d++)
                p->shape[d] = view->shape[d];
            size_t lo = view->offset > begin ? view->offset : begin;
            size_t hi = view->offset + view->numel < end ? view->offset + view->numel : end;
            if (hi > lo) {
                p->offset = lo - view->offset;
                p->count = hi - lo;
                p->data = base[g] + (lo - base_offset);
            } else {
                p->data = base[g]; /* an empty selection: any valid pointer */
            }
            list->n++;
        }
    }
}

static void fill_int_attrs(const rt_trainer *t, rt_ckpt_int_attr ints[RT_CKPT_N_INT_ATTRS]) {
    const rt_loader *loader = &t->train_loader;
    const int64_t values[RT_CKPT_N_INT_ATTRS] = {
        [RT_CKPT_STEP] = t->next_step,
        [RT_CKPT_TOKENS] = t->tokens_seen,
        [RT_CKPT_OPTIMIZER_STEPS] = t->opt.t,
        [RT_CKPT_WORLD_SIZE] = t->world->size,
        [RT_CKPT_DP] = t->cfg.dp,
        [RT_CKPT_SP] = t->cfg.sp,
        [RT_CKPT_ZERO_STAGE] = t->cfg.zero_stage,
        [RT_CKPT_SEED] = (int64_t)t->cfg.seed,
        [RT_CKPT_PARAMS] = (int64_t)t->opt.n_params,
        [RT_CKPT_LOADER_EPOCH] = (int64_t)loader->epoch,
        [RT_CKPT_LOADER_CURSOR] = (int64_t)loader->cursor,
        [RT_CKPT_LOADER_SEED] = (int64_t)loader->seed,
        [RT_CKPT_LOADER_FIRST_WINDOW] = (int64_t)loader->first_window,
        [RT_CKPT_LOADER_WINDOWS] = (int64_t)loader->n_windows,
    };
    for (int i = 0; i < RT_CKPT_N_INT_ATTRS; i++)
        ints[i] = (rt_ckpt_int_attr){.key = rt_ckpt_int_attr_keys[i], .value = values[i]};
}

int rt_trainer_save(rt_trainer *t, const char *path, rt_error *err) {
    const rt_optimizer *opt = &t->opt;
    /* The file split: the padded buffer sharded over every mesh dimension, whatever the ZeRO stage. */
    rt_placement split[RT_MESH_MAX_DIMS];
    for (int d = 0; d < RT_MESH_MAX_DIMS; d++)
        split[d] = rt_shard(0);
    rt_dtensor file_split;
    if (rt_dtensor_init(&file_split, &t->mesh, 1, &opt->padded, split, err)) return -1;
    size_t begin, size;
    rt_dtensor_local_box(&file_split, NULL, &begin, &size);
    if (opt->stage != 0 && (begin != opt->shard_begin || size != opt->shard_size))
        rt_fatal("checkpoint split [%zu, +%zu) differs from the ZeRO shard [%zu, +%zu)", begin, size, opt->shard_begin,
                 opt->shard_size);
    piece_list list;
    /* /model comes from the parameters (offset 0), or at stage 3 from the master shard, which is this rank's
     * part of them; the state arrays start at the shard (0 at stage 0). */
    const int sharded = t->model.params == NULL;
    float *const base[N_GROUPS] = {sharded ? opt->master : t->model.params, opt->master, opt->m, opt->v};
    plan_pieces(&list, &t->model.table, 1u << GROUP_MODEL, begin, begin + size, base, sharded ? opt->shard_begin : 0);
    piece_list state;
    plan_pieces(&state, &t->model.table, ~(1u << GROUP_MODEL), begin, begin + size, base, opt->shard_begin);
    memcpy(list.pieces + list.n, state.pieces, (size_t)state.n * sizeof *state.pieces);
    list.n += state.n;

    rt_ckpt_int_attr ints[RT_CKPT_N_INT_ATTRS];
    fill_int_attrs(t, ints);
    char *config_text = rt_config_to_text(&t->cfg);
    rt_ckpt_text_attr texts[1] = {{.key = "config", .text = config_text}};
    rt_ckpt_attrs attrs = {.texts = texts, .n_texts = 1, .ints = ints, .n_ints = RT_CKPT_N_INT_ATTRS};
    int rc = rt_ckpt_store_write(rt_comm_mpi_handle(t->world), path, list.pieces, list.n, &attrs, err);
    free(config_text);
    piece_list_free(&state);
    piece_list_free(&list);
    if (rc && t->world->rank != 0) err->msg[0] = '\0';
    return rc;
}

/* Reads every attribute (texts malloc'd into *config_text). */
static int peek_attrs(rt_comm *world, const char *path, rt_ckpt_int_attr ints[RT_CKPT_N_INT_ATTRS], char **config_text,
                      rt_error *err) {
    for (int i = 0; i < RT_CKPT_N_INT_ATTRS; i++)
        ints[i] = (rt_ckpt_int_attr){.key = rt_ckpt_int_attr_keys[i]};
    rt_ckpt_text_attr texts[1] = {{.key = "config"}};
    rt_ckpt_attrs attrs = {.texts = texts, .n_texts = 1, .ints = ints, .n_ints = RT_CKPT_N_INT_ATTRS};
    if (rt_ckpt_store_read(rt_comm_mpi_handle(world), path, NULL, 0, &attrs, err)) return -1;
    *config_text = texts[0].text;
    return 0;
}

int rt_checkpoint_peek(rt_comm *world, const char *path, rt_checkpoint_info *info, rt_error *err) {
    memset(info, 0, sizeof *info);
    rt_ckpt_int_attr ints[RT_CKPT_N_INT_ATTRS];
    if (peek_attrs(world, path, ints, &info->config_text, err)) {
        if (world->rank != 0) err->msg[0] = '\0';
        return -1;
    }
    info->step = ints[RT_CKPT_STEP].value;
    info->tokens = ints[RT_CKPT_TOKENS].value;
    info->world_size = ints[RT_CKPT_WORLD_SIZE].value;
    info->dp = ints[RT_CKPT_DP].value;
    info->sp = ints[RT_CKPT_SP].value;
    info->zero_stage = ints[RT_CKPT_ZERO_STAGE].value;
    return 0;
}

void rt_checkpoint_info_free(rt_checkpoint_info *info) {
    free(info->config_text);
    info->config_text = NULL;
}

/* The value of section.key in resolved INI text (rt_config_write's layout), into out; 0 when absent. */
static int find_value(const char *text, const char *section, const char *key, char *out, size_t cap) {
    char current[64] = "";
    for (const char *line = text; line && *line; line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        size_t len = strcspn(line, "\n");
        if (line[0] == '[' && len > 2 && len - 2 < sizeof current) {
            memcpy(current, line + 1, len - 2);
            current[len - 2] = '\0';
            continue;
        }
        size_t key_len = strlen(key);
        if (strcmp(current, section) != 0 || len < key_len + 2 || strncmp(line, key, key_len) != 0 ||
            strncmp(line + key_len, " =", 2) != 0)
            continue;
        const char *value = line + key_len + 2;
        size_t value_len = len - key_len - 2;
        if (value_len > 0 && *value == ' ') value++, value_len--;
        if (value_len >= cap) value_len = cap - 1;
        memcpy(out, value, value_len);
        out[value_len] = '\0';
        return 1;
    }
    return 0;
}

/* Keys that fix what the saved tensors and data position mean. */
static int must_not_change(const char *section, const char *key) {
    if (strcmp(section, "model") == 0) return strcmp(key, "dropout") != 0 && strcmp(key, "init_from") != 0;
    return strcmp(section, "train") == 0 && strcmp(key, "seq_len") == 0;
}

static void append_change(char *changes, size_t cap, const char *name, const char *was, const char *now) {
    size_t used = strlen(changes);
    if (used + 1 >= cap) return;
    snprintf(changes + used, cap - used, "%s%s %s -> %s", used ? ", " : "", name, *was ? was : "\"\"",
             *now ? now : "\"\"");
}

int rt_checkpoint_check_config(const char *path, const char *saved_text, const rt_config *cfg, char *changes,
                               size_t cap, rt_error *err) {
    if (cap) changes[0] = '\0';
    char *now_text = rt_config_to_text(cfg);
    char section[64] = "";
    int rc = 0;
    for (const char *line = now_text; rc == 0 && line && *line;
         line = strchr(line, '\n') ? strchr(line, '\n') + 1 : NULL) {
        size_t len = strcspn(line, "\n");
        if (line[0] == '[' && len > 2 && len - 2 < sizeof section) {
            memcpy(section, line + 1, len - 2);
            section[len - 2] = '\0';
            continue;
        }
        const char *eq = memchr(line, '=', len);
        if (line[0] == ';' || !eq || eq == line) continue;
        char key[64], now[RT_PATH_LEN + 8], was[RT_PATH_LEN + 8];
        size_t key_len = (size_t)(eq - line) - 1;
        if (key_len >= sizeof key) continue;
        memcpy(key, line, key_len);
        key[key_len] = '\0';
        find_value(now_text, section, key, now, sizeof now);
        if (!find_value(saved_text, section, key, was, sizeof was)) {
            /* A key this build knows and the saving one did not: nothing to compare. */
            continue;
        }
        if (strcmp(was, now) == 0 || (strcmp(section, "checkpoint") == 0 && strcmp(key, "resume") == 0)) continue;
        char name[136];
        snprintf(name, sizeof name, "%s.%s", section, key);
        if (must_not_change(section, key))
            rc = rt_fail(err,
                         "%s: saved with %s = %s, this run has %s = %s: the model's shape and family and the "
                         "sequence length cannot change on resume (start a new run with model.init_from = %s to "
                         "take only the weights)",
                         path, name, was, name, now, path);
        else
            append_change(changes, cap, name, was, now);
    }
    free(now_text);
    return rc;
}

int rt_trainer_load(rt_trainer *t, const char *path, char *changes, size_t cap, rt_error *err) {
    rt_ckpt_int_attr ints[RT_CKPT_N_INT_ATTRS];
    char *saved_text = NULL;
    if (peek_attrs(t->world, path, ints, &saved_text, err)) goto fail;
    /* The same on every rank (the attributes are rank 0's): every rank fails alike. */
    int rc = rt_checkpoint_check_config(path, saved_text, &t->cfg, changes, cap, err);
    free(saved_text);
    if (rc) goto fail;
    rt_loader *loader = &t->train_loader;
    if (ints[RT_CKPT_PARAMS].value != (int64_t)t->opt.n_params) {
        rt_fail(err, "%s: holds %" PRId64 " parameters, this model %zu", path, ints[RT_CKPT_PARAMS].value,
                t->opt.n_params);
        goto fail;
    }
    if (ints[RT_CKPT_LOADER_WINDOWS].value != (int64_t)loader->n_windows ||
        ints[RT_CKPT_LOADER_FIRST_WINDOW].value != (int64_t)loader->first_window) {
        rt_fail(err,
                "%s: saved while training on windows [%" PRId64 ", +%" PRId64 ") of the data, this run trains on "
                "[%zu, +%zu): data.train, data.val or data.val_fraction changed, so the position in the data "
                "means nothing here",
                path, ints[RT_CKPT_LOADER_FIRST_WINDOW].value, ints[RT_CKPT_LOADER_WINDOWS].value, loader->first_window,
                loader->n_windows);
        goto fail;
    }
    if (ints[RT_CKPT_STEP].value < 0 || ints[RT_CKPT_STEP].value > INT32_MAX ||
        ints[RT_CKPT_OPTIMIZER_STEPS].value < 0 || ints[RT_CKPT_OPTIMIZER_STEPS].value > INT32_MAX ||
        ints[RT_CKPT_LOADER_CURSOR].value < 0 || ints[RT_CKPT_LOADER_EPOCH].value < 0) {
        rt_fail(err, "%s: a step, optimizer or loader counter is out of range", path);
        goto fail;
    }
    rt_optimizer *opt = &t->opt;
    piece_list list;
    float *const base[N_GROUPS] = {t->model.params, opt->master, opt->m, opt->v};
    unsigned groups = (1u << GROUP_MASTER) | (1u << GROUP_M) | (1u << GROUP_V);
    plan_pieces(&list, &t->model.table, groups, opt->shard_begin, opt->shard_begin + opt->shard_size, base,
                opt->shard_begin);
    rt_model_params_changed(&t->model); /* also when the read fails part way */
    rc = rt_ckpt_store_read(rt_comm_mpi_handle(t->world), path, list.pieces, list.n, NULL, err);
    piece_list_free(&list);
    if (rc) goto fail;
    rt_optimizer_publish_params(opt, t->model.params);
    opt->t = (int)ints[RT_CKPT_OPTIMIZER_STEPS].value;
    t->next_step = (int)ints[RT_CKPT_STEP].value;
    t->tokens_seen = ints[RT_CKPT_TOKENS].value;
    loader->seed = (uint64_t)ints[RT_CKPT_LOADER_SEED].value;
    /* Cannot fail: the split is the saved one and the cursor was within it. */
    if (rt_loader_seek(loader, (uint64_t)ints[RT_CKPT_LOADER_EPOCH].value, (size_t)ints[RT_CKPT_LOADER_CURSOR].value,
                       err))
        goto fail;
    return 0;
fail:
    if (t->world->rank != 0) err->msg[0] = '\0';
    return -1;
}
