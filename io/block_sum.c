/* block_sum.c: the block checksums of block_sum.h and their two HDF5 attributes. */
#include "block_sum.h"

#include <stdlib.h>
#include <string.h>

#define SUMS_KEY "block_checksums"
#define BLOCK_KEY "checksum_block"

size_t rt_block_sum_block_elems(size_t numel) {
    size_t block = RT_BLOCK_SUM_MIN_ELEMS;
    while (numel / block >= RT_BLOCK_SUM_MAX_BLOCKS)
        block *= 2;
    return block;
}

size_t rt_block_sum_n_blocks(size_t numel, size_t block_elems) { return (numel + block_elems - 1) / block_elems; }

/* One multiply and one xor-shift, each a bijection of 64 bits, so the whole map is one (the sum sees every
 * changed element); half the cost of splitmix64's two rounds, which mattered next to the disk (block_sum.h). */
static inline uint64_t mix(uint64_t index, uint32_t bits) {
    uint64_t z = (index * 0x9E3779B97F4A7C15ULL ^ bits) * 0xFF51AFD7ED558CCDULL;
    return z ^ (z >> 33);
}

void rt_block_sum_add(uint64_t *sums, size_t first_block, size_t block_elems, size_t offset, const float *values,
                      size_t count) {
    for (size_t done = 0; done < count;) {
        size_t index = offset + done, block = index / block_elems;
        size_t n = (block + 1) * block_elems - index;
        if (n > count - done) n = count - done;
        uint64_t sum = 0;
        for (size_t i = 0; i < n; i++) {
            uint32_t bits;
            memcpy(&bits, &values[done + i], sizeof bits);
            sum += mix(index + i, bits);
        }
        sums[block - first_block] += sum;
        done += n;
    }
}

static int put_attr(hid_t dset, const char *key, hid_t file_type, hid_t mem_type, hsize_t n, const void *data) {
    hid_t space = n == 0 ? H5Screate(H5S_SCALAR) : H5Screate_simple(1, &n, NULL), attr = -1;
    int ok = space >= 0 && (attr = H5Acreate2(dset, key, file_type, space, H5P_DEFAULT, H5P_DEFAULT)) >= 0 &&
             H5Awrite(attr, mem_type, data) >= 0;
    if (attr >= 0 && H5Aclose(attr) < 0) ok = 0;
    if (space >= 0) H5Sclose(space);
    return ok ? 0 : -1;
}

int rt_block_sum_write_attrs(hid_t dset, size_t block_elems, const uint64_t *sums, size_t n_blocks) {
    int64_t block = (int64_t)block_elems;
    if (put_attr(dset, BLOCK_KEY, H5T_STD_I64LE, H5T_NATIVE_INT64, 0, &block)) return -1;
    return put_attr(dset, SUMS_KEY, H5T_STD_U64LE, H5T_NATIVE_UINT64, n_blocks, sums);
}

/* Reads attribute key of dset as n integers of mem_type (8 bytes each) into out; -1 on any mismatch. */
static int get_attr(hid_t dset, const char *key, hid_t mem_type, hssize_t n, void *out) {
    if (H5Aexists(dset, key) <= 0) return -1;
    hid_t attr = H5Aopen(dset, key, H5P_DEFAULT), space = attr >= 0 ? H5Aget_space(attr) : -1;
    hid_t type = attr >= 0 ? H5Aget_type(attr) : -1;
    int ok = space >= 0 && type >= 0 && H5Tget_class(type) == H5T_INTEGER && H5Tget_size(type) == 8 &&
             H5Sget_simple_extent_npoints(space) == n && H5Aread(attr, mem_type, out) >= 0;
    if (type >= 0) H5Tclose(type);
    if (space >= 0) H5Sclose(space);
    if (attr >= 0) H5Aclose(attr);
    return ok ? 0 : -1;
}

int rt_block_sum_read_attrs(hid_t dset, size_t numel, size_t *block_elems, uint64_t **sums, const char *path,
                            const char *name, rt_error *err) {
    *sums = NULL;
    if (H5Aexists(dset, SUMS_KEY) <= 0 || H5Aexists(dset, BLOCK_KEY) <= 0)
        return rt_fail(err, "%s: dataset %s has no block checksums (attributes %s, %s)", path, name, BLOCK_KEY,
                       SUMS_KEY);
    int64_t block = 0;
    *block_elems = rt_block_sum_block_elems(numel);
    if (get_attr(dset, BLOCK_KEY, H5T_NATIVE_INT64, 1, &block) || block != (int64_t)*block_elems)
        return rt_fail(err, "%s: dataset %s: attribute %s is %lld, expected %zu for its %zu elements", path, name,
                       BLOCK_KEY, (long long)block, *block_elems, numel);
    size_t n = rt_block_sum_n_blocks(numel, *block_elems);
    *sums = malloc_check(n * sizeof **sums);
    if (get_attr(dset, SUMS_KEY, H5T_NATIVE_UINT64, (hssize_t)n, *sums) == 0) return 0;
    free(*sums), *sums = NULL;
    return rt_fail(err, "%s: dataset %s: attribute %s is not %zu uint64 values (one per block of %zu)", path, name,
                   SUMS_KEY, n, *block_elems);
}

int rt_block_sum_verify(const uint64_t *computed, const uint64_t *stored, size_t first_block, size_t n,
                        size_t block_elems, size_t numel, const char *path, const char *name, rt_error *err) {
    for (size_t i = 0; i < n; i++) {
        if (computed[i] == stored[first_block + i]) continue;
        size_t b = first_block + i, end = (b + 1) * block_elems < numel ? (b + 1) * block_elems : numel;
        return rt_fail(err, "%s: dataset %s: checksum mismatch in elements [%zu, %zu) (block %zu of %zu)", path, name,
                       b * block_elems, end, b, rt_block_sum_n_blocks(numel, block_elems));
    }
    return 0;
}
