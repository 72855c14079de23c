#!/usr/bin/env python3
"""The attention benchmarks of one GPU report, side by side (gpu_validation.sh prints it into
summary.txt): per head dim and sequence, each kernel choice's forward, backward and fwd+bwd
TFLOPS (bench_attention.txt: the default, `auto`; bench_attention_VARIANT.txt: LLM_CUDA_ATTENTION=
VARIANT), the fastest choice per pass (its TFLOPS against cuDNN's for the same pass), the fwd+bwd
of the fastest forward with the fastest backward (what `auto` can reach by picking per pass), and
that against PyTorch's backends from bench_attention_torch.txt (cudnn, flash) measured in the same
run; last, the default's own fwd+bwd against cuDNN's. Where the report has the mma.sync choices
(tc, tc-m32, tc-atomic: what an A100 runs, auto off sm_90 picking among them), a second line per
shape does the same among those alone, against FlashAttention-2 (PyTorch's flash backend: the
same instruction), pass by pass.

Usage: attention_table.py REPORT_DIR
"""
import os
import re
import sys


def read_ours(path):
    """{(hd, seq): (fwd_ms, bwd_ms, fwd_flops)} from a bench-cuda-attention output."""
    rows = {}
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) != 9 or not p[0].isdigit():
                continue
            hd, seq, fwd_ms, fwd_tf, bwd_ms = int(p[0]), int(p[1]), float(p[4]), float(p[5]), float(p[6])
            if fwd_ms <= 0 or bwd_ms <= 0:
                continue
            rows[(hd, seq)] = (fwd_ms, bwd_ms, fwd_tf * fwd_ms * 1e9)
    return rows


def read_torch(path):
    """{(backend, hd, seq): (fwd_TF, bwd_TF, fb_TF)} from cuda_attention_torch.py's output."""
    rows = {}
    if not os.path.exists(path):
        return rows
    with open(path) as f:
        for line in f:
            p = line.split()
            if len(p) != 8 or not p[1].isdigit():
                continue
            try:
                rows[(p[0], int(p[1]), int(p[2]))] = (float(p[4]), float(p[6]), float(p[7]))
            except ValueError:  # "unavailable: ..." lines
                continue
    return rows


def table(report):
    runs = {}
    for name in sorted(os.listdir(report)):
        m = re.fullmatch(r"bench_attention(?:_(.+))?\.txt", name)
        if m and m.group(1) != "torch":
            rows = read_ours(os.path.join(report, name))
            if rows:
                runs[m.group(1) or "auto"] = rows
    torch = read_torch(os.path.join(report, "bench_attention_torch.txt"))
    lines = []
    shapes = sorted({k for rows in runs.values() for k in rows})
    for hd, seq in shapes:
        have = {v: rows[(hd, seq)] for v, rows in runs.items() if (hd, seq) in rows}
        flops = next(iter(have.values()))[2]
        tf = lambda ms, mult: mult * flops / ms * 1e-9
        cells = " ".join(f"{v}={tf(f, 1):.0f}/{tf(b, 2.5):.0f}/{tf(f + b, 3.5):.0f}" for v, (f, b, _) in have.items())
        best_f = min(have, key=lambda v: have[v][0])
        best_b = min(have, key=lambda v: have[v][1])
        combo = tf(have[best_f][0] + have[best_b][1], 3.5)
        fwd, bwd = tf(have[best_f][0], 1), tf(have[best_b][1], 2.5)
        cudnn = torch.get(("cudnn", hd, seq))
        vs = lambda ours, i: f" ({ours / cudnn[i]:.2f}x cudnn)" if cudnn else ""
        ref = " ".join(f"{combo / torch[(n, hd, seq)][2]:.2f}x {n}" for n in ("cudnn", "flash") if (n, hd, seq) in torch)
        # The default's own fwd+bwd against cuDNN's (what a user gets without choosing).
        own = ""
        if "auto" in have and cudnn:
            f, b, _ = have["auto"]
            own = f"; auto fb {tf(f + b, 3.5):.0f} TF = {tf(f + b, 3.5) / cudnn[2]:.2f}x cudnn"
        lines.append(f"hd {hd} seq {seq}: fwd/bwd/fb TF {cells}; fastest forward {best_f} {fwd:.0f} TF{vs(fwd, 0)}, "
                     f"backward {best_b} {bwd:.0f} TF{vs(bwd, 1)}: fb {combo:.0f} TF" + (f" = {ref}" if ref else "") + own)
        a100 = [v for v in A100_KERNELS if v in have]
        if a100:
            af = min(a100, key=lambda v: have[v][0])
            ab = min(a100, key=lambda v: have[v][1])
            f, b = tf(have[af][0], 1), tf(have[ab][1], 2.5)
            fb = tf(have[af][0] + have[ab][1], 3.5)
            flash = torch.get(("flash", hd, seq))
            x = lambda ours, i: f" ({ours / flash[i]:.2f}x flash)" if flash else ""
            lines.append(f"hd {hd} seq {seq} ({', '.join(a100)}: the A100's kernels): fastest forward {af} {f:.0f} TF{x(f, 0)}, "
                         f"backward {ab} {b:.0f} TF{x(b, 1)}: fb {fb:.0f} TF" + (f" = {fb / flash[2]:.2f}x flash" if flash else ""))
    return lines


# The kernel choices that run without wgmma (an A100, or any card but compute capability 9.0).
A100_KERNELS = ("tc", "tc-m32", "tc-atomic")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: attention_table.py REPORT_DIR")
    for line in table(sys.argv[1]):
        print(line)
