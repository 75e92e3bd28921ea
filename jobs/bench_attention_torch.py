#!/usr/bin/env python3
"""bench_attention_torch.py: PyTorch's scaled_dot_product_attention (bf16, causal) on the shapes that
jobs/bench_attention measured with our kernels, on the same GPU in the same job, and the ratios ours / PyTorch.

    python3 jobs/bench_attention_torch.py OURS_FILE [REPS]

OURS_FILE holds bench_attention's lines ("attn ours T=.. H=.. Hkv=.. D=.. fwd_ms=.. bwd_ms=.. ...").
For each shape, q (1, H, T, D) and k, v (1, Hkv, T, D) in bf16 (GQA through enable_gqa), dout random:
the forward is timed with inputs that require grad (what training runs), the backward as
out.backward(dout, retain_graph=True) on one graph. FLOPs as in bench_attention.c (FlashAttention's
convention): forward 4*D*H*T*(T+1)/2, backward 2.5x. Times: CUDA events, mean of REPS (default 10) after
3 warm-ups. Also one bf16 8192^3 torch.matmul, the dense rate this GPU reaches in practice, beside the peak.
"""
import re
import sys

try:
    import torch
    import torch.nn.functional as F
except ImportError:  # read_ours needs no torch: tests/gpu/bench_gpu_cpu.sh imports it on machines without
    torch = F = None


def cuda_ms(fn, reps, warmup=3):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / reps


def torch_attention(T, H, Hkv, D, reps):
    gen = torch.Generator(device="cuda").manual_seed(0)
    q = (torch.rand(1, H, T, D, device="cuda", generator=gen) * 4 - 2).bfloat16().requires_grad_()
    k = (torch.rand(1, Hkv, T, D, device="cuda", generator=gen) * 4 - 2).bfloat16().requires_grad_()
    v = (torch.rand(1, Hkv, T, D, device="cuda", generator=gen) * 2 - 1).bfloat16().requires_grad_()
    dout = (torch.rand(1, H, T, D, device="cuda", generator=gen) * 2 - 1).bfloat16()
    extra = {"enable_gqa": True} if Hkv != H else {}
    fwd_ms = cuda_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, **extra), reps)
    out = F.scaled_dot_product_attention(q, k, v, is_causal=True, **extra)
    bwd_ms = cuda_ms(lambda: out.backward(dout, retain_graph=True), reps)
    return fwd_ms, bwd_ms


def matmul_tflops(n=8192, reps=10):
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = cuda_ms(lambda: a @ b, reps)
    return 2 * n**3 / (ms * 1e-3) / 1e12


def read_ours(path):
    """bench_attention's lines in the file at path, each as {field: number} (T, H, Hkv, D, fwd_ms, ...)."""
    ours = []
    with open(path) as f:
        for line in f:
            if line.startswith("attn ours "):
                ours.append({k: float(v) for k, v in re.findall(r"(\w+)=([0-9.]+)", line)})
    return ours


def main():
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    if torch is None:
        sys.exit("bench_attention_torch.py: PyTorch is not installed")
    reps = int(sys.argv[2]) if len(sys.argv) > 2 else 10
    ours = read_ours(sys.argv[1])
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    print(f"matmul torch bf16 8192^3 tflops={matmul_tflops():.1f}")
    header = ("T", "H", "Hkv", "D", "ours fwd TF/s", "torch fwd TF/s", "fwd ours/torch", "ours bwd TF/s",
              "torch bwd TF/s", "bwd ours/torch", "fwd+bwd ours/torch")
    rows = []
    for o in ours:
        T, H, Hkv, D = int(o["T"]), int(o["H"]), int(o["Hkv"]), int(o["D"])
        fwd_flops = 4.0 * D * H * T * (T + 1) / 2
        bwd_flops = 2.5 * fwd_flops
        try:
            fwd_ms, bwd_ms = torch_attention(T, H, Hkv, D, reps)
        except Exception as e:  # one shape that torch refuses does not hide the others
            print(f"attn torch T={T} H={H} Hkv={Hkv} D={D} failed: {e}")
            continue
        t_fwd, t_bwd = fwd_flops / (fwd_ms * 1e-3) / 1e12, bwd_flops / (bwd_ms * 1e-3) / 1e12
        t_all = (fwd_flops + bwd_flops) / ((fwd_ms + bwd_ms) * 1e-3) / 1e12
        print(f"attn torch T={T} H={H} Hkv={Hkv} D={D} fwd_ms={fwd_ms:.3f} bwd_ms={bwd_ms:.3f} "
              f"fwd_tflops={t_fwd:.1f} bwd_tflops={t_bwd:.1f} fwdbwd_tflops={t_all:.1f}")
        o_all = (fwd_flops + bwd_flops) / ((o["fwd_ms"] + o["bwd_ms"]) * 1e-3) / 1e12
        rows.append((T, H, Hkv, D, f"{o['fwd_tflops']:.1f}", f"{t_fwd:.1f}", f"{o['fwd_tflops'] / t_fwd:.3f}",
                     f"{o['bwd_tflops']:.1f}", f"{t_bwd:.1f}", f"{o['bwd_tflops'] / t_bwd:.3f}", f"{o_all / t_all:.3f}"))
    print()
    print("| " + " | ".join(header) + " |")
    print("|" + " --- |" * len(header))
    for r in rows:
        print("| " + " | ".join(str(x) for x in r) + " |")


if __name__ == "__main__":
    main()
