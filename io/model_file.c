/* model_file.c: a model's weights in HDF5: named views as /model/<name> datasets, config and step as root attributes.
 *
 * Layout (version 2; see model_file.h):
 *   /              format = "ringtrain-checkpoint", version = 2 (int32), step (int64), config (string)
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
 * Atomicity: HDF5 builds the file in memory (the core driver, no backing
 * store), and ringtrain writes the image to PATH.tmp itself: every write,
 * the fsync and the close checked, then a rename over PATH. On any failure
 * PATH.tmp is removed and PATH is left as it was. HDF5 never does file I/O
 * here because in HDF5 1.10 a flush that fails (a full disk) leaves the file
 * half-closed: every later close fails, and library shutdown (in
 * MPI_Finalize, or at exit) crashes on the stale id. Every helper closes the
 * ids it opened on every path, so the file really closes at H5Fclose.
 *
 * Training checkpoints, written by every rank together through MPI-IO, are
 * io/ckpt_store.c; they share this layout's root attributes and /model.
 */
#include "model_file.h"
#include "float_bits.h"
#include "h5_shape.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define CHUNK_MAX_BYTES ((size_t)4 << 20)
#define MODEL_GROUP "model"

/* ---- error reporting ---- */

typedef struct {
    char text[400];
} h5_detail;

/* Keeps the innermost (most specific) entry of HDF5's error stack, on one line. The file drivers' messages
 * carry a ctime() stamp (with its newline) and raw fields: of those, only what failed and the system's reason
 * ("file write failed: No space left on device") are kept. */
static herr_t walk_innermost(unsigned n, const H5E_error2_t *entry, void *client) {
    if (n != 0) return 0;
    h5_detail *detail = client;
    const char *desc = entry->desc ? entry->desc : "no description", *reason = strstr(desc, "error message = '");
    char summary[300];
    if (reason) {
        reason += strlen("error message = '");
        size_t head = strcspn(desc, ":");
        snprintf(summary, sizeof summary, "%.*s: %.*s", (int)head, desc, (int)strcspn(reason, "'"), reason);
        desc = summary;
    }
    snprintf(detail->text, sizeof detail->text, "%s (in %s)", desc, entry->func_name ? entry->func_name : "?");
    for (char *c = detail->text; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
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
    if (attr >= 0 && H5Aclose(attr) < 0 && rc == 0) rc = h5_fail(err, path, op);
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
    if (attr >= 0 && H5Aclose(attr) < 0 && rc == 0) rc = h5_fail(err, path, op);
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
        if (dset >= 0 && H5Dclose(dset) < 0 && rc == 0) { /* writes the dataset's cached chunks */
            snprintf(op, sizeof op, "H5Dclose of %s (writing its chunks)", name);
            rc = h5_fail(err, path, op);
        }
        if (dcpl >= 0) H5Pclose(dcpl);
        if (space >= 0) H5Sclose(space);
    }
    H5Pclose(lcpl);
    return rc;
}

