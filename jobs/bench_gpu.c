/*
 * bench_gpu.c: training-step throughput on the CUDA backend, for one model
 * and shape, in each activation mode, with ratios against recompute in the
 * same process, and model FLOPs utilisation (MFU) against the GPU's bf16
 * dense peak. Not a test: numbers depend on the machine.
 *
 *   bench_gpu B T STEPS PEAK_TFLOPS [section.key=value ...] [--modes recompute,keep,offload]
 *
 * Each mode builds a trainer (rt_trainer_init_on, one rank, ZeRO 0) on a
 * token file of random ids this program writes, runs one warm-up step and
 * STEPS timed steps (the device synchronized before and after), then frees
 * it. model.* overrides pick the model (model.preset first, then the rest).
 * Model FLOPs count the useful work once, as jobs/bench_train.c does: per
 * token and layer 2*C*(QKV + H*D) + 2*C*(FC + F) for the projections,
 * 2*2*H*D*(T+1)/2 for causal attention (QK^T and PV over the visible keys),
 * plus 2*C*Vp for the LM head; training is 3x the forward. Recompute and
 * offload run the forward twice but are credited the same FLOPs, so their
 * MFU is the useful fraction. MFU = model FLOP/s / (PEAK_TFLOPS * 1e12). RT_BENCH_BACKEND=cpu runs the same
 * on the CPU backend: a check of the program on a machine without a GPU, not a benchmark.
 *
 * Activation storage, fp32 (what is built) or bf16 (half the bytes): offload moves each layer's input but
 * the last to pinned host memory in forward and back in backward, (L-1) * B * T * C * 4 bytes each way per
 * step in fp32 (the offload step's own count is what is printed). The program times the copy engine on one
 * layer's worth (device -> pinned host and back, on a side stream, as the offloader copies) and prints what
 * a step's offload traffic costs in fp32 and would cost in bf16, as a fraction of the recompute step: where the fp32
 * traffic fits well under the step it hides behind compute and bf16 storage buys nothing but rounding; where it does
 * not, offload's ratio to recompute shows it, and bf16 storage would halve the part that shows.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/tokens.h"
#include "runtime/backend/registry.h"
#include "runtime/comm/comm.h"
#include "runtime/config/config.h"
#include "runtime/model/layer.h"
#include "runtime/train/train.h"

static double model_flops_per_step(const rt_model_shape *s, size_t B, size_t T) {
    const double C = s->d_model, HD = (double)s->n_heads * s->head_dim;
    double per_token_layer = 2.0 * C * ((double)rt_qkv_width(s) + HD) + 2.0 * C * ((double)rt_fc_width(s) + s->d_ff) +
                             2.0 * 2.0 * HD * ((double)T + 1.0) / 2.0;
    double forward_per_token = s->n_layers * per_token_layer + 2.0 * C * s->padded_vocab;
    return 3.0 * forward_per_token * (double)(B * T);
}

/* Seconds per byte of the copy engine, device -> pinned host and back (the mean of both ways), on one side
 * stream over bytes; 0 when the buffers cannot be allocated. */
static double copy_seconds_per_byte(const rt_backend *be, size_t bytes) {
    void *dev = rt_be_device_alloc(be, bytes), *host = rt_be_host_alloc(be, bytes);
    double per_byte = 0.0;
    if (dev && host) {
        rt_be_memset_zero(be, dev, bytes);
        rt_stream *s = rt_be_stream_create(be);
        rt_event *done = rt_be_event_create(be);
        for (int round = 0; round < 2; round++) { /* the first warms the path up */
            rt_be_synchronize(be);
            const double t0 = rt_now_s();
            for (int i = 0; i < 3; i++) {
                rt_be_copy_async(be, s, host, dev, bytes);
                rt_be_copy_async(be, s, dev, host, bytes);
            }
            rt_be_event_record(be, done, s);
            rt_be_event_synchronize(be, done);
            per_byte = (rt_now_s() - t0) / (6.0 * (double)bytes);
        }
        rt_be_event_destroy(be, done);
        rt_be_stream_destroy(be, s);
    }
    if (dev) rt_be_device_free(be, dev);
    if (host) rt_be_host_free(be, host);
    return per_byte;
}

