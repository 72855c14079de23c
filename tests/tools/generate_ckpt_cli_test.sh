#!/usr/bin/env bash
# End-to-end checks of llm-generate and llm-ckpt on a checkpoint trained here.
# usage: generate_ckpt_cli_test.sh <llm-tokenize> <llm-pretrain> <llm-generate> <llm-ckpt>
set -uo pipefail
tok="$1"; pre="$2"; gen="$3"; ckpt="$4"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"

for i in $(seq 1 200); do printf 'the cat sat on the mat. the dog sat on the log. %d\n\n' "$i"; done > "$work/corpus.txt"
"$tok" --input "$work/corpus.txt" --output-prefix "$work/data" --tokenizer-type ByteTokenizer --append-eod > /dev/null 2>&1
"$pre" --data-path "$work/data" --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64 \
  --micro-batch-size 8 --train-iters 60 --lr 3e-3 --lr-warmup-iters 5 --log-interval 20 --split 100,0,0 \
  --tokenizer-type ByteTokenizer --save "$work/ck" --output-dir "$work/run" > "$work/train.txt" 2>&1
check "training with --save writes a checkpoint" "[ -f $work/ck/iter_0000060/metadata.json ]"

"$ckpt" verify "$work/ck" > "$work/v.txt" 2>&1
check "llm-ckpt verify passes" "[ $? -eq 0 ] && grep -q '^OK .* every element stored exactly once' $work/v.txt"
"$ckpt" inspect "$work/ck" --norms > "$work/i.txt" 2>&1
check "llm-ckpt inspect lists tensors with shapes and norms" "grep -q 'h.1.mlp.c_fc.weight *\[256, 64\] *f32 *1 [0-9]' $work/i.txt && grep -q 'ByteTokenizer' $work/i.txt"

# metadata.json naming fewer layers than the tensors stored: the model it describes was loaded
# without the last layer, and a vocab_size past wte's rows with those rows zeros.
cp -r "$work/ck" "$work/ckmeta"
sed -i 's/"num_layers": 2,/"num_layers": 1,/' "$work/ckmeta/iter_0000060/metadata.json"
"$gen" --load "$work/ckmeta" --prompt "the cat" -n 4 --temp 0 > /dev/null 2> "$work/meta1.err"
check "a checkpoint whose metadata.json misses a stored layer is refused naming the tensor" "[ $? -eq 2 ] && grep -q \"ckmeta/iter_0000060: the checkpoint stores tensor 'h.1.[a-z_.0-9]*' (model), which the model of its metadata.json (1 layers) has no parameter for\" $work/meta1.err"
sed -i 's/"num_layers": 1,/"num_layers": 2,/; s/"vocab_size": 257,/"vocab_size": 1000,/' "$work/ckmeta/iter_0000060/metadata.json"
"$gen" --load "$work/ckmeta" --prompt "the cat" -n 4 --temp 0 > /dev/null 2> "$work/meta2.err"
check "a checkpoint whose vocab_size exceeds wte's rows is refused" "[ $? -eq 2 ] && grep -q \"ckmeta/iter_0000060: tensor 'wte' (model) has 384 rows but its metadata.json's vocab_size is 1000\" $work/meta2.err"
# The checkpoint's tokenizer record: a kind this build does not know came back as a bad
# --tokenizer-type flag, and a mismatch named neither the checkpoint nor where each side came from.
sed -i 's/"num_layers": 1,/"num_layers": 2,/; s/"vocab_size": 1000,/"vocab_size": 257,/; s/"kind": "ByteTokenizer"/"kind": "Nope"/' "$work/ckmeta/iter_0000060/metadata.json"
"$gen" --load "$work/ckmeta" --prompt "the cat" -n 4 --temp 0 > /dev/null 2> "$work/tokkind.err"
check "an unknown tokenizer kind in metadata.json is named with the file" "[ $? -eq 2 ] && grep -q \"ckmeta/iter_0000060/metadata.json: tokenizer kind 'Nope' is none this build reads\" $work/tokkind.err"
"$gen" --load "$work/ck" --prompt "the cat" -n 4 --tokenizer-type NullTokenizer --vocab-size 256 > /dev/null 2> "$work/tokflag.err"
check "a tokenizer given by flags that differs is named with the flag and the checkpoint's metadata" "[ $? -eq 2 ] && grep -q \"the tokenizer NullTokenizer:256 (--tokenizer-type NullTokenizer) differs from .*ck/iter_0000060/metadata.json's ByteTokenizer:256\" $work/tokflag.err"
"$gen" --load "$work/ck" --prompt "the cat" -n 4 --threads 100000 > /dev/null 2> "$work/threads.err"
check "--threads past 4096 is refused naming the flag (it crashed in libgomp)" "[ $? -eq 2 ] && grep -q -- '--threads 100000: expected 0 (OMP_NUM_THREADS or all cores) to 4096 threads' $work/threads.err"

