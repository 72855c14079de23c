#!/usr/bin/env bash
# End-to-end checks of llm-sweep: measured points (ok, out of memory, error, impossible layout)
# in one sweep that never aborts, the seed's table columns, CSV/JSON/plots, mpiexec points,
# --simulate, --find-max-seq-len (predicted and measured), clear errors for bad input, and
# pipelines/seqlen-sweep.sh's commands.
# usage: sweep_cli_test.sh <path to llm-sweep>   (llm-pretrain next to it)
set -uo pipefail
bin="$1"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
quick=(--models tiny --warmup 1 --iters 2 --threads 2)

# Memory caps relative to what llm-pretrain itself occupies at the smallest point (a build with
# CUDA maps cuBLASLt and friends, ~200 MiB resident before any tensor exists).
"$bin" "${quick[@]}" --seq-lens 64 --output-dir "$work/base" > /dev/null 2>&1
base=$(grep -o '"peak_memory_bytes": [0-9]*' "$work/base/sweep.json" | head -1 | grep -o '[0-9]*$')
check "baseline point measured (${base:-none} bytes)" "[ -n '$base' ] && [ '$base' -gt 0 ]"
base=${base:-0}
cap_mib() { echo $(( base / 1048576 + $1 )); }
cap_a=$(awk -v m="$(cap_mib 40)" 'BEGIN { printf "%.6f", m / 1024 }')
cap_m=$(awk -v m="$(cap_mib 30)" 'BEGIN { printf "%.6f", m / 1024 }')

# One sweep: two ok points, one over the memory cap, one layout llm-pretrain refuses (2 ranks),
# one impossible layout (3 does not divide 4 heads).
"$bin" "${quick[@]}" --seq-lens 64,8192 --tp 1,2,3 --mem-limit-gib "$cap_a" --cluster "$root/configs/clusters/cpu-2core.yaml" \
  --output-dir "$work/a" > "$work/a.md" 2> "$work/a.err"
check "mixed sweep exits 0" "[ $? -eq 0 ]"
OMPI_COMM_WORLD_RANK=0 OMPI_COMM_WORLD_SIZE=2 "$bin" --models tiny --seq-lens 64 --output-dir "$work/undermpi" > /dev/null 2> "$work/undermpi.err"
check "llm-sweep under an MPI launcher is refused (it starts mpiexec itself)" "[ $? -eq 2 ] && [ ! -e $work/undermpi ] && grep -q 'llm-sweep is a single-process tool, but it was started as rank 0 of 2' $work/undermpi.err"
"$bin" --models tiny --seq-lens 64 --dp 2 --mpiexec no-such-mpiexec --output-dir "$work/nompi" > /dev/null 2> "$work/nompi.err"
check "a missing --mpiexec is named before any point (several ranks need it)" "[ $? -eq 2 ] && grep -q 'mpiexec no-such-mpiexec: no such executable' $work/nompi.err"
check "progress line per point" "[ \$(grep -c '^\[[1-6]/6\] tiny s' $work/a.err) -eq 6 ]"
check "MFU peak (measured sgemm) printed before and after" "[ \$(grep -c 'MFU peak = measured OpenBLAS sgemm' $work/a.err) -eq 2 ]"
check "seed table header" "grep -q '^| name | sequence length | ratio to smallest | TFLOPS (Megatron) | % of baseline |$' $work/a.md"
check "baseline row is 100%" "grep -qE '^\| tiny mb1 dp1 tp1 pp1 sp1\(ds\) z0 fp32 cpu \| 64 \| 1 \| [0-9.e-]+ \| 100.0% \|$' $work/a.md"
check "8192 over the cap is an OOM row" "grep -qE '^\| tiny mb1 dp1 tp1 pp1 sp1\(ds\) z0 fp32 cpu \| 8192 \| 128 \| OOM \| - \|$' $work/a.md"
check "OOM detail names the cap" "grep -q 'out of memory: a rank.s resident memory passed the cap of [0-9]* MiB' $work/a.md"
check "tp 2 (two ranks under mpiexec) is a measurement" "grep -qE 'tiny s64 mb1 dp1 tp2 pp1 sp1\(ds\) z0 fp32 cpu \| ok \|' $work/a.md"
check "tp 3 is skipped as impossible" "grep -q 'skipped: impossible layout: model .tiny.: --num-attention-heads 4 is not divisible by --tensor-model-parallel-size 3' $work/a.md"
check "detail has median, spread and n" "grep -qE '\| 1 \| tiny s64 .* \| ok \| [0-9.]+ \(±[0-9.]+%, 2\) \|' $work/a.md"
check "prediction error reported" "grep -q 'performance model: median |predicted - measured| / measured iteration time = ' $work/a.md"
check "CSV: header + 6 rows" "[ \$(wc -l < $work/a/sweep.csv) -eq 7 ] && head -1 $work/a/sweep.csv | grep -q '^index,label,model,seq_length,'"
statuses=$(grep -o '"status": "[a-z ]*"' "$work/a/sweep.json" | cut -d'"' -f4 | sort | uniq -c | tr -s ' ' | tr '\n' ';')
# (tp 2 at 8192 may or may not pass the per-rank cap: each rank holds half the activations)
check "JSON has 6 points with their statuses ($statuses)" "[ \$(grep -c '\"status\": ' $work/a/sweep.json) -eq 6 ] && echo '$statuses' | grep -q ' 2 skipped;' && echo '$statuses' | grep -qE ' [23] ok;' && echo '$statuses' | grep -qE ' [12] out of memory;'"

