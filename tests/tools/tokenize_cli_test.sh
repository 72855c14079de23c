#!/usr/bin/env bash
# End-to-end checks of llm-tokenize: tokenizer training, datasets identical for 1, 2 and 3 MPI
# ranks, encode/decode, Megatron import, bad input, atomic output; then llm-pretrain on the
# dataset with tokenizer checks.
# usage: tokenize_cli_test.sh <llm-tokenize> <llm-pretrain>
set -uo pipefail
tok="$1"
pre="$2"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1

# A corpus of 300 paragraphs with some unicode.
for i in $(seq 1 300); do
  printf 'Paragraph %d: the quick brown fox jumps over the lazy dog %d times.\nCaf\xc3\xa9 na\xc3\xafve \xe2\x80\x94 line two of %d.\n\n' "$i" "$((i * 7))" "$i"
done > "$work/corpus.txt"

"$tok" train-tokenizer --input "$work/corpus.txt" --model-prefix "$work/spm" --vocab-size 400 > "$work/train.txt" 2>&1
check "train-tokenizer exits 0 and writes the model" "[ $? -eq 0 ] && [ -f $work/spm.model ]"
check "train-tokenizer names both Megatron views of the model" "grep -q '400 pieces; as SentencePieceTokenizer a vocabulary of 405, EOD id 402 (<EOD>); as GPTSentencePieceTokenizer EOD id 2 (</s>)' $work/train.txt"
spm=(--tokenizer-type SentencePieceTokenizer --tokenizer-model "$work/spm.model")

"$tok" --input "$work/corpus.txt" --output-prefix "$work/ds1" "${spm[@]}" --append-eod --shard-tokens 2000 > "$work/p1.txt" 2>&1
check "preprocess exits 0" "[ $? -eq 0 ]"
check "summary counts 300 documents" "grep -q 'wrote .*ds1: 300 documents' $work/p1.txt"
check "dataset has a manifest and several shards" "[ -f $work/ds1/manifest.json ] && [ \$(ls $work/ds1/*.h5 | wc -l) -gt 2 ]"
h1=$("$tok" info "$work/ds1" | sed -n 's/.*content hash //p')
for n in 2 3; do
  mpirun -np $n "$tok" --input "$work/corpus.txt" --output-prefix "$work/ds$n" "${spm[@]}" --append-eod --shard-tokens 2000 > "$work/p$n.txt" 2>&1
  check "mpirun -np $n exits 0" "[ $? -eq 0 ]"
  hn=$("$tok" info "$work/ds$n" | sed -n 's/.*content hash //p')
  check "dataset from $n ranks equals the 1-rank dataset ($hn vs $h1)" "[ -n '$h1' ] && [ '$hn' = '$h1' ]"
done

ids=$("$tok" encode "${spm[@]}" --text "the quick brown fox")
check "encode prints ids" "[[ '$ids' =~ ^[0-9]+(\ [0-9]+)*$ ]]"
text=$("$tok" decode "${spm[@]}" --ids "$(echo $ids | tr ' ' ',')")
check "decode inverts encode" "[ '$text' = 'the quick brown fox' ]"
"$tok" encode "${spm[@]}" --text "a<EOD>b" > "$work/eod.txt" 2>&1
"$tok" encode --tokenizer-type GPTSentencePieceTokenizer --tokenizer-model "$work/spm.model" --text "a<EOD>b" > "$work/eod-gpt.txt" 2>&1
check "SentencePieceTokenizer encodes <EOD>'s text to 402 (Megatron's), GPTSentencePieceTokenizer as text" "grep -Eq '(^| )402( |$)' $work/eod.txt && ! grep -Eq '(^| )40[0-4]( |$)' $work/eod-gpt.txt && [ -s $work/eod-gpt.txt ]"
check "byte tokenizer encode" "[ \"\$($tok encode --tokenizer-type ByteTokenizer --text AB)\" = '65 66' ]"