/* Bob Jenkins' lookup3 hash (hashlittle, byte by byte, initval 0): HDF5's metadata checksum. */
#define ROT32(x, k) (((x) << (k)) | ((x) >> (32 - (k))))
static uint32_t lookup3(const unsigned char *k, size_t length) {
    uint32_t a, b, c;
    a = b = c = 0xdeadbeefu + (uint32_t)length;
    for (; length > 12; length -= 12, k += 12) {
        a += k[0] + ((uint32_t)k[1] << 8) + ((uint32_t)k[2] << 16) + ((uint32_t)k[3] << 24);
        b += k[4] + ((uint32_t)k[5] << 8) + ((uint32_t)k[6] << 16) + ((uint32_t)k[7] << 24);
        c += k[8] + ((uint32_t)k[9] << 8) + ((uint32_t)k[10] << 16) + ((uint32_t)k[11] << 24);
        a -= c, a ^= ROT32(c, 4), c += b, b -= a, b ^= ROT32(a, 6), a += c, c -= b, c ^= ROT32(b, 8), b += a;
        a -= c, a ^= ROT32(c, 16), c += b, b -= a, b ^= ROT32(a, 19), a += c, c -= b, c ^= ROT32(b, 4), b += a;
    }
    switch (length) {
    case 12: c += (uint32_t)k[11] << 24; /* fall through */
    case 11: c += (uint32_t)k[10] << 16; /* fall through */
    case 10: c += (uint32_t)k[9] << 8;   /* fall through */
    case 9: c += k[8];                   /* fall through */
    case 8: b += (uint32_t)k[7] << 24;   /* fall through */
    case 7: b += (uint32_t)k[6] << 16;   /* fall through */
    case 6: b += (uint32_t)k[5] << 8;    /* fall through */
    case 5: b += k[4];                   /* fall through */
    case 4: a += (uint32_t)k[3] << 24;   /* fall through */
    case 3: a += (uint32_t)k[2] << 16;   /* fall through */
    case 2: a += (uint32_t)k[1] << 8;    /* fall through */
    case 1: a += k[0]; break;
    case 0: return c;
    }
    c ^= b, c -= ROT32(b, 14), a ^= c, a -= ROT32(c, 11), b ^= a, b -= ROT32(a, 25), c ^= b, c -= ROT32(b, 16);
    a ^= c, a -= ROT32(c, 4), b ^= a, b -= ROT32(a, 14), c ^= b, c -= ROT32(b, 24);
    return c;
}

/*
 * H5Fget_file_image clears the superblock's status flags ("open for
 * writing") in the image but, before HDF5 1.14.7 (HDFGroup/hdf5#1915),
 * leaves the checksum computed with them set, so the file would not open.
 * Superblock versions 2 and 3 (what the V18 bound gives): signature (8),
 * version, offset size O, length size, flags, four addresses of O bytes,
 * then the checksum of everything before it. A correct checksum is kept.
 */
static void fix_superblock_checksum(unsigned char *image, size_t bytes) {
    if (bytes < 12 || (image[8] != 2 && image[8] != 3)) return;
    size_t covered = 12 + 4 * (size_t)image[9];
    if (covered + 4 > bytes) return;
    uint32_t sum = lookup3(image, covered);
    for (int i = 0; i < 4; i++)
        image[covered + i] = (unsigned char)(sum >> (8 * i));
}

/* Bytes the in-memory image will take, about: the driver grows its buffer by this much at a time. */
static size_t image_increment(const rt_view_table *table, const char *config_text) {
    size_t bytes = (size_t)1 << 20; /* superblock, groups, object headers, chunk indexes */
    for (int v = 0; v < table->count; v++)
        bytes += table->views[v].numel * sizeof(float) + 4096;
    return bytes + (config_text ? strlen(config_text) : 0);
}

int rt_model_file_write(const char *path, const rt_view_table *table, const float *params, const char *config_text,
                        int64_t step, rt_error *err) {
    quiet_hdf5();
    hid_t fapl = make_fapl();
    if (fapl < 0 || H5Pset_fapl_core(fapl, image_increment(table, config_text), 0) < 0) {
        h5_fail(err, path, "setting up the in-memory file");
        if (fapl >= 0) H5Pclose(fapl);
        return -1;
    }
    hid_t file = H5Fcreate(path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl); /* in memory: PATH is not touched */
    if (file < 0) { /* report before any other HDF5 call clears the error stack */
        h5_fail(err, path, "H5Fcreate");
        H5Pclose(fapl);
        return -1;
    }
    H5Pclose(fapl);
    int rc = write_string_attr(file, "format", RT_CHECKPOINT_FORMAT, path, err);
    if (rc == 0) rc = write_int_attr(file, "version", H5T_STD_I32LE, RT_CHECKPOINT_VERSION, path, err);
    if (rc == 0) rc = write_int_attr(file, "step", H5T_STD_I64LE, step, path, err);
    if (rc == 0) rc = write_string_attr(file, "config", config_text ? config_text : "", path, err);
    if (rc == 0) rc = write_views(file, MODEL_GROUP, table, params, path, err);
    if (rc == 0 && H5Fflush(file, H5F_SCOPE_LOCAL) < 0) rc = h5_fail(err, path, "H5Fflush");
    ssize_t image_bytes = rc == 0 ? H5Fget_file_image(file, NULL, 0) : -1;
    if (rc == 0 && image_bytes <= 0) rc = h5_fail(err, path, "H5Fget_file_image (size)");
    void *image = rc == 0 ? malloc_check((size_t)image_bytes) : NULL;
    if (rc == 0 && H5Fget_file_image(file, image, (size_t)image_bytes) != image_bytes)
        rc = h5_fail(err, path, "H5Fget_file_image");
    if (H5Fclose(file) < 0 && rc == 0) rc = h5_fail(err, path, "H5Fclose");
    if (rc == 0) fix_superblock_checksum(image, (size_t)image_bytes);
    if (rc == 0) rc = rt_write_file_atomic(path, image, (size_t)image_bytes, err);
    free(image);
    return rc;
}

