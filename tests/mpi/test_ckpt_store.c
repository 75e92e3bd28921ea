/* test_ckpt_store.c: the collective checkpoint storage: save with one split, load with others, and every refusal
 * (shape, missing dataset, not HDF5, flipped bytes, plans that differ, a full disk). Runs under mpirun on 1 to 4
 * ranks. With an argument, rank 0 copies the reference checkpoint there before cleaning up. */
#include <errno.h>
#include <fcntl.h>
#include <hdf5.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/ckpt_store.h"
#include "runtime/comm/comm.h"
#include "tests/support/fixtures.h"
#include "tests/support/testing.h"

/*
 * Every value is a function of (tensor, flat index) that any rank computes
 * (the reference, independent of the code under test), so a rank checks the
 * range it read without knowing who wrote it. Splits are written here:
 * uneven cuts (k^2 and k^3 of the size), that start and end mid-row and
 * leave some ranks empty, for the save; the mirrored cuts, and the whole
 * tensor on every rank through a self communicator, for the loads.
 */

/* /optim/master/big spans three checksum blocks (65536, 65536, 18928 elements), so the splits cut blocks. */
enum { N_TENSORS = 6, BIG = 5 };
static const char *names[N_TENSORS] = {"/model/a",   "/model/b",   "/optim/m/c",
                                       "/optim/v/d", "/model/rep", "/optim/master/big"};
static const int ndims[N_TENSORS] = {2, 2, 1, 3, 2, 3};
static const size_t shapes[N_TENSORS][3] = {{7, 5}, {3, 13}, {11}, {3, 2, 5}, {4, 3}, {3, 100, 500}};
static const int replicated[N_TENSORS] = {0, 0, 0, 0, 1, 0};

static int rank, n_ranks;
static char dir[256];

static float value_at(int tensor, size_t i) {
    uint64_t state = (uint64_t)(tensor + 1) * 0x9E3779B97F4A7C15ULL + i * 0xBF58476D1CE4E5B9ULL + 1;
    test_rand_u64(&state);
    return (float)((test_rand_u64(&state) >> 40) * 0x1.0p-24) - 0.5f;
}

static size_t numel(int t) {
    size_t n = 1;
    for (int d = 0; d < ndims[t]; d++)
        n *= shapes[t][d];
    return n;
}

/* Cut k of P: power 2 or 3 pushes the cuts to the end; mirrored flips them to the start. */
static size_t cut(size_t n, int k, int parts, int power, int mirrored) {
    if (mirrored) return n - cut(n, parts - k, parts, power, 0);
    size_t num = 1, den = 1;
    for (int p = 0; p < power; p++)
        num *= (size_t)k, den *= (size_t)parts;
    return n * num / den;
}

/* The pieces of rank r of P, buffers filled with the reference (fill) or zero. */
static void plan(rt_ckpt_piece *pieces, int r, int parts, int mirrored, int fill) {
    for (int t = 0; t < N_TENSORS; t++) {
        rt_ckpt_piece *p = &pieces[t];
        memset(p, 0, sizeof *p);
        p->name = names[t];
        p->ndim = ndims[t];
        memcpy(p->shape, shapes[t], sizeof shapes[t]);
        p->replicated = replicated[t];
        int power = t == 2 ? 3 : 2;
        p->offset = p->replicated ? 0 : cut(numel(t), r, parts, power, mirrored);
        p->count = p->replicated ? numel(t) : cut(numel(t), r + 1, parts, power, mirrored) - p->offset;
        p->data = calloc_check(p->count + 1, sizeof(float));
        for (size_t i = 0; fill && i < p->count; i++)
            p->data[i] = value_at(t, p->offset + i);
    }
}

static void free_plan(rt_ckpt_piece *pieces) {
    for (int t = 0; t < N_TENSORS; t++)
        free(pieces[t].data);
}

/* Every element of every piece equals the reference, exactly. */
static int plan_matches(const rt_ckpt_piece *pieces) {
    int bad = 0;
    for (int t = 0; t < N_TENSORS; t++)
        for (size_t i = 0; i < pieces[t].count; i++)
            if (pieces[t].data[i] != value_at(pieces[t].replicated ? t : t, pieces[t].offset + i)) {
                if (!bad) fprintf(stderr, "\n  %s[%zu] differs\n", names[t], pieces[t].offset + i);
                bad = 1;
            }
    return !bad;
}

static rt_ckpt_text_attr texts[2] = {{"config", "[model]\npreset = tiny\n"}, {"note", ""}};
static rt_ckpt_int_attr ints[2] = {{"step", 42}, {"tokens", -7}};
static rt_ckpt_attrs attrs = {texts, 2, ints, 2};

