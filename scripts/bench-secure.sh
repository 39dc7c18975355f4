#!/usr/bin/env bash
# What security costs: SQLite commits per second (WAL, synchronous=FULL, single-row inserts,
# steady state after WARMUP commits) on ext4 on two `sixfold up` volumes mounted side by side,
#   (t) secure, `up`'s default: mutual TLS (every node, mount and command holds a certificate)
#       and encryption at rest (every node seals what it writes, AES-256-GCM), and
#   (p) with --insecure --no-encryption (plaintext on the wire and on disk),
# measured in turn, ROUNDS times (this machine's disk varies within minutes: a pair of runs next
# to each other in time is what compares), and the ratio t/p per round and of the medians. The
# same run also measures ext4 on a local loop file (the baseline) once per round.
# Usage: scripts/bench-secure.sh [SECONDS [ROUNDS [WARMUP]]]   (run as root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-15}"
rounds="${2:-3}"
warmup="${3:-3000}"
cargo build --release -p sixfold >/dev/null
bin="$PWD/target/release/sixfold"
work="$PWD/target/bench-secure"
cleanup() {
    mountpoint -q "$work/local" && umount "$work/local" || true
    "$bin" down "$work/tls" --state "$work/tls-state" >/dev/null 2>&1 || true
    "$bin" down "$work/plain" --state "$work/plain-state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/local" "$work/tls" "$work/plain"
truncate -s 8G "$work/local.img"
mkfs.ext4 -F -q "$work/local.img"
mount -o loop "$work/local.img" "$work/local"
"$bin" up "$work/tls" --state "$work/tls-state" --size 8G --no-backup >/dev/null
"$bin" up "$work/plain" --state "$work/plain-state" --size 8G --no-backup --insecure --no-encryption >/dev/null

rate() { # DIR NAME -> commits/s
    rm -f "$1/$2.db" "$1/$2.db-wal" "$1/$2.db-shm"
    python3 scripts/sqlite_commit_rate.py "$1/$2.db" "$seconds" --warmup "$warmup" \
        | sed -E 's/.*= ([0-9.]+) commits\/s.*/\1/'
}
echo "SQLite commits/s, steady state after $warmup commits, $seconds s per run"
printf '%-6s %12s %12s %12s %8s %8s\n' round local secure plain sec/plain sec/local
tls_all=(); plain_all=()
for round in $(seq "$rounds"); do
    local_rate=$(rate "$work/local" "r$round")
    tls_rate=$(rate "$work/tls" "r$round")
    plain_rate=$(rate "$work/plain" "r$round")
    tls_all+=("$tls_rate"); plain_all+=("$plain_rate")
    python3 -c "import sys; r,l,t,p=sys.argv[1:]; l,t,p=float(l),float(t),float(p); print(f'{r:<6} {l:12.1f} {t:12.1f} {p:12.1f} {t/p:8.2f} {t/l:8.2f}')" \
        "$round" "$local_rate" "$tls_rate" "$plain_rate"
done
python3 - "${tls_all[*]}" "${plain_all[*]}" <<'PY'
import statistics, sys
t = [float(x) for x in sys.argv[1].split()]
p = [float(x) for x in sys.argv[2].split()]
mt, mp = statistics.median(t), statistics.median(p)
print(f"median: secure (TLS + encryption) {mt:.1f} commits/s, plain (--insecure --no-encryption) {mp:.1f} commits/s, secure/plain {mt / mp:.2f}")
PY
