#!/usr/bin/env bash
# The main job, end to end on CPU in a few minutes:
#   install + build -> KJV corpus (Debian bible-kjv) -> SentencePiece tokenizer -> sharded HDF5
#   dataset -> pretrain a tiny GPT (reporting the loss falling, saving a checkpoint) -> verify
#   the checkpoint -> generate text from it.
# (finetune joins between pretrain and generate when llm-finetune lands.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/pipelines/setup.sh" --no-npm  # (GPT-2's vocabulary package is for the tests)
"$root/pipelines/build.sh" --target llm-tokenize llm-pretrain llm-generate llm-ckpt
bin="${BUILD_DIR:-$root/build}/tools"
out="${OUTPUT_DIR:-$root/runs/quickstart}"
mkdir -p "$out"

echo "[quickstart] 1/5 corpus: King James Bible, one document per chapter -> $out/kjv.txt"
"$root/pipelines/corpus-kjv.sh" > "$out/kjv.txt"

echo "[quickstart] 2/5 tokenizer: SentencePiece BPE, 4000 pieces -> $out/kjv-spm.model"
"$bin/llm-tokenize" train-tokenizer --input "$out/kjv.txt" --model-prefix "$out/kjv-spm" --vocab-size 4000

echo "[quickstart] 3/5 dataset: sharded HDF5 -> $out/kjv-data"
"$bin/llm-tokenize" --input "$out/kjv.txt" --output-prefix "$out/kjv-data" --overwrite \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$out/kjv-spm.model" --append-eod

echo "[quickstart] 4/5 pretrain (configs/train/quickstart.yaml)"
rm -rf "$out/pretrain/metrics.jsonl" "$out/checkpoints"
"$bin/llm-pretrain" --config "$root/configs/train/quickstart.yaml" --output-dir "$out/pretrain" \
  --save "$out/checkpoints" \
  --data-path "$out/kjv-data" --data-cache-path "$out/index-cache" \
  --tokenizer-type SentencePieceTokenizer --tokenizer-model "$out/kjv-spm.model" "$@"
first=$(head -n1 "$out/pretrain/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
last=$(tail -n1 "$out/pretrain/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
echo "[quickstart] lm loss fell from $first to $last (chance level ln(4005) = 8.30)"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.0) }' || { echo "[quickstart] loss did not fall" >&2; exit 1; }

echo "[quickstart] 5/5 generate from $out/checkpoints (checksums verified first)"
"$bin/llm-ckpt" verify "$out/checkpoints"
"$bin/llm-generate" --load "$out/checkpoints" --prompt "And God said" --max-new-tokens 48 --seed 1
