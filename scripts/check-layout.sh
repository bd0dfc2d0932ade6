#!/usr/bin/env bash
# Checks that the layout still shows the architecture (scripts/test.sh runs it):
#   - no import cycle between the crate's top-level modules (src/<module>.rs or
#     src/<module>/): data flows one way, server -> verify -> event -> spool ->
#     forward -> sink, and lower rooms never reach up;
#   - no source file under src/ longer than 700 lines, tests aside (a file's inline
#     `#[cfg(test)] mod tests` block, and files named tests.rs or *tests.rs, do not count);
#   - no `pub` field in `Event`: only a verified request (or a spool record) makes one.
# Prints the module graph (who uses whom) either way; exits 1 on any violation.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
exec python3 - "$@" <<'PY'
import os, re, sys

SRC = "src"
MAX_LINES = 700
problems = []

def module_of(path):
    rel = os.path.relpath(path, SRC).split(os.sep)
    name = rel[0][:-3] if rel[0].endswith(".rs") else rel[0]
    return None if name in ("lib", "main") else name

files = []
for root, _, names in os.walk(SRC):
    for n in names:
        if n.endswith(".rs"):
            files.append(os.path.join(root, n))
files.sort()

uses = {}
for f in files:
    m = module_of(f)
    text = open(f, encoding="utf-8").read()
    # Test code may reach anywhere; only what ships counts.
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+\s*\{", text, re.M)
    shipped = text[: cut.start()] if cut else text
    is_test_file = os.path.basename(f) == "tests.rs" or f.endswith("tests.rs")
    if not is_test_file:
        n = shipped.count("\n")
        if n > MAX_LINES:
            problems.append(f"{f}: {n} lines outside tests (at most {MAX_LINES})")
    if m is None or is_test_file:
        continue
    for target in re.findall(r"\bcrate::(\w+)", shipped):
        if target != m:
            uses.setdefault(m, set()).add(target)
    # `use crate::{a, b::c}` groups
    for group in re.findall(r"use crate::\{([^}]*)\}", shipped):
        for part in group.split(","):
            t = part.strip().split("::")[0]
            if t and t != m and t != "self":
                uses.setdefault(m, set()).add(t)

modules = sorted({module_of(f) for f in files if module_of(f)})
for m in modules:
    print(f"{m:12} -> {', '.join(sorted(uses.get(m, []))) or '-'}")

# Cycles: strongly connected components of more than one module.
index, low, stack, on, sccs, counter = {}, {}, [], set(), [], [0]
def strong(v):
    index[v] = low[v] = counter[0]; counter[0] += 1
    stack.append(v); on.add(v)
    for w in sorted(uses.get(v, [])):
        if w not in index:
            strong(w); low[v] = min(low[v], low[w])
        elif w in on:
            low[v] = min(low[v], index[w])
    if low[v] == index[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v:
                break
        if len(comp) > 1:
            sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in modules:
    if v not in index:
        strong(v)
for comp in sccs:
    edges = [f"{a} -> {b}" for a in comp for b in sorted(uses.get(a, [])) if b in comp]
    problems.append("import cycle between " + ", ".join(comp) + ": " + "; ".join(edges))

# `Event` has no pub fields.
for f in files:
    text = open(f, encoding="utf-8").read()
    m = re.search(r"pub struct Event \{(.*?)\n\}", text, re.S)
    if m:
        for line in m.group(1).splitlines():
            if re.match(r"\s*pub(\(crate\))?\s+\w+\s*:", line):
                problems.append(f"{f}: Event has a pub field: {line.strip()}")

if problems:
    print("\nlayout check FAILED:")
    for p in problems:
        print("  - " + p)
    sys.exit(1)
print("\nlayout ok: no import cycle, no file over %d lines outside tests, Event fields private" % MAX_LINES)
PY
