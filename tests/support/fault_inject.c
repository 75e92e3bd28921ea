/*
 * fault_inject.c: an LD_PRELOAD shim that makes writes to chosen files fail, for the fault tests.
 *
 * A file is chosen by the path its descriptor refers to (read from
 * /proc/self/fd at each call, so dup2 and reuse of descriptor numbers are
 * seen), matched with fnmatch against RT_FAULT_PATH, e.g. '*\/model.h5.tmp'.
 * Nothing happens when RT_FAULT_PATH is unset, so the shim is harmless in
 * processes that do not ask for it (mpirun, orted).
 *
 *   RT_FAULT_PATH   fnmatch pattern for the full path of the file
 *   RT_FAULT_AFTER  bytes the matching files may take in all (default 0)
 *   RT_FAULT_MODE   enospc (default): the write that crosses the limit is
 *                   short (it writes what still fits), every later one fails
 *                   with ENOSPC, like a full disk;
 *                   eio: the same with EIO;
 *                   close: every write succeeds, but fsync, fdatasync, fflush
 *                   and close fail with ENOSPC (how NFS reports a full disk)
 *   RT_FAULT_RANK   only in the MPI rank of that number (OMPI_COMM_WORLD_RANK or PMI_RANK)
 *
 * stdio writes go through glibc's internal write, which a preload cannot
 * see: fwrite is limited like write (fputs and fprintf are not), and fflush
 * and fclose fail in close mode. The shim is built without sanitizers and calls the next
 * definition of each function (libc's, or the sanitizer's interceptor).
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <fnmatch.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

enum { MODE_ENOSPC, MODE_EIO, MODE_CLOSE };

static int configured, active, mode;
static const char *pattern;
static long long budget; /* bytes the matching files may still take */

static void configure(void) {
    if (configured) return;
    configured = 1;
    pattern = getenv("RT_FAULT_PATH");
    if (!pattern || !pattern[0]) return;
    const char *rank = getenv("RT_FAULT_RANK"), *my_rank = getenv("OMPI_COMM_WORLD_RANK");
    if (!my_rank) my_rank = getenv("PMI_RANK");
    if (rank && rank[0] && (!my_rank || strcmp(rank, my_rank) != 0)) return;
    const char *after = getenv("RT_FAULT_AFTER"), *name = getenv("RT_FAULT_MODE");
    budget = after ? atoll(after) : 0;
    mode = !name || strcmp(name, "enospc") == 0 ? MODE_ENOSPC : strcmp(name, "eio") == 0 ? MODE_EIO : MODE_CLOSE;
    active = 1;
}

static int matches(int fd) {
    configure();
    if (!active || fd < 0) return 0;
    char link[64], target[4096];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, target, sizeof target - 1);
    if (n <= 0) return 0;
    target[n] = '\0';
    return fnmatch(pattern, target, 0) == 0;
}

/* How many of count bytes a write to fd may take; -1 (errno set) when none. */
static ssize_t allowed(int fd, size_t count) {
    if (count == 0 || mode == MODE_CLOSE || !matches(fd)) return (ssize_t)count;
    if (budget <= 0) {
        errno = mode == MODE_EIO ? EIO : ENOSPC;
        return -1;
    }
    size_t take = (long long)count > budget ? (size_t)budget : count;
    budget -= (long long)take;
    return (ssize_t)take;
}

static int fails_at_close(int fd) {
    if (!matches(fd) || mode != MODE_CLOSE) return 0;
    errno = ENOSPC;
    return 1;
}

#define NEXT(name) ((__typeof__(&name))dlsym(RTLD_NEXT, #name))

ssize_t write(int fd, const void *buf, size_t count) {
    ssize_t take = allowed(fd, count);
    return take < 0 ? -1 : NEXT(write)(fd, buf, (size_t)take);
}

ssize_t pwrite(int fd, const void *buf, size_t count, off_t offset) {
    ssize_t take = allowed(fd, count);
    return take < 0 ? -1 : NEXT(pwrite)(fd, buf, (size_t)take, offset);
}

ssize_t pwrite64(int fd, const void *buf, size_t count, off_t offset) {
    ssize_t take = allowed(fd, count);
    return take < 0 ? -1 : NEXT(pwrite64)(fd, buf, (size_t)take, offset);
}

/* Vectored writes are refused whole once the budget is spent (no partial vector). */
ssize_t writev(int fd, const struct iovec *iov, int iovcnt) {
    size_t total = 0;
    for (int i = 0; i < iovcnt; i++)
        total += iov[i].iov_len;
    if (total > 0 && mode != MODE_CLOSE && matches(fd)) {
        if (budget < (long long)total) {
            budget = 0;
            errno = mode == MODE_EIO ? EIO : ENOSPC;
            return -1;
        }
        budget -= (long long)total;
    }
    return NEXT(writev)(fd, iov, iovcnt);
}

size_t fwrite(const void *ptr, size_t size, size_t n, FILE *stream) {
    if (size == 0) return NEXT(fwrite)(ptr, size, n, stream);
    ssize_t take = allowed(fileno(stream), size * n);
    if (take < 0) return 0;
    return NEXT(fwrite)(ptr, size, (size_t)take / size, stream);
}

int fsync(int fd) { return fails_at_close(fd) ? -1 : NEXT(fsync)(fd); }

int fdatasync(int fd) { return fails_at_close(fd) ? -1 : NEXT(fdatasync)(fd); }

int close(int fd) {
    int fail = fails_at_close(fd);
    int rc = NEXT(close)(fd);
    if (fail) errno = ENOSPC;
    return fail ? -1 : rc;
}

int fflush(FILE *stream) {
    if (stream && fails_at_close(fileno(stream))) return EOF; /* fflush(NULL) flushes all */
    return NEXT(fflush)(stream);
}

int fclose(FILE *stream) {
    int fail = fails_at_close(fileno(stream));
    int rc = NEXT(fclose)(stream);
    if (fail) errno = ENOSPC;
    return fail ? EOF : rc;
}
