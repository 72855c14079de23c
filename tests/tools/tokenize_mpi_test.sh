#!/usr/bin/env bash
# llm-tokenize under mpirun when something fails on some ranks: one message (not one per rank),
# exit 2, nothing written; and inputs or an output that some ranks see otherwise than rank 0
# (node-local disks, simulated with a mount namespace where unshare -m works) refused before the
# work instead of a dataset that duplicates or drops documents, or a failure after all the work.
# usage: tokenize_mpi_test.sh <path to llm-tokenize>
set -uo pipefail
tok="$1"
source "$(dirname "${BASH_SOURCE[0]}")/checks.sh"
command -v mpirun > /dev/null || { echo "mpirun not found (pipelines/setup.sh installs openmpi-bin)"; exit 1; }
export OMP_NUM_THREADS=1
errors() { grep -c 'llm-tokenize: error:' "$work/$1.txt"; }

for i in $(seq 1 60); do printf 'document %d, some words\nand a second line\n\n' "$i"; done > "$work/corpus.txt"
byte=(--tokenizer-type ByteTokenizer --append-eod)

# A document the tokenizer refuses, read by the last rank: its message alone, once.
{ for i in $(seq 1 40); do echo "$i $((i + 1))"; done; echo "7 x9"; echo "8"; } > "$work/ids.txt"
timeout 120 mpirun -np 4 "$tok" --input "$work/ids.txt" --document-boundary line --tokenizer-type NullTokenizer \
  --vocab-size 100 --output-prefix "$work/nul" > "$work/refuse.txt" 2>&1
rc=$?
check "a document one rank cannot tokenize: one message naming it and the rank, exit 2, nothing written" \
  "[ $rc -eq 2 ] && [ \$(errors refuse) -eq 1 ] && grep -q 'error: \[rank 3\] .*ids.txt (byte [0-9]*): cannot tokenize the document' $work/refuse.txt && [ -z \"\$(ls -d $work/nul* 2> /dev/null)\" ]"
timeout 120 mpirun -np 3 "$tok" --input "$work/corpus.txt" --output-prefix "$work/ds" "${byte[@]}" > "$work/ok.txt" 2>&1
check "three ranks write the dataset" "[ $? -eq 0 ] && grep -q 'wrote .*ds: 60 documents' $work/ok.txt"
timeout 120 mpirun -np 3 "$tok" --input "$work/corpus.txt" --output-prefix "$work/ds" "${byte[@]}" > "$work/exists.txt" 2>&1
check "an existing output is refused in one message" "[ \$? -eq 2 ] && [ \$(errors exists) -eq 1 ] && grep -q -- '--overwrite replaces it' $work/exists.txt"
timeout 120 mpirun -np 3 "$tok" --input "$work/corpus.txt" --output-prefix "$work/nt" > "$work/notype.txt" 2>&1
check "a missing --tokenizer-type is said once" "[ \$? -eq 2 ] && [ \$(errors notype) -eq 1 ] && grep -q 'tokenizer-type is required' $work/notype.txt"

# Node-local files: rank 1 sees its own directory at the same path.
if unshare -m true 2> /dev/null; then
  cat > "$work/own_view.sh" <<'EOF'
#!/bin/sh
# usage: own_view.sh RANK SRC DST prog args...: rank RANK sees SRC at DST
r=$1; src=$2; dst=$3; shift 3
if [ "${OMPI_COMM_WORLD_RANK:-${PMI_RANK:-0}}" = "$r" ]; then
  exec unshare -m sh -c 'mount --bind "$1" "$2" && shift 2 && exec "$@"' sh "$src" "$dst" "$@"
fi
exec "$@"
EOF
  chmod +x "$work/own_view.sh"
  mkdir -p "$work/in" "$work/in-other" "$work/out" "$work/out-other"
  cp "$work/corpus.txt" "$work/in/a.txt"
  cp "$work/corpus.txt" "$work/in/b.txt"
  cp "$work/corpus.txt" "$work/in-other/a.txt"
  head -c 300 "$work/corpus.txt" > "$work/in-other/b.txt"
  timeout 120 mpirun -np 3 "$work/own_view.sh" 1 "$work/in-other" "$work/in" "$tok" --input "$work/in/a.txt" "$work/in/b.txt" \
    --output-prefix "$work/mixed" "${byte[@]}" > "$work/mixed.txt" 2>&1
  check "an input that one rank sees otherwise is refused naming it and the rank, nothing written" \
    "[ \$? -eq 2 ] && [ \$(errors mixed) -eq 1 ] && grep -q 'in/b.txt: rank 1 sees another file than rank 0 (300 bytes' $work/mixed.txt && [ ! -e $work/mixed ]"
  rm "$work/in-other/b.txt"
  timeout 120 mpirun -np 3 "$work/own_view.sh" 1 "$work/in-other" "$work/in" "$tok" --input "$work/in/a.txt" "$work/in/b.txt" \
    --output-prefix "$work/lost" "${byte[@]}" > "$work/lost.txt" 2>&1
  check "an input missing on one rank is named with the rank, once" \
    "[ \$? -eq 2 ] && [ \$(errors lost) -eq 1 ] && grep -q '\[rank 1\] .*in/b.txt: cannot read input file' $work/lost.txt"
  timeout 120 mpirun -np 3 "$work/own_view.sh" 2 "$work/out-other" "$work/out" "$tok" --input "$work/corpus.txt" \
    --output-prefix "$work/out/ds" "${byte[@]}" > "$work/local.txt" 2>&1
  check "an output directory only some ranks see is refused before the work, nothing left" \
    "[ \$? -eq 2 ] && [ \$(errors local) -eq 1 ] && grep -q 'out/ds: rank 2 of this job cannot see the files rank 0 writes beside it' $work/local.txt && [ -z \"\$(find $work/out $work/out-other -mindepth 1)\" ]"
else
  echo "skip the node-local checks: unshare -m is not permitted here"
fi

finish "llm-tokenize MPI"
