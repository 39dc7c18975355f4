#!/usr/bin/env bash
# SQLite commits per second (WAL, synchronous=FULL, single-row inserts, 20 s) on
#   (a) ext4 on a loop device over a local file (the baseline), and
#   (b) ext4 on a sixfold volume via `sixfold up` (six local nodes),
# plus the bytes the nodes hardened per commit (all six copies), and the ratio b/a.
# Usage: scripts/bench-sqlite.sh [SECONDS]   (run as root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
cargo build --release -p sixfold >/dev/null
bin="$PWD/target/release/sixfold"
work="$PWD/target/bench-sqlite"
cleanup() {
    mountpoint -q "$work/local" && umount "$work/local" || true
    "$bin" down "$work/sixfold" --state "$work/state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/local" "$work/sixfold"

# The disk under both: what one flush costs, and what six at once (six nodes) cost.
disk_line=$(python3 scripts/disk_flush_latency.py "$work")

# (a) baseline: ext4 on a loop device over a sparse local file.
truncate -s 8G "$work/local.img"
mkfs.ext4 -F -q "$work/local.img"
mount -o loop "$work/local.img" "$work/local"
local_line=$(python3 scripts/sqlite_commit_rate.py "$work/local/bench.db" "$seconds")
umount "$work/local"

# (b) sixfold: ext4 on the volume.
"$bin" up "$work/sixfold" --state "$work/state" --size 8G >/dev/null
hot_log_bytes() {
    "$bin" status --state "$work/state" --json |
        python3 -c 'import json,sys; print(sum(n["hot_log_bytes"] for n in json.load(sys.stdin)["nodes"]))'
}
before=$(hot_log_bytes)
sixfold_line=$(python3 scripts/sqlite_commit_rate.py "$work/sixfold/bench.db" "$seconds")
after=$(hot_log_bytes)

rate() { sed -E 's/.*= ([0-9.]+) commits\/s/\1/' <<<"$1"; }
commits() { sed -E 's/^([0-9]+) commits.*/\1/' <<<"$1"; }
a=$(rate "$local_line")
b=$(rate "$sixfold_line")
n=$(commits "$sixfold_line")
echo "SQLite WAL synchronous=FULL single-row inserts, ${seconds}s each"
printf '  (a) ext4 on loop over local file : %10.1f commits/s\n' "$a"
printf '  (b) ext4 on sixfold (6 nodes)    : %10.1f commits/s\n' "$b"
python3 - "$a" "$b" "$before" "$after" "$n" <<'PY'
import sys
a, b, before, after, n = map(float, sys.argv[1:])
print("  ratio b/a                        : %10.2f" % (b / a))
print("  bytes hardened on nodes / commit : %10.0f (all six copies; %.0f per copy)" % ((after - before) / n, (after - before) / n / 6))
PY
echo "  disk write+fdatasync (no sixfold) : $disk_line"