g1=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 2> "$work/g1.err")
g2=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 2> /dev/null)
check "greedy generation is deterministic and non-empty" "[ -n \"\$g1\" ] && [ \"\$g1\" = \"\$g2\" ]"
check "generation reports prefill and decode speed" "grep -q 'prefill: 7 tokens in .*decode: [0-9]* tokens in' $work/g1.err"
check "--max-new-tokens bounds the output (byte tokens)" "[ \${#g1} -le 24 ]"
# llama.cpp's spellings: --temp, --n-predict (-n), -c; -n -1 is no limit (until the context is full)
a1=$("$gen" --load "$work/ck" --prompt "the cat" --n-predict 24 --temp 0 2> /dev/null)
check "--temp and --n-predict are --temperature and --max-new-tokens" "[ \"\$a1\" = \"\$g1\" ]"
"$gen" --load "$work/ck" --prompt "the cat" -c 32 -n -1 --temp 0 --ignore-eod > /dev/null 2> "$work/nolimit.err"
check "-n -1 generates until the context (-c 32) is full" "[ $? -eq 0 ] && grep -q ', context 32,' $work/nolimit.err && grep -q 'prefill: 7 tokens.*decode: 25 tokens.*stop: context-full' $work/nolimit.err"
# the frequency and presence penalties (llama.cpp's; unit-tested in Sampler.*) change greedy text
fp=$("$gen" --load "$work/ck" --prompt "the cat" -n 24 --temp 0 --frequency-penalty 0.5 2> /dev/null)
pp=$("$gen" --load "$work/ck" --prompt "the cat" -n 24 --temp 0 --presence-penalty 1 2> /dev/null)
check "--frequency-penalty and --presence-penalty apply" "[ -n \"\$fp\" ] && [ \"\$fp\" != \"\$g1\" ] && [ -n \"\$pp\" ] && [ \"\$pp\" != \"\$g1\" ]"
"$gen" --load "$work/ck" --prompt "x" --frequency-penalty nan > /dev/null 2> "$work/fpnan.txt"
check "a penalty that is not finite is refused naming the flag" "[ $? -eq 2 ] && grep -q -- '--frequency-penalty nan must be finite' $work/fpnan.txt"
unknown=0
for flag in "--typical-p 0.9" "--mirostat 2" "--dry-multiplier 0.8" "--xtc-probability 0.5"; do
  "$gen" --load "$work/ck" --prompt "x" $flag > /dev/null 2> "$work/unknown.txt" && unknown=1
  grep -q "not expected: .*${flag%% *}" "$work/unknown.txt" || unknown=1