# bad input: clear message, non-zero exit, nothing under the final name
"$tok" --input "$work/missing.txt" --output-prefix "$work/bad" "${spm[@]}" > "$work/b1.txt" 2>&1
check "missing input is named" "[ $? -eq 2 ] && grep -q 'missing.txt' $work/b1.txt && [ ! -e $work/bad ]"
printf 'ok line\nbad \xff byte\n' > "$work/bad-utf8.txt"
"$tok" --input "$work/bad-utf8.txt" --document-boundary line --invalid-utf8 fail --output-prefix "$work/bad" "${spm[@]}" > "$work/b2.txt" 2>&1
check "invalid UTF-8 (fail) names file:line and byte; no output left" "[ $? -eq 2 ] && grep -q 'bad-utf8.txt:2 (byte 12): invalid UTF-8 (in the document from line 2)' $work/b2.txt && [ -z \"\$(ls -d $work/bad* 2>/dev/null | grep -v bad-utf8)\" ]"
"$tok" --input "$work/bad-utf8.txt" --document-boundary line --output-prefix "$work/fixed" "${spm[@]}" > "$work/b3.txt" 2>&1
check "invalid UTF-8 (replace) is counted" "grep -q '1 documents had invalid UTF-8 replaced' $work/b3.txt"
printf '{"text": "good"}\n{"text": 5}\nnot json\n' > "$work/docs.jsonl"
"$tok" --input "$work/docs.jsonl" --output-prefix "$work/js" "${spm[@]}" > "$work/b4.txt" 2>&1
check "bad JSON lines are skipped and counted" "grep -q 'wrote .*js: 1 documents' $work/b4.txt && grep -q '2 bad JSON lines' $work/b4.txt"
"$tok" --input "$work/docs.jsonl" --bad-json fail --output-prefix "$work/js2" "${spm[@]}" > "$work/b5.txt" 2>&1
check "bad JSON (fail) names file:line" "[ $? -eq 2 ] && grep -q 'docs.jsonl:2' $work/b5.txt"
# a document the tokenizer refuses, on the second rank's half: one message naming it, exit 2 from
# every rank, no hang, nothing written (it ended the process in std::terminate)
{ for i in $(seq 1 40); do echo "$i $((i + 1))"; done; echo "7 x9"; echo "8"; } > "$work/ids.txt"
timeout 120 mpirun -np 2 "$tok" --input "$work/ids.txt" --document-boundary line --tokenizer-type NullTokenizer --vocab-size 100 \
  --output-prefix "$work/nul" > "$work/b7.txt" 2>&1
rc=$?
check "a document the tokenizer refuses (rank 1) is named; the job ends with 2, nothing written" "[ $rc -eq 2 ] && grep -q 'ids.txt (byte [0-9]*): cannot tokenize the document: NullTokenizer: expected an integer id in \[0, 100) at byte 2' $work/b7.txt && [ -z \"\$(ls -d $work/nul* 2>/dev/null)\" ]"
"$tok" --input "$work/corpus.txt" --output-prefix "$work/ds1" "${spm[@]}" > "$work/b6.txt" 2>&1
check "existing dataset is not replaced without --overwrite" "[ $? -ne 0 ] && grep -q -- '--overwrite replaces it' $work/b6.txt && [ \"\$($tok info $work/ds1 | sed -n 's/.*content hash //p')\" = '$h1' ]"
# text and JSON lines in one run would read one of them in the other's format: refused
"$tok" --input "$work/bad-utf8.txt" "$work/docs.jsonl" --output-prefix "$work/mix" "${spm[@]}" > "$work/b8.txt" 2>&1
check "a mix of text and JSON-lines inputs is refused naming both" "[ $? -eq 2 ] && grep -q 'bad-utf8.txt is text by its extension but .*docs.jsonl is JSON lines' $work/b8.txt && [ ! -e $work/mix ]"
# a paragraph's invalid byte: the document's start, and the line of the paragraph it is on
printf 'first line\nsecond \xfe line\n' > "$work/para.txt"
"$tok" --input "$work/para.txt" --invalid-utf8 fail --output-prefix "$work/para" "${spm[@]}" > "$work/b9.txt" 2>&1
check "invalid UTF-8 in a paragraph names its own line and byte, and where the paragraph starts" "[ $? -eq 2 ] && grep -q 'para.txt:2 (byte 18): invalid UTF-8 (in the document from line 1)' $work/b9.txt"
: > "$work/empty.txt"
"$tok" train-tokenizer --input "$work/empty.txt" --model-prefix "$work/empty" --vocab-size 50 > "$work/b10.txt" 2>&1
check "training a tokenizer on empty input says so" "[ $? -eq 2 ] && grep -q 'empty.*no text to learn a vocabulary from' $work/b10.txt"
# a failed training leaves the tokenizer of that name as it was, and no staging files behind
cp "$work/spm.model" "$work/spm.model.orig"
"$tok" train-tokenizer --input "$work/corpus.txt" --model-prefix "$work/spm" --vocab-size 400000 > "$work/b11.txt" 2>&1
check "a failed train-tokenizer names the model, exits 2 and leaves the existing one unchanged" \
  "[ $? -eq 2 ] && grep -q 'training of $work/spm.model failed ($work/spm.model is unchanged)' $work/b11.txt && cmp -s $work/spm.model $work/spm.model.orig && [ -z \"\$(ls $work | grep 'spm.*tmp-')\" ]"