/* ---- reading ----
 *
 * Everything read here comes from a file someone else may have made, so each
 * field is checked before use: an attribute's class, dataspace (exactly one
 * value: an array attribute would make H5Aread write past a one-value buffer),
 * size and string length; a dataset's link kind (hard links only: an external
 * link would open another file), layout (no external raw data, no virtual
 * datasets), type (IEEE fp32/fp64), shape, chunk shape and values (finite).
 * The file is opened with the strong close degree, so H5Fclose releases it
 * even if an id were left open, and every helper closes what it opened.
 */

#define FORMAT_ATTR_MAX 256               /* bytes of the 'format' string */
#define CONFIG_ATTR_MAX ((size_t)1 << 24) /* bytes of the stored config text */

static const char *type_class_name(H5T_class_t type_class) {
    switch (type_class) {
    case H5T_INTEGER: return "an integer";
    case H5T_FLOAT: return "a float";
    case H5T_STRING: return "a string";
    case H5T_TIME: return "a time";
    case H5T_BITFIELD: return "a bitfield";
    case H5T_OPAQUE: return "an opaque value";
    case H5T_COMPOUND: return "a compound";
    case H5T_REFERENCE: return "a reference";
    case H5T_ENUM: return "an enum";
    case H5T_VLEN: return "a variable-length sequence";
    case H5T_ARRAY: return "an array type";
    default: return "an unreadable type";
    }
}

/* Checks that attr holds exactly one value: a scalar, or a simple dataspace of one element. */
static int check_single_value(hid_t attr, const char *name, const char *path, rt_error *err) {
    hid_t space = H5Aget_space(attr);
    H5S_class_t space_class = space >= 0 ? H5Sget_simple_extent_type(space) : H5S_NO_CLASS;
    hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    if (space >= 0) H5Sclose(space);
    if (space_class == H5S_SCALAR || (space_class == H5S_SIMPLE && points == 1)) return 0;
    if (space_class == H5S_SIMPLE)
        return rt_fail(err, "%s: attribute '%s': expected a single value, found an array of %lld values", path, name,
                       (long long)points);
    return rt_fail(err, "%s: attribute '%s': expected a single value, found %s dataspace", path, name,
                   space_class == H5S_NULL ? "an empty (null)" : "an unreadable");
}

/* Reads a single-valued string attribute (fixed or variable length, at most max_len bytes) into a malloc'd
 * string. */
