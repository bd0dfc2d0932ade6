#!/usr/bin/env bash
# hookrelay's test command (README, .ci/run): formatting, lints, unit tests and
# black-box integration tests that run the real binary over real TCP.
# Needs only the Rust toolchain (with rustfmt and clippy).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (warnings are errors)"
cargo clippy --all-targets --locked -- -D warnings

step "cargo test"
cargo test --locked --all-targets
