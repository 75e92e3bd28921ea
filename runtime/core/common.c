/* common.c: error formatting, checked allocation, checked file writes, the job-wide fatal exit. */
#include "common.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static void (*abort_hook)(int exit_code);

void rt_set_abort_hook(void (*hook)(int exit_code)) { abort_hook = hook; }

int rt_fail(rt_error *err, const char *fmt, ...) {
    if (err) {
        va_list args;
        va_start(args, fmt);
        vsnprintf(err->msg, sizeof err->msg, fmt, args);
        va_end(args);
        /* Messages quote what files hold (JSON strings, tensor names): a control character there would split
         * the one line every error is, or drive the terminal. */
        for (char *c = err->msg; *c; c++)
            if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
    }
    return -1;
}

_Noreturn void rt_fatal(const char *fmt, ...) {
    va_list args;
    va_start(args, fmt);
    fputs("ringtrain: ", stderr);
    vfprintf(stderr, fmt, args);
    fputc('\n', stderr);
    va_end(args);
    fflush(stderr);
    if (abort_hook) abort_hook(1);
    exit(1);
}

void *rt_malloc_check(size_t bytes, const char *file, int line) {
    void *ptr = malloc(bytes ? bytes : 1);
    if (!ptr) rt_fatal("out of host memory allocating %zu bytes (%s:%d)", bytes, file, line);
    return ptr;
}

void *rt_calloc_check(size_t count, size_t size, const char *file, int line) {
    void *ptr = calloc(count ? count : 1, size ? size : 1);
    if (!ptr) rt_fatal("out of host memory allocating %zu x %zu bytes (%s:%d)", count, size, file, line);
    return ptr;
}

const char *rt_format_bytes(size_t bytes, char out[32]) {
    static const char *units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    double value = (double)bytes;
    int unit = 0;
    while (value >= 1024.0 && unit < 4) {
        value /= 1024.0;
        unit++;
    }
    if (unit == 0)
        snprintf(out, 32, "%zu B", bytes);
    else
        snprintf(out, 32, "%.1f %s", value, units[unit]);
    return out;
}

int rt_parse_bytes(const char *text, size_t *out) {
    if (!text || !isdigit((unsigned char)text[0])) return -1;
    errno = 0;
    char *end = NULL;
    unsigned long long value = strtoull(text, &end, 10);
    if (errno) return -1;
    unsigned long long scale = 1;
    if (*end) {
        switch (toupper((unsigned char)*end)) {
        case 'K': scale = 1ULL << 10; break;
        case 'M': scale = 1ULL << 20; break;
        case 'G': scale = 1ULL << 30; break;
        case 'T': scale = 1ULL << 40; break;
        default: return -1;
        }
        end++;
        if (*end == 'i' || *end == 'I') end++;
        if (*end == 'b' || *end == 'B') end++;
        if (*end) return -1;
    }
    if (value > SIZE_MAX / scale) return -1;
    *out = (size_t)(value * scale);
    return 0;
}

double rt_now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* After a rename onto path: the rename is durable only once the directory entry is on disk. */
static int fsync_parent_dir(const char *path, rt_error *err) {
    char dir[RT_TMP_PATH_LEN];
    snprintf(dir, sizeof dir, "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        dir[1] = '\0';
    else if (slash)
        *slash = '\0';
    else
        snprintf(dir, sizeof dir, ".");
    int dir_fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    int rc = 0;
    if (dir_fd < 0 || fsync(dir_fd) != 0)
        rc = rt_fail(err, "%s: cannot fsync its directory: %s", path, strerror(errno));
    if (dir_fd >= 0) close(dir_fd);
    return rc;
}

int rt_commit_tmp_file(FILE *file, const char *tmp_path, const char *path, int rc, rt_error *err) {
    if (rc == 0 && fflush(file) != 0) rc = rt_fail(err, "%s: write failed: %s", path, strerror(errno));
    if (rc == 0 && fsync(fileno(file)) != 0) rc = rt_fail(err, "%s: fsync failed: %s", path, strerror(errno));
    if (fclose(file) != 0 && rc == 0) rc = rt_fail(err, "%s: close failed: %s", path, strerror(errno));
    if (rc == 0 && rename(tmp_path, path) != 0)
        rc = rt_fail(err, "%s: cannot rename %s into place: %s", path, tmp_path, strerror(errno));
    if (rc != 0) {
        unlink(tmp_path);
        return rc;
    }
    return fsync_parent_dir(path, err);
}

int rt_write_all(int fd, const void *data, size_t bytes, const char *name, rt_error *err) {
    const char *next = data;
    size_t left = bytes;
    while (left > 0) {
        ssize_t wrote = write(fd, next, left);
        if (wrote < 0 && errno == EINTR) continue;
        if (wrote < 0) return rt_fail(err, "%s: write failed: %s", name, strerror(errno));
        if (wrote == 0) /* no error and no progress: give up rather than spin */
            return rt_fail(err, "%s: write failed: the device took %zu of %zu bytes", name, bytes - left, bytes);
        next += wrote;
        left -= (size_t)wrote;
    }
    return 0;
}

int rt_sync_close(int fd, const char *name, int rc, rt_error *err) {
    if (rc == 0 && fsync(fd) != 0) rc = rt_fail(err, "%s: fsync failed: %s", name, strerror(errno));
    if (close(fd) != 0 && rc == 0) rc = rt_fail(err, "%s: close failed: %s", name, strerror(errno));
    return rc;
}

int rt_write_file_atomic(const char *path, const void *data, size_t bytes, rt_error *err) {
    char tmp_path[RT_TMP_PATH_LEN];
    if ((size_t)snprintf(tmp_path, sizeof tmp_path, "%s.tmp", path) >= sizeof tmp_path)
        return rt_fail(err, "%s: path too long", path);
    int fd = open(tmp_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) return rt_fail(err, "%s: cannot create: %s", path, strerror(errno));
    int rc = rt_sync_close(fd, path, rt_write_all(fd, data, bytes, path, err), err);
    if (rc == 0 && rename(tmp_path, path) != 0)
        rc = rt_fail(err, "%s: cannot rename %s into place: %s", path, tmp_path, strerror(errno));
    if (rc != 0) {
        unlink(tmp_path);
        return rc;
    }
    return fsync_parent_dir(path, err);
}
