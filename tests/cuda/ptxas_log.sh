#!/usr/bin/env bash
# Compile launcher (CUDA_COMPILER_LAUNCHER of kernels/sm90a's and kernels/'s objects): runs the
# compiler command and keeps its output, ptxas's -v report included, in LOG (rewritten per
# compile; a LOG ending in / is a directory, the log then LOG/<the source's file name>.log) as
# well as printing it, so tests/cuda/ptxas_report_test.sh and ptxas_tc_test.sh can hold the
# attention kernels to no spills (and the Hopper ones to no serialised wgmma) on machines without
# a GPU.
#   ptxas_log.sh LOG compiler args...
log="$1"
shift
if [[ "$log" == */ ]]; then
  source_file=""
  prev=""
  for arg in "$@"; do
    [[ "$prev" == "-c" ]] && source_file="$arg"
    prev="$arg"
  done
  mkdir -p "$log"
  log="$log$(basename "${source_file:-unknown}").log"
fi
out="$("$@" 2>&1)"
rc=$?
printf '%s\n' "$out" > "$log"
[[ -n "$out" ]] && printf '%s\n' "$out" >&2
exit $rc
