#!/usr/bin/env bash
# tests/cuda/sass_stalls.py on made-up files: a cuobjdump -sass listing (testdata/sass_sample.txt:
# two sm_90a kernels, then an sm_90 one; predicates, labels, NOPs, two-part opcodes) and an Nsight
# Compute source-page CSV (testdata/ncu_source_sample.csv: a kernel-name row, thousands separators).
set -euo pipefail
src="$(cd "$(dirname "$0")/../.." && pwd)"
py="$src/tests/cuda/sass_stalls.py"
data="$src/tests/cuda/testdata"
fail() { echo "FAIL: $*"; exit 1; }

mix="$(python3 "$py" mix "$data/sass_sample.txt")"
echo "$mix"
want="_ZN3llm7kernels5sm90a27attention_backward_wgmma_wsI13__nv_bfloat16Li128ELNS1_4WsDqE0EEEvPKfi: 12 instructions (without NOP): HGMMA=2 RED=2 LDC=1 S2R=1 WARPGROUP.ARRIVE=1 WARPGROUP.DEPBAR=1 MUFU.EX2=1 BAR.SYNC=1 EXIT=1 BRA=1"
[[ "$(echo "$mix" | sed -n 1p)" == "$want" ]] || fail "mix, first kernel; want: $want"
[[ "$(echo "$mix" | wc -l)" -eq 3 ]] || fail "mix: one line per kernel (3)"

# extract: the matching kernel verbatim, not the next kernel nor the next architecture's preamble.
got="$(python3 "$py" extract "$data/sass_sample.txt" 'attention_backward_wgmma_ws.*bfloat16Li128E')"
[[ "$(echo "$got" | grep -c '/\*00[0-9a-f]0\*/')" -eq 13 ]] || fail "extract: the 13 instruction lines of the backward kernel"
[[ "$got" == *attention_forward* ]] && fail "extract: took the forward kernel too"
[[ "$got" == *"arch = sm_90"* ]] && fail "extract: took the next fatbin's preamble"
got="$(python3 "$py" extract "$data/sass_sample.txt" 'dq_from_accum')"
[[ "$(echo "$got" | grep -c '\*/ *[A-Z]')" -eq 2 ]] || fail "extract: the sm_90 kernel's two instructions"
python3 "$py" extract "$data/sass_sample.txt" 'no_such_kernel' > /dev/null && fail "extract: no match must exit non-zero"

st="$(python3 "$py" stalls "$data/ncu_source_sample.csv")"
echo "$st"
[[ "$(echo "$st" | sed -n 1p)" == "7 instructions, 2000 warp-stall samples (94.3% not issued)" ]] || fail "stalls: totals"
[[ "$(echo "$st" | sed -n 2p)" == "by opcode (% of samples, of them not issued): BAR.SYNC=89.9%(95) WARPGROUP.DEPBAR=6.0%(98) HGMMA=2.0%(80) RED=2.0%(88) LDC=0.1%(50)" ]] ||
  fail "stalls: by opcode (the two REDs summed, 1,798 read as 1798)"
[[ "$(echo "$st" | sed -n 3p)" == "  0x7f0000000090  89.9% ( 95% not issued)  BAR.SYNC.DEFER_BLOCKING 0x1, 0x100" ]] || fail "stalls: the hottest instruction first"
[[ "$(echo "$st" | wc -l)" -eq 9 ]] || fail "stalls: totals, opcodes and the 7 instructions"
# A file without the table says so and shows how it begins.
# (Captured first: grep -q leaving early would fail the pipeline under pipefail.)
got="$(python3 "$py" stalls "$data/sass_sample.txt")"
[[ "$got" == "no table with a Source"* ]] || fail "stalls: an unknown layout must be reported"
echo "sass_stalls.py: OK"
