/* checkpoint.c: HDF5 checkpoints: named views as /model/<name> datasets, config and step as root attributes.
 *
 * Layout (version 1; see checkpoint.h):
 *   /              format = "ringtrain-checkpoint", version = 1 (int32), step (int64), config (string)
 *   /model/<name>  fp32, the view's global shape, chunked, Fletcher32 checksum per chunk
 * Chunks cover the whole tensor when it fits in CHUNK_MAX_BYTES; larger
 * tensors are cut by halving the leading dimensions until a chunk fits, so a
 * checksum failure points at a few MiB and readers never load a whole
 * embedding matrix to verify one slice.
 * Strings are fixed-length, NUL-terminated UTF-8; readers also accept
 * variable-length strings (what h5py writes). The file uses the HDF5 1.8
 * object format (low bound V18) so attributes larger than 64 KiB (a long
 * config) go to dense storage instead of failing.
 *
 * Atomicity: everything is written to PATH.tmp, which is closed, fsynced and
 * renamed over PATH. On any failure every HDF5 object is closed and PATH.tmp
 * removed. Every helper closes the ids it opened on every path, so the file
 * really closes at H5Fclose.
 *
 * Extension (collective multi-rank checkpoints): the file access property
 * list is built in one place (make_fapl) where MPI-IO will be set, and views
 * are written/read per group by write_views/read_views, which will take a
 * hyperslab of the global shape per rank and gain /optim/... groups.
 */
#include "checkpoint.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define CHUNK_MAX_BYTES ((size_t)4 << 20)
#define MODEL_GROUP "model"

/* ---- error reporting ---- */

typedef struct {
    char text[400];
} h5_detail;

/* Keeps the innermost (most specific) entry of HDF5's error stack. */
static herr_t walk_innermost(unsigned n, const H5E_error2_t *entry, void *client) {
    if (n == 0) {
        h5_detail *detail = client;
        snprintf(detail->text, sizeof detail->text, "%s (in %s)", entry->desc ? entry->desc : "no description",
                 entry->func_name ? entry->func_name : "?");
    }
    return 0;
}

/* "PATH: HDF5 <op> failed: <innermost HDF5 message>". */
static int h5_fail(rt_error *err, const char *path, const char *op) {
    h5_detail detail = {"no HDF5 error recorded"};
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, walk_innermost, &detail);
    return rt_fail(err, "%s: HDF5 %s failed: %s", path, op, detail.text);
}

static void quiet_hdf5(void) { H5Eset_auto2(H5E_DEFAULT, NULL, NULL); }

static hid_t make_fapl(void) {
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl >= 0 && H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST) < 0) {
        H5Pclose(fapl);
        return -1;
    }
    return fapl;
}

static const char *format_shape(int ndim, const hsize_t *dims, char out[128]) {
    size_t used = (size_t)snprintf(out, 128, "(");
    for (int d = 0; d < ndim && used < 128; d++)
        used += (size_t)snprintf(out + used, 128 - used, "%s%llu", d ? ", " : "", (unsigned long long)dims[d]);
    if (used < 128) snprintf(out + used, 128 - used, ")");
    return out;
}

/* ---- writing ---- */

