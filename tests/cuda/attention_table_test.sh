#!/usr/bin/env bash
# tests/cuda/attention_table.py on a made-up report: the per-variant cells, the fastest kernel
# choice per pass (forward and backward from different variants) and its ratio to cuDNN's pass,
# their combined fwd+bwd and its ratio to PyTorch's backends, the default's own fwd+bwd against
# cuDNN's, and the same among the A100's (mma.sync) kernels against FlashAttention-2; lines it
# cannot use (headers, "unavailable") are skipped.
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
r="$(mktemp -d)"
trap 'rm -rf "$r"' EXIT
row() { printf '%4d %6d %3d %4d %9.3f %9.1f %9.3f %9.1f %9.1f\n' "$@"; }
{ echo "# a device"; echo "  hd    seq   B   NH    fwd_ms    fwd_TF    bwd_ms    bwd_TF     fb_TF"
  row 128 4096 4 16 1.0 100.0 2.0 125.0 116.7; row 64 4096 4 32 1.0 50.0 1.0 125.0 87.5; } > "$r/bench_attention.txt"
row 128 4096 4 16 0.5 200.0 2.0 125.0 140.0 > "$r/bench_attention_wgmma-ws.txt"
row 128 4096 4 16 1.0 100.0 1.0 250.0 175.0 > "$r/bench_attention_wgmma-atomic.txt"
row 128 4096 4 16 2.0 50.0 4.0 62.5 58.3 > "$r/bench_attention_tc-atomic.txt"
row 128 4096 4 16 1.0 100.0 8.0 31.2 38.9 > "$r/bench_attention_tc-m32.txt"
cat > "$r/bench_attention_torch.txt" <<'T'
# a device torch
  backend   hd    seq    fwd_ms    fwd_TF    bwd_ms    bwd_TF     fb_TF
  default  128   4096     1.000     100.0     1.000     250.0     175.0
    cudnn  128   4096     1.000     100.0     1.000     250.0     175.0
    flash  128   4096     1.000     100.0     2.000     125.0     116.7
    cudnn   64   4096 unavailable: no kernel for this shape at all
T
got="$(python3 "$src/tests/cuda/attention_table.py" "$r")"
echo "$got"
want128="hd 128 seq 4096: fwd/bwd/fb TF auto=100/125/117 tc-atomic=50/63/58 tc-m32=100/31/39 wgmma-atomic=100/250/175 wgmma-ws=200/125/140; fastest forward wgmma-ws 200 TF (2.00x cudnn), backward wgmma-atomic 250 TF (1.00x cudnn): fb 233 TF = 1.33x cudnn 2.00x flash; auto fb 117 TF = 0.67x cudnn"
# The A100's kernels alone (tc-m32's forward with tc-atomic's backward) against FlashAttention-2.
want128a="hd 128 seq 4096 (tc-m32, tc-atomic: the A100's kernels): fastest forward tc-m32 100 TF (1.00x flash), backward tc-atomic 63 TF (0.50x flash): fb 70 TF = 0.60x flash"
want64="hd 64 seq 4096: fwd/bwd/fb TF auto=50/125/88; fastest forward auto 50 TF, backward auto 125 TF: fb 88 TF"
[[ "$(echo "$got" | grep '^hd 128 seq 4096:')" == "$want128" ]] || { echo "FAIL: hd 128 line, want: $want128"; exit 1; }
[[ "$(echo "$got" | grep '^hd 128 seq 4096 (')" == "$want128a" ]] || { echo "FAIL: hd 128 A100 line, want: $want128a"; exit 1; }
[[ "$(echo "$got" | grep '^hd 64')" == "$want64" ]] || { echo "FAIL: hd 64 line, want: $want64"; exit 1; }
echo "attention_table.py: OK"
