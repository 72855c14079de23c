#!/usr/bin/env bash
# One-shot GPU validation (docs/gpu-validation.md): configure and build with CUDA, run the test
# suite on the device (the conformance suite then runs every op on the CUDA backend), the GPU
# tests by name, and the GPU benchmarks; everything goes to a report directory.
# Usage: tests/cuda/gpu_validation.sh [REPORT_DIR] [BUILD_DIR]
#   CUDA_ARCH=90 (default: 90; 80 on A100), JOBS=16, QUICK=1 (skip the llm-sweep run),
#   TIME_SCALE=1 (each step runs under `timeout`, its limit below times this; exit 124 = timed out,
#   so one hung or slow step cannot eat a short lease; TEST_LIMIT=200 s the concurrent correctness
#   steps', TEST_THREADS=2 their OpenMP threads each), PEAK_DEVICE (MFU peak; from nvidia-smi),
#   ATTENTION_VARIANTS="tc wgmma wgmma-pp wgmma-ws wgmma-ws-pp wgmma-ws3 wgmma-atomic wgmma-rs wgmma-ws-atomic wgmma-ws-dqfirst wgmma-ws-tma tc-atomic tc-m32" (LLM_CUDA_ATTENTION values whose attention tests and
#   benchmark and training step also run, next to the default kernels), TRAIN_STEP_VARIANTS (the
#   choices the training step runs under beside the default; all of ATTENTION_VARIANTS unless
#   set, "" for none), TEST_VARIANTS (choices whose attention tests run, without benchmarks),
#   BIAS_GRAD_EPILOGUE=1 (the
#   linear tests and the training step also under LLM_CUDA_BIAS_GRAD=epilogue; 0 skips them),
#   BENCHES="gemm attention torch train-step longseq sweep" (which benchmarks run; QUICK=1 drops
#   the sweep; "profile" adds Nsight Compute on the attention kernels of
#   PROFILE_ATTENTION="wgmma tc-m32" at head dim PROFILE_HEAD_DIM=128, seq 4096, when ncu is there;
#   "sass" the warp-specialised kernels' SASS (cuobjdump on DEVICE_CODE, found in the build if
#   unset; SASS_KERNELS) and ncu's per-instruction stall samples under SASS_ATTENTION="auto" of
#   SASS_NCU_KERNEL, the ws backward), ATTENTION_BENCH_ARGS (the attention
#   benchmarks' flags, ours for every kernel choice and PyTorch's, e.g. "--head-dims 48,80,96
#   --seqs 4096,16384"), TESTS=0 (skip the correctness steps: a rerun of benchmarks on a bundle
#   already validated), SWEEP_MODELS="GPT1_3B:50304 GPT1_5B:0" (model:vocab, 0 the mock default),
#   SWEEP_MBS=1,2,4,8,16 (the sweep's micro-batches), ENV_VARIANTS (empty by default; e.g.
#   "LLM_CUDA_BLOCK_ORDER=launch": environment assignments the attention benchmark and the
#   training step also run under, one at a time: an A/B of a switch; an entry may set several,
#   joined by commas, e.g.
#   LLM_CUDA_ATTENTION=wgmma-ws-dqfirst,LLM_CUDA_DQ_RED=v4; their files are named without LLM_CUDA_,
#   e.g. bench_attention_block-order-launch.txt; the attention tests run under each first, and a
#   switch whose tests fail is not benchmarked), MULTIRANK=1 (the multi-rank step when an mpirun is
#   found: NCCL on 2 and 4 ranks and llm-pretrain under MULTIRANK_LAYOUTS, "name ranks flags;..."
#   against the single process, within MULTIRANK_BUDGET=300 s, each run within MULTIRANK_LIMIT=90 s,
#   both times TIME_SCALE; ranks share the GPUs when there are fewer; MULTIRANK_BACKEND=cpu runs
#   the layouts on the CPU, for the smoke test; TESTS=multirank runs that step alone),
#   SM80_TREE (a build tree of the A100's kernels: the sm_80 source compiled for this card,
#   CMAKE_CUDA_FLAGS=-gencode=arch=compute_80,code=sm_90, no sm_90a; built beside BUILD_DIR as
#   BUILD_DIR-sm80 unless SKIP_BUILD=1 or SM80=0, carried by gpu_carry.sh: the CUDA tests and the
#   training check run on it under LLM_CUDA_SMEM_LIMIT=sm80, the A100's shared memory;
#   TESTS=sm80 runs that step alone, TESTS="sm80 multirank" both)
set -uo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
out="${1:-$src/gpu-report}"
build="${2:-$src/build-gpu}"
mkdir -p "$out"
log() { echo "== $*" | tee -a "$out/summary.txt"; }
env_name() { echo "$1" | sed 's/LLM_CUDA_//g; s/[^A-Za-z0-9]\+/-/g' | tr 'A-Z' 'a-z'; }  # ENV_VARIANTS' file names
env_export() { local kv; IFS=, read -ra kv <<< "$1"; export "${kv[@]}"; }  # one ENV_VARIANTS entry: A=1,B=2
scaled() { awk -v s="$1" -v k="${TIME_SCALE:-1}" 'BEGIN {printf "%d", s * k}'; }  # SECONDS times TIME_SCALE
lim() { timeout -k 5 "$(scaled "$1")" "${@:2}"; }  # lim SECONDS cmd...
tlim() { lim "${TEST_LIMIT:-200}" "$@"; }  # a correctness step (they run concurrently: 30-odd processes share the card)
losses() { cat "$@" 2> /dev/null | grep -o '"lm_loss": [^,]*' | cut -d' ' -f2; }  # metrics files' loss curve, in order
# curve_within N TOL REF RUN...: RUN's loss curve (its metrics files in order) has N iterations,
# each within TOL (relative) of REF's, which has N too; a loss that is not a number (null, nan)
# fails, and so does any exit status in CURVE_RC (the runs' statuses, space-separated) but 0.
curve_within() {
  local r rc_bad=0
  for r in ${CURVE_RC:-0}; do [[ $r = 0 ]] || rc_bad=1; done
  paste <(losses "$3") <(losses "${@:4}") | awk -F '\t' -v want="$1" -v tol="$2" -v rc_bad=$rc_bad '
    function num(x) { return x ~ /^-?[0-9]+(\.[0-9]*)?([eE][-+]?[0-9]+)?$/ }
    {if ($1 != "") nr++; if ($2 != "") n++}
    $1 == "" || $2 == "" {uneven = 1; next}
    {if (!num($1) || !num($2) || $1 == 0) bad = 1; else {d = $1 - $2; if (d < 0) d = -d; if (d / $1 > w) w = d / $1}}
    END {printf "%d iterations%s, worst rel diff %.2e%s%s %s", n, nr == want ? "" : " (the reference has " nr + 0 ")", w,
                bad ? ", a loss not a number" : "", rc_bad ? ", an exit status not 0" : "",
                (n == want && nr == want && !uneven && !bad && !rc_bad && w < tol) ? "OK" : "FAIL"}'
}
: > "$out/summary.txt"
# A rerun into the same folder must not meet the last run's results: metrics.jsonl files append,
# and an exit-status file or a checkpoint left behind would stand for a step that did not run.
rm -rf "$out"/rc_* "$out"/mr_* "$out"/pt_*
# On a GPU machine a CUDA test without a device fails instead of reporting itself skipped (a
# device that did not come up must not pass as a run of skips); the smoke test sets 0.
export LLM_REQUIRE_CUDA=${LLM_REQUIRE_CUDA:-1}
log "commit ${COMMIT:-$(git -C "$src" rev-parse --short HEAD 2>/dev/null || echo '?')} $(date -u +%FT%TZ)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$out/summary.txt"

