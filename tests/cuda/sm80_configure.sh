#!/usr/bin/env bash
# Configures BUILD_DIR for the A100's kernel set on a Hopper card: the sources compiled as for
# sm_80 (__CUDA_ARCH__ 800, so no sm_90a object: auto picks as on an A100) into sm_90 code, libllm
# shared. gpu_validation.sh (its sm_80 step's tree) and gpu_carry.sh (the carried libllm-sm80.so)
# both configure through this, so the two cannot drift apart.
#   sm80_configure.sh SRC_DIR BUILD_DIR
set -euo pipefail
exec cmake -S "${1:?usage: sm80_configure.sh SRC_DIR BUILD_DIR}" -B "${2:?usage: sm80_configure.sh SRC_DIR BUILD_DIR}" \
  -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES=OFF "-DCMAKE_CUDA_FLAGS=-gencode=arch=compute_80,code=sm_90" \
  -DLLM_SHARED=ON
