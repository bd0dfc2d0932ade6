#!/usr/bin/env bash
# Benchmarks hookrelay against a bare hyper + HMAC baseline in one run.
#   scripts/bench.sh                      # every case, 10 s each after a 2 s warm-up
#   CASES=baseline,file SECONDS_PER_CASE=5 scripts/bench.sh
#   CASES=baseline,file,fanout scripts/bench.sh   # one source routed to two file sinks, beside one
#   CASES=baseline,file,file-archive,file-open-loop,file-archive-open-loop scripts/bench.sh
#                                         # the file case with [archive] on, beside it (closed, open loop)
#   CASES=baseline,file,file-soak SOAK_SECONDS=60 scripts/bench.sh    # shorter soak (default 300 s)
#   SPOOL_EXTRA='min_sync_interval_us = 0' SINK_EXTRA='linger_ms = 5' CASES=... scripts/bench.sh
#                                         # A/B a setting (";" separates lines; added to [spool] / the sink's section)
#   FORWARD_EXTRA='linger_ms = 0' CASES=... scripts/bench.sh    # the same for [forward]
#   CONNS=64 CASES=baseline,file scripts/bench.sh   # closed loop over 64 connections (default 256)
#   scripts/bench.sh --smoke              # a few seconds on debug builds (scripts/test.sh)
#   CASES=baseline,rabbitmq,express-rabbitmq,baseline-open-loop-8k,rabbitmq-open-loop-8k,express-rabbitmq-open-loop-8k scripts/bench.sh
#                                         # CPU per delivered event of the relay process, against the baseline's and
#                                         # the Express + amqplib relay's (scripts/peers/express-relay, installed with
#                                         # npm into target/bench/peers), at max rate and an open loop of
#                                         # OPEN_LOOP_CPU_RATE (8000) per second; also file-open-loop-8k, kafka-mock-open-loop-8k
#   CASES=file-256c,file-10k-conns scripts/bench.sh   # 256 busy connections, then the same with 9,744 idle keep-alive ones held open (idle after their first request; IDLE_EVERY=N: one more after each N s without one)
#   CASES=latency-alternated scripts/bench.sh        # 5 rounds of baseline and hookrelay open loops at half the file case's max (LATENCY_SECONDS=10 each)
#   CASES=baseline,file,file-soak,baseline-soak SOAK_SECONDS=120 scripts/bench.sh   # the soak and the baseline soaked at its rate, p99 per 10 s
#   CONNS=64 CASES=rabbitmq-bare,rabbitmq-sustained,express-rabbitmq-sustained,kafka-tansu-bare,kafka-tansu-sustained scripts/bench.sh  # each broker alone (examples/bare_publish) vs sustained delivered over SUSTAINED_SECONDS (30; scripts/bench_broker.py)
# Report: target/bench/report.md, report.json and verify.md.
# CASES=none skips the HTTP cases (verification only).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
mkdir -p target/bench
if [ "${1:-}" = "--smoke" ]; then
  cargo build --locked --bins --examples
  export BENCH_PROFILE=debug SECONDS_PER_CASE=1 WARMUP=0.5 CONNS=16 CASES="${CASES:-baseline,file,fanout,file-archive,file-open-loop,spool,rabbitmq,kafka-mock}"
  python3 scripts/bench.py
  exit 0
fi
cargo build --release --locked --bins --examples
# Signature verification per scheme, per KiB, against a bare HMAC in the same run.
target/release/examples/bench_verify | tee target/bench/verify.md
python3 scripts/bench.py
