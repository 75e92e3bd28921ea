/* fuzz_safetensors.c: libFuzzer target for safetensors files: the header checks, then every tensor read whole. */
#include <stdlib.h>

#include "fuzz_common.h"
#include "io/safetensors.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rt_st_file f;
    rt_error err = {{0}};
    if (rt_st_open_bytes(&f, data, size, "fuzz.safetensors", &err) != 0) {
        fuzz_check_one_line(err.msg);
        return 0;
    }
    /* What an opened file promises: each tensor's bytes lie inside the data section, so every element can be read
     * (a non-finite one is an error, never a crash), and each name is found again. */
    for (int i = 0; i < f.count; i++) {
        const rt_st_tensor *t = &f.tensors[i];
        if (t->end > f.data_bytes || rt_st_find(&f, t->name) != t) abort();
        float *out = malloc((t->numel ? t->numel : 1) * sizeof *out);
        if (!out) abort();
        if (rt_st_read_f32(&f, t, 0, t->numel, out, &err) != 0) fuzz_check_one_line(err.msg);
        free(out);
    }
    rt_st_close(&f);
    return 0;
}