echo "my notes" > "$work/spm2.train-input.txt"
"$tok" train-tokenizer --input "$work/corpus.txt" --model-prefix "$work/spm2" --vocab-size 400 > "$work/b12.txt" 2>&1
check "train-tokenizer leaves a file named like its old training text alone" "[ $? -eq 0 ] && [ \"\$(cat $work/spm2.train-input.txt)\" = 'my notes' ] && [ -f $work/spm2.model ]"
# staging left by killed runs: this host's dead processes' cleared, anything else left alone
dead=99999; while kill -0 $dead 2> /dev/null; do dead=$((dead + 1)); done
host=$(uname -n | tr '/@' '__')
mkdir -p "$work/ds9.tmp-$dead@$host-0123456789abcdef" "$work/ds9.tmp-$$@$host-0123456789abcdef" \
  "$work/ds9.tmp-$dead@other-host-0123456789abcdef" "$work/ds9.tmp-4242-0123456789abcdef"
touch "$work/spm3.model.tmp-$dead@$host-fedcba9876543210"
"$tok" --input "$work/corpus.txt" --output-prefix "$work/ds9" "${spm[@]}" > "$work/b15.txt" 2>&1
"$tok" train-tokenizer --input "$work/corpus.txt" --model-prefix "$work/spm3" --vocab-size 400 >> "$work/b15.txt" 2>&1
check "a killed run's staging (this host, its process gone) is cleared; a live one's, another host's and unknown ones stay" \
  "[ ! -e $work/ds9.tmp-$dead@$host-0123456789abcdef ] && [ ! -e $work/spm3.model.tmp-$dead@$host-fedcba9876543210 ] && [ -d $work/ds9.tmp-$$@$host-0123456789abcdef ] && [ -d $work/ds9.tmp-$dead@other-host-0123456789abcdef ] && [ -d $work/ds9.tmp-4242-0123456789abcdef ] && [ -f $work/ds9/manifest.json ] && [ -f $work/spm3.model ]"
cmp -s "$work/spm3.model" "$work/spm.model"
check "the same training gives the same tokenizer bytes under another prefix" "[ $? -eq 0 ]"
# inputs without a single document: refused, no dataset
for i in 1 2 3; do echo '{"text": "hello"}'; done > "$work/keys.jsonl"
"$tok" --input "$work/keys.jsonl" --json-keys content --output-prefix "$work/nodocs" --tokenizer-type ByteTokenizer > "$work/b13.txt" 2>&1
check "every line skipped: exits 2 naming the input, the skipped lines and --json-keys; no dataset" \
  "[ $? -eq 2 ] && grep -q 'keys.jsonl: no documents to write (0 empty documents and 3 bad JSON lines skipped; do the --json-keys' $work/b13.txt && [ -z \"\$(ls -d $work/nodocs* 2>/dev/null)\" ]"
