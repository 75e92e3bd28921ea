/*
 * ckpt_store.c: collective HDF5 storage of named global fp32 tensors (see ckpt_store.h for the file and the
 * rules). Every rank runs the same sequence of HDF5 calls; after each step (file open, each dataset, the
 * attributes, the close) the ranks agree with one MPI_Allreduce, so a failure on one rank stops every rank at
 * the same point and nothing hangs in a later collective. The first failing rank's message is broadcast.
 */
#include "ckpt_store.h"
#include "h5_shape.h"

#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <libgen.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "block_sum.h"
#include "model_file.h"

/* ---- errors and agreement ---- */

static herr_t keep_innermost(unsigned n, const H5E_error2_t *entry, void *client) {
    if (n == 0) snprintf(client, 300, "%s (in %s)", entry->desc ? entry->desc : "?", entry->func_name);
    return 0;
}

/* "PATH: <what>: HDF5 <op> failed: <innermost HDF5 message>", on one line. */
static int h5_fail(rt_error *err, const char *path, const char *what, const char *op) {
    char detail[300] = "no HDF5 error recorded";
    H5Ewalk2(H5E_DEFAULT, H5E_WALK_UPWARD, keep_innermost, detail);
    for (char *c = detail; *c; c++)
        if (*c == '\n' || *c == '\r' || *c == '\t') *c = ' ';
    return rt_fail(err, "%s: %s: HDF5 %s failed: %s", path, what, op, detail);
}

/* Returns 0 when every rank's rc is 0; else -1 on every rank, with the lowest failing rank's message in err. */
static int agree(MPI_Comm comm, int rc, rt_error *err) {
    int rank, size, mine, first;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    mine = rc ? rank : size;
    MPI_Allreduce(&mine, &first, 1, MPI_INT, MPI_MIN, comm);
    if (first == size) return 0;
    MPI_Bcast(err->msg, (int)sizeof err->msg, MPI_CHAR, first, comm);
    return -1;
}

static size_t numel_of(const rt_ckpt_piece *p) {
    size_t n = 1;
    for (int d = 0; d < p->ndim; d++)
        n *= p->shape[d];
    return n;
}

static void range_of(const rt_ckpt_piece *p, int rank, int writing, size_t *offset, size_t *count) {
    *offset = p->replicated ? 0 : p->offset;
    *count = p->replicated ? (writing && rank != 0 ? 0 : numel_of(p)) : p->count;
}

static uint64_t hash_bytes(uint64_t h, const void *bytes, size_t n) {
    for (size_t i = 0; i < n; i++)
        h = (h ^ ((const unsigned char *)bytes)[i]) * 0x100000001B3ULL; /* FNV-1a */
    return h;
}

/* Local checks of every piece, then one hash of names, shapes, flags and attribute keys compared across ranks. */
static int check_plan(MPI_Comm comm, const char *path, const rt_ckpt_piece *pieces, int n, const rt_ckpt_attrs *attrs,
                      rt_error *err) {
    uint64_t h = 0xCBF29CE484222325ULL;
    int rc = 0;
    for (int i = 0; i < n && rc == 0; i++) {
        const rt_ckpt_piece *p = &pieces[i];
        if (!p->name || !p->name[0] || p->ndim < 1 || p->ndim > RT_CKPT_STORE_MAX_DIMS) {
            rc = rt_fail(err, "%s: tensor %d: needs a name and 1..%d dimensions", path, i, RT_CKPT_STORE_MAX_DIMS);
            break;
        }
        for (int d = 0; d < p->ndim && rc == 0; d++)
            if (p->shape[d] == 0) rc = rt_fail(err, "%s: dataset %s: extent %d is 0 (needs >= 1)", path, p->name, d);
        size_t offset, count;
        range_of(p, 0, 0, &offset, &count);
        if (rc == 0 && (offset > numel_of(p) || count > numel_of(p) - offset))
            rc = rt_fail(err, "%s: dataset %s: range [%zu, %zu) lies outside its %zu elements", path, p->name, offset,
                         offset + count, numel_of(p));
        if (rc == 0 && count > 0 && !p->data) rc = rt_fail(err, "%s: dataset %s: no data buffer", path, p->name);
        h = hash_bytes(h, p->name, strlen(p->name) + 1);
        h = hash_bytes(h, &p->ndim, sizeof p->ndim);
        h = hash_bytes(h, p->shape, sizeof(size_t) * (size_t)p->ndim);
        h = hash_bytes(h, &p->replicated, sizeof p->replicated);
    }
    for (int i = 0; attrs && i < attrs->n_texts; i++)
        h = hash_bytes(h, attrs->texts[i].key, strlen(attrs->texts[i].key) + 1);
    for (int i = 0; attrs && i < attrs->n_ints; i++)
        h = hash_bytes(h, attrs->ints[i].key, strlen(attrs->ints[i].key) + 1);
    if (agree(comm, rc, err)) return -1;
    uint64_t lo, hi;
    MPI_Allreduce(&h, &lo, 1, MPI_UINT64_T, MPI_MIN, comm);
    MPI_Allreduce(&h, &hi, 1, MPI_UINT64_T, MPI_MAX, comm);
    if (lo != hi) return rt_fail(err, "%s: the ranks passed different tensor lists (names, shapes or keys)", path);
    return 0;
}