done
check "llama.cpp's typical-p, mirostat, DRY and XTC (not implemented) are refused as unknown flags" "[ $unknown -eq 0 ]"
s1=$("$gen" --load "$work/ck" --prompt "the dog" -n 30 --seed 7 2> /dev/null)
s2=$("$gen" --load "$work/ck" --prompt "the dog" -n 30 --seed 7 2> /dev/null)
check "sampling with a seed is reproducible" "[ -n \"\$s1\" ] && [ \"\$s1\" = \"\$s2\" ]"
# Without --seed (or with -1) each run draws a random seed, as llama.cpp, and prints it: passing it
# back repeats the run (-s is --seed; --ignore-eod: never an empty text). Tests comparing two runs
# pass --seed or --temperature 0.
r1=$("$gen" --load "$work/ck" --prompt "the dog" -n 30 --ignore-eod 2> "$work/r1.err")
"$gen" --load "$work/ck" --prompt "the dog" -n 30 --ignore-eod --seed -1 > /dev/null 2> "$work/r2.err"
seed1=$(sed -n 's/^\[llm-generate\] seed: \([0-9]*\)$/\1/p' "$work/r1.err")
seed2=$(sed -n 's/^\[llm-generate\] seed: \([0-9]*\)$/\1/p' "$work/r2.err")
r3=$("$gen" --load "$work/ck" --prompt "the dog" -n 30 --ignore-eod -s "${seed1:-0}" 2> "$work/r3.err")
check "the default seed is random and printed; -s with it repeats the run (${seed1:-?}, ${seed2:-?})" "[ -n \"$seed1\" ] && [ -n \"$seed2\" ] && [ \"$seed1\" != \"$seed2\" ] && [ -n \"\$r1\" ] && [ \"\$r1\" = \"\$r3\" ] && grep -q '^\[llm-generate\] seed: ${seed1:-x}$' $work/r3.err"
"$gen" --load "$work/ck" --prompt "the dog" -n 2 --seed -2 > /dev/null 2> "$work/seedbad.err"
check "a seed below -1 is refused naming the flag" "[ $? -eq 2 ] && grep -q -- '--seed -2 must be an integer in \[0, 2^64) or -1' $work/seedbad.err"
# a prompt file's requests are independent: the same prompt twice draws the same text
printf 'the dog\r\nthe dog\n' > "$work/twice.txt"
"$gen" --load "$work/ck" --prompt-file "$work/twice.txt" -n 30 --seed 7 > "$work/twice.jsonl" 2> /dev/null
check "--prompt-file: each line draws as a fresh run with the seed (CRLF stripped)" "[ \$(wc -l < $work/twice.jsonl) -eq 2 ] && [ \"\$(sed -n 1p $work/twice.jsonl)\" = \"\$(sed -n 2p $work/twice.jsonl)\" ] && grep -q '\"prompt\": \"the dog\", \"completion\": \"[^\"]' $work/twice.jsonl"
# Mixed precision (the CPU backend's bf16 emulation; the same path as a GPU's): the sampler gets fp32 logits.
b1=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 --bf16 2> "$work/b1.err")
b2=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 --bf16 2> /dev/null)
check "--bf16 generation runs, is deterministic and says so" "[ -n \"\$b1\" ] && [ \"\$b1\" = \"\$b2\" ] && grep -q 'cpu bf16' $work/b1.err && grep -q 'decode: [0-9]* tokens' $work/b1.err"
# An inference model: fp32 weights only, and in bf16 half that (the LayerNorms stay f32 too).
wf=$(sed -n 's/.*, weights \([0-9.]*\) MiB, KV cache \([0-9.]*\) MiB$/\1/p' "$work/g1.err")
wb=$(sed -n 's/.*, weights \([0-9.]*\) MiB, KV cache \([0-9.]*\) MiB$/\1/p' "$work/b1.err")
check "--bf16 holds its weights in half fp32's memory (${wf:-?} vs ${wb:-?} MiB)" \
  "awk -v f='${wf:-0}' -v b='${wb:-0}' 'BEGIN { exit !(f > 0 && b / f > 0.5 && b / f < 0.51) }'"
