/*
 * cli.c: the `ringtrain` command: train, prepare, sample, inspect, export.
 *
 * Every failure ends with one line "ringtrain: ..." on stderr and a non-zero
 * exit (2 for a malformed command line, 1 for bad input or a failed run).
 * train runs under MPI: errors every rank finds alike (the config, a data
 * file, the memory limit) are printed once and every rank exits; an error
 * one rank meets alone during the run goes through rt_fatal, which aborts
 * the whole job so no rank waits forever.
 */
#include <ctype.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "inspect.h"
#include "io/prepare.h"
#include "run.h"
#include "runtime/comm/comm.h"
#include "runtime/comm/threads.h"
#include "runtime/config/config.h"
#include "runtime/model/model_io.h"
#include "sample.h"
#include "setup_agree.h"

static const char *usage_text =
    "usage:\n"
    "  ringtrain train --config FILE [--set section.key=value ...] [--resume | --resume=CHECKPOINT]\n"
    "  ringtrain prepare [--tokenizer tokenizer.json [--document-separator TEXT]] --input TEXT [--input TEXT ...]\n"
    "                    --output TRAIN.bin [--val-output VAL.bin] [--val-fraction F]\n"
    "  ringtrain prepare --llmc SHARD.bin --output OUT.bin\n"
    "  ringtrain sample --model FILE | --checkpoint CKPT [--prompt TEXT | --prompt-ids 1,2,3] [--tokens N]\n"
    "                   [--temperature T] [--top-k K] [--seed S] [--tokenizer tokenizer.json] [--logits FILE]\n"
    "  ringtrain inspect CKPT | DIR\n"
    "  ringtrain export --checkpoint SOURCE --llmc OUT.bin\n"
    "  ringtrain export --checkpoint SOURCE --hf DIR [--dtype fp32|bf16] [--shard-mib N]\n"
    "\n"
    "FILE: a model.h5, a checkpoint (checkpoints/step_*.h5) or an llm.c GPT-2 .bin, told apart by content.\n"
    "inspect prints a checkpoint's (or model.h5's) step, tokens, layout, config and every tensor's shape and\n"
    "norm, verifying every checksum; for a Hugging Face DIR, every tensor as model.init_from loads it.\n"
    "export writes a gpt2-family model as an llm.c file train_gpt2.c loads, or any model as a Hugging Face\n"
    "directory (config.json, safetensors sharded above --shard-mib, default 2048, tokenizer.json when the run\n"
    "was tokenized with one). SOURCE: a checkpoint, a model.h5 or a Hugging Face directory.\n"
    "model.init_from (train) takes an llm.c file, a model.h5, a checkpoint or a Hugging Face directory: its\n"
    "weights, a fresh optimizer.\n";

static int usage_error(const char *fmt, const char *arg) {
    fputs("ringtrain: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (see ringtrain --help)\n", stderr);
    return 2;
}

static int fail(const rt_error *err) {
    fprintf(stderr, "ringtrain: %s\n", err->msg);
    return 1;
}

/* Returns the value after option argv[*i], advancing *i, or NULL when missing. */
static const char *option_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) return NULL;
    return argv[++*i];
}

static int parse_number(const char *text, double *out) {
    char *end = NULL;
    *out = strtod(text, &end);
    return end != text && *end == '\0';
}

/* A whole decimal number in [min, max]. */
static int parse_count(const char *text, unsigned long long min, unsigned long long max, unsigned long long *out) {
    char *end = NULL;
    errno = 0;
    if (!isdigit((unsigned char)text[0])) return 0;
    *out = strtoull(text, &end, 10);
    return errno == 0 && *end == '\0' && *out >= min && *out <= max;
}

/* "--resume=PATH" as the override "checkpoint.resume=PATH" (malloc'd into *owned). */
static const char *resume_override(const char *path, char **owned) {
    size_t n = strlen(path) + sizeof "checkpoint.resume=";
    *owned = malloc_check(n);
    snprintf(*owned, n, "checkpoint.resume=%s", path);
    return *owned;
}

