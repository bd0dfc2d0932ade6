#!/usr/bin/env bash
# hookrelay's test command (README, .ci/run): formatting, lints, unit tests and
# black-box integration tests that run the real binary over real TCP against
# real brokers. Needs the Rust toolchain (with rustfmt and clippy), gcc, make and
# perl (rdkafka builds librdkafka and OpenSSL from source); it builds the tansu
# Kafka broker itself, once, into ~/.cache/hookrelay.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

step "layout (no import cycle, no file over 700 lines outside tests, Event sealed)"
scripts/check-layout.sh

step "RabbitMQ on 127.0.0.1:5672 (guest/guest) for the integration tests"
rabbit_up() { (exec 3<>/dev/tcp/127.0.0.1/5672) 2>/dev/null; }
if ! rabbit_up; then
  echo "not answering; starting it"
  if command -v rabbitmq-server >/dev/null; then
    rabbitmq-server -detached || true
  else
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rabbitmq-server && (rabbitmq-server -detached || true)
  fi
  for _ in $(seq 60); do rabbit_up && break; sleep 1; done
fi
rabbit_up || { echo "FAILED: RabbitMQ is not reachable on 127.0.0.1:5672; the RabbitMQ tests cannot run" >&2; exit 1; }
command -v rabbitmqctl >/dev/null && rabbitmqctl await_startup --timeout 60 >/dev/null
echo "up"

step "Redis on 127.0.0.1:6379 (shared dedup tests; they also start a private redis-server)"
redis_up() { (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; }
if ! command -v redis-server >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server
fi
if ! redis_up; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 30); do redis_up && break; sleep 1; done
fi
redis_up || { echo "FAILED: Redis is not reachable on 127.0.0.1:6379; the Redis dedup tests cannot run" >&2; exit 1; }
echo "up"

step "NATS with JetStream on 127.0.0.1:4222 (shared NATS tests; restart tests start a private nats-server)"
nats_up() { (exec 3<>/dev/tcp/127.0.0.1/4222) 2>/dev/null; }
if ! command -v nats-server >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server
fi
if ! nats_up; then
  mkdir -p /var/lib/nats-ci
  (nats-server -js -a 127.0.0.1 -p 4222 -sd /var/lib/nats-ci >/var/lib/nats-ci/log 2>&1 &)
  for _ in $(seq 30); do nats_up && break; sleep 1; done
fi
nats_up || { echo "FAILED: NATS is not reachable on 127.0.0.1:4222; the NATS tests cannot run" >&2; exit 1; }
echo "up"

step "prlimit (util-linux) for the EMFILE test"
if ! command -v prlimit >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq util-linux
fi
command -v prlimit >/dev/null || { echo "FAILED: prlimit is not installed; tests/hostile.rs needs it" >&2; exit 1; }
echo "ok"

step "Kafka-compatible broker for the integration tests (tansu)"
HOOKRELAY_TANSU="$(scripts/tansu.sh)"
export HOOKRELAY_TANSU
echo "$HOOKRELAY_TANSU"

step "cargo test"
results="$(mktemp)"
cargo test --locked --all-targets 2>&1 | tee "$results"
summary="$(awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } } END { printf "%d passed, %d failed", p, f }' "$results")"
rm -f "$results"

step "deploy artifacts (helm, kubernetes schemas, kustomize, promtool, compose spec)"
scripts/validate-deploy.sh target/debug/hookrelay

step "benchmark harness smoke run (a few seconds, debug builds: the numbers mean nothing)"
scripts/bench.sh --smoke >/dev/null 2>&1 || { echo "FAILED: scripts/bench.sh --smoke" >&2; scripts/bench.sh --smoke; exit 1; }
echo "ok: target/bench/report.md"

step "chaos, short profiles (RabbitMQ restarts + SIGKILLs, Kafka mock outages, 3 relays sharing Redis, NATS restarts, sink isolation)"
scripts/chaos.sh --short

step "summary"
echo "tests: $summary"
