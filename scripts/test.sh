#!/usr/bin/env bash
# The test command: installs what the tests need, builds everything (one profile: release),
# checks formatting and lints, and runs every test, the end-to-end ones included.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/setup.sh
cargo build --release --workspace --all-targets
cargo fmt --all -- --check
cargo clippy --release --workspace --all-targets -- -D warnings
# The end-to-end tests (tests/) start this binary.
export SIXFOLD_BIN="$PWD/target/release/sixfold"
# Each end-to-end test binary removes the files earlier ones left (only the last test's stay).
export SIXFOLD_TEST_PRUNE=1
df -h . | sed 's/^/disk before the tests: /'
cargo test --release --workspace
df -h . | sed 's/^/disk after the tests: /'
# Coverage-guided fuzzing of every decoder and the segment, briefly (the unit tests above ran
# the same targets over a fixed set of inputs; longer runs: scripts/fuzz.sh SECONDS).
scripts/fuzz.sh "${SIXFOLD_FUZZ_SECONDS:-5}"