static int read_string_attr(hid_t obj, const char *name, size_t max_len, char **out, const char *path, rt_error *err) {
    *out = NULL;
    hid_t attr = H5Aopen(obj, name, H5P_DEFAULT);
    if (attr < 0) return rt_fail(err, "%s: not a ringtrain checkpoint: no '%s' attribute", path, name);
    hid_t type = H5Aget_type(attr), mem_type = -1; /* the memory type takes the stored character set */
    H5T_class_t type_class = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    int rc = check_single_value(attr, name, path, err);
    if (rc == 0 && type_class != H5T_STRING) {
        rc = rt_fail(err, "%s: attribute '%s': expected a string, found %s", path, name, type_class_name(type_class));
    } else if (rc == 0 && H5Tis_variable_str(type) > 0) {
        char *value = NULL;
        mem_type = H5Tcopy(H5T_C_S1);
        if (mem_type < 0 || H5Tset_size(mem_type, H5T_VARIABLE) < 0 || H5Tset_cset(mem_type, H5Tget_cset(type)) < 0 ||
            H5Aread(attr, mem_type, &value) < 0) {
            rc = h5_fail(err, path, "reading a string attribute");
        } else {
            size_t len = value ? strlen(value) : 0;
            if (len > max_len) {
                rc = rt_fail(err, "%s: attribute '%s': expected a string of at most %zu bytes, found %zu bytes", path,
                             name, max_len, len);
            } else {
                *out = malloc_check(len + 1);
                memcpy(*out, value ? value : "", len + 1);
            }
        }
        if (value) H5free_memory(value);
    } else if (rc == 0) {
        size_t size = H5Tget_size(type);
        if (size == 0 || size > max_len + 1) {
            rc = rt_fail(err, "%s: attribute '%s': expected a string of at most %zu bytes, found %zu bytes", path, name,
                         max_len, size);
        } else {
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
    H5T_class_t type_class = type >= 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    size_t size = type >= 0 ? H5Tget_size(type) : 0;
    int rc = check_single_value(attr, name, path, err);
    if (rc == 0 && type_class != H5T_INTEGER)
        rc = rt_fail(err, "%s: attribute '%s': expected an integer, found %s", path, name, type_class_name(type_class));
    else if (rc == 0 && (size == 0 || size > sizeof(int64_t)))
        rc = rt_fail(err, "%s: attribute '%s': expected an integer of at most 8 bytes, found %zu bytes", path, name,
                     size);
    else if (rc == 0 && H5Aread(attr, H5T_NATIVE_INT64, out) < 0)
        rc = h5_fail(err, path, "reading an integer attribute");
    if (type >= 0) H5Tclose(type);
    H5Aclose(attr);
    return rc;
}

/* Refuses anything but a regular file before HDF5 opens it (a FIFO would block the open forever). */
static int check_regular_file(const char *path, rt_error *err) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return rt_fail(err, "%s: cannot open checkpoint: %s", path, strerror(errno));
    struct stat st;
    int rc = 0;
    if (fstat(fd, &st) != 0)
        rc = rt_fail(err, "%s: cannot stat checkpoint: %s", path, strerror(errno));
    else if (!S_ISREG(st.st_mode))
        rc =
            rt_fail(err, "%s: not a regular file (a FIFO, device or directory), expected a ringtrain checkpoint", path);
    close(fd);
    return rc;
}

/* Opens PATH read-only and checks it is a ringtrain checkpoint of a version this build reads. */
static hid_t open_checkpoint(const char *path, rt_error *err) {
    quiet_hdf5();
    if (check_regular_file(path, err) != 0) return -1;
    if (H5Fis_hdf5(path) <= 0) {
        rt_fail(err, "%s: not an HDF5 file (expected a ringtrain checkpoint)", path);
        return -1;
    }
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS);
    if (fapl < 0 || H5Pset_fclose_degree(fapl, H5F_CLOSE_STRONG) < 0) {
        h5_fail(err, path, "creating the file access property list");
        if (fapl >= 0) H5Pclose(fapl);
        return -1;
    }
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, fapl);
    if (file < 0) h5_fail(err, path, "H5Fopen"); /* before H5Pclose clears the error stack */
    H5Pclose(fapl);
    if (file < 0) return -1;
    char *format = NULL;
    int64_t version = 0;
    int rc = read_string_attr(file, "format", FORMAT_ATTR_MAX, &format, path, err);
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

