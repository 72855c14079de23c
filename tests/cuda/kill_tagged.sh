#!/usr/bin/env bash
# Kills (SIGKILL) every process with an environment entry matching REGEX (grep -E on each
# NAME=VALUE entry, e.g. '^LLM_GPU_RUN=' or '^LLM_MULTIRANK_STEP=token$') and prints how many.
# The GPU validation scripts tag what they start this way, so that what a timeout left behind
# (ranks spinning in NCCL, an ncu) can be found and stopped before it skews what runs next.
# usage: tests/cuda/kill_tagged.sh REGEX
set -uo pipefail
n=0
for p in /proc/[0-9]*; do
  [[ "${p#/proc/}" = "$$" ]] && continue
  if grep -qzE "$1" "$p/environ" 2> /dev/null; then
    kill -9 "${p#/proc/}" 2> /dev/null && n=$((n + 1))
  fi
done
echo "$n"