f1=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 --fp16 2> /dev/null)
check "--fp16 generation runs" "[ -n \"\$f1\" ]"
"$gen" --load "$work/ck" --prompt "the cat" --bf16 --fp16 > /dev/null 2> "$work/both.err"
check "--bf16 and --fp16 together are refused" "[ $? -ne 0 ] && grep -q 'excludes' $work/both.err"
# --backend cuda: without a usable GPU (CI) a clear error (exit 2); with one (a GPU machine's
# ctest), the same greedy text as the CPU's from the same weights in fp32 (a near tie could flip a
# token: the texts are shown), and --bf16 there runs, deterministically. Any other failure is shown.
gc=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 --backend cuda 2> "$work/gc.err")
rc=$?
if [ $rc -eq 0 ]; then
  [ "$gc" = "$g1" ] || printf 'cpu:  %s\ncuda: %s\n' "$g1" "$gc"
  check "--backend cuda generates the CPU's greedy text" "[ \"\$gc\" = \"\$g1\" ] && grep -q 'cuda f32' $work/gc.err"
  c1=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 --backend cuda --bf16 2> "$work/cb.err")
  c2=$("$gen" --load "$work/ck" --prompt "the cat" --max-new-tokens 24 --temperature 0 --backend cuda --bf16 2> /dev/null)
  [ -n "$c1" ] || cat "$work/cb.err"
  check "--backend cuda --bf16 runs, is deterministic and says so" "[ -n \"\$c1\" ] && [ \"\$c1\" = \"\$c2\" ] && grep -q 'cuda bf16' $work/cb.err"
elif [ $rc -eq 2 ]; then
  check "--backend cuda without a usable GPU is a clear error" "grep -q 'error: --backend cuda: ' $work/gc.err"
else
  cat "$work/gc.err"
  check "--backend cuda ran (exit $rc)" "false"
fi
"$gen" --load "$work/ck" --prompt "the cat" --backend nosuch > /dev/null 2> "$work/nb.err"
check "an unknown backend is a clear error" "[ $? -eq 2 ] && grep -q \"backend 'nosuch': unknown backend\" $work/nb.err"
st=$("$gen" --load "$work/ck" --prompt "the cat" -n 40 --temperature 0 --stop "sat" 2> "$work/st.err")
check "a stop string ends generation and is not printed" "[[ \"$st\" != *sat* ]] && grep -q 'stop: stop-string' $work/st.err"
# After a document's number the model ends the document: greedy stops there, printing nothing.
# --ignore-eod (llama.cpp's --ignore-eos, accepted too) bans that token: it is never sampled, so
# the 10 new tokens are 10 printed bytes (the token prints no bytes: drawn, it would print less).
e0=$("$gen" --load "$work/ck" --prompt "the dog sat on the log. 1" -n 10 --temperature 0 2> "$work/e0.err")
check "greedy generation stops at the end-of-document token" "[ -z \"\$e0\" ] && grep -q 'decode: 0 tokens.*stop: eod' $work/e0.err"
e1=$("$gen" --load "$work/ck" --prompt "the dog sat on the log. 1" -n 10 --temperature 0 --ignore-eod 2> "$work/e1.err")
e2=$("$gen" --load "$work/ck" --prompt "the dog sat on the log. 1" -n 10 --temperature 0 --ignore-eos 2> /dev/null)
check "--ignore-eod never samples it: 10 tokens, 10 bytes (--ignore-eos the same)" "[ \${#e1} -eq 10 ] && grep -q 'decode: 10 tokens.*stop: max-new-tokens' $work/e1.err && [ \"\$e1\" = \"\$e2\" ]"

printf 'the cat\nthe dog sat\n' > "$work/prompts.txt"
"$gen" --load "$work/ck" --prompt-file "$work/prompts.txt" --output "$work/out.jsonl" -n 10 --temperature 0 2> /dev/null
check "--prompt-file writes one JSON line per prompt" "[ \$(wc -l < $work/out.jsonl) -eq 2 ] && grep -q '\"prompt\": \"the dog sat\", \"completion\": ' $work/out.jsonl"
"$gen" --load "$work/ck" --prompt-file "$work/prompts.txt" --prompt "the cat" -n 2 > /dev/null 2> "$work/both.txt"
check "--prompt with --prompt-file is refused (one was ignored)" "[ $? -eq 2 ] && grep -q -- '--prompt and --prompt-file exclude each other' $work/both.txt"
printf 'the cat\n/reset\nthe dog\n/quit\n' | "$gen" --load "$work/ck" --interactive -n 8 --temperature 0 > "$work/inter.txt" 2> "$work/inter.err"
check "interactive mode answers prompts and /reset" "[ $? -eq 0 ] && grep -q 'conversation reset' $work/inter.err && [ \$(grep -c 'prefill\\|decode' $work/inter.err) -ge 1 ]"
# A reply ended by the end-of-document token keeps it in the context, as llama.cpp's main: the next
# turn prefills it before its 7 prompt tokens (25 + 1 + 7 in all).
printf 'the dog sat on the log. 1\nthe cat\n' | "$gen" --load "$work/ck" --interactive -n 8 --temperature 0 > /dev/null 2> "$work/inter2.err"
check "interactive: the end of document ending a reply is decoded at the next turn" "[ $? -eq 0 ] && grep -q 'prefill: 33 tokens in .*stop: 2 replies' $work/inter2.err"

