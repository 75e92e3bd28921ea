/* fuzz_tokenizer_json.c: libFuzzer target for tokenizer.json (io/bpe_tokenizer.h): load, then encode a fixed text
 * with every kind of piece (letters, accents, CJK, digits, whitespace runs, a special token) and decode it. */
#include <string.h>

#include "fuzz_common.h"
#include "io/bpe_tokenizer.h"

static const char text[] = "Hello, world! It's 2026: caf\xc3\xa9 \xe6\x9d\xb1\xe4\xba\xac \xf0\x9f\x98\x80  \t\r\n"
                           "<|endoftext|> they'll  x\n\n";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    rt_error err = {{0}};
    rt_bpe_tokenizer *tok = rt_bpe_load_text((const char *)data, size, "fuzz.json", &err);
    if (!tok) {
        fuzz_check_one_line(err.msg);
        return 0;
    }
    rt_bpe_ids ids = {0};
    if (rt_bpe_encode(tok, text, sizeof text - 1, &ids, &err) != 0) {
        fuzz_check_one_line(err.msg);
    } else {
        /* every id encode gives is one the tokenizer can decode */
        char *back = NULL;
        size_t len = 0;
        if (rt_bpe_decode(tok, ids.ids, ids.n, &back, &len, &err) != 0) abort();
        free(back);
    }
    rt_bpe_ids_free(&ids);
    rt_bpe_free(tok);
    return 0;
}
