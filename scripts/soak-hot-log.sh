#!/usr/bin/env bash
# Soak: the bounded-hot-log test at a larger size (default 10 GiB written through the volume,
# wrapping around every 4 GiB so that six copies of the data fit on one disk: later passes
# overwrite earlier ones). Each node's hot log and resident memory must stay under the bounds
# the test states, and every chunk's newest write must read back after a remount. Prints the
# largest hot log and node RSS seen. Not part of CI (it takes several minutes).
# Usage: scripts/soak-hot-log.sh [MIB [SPAN_MIB]]   (run as root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-10240}"
span="${2:-4096}"
cargo build --release -p sixfold >/dev/null
export SIXFOLD_BIN="$PWD/target/release/sixfold"
SIXFOLD_HOT_LOG_TEST_MIB="$mib" SIXFOLD_HOT_LOG_TEST_SPAN_MIB="$span" \
    cargo test --release -p sixfold-tests --test node_hot_log_bounded -- --nocapture
