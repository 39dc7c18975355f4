#!/usr/bin/env bash
# Backup's cost and restore's speed, measured side by side in one run:
#   1. SQLite commits/s (WAL, synchronous=FULL, single-row inserts) on `sixfold up` with backup
#      off and with backup on (to STATE/backup), ROUNDS times each, alternating, one setup up at
#      a time; and the backup lag
#      (LSNs and ms behind the writer's VDL, from `sixfold status`) sampled during the runs;
#   2. restore throughput of a volume with 1 PG against one with 4 PGs filled alike
#      (tests/examples/restore_throughput.rs).
# Usage: scripts/bench-backup.sh [SECONDS [MIB [ROUNDS]]]   (run as root, after scripts/setup.sh;
#        default 20 s per SQLite run, 128 MiB per PG, 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
mib="${2:-128}"
rounds="${3:-3}"
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

# Samples the backup lag of `on` every second while a run goes on: "lsns ms" per PG.
sample_lag() {
    local out="$1"
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
# One setup runs at a time (they share the disk and the two cores), alternating.
for round in $(seq 1 "$rounds"); do
    for setup in off on; do
        flags=()
        [ "$setup" = off ] && flags=(--no-backup)
        "$bin" up "$work/$setup" --state "$work/state-$setup" --size 8G "${flags[@]}" >/dev/null
        sampler=
        if [ "$setup" = on ]; then
            sample_lag "$work/lag.txt" &
            sampler=$!
        fi
        line=$(python3 scripts/sqlite_commit_rate.py "$work/$setup/bench.db" "$seconds")
        if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null || true; wait "$sampler" 2>/dev/null || true; fi
        "$bin" down "$work/$setup" --state "$work/state-$setup" >/dev/null
        if [ "$setup" = off ]; then off_rates+=("$(rate "$line")"); else on_rates+=("$(rate "$line")"); fi
    done
done

echo "SQLite WAL synchronous=FULL single-row inserts, ${seconds}s per run, runs alternating"
python3 - "$rounds" "${off_rates[@]}" "${on_rates[@]}" "$work/lag.txt" <<'PY'
import sys
n = int(sys.argv[1])
rates = [float(x) for x in sys.argv[2:2 + 2 * n]]
off, on = rates[:n], rates[n:]
mean = lambda xs: sum(xs) / len(xs)
print("  backup off : %8.1f commits/s  (runs: %s)" % (mean(off), ", ".join("%.1f" % r for r in off)))
print("  backup on  : %8.1f commits/s  (runs: %s)" % (mean(on), ", ".join("%.1f" % r for r in on)))
print("  on / off   : %8.3f  (target: at least 0.95)" % (mean(on) / mean(off)))
samples = []
for path in sys.argv[2 + 2 * n:]:
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