long=$(printf 'x%.0s' $(seq 1 100))
"$gen" --load "$work/ck" --prompt "$long" -n 5 > /dev/null 2> "$work/long.txt"
check "a prompt longer than the context is a clear error" "[ $? -eq 2 ] && grep -q 'the prompt is 100 tokens but only 63 of the 64-token context are free' $work/long.txt"
"$gen" --load "$work/ck" --prompt "$long" -n 5 --truncate-prompt > /dev/null 2> "$work/long2.txt"
check "--truncate-prompt keeps the end with a warning, room left for -n" "[ $? -eq 0 ] && grep -q 'prompt truncated from the left: 100 -> 59 tokens (room for 5 new)' $work/long2.txt"
"$gen" --load "$work/ck" --prompt "$long" -n 40 --truncate-prompt > /dev/null 2> "$work/long3.txt"
check "... the prompt keeping at least half the context" "[ $? -eq 0 ] && grep -q 'prompt truncated from the left: 100 -> 32 tokens (room for 32 new)' $work/long3.txt"
"$gen" --load "$work/nothing" --prompt "x" > /dev/null 2> "$work/missing.txt"
check "a missing checkpoint is a clear error" "[ $? -eq 2 ] && grep -q 'no checkpoint here' $work/missing.txt"
"$gen" --load "$work/ck" --prompt "x" --top-p 1.5 > /dev/null 2> "$work/topp.txt"
check "bad sampler options name the flag" "[ $? -eq 2 ] && grep -q -- '--top-p 1.5' $work/topp.txt"
# --output is replaced only when every prompt has its result
printf 'the cat\n%s\n' "$long" > "$work/bad-prompts.txt"
echo '{"keep": 1}' > "$work/kept.jsonl"
"$gen" --load "$work/ck" --prompt-file "$work/bad-prompts.txt" --output "$work/kept.jsonl" -n 3 > /dev/null 2> "$work/kept.txt"
check "a prompt file failing at line 2 leaves --output as it was" "[ $? -eq 2 ] && grep -q 'bad-prompts.txt:2: the prompt is 100 tokens' $work/kept.txt && [ \"\$(cat $work/kept.jsonl)\" = '{\"keep\": 1}' ] && [ -z \"\$(ls $work | grep 'kept.jsonl.tmp')\" ]"
"$gen" --load "$work/ck" --prompt-file "$work" -n 3 > /dev/null 2> "$work/pdir.txt"
check "a directory as --prompt-file is an error naming it" "[ $? -eq 2 ] && grep -q 'cannot read (--prompt-file takes a file' $work/pdir.txt"
echo '{"header": 1}' > "$work/devout.jsonl"
"$gen" --load "$work/ck" --prompt-file "$work/prompts.txt" --output /dev/stdout -n 3 --temperature 0 >> "$work/devout.jsonl" 2> /dev/null
check "--output /dev/stdout writes through stdout as it goes (>> appends after what was there)" "[ $? -eq 0 ] && [ \$(wc -l < $work/devout.jsonl) -eq 3 ] && head -n1 $work/devout.jsonl | grep -q header && [ -L /dev/stdout ]"