static int cmd_train(int argc, char **argv) {
    rt_comm *world = rt_comm_world_mpi(&argc, &argv);
    rt_threads threads;
    rt_threads_setup(world, &threads); /* before any BLAS call */
    if (threads.short_ranks > 0 && world->rank == 0) {
        printf("ringtrain: %d of %d rank%s bound to fewer CPUs than the node's share of %d (rank 0: %d thread%s on "
               "%d CPU%s); the launcher bound them (Open MPI binds 1-2 ranks to a core each by default): give "
               "mpirun --bind-to none or --map-by slot:PE=%d, or start with jobs/mpirun.sh or jobs/train.sbatch\n",
               threads.short_ranks, world->size, world->size == 1 ? " is" : "s are", threads.fair_share,
               threads.threads, threads.threads == 1 ? "" : "s", threads.cpus, threads.cpus == 1 ? "" : "s",
               threads.fair_share);
        fflush(stdout);
    }
    const char *config_path = NULL;
    const char **overrides = calloc_check((size_t)argc, sizeof *overrides);
    char **owned = calloc_check((size_t)argc, sizeof *owned);
    int n_overrides = 0, n_owned = 0, status = 0;
    rt_error err = {{0}};
    for (int i = 2; i < argc && status == 0; i++) {
        const char *value = NULL;
        if (strcmp(argv[i], "--config") == 0 && (value = option_value(argc, argv, &i)))
            config_path = value;
        else if (strcmp(argv[i], "--set") == 0 && (value = option_value(argc, argv, &i)))
            overrides[n_overrides++] = value;
        else if (strncmp(argv[i], "--set=", 6) == 0)
            overrides[n_overrides++] = argv[i] + 6;
        else if (strcmp(argv[i], "--resume") == 0)
            overrides[n_overrides++] = "checkpoint.resume=auto";
        else if (strncmp(argv[i], "--resume=", 9) == 0)
            overrides[n_overrides++] = resume_override(argv[i] + 9, &owned[n_owned++]);
        else
            status = 2, rt_fail(&err, "train: unexpected or incomplete argument '%s' (see ringtrain --help)", argv[i]);
    }
    rt_config cfg;
    rt_config_defaults(&cfg);
    if (status == 0 && rt_config_load(&cfg, config_path, overrides, n_overrides, &err)) status = 1;
    if (status == 0 && !cfg.init_from[0] && rt_config_validate(&cfg, &err)) status = 1;
    free(overrides);
    for (int i = 0; i < n_owned; i++)
        free(owned[i]);
    free(owned);
    /* before the first collective of training: a rank that failed alone, or set up with other inputs,
     * would leave the others waiting in it (setup_agree.h) */
    if (rt_setup_agree_status(world, status, &err) != 0) {
        if (err.msg[0]) fail(&err);
        status = status ? status : 1;
    } else if (world->size > 1 && rt_setup_agree_inputs(world, &cfg, &err) != 0) {
        if (err.msg[0]) fail(&err);
        status = 1;
    }
    if (status == 0) {
        rt_train_result result;
        int rc = rt_train(&cfg, world, &result, &err);
        if (rc == RT_TRAIN_FAILED_HERE && world->size > 1) rt_fatal("rank %d: %s", world->rank, err.msg);
        if (rc != 0) status = err.msg[0] ? fail(&err) : 1;
        if (rc == 0 && result.stopped_by_signal) status = RT_EXIT_STOPPED;
    }
    rt_comm_finalize();
    return status;
}

