#!/usr/bin/env bash
# llm-pretrain under mpirun when the ranks do not all get the same input: a rank given other
# options or a file of its own (a wrapper script, a node that lacks a file) must end the job
# within seconds with one message naming the rank and the option or file, never train on
# silently or leave the others waiting.
# usage: pretrain_mpi_test.sh <path to llm-pretrain>
set -uo pipefail
bin="$1"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
command -v mpirun > /dev/null || { echo "mpirun not found (pipelines/setup.sh installs openmpi-bin)"; exit 1; }
export OMP_NUM_THREADS=1

tiny=(--mock-data --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32 --micro-batch-size 2
      --global-batch-size 8 --train-iters 6 --vocab-size 256 --log-interval 1)
# Rank $1 runs with the extra arguments $2 (word-split), every other rank without them.
cat > "$work/one_rank.sh" <<'EOF'
#!/bin/sh
r=$1; extra=$2; bin=$3; shift 3
if [ "${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}" = "$r" ]; then exec "$bin" "$@" $extra; fi
exec "$bin" "$@"
EOF
chmod +x "$work/one_rank.sh"
run() {  # name np rank extra -- the job's exit code in $rc, its output in $work/<name>.txt
  local name=$1 np=$2 r=$3 extra=$4
  shift 4
  start=$SECONDS
  timeout 120 mpirun -np "$np" "$work/one_rank.sh" "$r" "$extra" "$bin" "${tiny[@]}" --output-dir "$work/$name" "$@" \
    > "$work/$name.txt" 2>&1
  rc=$?
  took=$((SECONDS - start))
}
errors() { grep -c 'llm-pretrain: error:' "$work/$1.txt"; }

# Options that differ by rank: each would train a different model per rank (another seed, another
# learning rate) or wait in a collective the others never reach (more iterations, another ZeRO
# stage). All are refused together, naming the option, the rank and both values.
for case in "seed:--seed 5:--seed is '5' on rank 1 but '1234' on rank 0" \
            "iters:--train-iters 8:--train-iters is '8' on rank 1 but '6' on rank 0 (also --lr-decay-iters)" \
            "zero:--zero-stage 1:--zero-stage is '1' on rank 1 but '0' on rank 0"; do
  IFS=: read -r name extra want <<< "$case"
  run "diff-$name" 2 1 "$extra"
  check "a rank given $extra alone is refused in one message ($took s)" \
    "[ $rc -eq 2 ] && [ $took -lt 60 ] && grep -qF \"ranks run with different options: $want\" $work/diff-$name.txt && [ \$(errors diff-$name) -eq 1 ] && [ ! -e $work/diff-$name/metrics.jsonl ]"
done
run diff-many 4 3 "--lr 0.5"
check "the differing rank is named among four" "[ $rc -eq 2 ] && grep -qF -e \"--lr is '0.5' on rank 3 but '0.0003' on rank 0\" $work/diff-many.txt"

# A configuration error met by one rank alone (its --config file missing there, an option it
# alone cannot parse) is said by that rank, before the job ends.
run cfg 2 1 "--config $work/missing.yaml"
check "a config file one rank cannot read is named with that rank ($took s)" \
  "[ $rc -eq 2 ] && [ $took -lt 60 ] && grep -qF \"llm-pretrain: error: [rank 1] $work/missing.yaml: cannot read the YAML config\" $work/cfg.txt"
run bogus 2 1 "--bogus-option 3"
check "an unknown option on one rank is named with that rank ($took s)" \
  "[ $rc -eq 2 ] && [ $took -lt 60 ] && grep -qF 'llm-pretrain: error: [rank 1] unknown option --bogus-option' $work/bogus.txt"
run badval 2 1 "--lr=fast"
check "a bad value on one rank is named with that rank ($took s)" \
  "[ $rc -eq 2 ] && [ $took -lt 60 ] && grep -qF \"llm-pretrain: error: [rank 1] --lr: expected a number, got 'fast'\" $work/badval.txt"
# The same error on every rank is said once, by rank 0, whichever rank reaches it first.
for i in 1 2 3; do
  run same$i 4 0 "" --tensor-model-parallel-size 4
  check "an error every rank meets is said once (try $i)" \
    "[ $rc -eq 2 ] && [ \$(errors same$i) -eq 1 ] && grep -q 'llm-pretrain: error: model .custom.: --vocab-size 256 leaves the last of 4 vocabulary shards' $work/same$i.txt"
done
# A save root that one rank sees otherwise (node-local disk, simulated with a mount namespace
# where unshare -m works): refused before the training it would lose at the first save.
if unshare -m true 2> /dev/null; then
  cat > "$work/own_view.sh" <<'EOF'
