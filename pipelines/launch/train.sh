#!/usr/bin/env bash
# Launch llm-pretrain the way ALCF's train-gpt3.sh launches Megatron-DeepSpeed: the settings
# come from environment variables, the layout and global batch are derived from them and from
# the allocation (PBS node file, Slurm, or this machine), and the right mpiexec line is built.
#
#   MODEL_SIZE_KEY=GPT125M SEQ_LEN=2048 MICRO_BATCH=1 GAS=8 DATA_PATH=data/kjv \
#     TOKENIZER_TYPE=SentencePieceTokenizer TOKENIZER_MODEL=kjv.model pipelines/launch/train.sh
#   DRY_RUN=1 ... pipelines/launch/train.sh        # print the layout and the command only
#
# Environment (defaults in brackets):
#   MODEL_SIZE_KEY [GPT125M]  a file in configs/models/     SEQ_LEN [2048]   MICRO_BATCH [1]
#   GAS [1] gradient accumulation steps                      TRAIN_ITERS [100]  LR [3e-4]
#   MPSIZE [1] tensor parallel   PPSIZE [1] pipeline parallel   SPSIZE [1] sequence parallel
#   SP_TYPE [megatron] megatron | ds (Ulysses): ds takes SPSIZE ranks of its own; Megatron's
#     shards over the tensor-parallel group (SPSIZE 1 or MPSIZE; USE_SEQUENCE_PARALLEL=1 as ALCF)
#   ZERO_STAGE [0]   USE_ACTIVATION_CHECKPOINTING [0]
#   USE_FLASH_ATTN [1] (the CPU attention is always flash-style)
#   DTYPE [bf16 on GPU nodes, else fp32] fp32 | bf16 | fp16 (--bf16 / --fp16 with dynamic loss scaling)
#   BACKEND [cuda on GPU nodes, else cpu]
#   DATA_PATH (required unless MOCK_DATA=1)  TOKENIZER_TYPE TOKENIZER_MODEL VOCAB_FILE MERGE_FILE
#   HOSTFILE [$PBS_NODEFILE, Slurm's nodes, or this host]   NGPU_PER_HOST [GPUs, else cores]: ranks
#     per host; DEVICE_KIND [GPU when nvidia-smi lists GPUs on this node, else rank/core]
#   OUTPUT_ROOT [outputs]   EXTRA_ARGS (appended to llm-pretrain)   DRY_RUN [0]
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
bin="${LLM_BIN:-${BUILD_DIR:-$root/build}/tools}/llm-pretrain"
die() { echo "train.sh: error: $*" >&2; exit 2; }

MODEL_SIZE_KEY=${MODEL_SIZE_KEY:-GPT125M}
SEQ_LEN=${SEQ_LEN:-2048}
MICRO_BATCH=${MICRO_BATCH:-1}
GAS=${GAS:-1}
TRAIN_ITERS=${TRAIN_ITERS:-100}
LR=${LR:-3e-4}
MPSIZE=${MPSIZE:-1}
PPSIZE=${PPSIZE:-1}
SPSIZE=${SPSIZE:-1}
SP_TYPE=${SP_TYPE:-megatron}
ZERO_STAGE=${ZERO_STAGE:-0}
USE_ACTIVATION_CHECKPOINTING=${USE_ACTIVATION_CHECKPOINTING:-0}
USE_FLASH_ATTN=${USE_FLASH_ATTN:-1}
DTYPE=${DTYPE:-}  # default chosen once the device is known
OUTPUT_ROOT=${OUTPUT_ROOT:-outputs}
DRY_RUN=${DRY_RUN:-0}
# The sizes are arithmetic below: a word or a 0 there is named here, not as bash's own error.
for v in SEQ_LEN MICRO_BATCH GAS TRAIN_ITERS MPSIZE PPSIZE SPSIZE; do
  [[ "${!v}" =~ ^[1-9][0-9]*$ ]] || die "$v must be a positive integer, got '${!v}'"
done
[[ "$ZERO_STAGE" =~ ^[0-3]$ ]] || die "ZERO_STAGE must be 0, 1, 2 or 3, got '$ZERO_STAGE'"