int rt_model_file_read_meta(const char *path, char **config_text, int64_t *step, rt_error *err) {
    if (config_text) *config_text = NULL;
    hid_t file = open_checkpoint(path, err);
    if (file < 0) return -1;
    int64_t stored_step = 0;
    char *config = NULL;
    int rc = read_int_attr(file, "step", &stored_step, path, err);
    if (rc == 0 && stored_step < 0)
        rc = rt_fail(err, "%s: attribute 'step' is %lld, expected >= 0", path, (long long)stored_step);
    if (rc == 0) rc = read_string_attr(file, "config", CONFIG_ATTR_MAX, &config, path, err);
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

/* Whether every link along "/a/b/c" exists and is a hard link (H5Lexists needs each parent to exist; a soft
 * or external link could lead anywhere, another file included). Sets *not_hard when one is not hard. */
static int link_path_exists(hid_t file, const char *name, int *not_hard) {
    char prefix[RT_NAME_LEN + 64];
    size_t len = strlen(name);
    *not_hard = 0;
    if (len >= sizeof prefix) return 0;
    for (size_t i = 1; i <= len; i++) {
        if (i < len && name[i] != '/') continue;
        memcpy(prefix, name, i);
        prefix[i] = '\0';
        if (H5Lexists(file, prefix, H5P_DEFAULT) <= 0) return 0;
        H5L_info_t info;
        if (H5Lget_info(file, prefix, &info, H5P_DEFAULT) < 0 || info.type != H5L_TYPE_HARD) {
            *not_hard = 1;
            return 0;
        }
    }
    return 1;
}

/* Checks a dataset's storage before reading: data inside this file (no external raw data, not virtual) and
 * chunks no larger than the dataset, so a crafted chunk shape cannot make HDF5 allocate more than the
 * tensor. */
static int check_layout(hid_t dset, int ndim, const hsize_t *dims, const char *tensor, const char *path,
                        rt_error *err) {
    hid_t dcpl = H5Dget_create_plist(dset);
    if (dcpl < 0) return h5_fail(err, path, "H5Dget_create_plist");
    H5D_layout_t layout = H5Pget_layout(dcpl);
    int external = H5Pget_external_count(dcpl);
    int rc = 0;
    if (layout != H5D_CONTIGUOUS && layout != H5D_CHUNKED && layout != H5D_COMPACT) {
        rc = rt_fail(err, "%s: tensor %s: expected contiguous, chunked or compact storage, found layout %d", path,
                     tensor, (int)layout);
    } else if (external != 0) {
        rc = rt_fail(err, "%s: tensor %s: expected its data inside the file, found %d external file(s)", path, tensor,
                     external);
    } else if (layout == H5D_CHUNKED) {
        hsize_t chunk[RT_MAX_DIMS] = {0};
        int chunk_ndim = H5Pget_chunk(dcpl, RT_MAX_DIMS, chunk);
        if (chunk_ndim != ndim) {
            rc =
                rt_fail(err, "%s: tensor %s: expected %d-dimensional chunks, found %d", path, tensor, ndim, chunk_ndim);
        } else {
            for (int d = 0; d < ndim && rc == 0; d++)
                if (chunk[d] == 0 || chunk[d] > dims[d])
                    rc = rt_fail(err, "%s: tensor %s: chunk dimension %d is %llu, expected 1..%llu (the tensor's)",
                                 path, tensor, d, (unsigned long long)chunk[d], (unsigned long long)dims[d]);
        }
    }
    H5Pclose(dcpl);
    return rc;
}

/* Whether type is an IEEE fp32 or fp64 type (either byte order): what h5py and ringtrain write. */
static int is_ieee_float(hid_t type) {
    const hid_t known[] = {H5T_IEEE_F32LE, H5T_IEEE_F32BE, H5T_IEEE_F64LE, H5T_IEEE_F64BE};
    for (size_t i = 0; i < sizeof known / sizeof known[0]; i++)
        if (H5Tequal(type, known[i]) > 0) return 1;
    return 0;
}

/* Reads /<group>/<name> of every view into data + view offset, checking link, shape, type, storage and
 * values. */
static int read_views(hid_t file, const char *group, const rt_view_table *table, const char *path,
                      const rt_model_file_sink *sink, rt_error *err) {
    for (int v = 0; v < table->count; v++) {
        const rt_named_view *view = &table->views[v];
        float *data = sink->where(sink->ctx, v);
        if (!data)
            return rt_fail(err, "%s: reading stopped at tensor %s: its reader was told to stop", path, view->name);
        char name[RT_NAME_LEN + 64];
        snprintf(name, sizeof name, "/%s/%s", group, view->name);
        int not_hard = 0;
        if (!link_path_exists(file, name, &not_hard))
            return not_hard ? rt_fail(err,
                                      "%s: tensor %s: expected a dataset %s in this file, found a soft or "
                                      "external link on its path",
                                      path, view->name, name)
                            : rt_fail(err, "%s: tensor %s missing: no dataset %s", path, view->name, name);
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
                rt_h5_format_shape(found_ndim, found, got);
            rc = rt_fail(err, "%s: tensor %s: expected shape %s, found %s", path, view->name,
                         rt_h5_format_shape(view->ndim, expected, want), got);
        } else if (type < 0 || H5Tget_class(type) != H5T_FLOAT || !is_ieee_float(type)) {
            rc = rt_fail(err, "%s: tensor %s: expected an IEEE fp32 or fp64 dataset, found %s", path, view->name,
                         type < 0 ? "an unreadable type" : type_class_name(H5Tget_class(type)));
        } else if (view->numel > 0 && check_layout(dset, view->ndim, expected, view->name, path, err) != 0) {
            rc = -1;
        } else if (view->numel > 0 && H5Dread(dset, H5T_NATIVE_FLOAT, H5S_ALL, H5S_ALL, H5P_DEFAULT, data) < 0) {
            char op[3 * RT_NAME_LEN + 192];
            snprintf(op, sizeof op, "H5Dread of tensor %s (%s)", view->name, name);
            rc = h5_fail(err, path, op);
        }
        /* A NaN or infinite weight (fp64 values beyond fp32 included) poisons every forward pass. */
        if (rc == 0 && !rt_f32_all_finite(data, view->numel))
            for (size_t i = 0; rc == 0 && i < view->numel; i++)
                if (!isfinite(data[i]))
                    rc = rt_fail(err, "%s: tensor %s element %zu is %g, expected a finite weight", path, view->name, i,
                                 (double)data[i]);
        if (type >= 0) H5Tclose(type);
        if (space >= 0) H5Sclose(space);
        H5Dclose(dset);
        if (rc != 0) return rc;
        if (sink->done) sink->done(sink->ctx, v);
    }
    return 0;
}

