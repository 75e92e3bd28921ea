/*
 * bench_train.c: tokens/s and model FLOP/s of full training steps (forward,
 * backward, AdamW) for a preset, next to this machine's own sgemm rate
 * measured in the same process, printed as a ratio (model flops utilisation
 * against sgemm). Not a test: numbers depend on the machine.
 *
 *   bench_train PRESET B T [STEPS]
 *
 * Model FLOPs count the useful matmul work once (no recompute): per token
 * and layer 2*C*(QKV + H*D) + 2*C*(FC + F) for the projections, 2*2*D*H*(T+1)/2
 * for causal attention (QK^T and PV), plus 2*C*Vp for the LM head; training
 * is 3x the forward (backward = 2x).
 */
#include <cblas.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "runtime/backend/registry.h"
#include "runtime/config/config.h"
#include "runtime/model/layer.h"
#include "runtime/model/model.h"
#include "shard/mesh.h"
#include "shard/optimizer.h"

static double sgemm_gflops(int M, int N, int K) {
    float *a = calloc((size_t)M * K, sizeof(float)), *b = calloc((size_t)N * K, sizeof(float)),
          *c = calloc((size_t)M * N, sizeof(float));
    for (size_t i = 0; i < (size_t)M * K; i++)
        a[i] = (float)(i % 7) * 0.01f;
    for (size_t i = 0; i < (size_t)N * K; i++)
        b[i] = (float)(i % 5) * 0.01f;
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
    int reps = 0;
    double t0 = rt_now_s(), elapsed = 0.0;
    while (elapsed < 2.0) {
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a, K, b, K, 0.0f, c, N);
        reps++;
        elapsed = rt_now_s() - t0;
    }
    free(a);
    free(b);
    free(c);
    return 2.0 * M * N * K * reps / elapsed / 1e9;
}

static double model_flops_per_step(const rt_model_shape *s, size_t B, size_t T) {
    const double C = s->d_model, HD = (double)s->n_heads * s->head_dim;
    double per_token_layer = 2.0 * C * ((double)rt_qkv_width(s) + HD) + 2.0 * C * ((double)rt_fc_width(s) + s->d_ff) +
                             2.0 * 2.0 * HD * ((double)T + 1.0) / 2.0;
    double forward_per_token = s->n_layers * per_token_layer + 2.0 * C * s->padded_vocab;
    return 3.0 * forward_per_token * (double)(B * T);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: bench_train PRESET B T [STEPS]\n");
        return 2;
    }
    rt_config cfg;
    rt_error err;
    rt_config_defaults(&cfg);
    if (rt_config_apply_preset(&cfg, argv[1], &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    rt_config_resolve(&cfg);
    size_t B = strtoul(argv[2], NULL, 10), T = strtoul(argv[3], NULL, 10);
    int steps = argc > 4 ? atoi(argv[4]) : 3;
    rt_model_shape shape = rt_model_shape_from_config(&cfg);
    const rt_backend *be = rt_backend_cpu();
    rt_device_memory mem;
    rt_device_memory_init(&mem, be, 0);
    rt_model model;
    if (rt_model_init(&model, &shape, be, &mem,
                      &(rt_model_options){.mode = RT_ACT_KEEP, .max_seqs = B, .max_local_len = T}, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    rt_model_init_params(&model, 1);
    rt_comm *world = rt_comm_world_mpi(&argc, &argv);
    rt_optimizer opt;
    rt_mesh mesh;
    if (rt_mesh_init(&mesh, world, 1, world->size, &err) ||
        rt_optimizer_init(&opt, be, &mem, &mesh, 0, &model.table, model.params, 0.9f, 0.95f, 1e-8f, 0.1f, &err)) {
        fprintf(stderr, "bench_train: %s\n", err.msg);
        return 1;
    }
    int32_t *inputs = malloc(B * T * sizeof(int32_t)), *targets = malloc(B * T * sizeof(int32_t));
    int64_t *pos = malloc(B * T * sizeof(int64_t));
    for (size_t i = 0; i < B * T; i++) {
        inputs[i] = (int32_t)((i * 2654435761u) % (size_t)shape.vocab_size);
        targets[i] = (int32_t)((i * 40503u + 7) % (size_t)shape.vocab_size);
        pos[i] = (int64_t)(i % T);
    }
    rt_batch batch = {.inputs = inputs, .targets = targets, .pos = pos, .n_seqs = B, .local_len = T};
    /* The machine's sgemm reference, one shape for every row: the MLP's first matmul of 1024 tokens. */
    const int M = 1024;
    double sgemm = sgemm_gflops(M, (int)rt_fc_width(&shape), shape.d_model);
    double total_s = 0.0;
    for (int step = -1; step < steps; step++) { /* step -1 warms up */
        double t0 = rt_now_s();
        size_t count = 0;
        rt_model_zero_grads(&model);
        rt_model_forward_backward(&model, &batch, NULL, 1.0f / (float)(B * T), &count);
        rt_optimizer_reduce_grads(&opt, model.grads);
        rt_optimizer_update(&opt, model.params, model.grads, 1e-4f, 1.0f);
        if (step >= 0) total_s += rt_now_s() - t0;
    }
    double step_s = total_s / steps, flops = model_flops_per_step(&shape, B, T);
    double achieved = flops / step_s / 1e9;
    char peak[32];
    printf("%-10s B=%-3zu T=%-5zu | %7.1f tok/s | %6.3f s/step | model %6.1f GFLOP/s | sgemm (%dx%zux%d) %6.1f "
           "GFLOP/s | ratio %.2f | peak %s\n",
           argv[1], B, T, (double)(B * T) / step_s, step_s, achieved, M, rt_fc_width(&shape), shape.d_model, sgemm,
           achieved / sgemm, rt_format_bytes(mem.peak, peak));
    free(inputs);
    free(targets);
    free(pos);
    rt_optimizer_free(&opt);
    rt_model_free(&model);
    rt_device_memory_destroy(&mem);
    rt_mesh_free(&mesh);
    rt_comm_finalize();
    return 0;
}
