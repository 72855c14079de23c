#!/usr/bin/env python3
"""Where a kernel's time goes, instruction by instruction, from two files a GPU machine can write
(gpu_validation.sh's `sass` step) and this one cannot (no cuobjdump, no GPU):

  sass_stalls.py extract SASS REGEX   the functions of `cuobjdump -sass` output whose (mangled)
                                      name matches REGEX, without the encodings: SASS to read
  sass_stalls.py mix SASS             per function: instruction count and the most frequent
                                      opcodes (HGMMA, RED, BAR, MUFU, ...): the static mix
  sass_stalls.py stalls CSV           Nsight Compute's source page (`ncu -i REP --page source
                                      --csv --print-source sass`): warp-stall samples by opcode
                                      and the instructions with the most samples

A kernel section of cuobjdump starts at a "Function : NAME" line; an instruction line is
"/*ADDR*/  [@P] OPCODE operands ;". In the CSV, the header row is the one with a "Source" cell
and a "Warp Stall Sampling (All ...)" cell; rows after it are instructions until the next header
(one table per kernel).
"""
import collections
import csv
import re
import sys

FUNCTION = re.compile(r"^\s*Function\s*:\s*(\S+)")
INSTRUCTION = re.compile(r"^\s*/\*([0-9a-fA-F]{4,})\*/\s+([^;]*?)\s*;")
PREDICATE = re.compile(r"^@!?U?P[T\d]+\s+")
# Opcodes whose second part says what they do (WARPGROUP.ARRIVE vs WARPGROUP.DEPBAR: the wait for
# wgmma; BAR.SYNC vs BAR.ARV; MUFU.EX2 vs MUFU.RCP): grouped by both parts.
TWO_PART = {"WARPGROUP", "SYNCS", "BAR", "MUFU", "UTMACMDFLUSH"}
TOP_OPCODES = 12
TOP_INSTRUCTIONS = 15


def opcode(text):
    """HGMMA from '@P0 HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], ...', WARPGROUP.DEPBAR from
    'WARPGROUP.DEPBAR.LE gsb0, 0x1'; '' for no instruction."""
    parts = PREDICATE.sub("", text.strip()).split()
    if not parts:
        return ""
    pieces = parts[0].split(".")
    return ".".join(pieces[:2]) if pieces[0] in TWO_PART else pieces[0]


def functions(path):
    """[(name, [(address, instruction text)])] in file order."""
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = FUNCTION.match(line)
            if m:
                out.append((m.group(1), []))
                continue
            i = INSTRUCTION.match(line)
            if i and out:
                out[-1][1].append((int(i.group(1), 16), i.group(2)))
    return out


ENCODING = re.compile(r"\s*/\*\s*0x[0-9a-fA-F]+\s*\*/\s*$")


def extract(path, pattern):
    """Prints the matching functions without the instruction encodings (half the lines)."""
    rx, keep, found = re.compile(pattern), False, 0
    with open(path, errors="replace") as f:
        for line in f:
            m = FUNCTION.match(line)
            if m:
                keep = bool(rx.search(m.group(1)))
                found += keep
            elif line.lstrip().startswith("code for sm_") or line.startswith("Fatbin"):
                keep = False  # the next architecture's or fatbin's preamble
            if keep:
                text = ENCODING.sub("", line.rstrip("\n"))
                if text.strip():
                    print(text)
    return found


def mix(path):
    lines = []
    for name, instructions in functions(path):
        counts = collections.Counter(opcode(text) for _, text in instructions)
        counts.pop("NOP", None)
        total = sum(counts.values())
        top = " ".join(f"{op}={n}" for op, n in counts.most_common(TOP_OPCODES))
        lines.append(f"{name}: {total} instructions (without NOP): {top}")
    return lines


def number(cell):
    try:
        return float(cell.replace(",", ""))
    except ValueError:
        return None


def tables(path):
    """[(header, rows)] of the source page CSV, one per kernel."""
    out = []
    with open(path, newline="", errors="replace") as f:
        for row in csv.reader(f):
            cells = [c.strip() for c in row]
            if "Source" in cells and any(c.startswith("Warp Stall Sampling (All") for c in cells):
                out.append((cells, []))
            elif out and len(cells) == len(out[-1][0]):
                out[-1][1].append(cells)
    return out


def stalls(path):
    lines, found = [], tables(path)
    if not found:  # another ncu's layout: show it, so the parser can follow
        with open(path, errors="replace") as f:
            head = [next(f, "").rstrip("\n")[:200] for _ in range(3)]
        return ["no table with a Source and a Warp Stall Sampling column; the file begins:"] + ["  " + h for h in head]
    for header, rows in found:
        col = {name: i for i, name in enumerate(header)}
        src = col["Source"]
        allc = next(i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (All"))
        notc = next((i for i, c in enumerate(header) if c.startswith("Warp Stall Sampling (Not")), None)
        addr = next((i for i, c in enumerate(header) if "Address" in c), None)
        samples = [(number(r[allc]) or 0.0, (number(r[notc]) or 0.0) if notc is not None else 0.0, r) for r in rows]
        total = sum(s for s, _, _ in samples)
        not_issued = sum(n for _, n, _ in samples)
        if total <= 0:
            lines.append(f"{len(rows)} instructions, no warp-stall samples")
            continue
        by_op = collections.Counter()
        by_op_not = collections.Counter()
        for s, n, r in samples:
            by_op[opcode(r[src])] += s
            by_op_not[opcode(r[src])] += n
        lines.append(f"{len(rows)} instructions, {total:.0f} warp-stall samples ({100 * not_issued / total:.1f}% not issued)")
        lines.append("by opcode (% of samples, of them not issued): " + " ".join(
            f"{op}={100 * s / total:.1f}%({100 * by_op_not[op] / s:.0f})" for op, s in by_op.most_common(TOP_OPCODES) if s > 0))
        for s, n, r in sorted(samples, key=lambda x: -x[0])[:TOP_INSTRUCTIONS]:
            where = r[addr] if addr is not None else "?"
            lines.append(f"  {where:>8} {100 * s / total:5.1f}% ({100 * n / s if s else 0:3.0f}% not issued)  {r[src]}")
    return lines


def main(argv):
    if len(argv) < 3 or argv[1] not in ("extract", "mix", "stalls") or (argv[1] == "extract" and len(argv) < 4):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    if argv[1] == "extract":
        return 0 if extract(argv[2], argv[3]) else 1
    for line in mix(argv[2]) if argv[1] == "mix" else stalls(argv[2]):
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
