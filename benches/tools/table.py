#!/usr/bin/env python3
"""The results table of docs/benchmarks.md from saved `plugind-bench` outputs.

usage: table.py RUN1 [RUN2] [--before BEFORE]

Each file is the stdout of a full run (both placements). The table has run 1's figures, floors
and ratios for cpu0 and any, then the ratios of run 2 and of the "before" run (cpu0 / any), so
that a line's spread between runs is visible next to it.
"""
import sys


def load(path):
    """{name: {placement: (figure, unit, floor, ratio)}} in the order the lines came."""
    rows = {}
    for line in open(path):
        if line.startswith("#") or "|" not in line or line.startswith("name |"):
            continue
        cells = [c.strip() for c in line.split("|")]
        if len(cells) != 5 or "@" not in cells[0]:
            continue
        name, placement = cells[0].rsplit("@", 1)
        rows.setdefault(name, {})[placement] = tuple(cells[1:])
    return rows


def ratio(rows, name, placement):
    cell = rows.get(name, {}).get(placement)
    return cell[3] if cell else "-"


def main():
    args = sys.argv[1:]
    before = None
    if "--before" in args:
        i = args.index("--before")
        before = load(args[i + 1])
        del args[i : i + 2]
    if not args:
        sys.exit(__doc__)
    run1 = load(args[0])
    run2 = load(args[1]) if len(args) > 1 else None
    head = "| line | unit | cpu0 | floor (cpu0) | ratio | any | floor (any) | ratio |"
    rule = "|---|---|---|---|---|---|---|---|"
    if run2:
        head += " ratio run 2 (cpu0 / any) |"
        rule += "---|"
    if before:
        head += " ratio before (cpu0 / any) |"
        rule += "---|"
    print(head)
    print(rule)
    for name, by_placement in run1.items():
        cpu0 = by_placement.get("cpu0", ("-", "-", "-", "-"))
        anyp = by_placement.get("any", ("-", "-", "-", "-"))
        unit = cpu0[1] if cpu0[1] != "-" else anyp[1]
        row = f"| `{name}` | {unit} | {cpu0[0]} | {cpu0[2]} | {cpu0[3]} | {anyp[0]} | {anyp[2]} | {anyp[3]} |"
        for other in (run2, before):
            if other is not None:
                row += f" {ratio(other, name, 'cpu0')} / {ratio(other, name, 'any')} |"
        print(row)


if __name__ == "__main__":
    main()
