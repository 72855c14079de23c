#!/usr/bin/env bash
# The main job, end to end on CPU in a few minutes: install, build, pretrain a tiny GPT on the
# mock stream and report the loss falling. (Data -> pretrain -> finetune -> generate grows here
# as llm-tokenize, llm-finetune and llm-generate land.)
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/pipelines/setup.sh"
"$root/pipelines/build.sh" --target llm-pretrain
build="${BUILD_DIR:-$root/build}"
out="${OUTPUT_DIR:-$root/runs/quickstart}"
rm -f "$out/metrics.jsonl"
echo "[quickstart] pretraining (configs/train/quickstart.yaml) -> $out"
"$build/tools/llm-pretrain" --config "$root/configs/train/quickstart.yaml" --output-dir "$out" "$@"
first=$(head -n1 "$out/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
last=$(tail -n1 "$out/metrics.jsonl" | sed 's/.*"lm_loss": \([^,]*\),.*/\1/')
echo "[quickstart] lm loss fell from $first to $last (chance level ln(512) = 6.238)"
awk -v a="$first" -v b="$last" 'BEGIN { exit !(b < a - 1.0) }' || { echo "[quickstart] loss did not fall" >&2; exit 1; }
