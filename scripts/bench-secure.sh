#!/usr/bin/env bash
# What security costs: SQLite commits per second (WAL, synchronous=FULL, single-row inserts,
# steady state after WARMUP commits) on ext4 on two `sixfold up` volumes mounted side by side,
#   (t) secure, `up`'s default: mutual TLS (every node, mount and command holds a certificate)
#       and encryption at rest (every node seals what it writes, AES-256-GCM), and
#   (p) with --insecure --no-encryption (plaintext on the wire and on disk),
# and, to show which of the two costs what, (w) TLS alone (--no-encryption) and (e) encryption
# alone (--insecure), measured in turn, ROUNDS times (this machine's disk varies within minutes: a pair of runs next
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
    "$bin" down "$work/wire" --state "$work/wire-state" >/dev/null 2>&1 || true
    "$bin" down "$work/disk" --state "$work/disk-state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/local" "$work/tls" "$work/plain" "$work/wire" "$work/disk"
truncate -s 8G "$work/local.img"
mkfs.ext4 -F -q "$work/local.img"
mount -o loop "$work/local.img" "$work/local"
"$bin" up "$work/tls" --state "$work/tls-state" --size 8G --no-backup >/dev/null
"$bin" up "$work/plain" --state "$work/plain-state" --size 8G --no-backup --insecure --no-encryption >/dev/null
"$bin" up "$work/wire" --state "$work/wire-state" --size 8G --no-backup --no-encryption >/dev/null
"$bin" up "$work/disk" --state "$work/disk-state" --size 8G --no-backup --insecure >/dev/null

rate() { # DIR NAME -> commits/s
    rm -f "$1/$2.db" "$1/$2.db-wal" "$1/$2.db-shm"
    python3 scripts/sqlite_commit_rate.py "$1/$2.db" "$seconds" --warmup "$warmup" \
        | sed -E 's/.*= ([0-9.]+) commits\/s.*/\1/'
}
echo "SQLite commits/s, steady state after $warmup commits, $seconds s per run"
printf '%-6s %10s %10s %10s %10s %10s %9s %9s %9s %9s\n' round local secure tls-only enc-only plain \
    sec/plain tls/plain enc/plain sec/local
tls_all=(); plain_all=(); wire_all=(); disk_all=()
for round in $(seq "$rounds"); do
    local_rate=$(rate "$work/local" "r$round")
    tls_rate=$(rate "$work/tls" "r$round")
    wire_rate=$(rate "$work/wire" "r$round")
    disk_rate=$(rate "$work/disk" "r$round")
    plain_rate=$(rate "$work/plain" "r$round")
    tls_all+=("$tls_rate"); plain_all+=("$plain_rate"); wire_all+=("$wire_rate"); disk_all+=("$disk_rate")
    python3 -c "import sys; r,l,t,w,d,p=sys.argv[1:]; l,t,w,d,p=map(float,(l,t,w,d,p)); print(f'{r:<6} {l:10.1f} {t:10.1f} {w:10.1f} {d:10.1f} {p:10.1f} {t/p:9.2f} {w/p:9.2f} {d/p:9.2f} {t/l:9.2f}')" \
        "$round" "$local_rate" "$tls_rate" "$wire_rate" "$disk_rate" "$plain_rate"
done
python3 - "${tls_all[*]}" "${plain_all[*]}" "${wire_all[*]}" "${disk_all[*]}" <<'PY'
import statistics, sys
t, p, w, d = ([float(x) for x in arg.split()] for arg in sys.argv[1:5])
mt, mp, mw, md = (statistics.median(v) for v in (t, p, w, d))
print(f"median: secure (TLS + encryption) {mt:.1f} commits/s, plain (--insecure --no-encryption) {mp:.1f} commits/s, secure/plain {mt / mp:.2f}")
print(f"        TLS alone {mw:.1f} commits/s ({mw / mp:.2f} of plain), encryption alone {md:.1f} commits/s ({md / mp:.2f} of plain)")
PY