"$tok" --input "$work/empty.txt" --output-prefix "$work/nodocs" --tokenizer-type ByteTokenizer > "$work/b14.txt" 2>&1
check "an empty input: exits 2, no dataset" "[ $? -eq 2 ] && grep -q 'empty.txt: no documents to write' $work/b14.txt && [ -z \"\$(ls -d $work/nodocs* 2>/dev/null)\" ]"

# Megatron's preprocess_data.py: one dataset per --json-keys key (refused here with the runs to
# make); --json-keys on a text input; its other flags accepted or refused with the reason; a text
# that encodes to no token is no document (no EOD alone), whitespace GPT-2 encodes is one
printf '{"title": "a", "text": "b"}\n' > "$work/two.jsonl"
"$tok" --input "$work/two.jsonl" --json-keys title text --output-prefix "$work/two" --tokenizer-type ByteTokenizer > "$work/k1.txt" 2>&1
check "several --json-keys are refused, naming one run per key" "[ $? -eq 2 ] && grep -q 'writes one dataset per key.*--json-keys title --output-prefix .*two_title, --json-keys text --output-prefix .*two_text' $work/k1.txt && [ ! -e $work/two ]"
cp "$work/two.jsonl" "$work/two.txt"
"$tok" --input "$work/two.txt" --json-keys text --output-prefix "$work/two" --tokenizer-type ByteTokenizer > "$work/k2.txt" 2>&1
check "--json-keys on a text input is refused" "[ $? -eq 2 ] && grep -q -- '--json-keys: .*two.txt is read as text (by its extension), which has no keys; pass --input-format jsonl' $work/k2.txt"
"$tok" --input "$work/two.txt" --input-format jsonl --json-keys text --output-prefix "$work/two" --tokenizer-type ByteTokenizer \
  --dataset-impl mmap --partitions 2 --log-interval 100 --keep-sequential-samples --lang english --workers 1 > "$work/k3.txt" 2>&1
check "preprocess_data.py's flags that change nothing are accepted" "[ $? -eq 0 ] && grep -q 'wrote .*two: 1 documents' $work/k3.txt"
"$tok" --input "$work/two.jsonl" --output-prefix "$work/two-s" --tokenizer-type ByteTokenizer --split-sentences > "$work/k4.txt" 2>&1
check "--split-sentences is refused with the reason" "[ $? -eq 2 ] && grep -q -- '--split-sentences: documents are not split into sentences here' $work/k4.txt"
printf '{"text": "   "}\n{"text": ""}\n{"text": "x"}\n' > "$work/blank.jsonl"
"$tok" --input "$work/blank.jsonl" --output-prefix "$work/blank-spm" "${spm[@]}" --append-eod > "$work/k5.txt" 2>&1
check "JSON text that encodes to no token is no document (SentencePiece drops whitespace)" "[ $? -eq 0 ] && grep -q 'wrote .*blank-spm: 1 documents' $work/k5.txt"
"$tok" --input "$work/blank.jsonl" --output-prefix "$work/blank-byte" --tokenizer-type ByteTokenizer --append-eod > "$work/k6.txt" 2>&1
check "JSON whitespace that encodes to tokens is a document" "[ $? -eq 0 ] && grep -q 'wrote .*blank-byte: 2 documents' $work/k6.txt"

# llm-pretrain on the dataset
"$pre" --data-path "$work/ds1" --num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 32 \
  --micro-batch-size 4 --global-batch-size 4 --train-iters 3 --log-interval 1 --eval-iters 1 --split 90,10,0 \
  "${spm[@]}" --output-dir "$work/run" > "$work/t1.txt" 2>&1
