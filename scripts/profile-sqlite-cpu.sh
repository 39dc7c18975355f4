#!/usr/bin/env bash
# CPU time per SQLite commit (WAL, synchronous=FULL, single-row inserts), per process: the mount
# and each of the six nodes of a `sixfold up`, from /proc before and after the run. Shows where
# the software cost of a commit goes (bench-sqlite.sh gives the rate).
# Measured in the steady state, after WARMUP commits (see scripts/sqlite_commit_rate.py).
# Usage: scripts/profile-sqlite-cpu.sh [SECONDS [WARMUP]]   (run as root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
warmup="${2:-3000}"
cargo build --release -p sixfold >/dev/null
bin="$PWD/target/release/sixfold"
work="$PWD/target/profile-sqlite"
cleanup() { "$bin" down "$work/mnt" --state "$work/state" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/mnt"
"$bin" up "$work/mnt" --state "$work/state" --size 8G >/dev/null
ticks=$(getconf CLK_TCK)
# The hook snapshots every process's CPU ticks when the timed part starts and ends.
cat >"$work/hook" <<HOOK
#!/usr/bin/env bash
set -euo pipefail
for f in "$work"/state/pids/*.pid; do
    echo "\$(basename "\$f" .pid) \$(awk '{print \$14+\$15}' "/proc/\$(cat "\$f")/stat")"
done >"$work/\$1"
HOOK
chmod +x "$work/hook"
line=$(python3 scripts/sqlite_commit_rate.py "$work/mnt/bench.db" "$seconds" --warmup "$warmup" --hook "$work/hook")
echo "$line"
commits=$(awk '{print $1}' <<<"$line")
join "$work/before" "$work/after" | awk -v n="$commits" -v hz="$ticks" '
    { us = ($3 - $2) / hz * 1e6 / n; total += us; printf "  %-8s %6.0f us CPU per commit\n", $1, us }
    END { printf "  %-8s %6.0f us CPU per commit\n", "total", total }'
