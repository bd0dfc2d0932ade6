#!/usr/bin/env bash
# Benchmarks hookrelay against a bare hyper + HMAC baseline in one run.
#   scripts/bench.sh                      # all cases, 10 s each after a 2 s warm-up
#   CASES=baseline,file SECONDS_PER_CASE=5 scripts/bench.sh
# Report: target/bench/report.md and report.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --locked --bins --examples
exec python3 scripts/bench.py