if [[ "${SKIP_BUILD:-0}" = 1 ]]; then  # a carried bundle (tests/cuda/gpu_carry.sh run)
  log "SKIP_BUILD=1: executables from $build"
else
  log "configure + build (CMAKE_CUDA_ARCHITECTURES=${CUDA_ARCH:-90})"
  cmake -S "$src" -B "$build" -DCMAKE_BUILD_TYPE=Release -DCMAKE_CUDA_ARCHITECTURES="${CUDA_ARCH:-90}" > "$out/configure.log" 2>&1 &&
    cmake --build "$build" -j "${JOBS:-16}" > "$out/build.log" 2>&1
  log "build exit $? (configure.log, build.log)"
  grep -E "libllm:" "$out/configure.log" | tee -a "$out/summary.txt"
  if [[ "${SM80:-1}" = 1 && -z "${SM80_TREE:-}" ]]; then
    "$src/tests/cuda/sm80_configure.sh" "$src" "$build-sm80" > "$out/configure_sm80.log" 2>&1 &&
      cmake --build "$build-sm80" -j "${JOBS:-16}" --target test_backend test_cuda > "$out/build_sm80.log" 2>&1
    rc=$?
    log "sm_80 build (compute_80 for this card) exit $rc (build_sm80.log)"
    [[ $rc = 0 ]] && SM80_TREE="$build-sm80"
  fi
fi

