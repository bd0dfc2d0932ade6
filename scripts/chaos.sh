#!/usr/bin/env bash
# Chaos runs with a Jepsen-style checker (see scripts/chaos.py for what is checked).
#   scripts/chaos.sh             full profiles, release build: RabbitMQ 1,000,000 events with
#                                20 broker restarts and 5 SIGKILLs; Kafka (librdkafka mock
#                                cluster) with broker outages; three relays sharing Redis dedup;
#                                NATS JetStream (a nats-server of its own) with server restarts;
#                                isolation: one relay, a RabbitMQ and a Kafka sink, RabbitMQ restarts
#                                and Kafka outages must not 503 the sources routed elsewhere
#   scripts/chaos.sh --short     the short profiles scripts/test.sh runs (debug build)
#   scripts/chaos.sh rabbitmq --events 50000 --restarts 4 --kills 2 --seed 7   # one profile
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) with rabbitmqctl, Redis on 6379, and the
# nats-server binary (the nats profile starts its own on a free port; 4222 is left alone).
# Reports: target/chaos/<profile>.json. Exits non-zero unless lost = 0 and unexpected = 0.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--short" ]; then
  cargo build --locked --bins --examples
  export CHAOS_PROFILE=debug
  python3 scripts/chaos.py rabbitmq --events 20000 --restarts 3 --kills 2 --rate 1000
  python3 scripts/chaos.py kafka --events 10000 --restarts 3 --kills 1 --rate 700
  python3 scripts/chaos.py redis --events 10000 --kills 3 --rate 500
  python3 scripts/chaos.py nats --events 10000 --restarts 2 --kills 1 --rate 500
  python3 scripts/chaos.py isolation --events 24000 --restarts 1 --outages 1 --kills 1 --rate 300 \
    --outage-secs 6 --backlog-bytes 524288
  exit 0
fi
cargo build --release --locked --bins --examples
if [ $# -gt 0 ]; then
  exec python3 scripts/chaos.py "$@"
fi
# Rates chosen so every fault lands while events are still arriving (a broker
# restart takes ~5 s here).
python3 scripts/chaos.py rabbitmq --events 1000000 --restarts 20 --kills 5 --connections 64 --rate 4500
python3 scripts/chaos.py kafka --events 200000 --restarts 10 --kills 3 --connections 64 --rate 2000
python3 scripts/chaos.py redis --events 200000 --kills 6 --connections 64 --rate 2000
python3 scripts/chaos.py nats --events 200000 --restarts 10 --kills 3 --connections 64 --rate 2000
# isolation: every outage must land while all three sources send (each takes ~10-40 s
# with the sink's recovery), hence a long, slow run.
python3 scripts/chaos.py isolation --events 180000 --restarts 2 --outages 2 --kills 2 --rate 900 \
  --outage-secs 8 --backlog-bytes 2097152
