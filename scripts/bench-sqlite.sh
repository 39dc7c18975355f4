#!/usr/bin/env bash
# SQLite commits per second (WAL, synchronous=FULL, single-row inserts, 20 s) on
#   (a) ext4 on a loop device over a local file (the baseline), and
#   (b) ext4 on a sixfold volume via `sixfold up` (six local nodes),
# plus the bytes the nodes hardened per commit (all six copies), and the ratio b/a.
# Then what bounds the ratio on this machine: the flushes ext4 sends per commit and what each
# took (from the loop devices' counters), and the cheapest quorum round the machine can do with no
# sixfold code (tests/examples/quorum_floor.rs: six processes, pwrite + fdatasync, 4 answers).
# Usage: scripts/bench-sqlite.sh [SECONDS]   (run as root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
cargo build --release -p sixfold -p sixfold-tests --examples >/dev/null
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
# Flush requests and the milliseconds they took, from a loop device's counters (fields 16, 17).
flushes() { awk '{print $16, $17}' "/sys/block/$(basename "$(findmnt -no SOURCE "$1")")/stat"; }
local_before=$(flushes "$work/local")
local_line=$(python3 scripts/sqlite_commit_rate.py "$work/local/bench.db" "$seconds")
local_after=$(flushes "$work/local")
umount "$work/local"

# (b) sixfold: ext4 on the volume.
"$bin" up "$work/sixfold" --state "$work/state" --size 8G >/dev/null
hot_log_bytes() {
    "$bin" status --state "$work/state" --json |
        python3 -c 'import json,sys; print(sum(n["hot_log_bytes"] for n in json.load(sys.stdin)["nodes"]))'
}
before=$(hot_log_bytes)
sixfold_flush_before=$(flushes "$work/sixfold")
sixfold_line=$(python3 scripts/sqlite_commit_rate.py "$work/sixfold/bench.db" "$seconds")
sixfold_flush_after=$(flushes "$work/sixfold")
after=$(hot_log_bytes)
floor=$(target/release/examples/quorum_floor "$work" 1000)

rate() { sed -E 's/.*= ([0-9.]+) commits\/s/\1/' <<<"$1"; }
commits() { sed -E 's/^([0-9]+) commits.*/\1/' <<<"$1"; }
a=$(rate "$local_line")
b=$(rate "$sixfold_line")
n=$(commits "$sixfold_line")
na=$(commits "$local_line")
echo "SQLite WAL synchronous=FULL single-row inserts, ${seconds}s each"
printf '  (a) ext4 on loop over local file : %10.1f commits/s\n' "$a"
printf '  (b) ext4 on sixfold (6 nodes)    : %10.1f commits/s\n' "$b"
python3 - "$a" "$b" "$before" "$after" "$n" "$na" "$local_before" "$local_after" \
    "$sixfold_flush_before" "$sixfold_flush_after" "$floor" <<'PY'
import sys
a, b, before, after, n, na = map(float, sys.argv[1:7])
fa0, ta0 = map(float, sys.argv[7].split())
fa1, ta1 = map(float, sys.argv[8].split())
fb0, tb0 = map(float, sys.argv[9].split())
fb1, tb1 = map(float, sys.argv[10].split())
floor = float(sys.argv[11].split()[0])
print("  ratio b/a                        : %10.2f" % (b / a))
print("  bytes hardened on nodes / commit : %10.0f (all six copies; %.0f per copy)" % ((after - before) / n, (after - before) / n / 6))
flushes_a, flushes_b = (fa1 - fa0) / na, (fb1 - fb0) / n
flush_us_a = (ta1 - ta0) * 1000 / max(fa1 - fa0, 1)
flush_us_b = (tb1 - tb0) * 1000 / max(fb1 - fb0, 1)
print("  flushes per commit (a), (b)      : %10.2f, %.2f (ext4's journal commits and data syncs)" % (flushes_a, flushes_b))
print("  mean flush time (a), (b)         : %10.0f us, %.0f us" % (flush_us_a, flush_us_b))
print("  quorum round floor (no sixfold)  : %s" % sys.argv[11])
# (b) can at best spend one floor round per flush and nothing else.
ceiling = 1e6 / (flushes_b * floor) / a if flushes_b > 0 else float("nan")
print("  => best possible b/a here        : %10.2f (a's rate against one floor round per flush of b)" % ceiling)
PY
echo "  disk write+fdatasync (no sixfold) : $disk_line"