# A failing and a crashing trainer: error rows with the message / the signal, and the sweep goes on.
cat > "$work/fake-pretrain" <<'SH'
#!/bin/sh
case "$*" in
  *"--seq-length 64 "*) echo "llm-pretrain: error: --zero-stage 2 is not implemented yet" >&2; exit 2 ;;
  *) kill -SEGV $$ ;;
esac
SH
chmod +x "$work/fake-pretrain"
"$bin" "${quick[@]}" --seq-lens 64,128 --pretrain "$work/fake-pretrain" --output-dir "$work/e" > "$work/e.md" 2> "$work/e.err"
check "failing trainer: error row with its message" "grep -q '| error: --zero-stage 2 is not implemented yet |' $work/e.md"
check "crashing trainer: error row naming the signal" "grep -q '| error: killed by signal 11 (Segmentation fault) |' $work/e.md"
check "each point ran in its own directory" "[ -s $work/a/sweep-runs/001-tiny_s64_mb1_dp1_tp1_pp1_sp1_ds__z0_fp32_cpu/metrics.jsonl ]"
if command -v gnuplot > /dev/null; then
  check "plots written as SVG" "grep -q '<svg' $work/a/sweep-tflops.svg && grep -q '<svg' $work/a/sweep-memory.svg"
else
  check "missing gnuplot is said once" "[ \$(grep -c 'gnuplot not found' $work/a.err) -eq 1 ]"
fi

# Two data-parallel ranks under mpiexec.
"$bin" "${quick[@]}" --seq-lens 64 --dp 2 --output-dir "$work/b" > "$work/b.md" 2> "$work/b.err"
check "dp 2 point runs under mpiexec" "grep -qE '\| 1 \| tiny s64 mb1 dp2 .* \| ok \|' $work/b.md && grep -q 'mpiexec -np 2' $work/b/sweep-runs/001-*/command.txt"
# ZeRO-3 with the collectives overlapped: the flags reach llm-pretrain, the point is measured.
"$bin" "${quick[@]}" --seq-lens 64 --dp 2 --zero 3 --overlap on --output-dir "$work/ov" > "$work/ov.md" 2> "$work/ov.err"
check "--overlap on: a ZeRO-3 point runs with both overlap flags" "grep -qE '\| 1 \| tiny s64 mb1 dp2 .* z3 fp32 cpu \+ov \| ok \|' $work/ov.md && grep -q -- '--overlap-grad-reduce --overlap-param-gather' $work/ov/sweep-runs/001-*/command.txt && grep -q ',1,0,fp32,cpu,' $work/ov/sweep.csv"

# Predictions: the seed's shape on Polaris.
"$bin" --simulate --cluster "$root/configs/clusters/polaris.yaml" --models GPT25B --vocab-size 50257 --seq-lens 2k:64k \
  --tp 4 --pp 8 --gas 16 --zero 1 --recompute off,on --output-dir "$work/s" > "$work/s.md" 2> "$work/s.err"
check "simulate exits 0" "[ $? -eq 0 ]"
check "simulate: predicted OOM without recompute at 8k" "grep -qE '^\| GPT25B mb1 gas16 dp1 tp4 pp8 sp1\(ds\) z1 bf16 cuda \| 8192 \| 4 \| OOM' $work/s.md"
check "simulate: recompute trains 8k" "grep -qE '^\| GPT25B mb1 gas16 dp1 tp4 pp8 sp1\(ds\) z1 bf16 cuda \+rc \| 8192 \| 4 \| [0-9.]+ \|' $work/s.md"
"$bin" --simulate --cluster "$root/configs/clusters/polaris.yaml" --models GPT1_5B --seq-lens 2048 --dp 64 --zero 2 \
  --overlap off,on --output-dir "$work/so" > "$work/so.md" 2> "$work/so.err"