static int cmd_prepare(int argc, char **argv) {
    const char **inputs = calloc_check((size_t)argc, sizeof *inputs);
    const char *output = NULL, *val_output = NULL, *llmc = NULL, *tokenizer = NULL, *separator = NULL;
    double val_fraction = 0.1;
    int n_inputs = 0, status = 0;
    for (int i = 2; i < argc && status == 0; i++) {
        const char *value = NULL;
        if (strcmp(argv[i], "--input") == 0 && (value = option_value(argc, argv, &i)))
            inputs[n_inputs++] = value;
        else if (strcmp(argv[i], "--output") == 0 && (value = option_value(argc, argv, &i)))
            output = value;
        else if (strcmp(argv[i], "--val-output") == 0 && (value = option_value(argc, argv, &i)))
            val_output = value;
        else if (strcmp(argv[i], "--llmc") == 0 && (value = option_value(argc, argv, &i)))
            llmc = value;
        else if (strcmp(argv[i], "--tokenizer") == 0 && (value = option_value(argc, argv, &i)))
            tokenizer = value;
        else if (strcmp(argv[i], "--document-separator") == 0 && (value = option_value(argc, argv, &i)))
            separator = value;
        else if (strcmp(argv[i], "--val-fraction") == 0 && (value = option_value(argc, argv, &i))) {
            if (!parse_number(value, &val_fraction) || !(val_fraction > 0.0 && val_fraction < 1.0))
                status = usage_error("prepare: --val-fraction '%s': expected a number between 0 and 1", value);
        } else
            status = usage_error("prepare: unexpected or incomplete argument '%s'", argv[i]);
    }
    if (status == 0 && !output) status = usage_error("prepare: %s", "--output is required");
    if (status == 0 && !llmc && n_inputs == 0)
        status = usage_error("prepare: %s", "give --input TEXT (one or more) or --llmc SHARD");
    if (status == 0 && llmc && n_inputs > 0)
        status = usage_error("prepare: %s", "--llmc and --input do not go together");
    if (status == 0 && llmc && tokenizer)
        status = usage_error("prepare: %s", "--llmc and --tokenizer do not go together");
    if (status == 0 && separator && !tokenizer)
        status = usage_error("prepare: %s", "--document-separator needs --tokenizer");
    rt_error err;
    if (status == 0 && llmc) {
        size_t n_tokens = 0;
        if (rt_prepare_llmc_counted(llmc, output, &n_tokens, &err))
            status = fail(&err);
        else
            printf("prepared %s: %zu tokens from llm.c shard %s\n", output, n_tokens, llmc);
    } else if (status == 0) {
        size_t n_train = 0, n_val = 0;
        int rc = tokenizer ? rt_prepare_tokenized(tokenizer, separator, inputs, n_inputs, output, val_output,
                                                  val_fraction, stderr, &n_train, &n_val, &err)
                           : rt_prepare_text_counted(inputs, n_inputs, output, val_output, val_fraction, &n_train,
                                                     &n_val, &err);
        if (rc)
            status = fail(&err);
        else if (val_output)
            printf("prepared %s (%zu tokens) and %s (%zu tokens) from %d files\n", output, n_train, val_output, n_val,
                   n_inputs);
        else
            printf("prepared %s (%zu tokens) from %d files\n", output, n_train, n_inputs);
    }
    free(inputs);
    return status;
}

static int cmd_sample(int argc, char **argv) {
    rt_sample_options opt = {.n_tokens = 256, .temperature = 0.8f, .top_k = 40, .seed = 1337};
    for (int i = 2; i < argc; i++) {
        const char *name = argv[i], *value = option_value(argc, argv, &i);
        double number = 0.0;
        unsigned long long count = 0;
        if (!value) return usage_error("sample: option '%s' needs a value", name);
        if (strcmp(name, "--model") == 0 || strcmp(name, "--checkpoint") == 0)
            opt.model_path = value;
        else if (strcmp(name, "--prompt") == 0)
            opt.prompt = value;
        else if (strcmp(name, "--prompt-ids") == 0)
            opt.prompt_ids = value;
        else if (strcmp(name, "--tokenizer") == 0)
            opt.tokenizer = value;
        else if (strcmp(name, "--logits") == 0)
            opt.logits_path = value;
        else if (strcmp(name, "--tokens") == 0 && parse_count(value, 1, 1000000, &count))
            opt.n_tokens = (int)count;
        else if (strcmp(name, "--temperature") == 0 && parse_number(value, &number) && number >= 0 && number <= 100)
            opt.temperature = (float)number;
        else if (strcmp(name, "--top-k") == 0 && parse_count(value, 0, INT32_MAX, &count))
            opt.top_k = (int)count;
        else if (strcmp(name, "--seed") == 0 && parse_count(value, 0, UINT64_MAX, &count))
            opt.seed = (uint64_t)count;
        else {
            char what[256];
            snprintf(what, sizeof what, "%s '%.64s': unknown option or bad value", name, value);
            return usage_error("sample: %s (--tokens 1..1000000, --temperature 0..100, --top-k and --seed "
                               "whole numbers)",
                               what);
        }
    }
    if (!opt.model_path) return usage_error("sample: %s", "--model FILE (or --checkpoint CKPT) is required");
    rt_error err;
    return rt_sample(&opt, stdout, &err) ? fail(&err) : 0;
}

