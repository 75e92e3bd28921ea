/*
 * inspect.c: `ringtrain inspect FILE`: a checkpoint (or model.h5) described and verified.
 *
 * What it prints comes from the file alone, never from a config or a model: the root attributes (format,
 * version, step and the resolved config that every ringtrain file has; tokens, optimizer steps, the saved
 * layout and the data position that only checkpoints have), then every dataset anywhere in the file
 * (/model, /optim/master, /optim/m, /optim/v) with its shape and L2 norm.
 *
 * Verification is reading every dataset from its first element to its last. A checkpoint's datasets carry
 * block checksums (io/block_sum.h), summed here over the values as they are read and compared at the end;
 * a model.h5's are chunked with HDF5's Fletcher32 filter, which HDF5 checks whenever it reads a chunk.
 * Datasets are read in slabs of whole rows (at most SLAB_ELEMS values at a time), so memory stays small
 * whatever the tensor; a slab that cuts a chunk reads that chunk twice, checked both times. The norm is
 * accumulated in double over the values converted exactly from fp32.
 *
 * Everything read is checked first, as io/model_file.c does for the same files: only hard links (a soft or
 * external link could lead to another file), bounded walk (hard-link cycles), float datasets whose data
 * lies in this file (no external raw data, no virtual datasets), chunks no larger than their dataset, and
 * at least numel * element-size bytes stored, so the work is bounded by the file's size.
 *
 * Dataset names are sorted naturally ("layers.2" before "layers.10"), so the table reads in layer order.
 */
#include "inspect.h"

#include <ctype.h>
#include <hdf5.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/block_sum.h"
#include "io/h5_shape.h"
#include "io/model_file.h"
#include "runtime/train/ckpt_format.h"

#define SLAB_ELEMS ((size_t)1 << 22) /* 16 MiB of floats */
#define MAX_LINKS 1000000            /* links visited in all: bounds the walk through hard-link cycles */
#define MAX_DEPTH 32                 /* nested groups */
#define NAME_MAX_LEN 1024            /* a dataset's full path */

/* ---- HDF5 errors as one line ---- */

/* Keeps the innermost (most specific) entry of HDF5's error stack, on one line. */
static herr_t keep_innermost(unsigned n, const H5E_error2_t *entry, void *client) {
    if (n != 0) return 0;
    char *text = client;
    snprintf(text, 300, "%s (in %s)", entry->desc ? entry->desc : "no description",
             entry->func_name ? entry->func_name : "?");
    for (char *c = text; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
    return 0;
}

/* "PATH: <what>: <innermost HDF5 message>". */
static int h5_fail(rt_error *err, const char *path, const char *what) {
    char detail[300] = "no HDF5 error recorded";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, detail);
    return rt_fail(err, "%s: %s: %s", path, what, detail);
}

/* ---- root attributes ---- */

/* A single integer attribute of the root group. */
static int read_int_attr(hid_t file, const char *key, int64_t *value, const char *path, rt_error *err) {
    hid_t attr = H5Aopen(file, key, H5P_DEFAULT);
    if (attr < 0) return rt_fail(err, "%s: checkpoint has no '%s' attribute", path, key);
    hid_t type = H5Aget_type(attr), space = H5Aget_space(attr);
    int ok = type >= 0 && space >= 0 && H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) <= 8 &&
             H5Sget_simple_extent_npoints(space) == 1;
    int rc = ok ? 0 : rt_fail(err, "%s: attribute '%s': expected a single integer", path, key);
    if (rc == 0 && H5Aread(attr, H5T_NATIVE_INT64, value) < 0) rc = h5_fail(err, path, key);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return rc;
}

/* ---- collecting the datasets ---- */

typedef struct {
    char **names; /* full paths, malloc'd */
    int count, capacity;
    long links;
    int depth;
    const char *path;
    rt_error *err;
    int reported; /* a callback wrote err */
} dataset_list;