"$ckpt" convert "$work/ck" --output "$work/ck16" --dtype bf16 --shards 3 > /dev/null 2>&1
check "convert to bf16 in 3 shards verifies" "$ckpt verify $work/ck16 > /dev/null 2>&1 && [ \$(ls $work/ck16/iter_0000060/*.h5 | wc -l) -eq 3 ]"
check "the converted checkpoint generates" "[ -n \"\$($gen --load $work/ck16 --prompt 'the cat' -n 8 --temperature 0 2> /dev/null)\" ]"
# into the checkpoint it reads: refused, the source untouched
"$ckpt" convert "$work/ck" --output "$work/ck/iter_0000060" > /dev/null 2> "$work/convin.err"
check "convert into the source's own iteration directory is refused" "[ $? -eq 2 ] && grep -q 'is the checkpoint it reads' $work/convin.err"
"$ckpt" export "$work/ck" --format hf-gpt2 --output "$work/ck/iter_0000060/hf/" > /dev/null 2> "$work/expin.err"
check "export inside the source's iteration directory is refused, the source intact" "[ $? -eq 2 ] && grep -q 'is inside the checkpoint it reads' $work/expin.err && [ ! -e $work/ck/iter_0000060/hf ] && $ckpt verify $work/ck > /dev/null 2>&1"
# weights without the optimizer: resuming names the two ways to start from them; both work
# a single-process tool: as one of several copies under a launcher it refuses before touching anything
OMPI_COMM_WORLD_RANK=1 OMPI_COMM_WORLD_SIZE=4 "$ckpt" convert "$work/ck" --output "$work/ckmpi" > /dev/null 2> "$work/ckmpi.err"
check "llm-ckpt under an MPI launcher with 4 processes is refused and writes nothing" "[ $? -eq 2 ] && [ ! -e $work/ckmpi ] && grep -q 'single-process tool, but it was started as rank 1 of 4' $work/ckmpi.err"
PMI_RANK=0 PMI_SIZE=1 "$ckpt" verify "$work/ck" > /dev/null 2>&1
check "llm-ckpt as the only process of a launcher runs" "[ $? -eq 0 ]"
PMI_RANK=2 PMI_SIZE=3 "$gen" --load "$work/ck" --prompt-file "$work/twice.txt" --output "$work/genmpi.jsonl" > /dev/null 2> "$work/genmpi.err"
check "llm-generate as one of 3 launcher processes is refused and writes nothing" "[ $? -eq 2 ] && [ ! -e $work/genmpi.jsonl ] && grep -q 'llm-generate is a single-process tool, but it was started as rank 2 of 3' $work/genmpi.err"
"$ckpt" convert "$work/ck" --output "$work/cknoopt" --no-optimizer > /dev/null 2>&1
resume=(--data-path "$work/data" --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 64
        --micro-batch-size 8 --train-iters 62 --lr-decay-iters 60 --lr 3e-3 --lr-warmup-iters 5 --log-interval 1 --split 100,0,0
        --tokenizer-type ByteTokenizer --load "$work/cknoopt")