static int cmd_inspect(int argc, char **argv) {
    if (argc != 3 || argv[2][0] == '-') return usage_error("inspect: %s", "expected one file: ringtrain inspect CKPT");
    rt_error err;
    int rc = rt_hf_is_dir(argv[2]) ? rt_inspect_hf(argv[2], stdout, &err) : rt_inspect(argv[2], stdout, &err);
    return rc ? fail(&err) : 0;
}

static int cmd_export(int argc, char **argv) {
    const char *checkpoint = NULL, *llmc = NULL, *hf = NULL;
    rt_hf_write_options opt = {.dtype = RT_ST_F32, .shard_bytes = (size_t)2048 << 20};
    for (int i = 2; i < argc; i++) {
        const char *value = NULL;
        char *end = NULL;
        if (strcmp(argv[i], "--checkpoint") == 0 && (value = option_value(argc, argv, &i)))
            checkpoint = value;
        else if (strcmp(argv[i], "--llmc") == 0 && (value = option_value(argc, argv, &i)))
            llmc = value;
        else if (strcmp(argv[i], "--hf") == 0 && (value = option_value(argc, argv, &i)))
            hf = value;
        else if (strcmp(argv[i], "--dtype") == 0 && (value = option_value(argc, argv, &i))) {
            if (strcmp(value, "fp32") == 0)
                opt.dtype = RT_ST_F32;
            else if (strcmp(value, "bf16") == 0)
                opt.dtype = RT_ST_BF16;
            else
                return usage_error("export: --dtype '%s': expected fp32 or bf16", value);
        } else if (strcmp(argv[i], "--shard-mib") == 0 && (value = option_value(argc, argv, &i))) {
            long long mib = strtoll(value, &end, 10);
            if (end == value || *end || mib < 0 || mib > (1LL << 30))
                return usage_error("export: --shard-mib '%s': expected 0 (one file) to 1073741824", value);
            opt.shard_bytes = (size_t)mib << 20;
        } else
            return usage_error("export: unexpected or incomplete argument '%s'", argv[i]);
    }
    if (!checkpoint || !!llmc == !!hf)
        return usage_error("export: %s", "give --checkpoint SOURCE and one of --llmc OUT.bin or --hf DIR");
    rt_error err;
    rt_config cfg;
    if (hf) {
        if (rt_export_hf(checkpoint, hf, &opt, &cfg, &err)) return fail(&err);
        printf("exported %s to %s: Hugging Face %s, %d layers, %d channels, %d heads (%d kv), vocab %d, %s\n",
               checkpoint, hf, cfg.family == RT_FAMILY_LLAMA ? "LlamaForCausalLM" : "GPT2LMHeadModel", cfg.n_layers,
               cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.vocab_size, opt.dtype == RT_ST_BF16 ? "bf16" : "fp32");
        return 0;
    }
    if (rt_export_llmc(checkpoint, llmc, &cfg, &err)) return fail(&err);
    printf("exported %s to %s: llm.c GPT-2, %d layers, %d channels, %d heads, vocab %d, max_seq_len %d\n", checkpoint,
           llmc, cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.vocab_size, cfg.max_seq_len);
    return 0;
}

/* stdout is an output too (sample's text, the progress log): a write to it that failed (a full disk,
 * /dev/full, a closed pipe) fails the command, with one line, rather than exit 0 with text lost. */
static int finish_stdout(int status) {
    int failed = fflush(stdout) != 0 || ferror(stdout);
    if (!failed) return status;
    fprintf(stderr, "ringtrain: cannot write to standard output: %s\n", errno ? strerror(errno) : "write error");
    return status ? status : 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
        fputs(usage_text, argc < 2 ? stderr : stdout);
        return argc < 2 ? 2 : 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        puts("ringtrain 0.1.0");
        return 0;
    }
    int status;
    if (strcmp(argv[1], "train") == 0)
        status = cmd_train(argc, argv);
    else if (strcmp(argv[1], "prepare") == 0)
        status = cmd_prepare(argc, argv);
    else if (strcmp(argv[1], "sample") == 0)
        status = cmd_sample(argc, argv);
    else if (strcmp(argv[1], "inspect") == 0)
        status = cmd_inspect(argc, argv);
    else if (strcmp(argv[1], "export") == 0)
        status = cmd_export(argc, argv);
    else
        return usage_error("unknown command '%s'; expected train, prepare, sample, inspect or export", argv[1]);
    return finish_stdout(status);
}
