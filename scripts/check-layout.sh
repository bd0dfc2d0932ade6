#!/usr/bin/env bash
# Checks that the layout still shows the architecture (scripts/test.sh runs it):
#   - no import cycle between the crate's top-level modules (src/<module>.rs or
#     src/<module>/): data flows one way, server -> verify -> event -> spool ->
#     forward -> sink, and lower rooms never reach up;
#   - no source file under src/ longer than 700 lines, tests aside (a file's inline
#     `#[cfg(test)] mod tests` block, and files named tests.rs or *tests.rs, do not count);
#   - no `pub` field in `Event` or `Accepted`, and no `EventBuilder` outside
#     `#[cfg(test)]`: only a verified request (or a spool record) makes one;
#   - lower rooms never reach up (edges the design rules out, listed below), the
#     edge (server.rs) never publishes to a sink itself, and sink kinds are spelled
#     only in src/sink/.
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

# `Accepted` (an event from a verified request) keeps its field private, and the
# test-only builder stays test-only.
for f in files:
    text = open(f, encoding="utf-8").read()
    if re.search(r"pub struct Accepted\(\s*pub", text):
        problems.append(f"{f}: Accepted has a pub field")
    lines = text.splitlines()
    for n, line in enumerate(lines):
        if re.search(r"\bstruct EventBuilder\b", line) and "#[cfg(test)]" not in lines[max(0, n - 3):n]:
            problems.append(f"{f}: EventBuilder is not behind #[cfg(test)]")

# Edges the design rules out even where they would not close a cycle today: the
# rooms downstream of the edge, and the leaves, never reach back.
FORBIDDEN = {
    "event": {"config", "server", "spool", "sink", "forward", "dedup"},
    "verify": {"config", "server", "event", "spool", "sink"},
    "spool": {"dedup", "server", "forward", "sink", "config"},
    "sink": {"config", "server", "forward", "spool", "dedup"},
    "rotation": {"server", "app"},
    "metrics": {"verify", "server", "event", "spool", "sink", "config"},
    "forward": {"server", "app"},
    "dedup": {"server", "spool", "config"},
}
for m, banned in FORBIDDEN.items():
    for t in sorted(uses.get(m, set()) & banned):
        problems.append(f"{m} imports {t}: a lower room reaching up")

# The edge knows no broker: publishing for ack = "broker" goes through forward.
for f in files:
    if not f.startswith(os.path.join(SRC, "server") + os.sep):
        continue
    server = open(f, encoding="utf-8").read()
    for call in ("publish_one", ".publish(", "publish_caught"):
        if call in server:
            problems.append(f"{f} calls {call}: the edge publishes through forward::publish_direct")

# Sink kinds are a type (sink::SinkKind), not strings spelled around the crate.
for f in files:
    if f.startswith(os.path.join(SRC, "sink") + os.sep):
        continue
    text = open(f, encoding="utf-8").read()
    cut = re.search(r"^#\[cfg\(test\)\]\s*\n\s*mod \w+\s*\{", text, re.M)
    shipped = text[: cut.start()] if cut else text
    if os.path.basename(f) == "tests.rs":
        continue
    for kind in ('"kafka"', '"rabbitmq"', '"file"'):
        if kind in shipped:
            problems.append(f"{f}: spells the sink kind {kind}; use sink::SinkKind")

if problems:
    print("\nlayout check FAILED:")
    for p in problems:
        print("  - " + p)
    sys.exit(1)
print("\nlayout ok: no import cycle or upward import, no file over %d lines outside tests, "
      "Event and Accepted sealed, the edge publishes through forward, sink kinds typed" % MAX_LINES)
PY
