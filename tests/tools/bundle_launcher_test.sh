#!/usr/bin/env bash
# pipelines/bundle.sh --launcher: the bundle's own mpirun starts ranks on a machine without an
# MPI installation. The system's Open MPI and PMIx (launcher, daemon, libraries, plugins, help
# files, settings) and remote shells (ssh, rsh) are hidden in a private mount namespace
# (unshare -m; exit 77 = skipped, with the reason, where that is not allowed); there the
# bundle's mpirun runs llm-pretrain on 2 data-parallel ranks, which must give the single
# process's losses.
# Usage: bundle_launcher_test.sh BUNDLE_SH LLM_PRETRAIN
set -uo pipefail
bundle_sh="$1" exe="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

command -v mpirun > /dev/null || { echo "skipped: no mpirun to bundle"; exit 77; }
if ! unshare -m --propagation private true 2> "$work/unshare.txt"; then
  echo "skipped: cannot hide the system's MPI (unshare -m: $(head -1 "$work/unshare.txt"))"
  exit 77
fi
"$bundle_sh" --launcher --name llm-launch-test --output "$work/b.tar.gz" "$exe" > "$work/log" 2>&1 ||
  { cat "$work/log"; fail "bundle.sh --launcher failed"; }
tar -xzf "$work/b.tar.gz" -C "$work"
root="$work/llm-launch-test"
for f in bin/mpirun bin/mpiexec libexec/mpirun etc/openmpi-mca-params.conf; do
  [[ -e "$root/$f" ]] || fail "$f missing from the bundle"
done
ls "$root/share/openmpi/" | grep -q '^help-.*\.txt$' || fail "Open MPI's help files missing from share/openmpi"

# What to hide: every file of the system's Open MPI and PMIx that the bundle holds a copy of.
hide=()
libmpi="$(ldd "$exe" | awk '$1 ~ /^libmpi\.so/ {print $3}')"
# (libpmix: Open MPI's PMIx plugin links it, not mpirun itself.)
for lib in $(ldd "$exe" "$root"/libexec/mpirun "$root"/lib/openmpi/*.so 2> /dev/null | awk '$1 ~ /^lib(mpi|open-rte|open-pal|pmix)\.so/ {print $3}' | sort -u); do
  hide+=("$(readlink -f "$lib")")
done
run="$(readlink -f "$(command -v orterun || command -v mpirun)")"
hide+=("$run")
# A machine without MPI may have no remote shell either (Open MPI's launcher then needs telling).
for sh in ssh rsh; do
  command -v "$sh" > /dev/null && hide+=("$(readlink -f "$(command -v "$sh")")")
done
[[ -e "$(dirname "$run")/orted" ]] && hide+=("$(readlink -f "$(dirname "$run")/orted")")
info="$(ompi_info --path all 2> /dev/null || true)"
dirs=()
for key in Pkglibdir Pkgdatadir Sysconfdir; do
  d="$(awk -F': *' -v k="$key" '$1 ~ k"$" {print $2; exit}' <<< "$info")"
  [[ -d "$d" ]] && dirs+=("$d")
done
pmix="$(ldd "$root"/libexec/mpirun "$root"/lib/openmpi/*.so 2> /dev/null | awk '$1 ~ /^libpmix\.so/ && !n++ {print $3}')"
[[ -n "$pmix" && -d "$(dirname "$(readlink -f "$pmix")")/pmix" ]] && dirs+=("$(dirname "$(readlink -f "$pmix")")/pmix")
[[ ${#dirs[@]} -ge 2 && -n "$libmpi" ]] || fail "could not find the system's Open MPI to hide (ompi_info: ${info:0:200})"

cat > "$work/hidden.sh" <<'HIDE'
#!/bin/sh
# hidden.sh "DIRS" "FILES" cmd...: runs cmd with DIRS under empty tmpfs mounts and FILES bound to /dev/null
set -e
for d in $1; do mount -t tmpfs none "$d"; done
for f in $2; do mount --bind /dev/null "$f"; done
shift 2
exec "$@"
HIDE
chmod +x "$work/hidden.sh"
hidden() { unshare -m --propagation private "$work/hidden.sh" "${dirs[*]}" "${hide[*]}" "$@"; }

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1 OMP_NUM_THREADS=1
# The hiding works: the system's launcher cannot start (and neither could its libraries load).
hidden "$run" --version > "$work/system.txt" 2>&1 && fail "the system's mpirun still runs with Open MPI hidden: $(head -3 "$work/system.txt")"
args=(--mock-data --vocab-size 128 --num-layers 2 --hidden-size 64 --num-attention-heads 4 --seq-length 32
      --micro-batch-size 2 --global-batch-size 8 --lr 3e-3 --seed 3 --train-iters 3 --log-interval 1)
"$exe" "${args[@]}" --output-dir "$work/one" > "$work/one.txt" 2>&1 || fail "single process: $(tail -3 "$work/one.txt")"
(cd / && hidden timeout 120 "$root/bin/mpirun" -np 2 "$root/bin/llm-pretrain" "${args[@]}" --output-dir "$work/two") > "$work/two.txt" 2>&1 ||
  fail "the bundle's mpirun -np 2 with the system's Open MPI hidden: $(tail -5 "$work/two.txt")"
grep -q 'x 2 data-parallel ranks' "$work/two.txt" || fail "2 ranks did not form one data-parallel group: $(grep -m3 -i 'rank\|layout' "$work/two.txt")"
paste <(grep -o '"lm_loss": [^,]*' "$work/one/metrics.jsonl" | cut -d' ' -f2) <(grep -o '"lm_loss": [^,]*' "$work/two/metrics.jsonl" | cut -d' ' -f2) |
  awk 'BEGIN {n = 0} {n++; d = $1 - $2; if (d < 0) d = -d; if (d > 1e-5 * $1) bad = 1} END {exit !(n == 3 && !bad)}' ||
  fail "2 ranks under the bundle's mpirun: losses differ from the single process: $(paste "$work/one/metrics.jsonl" "$work/two/metrics.jsonl" | head -3)"
echo "bundle launcher test passed: mpirun from the bundle ran 2 ranks with the system's Open MPI hidden ($(echo "${dirs[@]}" "${hide[@]}" | wc -w) paths)"
