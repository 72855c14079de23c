#!/usr/bin/env bash
# The seed's long-sequence experiment on this machine: TFLOPS and memory against sequence
# length for one model and layout, as llm-sweep measures them (or predicts them, SIMULATE=1),
# written with its table and plots under outputs/.
#
#   pipelines/seqlen-sweep.sh                                     # small model, 128..1024, here
#   MODEL_SIZE_KEY=tiny SEQ_LENS="256 512 1024 2048" USE_ACTIVATION_CHECKPOINTING=1 pipelines/seqlen-sweep.sh
#   SIMULATE=1 CLUSTER=configs/clusters/polaris.yaml MODEL_SIZE_KEY=GPT25B MPSIZE=4 PPSIZE=8 GAS=16 \
#     SP_TYPE="megatron ds" SPSIZE="1 4" ZERO_STAGE=1 SEQ_LENS="2048 4096 8192 16384 32768 65536 131072" \
#     USE_ACTIVATION_CHECKPOINTING=1 pipelines/seqlen-sweep.sh
#
# Environment (defaults in brackets), named like pipelines/launch/train.sh's:
#   MODEL_SIZE_KEY [small]  SEQ_LENS ["128 256 512 1024"]  MICRO_BATCH [1]  GAS [1]
#   MPSIZE [1] tensor parallel   PPSIZE [1] pipeline   SPSIZE [1] sequence parallel (a list)
#   SP_TYPE [ds] ds (Ulysses) | megatron (a list)   ZERO_STAGE [0]   DPSIZE [1]
#   USE_ACTIVATION_CHECKPOINTING [0] (0, 1 or "0 1")   DTYPE [fp32; the cluster's with SIMULATE=1]
#   VOCAB_SIZE [the model file's]   LOGITS_CHUNK_TOKENS [0: whole]   WARMUP [2]  ITERS [5]  THREADS [all cores]  MEM_LIMIT_GIB [RAM]
#   CLUSTER [configs/clusters/cpu-2core.yaml when measuring on the CPU: adds predicted times]
#   SIMULATE [0]   OUTPUT_ROOT [outputs]   DRY_RUN [0]: print the llm-sweep command only
#   BACKEND [cuda when nvidia-smi lists a GPU here, else cpu]; on cuda DTYPE [bf16] and DEVICE
#     [the GPU's datasheet peak for MFU, from nvidia-smi's name: A100-40GB, A100-80GB, H100-SXM, H200]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="${LLM_BIN:-${BUILD_DIR:-$root/build}/tools}/llm-sweep"
die() { echo "seqlen-sweep.sh: error: $*" >&2; exit 2; }

MODEL_SIZE_KEY=${MODEL_SIZE_KEY:-small}
SEQ_LENS=${SEQ_LENS:-128 256 512 1024}
MICRO_BATCH=${MICRO_BATCH:-1}
GAS=${GAS:-1}
MPSIZE=${MPSIZE:-1}
PPSIZE=${PPSIZE:-1}
SPSIZE=${SPSIZE:-1}
DPSIZE=${DPSIZE:-1}
SP_TYPE=${SP_TYPE:-ds}
ZERO_STAGE=${ZERO_STAGE:-0}
USE_ACTIVATION_CHECKPOINTING=${USE_ACTIVATION_CHECKPOINTING:-0}
SIMULATE=${SIMULATE:-0}
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs}

recompute=$(echo "$USE_ACTIVATION_CHECKPOINTING" | sed 's/1/on/g; s/0/off/g')
name="seqlen-sweep_${MODEL_SIZE_KEY}_$(echo "$SP_TYPE" | tr ' ' '-')_mp${MPSIZE}_pp${PPSIZE}_sp$(echo "$SPSIZE" | tr ' ' '-')_z${ZERO_STAGE}"
[ "$USE_ACTIVATION_CHECKPOINTING" = 0 ] || name="${name}_actCkpt$(echo "$USE_ACTIVATION_CHECKPOINTING" | tr -d ' ')"
[ "$SIMULATE" = 1 ] && name="${name}_simulated"
args=(--models "$MODEL_SIZE_KEY" --seq-lens "$SEQ_LENS" --micro-batches "$MICRO_BATCH" --gas "$GAS"
      --dp "$DPSIZE" --tp "$MPSIZE" --pp "$PPSIZE" --sp "$SPSIZE" --sp-type "$SP_TYPE" --zero "$ZERO_STAGE"
      --recompute "$recompute" --output-dir "$OUTPUT_ROOT/$name" --name sweep)
if [ "$SIMULATE" != 1 ] && [ -z "${BACKEND:-}" ]; then  # a GPU here: measure on it, as ALCF's runs do
  gpus=0
  if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then gpus=$(nvidia-smi -L | grep -c '^GPU' || true); fi
  BACKEND=$([ "$gpus" -gt 0 ] && echo cuda || echo cpu)
fi
if [ "${BACKEND:-cpu}" = cuda ] && [ "$SIMULATE" != 1 ]; then
  DTYPE=${DTYPE:-bf16}
  if [ -z "${DEVICE:-}" ]; then
    case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)" in
      *H200*) DEVICE=H200 ;; *H100*) DEVICE=H100-SXM ;; *A100*80GB*) DEVICE=A100-80GB ;; *A100*) DEVICE=A100-40GB ;;
      *) die "BACKEND=cuda: set DEVICE (A100-40GB, A100-80GB, H100-SXM or H200) for the MFU peak" ;;
    esac
  fi
  args+=(--backend cuda --device "$DEVICE")
fi
[ -n "${DTYPE:-}" ] && args+=(--dtype "$DTYPE")
[ -n "${VOCAB_SIZE:-}" ] && args+=(--vocab-size "$VOCAB_SIZE")
[ -n "${LOGITS_CHUNK_TOKENS:-}" ] && args+=(--logits-chunk-tokens "$LOGITS_CHUNK_TOKENS")
if [ "$SIMULATE" = 1 ]; then
  [ -n "${CLUSTER:-}" ] || die "SIMULATE=1 needs CLUSTER (a file in configs/clusters/)"
  args+=(--simulate --cluster "$CLUSTER")
else
  # (the CPU cluster file's predictions only next to CPU measurements)
  if [ -n "${CLUSTER:-}" ]; then args+=(--cluster "$CLUSTER")
  elif [ "${BACKEND:-cpu}" = cpu ]; then args+=(--cluster "$root/configs/clusters/cpu-2core.yaml"); fi
  args+=(--warmup "${WARMUP:-2}" --iters "${ITERS:-5}")
  [ -n "${THREADS:-}" ] && args+=(--threads "$THREADS")
  [ -n "${MEM_LIMIT_GIB:-}" ] && args+=(--mem-limit-gib "$MEM_LIMIT_GIB")
fi
echo "[seqlen-sweep] $bin ${args[*]}"
[ "${DRY_RUN:-0}" = 1 ] && exit 0
[ -x "$bin" ] || die "$bin not built (pipelines/build.sh)"
"$bin" "${args[@]}"
echo "[seqlen-sweep] table, CSV, JSON and plots: $OUTPUT_ROOT/$name/"
