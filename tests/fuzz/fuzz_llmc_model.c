/* fuzz_llmc_model.c: libFuzzer target for llm.c GPT-2 model files (header, then fp32 parameters). */
#include "fuzz_common.h"
#include "io/llmc_model.h"

/* Inputs are small (-max_len), so a header the size check lets through describes a small model. */
#define MAX_PARAM_BYTES ((size_t)64 << 20)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write_input(data, size, ".bin");
    rt_llmc_header hdr;
    rt_error err = {{0}};
    if (rt_llmc_read_header(path, &hdr, &err) != 0) {
        fuzz_check_one_line(err.msg);
        return 0;
    }
    size_t sizes[RT_LLMC_N_TENSORS], total = 0;
    rt_llmc_tensor_sizes(&hdr, sizes);
    for (int i = 0; i < RT_LLMC_N_TENSORS; i++)
        total += sizes[i];
    /* The header was checked against the file's size: it cannot ask for more than the file holds. */
    if (total * sizeof(float) + 1024 != size || total * sizeof(float) > MAX_PARAM_BYTES) {
        fprintf(stderr, "header accepted with %zu parameters for a %zu-byte file\n", total, size);
        abort();
    }
    float *params = malloc(total * sizeof(float) + 1);
    if (rt_llmc_read_params(path, &hdr, params, &err) != 0) fuzz_check_one_line(err.msg);
    free(params);
    return 0;
}
