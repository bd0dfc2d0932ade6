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

step "Kafka-compatible broker for the integration tests (tansu)"
HOOKRELAY_TANSU="$(scripts/tansu.sh)"
export HOOKRELAY_TANSU
echo "$HOOKRELAY_TANSU"

step "cargo test"
cargo test --locked --all-targets