/* ---- selections ---- */

/*
 * A flat range of a row-major tensor is a sequence of boxes (a partial first row, whole rows, a partial last
 * row, recursively), each contiguous both in the file's N-D space and in the rank's flat buffer. Each box
 * moves in its own H5Dread/H5Dwrite with a memory space of the box's own shape: HDF5 1.10 then copies
 * whole runs, where a 1-D memory space against an N-D selection of the same points made it map element by
 * element (75-85% of a save's time, measured). Whole-row boxes are cut at BOX_MAX_ELEMS, so one transfer
 * stays far below MPI's 2 GiB count limit.
 */
#define BOX_MAX_ELEMS ((size_t)1 << 26)

typedef struct {
    hsize_t start[RT_CKPT_STORE_MAX_DIMS], count[RT_CKPT_STORE_MAX_DIMS];
    size_t flat; /* the box's first element in the flat tensor */
} box;

typedef struct {
    box *items;
    int n, cap;
} box_list;

static void push_box(box_list *list, int ndim, const hsize_t *start, const hsize_t *count, size_t flat) {
    if (list->n == list->cap) {
        list->cap = list->cap ? 2 * list->cap : 8;
        box *grown = realloc(list->items, (size_t)list->cap * sizeof *grown);
        if (!grown) rt_fatal("out of memory for %d hyperslab boxes", list->cap);
        list->items = grown;
    }
    box *b = &list->items[list->n++];
    memcpy(b->start, start, sizeof(hsize_t) * (size_t)ndim);
    memcpy(b->count, count, sizeof(hsize_t) * (size_t)ndim);
    b->flat = flat;
}

/* Appends the boxes of flat range [a, b) of the sub-tensor at dim d (leading coordinates in start, the
 * sub-tensor's first flat element at base). */
static void add_boxes(box_list *list, int ndim, const hsize_t *dims, int d, hsize_t *start, size_t base, hsize_t a,
                      hsize_t b) {
    hsize_t stride = 1, count[RT_CKPT_STORE_MAX_DIMS];
    for (int k = d + 1; k < ndim; k++)
        stride *= dims[k];
    if (a >= b) return;
    if (a / stride == (b - 1) / stride && (a % stride != 0 || b % stride != 0) && d + 1 < ndim) {
        start[d] = a / stride; /* inside one row of dim d: descend */
        add_boxes(list, ndim, dims, d + 1, start, base + start[d] * stride, a % stride, b - start[d] * stride);
        return;
    }
    hsize_t first_whole = (a + stride - 1) / stride, end_whole = b / stride;
    if (a % stride != 0) { /* the partial first row */
        start[d] = a / stride;
        add_boxes(list, ndim, dims, d + 1, start, base + start[d] * stride, a % stride, stride);
    }
    hsize_t rows_per_box = stride >= BOX_MAX_ELEMS ? 1 : BOX_MAX_ELEMS / stride;
    for (hsize_t row = first_whole; row < end_whole; row += rows_per_box) { /* whole rows */
        for (int k = 0; k < ndim; k++)
            count[k] = k < d ? 1 : dims[k];
        start[d] = row;
        count[d] = end_whole - row < rows_per_box ? end_whole - row : rows_per_box;
        for (int k = d + 1; k < ndim; k++)
            start[k] = 0;
        push_box(list, ndim, start, count, base + (size_t)(row * stride));
    }
    if (b % stride != 0) { /* the partial last row */
        start[d] = end_whole;
        add_boxes(list, ndim, dims, d + 1, start, base + end_whole * stride, 0, b % stride);
    }
}

