#!/usr/bin/env bash
# Benchmarks hookrelay against a bare hyper + HMAC baseline in one run.
#   scripts/bench.sh                      # all cases, 10 s each after a 2 s warm-up
#   CASES=baseline,file SECONDS_PER_CASE=5 scripts/bench.sh
# Report: target/bench/report.md, report.json and verify.md.
# CASES=none skips the HTTP cases (verification only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked --bins --examples
mkdir -p target/bench
# Signature verification per scheme, per KiB, against a bare HMAC in the same run.
target/release/examples/bench_verify | tee target/bench/verify.md
python3 scripts/bench.py
