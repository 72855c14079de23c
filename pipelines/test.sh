#!/usr/bin/env bash
# The test suite: install what is missing, build, run every test through ctest.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/pipelines/setup.sh"
"$root/pipelines/build.sh"
cd "${BUILD_DIR:-$root/build}"
ctest --output-on-failure -j1 "$@"
