#!/usr/bin/env bash
# The main job, end to end on CPU in a few minutes:
#   install + build -> KJV corpus (Debian bible-kjv) -> SentencePiece tokenizer -> sharded HDF5
#   dataset -> pretrain a tiny GPT, reporting the loss falling.
# (-> finetune -> generate joins as llm-finetune and llm-generate land.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/pipelines/setup.sh"
"$root/pipelines/build.sh" --target llm-tokenize llm-pretrain
bin="${BUILD_DIR:-$root/build}/tools"
out="${OUTPUT_DIR:-$root/runs/quickstart}"
mkdir -p "$out"

echo "[quickstart] 1/4 corpus: King James Bible, one document per chapter -> $out/kjv.txt"
"$root/pipelines/corpus-kjv.sh" > "$out/kjv.txt"

echo "[quickstart] 2/4 tokenizer: SentencePiece BPE, 4000 pieces -> $out/kjv-spm.model"
"$bin/llm-tokenize" train-tokenizer --input "$out/kjv.txt" --model-prefix "$out/kjv-spm" --vocab-size 4000

echo "[quickstart] 3/4 dataset: sharded HDF5 -> $out/kjv-data"
"$bin/llm-tokenize" --input "$out/kjv.txt" --output-prefix "$out/kjv-data" --overwrite \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$out/kjv-spm.model" --append-eod

echo "[quickstart] 4/4 pretrain (configs/train/quickstart.yaml)"
rm -f "$out/pretrain/metrics.jsonl"
"$bin/llm-pretrain" --config "$root/configs/train/quickstart.yaml" --output-dir "$out/pretrain" \
  --data-path "$out/kjv-data" --data-cache-path "$out/index-cache" \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$out/kjv-spm.model" "$@"
first=$(head -n1 "$out/pretrain/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
last=$(tail -n1 "$out/pretrain/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
echo "[quickstart] lm loss fell from $first to $last (chance level ln(4000) = 8.29)"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.0) }' || { echo "[quickstart] loss did not fall" >&2; exit 1; }
