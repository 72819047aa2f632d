#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what is missing (NATS 2.15.1),
# builds once, checks formatting and lints, then runs every test (unit, property and
# integration tests with real nats-server processes and real concord nodes, and, where
# Docker is available, the per-region containers of compose/ end to end).
set -euo pipefail
cd "$(dirname "$0")/.."

bash .ci/setup.sh
export PATH="$PWD/.tools/venv/bin:$PATH"
export CONCORD_NATS_SERVER="$PWD/.tools/venv/bin/nats-server"

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== build (the concord binary the integration tests start, and a deliberately broken one)"
# The fault suite proves its checker catches a build whose engine drops a changeset
# (`mutations` feature); only the crates that feature touches are compiled twice.
cargo build --locked -p concord --features concord/mutations
cp target/debug/concord target/debug/concord-mutant
cargo build --locked -p concord
echo "== cargo clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings
echo "== cargo test"
cargo test --locked --workspace
echo "== fuzzing (cargo-fuzz, ${CONCORD_FUZZ_SECONDS:-20} s per target)"
# Every decoder of outside input (crates/concord-fuzz). Left out: http_path and
# nats_request (their concord-node build doubles the fuzz build; cargo test runs them
# under proptest).
bash .ci/fuzz.sh "${CONCORD_FUZZ_SECONDS:-20}" changeset stored_register log_entry automerge_change \
  session_token doc_ops cursors snapshot automerge_doc api_json