static int write_string_attr(hid_t obj, const char *name, const char *value, const char *path, rt_error *err) {
    hid_t type = H5Tcopy(H5T_C_S1), space = H5Screate(H5S_SCALAR), attr = -1;
    int ok = type >= 0 && space >= 0 && H5Tset_size(type, strlen(value) + 1) >= 0 &&
             H5Tset_strpad(type, H5T_STR_NULLTERM) >= 0 && H5Tset_cset(type, H5T_CSET_UTF8) >= 0 &&
             (attr = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(attr, type, value) >= 0;
    char op[96];
    snprintf(op, sizeof op, "writing string attribute '%s'", name);
    int rc = ok ? 0 : h5_fail(err, path, op);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    return rc;
}

static int write_int_attr(hid_t obj, const char *name, hid_t file_type, int64_t value, const char *path,
                          rt_error *err) {
    hid_t space = H5Screate(H5S_SCALAR), attr = -1;
    int ok = space >= 0 && (attr = H5Acreate2(obj, name, file_type, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(attr, H5T_NATIVE_INT64, &value) >= 0;
    char op[96];
    snprintf(op, sizeof op, "writing integer attribute '%s'", name);
    int rc = ok ? 0 : h5_fail(err, path, op);
    if (attr >= 0) H5Aclose(attr);
    if (space >= 0) H5Sclose(space);
    return rc;
}

/* Whole tensor, or the leading dimensions halved until one chunk holds <= CHUNK_MAX_BYTES. */
static void choose_chunk(int ndim, const hsize_t *dims, hsize_t *chunk) {
    size_t max_elems = CHUNK_MAX_BYTES / sizeof(float), elems = 1;
    for (int d = 0; d < ndim; d++) {
        chunk[d] = dims[d];
        elems *= (size_t)dims[d];
    }
    for (int d = 0; d < ndim && elems > max_elems; d++) {
        while (elems > max_elems && chunk[d] > 1) {
            elems /= (size_t)chunk[d];
            chunk[d] = (chunk[d] + 1) / 2;
            elems *= (size_t)chunk[d];
        }
    }
}

/* One fp32 dataset /<group>/<name> per view, filled from data + view offset. */
static int write_views(hid_t file, const char *group, const rt_view_table *table, const float *data, const char *path,
                       rt_error *err) {
    hid_t lcpl = H5Pcreate(H5P_LINK_CREATE);
    if (lcpl < 0 || H5Pset_create_intermediate_group(lcpl, 1) < 0) {
        h5_fail(err, path, "H5Pset_create_intermediate_group");
        if (lcpl >= 0) H5Pclose(lcpl);
        return -1;
    }
    int rc = 0;
    for (int v = 0; v < table->count && rc == 0; v++) {
        const rt_named_view *view = &table->views[v];
        char name[RT_NAME_LEN + 64], op[RT_NAME_LEN + 128];
        snprintf(name, sizeof name, "/%s/%s", group, view->name);
        hsize_t dims[RT_MAX_DIMS], chunk[RT_MAX_DIMS];
        for (int d = 0; d < view->ndim; d++)
            dims[d] = view->shape[d];
        choose_chunk(view->ndim, dims, chunk);

        hid_t space = H5Screate_simple(view->ndim, dims, NULL);
        hid_t dcpl = H5Pcreate(H5P_DATASET_CREATE), dset = -1;
        int ok = space >= 0 && dcpl >= 0;
        if (ok && view->numel > 0) /* chunks (and so checksums) need a non-empty shape */
            ok = H5Pset_chunk(dcpl, view->ndim, chunk) >= 0 && H5Pset_fletcher32(dcpl) >= 0;
        if (!ok) snprintf(op, sizeof op, "setting up dataset %s", name);
        if (ok) {
            dset = H5Dcreate2(file, name, H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT);
            ok = dset >= 0;
            if (!ok) snprintf(op, sizeof op, "H5Dcreate2 of %s", name);
        }
        if (ok && view->numel > 0) {
            ok = H5Dwrite(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data + view->offset) >= 0;
            if (!ok) snprintf(op, sizeof op, "H5Dwrite of %s", name);
        }
        if (!ok) rc = h5_fail(err, path, op);
        if (dset >= 0) H5Dclose(dset);
        if (dcpl >= 0) H5Pclose(dcpl);
        if (space >= 0) H5Sclose(space);
    }
    H5Pclose(lcpl);
    return rc;
}

static int fsync_file(const char *path, rt_error *err) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return rt_fail(err, "%s: cannot reopen to fsync: %s", path, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : rt_fail(err, "%s: fsync failed: %s", path, strerror(errno));
    close(fd);
    return rc;
}

int rt_checkpoint_write(const char *path, const rt_view_table *table, const float *params, const char *config_text,
                        int64_t step, rt_error *err) {
    quiet_hdf5();
    char tmp_path[1100];
    if ((size_t)snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path) >= sizeof tmp_path)
        return rt_fail(err, "%s: path too long", path);
    hid_t fapl = make_fapl();
    if (fapl < 0) return h5_fail(err, path, "creating the file access property list");
    hid_t file = H5Fcreate(tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl);
    if (file < 0) { /* report before any other HDF5 call clears the error stack */
        char op[1200];
        snprintf(op, sizeof op, "H5Fcreate of %s", tmp_path);
        h5_fail(err, path, op);
        H5Pclose(fapl);
        return -1;
    }
    H5Pclose(fapl);
    int rc = write_string_attr(file, "format", RT_CHECKPOINT_FORMAT, path, err);
    if (rc == 0) rc = write_int_attr(file, "version", H5T_STD_I32LE, RT_CHECKPOINT_VERSION, path, err);
    if (rc == 0) rc = write_int_attr(file, "step", H5T_STD_I64LE, step, path, err);
    if (rc == 0) rc = write_string_attr(file, "config", config_text ? config_text : "", path, err);
    if (rc == 0) rc = write_views(file, MODEL_GROUP, table, params, path, err);
    if (H5Fclose(file) < 0 && rc == 0) rc = h5_fail(err, path, "H5Fclose (flushing the file)");
    if (rc == 0) rc = fsync_file(tmp_path, err);
    if (rc == 0 && rename(tmp_path, path) != 0)
        rc = rt_fail(err, "%s: cannot rename %s into place: %s", path, tmp_path, strerror(errno));
    if (rc != 0) unlink(tmp_path);
    return rc;
}

/* ---- reading ---- */

/* Reads a scalar string attribute (fixed or variable length) into a malloc'd string. */
static int read_string_attr(hid_t obj, const char *name, char **out, const char *path, rt_error *err) {
    *out = NULL;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return rt_fail(err, "%s: not a ringtrain checkpoint: no '%s' attribute", path, name);
    hid_t type = H5Aget_type(attr), mem_type = -1; /* the memory type takes the stored character set */
    int rc = 0;
    if (type < 0 || H5Tget_class(type) != H5T_STRING) {
        rc = rt_fail(err, "%s: attribute '%s' is not a string", path, name);
    } else if (H5Tis_variable_str(type) > 0) {
        char *value = NULL;
        mem_type = H5Tcopy(H5T_C_S1);
        if (mem_type < 0 || H5Tset_size(mem_type, H5T_VARIABLE) < 0 || H5Tset_cset(mem_type, H5Tget_cset(type)) < 0 ||
            H5Aread(attr, mem_type, &value) < 0) {
            rc = h5_fail(err, path, "reading a string attribute");
        } else {
            size_t len = value ? strlen(value) : 0;
            *out = malloc_check(len + 1);
            memcpy(*out, value ? value : "", len + 1);
            H5free_memory(value);
        }
    } else {
        size_t size = H5Tget_size(type);
        char *value = calloc_check(size + 1, 1);
        mem_type = H5Tcopy(H5T_C_S1);
        if (mem_type < 0 || H5Tset_size(mem_type, size) < 0 || H5Tset_cset(mem_type, H5Tget_cset(type)) < 0 ||
            H5Aread(attr, mem_type, value) < 0) {
            free(value);
            rc = h5_fail(err, path, "reading a string attribute");
        } else {
            *out = value; /* calloc'd one past the stored size, so always terminated */
        }
    }
    if (mem_type >= 0) H5Tclose(mem_type);
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return rc;
}

static int read_int_attr(hid_t obj, const char *name, int64_t *out, const char *path, rt_error *err) {
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return rt_fail(err, "%s: checkpoint has no '%s' attribute", path, name);
    hid_t type = H5Aget_type(attr);
    int rc = 0;
    if (type < 0 || H5Tget_class(type) != H5T_INTEGER)
        rc = rt_fail(err, "%s: attribute '%s' is not an integer", path, name);
    else if (H5Aread(attr, H5T_NATIVE_INT64, out) < 0)
        rc = h5_fail(err, path, "reading an integer attribute");
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return rc;
}

/* Opens PATH read-only and checks it is a ringtrain checkpoint of a version this build reads. */
static hid_t open_checkpoint(const char *path, rt_error *err) {
    quiet_hdf5();
    if (access(path, R_OK) != 0) {
        rt_fail(err, "%s: cannot open checkpoint: %s", path, strerror(errno));
        return -1;
    }
    if (H5Fis_hdf5(path) <= 0) {
        rt_fail(err, "%s: not an HDF5 file (expected a ringtrain checkpoint)", path);
        return -1;
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT);
    if (file < 0) {
        h5_fail(err, path, "H5Fopen");
        return -1;
    }
    char *format = NULL;
    int64_t version = 0;
    int rc = read_string_attr(file, "format", &format, path, err);
    if (rc == 0 && strcmp(format, RT_CHECKPOINT_FORMAT) != 0)
        rc = rt_fail(err, "%s: not a ringtrain checkpoint: format attribute is '%.100s', expected '%s'", path, format,
                     RT_CHECKPOINT_FORMAT);
    if (rc == 0) rc = read_int_attr(file, "version", &version, path, err);
    if (rc == 0 && version != RT_CHECKPOINT_VERSION)
        rc = rt_fail(err, "%s: checkpoint version %lld, this build reads version %d", path, (long long)version,
                     RT_CHECKPOINT_VERSION);
    free(format);
    if (rc != 0) {
        H5Fclose(file);
        return -1;
    }
    return file;
}

int rt_checkpoint_read_meta(const char *path, char **config_text, int64_t *step, rt_error *err) {
    if (config_text) *config_text = NULL;
    hid_t file = open_checkpoint(path, err);
    if (file < 0) return -1;
    int64_t stored_step = 0;
    char *config = NULL;
    int rc = read_int_attr(file, "step", &stored_step, path, err);
    if (rc == 0) rc = read_string_attr(file, "config", &config, path, err);
    H5Fclose(file);
    if (rc != 0) {
        free(config);
        return -1;
    }
    if (step) *step = stored_step;
    if (config_text)
        *config_text = config;
    else
        free(config);
    return 0;
}

/* Whether every link along "/a/b/c" exists (H5Lexists needs each parent to exist). */
static int link_path_exists(hid_t file, const char *name) {
    char prefix[RT_NAME_LEN + 64];
    size_t len = strlen(name);
    if (len >= sizeof prefix) return 0;
    for (size_t i = 1; i <= len; i++) {
        if (i < len && name[i] != '/') continue;
        memcpy(prefix, name, i);
        prefix[i] = '\0';
        if (H5Lexists(file, prefix, H5P_DEFAULT) <= 0) return 0;
    }
    return 1;
}

/* Reads /<group>/<name> of every view into data + view offset, checking shape and type first. */
static int read_views(hid_t file, const char *group, const rt_view_table *table, float *data, const char *path,
                      rt_error *err) {
    for (int v = 0; v < table->count; v++) {
        const rt_named_view *view = &table->views[v];
        char name[RT_NAME_LEN + 64];
        snprintf(name, sizeof name, "/%s/%s", group, view->name);
        if (!link_path_exists(file, name))
            return rt_fail(err, "%s: tensor %s missing: no dataset %s", path, view->name, name);
        hid_t dset = H5Dopen2(file, name, H5P_DEFAULT);
        if (dset < 0) {
            char op[RT_NAME_LEN + 96];
            snprintf(op, sizeof op, "H5Dopen2 of %s", name);
            return h5_fail(err, path, op);
        }
        hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
        hsize_t expected[RT_MAX_DIMS], found[RT_MAX_DIMS] = {0};
        for (int d = 0; d < view->ndim; d++)
            expected[d] = view->shape[d];
        int found_ndim = space >= 0 ? H5Sget_simple_extent_ndims(space) : -1;
        int same = found_ndim == view->ndim;
        if (found_ndim >= 0 && found_ndim <= RT_MAX_DIMS) H5Sget_simple_extent_dims(space, found, NULL);
        for (int d = 0; same && d < view->ndim; d++)
            same = found[d] == expected[d];

        int rc = 0;
        if (!same) {
            char want[128], got[128];
            if (found_ndim < 0 || found_ndim > RT_MAX_DIMS)
                snprintf(got, sizeof got, "a %d-dimensional space", found_ndim);
            else
                format_shape(found_ndim, found, got);
            rc = rt_fail(err, "%s: tensor %s: expected shape %s, found %s", path, view->name,
                         format_shape(view->ndim, expected, want), got);
        } else if (type < 0 || H5Tget_class(type) != H5T_FLOAT) {
            rc = rt_fail(err, "%s: tensor %s: expected a floating-point dataset, found another type", path, view->name);
        } else if (view->numel > 0 &&
                   H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data + view->offset) < 0) {
            char op[3 * RT_NAME_LEN + 192];
            snprintf(op, sizeof op, "H5Dread of tensor %s (%s)", view->name, name);
            rc = h5_fail(err, path, op);
        }
        if (type >= 0) H5Tclose(type);
        if (space >= 0) H5Sclose(space);
        H5Dclose(dset);
        if (rc != 0) return rc;
    }
    return 0;
}

int rt_checkpoint_read_params(const char *path, const rt_view_table *table, float *params, rt_error *err) {
    hid_t file = open_checkpoint(path, err);
    if (file < 0) return -1;
    int rc = read_views(file, MODEL_GROUP, table, params, path, err);
    H5Fclose(file);
    return rc;
}