"$pre" "${resume[@]}" > "$work/noopt.txt" 2>&1
check "resuming weights without the optimizer names --no-load-optim and --finetune" "[ \$? -eq 2 ] && grep -q 'without the optimizer.s state.*--no-load-optim.*--finetune' $work/noopt.txt"
"$pre" "${resume[@]}" --no-load-optim > "$work/noopt2.txt" 2>&1
check "... and --no-load-optim resumes from them" "[ \$? -eq 0 ] && grep -q 'continuing after iteration 60' $work/noopt2.txt"
"$pre" "${resume[@]}" --seq-length 32 --no-load-optim > "$work/pos.txt" 2>&1
check "a shorter --seq-length than the checkpoint's positions names --max-position-embeddings" "[ \$? -eq 2 ] && grep -q 'max-position-embeddings 64 keeps' $work/pos.txt"
"$pre" "${resume[@]}" --seq-length 32 --max-position-embeddings 64 --no-load-optim > "$work/pos2.txt" 2>&1
check "... which loads it" "[ \$? -eq 0 ] && grep -q 'continuing after iteration 60' $work/pos2.txt"
"$ckpt" export "$work/ck" --format hf-gpt2 --output "$work/hf" > /dev/null 2>&1
"$ckpt" import "$work/hf" --format hf-gpt2 --output "$work/imp" > /dev/null 2>&1
gi=$("$gen" --load "$work/imp" --prompt "the cat" --max-new-tokens 24 --temperature 0 --tokenizer-type ByteTokenizer 2> /dev/null)
check "HF export -> import gives the same greedy text" "[ -f $work/hf/model.safetensors ] && [ \"$gi\" = \"\$g1\" ]"
# writing into a save root that holds checkpoints needs --overwrite ('latest' would move)
"$ckpt" import "$work/hf" --format hf-gpt2 --output "$work/ck" > /dev/null 2> "$work/impck.txt"
check "import into a save root holding checkpoints is refused, 'latest' unchanged" "[ $? -eq 2 ] && grep -q 'already holds checkpoints (the newest: .*iter_0000060).*--overwrite' $work/impck.txt && [ \"\$(cat $work/ck/latest)\" = 60 ] && [ ! -e $work/ck/iter_0000000 ]"
"$ckpt" convert "$work/ck" --output "$work/ck16" --dtype f16 > /dev/null 2> "$work/convck.txt"
check "convert into a save root holding checkpoints is refused" "[ $? -eq 2 ] && grep -q -- '--output .*ck16: already holds checkpoints' $work/convck.txt"
"$ckpt" import "$work/hf" --format hf-gpt2 --output "$work/imp" --overwrite > /dev/null 2>&1
check "... and done with --overwrite" "[ $? -eq 0 ] && [ \"\$(cat $work/imp/latest)\" = 0 ]"

# a tensor the model needs, dropped from the metadata: the data left is intact, but it cannot load
cp -r "$work/ck16" "$work/ckdrop"
python3 - "$work/ckdrop/iter_0000060/metadata.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
m['pieces'] = [p for p in m['pieces'] if not (p['category'] == 'optimizer/exp_avg' and p['name'] == 'h.1.mlp.c_fc.weight')]
json.dump(m, open(sys.argv[1], 'w'))
PY
"$ckpt" verify "$work/ckdrop" > "$work/drop.txt" 2>&1
check "verify names a tensor the model's config needs and the checkpoint lacks" "[ $? -eq 2 ] && grep -q 'does not load into the model' $work/drop.txt && grep -q 'optimizer/exp_avg/h.1.mlp.c_fc.weight: missing (the model has it, \[256, 64\])' $work/drop.txt"
"$ckpt" verify "$work/imp" > "$work/vimp.txt" 2>&1
check "verify passes a weights-only (imported) checkpoint" "[ $? -eq 0 ] && grep -q '^OK' $work/vimp.txt"

cp -r "$work/ck16" "$work/ckbox"
python3 - "$work/ckbox/iter_0000060/metadata.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
for p in m['pieces']:
    if p['category'] == 'model' and p['name'] == 'wpe':
        p['offset'][0] = p['global_shape'][0]
json.dump(m, open(sys.argv[1], 'w'))
PY
"$ckpt" verify "$work/ckbox" > "$work/box.txt" 2>&1
check "a piece's box outside its tensor names the tensor" "[ $? -eq 2 ] && grep -q 'metadata.json.*(model/wpe): box outside the tensor' $work/box.txt"

# corruption: one byte of tensor data changed
python3 - "$work/ck/iter_0000060/shard_00000.h5" <<'PY'
import sys
p = sys.argv[1]
b = bytearray(open(p, 'rb').read())
b[len(b) // 2] ^= 0x55
open(p, 'wb').write(bytes(b))
PY
"$ckpt" verify "$work/ck" > "$work/bad.txt" 2>&1
check "verify detects a corrupted byte" "[ $? -ne 0 ] && grep -qi 'checksum mismatch\\|HDF5' $work/bad.txt"

finish "llm-generate/llm-ckpt CLI"