/* What visit_link gets: the list and the full path of the group being walked ("" for the root). */
typedef struct {
    dataset_list *list;
    const char *prefix;
} walk_ctx;

static herr_t visit_link(hid_t group, const char *name, const H5L_info_t *info, void *client);

/* Walks the links of group (whose full path is prefix) in name order. */
static int walk_group(hid_t group, const char *prefix, dataset_list *list) {
    walk_ctx ctx = {list, prefix};
    hsize_t index = 0;
    list->reported = 0;
    herr_t walked = H5Literate(group, H5_INDEX_NAME, H5_ITER_INC, &index, visit_link, &ctx);
    if (walked < 0) {
        if (list->reported) return -1;
        char what[NAME_MAX_LEN + 32];
        snprintf(what, sizeof what, "listing group %s", prefix[0] ? prefix : "/");
        return h5_fail(list->err, list->path, what);
    }
    return 0;
}

static herr_t visit_link(hid_t group, const char *name, const H5L_info_t *info, void *client) {
    walk_ctx *ctx = client;
    dataset_list *list = ctx->list;
    char full[NAME_MAX_LEN];
    int rc = 0;
    if ((size_t)snprintf(full, sizeof full, "%s/%s", ctx->prefix, name) >= sizeof full)
        rc = rt_fail(list->err, "%s: %.200s...: a name longer than %d bytes", list->path, full, NAME_MAX_LEN);
    else if (++list->links > MAX_LINKS)
        rc = rt_fail(list->err, "%s: more than %d links, expected one dataset per tensor", list->path, MAX_LINKS);
    else if (info->type != H5L_TYPE_HARD)
        rc = rt_fail(list->err, "%s: %s: expected a dataset or group in this file, found a soft or external link",
                     list->path, full);
    if (rc != 0) {
        list->reported = 1;
        return -1;
    }
    hid_t object = H5Oopen(group, name, H5P_DEFAULT);
    H5I_type_t kind = object >= 0 ? H5Iget_type(object) : H5I_BADID;
    if (kind == H5I_DATASET) {
        if (list->count == list->capacity) {
            list->capacity = list->capacity ? 2 * list->capacity : 64;
            char **grown = realloc(list->names, (size_t)list->capacity * sizeof *grown);
            if (!grown) rt_fatal("out of host memory listing %d datasets", list->capacity);
            list->names = grown;
        }
        list->names[list->count] = malloc_check(strlen(full) + 1);
        strcpy(list->names[list->count++], full);
    } else if (kind == H5I_GROUP && list->depth < MAX_DEPTH) {
        list->depth++;
        rc = walk_group(object, full, list);
        list->depth--;
    } else {
        rc = rt_fail(list->err, "%s: %s: expected a dataset or group, found %s", list->path, full,
                     kind == H5I_GROUP ? "groups nested too deep" : "another kind of object");
    }
    if (object >= 0) H5Oclose(object);
    list->reported = rc != 0;
    return rc;
}

/* strcmp, except that runs of digits compare as numbers: "layers.2.x" < "layers.10.x". */
static int natural_cmp(const char *a, const char *b) {
    while (*a && *b) {
        if (isdigit((unsigned char)*a) && isdigit((unsigned char)*b)) {
            while (*a == '0')
                a++;
            while (*b == '0')
                b++;
            size_t na = strspn(a, "0123456789"), nb = strspn(b, "0123456789");
            if (na != nb) return na < nb ? -1 : 1;
            int c = strncmp(a, b, na);
            if (c) return c;
            a += na, b += nb;
        } else {
            if (*a != *b) return (unsigned char)*a < (unsigned char)*b ? -1 : 1;
            a++, b++;
        }
    }
    return (unsigned char)*a - (unsigned char)*b;
}

static int compare_names(const void *x, const void *y) { return natural_cmp(*(char *const *)x, *(char *const *)y); }

/* ---- one dataset ---- */

