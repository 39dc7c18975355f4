#!/usr/bin/env bash
# Re-replication of a node lost for good: nine local nodes (three per AZ), MIB MiB written in
# each of PGS PGs, SQLite committing on ext4 on the volume; the node holding the most PGs is
# killed -9. Prints the copy rate (MiB/s per PG stream and in all), the time to fully healthy,
# and SQLite commits/s during the repair vs without, next to the local disk's (the baseline:
# fsync'd sequential writes, and SQLite on a local file) in the same run.
# Usage: scripts/bench-repair.sh [MIB] [PGS] [BANDWIDTH]
#   (run as root, after scripts/setup.sh; defaults 256 MiB, 4 PGs, the nodes' default
#   --repair-bandwidth; BANDWIDTH 0 lifts the bound)
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-256}"
pgs="${2:-4}"
bandwidth="${3:-}"
cargo build --release -p sixfold >/dev/null
exec python3 scripts/bench_repair.py --bin "$PWD/target/release/sixfold" --work "$PWD/target/bench-repair" \
    --mib "$mib" --pgs "$pgs" ${bandwidth:+--bandwidth "$bandwidth"}
