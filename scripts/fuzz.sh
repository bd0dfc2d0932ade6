#!/usr/bin/env bash
# Fuzzes hookrelay's parsers with libFuzzer, growing fuzz/corpus/<target>:
#   verify        the signature headers of all sixteen schemes (and what follows them)
#   extract       event type / id extraction from verified JSON and form bodies
#   config        the TOML configuration, parsed and validated
#   spool_record  the spool's record framing and decoder, as recovery reads a segment
#   edge          a request each source accepts: its record round-trips, every sink encodes it
#
#   scripts/fuzz.sh                          # every target, 600 s each, two at a time
#   FUZZ_SECONDS=60 scripts/fuzz.sh verify   # one target, one minute
#
# `cargo fuzz run <target>` works too on a nightly toolchain. This script needs only
# stable: it builds with the same SanitizerCoverage instrumentation cargo fuzz uses
# (no AddressSanitizer, which needs nightly; Rust's own checks catch memory errors in
# safe code). Afterwards each corpus is minimised (-merge=1), so what gets committed
# is the set of inputs that reach new code. scripts/test.sh replays it on stable
# (tests/fuzz_corpus.rs). Crashes land in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../fuzz"
seconds="${FUZZ_SECONDS:-600}"
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(verify extract config spool_record edge)
triple="$(rustc -vV | sed -n 's/^host: //p')"
export RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing -Cdebug-assertions -Coverflow-checks"
# --target keeps the instrumentation out of build scripts and proc macros.
cargo build --release --target "$triple" --bins
bin="target/$triple/release"

run() {
  local t="$1"
  mkdir -p "artifacts/$t" "corpus/$t"
  "$bin/$t" -max_total_time="$seconds" -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="artifacts/$t/" "corpus/$t" > "artifacts/$t.log" 2>&1
  echo "$t: $(grep -E '^stat::number_of_executed_units' "artifacts/$t.log" | awk '{print $2}') runs in ${seconds} s, $(ls "corpus/$t" | wc -l) inputs before merge"
}

pids=()
for t in "${targets[@]}"; do
  run "$t" &
  pids+=($!)
  if [ ${#pids[@]} -ge 2 ]; then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
done
for p in "${pids[@]}"; do wait "$p"; done

for t in "${targets[@]}"; do
  rm -rf "corpus-merged/$t" && mkdir -p "corpus-merged/$t"
  "$bin/$t" -merge=1 "corpus-merged/$t" "corpus/$t" > "artifacts/$t.merge.log" 2>&1
  rm -rf "corpus/$t" && mv "corpus-merged/$t" "corpus/$t"
  echo "$t: $(ls "corpus/$t" | wc -l) inputs after merge"
done
if ls artifacts/*/crash-* artifacts/*/oom-* artifacts/*/timeout-* >/dev/null 2>&1; then
  echo "FAILED: fuzzing found crashes:" >&2
  ls artifacts/*/crash-* artifacts/*/oom-* artifacts/*/timeout-* >&2
  exit 1
fi
