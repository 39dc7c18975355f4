#!/usr/bin/env bash
# Backup's cost and restore's speed, measured side by side in one run:
#   1. SQLite commits/s (WAL, synchronous=FULL, single-row inserts) on `sixfold up` with backup
#      off and with backup on (to STATE/backup), twice each, alternating; and the backup lag
#      (LSNs and ms behind the writer's VDL, from `sixfold status`) sampled during the runs;
#   2. restore throughput of a volume with 1 PG against one with 4 PGs filled alike
#      (tests/examples/restore_throughput.rs).
# Usage: scripts/bench-backup.sh [SECONDS [MIB]]   (run as root, after scripts/setup.sh;
#        default 20 s per SQLite run, 128 MiB per PG)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
mib="${2:-128}"
cargo build --release -p sixfold -p sixfold-tests --examples >/dev/null
bin="$PWD/target/release/sixfold"
work="$PWD/target/bench-backup"
cleanup() {
    for setup in off on; do
        "$bin" down "$work/$setup" --state "$work/state-$setup" >/dev/null 2>&1 || true
    done
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/off" "$work/on"

"$bin" up "$work/off" --state "$work/state-off" --size 8G --no-backup >/dev/null
"$bin" up "$work/on" --state "$work/state-on" --size 8G >/dev/null

# Samples the backup lag of `on` every second while a run goes on: "max_lsns max_ms".
sample_lag() {
    local out="$1"
    : > "$out"
    while true; do
        "$bin" status --state "$work/state-on" --json 2>/dev/null | python3 -c '
import json, sys
s = json.load(sys.stdin)
for pg in s["pgs"]:
    if pg.get("backup_lag_lsns") is not None:
        print(pg["backup_lag_lsns"], pg["backup_lag_ms"])' >> "$out" || true
        sleep 1
    done
}

rate() { sed -E 's/.*= ([0-9.]+) commits\/s/\1/' <<<"$1"; }
declare -a off_rates on_rates
for round in 1 2; do
    off_rates+=("$(rate "$(python3 scripts/sqlite_commit_rate.py "$work/off/bench.db" "$seconds")")")
    sample_lag "$work/lag-$round.txt" &
    sampler=$!
    on_rates+=("$(rate "$(python3 scripts/sqlite_commit_rate.py "$work/on/bench.db" "$seconds")")")
    kill "$sampler" 2>/dev/null || true
    wait "$sampler" 2>/dev/null || true
done
cleanup

echo "SQLite WAL synchronous=FULL single-row inserts, ${seconds}s per run, runs alternating"
python3 - "${off_rates[@]}" "${on_rates[@]}" "$work"/lag-*.txt <<'PY'
import sys
rates = [float(x) for x in sys.argv[1:5]]
off, on = rates[0:2], rates[2:4]
mean = lambda xs: sum(xs) / len(xs)
print("  backup off : %8.1f commits/s  (runs: %s)" % (mean(off), ", ".join("%.1f" % r for r in off)))
print("  backup on  : %8.1f commits/s  (runs: %s)" % (mean(on), ", ".join("%.1f" % r for r in on)))
print("  on / off   : %8.3f  (target: at least 0.95)" % (mean(on) / mean(off)))
samples = []
for path in sys.argv[5:]:
    for line in open(path):
        parts = line.split()
        if len(parts) == 2:
            samples.append((int(parts[0]), int(parts[1])))
if samples:
    lsns = sorted(s[0] for s in samples)
    ms = sorted(s[1] for s in samples)
    pick = lambda xs, q: xs[min(len(xs) - 1, int(q * len(xs)))]
    print("  backup lag while writing: median %d LSNs / %d ms, p90 %d LSNs / %d ms, max %d LSNs / %d ms (%d samples)"
          % (pick(lsns, .5), pick(ms, .5), pick(lsns, .9), pick(ms, .9), lsns[-1], ms[-1], len(samples)))
PY

echo "Restore throughput (six local nodes, local directory store)"
SIXFOLD_BIN="$bin" target/release/examples/restore_throughput "$work/restore" "$mib"
