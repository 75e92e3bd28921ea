/* io_files.h: what the io/ layer's unit tests (test_tokens, test_loader, test_llmc_model, test_prepare,
 * test_model_file) share: a mkdtemp directory per test, files written and read raw, an llm.c token shard built
 * from its documented layout, and the check that an error message names what it should. Linked as
 * rt_test_io_files (tests/CMakeLists.txt). */
#ifndef RT_TEST_IO_FILES_H
#define RT_TEST_IO_FILES_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tests/support/testing.h"

/* A directory of its own under /tmp for one test; dir_remove deletes its files and itself. */
typedef struct {
    char dir[64];
} test_dir;

/* Creates /tmp/rt_test_io_XXXXXX; aborts when it cannot. */
void dir_make(test_dir *td);
/* td's directory joined with name, into out (256 bytes); returns out. */
const char *dir_path(const test_dir *td, const char *name, char out[256]);
/* Number of entries in the directory (not counting . and ..). */
int dir_count(const test_dir *td);
/* Whether the directory holds a file whose name ends in .tmp. */
int dir_has_tmp(const test_dir *td);
/* Removes the directory's files, then the directory. */
void dir_remove(test_dir *td);

int file_exists(const char *path);
/* The file's size in bytes, -1 when it cannot be stat'ed. */
long file_size(const char *path);
/* Writes bytes of data to path (replacing it); asserts the open and the write. */
void write_raw(const char *path, const void *data, size_t bytes);
/* Reads a whole file (malloc'd; NULL when it cannot be opened), its size in *bytes. */
unsigned char *read_raw(const char *path, size_t *bytes);
/* An llm.c shard by its documented layout: int32[256] header {20240520, 1, n}, then uint16 tokens. */
void write_llmc_shard(const char *path, const uint16_t *tokens, size_t n);

/* Asserts that the message of rt_error err contains text, and prints both when it does not. */
#define ASSERT_MSG_HAS(err, text)                                                                                      \
    do {                                                                                                               \
        if (!strstr((err).msg, (text))) fprintf(stderr, "\n  message '%s' lacks '%s'\n", (err).msg, (text));           \
        CU_ASSERT(strstr((err).msg, (text)) != NULL);                                                                  \
    } while (0)

#endif