/* Applies "section.key=value" to cfg. */
static int apply_override(rt_config *cfg, const char *arg, rt_error *err) {
    char buf[512];
    snprintf(buf, sizeof buf, "%s", arg);
    char *dot = strchr(buf, '.'), *eq = strchr(buf, '=');
    if (!dot || !eq || eq < dot) return rt_fail(err, "'%s': expected section.key=value", arg);
    *dot = '\0', *eq = '\0';
    return rt_config_set(cfg, buf, dot + 1, eq + 1, err);
}

/* Random ids below vocab, enough for several steps of B x T (the loader wraps epochs anyway). */
static int write_tokens(const char *path, size_t n, int vocab, rt_error *err) {
    uint32_t *tokens = malloc(n * sizeof *tokens);
    uint64_t x = 88172645463325252ULL;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        tokens[i] = (uint32_t)(x % (uint64_t)vocab);
    }
    int rc = rt_tokens_write(path, tokens, n, vocab, err);
    free(tokens);
    return rc;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: bench_gpu B T STEPS PEAK_TFLOPS [section.key=value ...] [--modes m1,m2,...]\n");
        return 2;
    }
    const size_t B = strtoul(argv[1], NULL, 10), T = strtoul(argv[2], NULL, 10);
    const int steps = atoi(argv[3]);
    const double peak_tflops = atof(argv[4]);
    const char *modes_arg = "recompute,keep,offload";
    rt_comm *world = rt_comm_world_mpi(&argc, &argv);
    rt_error err;
    const rt_backend *gpu = NULL;
    const char *kind = getenv("RT_BENCH_BACKEND") ? getenv("RT_BENCH_BACKEND") : "cuda"; /* cpu: a smoke test */
    if (rt_backend_open(&gpu, kind, 0, &err)) {
        fprintf(stderr, "bench_gpu: %s\n", err.msg);
        rt_comm_finalize();
        return 1;
    }

    /* the config: defaults, model.preset, the other overrides, the shape of the run */
    rt_config cfg;
    rt_config_defaults(&cfg);
    for (int pass = 0; pass < 2; pass++)
        for (int i = 5; i < argc; i++) {
            if (strcmp(argv[i], "--modes") == 0 && i + 1 < argc) {
                modes_arg = argv[++i];
                continue;
            }
            if ((strncmp(argv[i], "model.preset=", 13) == 0) != (pass == 0)) continue;
            if (apply_override(&cfg, argv[i], &err)) {
                fprintf(stderr, "bench_gpu: %s\n", err.msg);
                return 1;
            }
        }
    char dir[] = "/tmp/rt_bench_gpu_XXXXXX";
    if (!mkdtemp(dir)) return 1;
    snprintf(cfg.data_train, sizeof cfg.data_train, "%s/tokens.bin", dir);
    cfg.batch_size = (int)B, cfg.seq_len = (int)T, cfg.grad_accum = 1, cfg.steps = steps + 1;
    cfg.dp = 1, cfg.sp = 1, cfg.zero_stage = 0, cfg.val_every = 0, cfg.dropout = 0.0f;
    rt_config_resolve(&cfg);
    if (rt_config_validate_model(&cfg, &err) || write_tokens(cfg.data_train, 4 * B * T + 1, cfg.vocab_size, &err)) {
        fprintf(stderr, "bench_gpu: %s\n", err.msg);
        return 1;
    }
    const rt_model_shape shape = rt_model_shape_from_config(&cfg);
    const double flops = model_flops_per_step(&shape, B, T);
    printf("model: %s L=%d C=%d H=%d Hkv=%d D=%d F=%d V=%d, %.1f M parameters; B=%zu T=%zu, %.3g model FLOP/step; "
           "peak %.0f TFLOP/s\n",
           cfg.family == RT_FAMILY_GPT2 ? "gpt2" : "llama", shape.n_layers, shape.d_model, shape.n_heads,
           shape.n_kv_heads, shape.head_dim, shape.d_ff, shape.vocab_size, rt_model_param_count(&shape) / 1e6, B, T,
           flops, peak_tflops);

    /* the copy engine's rate on one layer's input, what offload moves per layer */
    const size_t layer_bytes = (size_t)(B * T) * (size_t)shape.d_model * sizeof(float);
    const double copy_s_per_byte = copy_seconds_per_byte(gpu, layer_bytes);
    if (copy_s_per_byte > 0.0)
        printf("copy engine: %.1f GB/s device <-> pinned host (one layer's input, %.1f MB, on a side stream)\n",
               1e-9 / copy_s_per_byte, (double)layer_bytes / 1e6);
    else
        printf("copy engine: not measured (cannot allocate %zu bytes on the device and in pinned host memory)\n",
               layer_bytes);

    double recompute_tps = 0.0, recompute_step_s = 0.0;
    char modes[256];
    snprintf(modes, sizeof modes, "%s", modes_arg);
    for (char *mode = strtok(modes, ","); mode; mode = strtok(NULL, ",")) {
        rt_config run = cfg;
        if (rt_config_set(&run, "activations", "mode", mode, &err)) {
            fprintf(stderr, "bench_gpu: %s\n", err.msg);
            continue;
        }
        rt_trainer *t = NULL;
        const double setup_t0 = rt_now_s();
        if (rt_trainer_init_on(&t, &run, world, gpu, &err)) {
            printf("%-10s does not fit or fails: %s\n", mode, err.msg);
            rt_trainer_free(t);
            fflush(stdout);
            continue;
        }
        const double setup_s = rt_now_s() - setup_t0;
        rt_step_metrics m;
        int failed = rt_trainer_step(t, &m, &err) != 0; /* warm-up */
        rt_be_synchronize(gpu);
        const double t0 = rt_now_s();
        size_t peak = m.peak_device_bytes;
        for (int s = 0; s < steps && !failed; s++) {
            failed = rt_trainer_step(t, &m, &err) != 0;
            if (m.peak_device_bytes > peak) peak = m.peak_device_bytes;
        }
        rt_be_synchronize(gpu);
        const double step_s = (rt_now_s() - t0) / steps;
        if (failed) {
            printf("%-10s failed: %s\n", mode, err.msg);
            rt_trainer_free(t);
            continue;
        }
        const double tps = (double)(B * T) / step_s, tflops = flops / step_s / 1e12;
        if (strcmp(mode, "recompute") == 0) recompute_tps = tps, recompute_step_s = step_s;
        char peak_text[32], vs[32] = "";
        if (recompute_tps > 0.0) snprintf(vs, sizeof vs, "%.3f", tps / recompute_tps);
        printf("%-10s | %10.0f tok/s | %7.3f s/step | %7.1f model TFLOP/s | MFU %.3f | vs recompute %-5s | peak %s | "
               "loss %.6f | setup %.1f s\n",
               mode, tps, step_s, tflops, tflops / peak_tflops, vs, rt_format_bytes(peak, peak_text), m.loss, setup_s);
        if (strcmp(mode, "offload") == 0 && recompute_step_s > 0.0 && copy_s_per_byte > 0.0) {
            /* out in forward, back in backward: the step's own count of bytes offloaded, each way */
            const double copy_s = 2.0 * (double)m.offloaded_bytes * copy_s_per_byte;
            printf("offload storage: %.1f MB (%zu bytes) each way per step; copies are %.1f ms, %.1f%% of the "
                   "recompute step in fp32, would be %.1f%% in bf16; offload runs at %.3f of recompute\n",
                   (double)m.offloaded_bytes / 1e6, m.offloaded_bytes, copy_s * 1e3, 100.0 * copy_s / recompute_step_s,
                   50.0 * copy_s / recompute_step_s, tps / recompute_tps);
        }
        fflush(stdout);
        rt_trainer_free(t);
    }
    unlink(cfg.data_train);
    rmdir(dir);
    rt_backend_close(gpu);
    rt_comm_finalize();
    return 0;
}
