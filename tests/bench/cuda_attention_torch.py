#!/usr/bin/env python3
"""PyTorch's fused causal attention on the same configurations as bench-cuda-attention (bf16,
16k tokens per batch, hidden 2048, head dims 64/128, seq 2k-16k; the same --head-dims and --seqs
flags), for the comparison table in docs/gpu-validation.md. Prints one line per backend that
PyTorch can run here: default (unrestricted: what F.scaled_dot_product_attention picks), flash,
cudnn, efficient.

Usage: python3 cuda_attention_torch.py [--tokens 16384 --hidden 2048 --head-dims 64,128 --seqs 2048,4096]
"""
import argparse
import contextlib

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel


def time_ms(fn, warmup=2, reps=5):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(stop))
    return sorted(times)[len(times) // 2]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=16384)
    p.add_argument("--hidden", type=int, default=2048)
    ints = lambda v: [int(x) for x in v.split(",")]
    p.add_argument("--head-dims", type=ints, default=[64, 128])
    p.add_argument("--seqs", type=ints, default=[2048, 4096, 8192, 16384])
    p.add_argument("--reps", type=int, default=5)
    a = p.parse_args()
    print(f"# {torch.cuda.get_device_name()} torch {torch.__version__} cuda {torch.version.cuda} "
          f"cudnn {torch.backends.cudnn.version()}")
    print(f"{'backend':>9} {'hd':>4} {'seq':>6} {'fwd_ms':>9} {'fwd_TF':>9} {'bwd_ms':>9} {'bwd_TF':>9} {'fb_TF':>9}")
    # "default": whatever F.scaled_dot_product_attention picks unrestricted (what a PyTorch user
    # gets), next to each backend forced.
    backends = [("default", None), ("flash", SDPBackend.FLASH_ATTENTION), ("cudnn", SDPBackend.CUDNN_ATTENTION),
                ("efficient", SDPBackend.EFFICIENT_ATTENTION)]
    for hd in a.head_dims:
        for T in a.seqs:
            B, NH = max(1, a.tokens // T), a.hidden // hd
            q, k, v = (torch.randn(B, NH, T, hd, device="cuda", dtype=torch.bfloat16, requires_grad=True)
                       for _ in range(3))
            dout = torch.randn(B, NH, T, hd, device="cuda", dtype=torch.bfloat16)
            fwd_flops = 4.0 * B * NH * T * T * hd / 2
            bwd_flops = 2.5 * fwd_flops
            for name, backend in backends:
                try:
                    with sdpa_kernel([backend]) if backend is not None else contextlib.nullcontext():
                        fwd = time_ms(lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True), reps=a.reps)
                        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
                        bwd = time_ms(lambda: torch.autograd.grad(out, (q, k, v), dout, retain_graph=True), reps=a.reps)
                except RuntimeError as e:  # backend not available for this shape/GPU
                    print(f"{name:>9} {hd:>4} {T:>6} unavailable: {str(e).splitlines()[0][:60]}")
                    continue
                print(f"{name:>9} {hd:>4} {T:>6} {fwd:9.3f} {fwd_flops / fwd * 1e-9:9.1f} {bwd:9.3f} "
                      f"{bwd_flops / bwd * 1e-9:9.1f} {(fwd_flops + bwd_flops) / (fwd + bwd) * 1e-9:9.1f}", flush=True)


if __name__ == "__main__":
    main()