/* The whole table's buffer as a sink: view v at its offset. */
typedef struct {
    const rt_view_table *table;
    float *params;
} whole_buffer;

static float *whole_buffer_at(void *ctx, int v) {
    whole_buffer *w = ctx;
    return w->params + w->table->views[v].offset;
}

int rt_model_file_read_params(const char *path, const rt_view_table *table, float *params, rt_error *err) {
    whole_buffer whole = {table, params};
    return rt_model_file_read_views(path, table, &(rt_model_file_sink){.where = whole_buffer_at, .ctx = &whole}, err);
}

int rt_model_file_read_views(const char *path, const rt_view_table *table, const rt_model_file_sink *sink,
                             rt_error *err) {
    hid_t file = open_checkpoint(path, err);
    if (file < 0) return -1;
    int rc = read_views(file, MODEL_GROUP, table, path, sink, err);
    H5Fclose(file);
    return rc;
}

/* ---- counting what a file holds, before anyone sizes memory from its config ---- */

#define COUNT_MAX_LINKS 1000000 /* links visited in all: bounds the walk even through hard-link cycles */
#define COUNT_MAX_DEPTH 32      /* groups inside /model (view names may hold '/') */

typedef struct {
    const char *path;
    rt_error *err;
    size_t total; /* elements over every dataset so far */
    long links;   /* links visited */
    int depth;    /* groups below /model of the link being visited */
    int reported; /* a callback wrote the error */
} count_state;

static herr_t count_link(hid_t group, const char *name, const H5L_info_t *info, void *client);

