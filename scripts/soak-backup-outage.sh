#!/usr/bin/env bash
# Soak: the S3 backup test (tests/tests/backup_s3.rs) with the store frozen for minutes instead
# of the 20 s the test command affords. Writes go on the whole time (each round must finish in
# 30 s), the backup lag grows, and once the store answers again backup catches up and every
# recorded point restores, by LSN, by time and from a snapshot. Not part of CI.
# Usage: scripts/soak-backup-outage.sh [SECONDS]   (default 180; run as root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-180}"
cargo build --release -p sixfold >/dev/null
export SIXFOLD_BIN="$PWD/target/release/sixfold"
SIXFOLD_STORE_FROZEN_S="$seconds" \
    cargo test --release -p sixfold-tests --test backup_s3 -- --nocapture
