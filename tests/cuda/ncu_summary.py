#!/usr/bin/env python3
"""One line per profiled kernel from Nsight Compute's text report (ncu --section ... > FILE):
the kernel (its function name and template arguments, without the namespaces), its duration,
the throughput and occupancy metrics that say what bounds it, the largest stall reasons when the
report has them (cycles per issued instruction), and the percentages the profiler's rules name
(the busiest pipeline, shared-memory bank conflicts, stall reasons), so the summary of a GPU run
carries them without the full report.

  ncu_summary.py REPORT.txt [...]
"""
import re
import sys

# Metric name -> short label, in output order (whichever the report has).
METRICS = [
    ("Duration", "dur"),
    ("Compute (SM) Throughput", "sm%"),
    ("Memory Throughput", "mem%"),
    ("L1/TEX Cache Throughput", "l1%"),
    ("Max Bandwidth", "maxbw%"),
    ("Mem Pipes Busy", "mempipes%"),
    ("Issue Slots Busy", "issue%"),
    ("No Eligible", "noelig%"),
    ("Achieved Occupancy", "occ%"),
    ("Registers Per Thread", "regs"),
    ("Warp Cycles Per Issued Instruction", "cyc/inst"),
]
KERNEL = re.compile(r"^  (?:void )?(\S.*?)\s+\((\d+), (\d+), (\d+)\)x\((\d+), (\d+), (\d+)\)")
METRIC = re.compile(r"^\s{4}(\S.*?)\s{2,}(\S+)\s+([-\d.,]+)\s*$")
RULE_PCT = re.compile(r"(\d+(?:\.\d+)?)%")
# --metrics "regex:smsp__average_warps_issue_stalled_.*_per_issue_active\.ratio": cycles stalled per
# issued instruction, by reason (their sum is about cyc/inst); printed unitless or with a unit.
STALL = re.compile(r"^\s{4}smsp__average_warps_issue_stalled_(\w+?)_per_issue_active\.ratio\s+(?:\S+\s+)?([-\d.,]+)\s*$")
TOP_STALLS = 5


def short_name(signature):
    """attention_backward_dkdv_wgmma<bf16,64,1,false> from the demangled signature."""
    sig = signature.replace("(anonymous namespace)::", "")
    lt, paren = sig.find("<"), sig.find("(")
    if lt < 0 or (0 <= paren < lt):  # no template arguments
        return sig[: paren if paren >= 0 else len(sig)].split("::")[-1]
    depth, end = 0, lt
    for end in range(lt, len(sig)):
        depth += {"<": 1, ">": -1}.get(sig[end], 0)
        if depth == 0:
            break
    head, args = sig[:lt].split("::")[-1], sig[lt + 1 : end]
    args = re.sub(r"\((?:\w+::)*\w+\)(-?\d+)", r"\1", args)  # (llm::kernels::WgmmaBackward)1 -> 1
    args = re.sub(r"(?:\w+::)+", "", args).replace("__nv_bfloat16", "bf16").replace("__half", "f16")
    return f"{head}<{args.replace(' ', '')}>"


def summarise(path):
    lines, cur, rules = [], None, []

    def flush():
        if cur is not None:
            cells = " ".join(f"{label}={cur['m'][name]}" for name, label in METRICS if name in cur["m"])
            if cur["stalls"]:
                top = sorted(cur["stalls"].items(), key=lambda kv: -kv[1])[:TOP_STALLS]
                cells += " stalls: " + " ".join(f"{reason}={value:.2f}" for reason, value in top)
            note = (" | " + "; ".join(rules[:4])) if rules else ""
            lines.append(f"{cur['name']} grid {cur['grid']}: {cells}{note}")

    with open(path, errors="replace") as f:
        for raw in f:
            line = raw.rstrip("\n")
            k = KERNEL.match(line)
            if k:
                flush()
                cur = {"name": short_name(k.group(1)), "grid": "x".join(k.group(2, 3, 4)), "m": {}, "stalls": {}}
                rules = []
                continue
            if cur is None:
                continue
            st = STALL.match(line)
            if st:
                cur["stalls"][st.group(1)] = float(st.group(2).replace(",", ""))
                continue
            m = METRIC.match(line)
            if m:
                name, unit, value = m.groups()
                cur["m"].setdefault(name, value + ("" if unit in ("%", "register/thread") else unit))
                continue
            # Rule messages ("    OPT   ..." / "    INF   ..."): the sentence with a percentage.
            text = line.strip()
            if text.startswith(("OPT", "INF", "WRN")) and RULE_PCT.search(text):
                sentence = re.split(r"(?<=[.])\s", text[3:].strip())[0]
                rules.append(sentence[:160])
    flush()
    return lines


def main(argv):
    if len(argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    for path in argv[1:]:
        print(f"== {path}")
        for line in summarise(path):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