#!/bin/sh
# usage: own_view.sh RANK SRC DST prog args...: rank RANK sees SRC at DST ("ro" as SRC: DST read-only)
r=$1; src=$2; dst=$3; shift 3
if [ "${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}" = "$r" ]; then
  [ "$src" = ro ] && exec unshare -m sh -c 'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"' sh "$dst" "$@"
  exec unshare -m sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh "$src" "$dst" "$@"
fi
exec "$@"
EOF
  chmod +x "$work/own_view.sh"
  mkdir -p "$work/ck" "$work/ck-other"
  start=$SECONDS
  timeout 120 mpirun -np 3 "$work/own_view.sh" 2 "$work/ck-other" "$work/ck" "$bin" "${tiny[@]}" --zero-stage 1 \
    --global-batch-size 6 --save "$work/ck/run" --output-dir "$work/local" > "$work/local.txt" 2>&1
  rc=$?
  check "a save root one rank sees otherwise is refused before training ($((SECONDS - start)) s)" \
    "[ $rc -eq 2 ] && [ \$(errors local) -eq 1 ] && grep -q 'error: --save $work/ck/run: rank 2 of this job cannot see the files rank 0 writes there' $work/local.txt && ! grep -q 'lm loss' $work/local.txt && [ -z \"\$(find $work/ck $work/ck-other -mindepth 1)\" ]"
  timeout 120 mpirun -np 2 "$work/own_view.sh" 1 ro "$work/ck" "$bin" "${tiny[@]}" --save "$work/ck/run" \
    --output-dir "$work/ro" > "$work/ro.txt" 2>&1
  rc=$?
  check "a save root one rank cannot write is named with that rank" \
    "[ $rc -eq 2 ] && grep -q 'error: \[rank 1\] --save $work/ck/run: $work/ck is not writable' $work/ro.txt && ! grep -q 'lm loss' $work/ro.txt"
  # A checkpoint that one rank does not see: that rank started from scratch while rank 0 loaded
  # it (different weights in the replicas, then a hang: rank 1 had more iterations to run).
  "$bin" "${tiny[@]}" --train-iters 3 --save "$work/ck/run" --output-dir "$work/first" > /dev/null 2>&1
  start=$SECONDS
  timeout 120 mpirun -np 2 "$work/own_view.sh" 1 "$work/ck-other" "$work/ck" "$bin" "${tiny[@]}" --load "$work/ck/run" \
    --use-checkpoint-opt_param-scheduler --output-dir "$work/resume" > "$work/resume.txt" 2>&1
  rc=$?
  check "a checkpoint one rank does not see is refused before training ($((SECONDS - start)) s)" \
    "[ $rc -eq 2 ] && [ \$(errors resume) -eq 1 ] && grep -q 'error: --load $work/ck/run: rank 1 finds no checkpoint but rank 0 $work/ck/run/iter_0000003; ' $work/resume.txt && ! grep -q 'lm loss' $work/resume.txt"
else
  echo "skip the node-local checks: unshare -m is not permitted here"
fi
# A stop every rank decides together mid-run (too many non-finite iterations) is said once too,
# though llm-pretrain catches the SIGTERM by which the launcher first ends the other ranks.
run nan 4 0 "" --lr 1e12 --clip-grad 0 --train-iters 30 --zero-stage 3
check "a stop every rank decides mid-run is said once ($took s)" \
  "[ $rc -eq 1 ] && [ $took -lt 60 ] && [ \$(errors nan) -eq 1 ] && grep -q 'stopping at iteration [0-9]*: 1 non-finite iteration(s), more than --max-nan-iterations 0' $work/nan.txt"
# A rank raising alone mid-run is named, and ends the job within seconds.
LLM_FAULT_INJECT=2:3 run fault 4 0 "" --train-iters 1000
check "a rank raising alone mid-run is named and ends the job ($took s)" \
  "[ $rc -eq 1 ] && [ $took -lt 60 ] && [ \$(errors fault) -eq 1 ] && grep -q 'error: \[rank 2\] injected fault at iteration 3' $work/fault.txt"
run help 2 0 "" --help
check "--help under mpirun prints once and exits 0" "[ $rc -eq 0 ] && [ \$(grep -c '^Usage' $work/help.txt) -eq 1 ]"
run same 2 0 ""
check "ranks given the same options train" "[ $rc -eq 0 ] && [ \$(grep -c 'lm loss' $work/same.txt) -eq 6 ]"

finish "llm-pretrain MPI input"