# The kernel choices beside the default, for the attention tests and the benchmarks (also with TESTS=0).
variants=(${ATTENTION_VARIANTS-tc wgmma wgmma-pp wgmma-ws wgmma-ws-pp wgmma-ws3 wgmma-atomic wgmma-rs wgmma-ws-atomic wgmma-ws-dqfirst wgmma-ws-tma tc-atomic tc-m32})
env_variants=(${ENV_VARIANTS:-})  # A/B switches benchmarked (less those whose attention tests fail)
tested=(${TEST_VARIANTS:-})  # choices whose attention tests run, not benchmarked
# Several ranks (MULTIRANK=1, when an mpirun is found: the system's, or the carried bundle's): the
# NCCL communicator check on 2 and 4 ranks (and on every GPU), then llm-pretrain --backend cuda
# under each layout of MULTIRANK_LAYOUTS ("name ranks flags..."; --bf16 or --fp16 in the flags
# compares with the single process in that precision) against the single process on the same card, one run at a time,
# and a checkpoint saved under DP 2 x TP 2 (ZeRO-1) resumed on one process. With fewer GPUs than
# ranks the ranks share them: LLM_NCCL_SHARED_GPU=1 makes each its own NCCL host, connected over
# loopback sockets (slow, but every collective, group and stream of ours runs as on a cluster).
multirank_step() {
  gpus=$(nvidia-smi -L 2> /dev/null | wc -l)
  if [[ "${MULTIRANK:-1}" = 1 ]] && command -v mpirun > /dev/null; then
    # Every process of the step carries LLM_MULTIRANK_STEP=<token>, so that what a killed mpirun
    # leaves behind (ranks spinning in NCCL on the card) is found and killed before the benchmarks.
    mr_token="llm-mr-$$-$RANDOM"
    mr_reap() {
      local n
      n=$("$src/tests/cuda/kill_tagged.sh" "^LLM_MULTIRANK_STEP=$mr_token\$")
      [[ $n = 0 ]] || log "multi-rank: killed $n processes left behind by a timed-out run"
    }
    mpi_ranks() {  # ranks cmd...: cmd under mpirun, sharing GPUs when there are fewer than ranks
      local np=$1
      shift
      (export LLM_MULTIRANK_STEP="$mr_token" OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 \
         OMPI_MCA_btl_vader_single_copy_mechanism=none OMPI_MCA_hwloc_base_binding_policy=none OMP_NUM_THREADS=1 \
         OMPI_MCA_btl_tcp_if_include=lo OMPI_MCA_oob_tcp_if_include=lo NCCL_DEBUG="${NCCL_DEBUG:-WARN}"
       # (one node: MPI over shared memory, or TCP on loopback where a container's /dev/shm fails it)
       if [[ "$gpus" -lt "$np" ]]; then export LLM_NCCL_SHARED_GPU=1 NCCL_SOCKET_IFNAME=lo NCCL_IB_DISABLE=1 NCCL_NET=Socket; fi
       mr_lim mpirun -np "$np" "$@")
    }
    # mr_lim cmd...: under MULTIRANK_LIMIT seconds (times TIME_SCALE), cut to what is left of the
    # step's budget, so that one run cannot carry the step past it (exit 124 then ends the step).
    mr_lim() {
      local s t
      s=$(scaled "${MULTIRANK_LIMIT:-90}")
      t=$((mr_deadline - SECONDS))
      ((t < s)) && s=$t
      ((s < 1)) && s=1
      timeout -k 5 "$s" "$@"
    }
    log "multi-rank (budget ${MULTIRANK_BUDGET:-300} s x TIME_SCALE): $(mpirun --version 2>&1 | head -1) from $(command -v mpirun), $gpus GPU(s)$([[ "$gpus" -lt 4 ]] && echo "; ranks beyond them share a GPU (LLM_NCCL_SHARED_GPU=1)")"
    # The whole step within MULTIRANK_BUDGET seconds (times TIME_SCALE): what is left when it runs
    # out is listed as not run, and a run that times out ends the step (the rest would too).
    mr_deadline=$((SECONDS + $(scaled "${MULTIRANK_BUDGET:-300}")))
    mr_stop=""
    nccl_ok=0
    for np in $(printf '%s\n' 2 4 "$gpus" | awk '$1 >= 2 && !seen[$1]++'); do
      [[ -z "$mr_stop" && $((mr_deadline - SECONDS)) -lt 10 ]] && mr_stop="MULTIRANK_BUDGET spent"
      if [[ -n "$mr_stop" ]]; then log "NCCL communicator, $np ranks: not run ($mr_stop)"; continue; fi
      (cd "$build" && mpi_ranks "$np" ./tests/nccl-communicator-check > "$out/nccl_np$np.log" 2>&1)
      rc=$?
      mr_reap
      [[ $rc = 0 ]] && nccl_ok=1
      [[ $rc = 124 || $rc = 137 ]] && mr_stop="the $np-rank check timed out"
      log "NCCL communicator, $np ranks, exit $rc: $(grep -E 'NCCL communicator|FAILED|skipped|rror' "$out/nccl_np$np.log" | head -3 | tr '\n' ' ')"
    done
    # The collective timeout: rank 1 never joins an all-reduce (after one all-reduce both joined,
    # then the first of all, whose call may itself wait for the connection); the watchdog must end
    # rank 0 with the operation named (3 s timeout, checked every 200 ms), long before rank 1's 20 s.
    for tmode in timeout-check timeout-check-first timeout-check-init timeout-check-host; do
      if [[ $nccl_ok != 1 ]]; then log "NCCL timeout, --$tmode: not run (no NCCL check passed)"; continue; fi
      [[ -z "$mr_stop" && $((mr_deadline - SECONDS)) -lt 10 ]] && mr_stop="MULTIRANK_BUDGET spent"
      if [[ -n "$mr_stop" ]]; then log "NCCL timeout, --$tmode: not run ($mr_stop)"; continue; fi
      t0=$SECONDS
      (cd "$build" && LLM_NCCL_WATCHDOG_MS=200 mpi_ranks 2 ./tests/nccl-communicator-check "--$tmode" > "$out/nccl_$tmode.log" 2>&1)
      rc=$?
      mr_reap
      took=$((SECONDS - t0))
      [[ $rc = 124 || $rc = 137 ]] && mr_stop="the --$tmode run timed out"
      want='all_reduce_sum of 4194304 bytes queued .* has not finished'
      [[ $tmode = timeout-check-first ]] && want='all_reduce_sum of 4194304 bytes (queued .* has not finished|called .* has not returned)'
      [[ $tmode = timeout-check-init ]] && want='setting up the NCCL communicator of every rank .*: not finished .* after it began'
      [[ $tmode = timeout-check-host ]] && want='an all-reduce \(sum\) of a scalar over MPI .*: not finished .* after it began'
      verdict=FAIL
      if [[ $rc != 0 && $rc != 124 && $rc != 137 && $took -lt 15 ]] && ! grep -q FAILED "$out/nccl_$tmode.log" &&
         grep -qE "$want" "$out/nccl_$tmode.log"; then verdict=OK; fi
      what="never joins an all-reduce"
      [[ $tmode = timeout-check-init ]] && what="never sets up the communicator"
      [[ $tmode = timeout-check-host ]] && what="never joins a scalar all-reduce over MPI"
      log "NCCL timeout, --$tmode (rank 1 $what, 3 s): exit $rc after $took s, $verdict: $(grep -m1 -E 'has not (finished|returned)|not finished|FAILED' "$out/nccl_$tmode.log" | cut -c1-240)"
    done
    mr_backend=${MULTIRANK_BACKEND:-cuda}  # cpu: the same layouts on the CPU (the smoke test's plumbing check)
    if [[ $nccl_ok = 1 || $mr_backend = cpu ]]; then
      mr=(--mock-data --vocab-size 512 --make-vocab-size-divisible-by 16 --num-layers 4 --hidden-size 256
          --num-attention-heads 4 --seq-length 128 --micro-batch-size 2 --global-batch-size 8 --lr 1e-3 --seed 3
          --train-iters 8 --log-interval 1 --backend "$mr_backend")
      single() {  # the single process of a precision (fp32, bf16, fp16), once
        [[ -f "$out/rc_mr_one_$1" ]] && return
        mr_lim "$build/tools/llm-pretrain" "${mr[@]}" $([[ $1 != fp32 ]] && echo "--$1") --output-dir "$out/mr_one_$1" > "$out/mr_one_$1.log" 2>&1
        echo $? > "$out/rc_mr_one_$1"
      }
      layouts=()
      if [[ -n "${MULTIRANK_LAYOUTS:-}" ]]; then
        while IFS= read -r l; do [[ -n "$l" ]] && layouts+=("$l"); done <<< "$(tr ';' '\n' <<< "$MULTIRANK_LAYOUTS")"
      else
        # Most distinct first, so a short budget still covers each kind of group.
        layouts=("tp2sp 2 --tensor-model-parallel-size 2 --sequence-parallel --recompute-granularity full"
                 "ulysses2 2 --ds-sequence-parallel-size 2"
                 "pp2 2 --pipeline-model-parallel-size 2"
                 "z3 2 --zero-stage 3"
                 "z2ov 2 --zero-stage 2 --overlap-grad-reduce"
                 "z3ov-bf16 2 --zero-stage 3 --bf16 --overlap-grad-reduce --overlap-param-gather"
                 "z1ov-bf16 2 --zero-stage 1 --bf16 --overlap-grad-reduce --overlap-param-gather"
                 "dp2tp2ck 4 --tensor-model-parallel-size 2 --zero-stage 1 --exit-interval 4 --save $out/mr_ck"
                 "tp2sp-bf16lc 2 --tensor-model-parallel-size 2 --sequence-parallel --bf16 --logits-chunk-tokens 96"
                 "dp2tp2-fp16 4 --tensor-model-parallel-size 2 --fp16"
                 "dp2ov 2 --overlap-grad-reduce --ddp-bucket-size 1"
                 "z2 2 --zero-stage 2"
                 "pp2tp2sp 4 --pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 --sequence-parallel"
                 "tp2ulysses2 4 --tensor-model-parallel-size 2 --ds-sequence-parallel-size 2"
                 "tp2lc 2 --tensor-model-parallel-size 2 --logits-chunk-tokens 96"
                 "dp2z1 2 --zero-stage 1"
                 "dp2tp2ov 4 --tensor-model-parallel-size 2 --overlap-grad-reduce --ddp-bucket-size 1"
                 "z3tp2ov 4 --zero-stage 3 --tensor-model-parallel-size 2 --sequence-parallel --overlap-grad-reduce --overlap-param-gather"
                 "z2pp2ov 4 --zero-stage 2 --pipeline-model-parallel-size 2 --overlap-grad-reduce --overlap-param-gather"
                 "z1tp2ov-bf16 4 --zero-stage 1 --tensor-model-parallel-size 2 --bf16 --overlap-grad-reduce --overlap-param-gather")
        # Eight ranks only where each gets a GPU (eight contexts time-slicing one card would take long).
        [[ "$gpus" -ge 8 ]] && layouts+=("dp2tp2pp2 8 --pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 --zero-stage 1")
      fi
      for l in "${layouts[@]}"; do
        read -r name np flags <<< "$l"
        [[ -z "$mr_stop" && $((mr_deadline - SECONDS)) -lt 10 ]] && mr_stop="MULTIRANK_BUDGET spent"
        if [[ -n "$mr_stop" ]]; then log "multi-rank $name ($np ranks): not run ($mr_stop)"; continue; fi
        prec=fp32 tol=1e-4
        [[ " $flags " = *" --bf16 "* ]] && prec=bf16 tol=8e-3
        [[ " $flags " = *" --fp16 "* ]] && prec=fp16 tol=1e-3
        single $prec
        mpi_ranks "$np" "$build/tools/llm-pretrain" "${mr[@]}" $flags --output-dir "$out/mr_$name" > "$out/mr_$name.log" 2>&1
        rc=$?
        mr_reap
        mismatch=$(grep -c MISMATCH "$out/mr_$name.log")
        # ZeRO-1/2 in bf16/fp16 keep only their range of the f32 masters: say so where it was done
        sharded=""
        grep -q 'f32 master weights sharded' "$out/mr_$name.log" && sharded=", f32 masters sharded"
        [[ $rc = 124 || $rc = 137 ]] && mr_stop="$name timed out"
        ck=$(awk '{for (i = 1; i < NF; i++) if ($i == "--save") print $(i + 1)}' <<< "$flags")
        rc_one=$(cat "$out/rc_mr_one_$prec")
        if [[ -n "$ck" ]]; then  # saved part-way (--exit-interval): the rest on one process from its checkpoint
          mr_lim "$build/tools/llm-pretrain" "${mr[@]}" $([[ $prec != fp32 ]] && echo "--$prec") --load "$ck" \
            --output-dir "$out/mr_${name}_resumed" > "$out/mr_${name}_resumed.log" 2>&1
          rc_res=$?
          # Without a checkpoint the single process would start from scratch, on the same curve:
          # only a resumed run counts.
          resumed=1
          grep -q 'continuing after iteration 4' "$out/mr_${name}_resumed.log" || resumed=0
          log "multi-rank $name ($np ranks$sharded) exit $rc, then resumed on 1 process exit $rc_res: $(CURVE_RC="$rc $rc_res $rc_one $((1 - resumed))" curve_within 8 $tol "$out/mr_one_$prec/metrics.jsonl" "$out/mr_$name/metrics.jsonl" "$out/mr_${name}_resumed/metrics.jsonl")$( ((resumed)) || echo " (not resumed from the checkpoint)")$( ((mismatch)) && echo " communication MISMATCH")"
        else
          log "multi-rank $name ($np ranks$sharded) exit $rc (single $prec exit $rc_one): $(CURVE_RC="$rc $rc_one" curve_within 8 $tol "$out/mr_one_$prec/metrics.jsonl" "$out/mr_$name/metrics.jsonl")$( ((mismatch)) && echo " communication MISMATCH")"
        fi
        [[ $rc = 0 ]] || grep -E 'rror|FAIL' "$out/mr_$name.log" | head -3 | sed 's/^/   /' | tee -a "$out/summary.txt"
      done
    else
      log "multi-rank layouts: not run (no NCCL communicator check passed)"
    fi
  elif [[ "${MULTIRANK:-1}" = 1 ]]; then
    log "multi-rank: not run (no mpirun on PATH)"
  fi
}