static box_list boxes_of(int ndim, const hsize_t *dims, size_t offset, size_t count) {
    box_list list = {0};
    hsize_t start[RT_CKPT_STORE_MAX_DIMS] = {0};
    add_boxes(&list, ndim, dims, 0, start, 0, offset, offset + count);
    return list;
}

/*
 * Moves flat range [offset, offset + count) between buf and dset, one box per transfer; n_calls >= the box
 * count (collective transfers: every rank makes the same number of calls, the ranks with fewer boxes with
 * empty selections). A failed call does not skip the rest, so no rank leaves the others inside a
 * collective. Returns 0, or -1 when any call failed.
 */
static int transfer(hid_t dset, hid_t file_space, hid_t xfer, int ndim, const hsize_t *dims, size_t offset,
                    size_t count, float *buf, int writing, int *n_calls) {
    box_list list = boxes_of(ndim, dims, offset, count);
    if (*n_calls < list.n) *n_calls = list.n;
    int rc = 0;
    for (int k = 0; k < *n_calls; k++) {
        static float nothing;
        hsize_t one = 1;
        hid_t mem = k < list.n ? H5Screate_simple(ndim, list.items[k].count, NULL) : H5Screate_simple(1, &one, NULL);
        int ok = mem >= 0 && (k < list.n ? H5Sselect_hyperslab(file_space, H5S_SELECT_SET, list.items[k].start, NULL,
                                                               list.items[k].count, NULL) >= 0
                                         : H5Sselect_none(file_space) >= 0 && H5Sselect_none(mem) >= 0);
        float *at = k < list.n ? buf + (list.items[k].flat - offset) : &nothing;
        if (ok)
            ok = writing ? H5Dwrite(dset, H5T_NATIVE_FLOAT, mem, file_space, xfer, at) >= 0
                         : H5Dread(dset, H5T_NATIVE_FLOAT, mem, file_space, xfer, at) >= 0;
        if (!ok) rc = -1;
        if (mem >= 0) H5Sclose(mem);
    }
    free(list.items);
    return rc;
}

/* The number of transfers of a write: the most boxes any rank has (so every rank makes that many calls). */
static int agree_calls(MPI_Comm comm, int ndim, const hsize_t *dims, size_t offset, size_t count) {
    box_list list = boxes_of(ndim, dims, offset, count);
    int n = list.n, most;
    free(list.items);
    MPI_Allreduce(&n, &most, 1, MPI_INT, MPI_MAX, comm);
    return most;
}

/* ---- writing ---- */

/* Creates and writes one dataset and its block checksums. Every collective call starts only after the ranks
 * agreed that all of them reached it: a rank that stops before a collective the others enter would leave
 * them waiting there. */
static int write_piece(MPI_Comm comm, hid_t file, hid_t lcpl, hid_t xfer, const rt_ckpt_piece *p, int rank,
                       const char *path, rt_error *err) {
    hsize_t dims[RT_CKPT_STORE_MAX_DIMS];
    for (int d = 0; d < p->ndim; d++)
        dims[d] = p->shape[d];
    size_t offset, count, numel = numel_of(p), block = rt_block_sum_block_elems(numel);
    size_t n_blocks = rt_block_sum_n_blocks(numel, block);
    range_of(p, rank, 1, &offset, &count);
    /* the whole tensor's block sums, this rank's part added in, then summed over the ranks */
    uint64_t *sums = calloc_check(n_blocks, sizeof *sums);
    rt_block_sum_add(sums, 0, block, offset, p->data, count);
    MPI_Allreduce(MPI_IN_PLACE, sums, (int)n_blocks, MPI_UINT64_T, MPI_SUM, comm);
    int n_calls = agree_calls(comm, p->ndim, dims, offset, count);

    /* contiguous, unfiltered, never filled: the data is written once (see block_sum.h for why not Fletcher32) */
    hid_t space = H5Screate_simple(p->ndim, dims, NULL), dcpl = H5Pcreate(H5P_DATASET_CREATE), dset = -1;
    int rc = space >= 0 && dcpl >= 0 && H5Pset_layout(dcpl, H5D_CONTIGUOUS) >= 0 &&
                     H5Pset_alloc_time(dcpl, H5D_ALLOC_TIME_EARLY) >= 0 &&
                     H5Pset_fill_time(dcpl, H5D_FILL_TIME_NEVER) >= 0
                 ? 0
                 : h5_fail(err, path, p->name, "dataset creation properties");
    rc = agree(comm, rc, err);
    if (rc == 0 && (dset = H5Dcreate2(file, p->name, H5T_IEEE_F32LE, space, lcpl, dcpl, H5P_DEFAULT)) < 0)
        rc = h5_fail(err, path, p->name, "H5Dcreate");
    rc = agree(comm, rc, err);
    if (rc == 0 && transfer(dset, space, xfer, p->ndim, dims, offset, count, p->data, 1, &n_calls) != 0)
        rc = h5_fail(err, path, p->name, "H5Dwrite");
    rc = agree(comm, rc, err); /* before the collective attribute creation */
    if (rc == 0 && rt_block_sum_write_attrs(dset, block, sums, n_blocks) != 0)
        rc = h5_fail(err, path, p->name, "writing the block checksums");
    if (dset >= 0 && H5Dclose(dset) < 0 && rc == 0) rc = h5_fail(err, path, p->name, "H5Dclose");
    if (dcpl >= 0) H5Pclose(dcpl);
    if (space >= 0) H5Sclose(space);
    free(sums);
    return agree(comm, rc, err);
}

