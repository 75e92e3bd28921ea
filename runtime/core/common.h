/* common.h: error values, checked allocation and file wrappers, fatal exit that brings down the whole job. */
#ifndef RT_COMMON_H
#define RT_COMMON_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/*
 * Errors are values. A function that can fail on user input returns 0 on
 * success and -1 on failure, after writing one line into an rt_error that
 * names the input, what was expected and what was found. The caller either
 * adds context or, at the top (the CLI), prints it and exits non-zero.
 * Programming errors and out-of-memory are not values: they go through
 * rt_fatal, which aborts every rank of the job so nothing hangs.
 */
typedef struct rt_error {
    char msg[1024];
} rt_error;

/* Formats into err (if non-NULL) and returns -1, so call sites can `return rt_fail(...)`. Control characters
 * (from quoted input) become '?', so the message stays one line. */
int rt_fail(rt_error *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Prints "ringtrain: <msg>" on stderr and ends the job (MPI_Abort when MPI runs). */
_Noreturn void rt_fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Installed by the communicator so rt_fatal can take every rank down. */
void rt_set_abort_hook(void (*hook)(int exit_code));

void *rt_malloc_check(size_t bytes, const char *file, int line);
void *rt_calloc_check(size_t count, size_t size, const char *file, int line);
#define malloc_check(bytes) rt_malloc_check((bytes), __FILE__, __LINE__)
#define calloc_check(count, size) rt_calloc_check((count), (size), __FILE__, __LINE__)

/*
 * Checked output. Every write, flush, fsync and close is checked; a failure
 * is one line "<path>: <what> failed: <reason>" naming the user's file (not
 * its .tmp). A file written in full goes to PATH.tmp and is renamed onto PATH
 * only when everything succeeded, so PATH is always the old file or the
 * complete new one, and no .tmp is left behind on failure.
 */
#define RT_TMP_PATH_LEN 1100 /* a path of up to 1024 bytes, plus ".tmp" */

/* Finishes a file written in full at tmp_path: flush, fsync, close, rename onto path. When rc is already
 * non-zero (the caller's write failed, err set) or any step fails, tmp_path is removed and -1 returned, so no
 * partial file is ever left under either name. */
int rt_commit_tmp_file(FILE *file, const char *tmp_path, const char *path, int rc, rt_error *err);
/* write(2) until all bytes are out (short writes continue, EINTR retries); name is what errors call the file. */
int rt_write_all(int fd, const void *data, size_t bytes, const char *name, rt_error *err);
/* fsync (when rc is 0) and close fd, whatever rc is; returns rc, or -1 when fsync or close failed. */
int rt_sync_close(int fd, const char *name, int rc, rt_error *err);
/* Writes bytes as the whole new content of path (PATH.tmp, fsync, rename). */
int rt_write_file_atomic(const char *path, const void *data, size_t bytes, rt_error *err);

/* Formats a byte count as "12.3 MiB" into out; returns out. */
const char *rt_format_bytes(size_t bytes, char out[32]);

/* Parses "123", "4K", "16M", "4G" (powers of 1024). Returns 0 on success. */
int rt_parse_bytes(const char *text, size_t *out);

/* Monotonic wall clock in seconds. */
double rt_now_s(void);

#endif
