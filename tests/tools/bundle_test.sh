#!/usr/bin/env bash
# pipelines/bundle.sh: bundle llm-pretrain, unpack it somewhere else and run it from there; the
# bundle holds the non-system libraries, resolves them from its own lib/, and leaves glibc and
# CUDA to the host.
# Usage: bundle_test.sh BUNDLE_SH LLM_PRETRAIN
set -euo pipefail
bundle_sh="$1" exe="$2"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
fail() { echo "FAIL: $*" >&2; exit 1; }

"$bundle_sh" --name llm-bundle-test --output "$work/b.tar.gz" "$exe" > "$work/log" 2>&1 || { cat "$work/log"; fail "bundle.sh failed"; }
mkdir -p "$work/elsewhere/deeper"
tar -xzf "$work/b.tar.gz" -C "$work/elsewhere/deeper"
root="$work/elsewhere/deeper/llm-bundle-test"
[[ -x "$root/bin/llm-pretrain" && -x "$root/libexec/llm-pretrain" ]] || fail "bin/ or libexec/llm-pretrain missing"

# The libraries the issue names are inside; glibc and CUDA are not.
for lib in libhdf5 libyaml-cpp libsentencepiece libmpi libstdc++; do
  ls "$root/lib/" | grep -q "^$lib" || fail "$lib not bundled"
done
if ls "$root/lib/" | grep -Eq '^(libc|libm|libpthread|libdl|ld-linux.*|libcuda|libcudart|libcublas|libcublasLt|libnccl)\.so'; then
  fail "a host library was bundled: $(ls "$root/lib" | grep -E '^(libc|libm|libcuda|libcudart|libcublas|libnccl)\.so')"
fi

# Runs from the new place, from another working directory, through the wrapper.
out="$(cd / && "$root/bin/llm-pretrain" --help 2>&1)" || fail "llm-pretrain --help from the bundle exited non-zero: $out"
grep -q -- "--num-layers" <<< "$out" || fail "--help output lacks --num-layers: $out"

# Every bundled library resolves inside the bundle (the wrapper's environment wins over the
# system's copies), and nothing is missing.
resolved="$(. "$root/env.sh" && ldd "$root/libexec/llm-pretrain")"
grep -q "not found" <<< "$resolved" && fail "unresolved libraries: $(grep 'not found' <<< "$resolved")"
checked=0
for lib in $(ls "$root/lib" | grep '\.so'); do
  # ldd's lines: "<tab>libfoo.so.1 => /path/libfoo.so.1 (0x...)"; the name is the first field.
  line="$(awk -v l="$lib" '$1 == l' <<< "$resolved")"
  [[ -z "$line" ]] && continue  # a dependency of a plugin only
  grep -qF "$root/lib/$lib" <<< "$line" || fail "$lib resolves outside the bundle: $line"
  checked=$((checked + 1))
done
[[ $checked -gt 0 ]] || fail "no bundled library appears in ldd's output: $resolved"
# Trains from the bundle on a machine without an MPI installation (an Open MPI prefix pointing
# nowhere): a plain process does not initialise MPI, so no MPI daemon is needed.
out="$(cd "$work" && OPAL_PREFIX=/nonexistent "$root/bin/llm-pretrain" --mock-data --train-iters 2 --log-interval 1 \
  --output-dir "$work/run" 2>&1)" || fail "training from the bundle without an MPI runtime failed: $out"
[[ $(grep -c 'lm loss' <<< "$out") -eq 2 ]] || fail "training from the bundle did not log 2 iterations: $out"
echo "bundle test passed: $(ls "$root/lib" | wc -l) libraries"