static void path_in_dir(char *out, size_t size, const char *file) { snprintf(out, size, "%s/%s", dir, file); }

static void save_reference(const char *path) {
    rt_ckpt_piece pieces[N_TENSORS];
    plan(pieces, rank, n_ranks, 0, 1);
    rt_error err = {{0}};
    int rc = rt_ckpt_store_write(MPI_COMM_WORLD, path, pieces, N_TENSORS, &attrs, &err);
    if (rc) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL(rc, 0);
    free_plan(pieces);
}

/* One failing read on every rank: same rc, message holding each of the needles. */
static void expect_read_error(MPI_Comm comm, const char *path, rt_ckpt_piece *pieces, int n, const char *needle1,
                              const char *needle2) {
    rt_error err = {{0}};
    int rc = rt_ckpt_store_read(comm, path, pieces, n, NULL, &err);
    CU_ASSERT_EQUAL(rc, -1);
    int found = strstr(err.msg, needle1) && (!needle2 || strstr(err.msg, needle2)) && !strchr(err.msg, '\n');
    if (!found) fprintf(stderr, "\n  message '%s' lacks '%s' / '%s'\n", err.msg, needle1, needle2 ? needle2 : "");
    CU_ASSERT(found);
}

static void test_roundtrip_resharded(void) {
    char path[512], tmp[600];
    path_in_dir(path, sizeof path, "ckpt.h5");
    save_reference(path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CU_ASSERT_EQUAL(access(tmp, F_OK), -1); /* the .tmp was renamed */

    /* the mirrored split on the same ranks */
    rt_ckpt_piece pieces[N_TENSORS];
    plan(pieces, rank, n_ranks, 1, 0);
    texts[0].text = texts[1].text = NULL;
    ints[0].value = ints[1].value = 0;
    rt_error err = {{0}};
    int rc = rt_ckpt_store_read(MPI_COMM_WORLD, path, pieces, N_TENSORS, &attrs, &err);
    if (rc) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(plan_matches(pieces));
    CU_ASSERT(texts[0].text && strcmp(texts[0].text, "[model]\npreset = tiny\n") == 0);
    CU_ASSERT(texts[1].text && strcmp(texts[1].text, "") == 0);
    CU_ASSERT_EQUAL(ints[0].value, 42);
    CU_ASSERT_EQUAL(ints[1].value, -7);
    free(texts[0].text), free(texts[1].text);
    texts[0].text = "[model]\npreset = tiny\n", texts[1].text = "";
    ints[0].value = 42, ints[1].value = -7;
    free_plan(pieces);

    /* every tensor whole, on each rank alone */
    plan(pieces, 0, 1, 0, 0);
    rc = rt_ckpt_store_read(MPI_COMM_SELF, path, pieces, N_TENSORS, NULL, &err);
    if (rc) fprintf(stderr, "\n  %s\n", err.msg);
    CU_ASSERT_EQUAL(rc, 0);
    CU_ASSERT(plan_matches(pieces));
    free_plan(pieces);
}

static void test_refusals(void) {
    char path[512], junk[512];
    path_in_dir(path, sizeof path, "ckpt.h5");
    rt_ckpt_piece pieces[N_TENSORS];
    plan(pieces, rank, n_ranks, 1, 0);

    rt_ckpt_piece wrong = pieces[0];
    wrong.shape[0] = 5, wrong.shape[1] = 7;
    expect_read_error(MPI_COMM_WORLD, path, &wrong, 1, "/model/a has shape (7, 5), expected (5, 7)", path);
    wrong.ndim = 1, wrong.shape[0] = 35;
    expect_read_error(MPI_COMM_WORLD, path, &wrong, 1, "/model/a has shape (7, 5), expected (35)", NULL);

    rt_ckpt_piece missing = pieces[2];
    missing.name = "/optim/m/nope";
    expect_read_error(MPI_COMM_WORLD, path, &missing, 1, "dataset /optim/m/nope is missing", path);
    missing.name = "/nogroup/c";
    expect_read_error(MPI_COMM_WORLD, path, &missing, 1, "dataset /nogroup/c is missing", NULL);

    path_in_dir(junk, sizeof junk, "junk.h5");
    if (rank == 0) {
        FILE *f = fopen(junk, "w");
        fputs("not a checkpoint\n", f);
        fclose(f);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    expect_read_error(MPI_COMM_WORLD, junk, pieces, N_TENSORS, "not an HDF5 file", junk);
    path_in_dir(junk, sizeof junk, "absent.h5");
    expect_read_error(MPI_COMM_WORLD, junk, pieces, N_TENSORS, "cannot read", junk);

    /* plans that differ between ranks are refused, not a hang */
    if (n_ranks > 1) {
        rt_ckpt_piece odd = pieces[1];
        if (rank == 1) odd.shape[0] = 4; /* still holds the rank's range */
        expect_read_error(MPI_COMM_WORLD, path, &odd, 1, "different tensor lists", NULL);
    }
    free_plan(pieces);
}

/* Flips bit 4 of the byte at byte_offset of dataset name's (contiguous) data. */
static void flip_byte(const char *path, const char *name, size_t byte_offset) {
    hid_t file = H5Fopen(path, H5F_ACC_RDONLY, H5P_DEFAULT), dset = H5Dopen2(file, name, H5P_DEFAULT);
    haddr_t addr = H5Dget_offset(dset);
    CU_ASSERT(addr != HADDR_UNDEF);
    H5Dclose(dset);
    H5Fclose(file);
    int fd = open(path, O_RDWR);
    unsigned char byte;
    CU_ASSERT(pread(fd, &byte, 1, (off_t)(addr + byte_offset)) == 1);
    byte ^= 0x10;
    CU_ASSERT(pwrite(fd, &byte, 1, (off_t)(addr + byte_offset)) == 1);
    close(fd);
}

/* One byte flipped in /model/b, one in block 1 of /optim/master/big: every read that touches either block
 * fails on the checksum, also a read whose own range holds none of the changed element (the block's rest
 * is read to check it), while a read of another block passes. */
static void test_flipped_byte(void) {
    char path[512], copy[512];
    path_in_dir(path, sizeof path, "ckpt.h5");
    path_in_dir(copy, sizeof copy, "flipped.h5");
    rt_ckpt_piece pieces[N_TENSORS];
    plan(pieces, rank, n_ranks, 0, 1);
    rt_error err = {{0}};
    CU_ASSERT_EQUAL(rt_ckpt_store_write(MPI_COMM_WORLD, copy, pieces, N_TENSORS, &attrs, &err), 0);
    if (rank == 0) {
        flip_byte(copy, "/model/b", 17);
        flip_byte(copy, "/optim/master/big", 4 * 70000 + 2);
    }
    MPI_Barrier(MPI_COMM_WORLD);
    free_plan(pieces);
    plan(pieces, rank, n_ranks, 1, 0);
    expect_read_error(MPI_COMM_WORLD, copy, pieces, N_TENSORS, "/model/b", "checksum mismatch in elements [0, 39)");
    free_plan(pieces);
    plan(pieces, 0, 1, 0, 0);
    expect_read_error(MPI_COMM_SELF, copy, pieces, N_TENSORS, "/model/b", "checksum mismatch");
    free_plan(pieces);

    plan(pieces, rank, n_ranks, 1, 0);
    rt_ckpt_piece big = pieces[BIG];
    big.data = calloc_check(18000, sizeof(float));
    big.offset = 65536 + 10000, big.count = 1; /* block 1, not the flipped element 70000 */
    expect_read_error(MPI_COMM_SELF, copy, &big, 1, "/optim/master/big: checksum mismatch in elements [65536, 131072)",
                      "block 1 of 3");
    big.offset = 131072 + 5, big.count = 18000; /* block 2 alone: intact */
    CU_ASSERT_EQUAL(rt_ckpt_store_read(MPI_COMM_SELF, copy, &big, 1, NULL, &err), 0);
    big.offset = 65530, big.count = 4; /* block 0 alone, ending 2 short of block 1 */
    CU_ASSERT_EQUAL(rt_ckpt_store_read(MPI_COMM_SELF, copy, &big, 1, NULL, &err), 0);
    for (size_t i = 0; i < big.count; i++)
        CU_ASSERT(big.data[i] == value_at(BIG, big.offset + i));
    free(big.data);
    free_plan(pieces);
}

/* A failure after the file was created (a second dataset of the same name) leaves the old file and no .tmp. */
static void test_failed_write_keeps_old(void) {
    char path[512], tmp[600];
    path_in_dir(path, sizeof path, "ckpt.h5");
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    rt_ckpt_piece pieces[N_TENSORS + 1];
    plan(pieces, rank, n_ranks, 0, 1);
    pieces[N_TENSORS] = pieces[1];
    pieces[N_TENSORS].data = pieces[1].data;
    for (size_t i = 0; i < pieces[0].count; i++)
        pieces[0].data[i] += 1.0f; /* would change /model/a if it landed */
    rt_error err = {{0}};
    CU_ASSERT_EQUAL(rt_ckpt_store_write(MPI_COMM_WORLD, path, pieces, N_TENSORS + 1, &attrs, &err), -1);
    CU_ASSERT(strstr(err.msg, "/model/b") && strstr(err.msg, path) && !strstr(err.msg, ".tmp"));
    CU_ASSERT_EQUAL(access(tmp, F_OK), -1);

    /* ranges that do not add up are refused before anything is created */
    pieces[1].count = 0;
    if (n_ranks == 1) pieces[0].count--;
    CU_ASSERT_EQUAL(rt_ckpt_store_write(MPI_COMM_WORLD, path, pieces, N_TENSORS, &attrs, &err), -1);
    CU_ASSERT(strstr(err.msg, "ranges hold") != NULL);
    CU_ASSERT_EQUAL(access(tmp, F_OK), -1);
    free_plan(pieces);

    plan(pieces, rank, n_ranks, 1, 0);
    CU_ASSERT_EQUAL(rt_ckpt_store_read(MPI_COMM_WORLD, path, pieces, N_TENSORS, NULL, &err), 0);
    CU_ASSERT(plan_matches(pieces)); /* still the reference */
    free_plan(pieces);
}

/* A 256 KiB tmpfs cannot hold a 1 MiB tensor: the write fails with one line, no .tmp, nothing hangs or crashes. */
static void test_full_disk(void) {
    char small[512], path[600], tmp[700];
    path_in_dir(small, sizeof small, "small");
    int mounted = 0;
    if (rank == 0) mounted = mkdir(small, 0700) == 0 && mount("tmpfs", small, "tmpfs", 0, "size=256k") == 0;
    MPI_Bcast(&mounted, 1, MPI_INT, 0, MPI_COMM_WORLD);
    if (!mounted) {
        if (rank == 0) printf("\n  (skipped: cannot mount a small tmpfs here: %s)\n", strerror(errno));
        return;
    }
    snprintf(path, sizeof path, "%s/full.h5", small);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    size_t n = (size_t)1 << 18, lo = n * (size_t)rank / (size_t)n_ranks, hi = n * (size_t)(rank + 1) / (size_t)n_ranks;
    rt_ckpt_piece big = {.name = "/model/big", .ndim = 2, .shape = {512, 512}, .offset = lo, .count = hi - lo};
    big.data = calloc_check(big.count + 1, sizeof(float));
    rt_error err = {{0}};
    CU_ASSERT_EQUAL(rt_ckpt_store_write(MPI_COMM_WORLD, path, &big, 1, &attrs, &err), -1);
    if (rank == 0) printf("\n  full disk: %s\n", err.msg);
    CU_ASSERT(strstr(err.msg, path) != NULL);
    CU_ASSERT_EQUAL(access(tmp, F_OK), -1);
    CU_ASSERT_EQUAL(access(path, F_OK), -1);
    free(big.data);
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) umount(small), rmdir(small);
}

int main(int argc, char **argv) {
    rt_comm *world = rt_comm_world_mpi(&argc, &argv);
    rank = world->rank, n_ranks = world->size;
    if (rank == 0) {
        snprintf(dir, sizeof dir, "/tmp/test_ckpt_store.XXXXXX");
        if (!mkdtemp(dir)) rt_fatal("mkdtemp failed");
    }
    MPI_Bcast(dir, sizeof dir, MPI_CHAR, 0, MPI_COMM_WORLD);
    static const test_case cases[] = {
        {"save on P ranks, load mirrored and whole", test_roundtrip_resharded},
        {"refusals: shape, missing, not HDF5, differing plans", test_refusals},
        {"a flipped byte fails the checksum", test_flipped_byte},
        {"a failed write keeps the old file", test_failed_write_keeps_old},
        {"a full disk fails cleanly", test_full_disk},
    };
    int status = test_mpi_run_suite(world, "ckpt_store", cases, (int)(sizeof cases / sizeof cases[0]));
    MPI_Barrier(MPI_COMM_WORLD);
    if (rank == 0) {
        char cmd[1400];
        if (argc > 1) { /* keep the reference checkpoint for ckpt_store_h5py.py */
            snprintf(cmd, sizeof cmd, "cp '%s/ckpt.h5' '%s'", dir, argv[1]);
            if (system(cmd) != 0) status = 1;
        }
        snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
        if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", dir);
    }
    rt_comm_finalize();
    return status;
}
