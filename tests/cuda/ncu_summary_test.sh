#!/usr/bin/env bash
# tests/cuda/ncu_summary.py on a made-up Nsight Compute text report (testdata/ncu_sample.txt: two
# kernels, namespaces and an enum-valued template argument in the signature, metrics in two
# sections, stall reasons from --metrics, one with a unit, a rule message): one line per kernel
# with the short name, grid, the metrics it has, its five largest stall reasons, and the rule's
# first sentence.
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
got="$(python3 "$src/tests/cuda/ncu_summary.py" "$src/tests/cuda/testdata/ncu_sample.txt")"
echo "$got"
want1="attention_backward_dkdv_wgmma<bf16,64,1,false> grid 32x16x4: dur=705.28us sm%=56.78 mem%=12.34 l1%=45.67 occ%=12.40 regs=254 stalls: long_scoreboard=2.41 wait=1.50 lg_throttle=1.05 math_pipe_throttle=0.33 mio_throttle=0.20 | The Tensor pipeline is the most utilized (46.0%)."
want2="attention_forward_wgmma_ws<f16,128,true,3> grid 64x16x4: dur=1.25ms sm%=80.10"
[[ "$(echo "$got" | sed -n 2p)" == "$want1" ]] || { echo "FAIL: first kernel, want: $want1"; exit 1; }
[[ "$(echo "$got" | sed -n 3p)" == "$want2" ]] || { echo "FAIL: second kernel, want: $want2"; exit 1; }
[[ "$(echo "$got" | wc -l)" -eq 3 ]] || { echo "FAIL: expected a header and two kernel lines"; exit 1; }
echo "ncu_summary.py: OK"