/* A scalar attribute; every rank passes the same value (rank 0's, broadcast by the caller). */
static int write_attr(hid_t file, const char *key, hid_t file_type, hid_t mem_type, const void *value, const char *path,
                      rt_error *err) {
    hid_t space = H5Screate(H5S_SCALAR), attr = -1;
    int ok = space >= 0 && (attr = H5Acreate2(file, key, file_type, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(attr, mem_type, value) >= 0;
    char what[160];
    snprintf(what, sizeof what, "attribute %s", key);
    int rc = ok ? 0 : h5_fail(err, path, what, "H5Awrite");
    if (attr >= 0 && H5Aclose(attr) < 0 && rc == 0) rc = h5_fail(err, path, what, "H5Aclose");
    if (space >= 0) H5Sclose(space);
    return rc;
}

static int write_text_attr(MPI_Comm comm, hid_t file, const char *key, const char *text, const char *path,
                           rt_error *err) {
    int rank;
    MPI_Comm_rank(comm, &rank);
    unsigned long long len = rank == 0 ? strlen(text) : 0;
    MPI_Bcast(&len, 1, MPI_UNSIGNED_LONG_LONG, 0, comm);
    char *value = malloc_check(len + 1);
    if (rank == 0) memcpy(value, text, len + 1);
    MPI_Bcast(value, (int)(len + 1), MPI_CHAR, 0, comm);
    hid_t type = H5Tcopy(H5T_C_S1);
    int rc = type >= 0 && H5Tset_size(type, len + 1) >= 0 && H5Tset_strpad(type, H5T_STR_NULLTERM) >= 0 &&
                     H5Tset_cset(type, H5T_CSET_UTF8) >= 0
                 ? 0
                 : h5_fail(err, path, key, "H5Tset_size");
    rc = agree(comm, rc, err); /* before the collective H5Acreate */
    if (rc == 0) rc = write_attr(file, key, type, type, value, path, err);
    if (type >= 0) H5Tclose(type);
    free(value);
    return rc;
}

static int write_int_attr(MPI_Comm comm, hid_t file, const char *key, hid_t file_type, int64_t value, const char *path,
                          rt_error *err) {
    MPI_Bcast(&value, 1, MPI_INT64_T, 0, comm);
    return write_attr(file, key, file_type, H5T_NATIVE_INT64, &value, path, err);
}

/*
 * HDF5 1.10.8 does not survive a write error inside its collectives: a rank whose write fails (a full disk)
 * leaves H5Dcreate early while the others wait in its barrier (seen on a full tmpfs with 2 ranks). So the
 * space is reserved before any dataset exists: rank 0 extends the new file with posix_fallocate to more than
 * it will hold (HDF5 truncates it to its end at close), and a full disk or quota becomes one clean error.
 */
static int reserve_space(const char *tmp_path, const rt_ckpt_piece *pieces, int n, const rt_ckpt_attrs *attrs,
                         const char *path, rt_error *err) {
    size_t bytes = (size_t)1 << 20; /* superblock, groups, format attributes */
    for (int i = 0; i < n; i++) {
        size_t numel = numel_of(&pieces[i]);
        bytes += numel * sizeof(float) + rt_block_sum_n_blocks(numel, rt_block_sum_block_elems(numel)) * 8 + 8192;
    }
    for (int i = 0; attrs && i < attrs->n_texts; i++)
        bytes += strlen(attrs->texts[i].text) + 1024;
    bytes += attrs ? (size_t)attrs->n_ints * 1024 : 0;
    int fd = open(tmp_path, O_WRONLY), rc = fd < 0 ? errno : posix_fallocate(fd, 0, (off_t)bytes);
    if (fd >= 0) close(fd);
    return rc ? rt_fail(err, "%s: cannot reserve %zu bytes for the checkpoint: %s", path, bytes, strerror(rc)) : 0;
}

static int fsync_path(const char *name, int flags, const char *path, rt_error *err) {
    int fd = open(name, flags);
    if (fd < 0) return rt_fail(err, "%s: cannot open %s to fsync it: %s", path, name, strerror(errno));
    int rc = fsync(fd) == 0 ? 0 : rt_fail(err, "%s: fsync of %s failed: %s", path, name, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = rt_fail(err, "%s: close of %s failed: %s", path, name, strerror(errno));
    return rc;
}

/* Test hook: RINGTRAIN_TEST_CKPT_STALL = "NAME:SECONDS" holds a write of a path ending in NAME for SECONDS
 * with every dataset written and the .tmp still open, so a test can kill a rank in the middle of a save. */
static void test_stall(const char *path) {
    const char *hook = getenv("RINGTRAIN_TEST_CKPT_STALL");
    const char *colon = hook ? strrchr(hook, ':') : NULL;
    if (!colon) return;
    size_t name_len = (size_t)(colon - hook), path_len = strlen(path);
    if (name_len > path_len || strncmp(path + path_len - name_len, hook, name_len) != 0) return;
    for (int s = atoi(colon + 1); s > 0; s--)
        sleep(1);
}

int rt_ckpt_store_write(MPI_Comm comm, const char *path, const rt_ckpt_piece *pieces, int n_pieces,
                        const rt_ckpt_attrs *attrs, rt_error *err) {
    rt_error local = {{0}};
    int rank, rc;
    MPI_Comm_rank(comm, &rank);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    char tmp_path[RT_TMP_PATH_LEN];
    if (snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path) >= (int)sizeof tmp_path)
        return rt_fail(err, "%s: path too long", path);
    if (check_plan(comm, path, pieces, n_pieces, attrs, &local)) goto out;

    /* the non-replicated ranges of each tensor must add up to it (ranges are not checked for overlap) */
    unsigned long long *counts = calloc_check((size_t)n_pieces + 1, sizeof *counts);
    for (int i = 0; i < n_pieces; i++)
        counts[i] = pieces[i].replicated ? 0 : pieces[i].count;
    MPI_Allreduce(MPI_IN_PLACE, counts, n_pieces, MPI_UNSIGNED_LONG_LONG, MPI_SUM, comm);
    rc = 0;
    for (int i = 0; i < n_pieces && rc == 0; i++)
        if (!pieces[i].replicated && counts[i] != numel_of(&pieces[i]))
            rc = rt_fail(&local, "%s: dataset %s: the ranks' ranges hold %llu elements, the tensor %zu", path,
                         pieces[i].name, counts[i], numel_of(&pieces[i]));
    free(counts);
    if (rc) goto out;

    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), lcpl = H5Pcreate(H5P_LINK_CREATE), xfer = H5Pcreate(H5P_DATASET_XFER);
    rc = fapl >= 0 && lcpl >= 0 && xfer >= 0 && H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) >= 0 &&
                 H5Pset_libver_bounds(fapl, H5F_LIBVER_V18, H5F_LIBVER_LATEST) >= 0 &&
                 H5Pset_create_intermediate_group(lcpl, 1) >= 0 && H5Pset_dxpl_mpio(xfer, H5FD_MPIO_COLLECTIVE) >= 0
             ? 0
             : h5_fail(&local, path, "file", "property lists");
    hid_t file = rc == 0 ? H5Fcreate(tmp_path, H5F_ACC_TRUNC, H5P_DEFAULT, fapl) : -1;
    if (rc == 0 && file < 0) rc = h5_fail(&local, path, "file", "H5Fcreate of the .tmp");
    rc = agree(comm, rc, &local);
    if (rc == 0)
        rc = agree(comm, rank == 0 ? reserve_space(tmp_path, pieces, n_pieces, attrs, path, &local) : 0, &local);
    for (int i = 0; i < n_pieces && rc == 0; i++)
        rc = write_piece(comm, file, lcpl, xfer, &pieces[i], rank, path, &local);
    if (rc == 0) rc = agree(comm, write_text_attr(comm, file, "format", RT_CHECKPOINT_FORMAT, path, &local), &local);
    if (rc == 0)
        rc = agree(comm, write_int_attr(comm, file, "version", H5T_STD_I32LE, RT_CHECKPOINT_VERSION, path, &local),
                   &local);
    for (int i = 0; attrs && i < attrs->n_texts && rc == 0; i++)
        rc = agree(comm, write_text_attr(comm, file, attrs->texts[i].key, attrs->texts[i].text, path, &local), &local);
    for (int i = 0; attrs && i < attrs->n_ints && rc == 0; i++)
        rc = agree(comm,
                   write_int_attr(comm, file, attrs->ints[i].key, H5T_STD_I64LE, attrs->ints[i].value, path, &local),
                   &local);
    if (rc == 0) test_stall(path);
    /* every object is closed by now, so the close is the last flush; if it fails, HDF5 1.10 may keep the file
     * open, and the .tmp is removed all the same */
    int close_rc = file >= 0 && H5Fclose(file) < 0 ? h5_fail(&local, path, "file", "H5Fclose (flushing)") : 0;
    if (xfer >= 0) H5Pclose(xfer);
    if (lcpl >= 0) H5Pclose(lcpl);
    if (fapl >= 0) H5Pclose(fapl);
    if (rc == 0) rc = agree(comm, close_rc, &local);
    if (rc == 0) { /* complete on every rank: rank 0 makes it durable and puts it in place */
        int commit_rc = 0;
        if (rank == 0) {
            char dir_buf[RT_TMP_PATH_LEN];
            snprintf(dir_buf, sizeof dir_buf, "%s", path);
            commit_rc = fsync_path(tmp_path, O_RDONLY, path, &local);
            if (commit_rc == 0 && rename(tmp_path, path) != 0)
                commit_rc = rt_fail(&local, "%s: cannot rename %s into place: %s", path, tmp_path, strerror(errno));
            if (commit_rc == 0) commit_rc = fsync_path(dirname(dir_buf), O_RDONLY | O_DIRECTORY, path, &local);
        }
        rc = agree(comm, commit_rc, &local);
    }
    if (rc != 0 && rank == 0) unlink(tmp_path);
    MPI_Barrier(comm); /* no rank returns (and maybe retries) before the .tmp is gone */
out:
    if (local.msg[0] == 0) return 0;
    if (err) *err = local;
    return -1;
}