# The A100's kernel set on this card (SM80_TREE): the sm_80 source (no wgmma kernels: auto picks
# tc, and tc-m32 for the hd-128 forward) compiled for sm_90, every shared-memory opt-in under the
# A100's 166912 bytes (LLM_CUDA_SMEM_LIMIT=sm80: a launch over it is refused). What an A100 itself
# would add is its own SASS and timing. sm80_start starts the CUDA tests and the training check in
# the background; sm80_report (after a wait) logs them.
sm80_start() {
  [[ -n "${SM80_TREE:-}" ]] || return 0
  # (the mma.sync fused backward, not yet run on a GPU, in a process of its own, as on sm_90)
  (cd "$SM80_TREE" && LLM_CUDA_SMEM_LIMIT=sm80 tlim ./tests/test_backend --gtest_filter='*cuda*:*Cuda*:-*TcFused*' > "$out/sm80_test_backend.log" 2>&1
   echo $? > "$out/rc_sm80_test_backend") &
  (cd "$SM80_TREE" && LLM_CUDA_SMEM_LIMIT=sm80 tlim ./tests/test_backend --gtest_filter='*TcFused*' > "$out/sm80_tc_fused.log" 2>&1
   echo $? > "$out/rc_sm80_tc_fused") &
  (cd "$SM80_TREE" && LLM_CUDA_SMEM_LIMIT=sm80 tlim ./tests/test_cuda > "$out/sm80_test_cuda.log" 2>&1; echo $? > "$out/rc_sm80_test_cuda") &
}
sm80_report() {
  if [[ -z "${SM80_TREE:-}" ]]; then
    log "sm_80 kernels under the A100's shared memory: not run (no SM80_TREE)"
    return 0
  fi
  # The tests ran on the device (CudaBackend.Available passed), and the wgmma tests skipped for
  # want of the sm_90a kernels: the tree is the sm_80 build.
  local skipped ok=0
  skipped=$(grep -c "built without the sm_90a kernels" "$out/sm80_test_backend.log")
  [[ "$(cat "$out/rc_sm80_test_backend")" = 0 && $skipped -gt 0 ]] &&
    grep -q '^\[       OK \] CudaBackend.Available ' "$out/sm80_test_backend.log" && ok=1
  log "sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: test_backend (cuda) exit $(cat "$out/rc_sm80_test_backend"): $(grep -E '^\[  (PASSED|FAILED) |^\[  SKIPPED \] [0-9]+ tests' "$out/sm80_test_backend.log" | tr '\n' ' ')wgmma tests skipped as not built: $skipped $([[ $ok = 1 ]] && echo OK || echo FAIL)"
  [[ "$(cat "$out/rc_sm80_test_backend")" = 0 ]] ||
    log "sm_80 failed: $(grep -E '^\[  FAILED  \] [A-Za-z]|shared memory per block' "$out/sm80_test_backend.log" | sed 's/^\[  FAILED  \] //; s/ (.*//' | sort -u | head -8 | tr '\n' ' ')"
  log "sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: tc_fused (tc-atomic's 8- and 4-warp backward) exit $(cat "$out/rc_sm80_tc_fused"): $(grep -E '^\[ +(OK|FAILED|SKIPPED) +\]|Failure' "$out/sm80_tc_fused.log" | head -5 | tr '\n' ' ')"
  log "sm_80 build, LLM_CUDA_SMEM_LIMIT=sm80: test_cuda exit $(cat "$out/rc_sm80_test_cuda"): $(grep -E '^\[  (PASSED|FAILED) |^\[  SKIPPED \] [0-9]+ tests' "$out/sm80_test_cuda.log" | tr '\n' ' ')"
}

# TESTS as a list of the steps that may run alone (multirank, sm80).
named_steps() {
  local w
  [[ -n "${TESTS:-}" ]] || return 1
  for w in $TESTS; do [[ $w = multirank || $w = sm80 ]] || return 1; done
}

if [[ "${TESTS:-1}" = 0 ]]; then
  log "TESTS=0: correctness steps skipped"
elif named_steps; then  # a second short call: the named steps alone
  log "TESTS=\"${TESTS}\": the named steps alone"
  if [[ " $TESTS " = *" sm80 "* ]]; then
    sm80_start
    wait
    sm80_report
  fi
  [[ " $TESTS " = *" multirank "* ]] && multirank_step
else
log "GPU unit tests (conformance on cuda, bf16/f16 paths, training check) and llm-pretrain curves, concurrently"
# Thirty-odd processes share the host's cores here: each runs its CPU references on TEST_THREADS
# (2) OpenMP threads, OpenBLAS included (its OpenMP flavour), instead of one per core each, whose
# spinning workers would multiply (libgomp spins at barriers when a process has no more threads
# than cores). Restored after the step, for the benchmarks.
threads_before=$(declare -p OMP_NUM_THREADS 2> /dev/null)
export OMP_NUM_THREADS=${TEST_THREADS:-2}
# The correctness checks are independent and small next to the card: they share it (and the host's
# cores) at once, so a short lease reaches the benchmarks, which then run alone.
pa=(--mock-data --vocab-size 512 --num-layers 2 --hidden-size 128 --num-attention-heads 4 --seq-length 128
    --micro-batch-size 4 --global-batch-size 8 --train-iters 20 --log-interval 1 --lr 1e-3)