typedef struct {
    int ndim;
    hsize_t dims[H5S_MAX_RANK];
    double norm;
    int checksummed; /* has block checksums or the Fletcher32 filter, and the read just verified them */
} dataset_report;

/* Checks the storage of dset (name) before reading it: see the top of the file. */
static int check_storage(hid_t dset, hid_t type, const dataset_report *r, size_t numel, const char *name,
                         const char *path, int *checksummed, rt_error *err) {
    hid_t dcpl = H5Dget_create_plist(dset);
    if (dcpl < 0) return h5_fail(err, path, name);
    H5D_layout_t layout = H5Pget_layout(dcpl);
    int rc = 0;
    if (layout != H5D_CONTIGUOUS && layout != H5D_CHUNKED && layout != H5D_COMPACT)
        rc = rt_fail(err, "%s: %s: expected contiguous, chunked or compact storage, found layout %d", path, name,
                     (int)layout);
    else if (H5Pget_external_count(dcpl) != 0)
        rc = rt_fail(err, "%s: %s: expected its data inside the file, found external files", path, name);
    if (rc == 0 && layout == H5D_CHUNKED) {
        hsize_t chunk[H5S_MAX_RANK] = {0};
        if (H5Pget_chunk(dcpl, H5S_MAX_RANK, chunk) != r->ndim)
            rc = rt_fail(err, "%s: %s: expected %d-dimensional chunks", path, name, r->ndim);
        for (int d = 0; rc == 0 && d < r->ndim; d++)
            if (chunk[d] == 0 || chunk[d] > r->dims[d])
                rc = rt_fail(err, "%s: %s: chunk dimension %d is %llu, expected 1..%llu (the dataset's)", path, name, d,
                             (unsigned long long)chunk[d], (unsigned long long)r->dims[d]);
    }
    unsigned flags = 0, filter_config = 0;
    size_t n_values = 0;
    *checksummed = layout == H5D_CHUNKED && H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, &flags, &n_values, NULL,
                                                                 0, NULL, &filter_config) >= 0;
    H5Pclose(dcpl);
    /* Data that is not in the file (unallocated, or compressed) is refused: the reading below is then bounded
     * by the file's size. */
    double wanted = (double)numel * (double)H5Tget_size(type);
    if (rc == 0 && wanted > (double)H5Dget_storage_size(dset))
        rc = rt_fail(err, "%s: %s: expected %.0f bytes of stored data for its %zu elements, found %llu", path, name,
                     wanted, numel, (unsigned long long)H5Dget_storage_size(dset));
    return rc;
}