# ---- model ------------------------------------------------------------------------------------
model_file="$root/configs/models/$MODEL_SIZE_KEY.yaml"
[ -f "$model_file" ] || die "unknown MODEL_SIZE_KEY '$MODEL_SIZE_KEY' (known: $(cd "$root/configs/models" && ls *.yaml | sed 's/\.yaml//' | tr '\n' ' '))"
key() { sed -n "s/^$1: *//p" "$model_file" | head -1; }
NLAYERS=$(key num-layers)
HIDDEN=$(key hidden-size)
HEADS=$(key num-attention-heads)
case "$SP_TYPE" in megatron | ds) ;; *) die "SP_TYPE must be megatron or ds, got '$SP_TYPE'" ;; esac
# Megatron's sequence parallelism shards over the tensor-parallel group: no ranks of its own
# (USE_SEQUENCE_PARALLEL=1 is ALCF's switch for it); Ulysses (ds) takes SPSIZE ranks.
if [ "$SP_TYPE" = megatron ]; then
  [ "${USE_SEQUENCE_PARALLEL:-0}" = 1 ] && [ "$SPSIZE" = 1 ] && SPSIZE=$MPSIZE
  [ "$SPSIZE" = 1 ] || [ "$MPSIZE" -gt 1 ] ||
    die "SP_TYPE=megatron with SPSIZE $SPSIZE needs tensor parallelism (MPSIZE > 1; SP_TYPE=ds for Ulysses' own ranks)"
  [ "$SPSIZE" = 1 ] || [ "$SPSIZE" = "$MPSIZE" ] ||
    die "SP_TYPE=megatron shards the sequence over the tensor-parallel group: SPSIZE must be 1 or MPSIZE ($MPSIZE), got $SPSIZE (SP_TYPE=ds for Ulysses' own ranks)"
  SP_RANKS=1
else
  SP_RANKS=$SPSIZE
fi
case "$DTYPE" in '' | fp32 | bf16 | fp16) ;; *) die "DTYPE must be fp32, bf16 or fp16, got '$DTYPE'" ;; esac

# ---- allocation -------------------------------------------------------------------------------
hostfile=${HOSTFILE:-}
if [ -z "$hostfile" ] && [ -n "${PBS_NODEFILE:-}" ]; then
  hostfile=$PBS_NODEFILE
  scheduler=PBS
elif [ -z "$hostfile" ] && [ -n "${SLURM_JOB_NODELIST:-}" ]; then
  hostfile=$(mktemp)
  trap 'rm -f "$hostfile"' EXIT
  scontrol show hostnames "$SLURM_JOB_NODELIST" > "$hostfile"
  scheduler=Slurm
elif [ -n "$hostfile" ]; then
  scheduler="hostfile"
else
  scheduler="local"
fi
if [ -n "$hostfile" ]; then
  { [ -f "$hostfile" ] && [ -r "$hostfile" ]; } || die "cannot read host file '$hostfile'"
  # Open MPI's own parser stops at a carriage return (a file saved on Windows): said here.
  ! grep -q $'\r' "$hostfile" || die "host file '$hostfile' has Windows line endings (CR LF); convert it (dos2unix)"
  # The hosts: a line's first word (Open MPI's "host slots=N", MPICH's "host:N"), without
  # comments and blank lines, which both launchers skip, each host once (a PBS node file repeats
  # a host per MPI process).
  NHOSTS=$(sed 's/#.*//' "$hostfile" | awk 'NF { sub(/:.*/, "", $1); print $1 }' | sort -u | grep -c . || true)
  [ "$NHOSTS" -gt 0 ] || die "host file '$hostfile' lists no host"
else
  NHOSTS=1
fi
# GPUs on this node (nvidia-smi; the batch script runs on the first compute node).
node_gpus=0
if command -v nvidia-smi > /dev/null && nvidia-smi -L > /dev/null 2>&1; then
  node_gpus=$(nvidia-smi -L | grep -c '^GPU' || true)
fi
if [ -z "${NGPU_PER_HOST:-}" ]; then
  if [ "$node_gpus" -gt 0 ]; then
    NGPU_PER_HOST=$node_gpus
    device=${DEVICE_KIND:-GPU}
  else
    # (GNU nproc answers OMP_NUM_THREADS when it is set, as the mpirun lines here ask for: the
    # cores this process may use, whatever the OpenMP settings)
    NGPU_PER_HOST=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
    device=${DEVICE_KIND:-core}
  fi