# The wgmma (sm_90a) tests in their own process: a fault there leaves a sticky CUDA error that
# would fail every later test of the same process (here and in the triage reruns).
cuda_tests='*cuda*:*Cuda*:-*Wgmma*:*TcFused*'
(cd "$build" && tlim ./tests/test_backend --gtest_filter="$cuda_tests" > "$out/test_backend_cuda.log" 2>&1; echo $? > "$out/rc_test_backend") &
# Kernels not yet run (or most at risk) on a GPU, each test in a process of its own
# (name:gtest filter:the LLM_CUDA_ATTENTION choices it covers, which are not benchmarked when it
# fails, below); the other wgmma tests share one process.
isolated=("wgmma_ws:*WarpSpecialised*:wgmma-ws wgmma-ws-pp" "wgmma_fused:*WgmmaFused*:wgmma-atomic"
          "wgmma_rs:*WgmmaRegisterScores*:wgmma-rs" "wgmma_ws_fused:*WgmmaWsFused*:wgmma-ws-atomic"
          "wgmma_ws3:*WgmmaThreeConsumer*:wgmma-ws3" "wgmma_ws_tma:*WgmmaWsTma*:wgmma-ws-tma"
          "wgmma_ws_dqfirst:*WgmmaWsDqFirst*:wgmma-ws-dqfirst" "wgmma_ws_convert:*WgmmaWsConverted*:"
          "wgmma_ws_v4:*WgmmaWsV4*:" "tc_fused:*TcFused*:tc-atomic")
spec_name() { echo "${1%%:*}"; }
spec_filter() { local r=${1#*:}; echo "${r%%:*}"; }
spec_choices() { local r=${1#*:}; echo "${r#*:}"; }
wgmma_filter='*Wgmma*:-'
for spec in "${isolated[@]}"; do wgmma_filter+="$(spec_filter "$spec"):"; done
(cd "$build" && tlim ./tests/test_backend --gtest_filter="${wgmma_filter%:}" > "$out/wgmma.log" 2>&1; echo $? > "$out/rc_wgmma") &
for spec in "${isolated[@]}"; do
  name=$(spec_name "$spec")
  (cd "$build" && tlim ./tests/test_backend --gtest_filter="$(spec_filter "$spec")" > "$out/$name.log" 2>&1; echo $? > "$out/rc_$name") &
done
(cd "$build" && tlim ./tests/test_cuda > "$out/test_cuda.log" 2>&1; echo $? > "$out/rc_test_cuda") &
# The NCCL communicator on this machine's GPUs: one process (an MPI singleton, isolated: no
# mpirun or orted needed) always; every GPU under mpirun when there are several and mpirun exists.
(cd "$build" && OMPI_MCA_ess_singleton_isolated=1 lim 60 ./tests/nccl-communicator-check > "$out/nccl_np1.log" 2>&1; echo $? > "$out/rc_nccl_np1") &
for var in simt "${variants[@]}" "${tested[@]}"; do
  (cd "$build" && LLM_CUDA_ATTENTION=$var tlim ./tests/test_backend --gtest_filter='*Attention*cuda*' > "$out/attention_$var.log" 2>&1; echo $? > "$out/rc_attention_$var") &
done
for assignment in ${ENV_VARIANTS:-}; do  # the same tests under each A/B switch
  e=$(env_name "$assignment")
  (cd "$build" && env_export "$assignment" && tlim ./tests/test_backend --gtest_filter='*Attention*cuda*' > "$out/attention_$e.log" 2>&1; echo $? > "$out/rc_attention_$e") &
done
if [[ "${BIAS_GRAD_EPILOGUE:-1}" = 1 ]]; then
  (cd "$build" && LLM_CUDA_BIAS_GRAD=epilogue tlim ./tests/test_backend --gtest_filter='*Linear*cuda*' > "$out/linear_bias_epilogue.log" 2>&1; echo $? > "$out/rc_linear_bias_epilogue") &
fi
rm -rf "$out/pt_cpu_ck"  # (the CPU run saves its checkpoint for llm-generate below: this run's, not an earlier one's)
for prec in cpu cuda bf16 fp16; do
  case $prec in cpu) f=(--backend cpu --save "$out/pt_cpu_ck" --save-interval 20) ;; cuda) f=(--backend cuda) ;; *) f=(--backend cuda --$prec) ;; esac
  (tlim "$build/tools/llm-pretrain" "${pa[@]}" "${f[@]}" --output-dir "$out/pt_$prec" > "$out/pretrain_$prec.log" 2>&1; echo $? > "$out/rc_pt_$prec") &
done
# Reproducibility: the same bf16 run twice under LLM_CUDA_DETERMINISTIC=1, head dim 128 (where auto
# would otherwise take the atomic backward), compared digit for digit below.
pd=(--mock-data --vocab-size 512 --num-layers 2 --hidden-size 256 --num-attention-heads 2 --seq-length 256
    --micro-batch-size 4 --global-batch-size 8 --train-iters 20 --log-interval 1 --lr 1e-3 --backend cuda --bf16)
for r in a b; do
  (LLM_CUDA_DETERMINISTIC=1 tlim "$build/tools/llm-pretrain" "${pd[@]}" --output-dir "$out/pt_det_$r" > "$out/pretrain_det_$r.log" 2>&1; echo $? > "$out/rc_pt_det_$r") &
done
sm80_start
wait
unset OMP_NUM_THREADS
[[ -n "$threads_before" ]] && eval "$threads_before"
log "test_backend (cuda) exit $(cat "$out/rc_test_backend"): $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/test_backend_cuda.log" | tr '\n' ' ')"
rc_tb=$(cat "$out/rc_test_backend")
if [[ $rc_tb = 124 || $rc_tb = 137 ]]; then  # a timeout names no change to triage, and a rerun alone would pass
  log "test_backend (cuda) timed out: no triage (test_backend_cuda.log shows how far it got)"
elif [[ $rc_tb != 0 ]]; then  # triage in the same lease: which change breaks it, on the failed tests alone
  failed=$(grep -E '^\[  FAILED  \] [A-Za-z]' "$out/test_backend_cuda.log" | sed 's/^\[  FAILED  \] //; s/ (.*//; s/,.*//' | sort -u)
  log "failed: $(tr '\n' ' ' <<< "$failed")"
  triage_filter=$(paste -sd: <<< "$failed")
  for sw in LLM_CUDA_PACKS=0 LLM_CUDA_DGELU=0 "LLM_CUDA_PACKS=0 LLM_CUDA_DGELU=0"; do
    tag=$(echo "$sw" | tr ' =' '__')
    (cd "$build" && export $sw && lim 150 ./tests/test_backend --gtest_filter="${triage_filter:-$cuda_tests}" > "$out/triage_$tag.log" 2>&1)
    log "triage with $sw: exit $?: $(grep -E '^\[  (PASSED|FAILED) ' "$out/triage_$tag.log" | tr '\n' ' ')"
  done