check "pretrain on the dataset exits 0" "[ $? -eq 0 ] && [ \$(grep -c 'lm loss:' $work/t1.txt) -eq 3 ]"
check "pretrain takes the vocabulary from the dataset" "grep -q 'vocab 405 (padded 512)' $work/t1.txt"
"$pre" --data-path "$work/ds1" --train-iters 1 --tokenizer-type ByteTokenizer > "$work/t2.txt" 2>&1
check "tokenizer mismatch is refused naming both" "[ $? -eq 2 ] && grep -q 'ByteTokenizer:256' $work/t2.txt && grep -q 'SentencePieceTokenizer:' $work/t2.txt"
"$pre" --data-path "$work/ds1" --train-iters 1 --vocab-size 100 "${spm[@]}" > "$work/t2b.txt" 2>&1
check "a --vocab-size flag against the dataset's vocabulary is refused, not dropped" "[ $? -eq 2 ] && grep -q -- '--vocab-size 100: the vocabulary comes from --data-path (.*ds1: 405 tokens)' $work/t2b.txt"
"$tok" train-tokenizer --input "$work/corpus.txt" --model-prefix "$work/spmu" --vocab-size 400 --model-type unigram > /dev/null 2>&1
"$pre" --data-path "$work/ds1" --train-iters 1 --tokenizer-type SentencePieceTokenizer --tokenizer-model "$work/spmu.model" > "$work/t2c.txt" 2>&1
check "another SentencePiece model than the dataset's is named by its flag" "[ $? -eq 2 ] && grep -q -- 'from --tokenizer-type SentencePieceTokenizer --tokenizer-model .*spmu.model) differs from' $work/t2c.txt"
# Megatron's NullTokenizer: --vocab-size without the end-of-document id, on the data and the model alike
for i in $(seq 1 200); do echo "$((i % 97)) $((i % 13)) $((i % 89)) 5 6 7 8 9 10 11 12"; done > "$work/null-ids.txt"
"$tok" --input "$work/null-ids.txt" --document-boundary line --tokenizer-type NullTokenizer --vocab-size 100 \
  --append-eod --output-prefix "$work/nullds" > /dev/null 2>&1
"$pre" --data-path "$work/nullds" --tokenizer-type NullTokenizer --vocab-size 100 --num-layers 1 --hidden-size 32 \
  --num-attention-heads 2 --seq-length 16 --micro-batch-size 2 --train-iters 1 --output-dir "$work/nullrun" > "$work/t2d.txt" 2>&1
check "NullTokenizer's --vocab-size (Megatron's meaning) is accepted with its dataset" "[ $? -eq 0 ] && grep -q 'lm loss' $work/t2d.txt"
"$tok" --input "$work/corpus.txt" --output-prefix "$work/zero" --shard-tokens 0 "${spm[@]}" > "$work/z0log.txt" 2>&1
check "--shard-tokens 0 is refused by its flag, nothing written" "[ $? -eq 2 ] && grep -q -- '--shard-tokens must be >= 1, got 0' $work/z0log.txt && [ -z \"\$(ls -d $work/zero.* $work/zero 2>/dev/null)\" ]"
mkfifo "$work/fifo.model"
timeout 60 "$tok" train-tokenizer --input "$work/corpus.txt" --model-prefix "$work/fifo" --vocab-size 400 > "$work/fifo.txt" 2>&1
check "a tokenizer output that is not a regular file (a FIFO) is refused before training" "[ $? -eq 2 ] && grep -q 'fifo.model: not a regular file' $work/fifo.txt && [ -p $work/fifo.model ]"
# stdin read once: the same tokenizer as from the file
"$tok" train-tokenizer --input - --model-prefix "$work/spmstdin" --vocab-size 400 < "$work/corpus.txt" > "$work/stdin.txt" 2>&1
check "train-tokenizer from stdin trains the same tokenizer as from the file" "[ $? -eq 0 ] && cmp -s $work/spmstdin.model $work/spm.model"
"$pre" --data-path 0.7 "$work/ds1" 0.3 "$work/ds2" --num-layers 1 --hidden-size 32 --num-attention-heads 2 \
  --seq-length 32 --micro-batch-size 4 --train-iters 2 --log-interval 1 "${spm[@]}" --output-dir "$work/run2" > "$work/t3.txt" 2>&1
