/* block_sum.h: rank-count-independent checksums of fp32 tensors, per fixed block of elements, kept as HDF5
 * attributes of the dataset they cover. */
#ifndef RT_BLOCK_SUM_H
#define RT_BLOCK_SUM_H

#include <hdf5.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/common.h"

/*
 * Why not HDF5's Fletcher32 filter: Debian 12's parallel HDF5 (1.10.8) allocates and fills every chunk of a
 * filtered dataset when it is created (whatever the fill time), so each checkpoint would be written twice
 * and the zeros checksummed on the way; measured, that halved the save rate. Unfiltered contiguous
 * datasets are written once, and these sums replace the filter.
 *
 * The sum. The flat row-major tensor is cut into blocks of B elements (a power of two, at least
 * RT_BLOCK_SUM_MIN_ELEMS, large enough that there are at most RT_BLOCK_SUM_MAX_BLOCKS blocks; the last may
 * be short). A block's sum is, modulo 2^64, the sum over its elements of mix(i, bits), where i is the
 * element's global flat index, bits its fp32 bit pattern and mix(i, bits) = f(i * 0x9E3779B97F4A7C15 ^ bits)
 * with f(z) = z * 0xFF51AFD7ED558CCD ^ (z * 0xFF51AFD7ED558CCD >> 33), a bijection of 64 bits (one round of
 * MurmurHash3's finaliser). So:
 *  - any rank can add up any part of a block on its own, and the parts' sums add up to the block's: the
 *    writers of one tensor combine their partial sums with one MPI_Allreduce (MPI_SUM), whatever the
 *    split, and the stored sums do not depend on the rank count;
 *  - one changed element always changes its block's sum (mix is a bijection, so the term changes), and
 *    moved or swapped values change it too (the index is mixed in); larger damage goes unnoticed with
 *    probability about 2^-64 per block.
 * Attributes on each dataset: "checksum_block" (int64, B) and "block_checksums" (uint64, one per block).
 */
#define RT_BLOCK_SUM_MIN_ELEMS ((size_t)1 << 16)
#define RT_BLOCK_SUM_MAX_BLOCKS ((size_t)4096)

/* B for a tensor of numel elements (numel >= 1). */
size_t rt_block_sum_block_elems(size_t numel);
size_t rt_block_sum_n_blocks(size_t numel, size_t block_elems);

/* Adds values[0..count), global flat elements [offset, offset + count), into sums[b - first_block] for the
 * blocks b they fall in. */
void rt_block_sum_add(uint64_t *sums, size_t first_block, size_t block_elems, size_t offset, const float *values,
                      size_t count);

/* Writes both attributes on dset (collective under the MPI-IO driver: every rank passes the same sums). */
int rt_block_sum_write_attrs(hid_t dset, size_t block_elems, const uint64_t *sums, size_t n_blocks);

/* Reads the attributes of dset (dataset name, in file path, for messages), checking that the block size is
 * rt_block_sum_block_elems(numel) and that there is one sum per block; *sums is malloc'd (the caller frees).
 * A dataset without them: "PATH: dataset NAME has no block checksums". */
int rt_block_sum_read_attrs(hid_t dset, size_t numel, size_t *block_elems, uint64_t **sums, const char *path,
                            const char *name, rt_error *err);

/* Compares computed[0..n), the sums of blocks [first_block, first_block + n), with stored (every block's sum);
 * on a difference fails with
 * "PATH: dataset NAME: checksum mismatch in elements [a, b) (block k of N)". */
int rt_block_sum_verify(const uint64_t *computed, const uint64_t *stored, size_t first_block, size_t n,
                        size_t block_elems, size_t numel, const char *path, const char *name, rt_error *err);

#endif