fi
# The Hopper kernels' own tests (sm_90a only; elsewhere skipped with the reason).
log "wgmma tests exit $(cat "$out/rc_wgmma"): $(grep -E '^\[ +(OK|FAILED|SKIPPED) +\] [A-Za-z]+\.Wgmma|^\[ +OK +\] WgmmaLayout' "$out/wgmma.log" | sed 's/^\[ *//; s/ *\] /:/; s/ (.*//' | awk '!seen[$0]++' | tr '\n' ' ')"
for spec in "${isolated[@]}"; do
  name=$(spec_name "$spec")
  log "$name test exit $(cat "$out/rc_$name"): $(grep -E '^\[ +(OK|FAILED|SKIPPED) +\]|Failure|expected exactly|error' "$out/$name.log" | head -5 | tr '\n' ' ')"
done
log "test_cuda exit $(cat "$out/rc_test_cuda"): $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/test_cuda.log" | tr '\n' ' ')"
log "NCCL communicator, 1 rank, exit $(cat "$out/rc_nccl_np1"): $(grep -E 'NCCL communicator|FAILED|skipped|rank 0' "$out/nccl_np1.log" | head -3 | tr '\n' ' ')"
for var in simt "${variants[@]}" "${tested[@]}"; do
  log "attention tests with LLM_CUDA_ATTENTION=$var exit $(cat "$out/rc_attention_$var"): $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/attention_$var.log" | tr '\n' ' ')"
done
for assignment in ${ENV_VARIANTS:-}; do
  e=$(env_name "$assignment")
  log "attention tests with $assignment exit $(cat "$out/rc_attention_$e"): $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/attention_$e.log" | tr '\n' ' ')"
done
if [[ "${BIAS_GRAD_EPILOGUE:-1}" = 1 ]]; then
  log "linear tests with LLM_CUDA_BIAS_GRAD=epilogue exit $(cat "$out/rc_linear_bias_epilogue"): $(grep -E '^\[  (PASSED|FAILED|SKIPPED) |warning' "$out/linear_bias_epilogue.log" | tr '\n' ' ')"
fi
log "llm-pretrain --backend cuda (fp32 / --bf16 / --fp16) against --backend cpu fp32 (20 iterations, rel 1e-4 / 4e-3 / 4e-4)"
for prec in cuda bf16 fp16; do
  tol=$(case $prec in cuda) echo 1e-4 ;; bf16) echo 4e-3 ;; fp16) echo 4e-4 ;; esac)
  log "pretrain $prec exit $(cat "$out/rc_pt_$prec") (cpu $(cat "$out/rc_pt_cpu")): $(CURVE_RC="$(cat "$out/rc_pt_$prec" "$out/rc_pt_cpu" 2> /dev/null || echo missing)" curve_within 20 $tol "$out/pt_cpu/metrics.jsonl" "$out/pt_$prec/metrics.jsonl")"
done
# llm-generate --backend cuda (fp32, --bf16) from the CPU run's checkpoint (mock data: token ids
# in and out): 24 greedy tokens. fp32 must give the CPU's text; --bf16 is compared with the CPU's
# emulation, where a near tie in this barely trained model may flip a token (reported, not failed).
if [[ -x "$build/tools/llm-generate" && -d "$out/pt_cpu_ck" ]]; then
  gen=(--load "$out/pt_cpu_ck" --tokenizer-type NullTokenizer --vocab-size 511 --prompt "5 17 42 8 99 3 250"
       --max-new-tokens 24 --temperature 0)
  for g in "cpu --backend cpu" "cuda --backend cuda" "cpu_bf16 --backend cpu --bf16" "cuda_bf16 --backend cuda --bf16"; do
    read -r name flags <<< "$g"
    lim 60 "$build/tools/llm-generate" "${gen[@]}" $flags > "$out/generate_$name.txt" 2> "$out/generate_$name.err"
    echo $? > "$out/rc_generate_$name"
  done
  same() { [[ -s "$out/generate_$1.txt" ]] && cmp -s "$out/generate_$1.txt" "$out/generate_$2.txt" && echo "$3" || echo "$4"; }
  # the inference model's weights as the tool reports them (bf16: about half of fp32)
  weights() { local w; w=$(sed -n 's/.*, weights \([0-9.]*\) MiB, KV cache.*/\1/p' "$out/generate_$1.err" 2> /dev/null); echo "${w:-?}"; }
  log "llm-generate from the CPU run's checkpoint, 24 greedy tokens: cpu exit $(cat "$out/rc_generate_cpu"), cuda exit $(cat "$out/rc_generate_cuda"): $(same cpu cuda "the same text OK" "DIFFERENT text FAIL"); --bf16: cpu exit $(cat "$out/rc_generate_cpu_bf16"), cuda exit $(cat "$out/rc_generate_cuda_bf16"): $(same cpu_bf16 cuda_bf16 "the same text" "texts differ (generate_*bf16.txt; a near tie may flip a token)"); weights on the GPU $(weights cuda) MiB, --bf16 $(weights cuda_bf16) MiB (CPU $(weights cpu) / $(weights cpu_bf16))"
else
  log "llm-generate: not run ($([[ -x "$build/tools/llm-generate" ]] && echo "the CPU run saved no checkpoint" || echo "not in this build"))"
fi
det_values() { grep -o '"lm_loss": [^,]*\|"grad_norm": [^,]*' "$1" 2> /dev/null | cut -d' ' -f2 | paste - -; }
log "pretrain deterministic (LLM_CUDA_DETERMINISTIC=1, --bf16, hd 128) twice, exit $(cat "$out/rc_pt_det_a") / $(cat "$out/rc_pt_det_b"): $(paste <(det_values "$out/pt_det_a/metrics.jsonl") <(det_values "$out/pt_det_b/metrics.jsonl") |
  awk -v rcs="$(cat "$out/rc_pt_det_a" "$out/rc_pt_det_b" 2> /dev/null | tr '\n' ' ')" 'NF != 4 {uneven = 1}
    NF == 4 {n++; if ($1 != $3 || $2 != $4) { if (!bad) bad = n } }
    END {ok = n == 20 && !uneven && !bad && rcs == "0 0 "
         printf "%d iterations%s, loss and grad norm %s", n, uneven ? " (the runs differ in length)" : "",
                ok ? "identical OK" : bad ? "differ from iteration " bad " FAIL" : "FAIL"}')"
sm80_report

multirank_step

# A kernel choice whose own test failed (or hung: exit 124) is not benchmarked: a faulting or
# hanging kernel would spend each benchmark's whole time limit.
keep=()
dropped=()  # and not profiled either
for var in "${variants[@]}"; do
  gate=""
  for spec in "${isolated[@]}"; do
    [[ " $(spec_choices "$spec") " = *" $var "* ]] && gate=$(spec_name "$spec")
  done
  if [[ -n "$gate" && "$(cat "$out/rc_$gate" 2>/dev/null)" != 0 ]]; then
    log "$var: its test exited $(cat "$out/rc_$gate" 2>/dev/null); not benchmarked"
    dropped+=("$var")
  else
    keep+=("$var")
  fi
