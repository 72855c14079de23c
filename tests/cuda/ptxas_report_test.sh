#!/usr/bin/env bash
# The Hopper attention kernels' ptxas report (kernels/sm90a, compiled with -Xptxas=-v; the build
# keeps it in kernels/ptxas_sm90a.log through tests/cuda/ptxas_log.sh) must show what their
# speed rests on, checked without a GPU:
#   * no kernel spills or has a stack frame;
#   * no performance note C7508 (setmaxnreg ignored), C7510-C7519 (wgmma serialised, a fence
#     injected: ptxas reports these as info, so -Werror does not catch them);
#   * the warp-specialised forwards and backwards are there, at the 168 registers per thread at
#     entry that setmaxnreg 24/240 needs (3 warpgroups x 168 = 24 + 2 x 240, per 128 threads),
#     and the three-consumer forwards at 128 (4 x 128 = 24 + 3 x 160).
# Exits 77 (skipped) when the build has no sm_90a kernels.
#   ptxas_report_test.sh BUILD_DIR
set -uo pipefail
log="${1:?usage: ptxas_report_test.sh BUILD_DIR}/kernels/ptxas_sm90a.log"
if [[ ! -f "$log" ]]; then
  echo "skipped: no $log (built without the sm_90a kernels)"
  exit 77
fi
fail() { echo "FAIL: $*"; exit 1; }
entries=$(grep -c "Compiling entry function" "$log")
[[ "$entries" -gt 0 ]] || fail "no kernel in $log"
bad=$(grep -E "bytes stack frame" "$log" | grep -v "^ *0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads" | head -3)
[[ -z "$bad" ]] || fail "spills or stack frames: $bad"
notes=$(grep -E "\(C75(08|1[0-9])\)" "$log" | cut -c1-200 | head -3)
[[ -z "$notes" ]] || fail "ptxas performance notes: $notes"
ws=$(grep -A3 "Compiling entry function '.*attention_forward_wgmma_ws.*Li2EEE" "$log" | grep -c "Used 168 registers")
[[ "$ws" -eq 20 ]] || fail "expected the 20 warp-specialised forwards (2 dtypes x 5 head dims x ping-pong or not) at 168 registers, found $ws"
ws3=$(grep -A3 "Compiling entry function '.*attention_forward_wgmma_ws.*Li3EEE" "$log" | grep -c "Used 128 registers")
[[ "$ws3" -eq 4 ]] || fail "expected the 4 three-consumer forwards (2 dtypes x hd 48, 64) at 128 registers (4 x 128 = 24 + 3 x 160), found $ws3"
wsb=$(grep -A3 "Compiling entry function '.*attention_backward_wgmma_ws" "$log" | grep -c "Used 168 registers")
[[ "$wsb" -eq 82 ]] || fail "expected the 82 warp-specialised backwards (2 dtypes x 5 head dims x five dQ paths: atomic, dQ first, TMA, and the two atomic ones converting dQ themselves; and 2 dtypes x 4 head dims x the two atomic orders with 16-byte reductions, converting or not) at 168 registers, found $wsb"
echo "ptxas report: $entries kernels, no spills, no stack frames, no performance notes; warp-specialised kernels at their entry registers"
