/*
 * fault_checkpoint.c: writes one checkpoint, for tests/e2e/fault_outputs.sh: fault_checkpoint PATH SEED.
 *
 * The script runs it once to leave a good PATH, then again under the write
 * fault shim (tests/support/fault_inject.c) to check that a failed save leaves the
 * old PATH byte for byte and no PATH.tmp, and that the process exits with
 * its one-line error (exit 1), not a crash in HDF5's shutdown at exit.
 */
#include <stdio.h>
#include <stdlib.h>

#include "io/model_file.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fputs("usage: fault_checkpoint PATH SEED\n", stderr);
        return 2;
    }
    rt_view_table table;
    rt_view_table_init(&table);
    rt_view_table_add(&table, "wte", 2, (size_t[]){256, 64}, 1);
    rt_view_table_add(&table, "big", 2, (size_t[]){1200, 1000}, 1); /* over the 4 MiB chunk cap */
    float *params = malloc(table.total * sizeof *params);
    for (size_t i = 0; i < table.total; i++)
        params[i] = (float)((i * 2654435761u + (size_t)atoi(argv[2])) % 1000) / 1000.0f;
    rt_error err;
    int rc = rt_model_file_write(argv[1], &table, params, "[model]\npreset = tiny\n", 7, &err);
    if (rc) fprintf(stderr, "fault_checkpoint: %s\n", err.msg);
    free(params);
    rt_view_table_free(&table);
    return rc ? 1 : 0;
}
