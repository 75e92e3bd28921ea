/* fuzz_tokens.c: libFuzzer target for token files, both formats (ringtrain's own and llm.c shards). */
#include "fuzz_common.h"
#include "io/tokens.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    const char *path = fuzz_write_input(data, size, ".tok");
    rt_token_file tf;
    rt_error err = {{0}};
    if (rt_tokens_open(&tf, path, &err) != 0) {
        fuzz_check_one_line(err.msg);
        return 0;
    }
    /* What an opened file promises: every token index below n_tokens is readable. */
    if (rt_tokens_validate(&tf, &err) != 0) fuzz_check_one_line(err.msg);
    uint64_t sum = 0;
    for (size_t i = 0; i < tf.n_tokens; i++)
        sum += rt_tokens_get(&tf, i);
    if (tf.n_tokens && sum == UINT64_MAX) abort(); /* keeps the reads */
    rt_tokens_close(&tf);
    return 0;
}