/* Adds one dataset's element count, after checking its data is stored in the file at its full size. */
static int count_dataset(hid_t dset, const char *name, count_state *state) {
    hid_t space = H5Dget_space(dset), type = H5Dget_type(dset);
    hssize_t points = space >= 0 ? H5Sget_simple_extent_npoints(space) : -1;
    size_t type_size = type >= 0 ? H5Tget_size(type) : 0;
    hsize_t stored = H5Dget_storage_size(dset);
    int rc = 0;
    if (points < 0 || type_size == 0)
        rc = rt_fail(state->err, "%s: /%s/.../%.200s: unreadable dataspace or type", state->path, MODEL_GROUP, name);
    else if ((double)points * (double)type_size > (double)stored)
        /* Data not in the file (unallocated, or compressed) is refused: element counts are then bounded by the
         * file's size, and so is the memory a caller sizes from them. */
        rc = rt_fail(state->err,
                     "%s: /%s/.../%.200s: expected %.0f bytes of stored data for its %lld elements, found %llu",
                     state->path, MODEL_GROUP, name, (double)points * (double)type_size, (long long)points,
                     (unsigned long long)stored);
    else if (__builtin_add_overflow(state->total, (size_t)points, &state->total))
        rc = rt_fail(state->err, "%s: /%s: element counts overflow", state->path, MODEL_GROUP);
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    return rc;
}

/* Walks one group's links (datasets counted, groups walked in turn). */
static int count_group(hid_t group, count_state *state) {
    hsize_t index = 0;
    state->reported = 0;
    herr_t walked = H5Literate(group, H5_INDEX_NAME, H5_ITER_NATIVE, &index, count_link, state);
    if (walked < 0) return state->reported ? -1 : h5_fail(state->err, state->path, "H5Literate of /" MODEL_GROUP);
    return 0;
}

/* One link under /model: a hard link to a dataset or to a group of them. */
static herr_t count_link(hid_t group, const char *name, const H5L_info_t *info, void *client) {
    count_state *state = client;
    int rc = 0;
    if (++state->links > COUNT_MAX_LINKS)
        rc = rt_fail(state->err, "%s: /%s holds more than %d links, expected one dataset per tensor", state->path,
                     MODEL_GROUP, COUNT_MAX_LINKS);
    else if (info->type != H5L_TYPE_HARD)
        rc = rt_fail(state->err, "%s: /%s/.../%.200s: expected a dataset in this file, found a soft or external link",
                     state->path, MODEL_GROUP, name);
    if (rc != 0) {
        state->reported = 1;
        return -1;
    }
    hid_t object = H5Oopen(group, name, H5P_DEFAULT);
    H5I_type_t kind = object >= 0 ? H5Iget_type(object) : H5I_BADID;
    if (kind == H5I_DATASET) {
        rc = count_dataset(object, name, state);
    } else if (kind == H5I_GROUP && state->depth < COUNT_MAX_DEPTH) {
        state->depth++;
        rc = count_group(object, state);
        state->depth--;
    } else {
        rc = rt_fail(state->err, "%s: /%s/.../%.200s: expected a dataset, found %s", state->path, MODEL_GROUP, name,
                     kind == H5I_GROUP ? "groups nested too deep" : "another kind of object");
    }
    if (object >= 0) H5Oclose(object);
    state->reported = rc != 0;
    return rc;
}

int rt_model_file_count_params(const char *path, size_t *count, rt_error *err) {
    *count = 0;
    hid_t file = open_checkpoint(path, err);
    if (file < 0) return -1;
    int not_hard = 0, rc = 0;
    hid_t group = -1;
    if (!link_path_exists(file, "/" MODEL_GROUP, &not_hard))
        rc = rt_fail(err, "%s: expected a /%s group of tensors, found %s", path, MODEL_GROUP,
                     not_hard ? "a soft or external link" : "none");
    else if ((group = H5Gopen2(file, "/" MODEL_GROUP, H5P_DEFAULT)) < 0)
        rc = rt_fail(err, "%s: /%s: expected a group of tensors, found another kind of object", path, MODEL_GROUP);
    count_state state = {path, err, 0, 0, 0, 0};
    if (rc == 0) rc = count_group(group, &state);
    if (group >= 0) H5Gclose(group);
    H5Fclose(file);
    if (rc == 0) *count = state.total;
    return rc;
}
