/* fuzz_checkpoint.c: libFuzzer target for HDF5 model files (model.h5): meta, stored config, tensor counts and
 * tensors, read as `ringtrain sample` reads them. */
#include <hdf5.h>

#include "fuzz_common.h"
#include "fuzz_views.h"
#include "io/model_file.h"
#include "runtime/config/config.h"

/* Open HDF5 ids of each kind: after every input they must be back to what they were (no id leaked). */
static const H5I_type_t id_kinds[] = {H5I_FILE, H5I_GROUP, H5I_DATATYPE, H5I_DATASPACE, H5I_DATASET, H5I_ATTR};
#define N_KINDS (sizeof id_kinds / sizeof id_kinds[0])

static void count_ids(hsize_t counts[N_KINDS]) {
    for (size_t k = 0; k < N_KINDS; k++)
        if (H5Inmembers(id_kinds[k], &counts[k]) < 0) counts[k] = (hsize_t)-1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static rt_view_table table;
    static float *params;
    static hsize_t baseline[N_KINDS];
    if (!params) {
        H5Eset_auto2(H5E_DEFAULT, NULL, NULL);
        /* No free lists: HDF5 then returns memory as it releases it, so each input's mallocs and frees balance
         * and libFuzzer runs its (slow) leak check only where something really stayed allocated. */
        H5set_free_list_limits(0, 0, 0, 0, 0, 0);
        fuzz_views_make(&table);
        params = malloc(table.total * sizeof *params);
        count_ids(baseline);
    }
    const char *path = fuzz_write_input(data, size, ".h5");
    rt_error err = {{0}};
    char *config_text = NULL;
    int64_t step = 0;
    int meta_ok = rt_model_file_read_meta(path, &config_text, &step, &err) == 0;
    if (meta_ok) {
        rt_config cfg;
        rt_config_defaults(&cfg);
        if (rt_config_load_text(&cfg, config_text, path, &err) == 0 && rt_config_validate_model(&cfg, &err) != 0)
            fuzz_check_one_line(err.msg);
        free(config_text);
    } else {
        fuzz_check_one_line(err.msg);
    }
    /* Both go through the same open and format/version checks as the meta: only a file that passed them
     * reaches their own code (the checks run again, which costs an open, not coverage). */
    if (meta_ok) {
        size_t count = 0;
        if (rt_model_file_count_params(path, &count, &err) != 0) fuzz_check_one_line(err.msg);
        if (rt_model_file_read_params(path, &table, params, &err) != 0) fuzz_check_one_line(err.msg);
    }

    hsize_t now[N_KINDS];
    count_ids(now);
    for (size_t k = 0; k < N_KINDS; k++) {
        if (now[k] != baseline[k]) {
            fprintf(stderr, "HDF5 ids of kind %d left open: %llu, expected %llu\n", (int)id_kinds[k],
                    (unsigned long long)now[k], (unsigned long long)baseline[k]);
            abort();
        }
    }
    return 0;
}
