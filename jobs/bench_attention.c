/*
 * bench_attention.c: TFLOP/s of the CUDA backend's attention kernels alone:
 * one causal block of T queries over the same T keys (the diagonal block,
 * the whole sequence on one GPU), forward (attn_block_forward from out = 0,
 * lse = -inf) and backward (attn_delta + attn_block_backward). Not a test.
 *
 *   bench_attention T H HKV D [REPS]
 *
 * Prints one line that jobs/bench_attention_torch.py reads next to
 * PyTorch's scaled_dot_product_attention on the same shape:
 *   attn ours T=.. H=.. Hkv=.. D=.. fwd_ms=.. bwd_ms=.. fwd_tflops=.. bwd_tflops=.. fwdbwd_tflops=..
 * FLOPs, the FlashAttention convention: the forward is 2 matmuls of
 * 2*D FLOPs per (query, visible key) pair and head, 4*D*H*T*(T+1)/2; the
 * backward is 2.5x that (5 matmuls: S again, dV, dP, dQ, dK). Times are
 * wall-clock means over REPS runs (default 5) after one warm-up, with the
 * device synchronized around each. RT_BENCH_BACKEND=cpu runs it on the CPU backend (a check of the program).
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "runtime/backend/backend.h"
#include "runtime/backend/registry.h"
#include "runtime/core/common.h"

static float *device_random(const rt_backend *be, size_t n, float lo, float hi, uint64_t seed) {
    float *host = malloc_check(n * sizeof(float));
    uint64_t x = seed * 0x9E3779B97F4A7C15ULL + 1;
    for (size_t i = 0; i < n; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        host[i] = lo + (hi - lo) * (float)((x >> 40) * 0x1.0p-24);
    }
    float *dev = rt_be_device_alloc(be, n * sizeof(float));
    if (!dev) rt_fatal("bench_attention: no device memory for %zu floats", n);
    rt_be_copy(be, dev, host, n * sizeof(float));
    free(host);
    return dev;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: bench_attention T H HKV D [REPS]\n");
        return 2;
    }
    const size_t T = strtoul(argv[1], NULL, 10);
    const int H = atoi(argv[2]), Hkv = atoi(argv[3]), D = atoi(argv[4]), reps = argc > 5 ? atoi(argv[5]) : 5;
    rt_error err;
    const rt_backend *be = NULL;
    const char *kind = getenv("RT_BENCH_BACKEND") ? getenv("RT_BENCH_BACKEND") : "cuda"; /* cpu: a smoke test */
    if (rt_backend_open(&be, kind, 0, &err)) {
        fprintf(stderr, "bench_attention: %s\n", err.msg);
        return 1;
    }
    const size_t HD = (size_t)H * D, KD = (size_t)Hkv * D;
    const rt_attn_shape shape = {H, Hkv, D, HD, KD, HD, 1};
    float *q = device_random(be, T * HD, -2.0f, 2.0f, 1), *k = device_random(be, T * KD, -2.0f, 2.0f, 2);
    float *v = device_random(be, T * KD, -1.0f, 1.0f, 3), *dout = device_random(be, T * HD, -1.0f, 1.0f, 4);
    float *out = device_random(be, T * HD, 0.0f, 0.0f, 5), *dq = device_random(be, T * HD, 0.0f, 0.0f, 6);
    float *dk = device_random(be, T * KD, 0.0f, 0.0f, 7), *dv = device_random(be, T * KD, 0.0f, 0.0f, 8);
    float *lse = rt_be_device_alloc(be, T * H * sizeof(float)), *delta = rt_be_device_alloc(be, T * H * sizeof(float));
    float *lse_init = malloc_check(T * H * sizeof(float));
    for (size_t i = 0; i < T * (size_t)H; i++)
        lse_init[i] = -INFINITY;
    int64_t *pos_host = malloc_check(T * sizeof(int64_t));
    for (size_t i = 0; i < T; i++)
        pos_host[i] = (int64_t)i;
    int64_t *pos = rt_be_device_alloc(be, T * sizeof(int64_t));
    rt_be_copy(be, pos, pos_host, T * sizeof(int64_t));
    const size_t ws_bytes = rt_be_attn_workspace_bytes(be, T, T, &shape);
    void *ws = rt_be_device_alloc(be, ws_bytes ? ws_bytes : 64);
    if (!lse || !delta || !pos || !ws) rt_fatal("bench_attention: out of device memory");

    double fwd_s = 0.0, bwd_s = 0.0;
    for (int rep = -1; rep < reps; rep++) { /* rep -1 warms up */
        rt_be_memset_zero(be, out, T * HD * sizeof(float));
        rt_be_copy(be, lse, lse_init, T * H * sizeof(float));
        rt_be_synchronize(be);
        double t0 = rt_now_s();
        rt_be_attn_block_forward(be, out, lse, q, k, v, pos, NULL, pos, T, T, &shape, ws, ws_bytes);
        rt_be_synchronize(be);
        double t1 = rt_now_s();
        rt_be_attn_delta(be, delta, out, dout, T, &shape);
        rt_be_attn_block_backward(be, dq, dk, dv, dout, q, k, v, lse, delta, pos, NULL, pos, T, T, &shape, ws,
                                  ws_bytes);
        rt_be_synchronize(be);
        double t2 = rt_now_s();
        if (rep >= 0) fwd_s += t1 - t0, bwd_s += t2 - t1;
    }
    fwd_s /= reps, bwd_s /= reps;
    const double fwd_flops = 4.0 * D * H * (double)T * ((double)T + 1.0) / 2.0, bwd_flops = 2.5 * fwd_flops;
    printf("attn ours T=%zu H=%d Hkv=%d D=%d fwd_ms=%.3f bwd_ms=%.3f fwd_tflops=%.1f bwd_tflops=%.1f "
           "fwdbwd_tflops=%.1f\n",
           T, H, Hkv, D, fwd_s * 1e3, bwd_s * 1e3, fwd_flops / fwd_s / 1e12, bwd_flops / bwd_s / 1e12,
           (fwd_flops + bwd_flops) / (fwd_s + bwd_s) / 1e12);
    float *bufs[] = {q, k, v, dout, out, dq, dk, dv, lse, delta};
    for (size_t i = 0; i < sizeof bufs / sizeof bufs[0]; i++)
        rt_be_device_free(be, bufs[i]);
    rt_be_device_free(be, pos);
    rt_be_device_free(be, ws);
    free(lse_init);
    free(pos_host);
    rt_backend_close(be);
    return 0;
}