else  # a count given (ALCF's helpers export NGPU_PER_HOST): GPUs when the node has them
  device=${DEVICE_KIND:-$([ "$node_gpus" -gt 0 ] && echo GPU || echo rank)}
fi
if [ "$device" != GPU ] && [ "$scheduler" != local ] && [ -z "${BACKEND:-}" ]; then
  echo "[train.sh] warning: no GPU seen on this node ($(hostname -s)): the ranks run the CPU backend;" \
    "on a node without nvidia-smi set DEVICE_KIND=GPU (or BACKEND=cuda) and NGPU_PER_HOST" >&2
fi
NGPUS=$((NHOSTS * NGPU_PER_HOST))

# ---- layout (the ALCF derivation) -------------------------------------------------------------
[ $((NGPUS % (MPSIZE * PPSIZE * SP_RANKS))) -eq 0 ] ||
  die "$NGPUS ranks are not divisible by MPSIZE $MPSIZE x PPSIZE $PPSIZE$([ "$SP_TYPE" = ds ] && echo " x SPSIZE $SPSIZE")"
[ $((HEADS % MPSIZE)) -eq 0 ] || die "$MODEL_SIZE_KEY has $HEADS heads, not divisible by MPSIZE $MPSIZE"
[ $((NLAYERS % PPSIZE)) -eq 0 ] || die "$MODEL_SIZE_KEY has $NLAYERS layers, not divisible by PPSIZE $PPSIZE"
[ $((SEQ_LEN % SPSIZE)) -eq 0 ] || die "SEQ_LEN $SEQ_LEN is not divisible by SPSIZE $SPSIZE"
DPSIZE=$((NGPUS / (MPSIZE * PPSIZE * SP_RANKS)))
GLOBAL_BATCH=$((MICRO_BATCH * GAS * DPSIZE))
act=""
[ "$USE_ACTIVATION_CHECKPOINTING" = 1 ] && act="_actCkpt"
RUN_NAME="gpt_${SP_TYPE}${act}_${MODEL_SIZE_KEY}_z${ZERO_STAGE}_seqlen${SEQ_LEN}_mp${MPSIZE}_pp${PPSIZE}_sp${SPSIZE}_nl${NLAYERS}_hs${HIDDEN}_gb${GLOBAL_BATCH}_mb${MICRO_BATCH}"

# ---- llm-pretrain arguments -------------------------------------------------------------------
run_dir="$OUTPUT_ROOT/$RUN_NAME"
args=(--model "$MODEL_SIZE_KEY" --seq-length "$SEQ_LEN" --micro-batch-size "$MICRO_BATCH"
      --global-batch-size "$GLOBAL_BATCH" --train-iters "$TRAIN_ITERS" --lr "$LR"
      --tensor-model-parallel-size "$MPSIZE" --pipeline-model-parallel-size "$PPSIZE" --zero-stage "$ZERO_STAGE"
      --output-dir "$run_dir" --log-interval "${LOG_INTERVAL:-1}" --timing-log-level "${TIMING_LOG_LEVEL:-1}")
if [ "$SPSIZE" -gt 1 ]; then
  if [ "$SP_TYPE" = ds ]; then args+=(--ds-sequence-parallel-size "$SPSIZE"); else args+=(--sequence-parallel); fi
fi
[ "$USE_ACTIVATION_CHECKPOINTING" = 1 ] && args+=(--recompute-granularity full)
[ "$USE_FLASH_ATTN" = 1 ] && args+=(--use-flash-attn-v2)  # as ALCF's script; ours is always flash-style
# One GPU per rank when the node has GPUs (BACKEND overrides: cpu | cuda); bf16 there, as ALCF's
# runs (the CPU backend only emulates bf16/fp16: fp32 is its fast path).
BACKEND=${BACKEND:-$([ "$device" = GPU ] && echo cuda || echo cpu)}
args+=(--backend "$BACKEND")
DTYPE=${DTYPE:-$([ "$BACKEND" = cuda ] && echo bf16 || echo fp32)}
[ "$DTYPE" = fp32 ] || args+=(--"$DTYPE")
if [ "${MOCK_DATA:-0}" = 1 ]; then
  args+=(--mock-data --vocab-size "${VOCAB_SIZE:-50257}")
