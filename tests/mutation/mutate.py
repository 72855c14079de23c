#!/usr/bin/env python3
"""Mutation check of the test suite: does a plausible bug in lib/ make some test fail?

Each mutant (tests/mutation/mutants.py) is one exact-text replacement in one source file: a
formula's constant, a boundary, a forgotten line. For each, this script writes the change into
the working tree, builds the --build directory, runs the unit test binaries (stopping at the
first failure; a binary that dies without a failure line, a crash, fails too) and, when they all pass and the mutant names some, the ctest tests it gives (CLI
and MPI tests, which take minutes); then puts the file back. A mutant no test notices is a gap in the suite:

  KILLED      a test failed (named)        SURVIVED  every test passed: write the missing test
  BUILDFAIL   the change did not compile   STALE     the text is no longer in the file (once)

  tests/mutation/mutate.py [--build build] [--list] [ID ...]   # default: every mutant

It edits the checkout in place (each file restored in a `finally`, and rebuilt at the end), so
run it on a clean tree and nothing else meanwhile. About 20 s per mutant that a unit test kills
and ~1 min otherwise on 2 cores (a mutant in a header rebuilds more); the whole list ~1.5 h.
Not part of ctest: a manual audit, as docs/architecture.md ("Testing") says.
"""
import argparse
import importlib.util
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Fastest first: a mutant is usually killed by the area's own binary.
UNIT = ["test_core", "test_parallel", "test_model", "test_io", "test_sweep", "test_infer", "test_train",
        "test_backend", "test_data"]


def run(cmd, timeout, env):
    try:
        return subprocess.run(["bash", "-o", "pipefail", "-c", cmd], cwd=ROOT, env=env, timeout=timeout,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT).stdout.decode(errors="replace")
    except subprocess.TimeoutExpired:
        return None


def check(mutant, build, env):
    """KILLED/SURVIVED/BUILDFAIL and what decided it, for a mutant already written."""
    try:
        subprocess.run(["cmake", "--build", build, "-j2"], cwd=ROOT, env=env, check=True, timeout=1800,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as e:
        out = e.stdout.decode(errors="replace") if e.stdout else "timeout"
        return "BUILDFAIL", out.strip().splitlines()[-1] if out.strip() else ""
    for binary in UNIT:
        # The first failure's line, or the exit status when the binary died without one (a crash).
        out = run(f"{build}/tests/{binary} --gtest_brief=1 > /tmp/mutate-unit.$$ 2>&1; rc=$?; "
                  f"grep -m1 -E '^\\[  FAILED' /tmp/mutate-unit.$$ || {{ [ $rc = 0 ] || echo \"exit status $rc\"; }}; "
                  f"rm -f /tmp/mutate-unit.$$", 900, env)
        if out is None:
            return "KILLED", f"{binary}: timed out"
        if out.strip():
            return "KILLED", f"{binary}: {out.strip()}"
    if mutant.get("ctest"):
        out = run(f"ctest --test-dir {build} -R '{mutant['ctest']}' 2>&1", 1800, env)
        if out is None:
            return "KILLED", f"ctest -R '{mutant['ctest']}': timed out"
        failed = [l.strip() for l in out.splitlines() if "***Failed" in l or "***Timeout" in l]
        if failed or re.search(r"\b[1-9][0-9]* tests failed", out):
            return "KILLED", f"ctest: {'; '.join(failed)[:200]}"
    return "SURVIVED", ""


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build", help="the configured build directory (default build)")
    ap.add_argument("--list", action="store_true", help="list the mutants and exit")
    ap.add_argument("ids", nargs="*", help="mutant ids (default: all)")
    args = ap.parse_args()
    spec = importlib.util.spec_from_file_location("mutants", os.path.join(ROOT, "tests/mutation/mutants.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ids = [m["id"] for m in mod.MUTANTS]
    twice = sorted({i for i in ids if ids.count(i) > 1})
    if twice:
        sys.exit(f"mutate.py: mutant ids used twice in tests/mutation/mutants.py: {', '.join(twice)}")
    mutants = [m for m in mod.MUTANTS if not args.ids or m["id"] in args.ids]
    unknown = set(args.ids) - {m["id"] for m in mod.MUTANTS}
    if unknown:
        sys.exit(f"mutate.py: no mutant {', '.join(sorted(unknown))} in tests/mutation/mutants.py")
    if args.list:
        for m in mutants:
            print(f"{m['id']:6} {m['file']}: {m['why']}")
        return
    dirty = run("git status --porcelain --untracked-files=no", 60, os.environ)
    if dirty and dirty.strip():
        sys.exit("mutate.py: the checkout has uncommitted changes; commit or stash them first")
    env = dict(os.environ, OMP_NUM_THREADS="2", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMPI_MCA_rmaps_base_oversubscribe="1")
    counts = {}
    try:
        for m in mutants:
            path = os.path.join(ROOT, m["file"])
            with open(path) as f:
                original = f.read()
            if original.count(m["old"]) != 1:
                verdict, why = "STALE", f"the text occurs {original.count(m['old'])} times in {m['file']}"
                secs = 0.0
            else:
                start = time.time()
                try:
                    with open(path, "w") as f:
                        f.write(original.replace(m["old"], m["new"]))
                    verdict, why = check(m, args.build, env)
                finally:
                    with open(path, "w") as f:
                        f.write(original)
                secs = time.time() - start
            counts[verdict] = counts.get(verdict, 0) + 1
            print(f"{m['id']:6} {verdict:9} {secs:5.0f}s  {why or m['why']}", flush=True)
    finally:
        subprocess.run(["cmake", "--build", args.build, "-j2"], cwd=ROOT, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
    print("; ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    sys.exit(1 if counts.get("SURVIVED") or counts.get("STALE") else 0)


if __name__ == "__main__":
    main()
