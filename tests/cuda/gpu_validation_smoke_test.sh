#!/usr/bin/env bash
# tests/cuda/gpu_validation.sh on a machine without a GPU (CI): every step runs, fails fast for
# want of a device and reports, and the script itself raises no shell error, so that a rare GPU
# lease is never lost to a bug in the script. Exits 77 (skipped) where a GPU is visible (run the
# script itself there: it takes minutes) or without the CUDA build.
#   gpu_validation_smoke_test.sh BUILD_DIR
set -uo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
build="${1:?usage: gpu_validation_smoke_test.sh BUILD_DIR}"
if nvidia-smi -L > /dev/null 2>&1; then
  echo "skipped: a GPU is visible; run tests/cuda/gpu_validation.sh itself"
  exit 77
fi
if [[ ! -x "$build/tests/bench-cuda-gemm" ]]; then
  echo "skipped: built without CUDA (no GPU benchmarks to drive)"
  exit 77
fi
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
fail() { echo "FAIL: $*"; echo "--- summary"; cat "$out/r/summary.txt" 2> /dev/null; echo "--- log"; tail -30 "$out/log"; exit 1; }

# Stand-ins for cuobjdump and ncu (the SASS step's plumbing: the digests of their made-up output
# reach the summary): cuobjdump prints tests/cuda/testdata/sass_sample.txt, ncu -o writes an
# empty report and ncu -i prints testdata/ncu_source_sample.csv. Neither runs anything.
fake="$out/fake-bin"
mkdir -p "$fake"
printf '#!/bin/sh\ncat "%s"\n' "$src/tests/cuda/testdata/sass_sample.txt" > "$fake/cuobjdump"
printf '#!/bin/sh\nwhile [ $# -gt 0 ]; do case "$1" in -i) cat "%s"; exit 0;; -o) : > "$2.ncu-rep";; esac; shift; done\n' \
  "$src/tests/cuda/testdata/ncu_source_sample.csv" > "$fake/ncu"
chmod +x "$fake/cuobjdump" "$fake/ncu"
# MULTIRANK_BACKEND=cpu: the multi-rank layouts' plumbing on the CPU (no NCCL check passes here;
# budget and limits wide: a loaded machine must not turn this into a timing test).
PATH="$fake:$PATH" SM80_TREE="$build" MULTIRANK_BACKEND=cpu MULTIRANK_BUDGET=3000 MULTIRANK_LIMIT=300 BENCHES="gemm attention torch train-step longseq sweep profile sass" ENV_VARIANTS="LLM_CUDA_BLOCK_ORDER=launch LLM_CUDA_BLOCK_ORDER=heaviest:8,LLM_CUDA_DQ_RED=v4" \
  LLM_REQUIRE_CUDA=0 SKIP_BUILD=1 TIME_SCALE=0.3 COMMIT=smoke "$src/tests/cuda/gpu_validation.sh" "$out/r" "$build" > "$out/log" 2>&1 ||
  fail "the script exited $?"
summary="$out/r/summary.txt"
# Shell errors (a missing nvidia-smi is expected here).
errors=$(grep -E "line [0-9]+: |syntax error|unbound variable|command not found" "$out/log" | grep -v "nvidia-smi")
[[ -z "$errors" ]] || fail "shell errors: $errors"
for step in "== commit smoke" "test_backend (cuda) exit" "test_cuda exit" "attention tests with LLM_CUDA_ATTENTION=simt" \
            "attention tests with LLM_CUDA_ATTENTION=tc-atomic" "attention tests with LLM_CUDA_ATTENTION=wgmma" \
            "wgmma tests exit" "linear tests with LLM_CUDA_BIAS_GRAD=epilogue" "train step (wgmma) exit" \
            "pretrain cuda exit" "pretrain bf16 exit" "pretrain fp16 exit" "pretrain deterministic" "gemm exit" "gemm probe exit" "attention exit" \
            "train step exit" "train step (tc-m32) exit" "longseq 131072 exit" "longseq 262144 exit" \
            "longseq vocab 50257, 65536 tokens, logits chunk 0 exit" "longseq vocab 50257, 65536 tokens, logits chunk 4096 exit" \
            "sweep GPT1_3B exit" "sweep GPT1_5B exit" "attention tests with LLM_CUDA_ATTENTION=tc exit" \
            "wgmma_ws_tma test exit" "attention tests with LLM_CUDA_ATTENTION=wgmma-ws-tma exit" \
            "attention (LLM_CUDA_BLOCK_ORDER=launch) exit" "train step (LLM_CUDA_BLOCK_ORDER=heaviest:8,LLM_CUDA_DQ_RED=v4) exit" \
            "attention tests with LLM_CUDA_BLOCK_ORDER=launch exit" "wgmma_ws_convert test exit" "wgmma_ws_v4 test exit" "tc_fused test exit" \
            "sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: test_backend (cuda) exit" "sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: test_cuda exit" \
            "sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: tc_fused (tc-atomic's 8- and 4-warp backward) exit" \
            "== profile" "== sass" "== done:"; do
  grep -qF -- "$step" "$summary" || fail "no '$step' line in the summary"