/* ---- reading ---- */

/* A scalar (or one-value) attribute of the expected class; texts come back malloc'd in *text. */
static int read_attr(hid_t file, const char *key, int want_text, char **text, int64_t *value, const char *path,
                     rt_error *err) {
    char what[160];
    snprintf(what, sizeof what, "attribute %s", key);
    htri_t exists = H5Aexists(file, key);
    if (exists <= 0) return exists < 0 ? h5_fail(err, path, what, "H5Aexists") : rt_fail(err, "%s: no %s", path, what);
    hid_t attr = H5Aopen(file, key, H5P_DEFAULT), type = attr >= 0 ? H5Aget_type(attr) : -1;
    hid_t space = attr >= 0 ? H5Aget_space(attr) : -1, mem_type = -1;
    int rc = type < 0 || space < 0 ? h5_fail(err, path, what, "H5Aopen") : 0;
    H5T_class_t type_class = rc == 0 ? H5Tget_class(type) : H5T_NO_CLASS;
    if (rc == 0 && H5Sget_simple_extent_npoints(space) != 1)
        rc = rt_fail(err, "%s: %s holds %lld values, expected 1", path, what,
                     (long long)H5Sget_simple_extent_npoints(space));
    if (rc == 0 && type_class != (want_text ? H5T_STRING : H5T_INTEGER))
        rc = rt_fail(err, "%s: %s is not %s", path, what, want_text ? "a string" : "an integer");
    if (rc == 0 && want_text) {
        size_t size = H5Tget_size(type);
        if (H5Tis_variable_str(type) != 0 || size == 0 || size > ((size_t)1 << 30)) {
            rc = rt_fail(err, "%s: %s is not a fixed-length string of at most 1 GiB", path, what);
        } else {
            *text = calloc_check(size + 1, 1); /* one more byte: a space-padded string ends too */
            mem_type = H5Tcopy(type);
            if (mem_type < 0 || H5Aread(attr, mem_type, *text) < 0) rc = h5_fail(err, path, what, "H5Aread");
            if (rc) free(*text), *text = NULL;
        }
    } else if (rc == 0 && H5Aread(attr, H5T_NATIVE_INT64, value) < 0) {
        rc = h5_fail(err, path, what, "H5Aread");
    }
    if (mem_type >= 0) H5Tclose(mem_type);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (attr >= 0) H5Aclose(attr);
    return rc;
}

