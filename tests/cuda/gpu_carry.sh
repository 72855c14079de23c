#!/usr/bin/env bash
# GPU validation on a machine that has the NVIDIA driver, CUDA and cuBLAS but none of our other
# dependencies (HDF5, yaml-cpp, SentencePiece, OpenMPI, OpenBLAS, GoogleTest): build here, carry
# a bundle (pipelines/bundle.sh: executables + their non-CUDA libraries), run the checks there.
#
#   tests/cuda/gpu_carry.sh build [DIR]   # here: build DIR (default build-gpu) for CUDA_ARCH
#                                         # (default 90: H100/H200) and write gpu-carry/libllm-gpu.tar.gz;
#                                         # with SM80=1 (default) also DIR-sm80, the A100's kernels
#                                         # (sm_80 source) compiled for sm_90: its libllm.so as
#                                         # gpu-carry/libllm-sm80.so.gz (gpu_validation.sh's SM80_TREE)
#   tests/cuda/gpu_carry.sh run OUT       # there: unpack, check that the host's CUDA libraries are
#                                         # the ones the bundle was linked against, then run
#                                         # tests/cuda/gpu_validation.sh on the bundle (with the
#                                         # bundle's mpirun for the multi-rank step); reports in OUT
#   tests/cuda/gpu_carry.sh reap          # there: kill what a run left behind when an outer
#                                         # `timeout` cut it (run does this first, too)
#
# The run step needs the same CUDA major version as the build (libcudart/libcublasLt .so.N): it
# says which one is missing and stops if the host has another. QUICK=1 skips the long benchmarks.
set -uo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
carry="$src/gpu-carry"
mode="${1:-}"
tools=(llm-pretrain llm-sweep llm-generate)
tests=(test_backend test_cuda bench-cuda-gemm bench-cuda-gemm-probe bench-cuda-attention bench-cuda-train-step nccl-communicator-check)

# Every process of a run carries LLM_GPU_RUN in its environment. An outer `timeout` that cuts a
# run kills the scripts but not the steps under their own `timeout` (each is its own process
# group): an ncu or an mpirun with its ranks would go on using the card into the next call. This
# kills every process that carries the variable (a run's, not this one's: it does not carry it).
reap_runs() {
  local n
  n=$("$src/tests/cuda/kill_tagged.sh" '^LLM_GPU_RUN=')
  [[ $n = 0 ]] || echo "gpu_carry: killed $n processes left behind by an earlier run"
}

case "$mode" in
reap)
  reap_runs
  ;;
