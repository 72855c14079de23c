#!/usr/bin/env bash
# The MPI communicators' collective timeout end to end (tests/mpi/timeout/mpi_timeout_main.cpp):
# in each failing mode rank 0 must exit 1 within 15 s (2 s timeout, a 200 ms watchdog), its one
# message naming the operation and the flag, and the launcher must end the job; in `ok` nothing
# fires.
#   timeout_test.sh MPIEXEC PROGRAM
set -uo pipefail
mpiexec="$1" prog="$2"
fail=0
run() {  # mode -> $rc $took $log
  local mode="$1"
  log="$(mktemp)"
  local t0=$SECONDS
  timeout 60 "$mpiexec" -np 2 "$prog" "$mode" > "$log" 2>&1
  rc=$?
  took=$((SECONDS - t0))
}
run ok
if [[ $rc != 0 ]] || ! grep -q "no false alarm" "$log" || grep -q "\[error\]" "$log"; then
  echo "FAILED ok: exit $rc"; cat "$log"; fail=1
else
  echo "ok: no timeout fired (exit 0, $took s)"
fi
rm -f "$log"
check() {  # mode, the operation's words in rank 0's message
  local mode="$1" want="$2"
  run "$mode"
  local line
  line="$(grep -m1 '^\[error\]' "$log")"
  if [[ $rc == 0 || $rc == 124 || $took -ge 15 ]] || grep -q FAILED "$log" || [[ -z $line ]] ||
     [[ $line != *"$want"* ]] || [[ $line != *"--distributed-timeout-minutes"* ]] ||
     [[ $(grep -c '^\[error\]' "$log") != 1 ]]; then
    echo "FAILED $mode: exit $rc after $took s"; cat "$log"; fail=1
  else
    echo "$mode: exit $rc after $took s: ${line:0:200}"
  fi
  rm -f "$log"
}
check blocking "rank 0: the MPI communicator of 2 ranks (its rank 0): all_reduce_sum of 4096 bytes called"
check scalar "all_reduce_sum (a scalar) of 8 bytes called"
check recv "recv of 4096 bytes with rank 1 called"
check split "rank 0: MPI_Comm_split of every rank (color 0): not finished"
check waited "all_gather_ranges of 12000 bytes called"
exit $fail