/* Reads dataset name whole, slab by slab, into its norm: every chunk passes HDF5's checksum on the way. */
static int read_dataset(hid_t file, const char *name, dataset_report *r, const char *path, rt_error *err) {
    memset(r, 0, sizeof *r);
    hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
    if (dset < 0) return h5_fail(err, path, name);
    hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
    r->ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
    int rc = 0;
    if (r->ndim < 0 || r->ndim > H5S_MAX_RANK || type < 0)
        rc = rt_fail(err, "%s: %s: unreadable dataspace or type", path, name);
    else if (H5Tget_class(type) != H5T_FLOAT)
        rc = rt_fail(err, "%s: %s: expected a float dataset", path, name);
    size_t numel = 1, row = 1, rows = 1;
    if (rc == 0) {
        H5Sget_simple_extent_dims(space, r->dims, NULL);
        for (int d = 0; d < r->ndim; d++) {
            if (__builtin_mul_overflow(numel, (size_t)r->dims[d], &numel))
                rc = rt_fail(err, "%s: %s: element count overflows", path, name);
            if (d > 0 && rc == 0) row *= (size_t)r->dims[d];
        }
        rows = r->ndim > 0 ? (size_t)r->dims[0] : 1;
    }
    if (rc == 0 && numel > 0) rc = check_storage(dset, type, r, numel, name, path, &r->checksummed, err);
    if (rc == 0 && numel == 0) r->checksummed = 1; /* nothing stored, nothing to verify */
    /* a checkpoint's datasets carry block checksums (io/block_sum.h), summed here over every slab */
    size_t block = 0;
    uint64_t *stored = NULL, *sums = NULL;
    if (rc == 0 && numel > 0 && H5Aexists(dset, "block_checksums") > 0) {
        rc = rt_block_sum_read_attrs(dset, numel, &block, &stored, path, name, err);
        if (rc == 0) sums = calloc_check(rt_block_sum_n_blocks(numel, block), sizeof *sums);
    }
    size_t slab_rows = row >= SLAB_ELEMS ? 1 : SLAB_ELEMS / row;
    float *values =
        rc == 0 && numel > 0 ? malloc_check((slab_rows < rows ? slab_rows : rows) * row * sizeof *values) : NULL;
    double sum_sq = 0.0;
    for (size_t first = 0; rc == 0 && numel > 0 && first < rows; first += slab_rows) {
        size_t n_rows = rows - first < slab_rows ? rows - first : slab_rows;
        hsize_t start[H5S_MAX_RANK] = {0}, count[H5S_MAX_RANK], mem_count = (hsize_t)(n_rows * row);
        for (int d = 0; d < r->ndim; d++)
            count[d] = r->dims[d];
        if (r->ndim > 0) start[0] = first, count[0] = n_rows;
        hid_t mem = H5Screate_simple(1, &mem_count, NULL);
        int ok =
            mem >= 0 && (r->ndim == 0 || H5Sselect_hyperslab(space, H5S_SELECT_SET, start, NULL, count, NULL) >= 0);
        if (!ok) rc = h5_fail(err, path, name);
        if (ok && H5Dread(dset, H5T_NATIVE_FLOAT, mem, r->ndim ? space : H5S_ALL, H5P_DEFAULT, values) < 0) {
            char what[NAME_MAX_LEN + 64];
            snprintf(what, sizeof what, "%s: reading rows %zu..%zu failed", name, first, first + n_rows - 1);
            rc = h5_fail(err, path, what);
        }
        if (mem >= 0) H5Sclose(mem);
        for (size_t i = 0; rc == 0 && i < n_rows * row; i++)
            sum_sq += (double)values[i] * (double)values[i];
        if (rc == 0 && sums) rt_block_sum_add(sums, 0, block, first * row, values, n_rows * row);
    }
    if (rc == 0 && sums) {
        rc = rt_block_sum_verify(sums, stored, 0, rt_block_sum_n_blocks(numel, block), block, numel, path, name, err);
        r->checksummed = 1;
    }
    free(sums);
    free(stored);
    free(values);
    r->norm = sqrt(sum_sq);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    H5Dclose(dset);
    return rc;
}

/* ---- the report ---- */

static void print_config(FILE *out, const char *config) {
    fputs("config:\n", out);
    for (const char *line = config; *line;) {
        size_t len = strcspn(line, "\n");
        fprintf(out, len ? "    %.*s\n" : "%.*s\n", (int)len, line);
        line += len + (line[len] == '\n');
    }
}

static void print_training_state(FILE *out, const int64_t a[RT_CKPT_N_INT_ATTRS]) {
    fprintf(out, "tokens: %lld\n", (long long)a[RT_CKPT_TOKENS]);
    fprintf(out, "optimizer steps: %lld\n", (long long)a[RT_CKPT_OPTIMIZER_STEPS]);
    fprintf(out, "saved layout: world size %lld (dp %lld x sp %lld), zero stage %lld\n",
            (long long)a[RT_CKPT_WORLD_SIZE], (long long)a[RT_CKPT_DP], (long long)a[RT_CKPT_SP],
            (long long)a[RT_CKPT_ZERO_STAGE]);
    fprintf(out, "parameters: %lld, seed %lld\n", (long long)a[RT_CKPT_PARAMS], (long long)a[RT_CKPT_SEED]);
    fprintf(out, "data: epoch %lld, cursor %lld of %lld windows from window %lld, loader seed %lld\n",
            (long long)a[RT_CKPT_LOADER_EPOCH], (long long)a[RT_CKPT_LOADER_CURSOR],
            (long long)a[RT_CKPT_LOADER_WINDOWS], (long long)a[RT_CKPT_LOADER_FIRST_WINDOW],
            (long long)a[RT_CKPT_LOADER_SEED]);
}

