#!/usr/bin/env bash
# End-to-end checks of the llm-pretrain executable: log format, metrics file, loss falling,
# YAML/flag precedence, clear errors for bad input, and mpirun -np 1 == plain process.
# usage: pretrain_cli_test.sh <path to llm-pretrain>
set -uo pipefail
bin="$1"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

common=(--mock-data --vocab-size 128 --num-layers 2 --hidden-size 64 --num-attention-heads 4
        --seq-length 32 --micro-batch-size 4 --global-batch-size 8 --lr 3e-3 --min-lr 3e-4
        --lr-warmup-iters 5 --seed 11)

"$bin" "${common[@]}" --train-iters 60 --log-interval 10 --eval-iters 2 --eval-interval 30 \
  --output-dir "$work/run" > "$work/out.txt" 2> "$work/err.txt"
check "training exits 0" "[ $? -eq 0 ]"
line_re='^ iteration +[0-9]+/ +60 \| consumed samples: +[0-9]+ \| consumed tokens: +[0-9]+ \| elapsed time per iteration \(ms\): [0-9.]+ \| learning rate: [0-9.]+E[-+][0-9]+ \| global batch size: +8 \| lm loss: [0-9.]+E[-+][0-9]+ \| loss scale: 1\.0 \| grad norm: [0-9.]+ \| actual seqlen: +32 \| number of skipped iterations: +0 \| number of nan iterations: +0 \| samples per second: [0-9.]+ \| tokens per gpu per second \(tgs\): [0-9.]+ \| TFLOPs: [0-9.]+ \|$'
check "six Megatron log lines" "[ \$(grep -cE '$line_re' $work/out.txt) -eq 6 ]"
check "consumed samples at iteration 60 is 480" "grep -q 'iteration       60/      60 | consumed samples:          480 | consumed tokens:        15360' $work/out.txt"
check "validation block printed twice" "[ \$(grep -c ' validation loss at ' $work/out.txt) -eq 2 ]"
check "metrics.jsonl has 6 records" "[ \$(wc -l < $work/run/metrics.jsonl) -eq 6 ]"
check "validation.jsonl has the two validation losses" "[ \$(wc -l < $work/run/validation.jsonl) -eq 2 ] && grep -q '^{\"iteration\": 30, \"lm_loss\": [0-9.e+-]*, \"lm_loss_ppl\": [0-9.e+-]*}\$' $work/run/validation.jsonl && grep -q '^{\"iteration\": 60, ' $work/run/validation.jsonl"
first=$(head -n1 "$work/run/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
last=$(tail -n1 "$work/run/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
check "loss falls ($first -> $last)" "awk -v a=$first -v b=$last 'BEGIN { exit !(b < a - 1.0) }'"
check "metrics carry both TFLOPS figures" "grep -q '\"tflops_megatron\": .*\"tflops_model\": ' $work/run/metrics.jsonl"

# YAML config with flags overriding it
cat > "$work/run.yaml" <<YAML
mock-data: true
vocab-size: 128
num-layers: 1
hidden-size: 32
num-attention-heads: 2
seq-length: 16
train-iters: 3
log-interval: 1
YAML
"$bin" --config "$work/run.yaml" --train-iters 2 --output-dir "$work/y" > "$work/y.txt" 2>&1
check "YAML run exits 0" "[ $? -eq 0 ]"
check "flag overrides YAML (2 iterations)" "grep -q 'iteration        2/       2' $work/y.txt && ! grep -q 'iteration        3/' $work/y.txt"
check "model line reflects YAML" "grep -q '1 layers, hidden 32, 2 heads' $work/y.txt"

# --model from the shipped table
"$bin" --model tiny --mock-data --vocab-size 64 --seq-length 16 --train-iters 1 --output-dir "$work/m" > "$work/m.txt" 2>&1
check "--model tiny loads configs/models/tiny.yaml" "grep -q '2 layers, hidden 128, 4 heads' $work/m.txt"

# bad input: one clear message, exit code 2
printf 'mock-data: true\nnum-layer: 3\n' > "$work/bad.yaml"
"$bin" --config "$work/bad.yaml" > "$work/bad.txt" 2>&1
rc=$?
check "unknown YAML key exits 2" "[ $rc -eq 2 ]"
check "unknown YAML key names file:line and key" "grep -q 'bad.yaml:2: unknown key .num-layer.' $work/bad.txt"
printf 'mock-data: true\ntrain-iters: -1\n' > "$work/range.yaml"
"$bin" --config "$work/range.yaml" > "$work/range.txt" 2>&1
check "a value refused after parsing names the YAML file and line it came from" "[ $? -eq 2 ] && grep -q -- '--train-iters must be >= 0, got -1 (--train-iters from .*range.yaml:2)' $work/range.txt"
"$bin" --config "$work/range.yaml" --train-iters 2 --output-dir "$work/range" > "$work/range2.txt" 2>&1
check "... and a flag overriding it is the value's source from then on" "[ $? -eq 0 ]"
printf 'mock-data: true\nlr: 0.1\nnum-layers: 2\nlr: 0.2\n' > "$work/twice.yaml"
"$bin" --config "$work/twice.yaml" > "$work/twice.txt" 2>&1
check "a YAML key given twice is refused naming both lines" "[ $? -eq 2 ] && grep -q \"twice.yaml:4: key 'lr' is given twice (also at line 2)\" $work/twice.txt"
"$bin" --config "$work" > "$work/cdir.txt" 2>&1
check "a directory as --config is named as one" "[ $? -eq 2 ] && grep -q 'is a directory, not a YAML config' $work/cdir.txt"
"$bin" --mock-data --hidden-size 66 --num-attention-heads 4 > "$work/bad2.txt" 2>&1
rc=$?
check "inconsistent shape exits 2 naming the flags" "[ $rc -eq 2 ] && grep -q 'hidden-size 66 is not divisible by --num-attention-heads 4' $work/bad2.txt"
"$bin" --mock-data --lr fast > "$work/bad3.txt" 2>&1
check "bad flag value is rejected" "[ $? -ne 0 ] && grep -q -- '--lr' $work/bad3.txt && grep -q 'fast' $work/bad3.txt"
"$bin" --num-layers 2 > "$work/bad4.txt" 2>&1
check "no data source is a clear error" "[ $? -eq 2 ] && grep -q 'no training data' $work/bad4.txt"

"$bin" --mock-data --micro-batch-size 0 > "$work/mb0.txt" 2>&1
check "--micro-batch-size 0 is refused by name, no crash" "[ $? -eq 2 ] && grep -q 'micro-batch-size must be >= 1, got 0' $work/mb0.txt"
"$bin" "${common[@]}" --train-iters 2 --eval-interval 1 --lr-decay-style inverse-square-root --log-throughput \
  --exit-signal-handler --attention-softmax-in-fp32 --dataloader-type cyclic --output-dir "$work/isr" > "$work/isr.txt" 2>&1
check "inverse-square-root decay and more of Megatron's no-op flags run; --eval-interval without --eval-iters is said" "[ $? -eq 0 ] && grep 'accepted for Megatron scripts, without effect here:' $work/isr.txt | grep -q -- '--attention-softmax-in-fp32' && grep 'without effect here:' $work/isr.txt | grep -q -- '--dataloader-type' && grep 'without effect here:' $work/isr.txt | grep -q -- '--exit-signal-handler' && grep -q 'eval-interval 1 without --eval-iters: no validation runs' $work/isr.txt"
"$bin" --mock-data --train-samples 1000 > "$work/ts.txt" 2>&1
check "Megatron's sample-based flags are refused with what to give instead" "[ $? -eq 2 ] && grep -q -- '--train-samples (Megatron.s) is not supported here: .*--train-iters' $work/ts.txt"
"$bin" --mock-data --num-layer 3 > "$work/unk.txt" 2>&1
check "an unknown flag is named with the closest known one" "[ $? -eq 2 ] && grep -q 'unknown option --num-layer (did you mean --num-layers?)' $work/unk.txt"
# Megatron's argparse: the last of a repeated option counts (a launcher appending an override)
"$bin" "${common[@]}" --train-iters 1 --num-attention-heads 2 --output-dir "$work/rep" > "$work/rep.txt" 2>&1
check "a repeated flag takes its last value, with a note" "[ $? -eq 0 ] && grep -q '2 layers, hidden 64, 2 heads' $work/rep.txt && grep -q -- '--num-attention-heads given more than once: the last counts' $work/rep.txt"
# what a save needs is checked before the training, not after it
echo x > "$work/afile"
"$bin" "${common[@]}" --train-iters 50 --log-interval 1 --save "$work/afile/ck" > "$work/sv.txt" 2>&1
check "--save under a regular file is refused before training" "[ $? -eq 2 ] && grep -q 'afile is not a directory' $work/sv.txt && ! grep -q 'iteration ' $work/sv.txt"
"$bin" "${common[@]}" --train-iters 50 --log-interval 1 --save "$work/tk" --tokenizer-model "$work/none.model" > "$work/tk.txt" 2>&1
check "a missing --tokenizer-model is refused before training when a save would copy it" "[ $? -eq 2 ] && grep -q 'tokenizer-model .*none.model: not found' $work/tk.txt && ! grep -q 'iteration ' $work/tk.txt"
# SIGINT during an iteration: said at once, the run ends at the iteration's end (exit 0); a copy
# of it within the second (a launcher forwarding what the terminal delivered) changes nothing; a
# user's second Ctrl-C a second or more later ends it at once (the signal's own status)
slow=(--mock-data --vocab-size 128 --num-layers 2 --hidden-size 64 --num-attention-heads 4
      --micro-batch-size 4 --global-batch-size 4 --train-iters 1000 --log-interval 1)
for n in 1 2 3; do
  seq=4096; [ $n -eq 3 ] && seq=8192
  "$bin" "${slow[@]}" --seq-length $seq --output-dir "$work/sig$n" > "$work/sig$n.txt" 2> "$work/sig$n.err" &
  pid=$!
  for _ in $(seq 300); do grep -q 'iteration  *1/' "$work/sig$n.txt" 2>/dev/null && break; sleep 0.1; done
  kill -INT $pid
  [ $n -eq 2 ] && sleep 0.2 && kill -INT $pid
  [ $n -eq 3 ] && sleep 1.3 && kill -INT $pid
  wait $pid
  echo $? > "$work/sig$n.rc"
done
check "a first SIGINT is said at once and ends the run at the iteration's end" "[ \$(cat $work/sig1.rc) -eq 0 ] && grep -q 'stopping at the end of this iteration' $work/sig1.err && grep -q 'exiting at iteration .* (SIGINT)' $work/sig1.txt"
check "a second SIGINT within the second (a forwarded copy) still ends cleanly" "[ \$(cat $work/sig2.rc) -eq 0 ] && grep -q 'exiting at iteration .* (SIGINT)' $work/sig2.txt"
check "a second Ctrl-C a second later ends the run at once" "[ \$(cat $work/sig3.rc) -eq 130 ] && ! grep -q 'exiting at iteration' $work/sig3.txt"

"$bin" --help > "$work/help.txt" 2>&1
check "--help lists flags with defaults" "grep -q -- '--num-attention-heads' $work/help.txt && grep -q -- '--lr-decay-style' $work/help.txt && grep -q 'cosine' $work/help.txt && grep -q 'Example' $work/help.txt"

# checkpoints: 8 straight == 4 + resume + 4, bit for bit in the log
"$bin" "${common[@]}" --train-iters 8 --log-interval 1 --output-dir "$work/s" > "$work/straight.txt" 2>&1
"$bin" "${common[@]}" --train-iters 8 --log-interval 1 --exit-interval 4 --save "$work/ck" --output-dir "$work/r1" > "$work/part1.txt" 2>&1
check "--exit-interval saves and exits" "grep -q 'saved checkpoint .*iter_0000004' $work/part1.txt && grep -q 'exiting at iteration 4' $work/part1.txt && [ \$(cat $work/ck/latest) = 4 ]"
"$bin" "${common[@]}" --train-iters 8 --log-interval 1 --load "$work/ck" --save "$work/ck" --output-dir "$work/r2" > "$work/part2.txt" 2>&1
check "resume continues after iteration 4" "grep -q 'continuing after iteration 4' $work/part2.txt"
check "resumed losses equal the straight run's bit for bit" "[ \$(grep -c 'lm loss: ' $work/straight.txt) -eq 8 ] && diff <(grep -o 'lm loss: [^|]*' $work/straight.txt) <(cat $work/part1.txt $work/part2.txt | grep -o 'lm loss: [^|]*') > /dev/null"
# Megatron scripts' flags that change nothing here are accepted and named; --sequence-parallel at
# TP 1 is off, as in Megatron
"$bin" "${common[@]}" --train-iters 2 --log-interval 1 --no-bias-gelu-fusion --deepspeed_mpi --optimizer adamw \
  --sequence-parallel --output-dir "$work/ign" > "$work/ign.txt" 2>&1
check "Megatron's no-op flags are accepted and named; --sequence-parallel at TP 1 is off" "[ $? -eq 0 ] && grep -q 'accepted for Megatron scripts, without effect here: --deepspeed-mpi --no-bias-gelu-fusion --optimizer' $work/ign.txt && grep -q 'sequence-parallel: off at --tensor-model-parallel-size 1' $work/ign.txt && diff <(grep -o 'lm loss: [^|]*' $work/straight.txt | head -2) <(grep -o 'lm loss: [^|]*' $work/ign.txt) > /dev/null"
# a DeepSpeed JSON as ALCF's launchers write it: its batch, ZeRO and clipping fields set the run
printf '{\n  "train_batch_size": 8,\n  "train_micro_batch_size_per_gpu": 4,\n  "gradient_accumulation_steps": 2,\n  "gradient_clipping": 1.0,\n  "zero_optimization": {"stage": 0},\n  "steps_per_print": 1,\n  "wall_clock_breakdown": false\n}\n' > "$work/ds.json"
"$bin" "${common[@]}" --train-iters 2 --log-interval 1 --deepspeed --deepspeed_config "$work/ds.json" --output-dir "$work/ds" > "$work/ds.txt" 2>&1
check "--deepspeed_config: its fields set the run (the same curve), the rest named" "[ $? -eq 0 ] && grep -q 'ds.json: ZeRO stage 0, fp32, clip 1, micro-batch 4, global batch 8; without effect here: steps_per_print wall_clock_breakdown' $work/ds.txt && diff <(grep -o 'lm loss: [^|]*' $work/straight.txt | head -2) <(grep -o 'lm loss: [^|]*' $work/ds.txt) > /dev/null"
"$bin" "${common[@]}" --train-iters 1 --zero-stage 1 --deepspeed_config "$work/ds.json" > "$work/ds2.txt" 2>&1
check "--deepspeed_config against a flag that says otherwise: an error naming both" "[ $? -eq 2 ] && grep -q \"ds.json:6: 'zero_optimization.stage' is 0 but --zero-stage is 1\" $work/ds2.txt"
sed 's/"stage": 0/"stage": 9/' "$work/ds.json" > "$work/ds9.json"
"$bin" "${common[@]}" --train-iters 1 --deepspeed_config "$work/ds9.json" > "$work/ds9.txt" 2>&1
check "a DeepSpeed JSON value refused by the checks is named by file, line and key" "[ $? -eq 2 ] && grep -q \"ds9.json:6: 'zero_optimization.stage' must be an integer from 0 to 3 (or \\\"auto\\\"), got 9\" $work/ds9.txt"
# a save root with a complete iteration but no 'latest' (a first save killed between the two):
# named, not overwritten by a fresh start
mkdir -p "$work/nolatest" && cp -r "$work/ck/iter_0000004" "$work/nolatest/"
"$bin" "${common[@]}" --train-iters 6 --load "$work/nolatest" --save "$work/nolatest" > "$work/nl.txt" 2>&1
check "complete iterations without 'latest' are named instead of overwritten" "[ $? -eq 2 ] && grep -q \"no 'latest' file, but .*iter_0000004 is a complete checkpoint\" $work/nl.txt && [ ! -e $work/nolatest/latest ]"
"$bin" "${common[@]}" --train-iters 1 --hidden-dropout 0.1 > "$work/drop.txt" 2>&1
check "a non-zero dropout is refused by name" "[ $? -eq 2 ] && grep -q 'the model has no dropout' $work/drop.txt"
"$bin" "${common[@]}" --train-iters 1 --micro-batch-size 100000000 --global-batch-size 100000000 > "$work/huge.txt" 2>&1
check "a run far beyond the machine's memory is refused before allocating, naming the estimate and the flags" "[ $? -eq 2 ] && grep -q 'out of host memory (predicted before allocating): this run needs about .* GiB per rank (the performance model: model states .*lower --micro-batch-size' $work/huge.txt && ! grep -q 'lm loss' $work/huge.txt"
# --load on a directory without a checkpoint (ALCF's helpers point it at the run directory):
# a note and a fresh start, as Megatron; an error under --exit-on-missing-checkpoint or --finetune
mkdir -p "$work/runfiles/tensorboard" && echo x > "$work/runfiles/.env"
"$bin" "${common[@]}" --train-iters 1 --load "$work/runfiles" --output-dir "$work/rf" > "$work/rf.txt" 2>&1
check "--load without a checkpoint starts from scratch with a note" "[ $? -eq 0 ] && grep -q 'no checkpoint found, starting from scratch (the directory holds other files' $work/rf.txt"
"$bin" "${common[@]}" --train-iters 1 --load "$work/runfiles" --exit-on-missing-checkpoint > "$work/rf2.txt" 2>&1
check "--exit-on-missing-checkpoint makes it an error" "[ $? -eq 2 ] && grep -q 'no checkpoint here' $work/rf2.txt"
"$bin" "${common[@]}" --train-iters 1 --load "$work/runfiles" --finetune > "$work/rf3.txt" 2>&1
check "--finetune needs a checkpoint to finetune from" "[ $? -eq 2 ] && grep -q 'to finetune from' $work/rf3.txt"
# a first save killed mid-way leaves only its staging directory: the restart starts from scratch
mkdir -p "$work/killed/iter_0000002.tmp-4242-dead"
"$bin" "${common[@]}" --train-iters 2 --log-interval 1 --save-interval 2 --load "$work/killed" --save "$work/killed" --output-dir "$work/rk" > "$work/killed.txt" 2>&1
rc=$?
check "a save root holding only a dead first save's staging starts from scratch and saves" "[ $rc -eq 0 ] && grep -q 'no checkpoint found, starting from scratch' $work/killed.txt && [ \"\$(cat $work/killed/latest)\" = 2 ] && [ ! -e $work/killed/iter_0000002.tmp-4242-dead ]"
sums() { (cd "$1" && find . -type f | sort | xargs md5sum); }
sums "$work/ck" > "$work/ck.sums"
"$bin" "${common[@]}" --train-iters 8 --log-interval 1 --load "$work/ck" --save "$work/ck" --no-load-optim --output-dir "$work/r2b" > "$work/part2b.txt" 2>&1
rc=$?
check "a resume with nothing left to train leaves the checkpoint as it was" "[ $rc -eq 0 ] && grep -q 'continuing after iteration 8' $work/part2b.txt && ! grep -q 'saved checkpoint' $work/part2b.txt && diff $work/ck.sums <(sums $work/ck) > /dev/null"
# a run that loads none of a save root's checkpoints would move its 'latest' away from them: refused
"$bin" "${common[@]}" --train-iters 2 --log-interval 1 --save "$work/ck" --output-dir "$work/fresh" > "$work/fresh.txt" 2>&1
rc=$?
check "a fresh run into a save root holding checkpoints is refused before training, the root unchanged" "[ $rc -eq 2 ] && grep -q 'already holds checkpoints (the newest: .*iter_0000008).*This run loads none of them: pass --load' $work/fresh.txt && ! grep -q 'lm loss' $work/fresh.txt && diff $work/ck.sums <(sums $work/ck) > /dev/null"
sums "$work/ck" > "$work/ck.sums"
"$bin" "${common[@]}" --train-iters 2 --log-interval 1 --load "$work/ck" --finetune --save "$work/ck" --output-dir "$work/ftself" > "$work/ftself.txt" 2>&1
check "a --finetune into the root it loads from is refused before loading (its iterations start again at 0)" "[ $? -eq 2 ] && grep -q 'This run finetunes (its iterations start again at 0): to continue the run saved there, pass --load .*ck without --finetune' $work/ftself.txt && ! grep -q 'loaded ' $work/ftself.txt && diff $work/ck.sums <(sums $work/ck) > /dev/null"
# --keep-last after a resume from an earlier checkpoint of the root prunes only older ones
cp -r "$work/ck" "$work/ckb"
"$bin" "${common[@]}" --train-iters 8 --log-interval 1 --exit-interval 6 --load "$work/ckb/iter_0000004" --save "$work/ckb" --keep-last 1 --output-dir "$work/kl" > "$work/kl.txt" 2>&1
check "--keep-last keeps the checkpoints newer than the one saved" "[ $? -eq 0 ] && [ \"\$(ls $work/ckb | tr '\n' ' ')\" = 'iter_0000006 iter_0000008 latest ' ] && [ \"\$(cat $work/ckb/latest)\" = 6 ]"
"$bin" "${common[@]}" --train-iters 2 --clip-grad inf > "$work/inf.txt" 2>&1
check "a non-finite number is refused by flag (JSON metadata could not hold it)" "[ $? -eq 2 ] && grep -q -- \"--clip-grad: expected a finite number, got 'inf'\" $work/inf.txt"
"$bin" "${common[@]}" --train-iters 10 --log-interval 1 --load "$work/ck" --output-dir "$work/r2c" > "$work/part2c.txt" 2>&1
rc=$?
check "extending --train-iters moves the decay: refused on resume, naming the key and the flags" "[ $rc -eq 2 ] && grep -q 'decay_iters 8 but this run.s is 10' $work/part2c.txt && grep -q -- '--use-checkpoint-opt_param-scheduler' $work/part2c.txt"
"$bin" "${common[@]}" --train-iters 10 --log-interval 1 --load "$work/ck" --use-checkpoint-opt_param-scheduler --output-dir "$work/r2d" > "$work/part2d.txt" 2>&1
check "--use-checkpoint-opt_param-scheduler continues the checkpoint's schedule" "[ $? -eq 0 ] && [ \$(grep -c 'lm loss' $work/part2d.txt) -eq 2 ]"
"$bin" "${common[@]}" --train-iters 100000 --log-interval 1 --save "$work/sig" --output-dir "$work/r3" > "$work/sig.txt" 2>&1 &
pid=$!
for _ in $(seq 1 100); do grep -q 'iteration        3/' "$work/sig.txt" 2>/dev/null && break; sleep 0.1; done
kill -TERM $pid
wait $pid
rc=$?
check "SIGTERM saves at the iteration boundary and exits 0" "[ $rc -eq 0 ] && grep -q 'exiting at iteration [0-9]* (SIGTERM)' $work/sig.txt && [ -f $work/sig/iter_\$(printf %07d \$(cat $work/sig/latest))/metadata.json ]"
"$bin" --mock-data --vocab-size 128 --num-layers 2 --hidden-size 32 --num-attention-heads 2 --seq-length 32 \
  --train-iters 2 --load "$work/ck" --output-dir "$work/r4" > "$work/mismatch.txt" 2>&1
check "loading into a different model names the key" "[ $? -eq 2 ] && grep -q 'hidden_size is 64 but the model.s is 32' $work/mismatch.txt"

# the output layer and loss in chunks of 48 of the 128 tokens per micro-batch: the same curve
# (only the order in which wte's gradient sums the chunks differs)
"$bin" "${common[@]}" --train-iters 8 --log-interval 1 --logits-chunk-tokens 48 --output-dir "$work/lc" > "$work/chunks.txt" 2>&1
check "--logits-chunk-tokens 48 reproduces the losses (rel 1e-5)" "paste <(grep -o 'lm loss: [^ ]*' $work/straight.txt | cut -d' ' -f3) <(grep -o 'lm loss: [^ ]*' $work/chunks.txt | cut -d' ' -f3) | awk 'BEGIN{n=0} {n++; if (\$1 !~ /^-?[0-9]/ || \$2 !~ /^-?[0-9]/) bad=1; d=\$1-\$2; if (d<0) d=-d; if (d > 1e-5*\$1) bad=1} END{exit !(n==8 && !bad)}'"
check "the activation line gives the logits' share, whole and in chunks" "grep -q '^> activation buffers per rank: .* MB, the logits 0.1 MB of them\$' $work/straight.txt && grep -q 'the logits 0.0 MB of them (in chunks of 48 tokens)' $work/chunks.txt"
"$bin" "${common[@]}" --train-iters 1 --logits-chunk-tokens -5 > "$work/lcbad.txt" 2>&1
check "a negative --logits-chunk-tokens is named" "[ $? -eq 2 ] && grep -q 'logits-chunk-tokens must be >= 0' $work/lcbad.txt"

# full activation recompute: the same losses bit for bit
"$bin" "${common[@]}" --train-iters 8 --log-interval 1 --recompute-granularity full --output-dir "$work/rc" > "$work/recompute.txt" 2>&1
check "--recompute-granularity full reproduces the losses bit for bit" "diff <(grep -o 'lm loss: [^|]*' $work/straight.txt) <(grep -o 'lm loss: [^|]*' $work/recompute.txt) > /dev/null && [ \$(grep -c 'lm loss' $work/recompute.txt) -eq 8 ]"
"$bin" "${common[@]}" --train-iters 1 --recompute-granularity some > "$work/rcbad.txt" 2>&1
check "a bad --recompute-granularity is named" "[ $? -eq 2 ] && grep -q 'recompute-granularity must be full or selective' $work/rcbad.txt"

# Megatron's flash-attention switches are accepted and change nothing (attention is always flash-style).
"$bin" "${common[@]}" --train-iters 2 --log-interval 1 --use-flash-attn --use-flash-attn-v2 --output-dir "$work/fa" > "$work/fa.txt" 2>&1
check "--use-flash-attn / --use-flash-attn-v2 are accepted and give the same losses" "[ $? -eq 0 ] && diff <(grep -o 'lm loss: [^|]*' $work/straight.txt | head -2) <(grep -o 'lm loss: [^|]*' $work/fa.txt) > /dev/null"

# A plain process runs without MPI (no singleton MPI_Init, whose Open MPI daemon a bundle or a
# machine without MPI lacks): an Open MPI prefix pointing nowhere does not matter to it, while
# LLM_MPI=1 (forcing the singleton) fails on it.
OPAL_PREFIX=/nonexistent "$bin" "${common[@]}" --train-iters 2 --log-interval 1 --output-dir "$work/nompi" > "$work/nompi.txt" 2>&1
check "a plain process trains without an MPI runtime" "[ $? -eq 0 ] && [ \$(grep -c 'lm loss' $work/nompi.txt) -eq 2 ]"
OPAL_PREFIX=/nonexistent LLM_MPI=1 timeout 60 "$bin" "${common[@]}" --train-iters 1 --output-dir "$work/forced" > "$work/forced.txt" 2>&1
check "LLM_MPI=1 forces MPI (and so fails without its runtime)" "[ $? -ne 0 ] && grep -q 'MPI_Init' $work/forced.txt && ! grep -q 'lm loss' $work/forced.txt"

# mpirun -np 1 runs unchanged and gives the same losses
if command -v mpirun > /dev/null; then
  export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
  "$bin" "${common[@]}" --train-iters 4 --log-interval 1 --output-dir "$work/p" > "$work/plain.txt" 2>&1
  mpirun -np 1 "$bin" "${common[@]}" --train-iters 4 --log-interval 1 --output-dir "$work/q" > "$work/mpi.txt" 2>&1
  check "mpirun -np 1 exits 0" "[ $? -eq 0 ]"
  check "mpirun -np 1 gives the same losses" "diff <(grep -o 'lm loss: [^|]*' $work/plain.txt) <(grep -o 'lm loss: [^|]*' $work/mpi.txt) > /dev/null && [ \$(grep -c 'lm loss' $work/mpi.txt) -eq 4 ]"
  # Data parallelism: 2 and 4 ranks reproduce the single-process loss curve to fp32 round-off
  # (relative 1e-5; the gradient sums differ only in summation order).
  dp=(--mock-data --vocab-size 128 --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32
      --micro-batch-size 2 --global-batch-size 8 --lr 3e-3 --seed 3 --train-iters 8 --log-interval 1)
  OMP_NUM_THREADS=1 "$bin" "${dp[@]}" --output-dir "$work/dp1" > /dev/null 2>&1
  for n in 2 4; do
    OMP_NUM_THREADS=1 mpirun -np $n "$bin" "${dp[@]}" --output-dir "$work/dp$n" > "$work/dp$n.txt" 2>&1
    check "mpirun -np $n (data parallel) exits 0" "[ $? -eq 0 ] && grep -q 'x $((4 / n)) accumulation steps x $n data-parallel ranks' $work/dp$n.txt"
    check "data parallel $n reproduces the single-process losses (rel 1e-5)" "paste <(grep -o '\"lm_loss\": [^,]*' $work/dp1/metrics.jsonl | cut -d' ' -f2) <(grep -o '\"lm_loss\": [^,]*' $work/dp$n/metrics.jsonl | cut -d' ' -f2) | awk 'BEGIN{n=0} {n++; if (\$1 !~ /^-?[0-9]/ || \$2 !~ /^-?[0-9]/) bad=1; d=\$1-\$2; if (d<0) d=-d; if (d > 1e-5*\$1) bad=1} END{exit !(n==8 && !bad)}'"
  done
  # ZeRO stage 1: optimizer state sharded over the replicas, same losses
  OMP_NUM_THREADS=1 mpirun -np 2 "$bin" "${dp[@]}" --zero-stage 1 --output-dir "$work/z1" > "$work/z1.txt" 2>&1
  check "ZeRO-1 over 2 ranks halves the optimizer state" "[ $? -eq 0 ] && grep -q 'optimizer state: .* MB per rank (ZeRO stage 1 over 2 data-parallel ranks)' $work/z1.txt"
  check "ZeRO-1 reproduces the single-process losses (rel 1e-5)" "paste <(grep -o '\"lm_loss\": [^,]*' $work/dp1/metrics.jsonl | cut -d' ' -f2) <(grep -o '\"lm_loss\": [^,]*' $work/z1/metrics.jsonl | cut -d' ' -f2) | awk 'BEGIN{n=0} {n++; if (\$1 !~ /^-?[0-9]/ || \$2 !~ /^-?[0-9]/) bad=1; d=\$1-\$2; if (d<0) d=-d; if (d > 1e-5*\$1) bad=1} END{exit !(n==8 && !bad)}'"
  OMP_NUM_THREADS=1 mpirun -np 2 "$bin" "${dp[@]}" --zero-stage 1 --exit-interval 4 --save "$work/z1ck" --output-dir "$work/z1a" > /dev/null 2>&1
  OMP_NUM_THREADS=1 mpirun -np 2 "$bin" "${dp[@]}" --load "$work/z1ck" --output-dir "$work/z1b" > "$work/z1b.txt" 2>&1
  check "a ZeRO-1 checkpoint resumes without ZeRO on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/z1b.txt && paste <(grep -o '\"lm_loss\": [^,]*' $work/dp1/metrics.jsonl | cut -d' ' -f2) <(cat $work/z1a/metrics.jsonl $work/z1b/metrics.jsonl | grep -o '\"lm_loss\": [^,]*' | cut -d' ' -f2) | awk 'BEGIN{n=0} {n++; if (\$1 !~ /^-?[0-9]/ || \$2 !~ /^-?[0-9]/) bad=1; d=\$1-\$2; if (d<0) d=-d; if (d > 1e-5*\$1) bad=1} END{exit !(n==8 && !bad)}'"
  OMP_NUM_THREADS=1 mpirun -np 2 "$bin" "${dp[@]}" --zero-stage 1 --timing-log-level 1 --exit-interval 2 --output-dir "$work/tl" > "$work/timers.txt" 2>&1
  check "--timing-log-level 1 prints the (min, max) timer block" "[ \$(grep -c '^(min, max) time across ranks (ms):' $work/timers.txt) -eq 2 ] && grep -qE '^    forward-backward \\.+: \\([0-9.]+, [0-9.]+\\)' $work/timers.txt && grep -q '^    grads-all-reduce \\.' $work/timers.txt && grep -q '^    params-all-gather \\.' $work/timers.txt"
  # A checkpoint saved under DP 2 resumes on one process and continues the same curve.
  OMP_NUM_THREADS=1 mpirun -np 2 "$bin" "${dp[@]}" --exit-interval 4 --save "$work/dpck" --output-dir "$work/dpa" > "$work/dpa.txt" 2>&1
  OMP_NUM_THREADS=1 "$bin" "${dp[@]}" --load "$work/dpck" --output-dir "$work/dpb" > "$work/dpb.txt" 2>&1
  check "DP 2 checkpoint resumes on 1 process on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/dpb.txt && paste <(grep -o '\"lm_loss\": [^,]*' $work/dp1/metrics.jsonl | cut -d' ' -f2) <(cat $work/dpa/metrics.jsonl $work/dpb/metrics.jsonl | grep -o '\"lm_loss\": [^,]*' | cut -d' ' -f2) | awk 'BEGIN{n=0} {n++; if (\$1 !~ /^-?[0-9]/ || \$2 !~ /^-?[0-9]/) bad=1; d=\$1-\$2; if (d<0) d=-d; if (d > 1e-5*\$1) bad=1} END{exit !(n==8 && !bad)}'"
  # Tensor parallelism (Megatron: column/row-parallel layers, vocab-parallel embedding and loss),
  # with sequence parallelism, recompute, ZeRO-1 and data parallelism on top: the same curve.
  # (Vocabulary padding to 16 x tp keeps a real token in every vocabulary shard; padding does
  # not change the loss.)
  near_curve() {  # relative tolerance, reference metrics, then the metrics files of a run in order
    local tol=$1 ref=$2; shift 2
    paste <(grep -o '"lm_loss": [^,]*' "$ref" | cut -d' ' -f2) <(cat "$@" | grep -o '"lm_loss": [^,]*' | cut -d' ' -f2) |
      awk -v tol="$tol" 'BEGIN{n=0} {n++; if ($1 !~ /^-?[0-9]/ || $2 !~ /^-?[0-9]/) bad=1; d=$1-$2; if (d<0) d=-d; if (d > tol*$1) bad=1} END{exit !(n==8 && !bad)}'
  }
  same_curve() { near_curve 1e-5 "$@"; }  # fp32 round-off
  tp=(--make-vocab-size-divisible-by 16)
  run_layout() {  # name np flags...
    local name=$1 np=$2; shift 2
    OMP_NUM_THREADS=1 mpirun -np "$np" "$bin" "${dp[@]}" "${tp[@]}" "$@" --output-dir "$work/$name" > "$work/$name.txt" 2>&1
  }
  run_layout tp2 2 --tensor-model-parallel-size 2
  check "TP 2 runs and reports its layout" "[ $? -eq 0 ] && grep -q 'layout: world 2 = data 1 x tensor 2 x pipeline 1' $work/tp2.txt"
  check "TP 2 reproduces the single-process losses (rel 1e-5)" "same_curve $work/dp1/metrics.jsonl $work/tp2/metrics.jsonl"
  run_layout tp2sp 2 --tensor-model-parallel-size 2 --sequence-parallel --recompute-granularity full
  check "TP 2 + Megatron SP + full recompute reproduces the single-process losses (rel 1e-5)" "grep -q 'Megatron sequence parallel' $work/tp2sp.txt && same_curve $work/dp1/metrics.jsonl $work/tp2sp/metrics.jsonl"
  run_layout tp4 4 --tensor-model-parallel-size 4 --sequence-parallel
  check "TP 4 + SP reproduces the single-process losses (rel 1e-5)" "same_curve $work/dp1/metrics.jsonl $work/tp4/metrics.jsonl"
  run_layout dp2tp2 4 --tensor-model-parallel-size 2 --zero-stage 1 --exit-interval 4 --save "$work/tpck"
  check "DP 2 x TP 2 with ZeRO-1 saves a checkpoint at iteration 4" "grep -q 'saved checkpoint' $work/dp2tp2.txt && grep -q 'layout: world 4 = data 2 x tensor 2' $work/dp2tp2.txt"
  OMP_NUM_THREADS=1 "$bin" "${dp[@]}" --load "$work/tpck" --output-dir "$work/tpb" > "$work/tpb.txt" 2>&1
  check "a DP 2 x TP 2 checkpoint resumes on 1 process on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/tpb.txt && same_curve $work/dp1/metrics.jsonl $work/dp2tp2/metrics.jsonl $work/tpb/metrics.jsonl"
  OMP_NUM_THREADS=1 "$bin" "${dp[@]}" --exit-interval 4 --save "$work/one" --output-dir "$work/onea" > /dev/null 2>&1
  run_layout tpc 2 --tensor-model-parallel-size 2 --sequence-parallel --load "$work/one"
  check "a single-process checkpoint resumes under TP 2 + SP on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/tpc.txt && same_curve $work/dp1/metrics.jsonl $work/onea/metrics.jsonl $work/tpc/metrics.jsonl"
  "$(dirname "$bin")/llm-ckpt" verify "$work/tpck" > "$work/verify.txt" 2>&1
  check "llm-ckpt verify accepts the tensor-parallel checkpoint (pieces cover every tensor once)" "[ $? -eq 0 ]"
  # Ulysses sequence parallelism (all-to-all around attention), alone and with DP, ZeRO-1 and TP.
  run_layout sp2 2 --ds-sequence-parallel-size 2 --sequence-parallel  # (Megatron SP at TP 1: off, as ALCF's scripts pass it)
  check "Ulysses SP 2 reproduces the single-process losses (rel 1e-5)" "grep -q 'x Ulysses sequence 2' $work/sp2.txt && same_curve $work/dp1/metrics.jsonl $work/sp2/metrics.jsonl"
  check "--sequence-parallel at TP 1 beside Ulysses is off with a note, not refused" "grep -q 'sequence-parallel: off at --tensor-model-parallel-size 1' $work/sp2.txt"
  run_layout sp4 4 --ds-sequence-parallel-size 4 --recompute-granularity full
  check "Ulysses SP 4 + full recompute reproduces the single-process losses (rel 1e-5)" "same_curve $work/dp1/metrics.jsonl $work/sp4/metrics.jsonl"
  run_layout dp2sp2 4 --ds-sequence-parallel-size 2 --zero-stage 1 --exit-interval 4 --save "$work/spck"
  check "DP 2 x Ulysses 2 with ZeRO-1 saves at iteration 4 on the same curve" "grep -q 'data 2 x tensor 1 x pipeline 1 x Ulysses sequence 2' $work/dp2sp2.txt && grep -q 'saved checkpoint' $work/dp2sp2.txt"
  run_layout tp2sp2 4 --tensor-model-parallel-size 2 --ds-sequence-parallel-size 2 --load "$work/spck"
  check "the DP 2 x Ulysses 2 checkpoint resumes under TP 2 x Ulysses 2 on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/tp2sp2.txt && same_curve $work/dp1/metrics.jsonl $work/dp2sp2/metrics.jsonl $work/tp2sp2/metrics.jsonl"
  check "every layout's measured communication equals the analytic volume" "(for f in tp2 tp2sp tp4 dp2tp2 sp2 sp4 dp2sp2 tp2sp2; do grep -q 'communication per iteration on rank 0' $work/\$f.txt || exit 1; done) && ! grep -q MISMATCH $work/tp2.txt $work/tp2sp.txt $work/tp4.txt $work/dp2tp2.txt $work/sp2.txt $work/sp4.txt $work/dp2sp2.txt $work/tp2sp2.txt"
  # Pipeline parallelism (1F1B over 4 micro-batches), alone and with TP + SP, Ulysses, DP + ZeRO-1,
  # recompute, DP 2 x TP 2 x PP 2 on 8 ranks, and checkpoints across layouts. Four layers so
  # that four stages get one each.
  pp=(--mock-data --vocab-size 128 --make-vocab-size-divisible-by 16 --num-layers 4 --hidden-size 64
      --num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 8 --lr 3e-3 --seed 3
      --train-iters 8 --log-interval 1)
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --output-dir "$work/pp1" > /dev/null 2>&1
  run_pp() {  # name np flags...
    local name=$1 np=$2; shift 2
    OMP_NUM_THREADS=1 timeout 300 mpirun -np "$np" "$bin" "${pp[@]}" "$@" --output-dir "$work/$name" > "$work/$name.txt" 2>&1
  }
  run_pp pp2 2 --pipeline-model-parallel-size 2 --timing-log-level 1
  check "PP 2 runs, reports its layout and the pipeline timer" "[ $? -eq 0 ] && grep -q 'layout: world 2 = data 1 x tensor 1 x pipeline 2' $work/pp2.txt && grep -q '^    pipeline-send-recv \\.' $work/pp2.txt"
  check "PP 2 reproduces the single-process losses (rel 1e-5)" "same_curve $work/pp1/metrics.jsonl $work/pp2/metrics.jsonl"
  run_pp pp4 4 --pipeline-model-parallel-size 4 --recompute-granularity full
  check "PP 4 (4 micro-batches) + full recompute reproduces the single-process losses (rel 1e-5)" "same_curve $work/pp1/metrics.jsonl $work/pp4/metrics.jsonl"
  run_pp pp2tp2 4 --pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 --sequence-parallel
  check "PP 2 x TP 2 + Megatron SP reproduces the single-process losses (rel 1e-5)" "same_curve $work/pp1/metrics.jsonl $work/pp2tp2/metrics.jsonl"
  run_pp pp2sp2 4 --pipeline-model-parallel-size 2 --ds-sequence-parallel-size 2
  check "PP 2 x Ulysses 2 reproduces the single-process losses (rel 1e-5)" "same_curve $work/pp1/metrics.jsonl $work/pp2sp2/metrics.jsonl"
  run_pp dp2tp2pp2 8 --pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 --zero-stage 1
  check "DP 2 x TP 2 x PP 2 (8 ranks, ZeRO-1) reproduces the single-process losses (rel 1e-5)" "grep -q 'layout: world 8 = data 2 x tensor 2 x pipeline 2' $work/dp2tp2pp2.txt && same_curve $work/pp1/metrics.jsonl $work/dp2tp2pp2/metrics.jsonl"
  run_pp dp2pp2 4 --pipeline-model-parallel-size 2 --zero-stage 1 --exit-interval 4 --save "$work/ppck"
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --load "$work/ppck" --output-dir "$work/ppb" > "$work/ppb.txt" 2>&1
  check "a DP 2 x PP 2 checkpoint resumes on 1 process on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/ppb.txt && same_curve $work/pp1/metrics.jsonl $work/dp2pp2/metrics.jsonl $work/ppb/metrics.jsonl"
  "$(dirname "$bin")/llm-ckpt" verify "$work/ppck" > "$work/ppverify.txt" 2>&1
  check "llm-ckpt verify accepts the pipeline checkpoint" "[ $? -eq 0 ]"
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --exit-interval 4 --save "$work/pp1ck" --output-dir "$work/pp1a" > /dev/null 2>&1
  run_pp ppc 4 --pipeline-model-parallel-size 4 --load "$work/pp1ck" --eval-iters 2 --eval-interval 100
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --load "$work/pp1ck" --eval-iters 2 --eval-interval 100 --output-dir "$work/pp1c" > "$work/pp1c.txt" 2>&1
  check "a single-process checkpoint resumes under PP 4 on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/ppc.txt && same_curve $work/pp1/metrics.jsonl $work/pp1a/metrics.jsonl $work/ppc/metrics.jsonl"
  check "pipelined evaluation gives the single-process validation loss (rel 1e-5)" "paste <(grep -o 'lm loss value: [^ ]*' $work/ppc.txt | cut -d' ' -f4) <(grep -o 'lm loss value: [^ ]*' $work/pp1c.txt | cut -d' ' -f4) | awk 'BEGIN{n=0} {n++; if (\$1 !~ /^-?[0-9]/ || \$2 !~ /^-?[0-9]/) bad=1; d=\$1-\$2; if (d<0) d=-d; if (d > 1e-5*\$1) bad=1} END{exit !(n==1 && !bad)}'"
  check "pipeline layouts' measured communication equals the analytic volume" "(for f in pp2 pp4 pp2tp2 pp2sp2 dp2tp2pp2 dp2pp2; do grep -q 'pipeline  *send/recv' $work/\$f.txt || exit 1; done) && ! grep -q MISMATCH $work/pp2.txt $work/pp4.txt $work/pp2tp2.txt $work/pp2sp2.txt $work/dp2tp2pp2.txt $work/dp2pp2.txt"
  # ZeRO stages 2 and 3 (gradients, then parameters, sharded; layers gathered when used), with data
  # parallelism, tensor parallelism + SP and pipelines, evaluation, and checkpoints both ways.
  run_pp ov 4 --overlap-grad-reduce --ddp-bucket-size 1 --pipeline-model-parallel-size 2 --tensor-model-parallel-size 1
  check "DP 2 x PP 2 with --overlap-grad-reduce (a bucket per layer) reproduces the single-process losses (rel 1e-5)" "grep -q 'gradient reduction: 2 buckets' $work/ov.txt && same_curve $work/pp1/metrics.jsonl $work/ov/metrics.jsonl && ! grep -q MISMATCH $work/ov.txt"
  run_pp z2 2 --zero-stage 2
  check "ZeRO-2 over 2 ranks reproduces the single-process losses (rel 1e-5)" "same_curve $work/pp1/metrics.jsonl $work/z2/metrics.jsonl"
  run_pp z2ov 2 --zero-stage 2 --overlap-grad-reduce
  run_pp z1ov 2 --zero-stage 1 --overlap-grad-reduce --overlap-param-gather
  check "ZeRO-1 with the post-step all-gather finished layer by layer (--overlap-param-gather): the same curve and volume" "grep -q 'parameter all-gather after the step: started layer by layer' $work/z1ov.txt && same_curve $work/pp1/metrics.jsonl $work/z1ov/metrics.jsonl && ! grep -q MISMATCH $work/z1ov.txt"
  check "ZeRO-2 with --overlap-grad-reduce (each layer's reduce-scatter during the next one's backward): the same curve and volume" "grep -q 'reduce-scatter runs while the next layer' $work/z2ov.txt && same_curve $work/pp1/metrics.jsonl $work/z2ov/metrics.jsonl && grep -q 'data-parallel  *reduce-scatter' $work/z2ov.txt && ! grep -q MISMATCH $work/z2ov.txt"
  run_pp z3 4 --zero-stage 3 --eval-iters 2 --eval-interval 100
  check "ZeRO-3 over 4 ranks reproduces the single-process losses (rel 1e-5)" "same_curve $work/pp1/metrics.jsonl $work/z3/metrics.jsonl && grep -q 'lm loss value' $work/z3.txt"
  p0=$(grep -o 'model states per rank: parameters [0-9.]*' "$work/z2.txt" | grep -o '[0-9.]*$')
  p3=$(grep -o 'model states per rank: parameters [0-9.]*' "$work/z3.txt" | grep -o '[0-9.]*$')
  check "ZeRO-3 holds fewer parameter bytes per rank ($p3 MB) than a replica ($p0 MB, ZeRO-2)" "[ -n '$p3' ] && awk -v a='$p3' -v b='$p0' 'BEGIN{exit !(a < b)}'"
  run_pp z3tp 4 --zero-stage 3 --tensor-model-parallel-size 2 --sequence-parallel --recompute-granularity full
  check "ZeRO-3 x TP 2 + SP + recompute reproduces the single-process losses (rel 1e-5)" "same_curve $work/pp1/metrics.jsonl $work/z3tp/metrics.jsonl"
  run_pp z3ov 4 --zero-stage 3 --tensor-model-parallel-size 2 --sequence-parallel --recompute-granularity full --overlap-grad-reduce --overlap-param-gather
  check "ZeRO-3 x TP 2 + SP + recompute, the layers' gathers and reduce-scatters overlapped: the same curve and volume" "grep -q 'parameter gathers: each layer' $work/z3ov.txt && same_curve $work/pp1/metrics.jsonl $work/z3ov/metrics.jsonl && ! grep -q MISMATCH $work/z3ov.txt"
  run_pp z3pp 4 --zero-stage 3 --pipeline-model-parallel-size 2 --exit-interval 4 --save "$work/z3ck"
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --load "$work/z3ck" --output-dir "$work/z3b" > "$work/z3b.txt" 2>&1
  check "a ZeRO-3 x PP 2 checkpoint resumes on 1 process on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/z3b.txt && same_curve $work/pp1/metrics.jsonl $work/z3pp/metrics.jsonl $work/z3b/metrics.jsonl"
  run_pp z3c 4 --zero-stage 3 --load "$work/pp1ck"
  check "a single-process checkpoint resumes under ZeRO-3 over 4 ranks on the same curve (rel 1e-5)" "grep -q 'continuing after iteration 4' $work/z3c.txt && same_curve $work/pp1/metrics.jsonl $work/pp1a/metrics.jsonl $work/z3c/metrics.jsonl"
  check "ZeRO-2/3 layouts' measured communication equals the analytic volume" "(for f in z2 z3 z3tp z3pp; do grep -q 'data-parallel  *reduce-scatter' $work/\$f.txt || exit 1; done) && ! grep -q MISMATCH $work/z2.txt $work/z3.txt $work/z3tp.txt $work/z3pp.txt"
  # ZeRO-2 with one replica under TP 2 + SP: the layers' hook still reduces the LayerNorm partial
  # gradients per micro-batch, as the analysis must count
  run_pp z2tp 2 --zero-stage 2 --tensor-model-parallel-size 2 --sequence-parallel
  check "ZeRO-2 x TP 2 + SP on one replica: the same curve, and the analysis counts its traffic" "same_curve $work/pp1/metrics.jsonl $work/z2tp/metrics.jsonl && grep -q 'tensor-parallel  *all-reduce' $work/z2tp.txt && ! grep -q MISMATCH $work/z2tp.txt"
  # The saved checkpoints are the same global tensors: with lr 0 the parameters must be identical
  # and the AdamW moments (linear in the gradients) equal to fp32 round-off (rel 1e-5).
  ck="$(dirname "$bin")/llm-ckpt"
  lr0=(--mock-data --vocab-size 128 --make-vocab-size-divisible-by 16 --num-layers 4 --hidden-size 64
       --num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 8 --seed 3 --log-interval 1
       --lr 0 --min-lr 0 --train-iters 3)
  OMP_NUM_THREADS=1 "$bin" "${lr0[@]}" --save "$work/same1" --output-dir "$work/same1o" > /dev/null 2>&1
  OMP_NUM_THREADS=1 timeout 300 mpirun -np 8 "$bin" "${lr0[@]}" --pipeline-model-parallel-size 2 --tensor-model-parallel-size 2 \
    --sequence-parallel --zero-stage 1 --save "$work/same8ck" --output-dir "$work/same8" > /dev/null 2>&1
  OMP_NUM_THREADS=1 timeout 300 mpirun -np 4 "$bin" "${lr0[@]}" --pipeline-model-parallel-size 2 --zero-stage 3 \
    --save "$work/samez3ck" --output-dir "$work/samez3" > /dev/null 2>&1
  "$ck" diff "$work/same1" "$work/same8ck" --optimizer --rtol 1e-5 > "$work/diff8.txt" 2>&1
  check "DP 2 x TP 2 + SP x PP 2 (ZeRO-1) saves the single-process tensors (parameters equal, moments rel 1e-5)" "[ $? -eq 0 ] && grep -q '^model: worst 0.000e+00' $work/diff8.txt"
  "$ck" diff "$work/same1" "$work/samez3ck" --optimizer --rtol 1e-5 > "$work/diffz3.txt" 2>&1
  check "ZeRO-3 x PP 2 saves the single-process tensors (parameters equal, moments rel 1e-5)" "[ $? -eq 0 ] && grep -q '^model: worst 0.000e+00' $work/diffz3.txt"
  "$ck" diff "$work/same1" "$work/samez3ck" --optimizer --rtol 1e-9 > "$work/difftight.txt" 2>&1
  check "llm-ckpt diff fails beyond its tolerance" "[ $? -eq 1 ] && grep -q DIFFERENT $work/difftight.txt"
  # Mixed precision: bf16 activations and compute weights with fp32 masters, in every layout. The
  # layouts round different partial sums to bf16 (TP's row-parallel outputs, summed in bf16 as
  # NCCL does), so they match the single-process bf16 curve to bf16 round-off: rel 5e-4 (measured
  # worst 1.5e-4, under TP; 2.5e-5 without), not fp32's 1e-5. Communication is half the activation bytes (the analytic
  # model's activation size follows the precision).
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --bf16 --output-dir "$work/bf1" > "$work/bf1.txt" 2>&1
  check "--bf16 trains and says so" "[ $? -eq 0 ] && grep -q 'precision: bf16 activations and compute weights' $work/bf1.txt && near_curve 2e-3 $work/pp1/metrics.jsonl $work/bf1/metrics.jsonl"
  run_pp bfdp2tp2 4 --bf16 --tensor-model-parallel-size 2 --sequence-parallel
  check "bf16: DP 2 x TP 2 + SP reproduces the single-process bf16 losses (rel 5e-4)" "near_curve 5e-4 $work/bf1/metrics.jsonl $work/bfdp2tp2/metrics.jsonl"
  run_pp bfpp2sp2 4 --bf16 --pipeline-model-parallel-size 2 --ds-sequence-parallel-size 2 --recompute-granularity full
  check "bf16: PP 2 x Ulysses 2 + recompute reproduces the single-process bf16 losses (rel 5e-4)" "near_curve 5e-4 $work/bf1/metrics.jsonl $work/bfpp2sp2/metrics.jsonl"
  run_pp bfz3 4 --bf16 --zero-stage 3 --exit-interval 4 --save "$work/bfck"
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --bf16 --load "$work/bfck" --output-dir "$work/bfz3b" > "$work/bfz3b.txt" 2>&1
  check "bf16: a ZeRO-3 over 4 ranks checkpoint resumes on 1 process on the single-process bf16 curve (rel 5e-4)" "grep -q 'continuing after iteration 4' $work/bfz3b.txt && near_curve 5e-4 $work/bf1/metrics.jsonl $work/bfz3/metrics.jsonl $work/bfz3b/metrics.jsonl"
  # ZeRO-1/2 in mixed precision shard the f32 masters (each rank keeps its range, the bf16 copy is
  # gathered after the step); checkpoints out of them and into them.
  run_pp bfz1 4 --bf16 --zero-stage 1 --pipeline-model-parallel-size 2 --overlap-grad-reduce --overlap-param-gather --exit-interval 4 --save "$work/bfz1ck"
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" --bf16 --load "$work/bfz1ck" --output-dir "$work/bfz1b" > "$work/bfz1b.txt" 2>&1
  check "bf16: ZeRO-1 x PP 2, overlapped, shards the f32 masters, follows the single-process bf16 curve, and its checkpoint resumes on 1 process (rel 5e-4)" "grep -q 'f32 master weights sharded over the 2 ranks of the gradient group' $work/bfz1.txt && grep -q 'continuing after iteration 4' $work/bfz1b.txt && near_curve 5e-4 $work/bf1/metrics.jsonl $work/bfz1/metrics.jsonl $work/bfz1b/metrics.jsonl"
  run_pp bfz2 4 --bf16 --zero-stage 2 --load "$work/bfck"
  check "bf16: the ZeRO-3 checkpoint resumes under ZeRO-2 over 4 ranks (sharded masters) on the single-process bf16 curve (rel 5e-4)" "grep -q 'continuing after iteration 4' $work/bfz2.txt && grep -q 'f32 master weights sharded over the 4 ranks' $work/bfz2.txt && near_curve 5e-4 $work/bf1/metrics.jsonl $work/bfz3/metrics.jsonl $work/bfz2/metrics.jsonl"
  check "bf16 layouts' measured communication equals the analytic volume" "(for f in bfdp2tp2 bfpp2sp2 bfz3 bfz1 bfz2; do grep -q 'communication per iteration on rank 0' $work/\$f.txt || exit 1; done) && ! grep -q MISMATCH $work/bfdp2tp2.txt $work/bfpp2sp2.txt $work/bfz3.txt $work/bfz1.txt $work/bfz2.txt"
  # fp16 with a loss scale of 2^26: the scaled gradients overflow, those iterations are skipped and
  # the scale halves (hysteresis 1) until it fits; every layout with the same data-parallel size
  # decides the same (the overflow check is on the global gradient norm).
  f16=(--fp16 --initial-loss-scale 67108864 --hysteresis 1)
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" "${f16[@]}" --output-dir "$work/fp1" > "$work/fp1.txt" 2>&1
  rc=$?  # (the name's $(skips ...) below would reset $? before the condition is built)
  skips() { grep -o 'number of skipped iterations: *[0-9]*' "$1" | grep -o '[0-9]*$' | paste -sd, ; }
  check "fp16 with an overflowing loss scale skips iterations ($(skips $work/fp1.txt)), halves the scale, then trains" "[ $rc -eq 0 ] && skips $work/fp1.txt | tr , '\n' | awk '{s+=\$1} END{exit !(s >= 3 && s <= 6)}' && grep -q 'loss scale: 33554432.0' $work/fp1.txt && ! grep -qi 'lm loss: -*nan' $work/fp1.txt"
  run_pp fptp2 2 "${f16[@]}" --tensor-model-parallel-size 2 --sequence-parallel
  run_pp fppp2 2 "${f16[@]}" --pipeline-model-parallel-size 2
  # Data parallel 2 halves the micro-batches per replica, so each one's loss weight (the scale over
  # them) doubles: overflows come at other iterations than on one process. ZeRO-1 with sharded
  # masters decides as plain data parallelism does, and follows it.
  run_pp fpdp2 2 "${f16[@]}"
  run_pp fpz1 2 "${f16[@]}" --zero-stage 1
  check "fp16: ZeRO-1 over 2 ranks (sharded masters) skips the iterations data parallelism skips ($(skips $work/fpdp2.txt)) and follows its losses (rel 1e-5)" "grep -q 'f32 master weights sharded' $work/fpz1.txt && [ \"\$(skips $work/fpz1.txt)\" = \"\$(skips $work/fpdp2.txt)\" ] && same_curve $work/fpdp2/metrics.jsonl $work/fpz1/metrics.jsonl"
  check "fp16: TP 2 + SP and PP 2 skip the same iterations ($(skips $work/fp1.txt)) and match the single-process losses (rel 5e-4)" "[ \"\$(skips $work/fptp2.txt)\" = \"\$(skips $work/fp1.txt)\" ] && [ \"\$(skips $work/fppp2.txt)\" = \"\$(skips $work/fp1.txt)\" ] && near_curve 5e-4 $work/fp1/metrics.jsonl $work/fptp2/metrics.jsonl && near_curve 5e-4 $work/fp1/metrics.jsonl $work/fppp2/metrics.jsonl"
  # The output layer in chunks (each chunk's backward in forward, dloss carrying the loss scale):
  # the same overflows, so the same skipped iterations, and the same curve.
  OMP_NUM_THREADS=1 "$bin" "${pp[@]}" "${f16[@]}" --logits-chunk-tokens 24 --output-dir "$work/fp1lc" > "$work/fp1lc.txt" 2>&1
  rc=$?
  check "fp16: the output layer in chunks of 24 tokens skips the same iterations ($(skips $work/fp1lc.txt)) and matches the whole head's losses (rel 1e-4)" "[ $rc -eq 0 ] && [ \"\$(skips $work/fp1lc.txt)\" = \"\$(skips $work/fp1.txt)\" ] && near_curve 1e-4 $work/fp1/metrics.jsonl $work/fp1lc/metrics.jsonl"
  "$bin" "${dp[@]}" --bf16 --fp16 > "$work/bffp.txt" 2>&1
  check "--bf16 with --fp16 is refused" "[ $? -eq 2 ] && grep -q 'bf16 and --fp16 exclude each other' $work/bffp.txt"
  "$bin" "${dp[@]}" --backend tpu > "$work/be.txt" 2>&1
  check "an unknown --backend is refused naming it" "[ $? -eq 2 ] && grep -q \"backend 'tpu': unknown backend\" $work/be.txt"
  if ! nvidia-smi > /dev/null 2>&1; then
    "$bin" "${dp[@]}" --backend cuda > "$work/becuda.txt" 2>&1
    check "--backend cuda without a usable GPU is refused with the reason" "[ $? -eq 2 ] && grep -q 'backend cuda: ' $work/becuda.txt"
  fi
  # Failures in the new schedules and in a parallel save: a pipeline rank raising mid-run ends the
  # job (its neighbours are blocked in point-to-point transfers); a rank failing while the others
  # write their checkpoint shards ends the job and leaves the previous checkpoint published.
  start=$SECONDS
  LLM_FAULT_INJECT=2:3 OMP_NUM_THREADS=1 timeout 120 mpirun -np 4 "$bin" "${pp[@]}" --pipeline-model-parallel-size 4 \
    --output-dir "$work/ppfault" > "$work/ppfault.txt" 2>&1
  rc=$?
  check "a pipeline stage raising mid-run ends every rank, no hang ($((SECONDS - start)) s)" "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'rank 2.*injected fault at iteration 3' $work/ppfault.txt"
  LLM_FAULT_INJECT=1:save:4 OMP_NUM_THREADS=1 timeout 120 mpirun -np 4 "$bin" "${pp[@]}" --zero-stage 3 --save-interval 2 \
    --save "$work/savefault" --output-dir "$work/savefaulto" > "$work/savefault.txt" 2>&1
  rc=$?
  check "a rank failing during a parallel save ends the job; iteration 2 stays the published checkpoint" "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'injected fault while saving iteration 4' $work/savefault.txt && [ \"\$(cat $work/savefault/latest)\" = 2 ] && [ -d $work/savefault/iter_0000002 ] && [ ! -e $work/savefault/iter_0000004 ] && $(dirname "$bin")/llm-ckpt verify $work/savefault > /dev/null"
  stale=$(ls -d "$work"/savefault/iter_0000004.tmp-* 2> /dev/null | wc -l)
  OMP_NUM_THREADS=1 timeout 120 mpirun -np 4 "$bin" "${pp[@]}" --zero-stage 3 --save-interval 2 --load "$work/savefault" \
    --save "$work/savefault" --output-dir "$work/savefault2" > "$work/savefault2.txt" 2>&1
  check "the run resumes from iteration 2, and its next save removes the dead save's staging ($stale) directory" "[ $? -eq 0 ] && [ $stale -ge 1 ] && grep -q 'continuing after iteration 2' $work/savefault2.txt && [ \$(ls -d $work/savefault/*.tmp-* 2> /dev/null | wc -l) -eq 0 ] && [ \"\$(cat $work/savefault/latest)\" = 8 ]"
  mpirun -np 4 "$bin" "${dp[@]}" --pipeline-model-parallel-size 4 > "$work/ppx.txt" 2>&1
  check "layers not divisible by the stages are refused with the constraint" "[ $? -ne 0 ] && grep -q 'num-layers 2 is not divisible by --pipeline-model-parallel-size 4' $work/ppx.txt"
  mpirun -np 4 "$bin" "${dp[@]}" --ds-sequence-parallel-size 2 --tensor-model-parallel-size 2 --sequence-parallel > "$work/spx.txt" 2>&1
  check "Megatron SP with Ulysses (at TP 2) is refused with the reason" "[ $? -ne 0 ] && grep -q 'exclude each other' $work/spx.txt"
  # A rank that raises, or dies, ends the whole job within a bounded time: no rank hangs in a
  # collective waiting for it.
  long=(--mock-data --vocab-size 128 --make-vocab-size-divisible-by 16 --num-layers 2 --hidden-size 64
        --num-attention-heads 4 --seq-length 32 --micro-batch-size 2 --global-batch-size 8 --log-interval 1)
  start=$SECONDS
  LLM_FAULT_INJECT=3:3 OMP_NUM_THREADS=1 timeout 120 mpirun -np 4 "$bin" "${long[@]}" --tensor-model-parallel-size 2 \
    --train-iters 1000 --output-dir "$work/fault" > "$work/fault.txt" 2>&1
  rc=$?
  check "a rank raising mid-run ends every rank with an error, no hang ($((SECONDS - start)) s)" "[ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q 'rank 3.*injected fault at iteration 3' $work/fault.txt"
  start=$SECONDS
  OMP_NUM_THREADS=1 timeout 120 mpirun -np 4 "$bin" "${long[@]}" --train-iters 100000 --output-dir "$work/kill" > "$work/kill.txt" 2>&1 &
  job=$!
  for _ in $(seq 100); do [ "$(pgrep -f "output-dir $work/kill" | wc -l)" -ge 4 ] && grep -q 'iteration  *2/' "$work/kill.txt" 2>/dev/null && break; sleep 0.2; done
  victim=$(pgrep -f "llm-pretrain.*output-dir $work/kill" | tail -1)
  kill -9 "$victim" 2>/dev/null
  wait $job
  rc=$?
  check "a rank killed mid-run (SIGKILL) ends the job with an error, no hang ($((SECONDS - start)) s)" "[ -n '$victim' ] && [ $rc -ne 0 ] && [ $rc -ne 124 ]"
  mpirun -np 2 "$bin" "${dp[@]}" --zero-stage 4 > "$work/z4.txt" 2>&1
  check "an unknown ZeRO stage is refused" "[ $? -ne 0 ] && grep -q 'zero-stage must be 0, 1, 2 or 3' $work/z4.txt"
  mpirun -np 2 "$bin" "${dp[@]}" --tensor-model-parallel-size 2 > "$work/tpv.txt" 2>&1
  check "a vocabulary shard without real tokens is refused with the fix" "[ $? -ne 0 ] && grep -q 'lower --make-vocab-size-divisible-by' $work/tpv.txt"
  mpirun -np 3 "$bin" "${dp[@]}" > "$work/np3.txt" 2>&1
  check "an impossible layout names the constraint" "[ $? -ne 0 ] && grep -q 'global-batch-size 8 is not divisible by --micro-batch-size 2 x data-parallel size 3' $work/np3.txt"
else
  fail "mpirun not found (pipelines/setup.sh installs openmpi-bin)"
fi

# Megatron's checkpoints and checkpoint flags: a Megatron checkpoint directory is named, not taken
# for an empty one (which started from scratch beside its files); its flags are named with what
# to give instead; --universal-checkpoint is accepted (any layout loads libllm's checkpoints)
mkdir -p "$work/meg/iter_0000100" && echo 100 > "$work/meg/latest_checkpointed_iteration.txt"
"$bin" "${common[@]}" --train-iters 2 --load "$work/meg" --save "$work/meg" --output-dir "$work/meg-out" > "$work/meg1.txt" 2>&1
check "a Megatron checkpoint directory as --load is refused by name" "[ $? -eq 2 ] && grep -q -- '--load .*meg: a Megatron checkpoint directory (latest_checkpointed_iteration.txt)' $work/meg1.txt && [ ! -e $work/meg/latest ]"
"$bin" "${common[@]}" --train-iters 2 --save "$work/meg" --output-dir "$work/meg-out" > "$work/meg2.txt" 2>&1
check "... and as --save" "[ $? -eq 2 ] && grep -q 'a Megatron checkpoint directory' $work/meg2.txt && [ ! -e $work/meg/latest ]"
"$bin" "${common[@]}" --train-iters 2 --ckpt-step 4 > "$work/meg3.txt" 2>&1
check "Megatron's --ckpt-step is named with --load DIR/iter_NNNNNNN" "[ $? -eq 2 ] && grep -q -- '--ckpt-step.*--load DIR/iter_NNNNNNN' $work/meg3.txt"
"$bin" "${common[@]}" --train-iters 1 --log-interval 1 --universal-checkpoint --output-dir "$work/univ" > "$work/meg4.txt" 2>&1
check "--universal-checkpoint is accepted and named" "[ $? -eq 0 ] && grep -q 'without effect here:.*--universal-checkpoint' $work/meg4.txt"
"$bin" "${common[@]}" --train-iters 2 --exit-interval 1 --log-interval 1 --save "$work/seedck" --output-dir "$work/seed1" > /dev/null 2>&1
"$bin" "${common[@]}" --train-iters 2 --log-interval 1 --seed 77 --load "$work/seedck" --save "$work/seedck" --output-dir "$work/seed2" > "$work/seed.txt" 2>&1
check "a resume given another --seed says the checkpoint's is kept" "[ $? -eq 0 ] && grep -q -- '--seed 77: resuming with the checkpoint.s seed 11 (its data order); --no-load-rng' $work/seed.txt"

# metrics.jsonl on a full disk (here the file-size limit, SIGXFSZ ignored): half a record ended the
# file and the run exited 0. Now its whole records stay, training goes on, and the exit says it.
mkdir -p "$work/full"
(trap '' XFSZ; ulimit -f 2; exec "$bin" "${common[@]}" --train-iters 40 --log-interval 1 --output-dir "$work/full" > /dev/null 2> "$work/full.txt")
rc=$?
check "a metrics record that cannot be written is named, the run finishes with exit 1, no half record" "[ $rc -eq 1 ] && grep -q 'error: .*full/metrics.jsonl: writing the record of iteration [0-9]* failed' $work/full.txt && [ \"\$(tail -c 1 $work/full/metrics.jsonl | od -An -c | tr -d ' ')\" = '\\n' ]"

finish "llm-pretrain CLI"
