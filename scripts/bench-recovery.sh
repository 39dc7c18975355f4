#!/usr/bin/env bash
# How long a writer's recovery takes after kill -9 of the mount, on an empty volume and after
# GIB GiB were written through it: recovery must not grow with the data or the log.
# Usage: scripts/bench-recovery.sh [GIB]   (run as root, after scripts/setup.sh; default 10)
set -euo pipefail
cd "$(dirname "$0")/.."
gib="${1:-10}"
cargo build --release -p sixfold >/dev/null
bin="$PWD/target/release/sixfold"
work="$PWD/target/bench-recovery"
dir="$work/mnt"
state="$work/state"
cleanup() { "$bin" down "$dir" --state "$state" >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$dir"

# The recovery time of the last open, from the mount's log ("volume open ... recovery_ms=N").
last_recovery_ms() {
    grep -o 'recovery_ms=[0-9]*' "$state/logs/mount.log" | tail -1 | cut -d= -f2
}

# Kills the mount (kill -9), clears what it left, and mounts again (a recovery).
crash_and_remount() {
    kill -9 "$(cat "$state/pids/mount.pid")"
    sleep 1
    "$bin" down "$dir" --state "$state" >/dev/null
    "$bin" up "$dir" --state "$state" --size "$((gib + 6))G" >/dev/null
}

"$bin" up "$dir" --state "$state" --size "$((gib + 6))G" >/dev/null
crash_and_remount
empty=$(last_recovery_ms)

echo "writing $gib GiB through the volume..."
# Not zeroes, so that every page is stored (process substitution: `yes` ends on SIGPIPE).
dd of="$dir/fill" bs=1M count=$((gib * 1024)) iflag=fullblock conv=fsync status=none \
    < <(yes 'sixfold recovery bench')
crash_and_remount
full=$(last_recovery_ms)

echo "writer recovery after kill -9 of the mount (six local nodes)"
printf '  empty volume            : %6s ms\n' "$empty"
printf '  after %3s GiB written    : %6s ms\n' "$gib" "$full"
