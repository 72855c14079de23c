#!/usr/bin/env bash
# Compile launcher (RULE_LAUNCH_COMPILE of kernels/sm90a): runs the compiler command and keeps
# its output, ptxas's -v report included, in LOG (rewritten per compile) as well as printing it,
# so tests/cuda/ptxas_report_test.sh can hold the Hopper kernels to no spills and no serialised
# wgmma on machines without a GPU.
#   ptxas_log.sh LOG compiler args...
log="$1"
shift
out="$("$@" 2>&1)"
rc=$?
printf '%s\n' "$out" > "$log"
[[ -n "$out" ]] && printf '%s\n' "$out" >&2
exit $rc
