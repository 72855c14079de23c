# The CLI test scripts' harness, sourced: a scratch directory removed at exit ($work), checks that
# count their failures (check "what" "condition", or pass / fail "what"), and finish "name", which
# prints the tally and exits non-zero when a check failed.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
fails=0
pass() { echo "ok   $1"; }
fail() { echo "FAIL $1"; fails=$((fails + 1)); }
check() { if eval "$2"; then pass "$1"; else fail "$1"; fi; }
finish() {
  [ "$fails" -eq 0 ] && echo "all $1 checks passed" || echo "$fails $1 check(s) failed"
  exit $((fails > 0))
}
