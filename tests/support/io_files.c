/* io_files.c: the io/ tests' shared files and directories (io_files.h). */
#include "tests/support/io_files.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/tokens.h"

void dir_make(test_dir *td) {
    strcpy(td->dir, "/tmp/rt_test_io_XXXXXX");
    if (!mkdtemp(td->dir)) {
        perror("mkdtemp");
        abort();
    }
}

const char *dir_path(const test_dir *td, const char *name, char out[256]) {
    snprintf(out, 256, "%s/%s", td->dir, name);
    return out;
}

int dir_count(const test_dir *td) {
    DIR *dir = opendir(td->dir);
    int count = 0;
    for (struct dirent *entry; dir && (entry = readdir(dir));)
        if (strcmp(entry->d_name, ".") && strcmp(entry->d_name, "..")) count++;
    if (dir) closedir(dir);
    return count;
}

int dir_has_tmp(const test_dir *td) {
    DIR *dir = opendir(td->dir);
    int found = 0;
    for (struct dirent *entry; dir && (entry = readdir(dir));) {
        size_t len = strlen(entry->d_name);
        if (len >= 4 && strcmp(entry->d_name + len - 4, ".tmp") == 0) found = 1;
    }
    if (dir) closedir(dir);
    return found;
}

void dir_remove(test_dir *td) {
    DIR *dir = opendir(td->dir);
    for (struct dirent *entry; dir && (entry = readdir(dir));) {
        if (!strcmp(entry->d_name, ".") || !strcmp(entry->d_name, "..")) continue;
        char path[sizeof td->dir + sizeof entry->d_name + 1];
        snprintf(path, sizeof path, "%s/%s", td->dir, entry->d_name);
        unlink(path);
    }
    if (dir) closedir(dir);
    rmdir(td->dir);
}

int file_exists(const char *path) { return access(path, F_OK) == 0; }

long file_size(const char *path) {
    struct stat st;
    return stat(path, &st) == 0 ? (long)st.st_size : -1;
}

void write_raw(const char *path, const void *data, size_t bytes) {
    FILE *file = fopen(path, "wb");
    CU_ASSERT_FATAL(file != NULL);
    CU_ASSERT(fwrite(data, 1, bytes, file) == bytes);
    fclose(file);
}

unsigned char *read_raw(const char *path, size_t *bytes) {
    FILE *file = fopen(path, "rb");
    if (!file) return NULL;
    fseek(file, 0, SEEK_END);
    *bytes = (size_t)ftell(file);
    fseek(file, 0, SEEK_SET);
    unsigned char *data = malloc(*bytes ? *bytes : 1);
    if (fread(data, 1, *bytes, file) != *bytes) *bytes = 0;
    fclose(file);
    return data;
}

void write_llmc_shard(const char *path, const uint16_t *tokens, size_t n) {
    int32_t header[256] = {RT_LLMC_SHARD_MAGIC, 1, (int32_t)n};
    FILE *file = fopen(path, "wb");
    CU_ASSERT_FATAL(file != NULL);
    fwrite(header, sizeof header, 1, file);
    fwrite(tokens, sizeof *tokens, n, file);
    fclose(file);
}