else
  [ -n "${DATA_PATH:-}" ] || die "DATA_PATH is not set (a dataset from llm-tokenize, or MOCK_DATA=1)"
  # shellcheck disable=SC2206
  args+=(--data-path $DATA_PATH)
fi
[ -n "${TOKENIZER_TYPE:-}" ] && args+=(--tokenizer-type "$TOKENIZER_TYPE")
[ -n "${TOKENIZER_MODEL:-}" ] && args+=(--tokenizer-model "$TOKENIZER_MODEL")
[ -n "${VOCAB_FILE:-}" ] && args+=(--vocab-file "$VOCAB_FILE")
[ -n "${MERGE_FILE:-}" ] && args+=(--merge-file "$MERGE_FILE")
[ -n "${SAVE:-}" ] && args+=(--save "$SAVE")
[ -n "${LOAD:-}" ] && args+=(--load "$LOAD")
# shellcheck disable=SC2206
[ -n "${EXTRA_ARGS:-}" ] && args+=($EXTRA_ARGS)

# ---- mpiexec line ----------------------------------------------------------------------------
threads=1
[ "$device" = core ] || threads=${OMP_NUM_THREADS:-1}
export OMP_NUM_THREADS=$threads
if mpiexec --version 2>&1 | grep -qiE "open ?mpi|openrte|open-mpi"; then
  # --bind-to none: with --map-by ppr Open MPI would pin each rank to one core, where its OpenMP
  # threads (and on GPU nodes its CUDA and NCCL threads) would share it
  launcher=(mpiexec -n "$NGPUS" --map-by "ppr:$NGPU_PER_HOST:node" --bind-to none -x OMP_NUM_THREADS)
  # Remote ranks started over ssh see only what -x names: the paths (CUDA, NCCL and its network
  # plugin) and the NCCL / libfabric / CUDA / libllm settings of this shell.
  # (only those set: Open MPI warns about an -x variable it cannot find)
  for v in PATH LD_LIBRARY_PATH $(compgen -e | grep -E '^(NCCL|FI|UCX|CUDA|LLM)_' || true); do
    [ -z "${!v+set}" ] || launcher+=(-x "$v")
  done
  [ -n "$hostfile" ] && launcher+=(--hostfile "$hostfile")
  [ "$(id -u)" = 0 ] && launcher+=(--allow-run-as-root)
  [ "$scheduler" = local ] && launcher+=(--oversubscribe)
else  # MPICH / Cray PALS (Polaris): --envall carries the environment, OMP_NUM_THREADS included
  launcher=(mpiexec -n "$NGPUS" -ppn "$NGPU_PER_HOST" --envall)
  [ -n "$hostfile" ] && launcher+=(--hostfile "$hostfile")
fi
cmd=("${launcher[@]}" "$bin" "${args[@]}")

echo "[train.sh] scheduler $scheduler: $NHOSTS host(s) x $NGPU_PER_HOST ${device}(s) = $NGPUS ranks"
echo "[train.sh] layout: dp $DPSIZE x tp $MPSIZE x pp $PPSIZE x sp $SPSIZE ($SP_TYPE$([ "$SP_TYPE" = megatron ] && [ "$SPSIZE" -gt 1 ] && echo ", over the tp group")); global batch $GLOBAL_BATCH = micro $MICRO_BATCH x gas $GAS x dp $DPSIZE"
echo "[train.sh] run: $RUN_NAME"
echo "[train.sh] command: ${cmd[*]}"
[ "$DRY_RUN" = 1 ] && exit 0

[ -x "$bin" ] || die "$bin not built (pipelines/build.sh)"
mkdir -p "$run_dir/logs"
log="$run_dir/logs/$(id -un)-$(hostname -s)-nhosts${NHOSTS}-ngpu${NGPUS}-$(date +%Y-%m-%d-%H%M%S).log"
echo "$log" >> logfiles
echo "[train.sh] log: $log (tail -f \$(tail -1 logfiles))"
"${cmd[@]}" 2>&1 | tee "$log"
exit "${PIPESTATUS[0]}"
