#!/usr/bin/env bash
# The mma.sync attention backward's ptxas report (kernels/attention_tc_backward.cu, compiled with
# -Xptxas=-v for every architecture of the build; kept in kernels/ptxas/ by tests/cuda/ptxas_log.sh)
# must show, without a GPU:
#   * no spills and no stack frame in any of its kernels but those at head dim 160 (whose dK and
#     dV alone take 160 registers per thread: a few spilled bytes there are known);
#   * the 8-warp fused dK/dV kernels (FlashAttention-2's tile, at 255 registers at hd 128) there
#     for 2 dtypes x 5 head dims per architecture.
# Exits 77 (skipped) when the build has no CUDA kernels.
#   ptxas_tc_test.sh BUILD_DIR
set -uo pipefail
log="${1:?usage: ptxas_tc_test.sh BUILD_DIR}/kernels/ptxas/attention_tc_backward.cu.log"
if [[ ! -f "$log" ]]; then
  echo "skipped: no $log (built without the CUDA kernels)"
  exit 77
fi
fail() { echo "FAIL: $*"; exit 1; }
# One line per kernel and architecture: "sm_XX NAME STACK SPILL_STORES".
table=$(awk '
  match($0, /Compiling entry function \047[^\047]+\047 for \047sm_[0-9a-z]+\047/) {
    s = substr($0, RSTART, RLENGTH); split(s, q, "\047"); name = q[2]; arch = q[4]; next
  }
  name != "" && match($0, /[0-9]+ bytes stack frame, [0-9]+ bytes spill stores/) {
    split(substr($0, RSTART, RLENGTH), w, " "); print arch, name, w[1], w[5]; name = ""
  }' "$log")
[[ -n "$table" ]] || fail "no kernel in $log"
archs=$(awk '{print $1}' <<< "$table" | sort -u | wc -l)
bad=$(awk '$2 ~ /attention_backward/ && $2 !~ /Li160E/ && ($3 != 0 || $4 != 0)' <<< "$table" | head -3)
[[ -z "$bad" ]] || fail "spills or stack frames: $bad"
wide=$(awk '$2 ~ /attention_backward_dkdv_tc/ && $2 ~ /Li8ELi64E/' <<< "$table" | wc -l)
[[ "$wide" -eq $((10 * archs)) ]] || fail "expected the 8-warp fused backward for 2 dtypes x 5 head dims on each of $archs architectures, found $wide"
echo "ptxas report of the mma.sync backward: $(wc -l <<< "$table") kernels on $archs architectures, no spills but at hd 160; $wide 8-warp fused kernels"
