#!/usr/bin/env python3
"""Per-call costs from a callgrind profile of plugind (see docs/benchmarks.md, "Profile").

usage: callgrind_top.py CALLGRIND_OUT [N] [--lines-per-call K] [--callers NAME_SUFFIX]... [--callees NAME_SUFFIX]...

Divides every cost by the number of calls served, taken as the number of JSON-RPC lines plugind
parsed (calls of `plugind_protocol::jsonrpc::Message::parse`, and of `ExecuteRequest::parse`, the
one-pass parse of a control `execute`) divided by K, the lines per call: 2
for `execute` (the request, the plugin's answer; the default), 4 for caller's `service.call` of
echo (`--load … service`: the request, caller's `service.call`, echo's answer, caller's answer).
It prints the N functions with the
highest exclusive cost; `--callers`/`--callees` print the inclusive cost of the edges into/out of the
functions whose name ends with NAME_SUFFIX.
"""
import collections
import re
import sys

NAME = re.compile(r"(fn|cfn|fl|fi|fe|cfi|cfl|ob|cob)=\((\d+)\)(?: (.*))?")
COST = re.compile(r"^(?:[+-]?\d+|\*) (\d+)")  # "<line> <Ir>"; not "totals:" or "summary:"


def load(path):
    names, self_cost, edges, calls = {}, collections.Counter(), collections.Counter(), collections.Counter()
    fn = cfn = None
    pending = False
    for line in open(path):
        m = NAME.match(line)
        if m:
            kind, i, name = m.groups()
            if kind in ("fn", "cfn"):
                if name:
                    names[i] = name.strip()
                if kind == "fn":
                    fn = i
                else:
                    cfn = i
            continue
        if line.startswith("calls="):
            calls[cfn] += int(line[6:].split()[0])
            pending = True
            continue
        m = COST.match(line)
        if m and fn:
            if pending:
                edges[(fn, cfn)] += int(m.group(1))
                pending = False
            else:
                self_cost[fn] += int(m.group(1))
    return names, self_cost, edges, calls


def main():
    args = sys.argv[1:]
    path, top = args[0], 30
    if len(args) > 1 and args[1].isdigit():
        top = int(args[1])
    per = int(args[args.index("--lines-per-call") + 1]) if "--lines-per-call" in args else 2
    names, self_cost, edges, calls = load(path)
    parsers = ("jsonrpc::Message::parse", "calls::ExecuteRequest::parse")
    parsed = sum(c for i, c in calls.items() if names.get(i, "").endswith(parsers))
    served = parsed / per
    total = sum(self_cost.values())
    print(f"{served:.0f} calls served; {total:,} instructions; {total / served:,.0f} per call")
    for i, c in self_cost.most_common(top):
        print(f"{100 * c / total:5.1f}% {c / served:7.0f}/call  {names.get(i, '?')[:150]}")
    # Rust's allocation entry point, whichever allocator is behind it (plugind uses mimalloc).
    allocs = sum(c for i, c in calls.items() if names.get(i) in ("__rustc::__rust_alloc", "__rust_alloc"))
    print(f"{allocs / served:.1f} allocations per call")
    for flag, side in (("--callers", 1), ("--callees", 0)):
        for k, a in enumerate(args):
            if a != flag:
                continue
            target = args[k + 1]
            print(f"== {flag[2:]} of *{target}")
            rows = [(c, names.get(e[1 - side], "?")) for e, c in edges.items() if names.get(e[side], "").endswith(target)]
            for c, other in sorted(rows, reverse=True)[:8]:
                print(f"   {c / served:7.0f}/call  {other[:150]}")


if __name__ == "__main__":
    main()