/* Every group on the way and the object itself must exist (H5Lexists fails on a missing group). */
static int dataset_exists(hid_t file, const char *name) {
    char prefix[1024];
    size_t len = strlen(name);
    if (len >= sizeof prefix) return 0;
    for (size_t i = 1; i <= len; i++) {
        if (name[i] != '/' && name[i] != 0) continue;
        memcpy(prefix, name, i);
        prefix[i] = 0;
        if (H5Lexists(file, prefix, H5P_DEFAULT) <= 0) return 0;
    }
    return 1;
}

/* An independent read of flat range [offset, offset + count) into buf. */
static int read_range(hid_t dset, hid_t space, hid_t xfer, int ndim, const hsize_t *dims, size_t offset, size_t count,
                      float *buf) {
    int n_calls = 0;
    return transfer(dset, space, xfer, ndim, dims, offset, count, buf, 0, &n_calls);
}

static int read_piece(hid_t file, hid_t xfer, rt_ckpt_piece *p, int rank, const char *path, rt_error *err) {
    if (!dataset_exists(file, p->name)) return rt_fail(err, "%s: dataset %s is missing", path, p->name);
    hsize_t want[RT_CKPT_STORE_MAX_DIMS], found[RT_CKPT_STORE_MAX_DIMS];
    for (int d = 0; d < p->ndim; d++)
        want[d] = p->shape[d];
    hid_t dset = H5Dopen2(file, p->name, H5P_DEFAULT), type = -1, space = -1;
    int rc = dset < 0 ? h5_fail(err, path, p->name, "H5Dopen") : 0;
    if (rc == 0 && ((type = H5Dget_type(dset)) < 0 || (space = H5Dget_space(dset)) < 0))
        rc = h5_fail(err, path, p->name, "H5Dget_type/space");
    if (rc == 0 && (H5Tget_class(type) != H5T_FLOAT || H5Tget_size(type) != 4))
        rc = rt_fail(err, "%s: dataset %s is not float32", path, p->name);
    int ndim = rc == 0 ? H5Sget_simple_extent_ndims(space) : -1;
    if (rc == 0 && (ndim < 0 || ndim > RT_CKPT_STORE_MAX_DIMS)) {
        rc = rt_fail(err, "%s: dataset %s has %d dimensions, expected %d", path, p->name, ndim, p->ndim);
    } else if (rc == 0) {
        H5Sget_simple_extent_dims(space, found, NULL);
        int same = ndim == p->ndim;
        for (int d = 0; d < ndim && same; d++)
            same = found[d] == want[d];
        char want_text[128], found_text[128];
        if (!same)
            rc = rt_fail(err, "%s: dataset %s has shape %s, expected %s", path, p->name,
                         rt_h5_format_shape(ndim, found, found_text), rt_h5_format_shape(p->ndim, want, want_text));
    }
    size_t offset, count, numel = numel_of(p), block = 0;
    range_of(p, rank, 0, &offset, &count);
    uint64_t *stored = NULL;
    if (rc == 0) rc = rt_block_sum_read_attrs(dset, numel, &block, &stored, path, p->name, err);
    if (rc == 0 && count > 0 && read_range(dset, space, xfer, p->ndim, want, offset, count, p->data) != 0)
        rc = h5_fail(err, path, p->name, "H5Dread (storage error)");
    if (rc == 0 && count > 0) {
        /* the blocks this range touches are verified whole: their parts outside the range are read too */
        size_t end = offset + count, first_block = offset / block, last_block = (end - 1) / block;
        size_t head = offset - first_block * block;
        size_t tail = ((last_block + 1) * block < numel ? (last_block + 1) * block : numel) - end;
        float *edges = head + tail ? malloc_check((head + tail) * sizeof *edges) : NULL;
        float *tail_values = tail ? edges + head : NULL;
        if ((head && read_range(dset, space, xfer, p->ndim, want, offset - head, head, edges)) ||
            (tail && read_range(dset, space, xfer, p->ndim, want, end, tail, tail_values)))
            rc = h5_fail(err, path, p->name, "H5Dread of the checksum blocks' edges (storage error)");
        uint64_t *sums = calloc_check(last_block - first_block + 1, sizeof *sums);
        rt_block_sum_add(sums, first_block, block, offset - head, edges, head);
        rt_block_sum_add(sums, first_block, block, offset, p->data, count);
        rt_block_sum_add(sums, first_block, block, end, tail_values, tail);
        if (rc == 0)
            rc = rt_block_sum_verify(sums, stored, first_block, last_block - first_block + 1, block, numel, path,
                                     p->name, err);
        free(sums);
        free(edges);
    }
    free(stored);
    if (space >= 0) H5Sclose(space);
    if (type >= 0) H5Tclose(type);
    if (dset >= 0) H5Dclose(dset);
    return rc;
}

