#!/usr/bin/env bash
# pipelines/seqlen-sweep.sh: the llm-sweep command it builds here (CPU), on a GPU node (a
# stand-in nvidia-smi: the CUDA backend in bf16 with the card's datasheet peak), when simulating,
# and a real one-point sweep on the CPU.
# usage: seqlen_sweep_test.sh <build dir with tools/>
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
export LLM_BIN="$1/tools"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fails=0
check() { if eval "$2"; then echo "ok   $1"; else echo "FAIL $1"; fails=$((fails + 1)); fi; }
sweep="$root/pipelines/seqlen-sweep.sh"

mkdir -p cpu gpu unknown
printf '#!/bin/sh\nexit 1\n' > cpu/nvidia-smi  # present, but no GPU
printf '#!/bin/sh\nif [ "$1" = -L ]; then echo "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0)"; else echo "NVIDIA A100-SXM4-40GB"; fi\n' > gpu/nvidia-smi
printf '#!/bin/sh\nif [ "$1" = -L ]; then echo "GPU 0: NVIDIA L40S (UUID: GPU-0)"; else echo "NVIDIA L40S"; fi\n' > unknown/nvidia-smi
chmod +x */nvidia-smi
PATH="$work/cpu:$PATH" DRY_RUN=1 "$sweep" > c.txt 2>&1
check "no GPU here: the CPU, with the CPU cluster file's predictions" "grep -q -- '--cluster .*cpu-2core.yaml' c.txt && ! grep -q -- '--backend cuda' c.txt"
PATH="$work/gpu:$PATH" DRY_RUN=1 "$sweep" > g.txt 2>&1
check "a GPU node: the CUDA backend in bf16, the A100's datasheet peak, no CPU cluster file" "grep -q -- '--backend cuda --device A100-40GB --dtype bf16' g.txt && ! grep -q -- '--cluster' g.txt"
PATH="$work/gpu:$PATH" DRY_RUN=1 DTYPE=fp16 DEVICE=H200 "$sweep" > g2.txt 2>&1
check "DTYPE and DEVICE override" "grep -q -- '--backend cuda --device H200 --dtype fp16' g2.txt"
PATH="$work/unknown:$PATH" DRY_RUN=1 "$sweep" > u.txt 2>&1
check "a GPU without a datasheet peak asks for DEVICE" "[ $? -eq 2 ] && grep -q 'set DEVICE (A100-40GB, A100-80GB, H100-SXM or H200)' u.txt"
PATH="$work/gpu:$PATH" DRY_RUN=1 SIMULATE=1 CLUSTER="$root/configs/clusters/polaris.yaml" "$sweep" > s.txt 2>&1
check "SIMULATE=1 predicts for the cluster file, whatever the node" "grep -q -- '--simulate --cluster .*polaris.yaml' s.txt && ! grep -q -- '--backend' s.txt"
PATH="$work/cpu:$PATH" MODEL_SIZE_KEY=tiny SEQ_LENS="64" WARMUP=1 ITERS=1 OUTPUT_ROOT=out "$sweep" > r.txt 2>&1
check "a one-point sweep on the CPU writes its table" "[ $? -eq 0 ] && grep -q '| tiny s64 mb1 .* | ok |' r.txt && ls out/seqlen-sweep_tiny_ds_mp1_pp1_sp1_z0/ | grep -q ."

[ "$fails" -eq 0 ] && echo "all seqlen-sweep checks passed" || echo "$fails seqlen-sweep check(s) failed"
exit $((fails > 0))
