/* fuzz_hf_config.c: libFuzzer target for a Hugging Face config.json (model.init_from = DIR, export --hf). */
#include "fuzz_common.h"
#include "runtime/model/hf_model.h"

/* A config.json that loads describes a valid model; written back by export and read again, it describes the
 * same architecture. */
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) abort();
    memcpy(text, data, size);
    text[size] = '\0';
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err = {{0}};
    if (rt_config_from_hf_text(&cfg, text, "fuzz/config.json", &err) != 0) {
        fuzz_check_one_line(err.msg);
        free(text);
        return 0;
    }
    free(text);
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    (void)rt_model_param_count(&shape);
    char *written = rt_hf_config_json(&cfg, RT_ST_BF16);
    rt_config back;
    rt_config_defaults(&back);
    if (rt_config_from_hf_text(&back, written, "written/config.json", &err) != 0) {
        fprintf(stderr, "a loaded config.json, written back, does not load: %s\n%s\n", err.msg, written);
        abort();
    }
    rt_model_shape again = rt_model_shape_from_config(&back);
    if (memcmp(&shape, &again, sizeof shape) != 0) {
        fprintf(stderr, "a loaded config.json, written back, describes another model:\n%s\n", written);
        abort();
    }
    free(written);
    return 0;
}
