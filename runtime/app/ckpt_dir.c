/* ckpt_dir.c: finding, naming and pruning the checkpoints of a checkpoint directory. */
#include "ckpt_dir.h"

#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "runtime/config/config.h"

void rt_ckpt_dir_step_path(const char *dir, int step, char *out, size_t cap) {
    snprintf(out, cap, "%s/step_%08d.h5", dir, step);
}

/* The step of "step_%08d.h5" (tmp: of "step_%08d.h5.tmp"), or -1 for any other name. */
static long step_of(const char *name, int tmp) {
    const char *suffix = tmp ? ".h5.tmp" : ".h5";
    if (strncmp(name, "step_", 5) != 0) return -1;
    char *end = NULL;
    errno = 0;
    long step = strtol(name + 5, &end, 10);
    if (errno || end == name + 5 || *end == '-' || strcmp(end, suffix) != 0 || step < 0) return -1;
    return step;
}

static int regular_file(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

/* The file `latest` names, into name (a bare file name); 0 when there is no `latest`. */
static int read_latest(const char *dir, char *name, size_t cap, rt_error *err) {
    char path[RT_PATH_LEN + 32];
    snprintf(path, sizeof path, "%s/latest", dir);
    FILE *f = fopen(path, "r");
    if (!f) {
        if (errno == ENOENT) return 0;
        return rt_fail(err, "%s: cannot read: %s", path, strerror(errno));
    }
    int ok = fgets(name, (int)cap, f) != NULL;
    fclose(f);
    name[ok ? strcspn(name, "\n") : 0] = '\0';
    if (!ok || step_of(name, 0) < 0)
        return rt_fail(err, "%s: expected one line naming a step_NNNNNNNN.h5 file, found '%s'", path, name);
    return 1;
}

int rt_ckpt_dir_newest(const char *dir, char *out, size_t cap, rt_error *err) {
    char name[256];
    int rc = read_latest(dir, name, sizeof name, err);
    if (rc < 0) return -1;
    if (rc == 1) {
        snprintf(out, cap, "%s/%s", dir, name);
        if (!regular_file(out))
            return rt_fail(err, "%s/latest names %s, which does not exist; give checkpoint.resume a file instead", dir,
                           name);
        return 1;
    }
    DIR *d = opendir(dir);
    if (!d) {
        if (errno == ENOENT) return 0;
        return rt_fail(err, "checkpoint.dir %s: cannot list: %s", dir, strerror(errno));
    }
    long best = -1;
    for (struct dirent *e; (e = readdir(d));) {
        long step = step_of(e->d_name, 0);
        if (step > best) best = step;
    }
    closedir(d);
    if (best < 0) return 0;
    rt_ckpt_dir_step_path(dir, (int)best, out, cap);
    return 1;
}

static int by_step_descending(const void *a, const void *b) {
    long x = *(const long *)a, y = *(const long *)b;
    return (x < y) - (x > y);
}

int rt_ckpt_dir_commit(const char *dir, const char *file_name, int keep, rt_error *err) {
    char path[RT_PATH_LEN + 300];
    snprintf(path, sizeof path, "%s/latest", dir);
    char line[300];
    int len = snprintf(line, sizeof line, "%s\n", file_name);
    if (rt_write_file_atomic(path, line, (size_t)len, err)) return -1;
    DIR *d = opendir(dir);
    if (!d) return rt_fail(err, "checkpoint.dir %s: cannot list: %s", dir, strerror(errno));
    long *steps = NULL;
    size_t n = 0, cap = 0;
    const long current = step_of(file_name, 0);
    int rc = 0;
    for (struct dirent *e; (e = readdir(d));) {
        if (step_of(e->d_name, 1) >= 0) { /* a killed save's leftover: never complete, never read */
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            if (unlink(path) != 0 && errno != ENOENT) rc = rt_fail(err, "%s: cannot remove: %s", path, strerror(errno));
            continue;
        }
        long step = step_of(e->d_name, 0);
        if (step < 0 || step == current) continue;
        if (n == cap) {
            cap = cap ? 2 * cap : 16;
            steps = realloc(steps, cap * sizeof *steps);
            if (!steps) rt_fatal("out of host memory listing %s", dir);
        }
        steps[n++] = step;
    }
    closedir(d);
    if (n) qsort(steps, n, sizeof *steps, by_step_descending); /* steps is NULL when n is 0 */
    /* The current file is one of the kept; of the others, the newest keep - 1 stay. */
    for (size_t i = keep > 1 ? (size_t)keep - 1 : 0; i < n; i++) {
        rt_ckpt_dir_step_path(dir, (int)steps[i], path, sizeof path);
        if (unlink(path) != 0 && errno != ENOENT) rc = rt_fail(err, "%s: cannot remove: %s", path, strerror(errno));
    }
    free(steps);
    return rc;
}
