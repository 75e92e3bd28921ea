/* fuzz_common.h: what every libFuzzer target shares: the readers take a path, so each input goes to a file. */
#ifndef RT_FUZZ_COMMON_H
#define RT_FUZZ_COMMON_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/*
 * One scratch file per fuzzing process, rewritten for every input (in
 * $TMPDIR, /tmp by default) and removed at exit. The readers under test open
 * it by name exactly as they open a user's file.
 */
static char fuzz_path[4096];

static void fuzz_remove_file(void) {
    if (fuzz_path[0]) unlink(fuzz_path);
}

/* The scratch file's path; created on first use. suffix names the format (".tok", ".h5"). */
static inline const char *fuzz_file_path(const char *suffix) {
    if (!fuzz_path[0]) {
        const char *dir = getenv("TMPDIR");
        snprintf(fuzz_path, sizeof fuzz_path, "%s/rt_fuzz_XXXXXX%s", dir && dir[0] ? dir : "/tmp", suffix);
        int fd = mkstemps(fuzz_path, (int)strlen(suffix));
        if (fd < 0) {
            perror("mkstemps");
            abort();
        }
        close(fd);
        atexit(fuzz_remove_file);
    }
    return fuzz_path;
}

/* Replaces the scratch file's contents with the input bytes; returns its path. */
static inline const char *fuzz_write_input(const uint8_t *data, size_t size, const char *suffix) {
    const char *path = fuzz_file_path(suffix);
    FILE *file = fopen(path, "wb");
    if (!file || (size && fwrite(data, 1, size, file) != size) || fclose(file) != 0) {
        perror(path);
        abort();
    }
    return path;
}

/* A reader's message must be one line: no newline inside it. */
static inline void fuzz_check_one_line(const char *msg) {
    if (strchr(msg, '\n')) {
        fprintf(stderr, "error message spans lines: %s\n", msg);
        abort();
    }
}

#endif