t_off=$(grep -oE '"label": "[^"]*z2 bf16 cuda", .*"predicted_ms": [0-9.e+-]+' "$work/so/sweep.json" | grep -oE '"predicted_ms": [0-9.e+-]+' | cut -d' ' -f2)
t_on=$(grep -oE '"label": "[^"]*z2 bf16 cuda \+ov", .*"predicted_ms": [0-9.e+-]+' "$work/so/sweep.json" | grep -oE '"predicted_ms": [0-9.e+-]+' | cut -d' ' -f2)
check "simulate: --overlap on predicts a shorter iteration over 64 data-parallel ranks ($t_off -> $t_on ms)" "[ -n '$t_on' ] && [ -n '$t_off' ] && awk -v a='$t_on' -v b='$t_off' 'BEGIN{exit !(a < b)}'"
"$bin" --find-max-seq-len --simulate --cluster "$root/configs/clusters/polaris.yaml" --models GPT25B --vocab-size 50257 \
  --seq-lens 1k:1m --tp 4 --pp 8 --gas 16 --zero 1 --sp 1,4 --recompute on --output-dir "$work/f" > "$work/f.md" 2> "$work/f.err"
s1=$(sed '/^$/q' "$work/f.md" | grep -E '^\| GPT25B mb1 gas16 dp1 tp4 pp8 sp1\(ds\) z1 bf16 cuda \+rc \|' | cut -d'|' -f3 | tr -d ' ')
s4=$(sed '/^$/q' "$work/f.md" | grep -E '^\| GPT25B mb1 gas16 dp1 tp4 pp8 sp4\(ds\) z1 bf16 cuda \+rc \|' | cut -d'|' -f3 | tr -d ' ')
check "find-max (predicted): Ulysses sp 4 moves the boundary out ($s1 -> $s4)" "[ -n '$s1' ] && [ -n '$s4' ] && [ $s1 -gt 0 ] && [ $s4 -gt $((2 * s1)) ] && [ $((s4 % 256)) -eq 0 ]"

# Measured search for the largest sequence under a memory cap.
"$bin" --models tiny --threads 2 --warmup 0 --iters 1 --find-max-seq-len --seq-lens 64:4096 --mem-limit-gib "$cap_m" \
  --output-dir "$work/m" > "$work/m.md" 2> "$work/m.err"
best=$(sed '/^$/q' "$work/m.md" | grep -E '^\| tiny mb1 dp1' | cut -d'|' -f3 | tr -d ' ')
check "find-max (measured) finds a multiple of 64 inside the range ($best)" "[ -n '$best' ] && [ $best -ge 64 ] && [ $best -lt 4096 ] && [ $((best % 64)) -eq 0 ]"
check "find-max (measured): the next multiple was out of memory" "grep -q 'seq $((best + 64)) -> out of memory' $work/m.err"

# Bad input fails at once, naming the flag and value.
"$bin" --seq-lens 128:abc --output-dir "$work/x" > "$work/x.txt" 2>&1
rc=$?
check "malformed range exits 2 with one clear message" "[ $rc -eq 2 ] && [ \"\$(cat $work/x.txt)\" = \"llm-sweep: error: --seq-lens '128:abc': 'abc' is not a positive integer\" ]"
check "nothing ran for bad input" "[ ! -e $work/x ]"
"$bin" --models tiny,GPT7Q --output-dir "$work/y" > "$work/y.txt" 2>&1
rc=$?
check "unknown model key exits 2 naming it" "[ $rc -eq 2 ] && grep -q \"llm-sweep: error: --model: no model config named 'GPT7Q'\" $work/y.txt && [ ! -e $work/y ]"
"$bin" --simulate --models tiny > "$work/z.txt" 2>&1
check "--simulate without --cluster exits 2" "[ $? -eq 2 ] && grep -q 'needs --cluster' $work/z.txt"
"$bin" --models tiny --backend cuda --output-dir "$work/c1" > "$work/c1.txt" 2>&1
rc=$?
check "--backend cuda without --device exits 2 (no MFU against the CPU's sgemm)" "[ $rc -eq 2 ] && grep -q 'backend cuda needs --device' $work/c1.txt && [ ! -e $work/c1 ]"
"$bin" --models tiny --backend cpu,cuda --device H100-SXM --output-dir "$work/c2" > "$work/c2.txt" 2>&1
check "one sweep measures one kind of device" "[ $? -eq 2 ] && grep -q 'not both' $work/c2.txt"
"$bin" --models tiny --seq-lens 256:300 --sp 8 --find-max-seq-len --simulate --cluster "$root/configs/clusters/polaris.yaml" \
  --output-dir "$work/c3" > "$work/c3.md" 2> "$work/c3.err"
