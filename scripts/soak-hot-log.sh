#!/usr/bin/env bash
# Soak: the bounded-hot-log test at a larger size (default 8 GiB written through the volume).
# Each node's hot log and resident memory must stay under the bounds the test states, and every
# chunk must read back after a remount. Not part of CI (it takes minutes and tens of GiB of disk
# writes across the six local nodes).
# Usage: scripts/soak-hot-log.sh [MIB]   (run as root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-8192}"
cargo build --release -p sixfold >/dev/null
export SIXFOLD_BIN="$PWD/target/release/sixfold"
SIXFOLD_HOT_LOG_TEST_MIB="$mib" cargo test --release -p sixfold-tests \
    --test node_hot_log_bounded -- --nocapture
