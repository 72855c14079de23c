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

BENCHES="gemm attention torch train-step longseq sweep profile" ENV_VARIANTS="LLM_CUDA_BLOCK_ORDER=launch LLM_CUDA_BLOCK_ORDER=heaviest:8" \
  SKIP_BUILD=1 TIME_SCALE=0.3 COMMIT=smoke "$src/tests/cuda/gpu_validation.sh" "$out/r" "$build" > "$out/log" 2>&1 ||
  fail "the script exited $?"
summary="$out/r/summary.txt"
# Shell errors (a missing nvidia-smi is expected here).
errors=$(grep -E "line [0-9]+: |syntax error|unbound variable|command not found" "$out/log" | grep -v "nvidia-smi")
[[ -z "$errors" ]] || fail "shell errors: $errors"
for step in "== commit smoke" "test_backend (cuda) exit" "test_cuda exit" "attention tests with LLM_CUDA_ATTENTION=simt" \
            "attention tests with LLM_CUDA_ATTENTION=tc-atomic" "attention tests with LLM_CUDA_ATTENTION=wgmma" \
            "wgmma tests exit" "linear tests with LLM_CUDA_BIAS_GRAD=epilogue" "train step (wgmma) exit" \
            "pretrain cuda exit" "pretrain bf16 exit" "pretrain fp16 exit" "pretrain deterministic" "gemm exit" "attention exit" \
            "train step exit" "train step (tc-m32) exit" "longseq 131072 exit" "longseq 262144 exit" \
            "sweep GPT1_3B exit" "sweep GPT1_5B exit" "attention tests with LLM_CUDA_ATTENTION=tc exit" \
            "wgmma_ws_tma test exit" "attention tests with LLM_CUDA_ATTENTION=wgmma-ws-tma exit" \
            "attention (LLM_CUDA_BLOCK_ORDER=launch) exit" "train step (LLM_CUDA_BLOCK_ORDER=heaviest:8) exit" \
            "== profile" "== done:"; do
  grep -qF -- "$step" "$summary" || fail "no '$step' line in the summary"
done
# Without a device nothing may claim success: the curves fail, the benchmarks say skipped (77).
grep -q "pretrain cuda exit .* 0 iterations.* FAIL" "$summary" || fail "the CUDA curve without a device must FAIL with 0 iterations"
grep -q "pretrain deterministic .* 0 iterations.* FAIL" "$summary" || fail "the reproducibility check without a device must FAIL"
grep -q "gemm exit 77" "$summary" || fail "the GEMM benchmark without a device must exit 77 (skipped)"
grep -qE "test_backend \(cuda\) exit 0: .*SKIPPED" "$summary" || fail "the CUDA tests without a device must report SKIPPED"
# ENV_VARIANTS' outputs are named after the assignment, without LLM_CUDA_.
[[ -f "$out/r/bench_attention_block-order-launch.txt" && -f "$out/r/bench_train_step_block-order-heaviest-8.txt" ]] ||
  fail "no bench_attention_block-order-launch.txt / bench_train_step_block-order-heaviest-8.txt"
echo "gpu_validation.sh: every step ran and reported ($(grep -c '^== ' "$summary") summary lines)"