check "find-max: bounds holding no multiple of the split say so" "grep -q 'no multiple of 512 (the layout.s sequence split) within 256-' $work/c3.md"
"$bin" --help > "$work/help.txt" 2>&1
check "--help shows defaults and an example" "grep -q -- '--seq-lens' $work/help.txt && grep -q 'Examples' $work/help.txt && grep -q 'seq-lens TEXT=128 ' $work/help.txt"

# pipelines/seqlen-sweep.sh, llm-sweep's pipeline: the command it builds here (CPU), on a GPU node
# (a stand-in nvidia-smi: the CUDA backend in bf16 with the card's datasheet peak), for a GPU
# without one, when simulating, and a real one-point sweep on the CPU.
seqlen="$root/pipelines/seqlen-sweep.sh"
mkdir -p "$work/nv/cpu" "$work/nv/gpu" "$work/nv/unknown"
printf '#!/bin/sh\nexit 1\n' > "$work/nv/cpu/nvidia-smi"  # present, but no GPU
printf '#!/bin/sh\nif [ "$1" = -L ]; then echo "GPU 0: NVIDIA A100-SXM4-40GB (UUID: GPU-0)"; else echo "NVIDIA A100-SXM4-40GB"; fi\n' > "$work/nv/gpu/nvidia-smi"
printf '#!/bin/sh\nif [ "$1" = -L ]; then echo "GPU 0: NVIDIA L40S (UUID: GPU-0)"; else echo "NVIDIA L40S"; fi\n' > "$work/nv/unknown/nvidia-smi"
chmod +x "$work"/nv/*/nvidia-smi
seq_sweep() { (cd "$work" && LLM_BIN="$(dirname "$bin")" PATH="$work/nv/$1:$PATH" "${@:2}" "$seqlen"); }
seq_sweep cpu env DRY_RUN=1 > "$work/sq_c.txt" 2>&1
check "seqlen-sweep.sh, no GPU here: the CPU, with the CPU cluster file's predictions" "grep -q -- '--cluster .*cpu-2core.yaml' $work/sq_c.txt && ! grep -q -- '--backend cuda' $work/sq_c.txt"
seq_sweep gpu env DRY_RUN=1 > "$work/sq_g.txt" 2>&1
check "seqlen-sweep.sh, a GPU node: the CUDA backend in bf16, the A100's datasheet peak, no CPU cluster file" "grep -q -- '--backend cuda --device A100-40GB --dtype bf16' $work/sq_g.txt && ! grep -q -- '--cluster' $work/sq_g.txt"
seq_sweep gpu env DRY_RUN=1 DTYPE=fp16 DEVICE=H200 > "$work/sq_g2.txt" 2>&1
check "seqlen-sweep.sh: DTYPE and DEVICE override" "grep -q -- '--backend cuda --device H200 --dtype fp16' $work/sq_g2.txt"
seq_sweep unknown env DRY_RUN=1 > "$work/sq_u.txt" 2>&1
check "seqlen-sweep.sh: a GPU without a datasheet peak asks for DEVICE" "[ $? -eq 2 ] && grep -q 'set DEVICE (A100-40GB, A100-80GB, H100-SXM or H200)' $work/sq_u.txt"
seq_sweep gpu env DRY_RUN=1 SIMULATE=1 CLUSTER="$root/configs/clusters/polaris.yaml" > "$work/sq_s.txt" 2>&1
check "seqlen-sweep.sh: SIMULATE=1 predicts for the cluster file, whatever the node" "grep -q -- '--simulate --cluster .*polaris.yaml' $work/sq_s.txt && ! grep -q -- '--backend' $work/sq_s.txt"
seq_sweep cpu env DRY_RUN=1 VOCAB_SIZE=50257 LOGITS_CHUNK_TOKENS=4096 > "$work/sq_lc.txt" 2>&1
check "seqlen-sweep.sh: LOGITS_CHUNK_TOKENS reaches llm-sweep" "grep -q -- '--vocab-size 50257 --logits-chunk-tokens 4096' $work/sq_lc.txt"
seq_sweep cpu env MODEL_SIZE_KEY=tiny SEQ_LENS=64 WARMUP=1 ITERS=1 OUTPUT_ROOT=out > "$work/sq_r.txt" 2>&1
check "seqlen-sweep.sh: a one-point sweep on the CPU writes its table" "[ $? -eq 0 ] && grep -q '| tiny s64 mb1 .* | ok |' $work/sq_r.txt && ls $work/out/seqlen-sweep_tiny_ds_mp1_pp1_sp1_z0/ | grep -q ."

finish "llm-sweep CLI"