int rt_ckpt_store_read(MPI_Comm comm, const char *path, rt_ckpt_piece *pieces, int n_pieces, rt_ckpt_attrs *attrs,
                       rt_error *err) {
    rt_error local = {{0}};
    int rank, rc;
    MPI_Comm_rank(comm, &rank);
    H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
    for (int i = 0; attrs && i < attrs->n_texts; i++)
        attrs->texts[i].text = NULL;
    if (check_plan(comm, path, pieces, n_pieces, attrs, &local)) goto out;
    /* independent reads: a storage or checksum error on one rank cannot strand the others inside a collective
     * transfer, and each rank reads a different number of boxes */
    hid_t fapl = H5Pcreate(H5P_FILE_ACCESS), xfer = H5Pcreate(H5P_DATASET_XFER), file = -1;
    rc = fapl >= 0 && xfer >= 0 && H5Pset_fapl_mpio(fapl, comm, MPI_INFO_NULL) >= 0 &&
                 H5Pset_dxpl_mpio(xfer, H5FD_MPIO_INDEPENDENT) >= 0
             ? 0
             : h5_fail(&local, path, "file", "property lists");
    if (rc == 0 && access(path, R_OK) != 0) rc = rt_fail(&local, "%s: cannot read: %s", path, strerror(errno));
    if (rc == 0 && H5Fis_hdf5(path) <= 0) rc = rt_fail(&local, "%s: not an HDF5 file", path);
    if (rc == 0 && (file = H5Fopen(path, H5F_ACC_RDONLY, fapl)) < 0) rc = h5_fail(&local, path, "file", "H5Fopen");
    rc = agree(comm, rc, &local);
    int opened = rc == 0; /* on every rank, so the agreements below are reached by all */
    char *format = NULL;
    int64_t version = 0;
    if (rc == 0) rc = read_attr(file, "format", 1, &format, NULL, path, &local);
    if (rc == 0 && strcmp(format, RT_CHECKPOINT_FORMAT) != 0)
        rc = rt_fail(&local, "%s: format is '%.100s', expected '%s'", path, format, RT_CHECKPOINT_FORMAT);
    if (rc == 0) rc = read_attr(file, "version", 0, NULL, &version, path, &local);
    if (rc == 0 && version != RT_CHECKPOINT_VERSION)
        rc = rt_fail(&local, "%s: version is %lld, this build reads %d", path, (long long)version,
                     RT_CHECKPOINT_VERSION);
    free(format);
    if (opened) rc = agree(comm, rc, &local);
    for (int i = 0; i < n_pieces && rc == 0; i++)
        rc = agree(comm, read_piece(file, xfer, &pieces[i], rank, path, &local), &local);
    for (int i = 0; attrs && i < attrs->n_texts && rc == 0; i++)
        rc = agree(comm, read_attr(file, attrs->texts[i].key, 1, &attrs->texts[i].text, NULL, path, &local), &local);
    for (int i = 0; attrs && i < attrs->n_ints && rc == 0; i++)
        rc = agree(comm, read_attr(file, attrs->ints[i].key, 0, NULL, &attrs->ints[i].value, path, &local), &local);
    if (file >= 0 && H5Fclose(file) < 0 && rc == 0) rc = h5_fail(&local, path, "file", "H5Fclose");
    if (xfer >= 0) H5Pclose(xfer);
    if (fapl >= 0) H5Pclose(fapl);
    if (opened) rc = agree(comm, rc, &local);
    if (rc != 0)
        for (int i = 0; attrs && i < attrs->n_texts; i++)
            free(attrs->texts[i].text), attrs->texts[i].text = NULL;
out:
    if (local.msg[0] == 0) return 0;
    if (err) *err = local;
    return -1;
}
