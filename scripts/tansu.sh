#!/usr/bin/env bash
# Prints the path of a tansu binary (a Kafka-compatible broker in Rust), building
# it once into a cache outside the work tree (~10 minutes on 2 cores) if needed.
# The Kafka integration tests start their own tansu from this path.
set -euo pipefail
version=0.6.0
cache="${HOOKRELAY_CACHE:-$HOME/.cache/hookrelay}"
root="$cache/tansu-$version"
bin="$root/bin/tansu"
if [ ! -x "$bin" ]; then
  mkdir -p "$cache"
  echo "building tansu $version into $root (once; about 10 minutes)..." >&2
  if ! cargo install tansu --version "$version" --locked --features dynostore --root "$root" >"$cache/tansu-build.log" 2>&1; then
    tail -n 30 "$cache/tansu-build.log" >&2
    echo "FAILED to build tansu: the Kafka integration tests cannot run" >&2
    exit 1
  fi
fi
echo "$bin"