done
variants=("${keep[@]}")
keep=()
for assignment in ${ENV_VARIANTS:-}; do  # a switch whose attention tests failed is not benchmarked either
  if [[ "$(cat "$out/rc_attention_$(env_name "$assignment")" 2>/dev/null)" != 0 ]]; then
    log "$assignment: its attention tests exited $(cat "$out/rc_attention_$(env_name "$assignment")" 2>/dev/null); not benchmarked"
  else
    keep+=("$assignment")
  fi
done
env_variants=("${keep[@]}")
fi

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
  log "full ctest"
  (cd "$build" && ctest -j4 --output-on-failure > "$out/ctest.log" 2>&1)
  log "ctest exit $?: $(tail -3 "$out/ctest.log" | head -1)"
fi

benches=" ${BENCHES-gemm attention torch train-step longseq sweep} "
[[ "${QUICK:-0}" = 1 ]] && benches="${benches/ sweep / }"
log "benchmarks (one at a time):$benches"
if [[ "$benches" = *" gemm "* ]]; then
  (cd "$build" && lim 45 ./tests/bench-cuda-gemm > "$out/bench_gemm.txt" 2>&1); log "gemm exit $?"
  # every cuBLASLt algorithm for LinearWithFewRows' shapes, checked (a diagnostic; exit 1 = the
  # library's own GEMM is wrong on one)
  (cd "$build" && lim 45 ./tests/bench-cuda-gemm-probe > "$out/gemm_probe.txt" 2>&1)
  rc=$?
  log "gemm probe exit $rc: $(grep -c WRONG "$out/gemm_probe.txt") library shapes wrong; $(awk '$3 ~ /^(unset|pointer|ld|2)$/ && $4 ~ /^[0-9]+$/ && $15 > 0' "$out/gemm_probe.txt" | wc -l) algorithm runs wrong"
fi
if [[ "$benches" = *" attention "* ]]; then
  (cd "$build" && lim 60 ./tests/bench-cuda-attention ${ATTENTION_BENCH_ARGS:-} > "$out/bench_attention.txt" 2>&1); log "attention exit $?"
  for var in "${variants[@]}"; do
    (cd "$build" && LLM_CUDA_ATTENTION=$var lim 60 ./tests/bench-cuda-attention ${ATTENTION_BENCH_ARGS:-} > "$out/bench_attention_$var.txt" 2>&1); log "attention ($var) exit $?"
  done
  for assignment in "${env_variants[@]}"; do
    (cd "$build" && env_export "$assignment" && lim 60 ./tests/bench-cuda-attention ${ATTENTION_BENCH_ARGS:-} > "$out/bench_attention_$(env_name "$assignment").txt" 2>&1)
    log "attention ($assignment) exit $?"
  done
fi
if [[ "$benches" = *" torch "* ]]; then
  if python3 -c "import torch" 2> /dev/null; then
    lim 90 python3 "$src/tests/bench/cuda_attention_torch.py" ${ATTENTION_BENCH_ARGS:-} > "$out/bench_attention_torch.txt" 2>&1; log "torch attention exit $?"
  else
    log "torch not importable: no PyTorch attention comparison"
  fi
fi
if [[ "$benches" = *" attention "* ]]; then  # every choice side by side, the fastest per pass
  python3 "$src/tests/cuda/attention_table.py" "$out" 2>&1 | tee -a "$out/summary.txt"
fi
if [[ "$benches" = *" train-step "* ]]; then
  (cd "$build" && lim 60 ./tests/bench-cuda-train-step --profile 1 > "$out/bench_train_step.txt" 2>&1); log "train step exit $?"
  grep -E "^step|memory:" "$out/bench_train_step.txt" | tee -a "$out/summary.txt"
  for var in ${TRAIN_STEP_VARIANTS-${variants[@]}}; do
    (cd "$build" && LLM_CUDA_ATTENTION=$var lim 60 ./tests/bench-cuda-train-step > "$out/bench_train_step_$var.txt" 2>&1)
    log "train step ($var) exit $?: $(grep -E '^step' "$out/bench_train_step_$var.txt")"
  done
  for assignment in "${env_variants[@]}"; do
    (cd "$build" && env_export "$assignment" && lim 60 ./tests/bench-cuda-train-step > "$out/bench_train_step_$(env_name "$assignment").txt" 2>&1)
    log "train step ($assignment) exit $?: $(grep -E '^step' "$out/bench_train_step_$(env_name "$assignment").txt")"
  done
  if [[ "${BIAS_GRAD_EPILOGUE:-1}" = 1 ]]; then
    (cd "$build" && LLM_CUDA_BIAS_GRAD=epilogue lim 60 ./tests/bench-cuda-train-step > "$out/bench_train_step_bias_epilogue.txt" 2>&1)
    log "train step (LLM_CUDA_BIAS_GRAD=epilogue) exit $?: $(grep -E '^step|warning' "$out/bench_train_step_bias_epilogue.txt" | tr '\n' ' ')"
  fi
fi