build)
  build="${2:-$src/build-gpu}"
  # LLM_SHARED: one libllm.so holds the device code once instead of every executable a copy
  # (the carry's size limit).
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" -DLLM_SHARED=ON > /dev/null || exit 1
  cmake --build "$build" -j "${JOBS:-2}" --target "${tools[@]}" "${tests[@]}" > "$build/carry-build.log" 2>&1 ||
    { tail -30 "$build/carry-build.log"; exit 1; }
  mkdir -p "$carry"
  exes=()
  for t in "${tools[@]}"; do exes+=("$build/tools/$t"); done
  for t in "${tests[@]}"; do exes+=("$build/tests/$t"); done
  # --launcher: Open MPI's mpirun too, for the multi-rank checks on a machine without MPI.
  "$src/pipelines/bundle.sh" --build "$build" --launcher --name libllm-gpu --output "$carry/libllm-gpu.tar.gz" "${exes[@]}" || exit 1
  # The sm_90a kernels' object alone, for the SASS step (cuobjdump there: a tenth of libllm.so's
  # device code to disassemble).
  rm -f "$carry/sm90a.o"
  cp "$build/kernels/CMakeFiles/llm_cuda_sm90a.dir/sm90a/attention_wgmma.cu.o" "$carry/sm90a.o" 2> /dev/null
  # The commit the bundle was built from (the GPU machine's copy of the tree has no .git).
  echo "$(git -C "$src" rev-parse --short HEAD)$(git -C "$src" diff --quiet HEAD -- lib kernels tools tests/backend tests/cuda tests/bench 2> /dev/null || echo -dirty)" > "$carry/commit.txt"
  ldd "$build/tests/test_cuda" | awk '/libcudart|libcublas|libnccl/ {print $1}' > "$carry/cuda-libs.txt"
  # The A100's kernel set, runnable on the H100/H200 there: the same sources compiled as for sm_80
  # (__CUDA_ARCH__ 800, so no sm_90a kernels: auto is tc) into sm_90 code, the library only (the
  # bundle's executables load it in a copy of the bundle: gpu_carry.sh run).
  rm -f "$carry/libllm-sm80.so.gz"
  if [[ "${SM80:-1}" = 1 ]]; then
    "$src/tests/cuda/sm80_configure.sh" "$src" "$build-sm80" > /dev/null || exit 1
    cmake --build "$build-sm80" -j "${JOBS:-2}" --target llm > "$build-sm80/carry-build.log" 2>&1 ||
      { tail -30 "$build-sm80/carry-build.log"; exit 1; }
    gzip -c "$build-sm80/lib/libllm.so" > "$carry/libllm-sm80.so.gz" || exit 1
  fi
  size=$(du -cb "$carry"/* | tail -1 | cut -f1)
  echo "gpu_carry: $carry/libllm-gpu.tar.gz$([[ -f "$carry/libllm-sm80.so.gz" ]] && echo " and libllm-sm80.so.gz") ($((size / 1048576)) MiB in all; CUDA libraries from the host: $(tr '\n' ' ' < "$carry/cuda-libs.txt"))"
  [ "$size" -lt $((60 * 1048576)) ] || echo "gpu_carry: warning: over 60 MiB, more than a carry allows"
  ;;
run)
  out="${2:?usage: gpu_carry.sh run OUT}"
  reap_runs
  export LLM_GPU_RUN="$$"
  mkdir -p "$out"
  tar -xzf "$carry/libllm-gpu.tar.gz" -C "$out" || exit 1
  root="$out/libllm-gpu"
  # The host's CUDA libraries: the toolkit's, and PyTorch's wheels (NCCL, cuBLAS) when present.
  for d in /usr/local/cuda/lib64 /usr/local/cuda/lib $(python3 -c 'import nvidia, os; p = os.path.dirname(nvidia.__path__[0]) + "/nvidia"; print(" ".join(os.path.join(p, d, "lib") for d in os.listdir(p)))' 2> /dev/null); do
    [ -d "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  missing=$(. "$root/env.sh" && ldd "$root/libexec/test_cuda" | grep "not found")
  if [ -n "$missing" ]; then
    echo "gpu_carry: the host lacks the CUDA libraries the bundle was linked against:" | tee "$out/summary.txt"
    echo "$missing" | tee -a "$out/summary.txt"
    echo "host has: $(ls /usr/local/cuda/lib64/libcudart.so.* /usr/local/cuda/lib64/libcublasLt.so.* 2> /dev/null | tr '\n' ' ')" | tee -a "$out/summary.txt"
    exit 3
  fi
  export LLM_CONFIG_DIR="$src/configs"  # model files (--model GPT1_5B) from this checkout
  # The bundle's mpirun (Open MPI, matching the bundled libmpi) before any of the host's.
  [[ -x "$root/bin/mpirun" ]] && export PATH="$root/bin:$PATH"
  # A build-tree layout of the bundle's wrappers for gpu_validation.sh (which then skips the build).
  tree="$out/tree"
  mkdir -p "$tree/tools" "$tree/tests"
  # (only for what the bundle holds: an older bundle lacks the newer tools, whose steps then say so)
  for t in "${tools[@]}"; do [[ -e "$root/bin/$t" ]] && printf '#!/bin/sh\nexec "%s/bin/%s" "$@"\n' "$root" "$t" > "$tree/tools/$t"; done
  for t in "${tests[@]}"; do [[ -e "$root/bin/$t" ]] && printf '#!/bin/sh\nexec "%s/bin/%s" "$@"\n' "$root" "$t" > "$tree/tests/$t"; done
  chmod +x "$tree"/tools/* "$tree"/tests/*
  # The sm_80 build: a copy of the bundle with its libllm.so, and a build-tree layout of it.
  if [[ -f "$carry/libllm-sm80.so.gz" ]]; then
    sm80="$out/libllm-gpu-sm80"
    rm -rf "$sm80" "$out/tree-sm80"
    cp -a "$root" "$sm80" && gunzip -c "$carry/libllm-sm80.so.gz" > "$sm80/lib/libllm.so" || exit 1
    mkdir -p "$out/tree-sm80/tests"
    for t in test_backend test_cuda; do printf '#!/bin/sh\nexec "%s/bin/%s" "$@"\n' "$sm80" "$t" > "$out/tree-sm80/tests/$t"; done
    chmod +x "$out/tree-sm80"/tests/*
    export SM80_TREE="$out/tree-sm80"
  fi
  # The device code for the SASS step (BENCHES=sass): the sm_90a object, else the bundle's libllm.so.
  for c in "$carry/sm90a.o" "$root/lib/libllm.so"; do
    [[ -z "${DEVICE_CODE:-}" && -f "$c" ]] && export DEVICE_CODE="$c"
  done
  COMMIT="bundle $(cat "$carry/commit.txt" 2> /dev/null || echo '?')" SKIP_BUILD=1 "$src/tests/cuda/gpu_validation.sh" "$out/report" "$tree"
  ;;
*)
  sed -n '2,/^set -uo/p' "$0" | sed '$d; s/^# \{0,1\}//'
  exit 2
  ;;
esac
