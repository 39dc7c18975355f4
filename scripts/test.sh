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
cargo test --release --workspace