check "blended --data-path trains and prints achieved ratios" "[ $? -eq 0 ] && grep -q 'weight 0.7 achieved' $work/t3.txt"

# Resuming without tokenizer flags: the checkpoint's tokenizer file travels on into the next one
# (it was dropped, and with --keep-last 1 no copy was left for llm-generate); data of another
# tokenizer with the same vocabulary size is refused for a resume.
small=(--num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 32 --micro-batch-size 4 --log-interval 1 --split 100,0,0)
"$pre" --data-path "$work/ds1" "${small[@]}" --train-iters 2 "${spm[@]}" --save "$work/cktok" --output-dir "$work/rtok" > "$work/r1.txt" 2>&1
"$pre" --data-path "$work/ds1" "${small[@]}" --train-iters 4 --lr-decay-iters 2 --load "$work/cktok" --save "$work/cktok" \
  --keep-last 1 --output-dir "$work/rtok" > "$work/r2.txt" 2>&1
check "a resume without tokenizer flags keeps the checkpoint's tokenizer file" "[ $? -eq 0 ] && [ ! -d $work/cktok/iter_0000002 ] && cmp -s $work/cktok/iter_0000004/tokenizer/spm.model $work/spm.model && grep -q '\"files\": {\"model\": \"tokenizer/spm.model\"}' $work/cktok/iter_0000004/metadata.json"
"$tok" train-tokenizer --input "$work/corpus.txt" --model-prefix "$work/uni" --vocab-size 400 --model-type unigram > /dev/null 2>&1
"$tok" --input "$work/corpus.txt" --output-prefix "$work/dsuni" --tokenizer-type SentencePieceTokenizer --tokenizer-model "$work/uni.model" --append-eod > /dev/null 2>&1
"$pre" --data-path "$work/dsuni" "${small[@]}" --train-iters 6 --lr-decay-iters 2 --load "$work/cktok" --output-dir "$work/rtok" > "$work/r3.txt" 2>&1
check "a resume on data of another tokenizer (same vocabulary size) is refused naming both" "[ $? -eq 2 ] && grep -q 'cktok/iter_0000004: the checkpoint was trained with the tokenizer SentencePieceTokenizer:[0-9a-f]* (its metadata.json), but the --data-path data is tokenized with SentencePieceTokenizer:[0-9a-f]*: resuming would continue on other ids' $work/r3.txt"

# A thread count libgomp cannot start a team of (its start data on the stack) crashed with SIGSEGV.
"$tok" --input "$work/corpus.txt" --output-prefix "$work/wk" --tokenizer-type ByteTokenizer --workers 100000 > "$work/w1.txt" 2>&1
check "--workers past 4096 is refused naming the flag, nothing written (it crashed in libgomp)" "[ $? -eq 2 ] && grep -q -- '--workers 100000: expected 0 (OMP_NUM_THREADS or all cores) to 4096 threads' $work/w1.txt && [ -z \"\$(ls -d $work/wk* 2>/dev/null)\" ]"
OMP_NUM_THREADS=100000 "$tok" --input "$work/corpus.txt" --output-prefix "$work/wk" --tokenizer-type ByteTokenizer > "$work/w2.txt" 2>&1
check "OMP_NUM_THREADS past 4096 is refused naming the variable" "[ $? -eq 2 ] && grep -q 'OMP_NUM_THREADS=100000: at most 4096 threads a process (or give --workers)' $work/w2.txt"
"$pre" --mock-data --vocab-size 64 --num-layers 1 --hidden-size 32 --num-attention-heads 2 --seq-length 16 \
  --micro-batch-size 2 --train-iters 1 --threads 100000 --output-dir "$work/thrun" > "$work/w3.txt" 2>&1
check "llm-pretrain --threads past 4096 is refused naming the flag" "[ $? -eq 2 ] && grep -q -- '--threads must be in \[0, 4096\] (0: OMP_NUM_THREADS or all cores), got 100000' $work/w3.txt"

finish "llm-tokenize CLI"
