/* ckpt_store.h: collective HDF5 storage of named global fp32 tensors; each rank writes and reads its own flat ranges.
 */
#ifndef RT_CKPT_STORE_H
#define RT_CKPT_STORE_H

#include <mpi.h>
#include <stddef.h>
#include <stdint.h>

#include "runtime/core/common.h"

/*
 * The storage half of a torch.distributed.checkpoint-style save: the caller
 * plans, per named global tensor, which flat element range of the row-major
 * tensor this rank holds; this layer writes every rank's piece into one
 * HDF5 file through the MPI-IO driver, and reads any other split back.
 * io does not depend on shard (both sit on runtime/): pieces are plain
 * (offset, count) ranges, and turning a DTensor placement or a ZeRO shard
 * into ranges is the caller's job.
 *
 * File (the layout of io/model_file.h, format "ringtrain-checkpoint",
 * version 2 as int32, so nothing depends on the rank count):
 *   /                 format, version, then the caller's string and int64 attributes
 *   <piece name>      float32 (IEEE LE), the global shape, contiguous, with the block checksums of
 *                     io/block_sum.h as two attributes (checksum_block, block_checksums)
 *
 * Pieces. A flat range [offset, offset + count) may start and end mid-row;
 * it is moved as a sequence of hyperslab boxes (for a 2-D tensor: a partial
 * first row, the whole rows, a partial last row), one H5Dwrite or H5Dread
 * per box with a memory space of the box's shape. Shard boundaries need not
 * be aligned to rows, so ZeRO keeps its even flat split and the file keeps
 * its global shapes. A replicated piece (every rank holds the whole tensor)
 * is written by rank 0 only; the others take part with empty selections, as
 * does every rank with count 0.
 *
 * Integrity. Each rank adds up the block sums of its range, one
 * MPI_Allreduce combines them, and every rank writes the same attributes. A
 * read checks every block its range touches, reading the rest of the first
 * and last block (at most two blocks more per tensor), so each rank verifies
 * what it loads on its own whatever the split. Writes are collective (every
 * rank makes as many H5Dwrite calls as the rank with the most boxes, the
 * others with empty selections); reads are independent.
 *
 * Collectives. Write and read are collective over comm: every rank passes
 * the same names, shapes, replicated flags and attribute keys in the same
 * order (checked by a hash, so a mismatch is an error, not a hang); for a
 * write the non-replicated counts of each tensor must sum to its size.
 * Every HDF5 call is checked on every rank and the ranks agree after each
 * step: on failure every rank returns -1 with the same one-line message
 * (the first failing rank's), naming the file (the user's path, not the
 * .tmp) and the dataset.
 *
 * Completion. The file is written as PATH.tmp; after every rank closed it,
 * rank 0 fsyncs it, renames it onto PATH and fsyncs the directory. On any
 * failure the .tmp is removed and PATH is untouched.
 */
#define RT_CKPT_STORE_MAX_DIMS 8

typedef struct {
    const char *name;                     /* dataset path, e.g. "/optim/m/wte"; groups are created */
    int ndim;                             /* 1..RT_CKPT_STORE_MAX_DIMS */
    size_t shape[RT_CKPT_STORE_MAX_DIMS]; /* global shape, every extent >= 1 */
    int replicated;                       /* 1: this rank holds the whole tensor (offset and count ignored) */
    size_t offset, count;                 /* this rank's flat range of the row-major global tensor */
    float *data;                          /* count floats (numel when replicated); read into, or written from */
} rt_ckpt_piece;

typedef struct {
    const char *key;
    char *text; /* write: the value (rank 0's is stored); read: malloc'd, the caller frees */
} rt_ckpt_text_attr;

typedef struct {
    const char *key;
    int64_t value; /* write: rank 0's is stored; read: the stored value */
} rt_ckpt_int_attr;

typedef struct {
    rt_ckpt_text_attr *texts;
    int n_texts;
    rt_ckpt_int_attr *ints;
    int n_ints;
} rt_ckpt_attrs;

/* Writes every piece and attribute into path (via path.tmp). Collective over comm. attrs may be NULL. */
int rt_ckpt_store_write(MPI_Comm comm, const char *path, const rt_ckpt_piece *pieces, int n_pieces,
                        const rt_ckpt_attrs *attrs, rt_error *err);
/* Checks format and version, then reads each piece's range (shape must match) and each attribute (must
 * exist; texts are malloc'd). Collective over comm. attrs may be NULL. On failure no text is left allocated. */
int rt_ckpt_store_read(MPI_Comm comm, const char *path, rt_ckpt_piece *pieces, int n_pieces, rt_ckpt_attrs *attrs,
                       rt_error *err);

#endif
