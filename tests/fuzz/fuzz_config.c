/* fuzz_config.c: libFuzzer target for config text (INI, as --config and as stored in model.h5) and --set. */
#include "fuzz_common.h"
#include "runtime/config/config.h"
#include "runtime/model/model.h"

/* Loads, validates and sizes a model from the text; written back, a loaded config must read back the same. */
static void check_text(const char *text) {
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err = {{0}};
    if (rt_config_load_text(&cfg, text, "fuzz.ini", &err) != 0) {
        fuzz_check_one_line(err.msg);
        return;
    }
    if (rt_config_validate(&cfg, &err) != 0) fuzz_check_one_line(err.msg);
    if (rt_config_validate_model(&cfg, &err) != 0) {
        fuzz_check_one_line(err.msg);
        return;
    }
    /* A config that validates gives a shape whose size arithmetic holds (UBSan watches the int math). */
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    (void)rt_model_param_count(&shape);

    char *written = NULL;
    size_t written_len = 0;
    FILE *out = open_memstream(&written, &written_len);
    if (!out || rt_config_write(&cfg, out) != 0 || fclose(out) != 0) abort();
    rt_config back;
    rt_config_defaults(&back);
    if (rt_config_load_text(&back, written, "written.ini", &err) != 0) {
        fprintf(stderr, "a loaded config, written back, does not load: %s\n%s", err.msg, written);
        abort();
    }
    back.explicit_keys = cfg.explicit_keys = 0;
    if (memcmp(&back, &cfg, sizeof cfg) != 0) {
        fprintf(stderr, "a loaded config, written back, reads back different:\n%s", written);
        abort();
    }
    free(written);
}

/* Each line of the input as one --set override. */
static void check_overrides(const char *text) {
    enum { MAX_OVERRIDES = 16 };
    char *copy = strdup(text), *lines[MAX_OVERRIDES], *save = NULL;
    int n = 0;
    for (char *line = strtok_r(copy, "\n", &save); line && n < MAX_OVERRIDES; line = strtok_r(NULL, "\n", &save))
        lines[n++] = line;
    rt_config cfg;
    rt_config_defaults(&cfg);
    rt_error err = {{0}};
    if (rt_config_load(&cfg, NULL, (const char *const *)lines, n, &err) != 0)
        fuzz_check_one_line(err.msg);
    else if (rt_config_validate(&cfg, &err) != 0)
        fuzz_check_one_line(err.msg);
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    memcpy(text, data, size);
    text[size] = '\0';
    check_text(text);
    check_overrides(text);
    free(text);
    return 0;
}