if [[ "$benches" = *" longseq "* ]]; then
  # Hundreds of thousands of tokens on one device: 4 layers, hidden 1024, 16 heads (head dim 64,
  # auto's attention kernels), bf16, full recompute, mock vocab 512 (then GPT-2's, below); loss
  # finite, time and memory.
  ls_args=(--mock-data --num-layers 4 --hidden-size 1024 --num-attention-heads 16 --micro-batch-size 1
           --global-batch-size 1 --log-interval 1 --recompute-granularity full --bf16 --backend cuda)
  for spec in 131072:2 262144:1; do
    T=${spec%:*} iters=${spec#*:}
    lim 120 "$build/tools/llm-pretrain" "${ls_args[@]}" --vocab-size 512 --seq-length $T --train-iters $iters \
      --output-dir "$out/longseq_$T" > "$out/longseq_$T.log" 2>&1
    log "longseq $T exit $?: $(grep -o '"lm_loss": [^,]*\|"elapsed_ms_per_iteration": [^,]*\|"memory_max_allocated_mib": [^,]*' "$out/longseq_$T/metrics.jsonl" 2> /dev/null | tail -3 | tr '\n' ' ')"
  done
  # GPT-2's vocabulary at 65536 tokens: the whole [T, 50304] bf16 logits (6.6 GB) against
  # --logits-chunk-tokens 4096 (each chunk's backward in its forward): the peak it saves and what
  # the chunks cost in time (iteration 3; the activation line gives the logits' share).
  for chunk in 0 4096; do
    lim 60 "$build/tools/llm-pretrain" "${ls_args[@]}" --vocab-size 50257 --seq-length 65536 --train-iters 3 \
      --logits-chunk-tokens $chunk --output-dir "$out/longseq_vocab_$chunk" > "$out/longseq_vocab_$chunk.log" 2>&1
    log "longseq vocab 50257, 65536 tokens, logits chunk $chunk exit $?: $(grep -o '"lm_loss": [^,]*\|"elapsed_ms_per_iteration": [^,]*\|"memory_max_allocated_mib": [^,]*' "$out/longseq_vocab_$chunk/metrics.jsonl" 2> /dev/null | tail -3 | tr '\n' ' ')$(grep -o 'the logits [0-9.]* MB' "$out/longseq_vocab_$chunk.log" | head -1)"
  done
fi

if [[ "$benches" = *" profile "* ]]; then
  # Nsight Compute on the attention kernels and dQ's conversion from the fp32 accumulator (head
  # dim PROFILE_HEAD_DIM, seq 4096; 8 launches: the forward's 3, then the backward's D, main
  # kernel and conversion, and D and main kernel once more): where the
  # cycles go (tensor pipe use, shared-memory throughput, stall reasons, occupancy, the hottest
  # instructions), for each kernel choice; every stall reason's cycles per issued instruction
  # (the --metrics regex), which ncu_summary.py ranks.
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
  if [[ -z "$ncu" ]]; then
    log "profile: no ncu on this machine"
  else
    for var in ${PROFILE_ATTENTION:-wgmma tc-m32}; do
      if [[ " ${dropped[*]:-} " = *" $var "* ]]; then log "profile ($var): skipped, its test failed"; continue; fi
      (cd "$build" && LLM_CUDA_ATTENTION=$var lim 120 "$ncu" --kernel-name 'regex:attention|dq_from_accum' --launch-count 8 \
        --section SpeedOfLight --section Occupancy --section SchedulerStats --section WarpStateStats \
        --section MemoryWorkloadAnalysis --section ComputeWorkloadAnalysis --section SourceCounters \
        --metrics 'regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio' \
        ./tests/bench-cuda-attention --head-dims "${PROFILE_HEAD_DIM:-128}" --seqs 4096 --reps 1 > "$out/ncu_attention_$var.txt" 2>&1)
      log "profile ($var) exit $?: $(grep -c '^  void' "$out/ncu_attention_$var.txt") kernels ($ncu)"
      python3 "$src/tests/cuda/ncu_summary.py" "$out/ncu_attention_$var.txt" 2>&1 | tail -n +2 | tee -a "$out/summary.txt"
    done
  fi
fi

if [[ "$benches" = *" sass "* ]]; then
  # Instruction by instruction (tests/cuda/sass_stalls.py): the SASS of the warp-specialised
  # attention kernels at head dim PROFILE_HEAD_DIM, bf16 (cuobjdump on the library that holds the
  # device code; SASS_KERNELS, a regex on the mangled names), their static instruction mix, and
  # for each SASS_ATTENTION choice (default: auto) Nsight Compute's warp-stall samples per
  # instruction of one launch of SASS_NCU_KERNEL (default: the warp-specialised backward): which
  # instructions the warps wait at (a barrier, a wgmma wait, a reduction, an exp).
  hd=${PROFILE_HEAD_DIM:-128}
  cuobjdump=$(command -v cuobjdump || ls /usr/local/cuda/bin/cuobjdump 2> /dev/null | head -1)
  code=${DEVICE_CODE:-}
  if [[ -z "$code" ]]; then
    for c in "$build/kernels/CMakeFiles/llm_cuda_sm90a.dir/sm90a/attention_wgmma.cu.o" "$build"/lib/libllm*.so* \
             "$build/lib/libllm.a"; do
      [[ -f "$c" ]] && { code=$c; break; }
    done
  fi
  if [[ -z "$cuobjdump" || -z "$code" ]]; then
    log "sass: no cuobjdump ('$cuobjdump') or no device code ('$code')"
  else
    lim 120 "$cuobjdump" -sass "$code" > "$out/sass_all.txt" 2> "$out/sass_cuobjdump.err"
    rc=$?
    python3 "$src/tests/cuda/sass_stalls.py" extract "$out/sass_all.txt" \
      "${SASS_KERNELS:-attention_(backward|forward)_wgmma_wsI13__nv_bfloat16Li${hd}E}" > "$out/sass_attention.txt"
    log "sass (cuobjdump exit $rc, $(grep -c 'Function :' "$out/sass_all.txt") functions in $code): $(grep -c 'Function :' "$out/sass_attention.txt") kernels to sass_attention.txt"
    rm -f "$out/sass_all.txt"
    python3 "$src/tests/cuda/sass_stalls.py" mix "$out/sass_attention.txt" 2>&1 | tee -a "$out/summary.txt"
  fi
  ncu=$(command -v ncu || ls /usr/local/cuda/bin/ncu /opt/nvidia/nsight-compute/*/ncu 2> /dev/null | head -1)
  if [[ -z "$ncu" ]]; then
    log "sass stalls: no ncu on this machine"
  else
    for var in ${SASS_ATTENTION:-auto}; do
      if [[ " ${dropped[*]:-} " = *" $var "* ]]; then log "sass stalls ($var): skipped, its test failed"; continue; fi
      rep="$out/ncu_source_$var"
      (cd "$build" && LLM_CUDA_ATTENTION=$var lim 120 "$ncu" --kernel-name "regex:${SASS_NCU_KERNEL:-attention_backward_wgmma_ws}" \
        --launch-count 1 --section SourceCounters --section WarpStateStats -f -o "$rep" \
        ./tests/bench-cuda-attention --head-dims "$hd" --seqs 4096 --reps 1 > "$rep.log" 2>&1)
      rc=$?
      lim 60 "$ncu" -i "$rep.ncu-rep" --page source --csv --print-source sass > "$rep.csv" 2>> "$rep.log"
      log "sass stalls ($var) exit $rc, export exit $?: $rep.csv"
      python3 "$src/tests/cuda/sass_stalls.py" stalls "$rep.csv" 2>&1 | tee -a "$out/summary.txt"
    done
  fi
fi

if [[ "$benches" = *" sweep "* ]]; then
log "llm-sweep: one GPU, bf16, seq 2048, the real trainer: GPT1_3B (GPT-3 XL, vocab 50304) and ALCF's GPT1_5B (48 x 1536, mock vocab 512)"
if [[ -z "${PEAK_DEVICE:-}" ]]; then
  case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2> /dev/null | head -1)" in
    *H200*) PEAK_DEVICE=H200 ;; *A100*80GB*) PEAK_DEVICE=A100-80GB ;;
    *A100*) PEAK_DEVICE=A100-40GB ;; *) PEAK_DEVICE=H100-SXM ;;
  esac
fi
for spec in ${SWEEP_MODELS:-GPT1_3B:50304 GPT1_5B:0}; do
  model=${spec%:*} vocab=${spec#*:}
  lim 150 "$build/tools/llm-sweep" --pretrain "$build/tools/llm-pretrain" --models $model --vocab-size $vocab --seq-lens 2048 \
    --micro-batches "${SWEEP_MBS:-1,2,4,8,16}" --dtype bf16 --backend cuda --device "$PEAK_DEVICE" --warmup 2 --iters 5 --no-plots \
    --output-dir "$out/sweep_$model" > "$out/sweep_$model.log" 2>&1
  log "sweep $model exit $?: $(grep -E '^\[[0-9]' "$out/sweep_$model.log" | tr '\n' ' ')"
done
fi

log "done: $out"