/* Reads and prints every dataset of list; counts those with checksums. */
static int report_datasets(FILE *out, hid_t file, const dataset_list *list, int *verified, const char **unchecked,
                           const char *path, rt_error *err) {
    int width = 0;
    for (int i = 0; i < list->count; i++)
        if ((int)strlen(list->names[i]) > width) width = (int)strlen(list->names[i]);
    fprintf(out, "datasets (name, shape, L2 norm):\n");
    *verified = 0;
    *unchecked = NULL;
    for (int i = 0; i < list->count; i++) {
        dataset_report r;
        if (read_dataset(file, list->names[i], &r, path, err)) return -1;
        char shape[128];
        rt_h5_format_shape(r.ndim, r.dims, shape);
        fprintf(out, "  %-*s  %-14s  norm %.9g%s\n", width, list->names[i], shape, r.norm,
                r.checksummed ? "" : "  (no checksum)");
        if (r.checksummed)
            ++*verified;
        else if (!*unchecked)
            *unchecked = list->names[i];
    }
    return 0;
}

int rt_inspect(const char *path, FILE *out, rt_error *err) {
    /* Regular file, HDF5, format and version, config and step: the checks every ringtrain reader makes. */
    char *config = NULL;
    int64_t step = 0;
    if (rt_model_file_read_meta(path, &config, &step, err)) return -1;
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    hid_t file =
        fapl >= 0 && H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) >= 0 ? H5Fopen(path, H5F_ACC_RDONLY, fapl) : -1;
    int rc = file < 0 ? h5_fail(err, path, "opening the file") : 0;
    if (fapl >= 0) H5Pclose(fapl);

    /* Checkpoints carry the training state; a model.h5 only the weights. */
    int64_t attrs[RT_CKPT_N_INT_ATTRS] = {0};
    int is_checkpoint = rc == 0 && H5Aexists(file, "optimizer_steps") > 0;
    for (int i = RT_CKPT_TOKENS; is_checkpoint && rc == 0 && i < RT_CKPT_N_INT_ATTRS; i++)
        rc = read_int_attr(file, rt_ckpt_int_attr_keys[i], &attrs[i], path, err);
    dataset_list list = {.path = path, .err = err};
    if (rc == 0) rc = walk_group(file, "", &list);
    if (rc == 0 && list.count > 0) qsort(list.names, (size_t)list.count, sizeof *list.names, compare_names);

    if (rc == 0) {
        fprintf(out, "%s: %s version %d, %s\n", path, RT_CHECKPOINT_FORMAT, RT_CHECKPOINT_VERSION,
                is_checkpoint ? "a training checkpoint (weights and optimizer state)"
                              : "weights only (model.h5: /model, no optimizer state or data position)");
        fprintf(out, "step: %lld\n", (long long)step);
        if (is_checkpoint) print_training_state(out, attrs);
        print_config(out, config);
    }
    int verified = 0;
    const char *unchecked = NULL;
    if (rc == 0) rc = report_datasets(out, file, &list, &verified, &unchecked, path, err);
    if (rc == 0 && verified == list.count)
        fprintf(out, "checksums: all %d datasets verified\n", list.count);
    else if (rc == 0)
        fprintf(out, "checksums: %d of %d datasets verified; %d have no checksum (the first: %s)\n", verified,
                list.count, list.count - verified, unchecked);
    for (int i = 0; i < list.count; i++)
        free(list.names[i]);
    free(list.names);
    free(config);
    if (file >= 0 && H5Fclose(file) < 0 && rc == 0) rc = h5_fail(err, path, "closing the file");
    return rc;
}