done
# The multi-rank step: the NCCL check says skipped; every layout on the CPU matches the single process.
if command -v mpirun > /dev/null; then
  grep -q "^== NCCL communicator, 2 ranks, exit 77: skipped" "$summary" || fail "no 'NCCL communicator, 2 ranks, exit 77: skipped' line"
  [[ $(grep -c "^== multi-rank .* exit 0.*: 8 iterations, worst rel diff .* OK$" "$summary") -eq 20 ]] ||
    fail "not all 20 multi-rank layouts ran and matched the single process on the CPU"
  # ZeRO-1 in bf16 keeps only its range of the f32 masters, and the step says so
  for l in z1ov-bf16 z1tp2ov-bf16; do
    grep -q "^== multi-rank $l ([0-9] ranks, f32 masters sharded) exit 0" "$summary" || fail "multi-rank $l: no 'f32 masters sharded'"
  done
  ! grep -q "^== multi-rank z3ov-bf16 .*masters sharded" "$summary" || fail "multi-rank z3ov-bf16 says its masters are sharded (ZeRO-3 shards the parameters themselves)"
  grep -q "^== multi-rank dp2tp2ck (4 ranks) exit 0, then resumed on 1 process exit 0: 8 iterations" "$summary" ||
    fail "no resumed checkpoint line for dp2tp2ck"
fi
# TESTS="sm80 multirank": those steps alone (a second short call on a lease), nothing else.
if command -v mpirun > /dev/null; then
  SM80_TREE="$build" MULTIRANK_BACKEND=cpu MULTIRANK_LIMIT=300 TESTS="sm80 multirank" BENCHES="" LLM_REQUIRE_CUDA=0 SKIP_BUILD=1 TIME_SCALE=0.3 COMMIT=smoke \
    MULTIRANK_LAYOUTS="tp2 2 --tensor-model-parallel-size 2" "$src/tests/cuda/gpu_validation.sh" "$out/m" "$build" > "$out/mlog" 2>&1 ||
    fail "TESTS=\"sm80 multirank\": the script exited $?"
  grep -q '^== TESTS="sm80 multirank": the named steps alone' "$out/m/summary.txt" &&
    grep -q "^== multi-rank tp2 (2 ranks) exit 0 .* OK$" "$out/m/summary.txt" &&
    grep -q "^== sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: test_cuda exit" "$out/m/summary.txt" &&
    ! grep -q "^== test_backend\|^== pretrain " "$out/m/summary.txt" ||
    fail "TESTS=\"sm80 multirank\" ran more or less than the two steps: $(cat "$out/m/summary.txt")"
fi
# Without a device nothing may claim success: the curves fail, the benchmarks say skipped (77).
grep -q "pretrain cuda exit .* 0 iterations.* FAIL" "$summary" || fail "the CUDA curve without a device must FAIL with 0 iterations"
grep -q "pretrain deterministic .* 0 iterations.* FAIL" "$summary" || fail "the reproducibility check without a device must FAIL"
grep -q "^== llm-generate from the CPU run's checkpoint, 24 greedy tokens: cpu exit 0, cuda exit 2: DIFFERENT text FAIL; --bf16: cpu exit 0, cuda exit 2" "$summary" ||
  fail "llm-generate from the CPU run's checkpoint: the CPU must generate, and the GPU runs fail (exit 2) without a device"
grep -qE "^== llm-generate .*; weights on the GPU \? MiB, --bf16 \? MiB \(CPU [0-9.]+ / [0-9.]+\)$" "$summary" ||
  fail "llm-generate's line must give the CPU runs' weights (and none for the failed GPU runs)"
grep -q "gemm exit 77" "$summary" || fail "the GEMM benchmark without a device must exit 77 (skipped)"
grep -q "gemm probe exit 77: 0 library shapes wrong; 0 algorithm runs wrong" "$summary" || fail "the GEMM probe without a device must exit 77 (skipped)"
grep -qE "test_backend \(cuda\) exit 0: .*SKIPPED" "$summary" || fail "the CUDA tests without a device must report SKIPPED"
# The sm_80 step without a device: its wgmma tests skip for want of a device, not of the sm_90a
# build, so it cannot say OK.
grep -q "^== sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: test_backend (cuda) exit 0: .*wgmma tests skipped as not built: 0 FAIL$" "$summary" ||
  fail "the sm_80 step without a device (and with the sm_90a build) must FAIL its build check"
# The SASS step: the bf16 hd-128 kernel of the listing extracted and its mix summarised, the stall
# samples exported and ranked.
grep -q "^== sass (cuobjdump exit 0, 3 functions in .*): 1 kernels to sass_attention.txt" "$summary" ||
  fail "no 'sass (cuobjdump exit 0, 3 functions ...): 1 kernels' line"
grep -q "^_ZN3llm7kernels5sm90a27attention_backward_wgmma_wsI13__nv_bfloat16Li128E.*: 12 instructions" "$summary" ||
  fail "no instruction mix of the extracted kernel"
grep -q "^== sass stalls (auto) exit 0, export exit 0" "$summary" || fail "no 'sass stalls (auto) exit 0, export exit 0' line"
grep -q "^7 instructions, 2000 warp-stall samples" "$summary" || fail "no stall-sample digest"
# ENV_VARIANTS' outputs are named after the assignments, without LLM_CUDA_.
[[ -f "$out/r/bench_attention_block-order-launch.txt" && -f "$out/r/bench_train_step_block-order-heaviest-8-dq-red-v4.txt" ]] ||
  fail "no bench_attention_block-order-launch.txt / bench_train_step_block-order-heaviest-8-dq-red-v4.txt"
echo "gpu_validation.sh: every step ran and reported ($(grep -c '^== ' "$summary") summary lines)"
