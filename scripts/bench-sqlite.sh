#!/usr/bin/env bash
# SQLite commits per second (WAL, synchronous=FULL, single-row inserts, SECONDS per run) on
#   (a) ext4 on a loop device over a local file (the baseline),
#   (b) ext4 on a sixfold volume via `sixfold up` (six local nodes),
#   (c) ext4 on a loop device over a FUSE file whose fsync costs nothing
#       (tests/examples/fuse_free_fsync.rs: sixfold's FUSE options, no writer, no nodes),
# and the ratio b/a. All three are mounted for the whole run and measured in turn, ROUNDS times
# (this machine's disk varies 2-3x within minutes: a pair of runs next to each other in time
# is what compares), in two phases:
#   - steady state: after WARMUP commits (three WAL checkpoint cycles) the WAL is overwritten in
#     place and each commit is one fdatasync of data: the phase a running database lives in;
#   - from an empty database: the WAL grows by a frame per commit until its first checkpoint and
#     each fdatasync also commits ext4's journal (two device flushes). How much of a fixed time
#     falls in that phase depends on the rate: the slower device spends longer in it.
# Also printed: the bytes the nodes hardened per commit (all six copies), and what bounds the
# ratio on this machine: the flushes ext4 sends per commit and what each took (from the loop
# devices' counters), and the cheapest quorum round the machine can do with no sixfold code
# (tests/examples/quorum_floor.rs: six processes, pwrite + fdatasync, 4 answers), measured in
# every round. (c)'s commit time plus one floor round per flush of (b), in series, estimates what
# a writer and nodes that cost nothing would reach here: the zero-cost estimate of b/a, printed per
# round. (sixfold sends a write's records before the flush arrives, so it can overlap part of the
# round with (c)'s time and come out a little above the estimate.)
# Usage: scripts/bench-sqlite.sh [SECONDS [ROUNDS [WARMUP]]]   (run as root; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
rounds="${2:-3}"
warmup="${3:-3000}"
cargo build --release -p sixfold -p sixfold-tests --examples >/dev/null
bin="$PWD/target/release/sixfold"
work="$PWD/target/bench-sqlite"
cleanup() {
    mountpoint -q "$work/local" && umount "$work/local" || true
    mountpoint -q "$work/free" && umount "$work/free" || true
    mountpoint -q "$work/free-fuse" && umount "$work/free-fuse" || true
    if [ -n "${free_pid:-}" ] && kill -0 "$free_pid" 2>/dev/null; then
        kill "$free_pid" 2>/dev/null || true
    fi
    "$bin" down "$work/sixfold" --state "$work/state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/local" "$work/sixfold" "$work/free" "$work/free-fuse" "$work/runs"

# The disk under both: what one flush costs, and what six at once (six nodes) cost.
disk_line=$(python3 scripts/disk_flush_latency.py "$work")

# (a) baseline: ext4 on a loop device over a sparse local file; (b) ext4 on the sixfold volume;
# (c) ext4 on a loop device over the free-fsync FUSE file (its bytes in a sparse local file).
truncate -s 8G "$work/local.img"
mkfs.ext4 -F -q "$work/local.img"
mount -o loop "$work/local.img" "$work/local"
"$bin" up "$work/sixfold" --state "$work/state" --size 8G >/dev/null
target/release/examples/fuse_free_fsync "$work/free.img" "$work/free-fuse" $((8 << 30)) \
    >"$work/free-fuse.log" 2>&1 &
free_pid=$!
for _ in $(seq 50); do [ -e "$work/free-fuse/volume" ] && break; sleep 0.1; done
if [ ! -e "$work/free-fuse/volume" ]; then
    echo "bench-sqlite: the free-fsync FUSE file system did not mount:" >&2
    cat "$work/free-fuse.log" >&2
    exit 1
fi
mkfs.ext4 -F -q "$work/free-fuse/volume"
mount -o loop "$work/free-fuse/volume" "$work/free"

# Flush requests and the milliseconds they took, from a loop device's counters (fields 16, 17).
flushes() { awk '{print $16, $17}' "/sys/block/$(basename "$(findmnt -no SOURCE "$1")")/stat"; }
# Bytes the nodes wrote to their hot logs since they started; fails unless every node answered.
written_bytes() {
    "$bin" status --state "$work/state" --json | python3 -c '
import json, sys
nodes = json.load(sys.stdin)["nodes"]
down = [n["addr"] for n in nodes if not n["reachable"]]
if down:
    sys.exit("nodes did not answer: %s" % down)
print(sum(n["hot_log_written_bytes"] for n in nodes))'
}

# measure SETUP DIR PHASE ROUND: one timed run on the ext4 mounted at DIR. The rate script's hook
# (called with `before` and `after` around the timed part) records the flush counters and, for
# sixfold, the bytes the nodes wrote to their hot logs: $work/runs/PHASE.ROUND.SETUP.{before,after};
# the rate line goes to $work/runs/PHASE.ROUND.SETUP.line.
measure() {
    local setup="$1" dir="$2" phase="$3" round="$4"
    local out="$work/runs/$phase.$round.$setup" warm=0 nodes=
    [ "$phase" = steady ] && warm="$warmup"
    [ "$setup" = b ] && nodes=yes
    cat >"$work/hook" <<HOOK
#!/usr/bin/env bash
set -euo pipefail
$(declare -f flushes written_bytes)
bin='$bin'; work='$work'
f=\$(flushes '$dir')
w=0
if [ -n '$nodes' ]; then w=\$(written_bytes); fi
echo "\$f \$w" >'$out'.\$1
HOOK
    chmod +x "$work/hook"
    python3 scripts/sqlite_commit_rate.py "$dir/$phase.db" "$seconds" --warmup "$warm" \
        --hook "$work/hook" >"$out.line"
    rm -f "$dir/$phase.db" "$dir/$phase.db-wal" "$dir/$phase.db-shm"
}

# Each round rotates which goes first: the nodes keep folding for a few seconds after a run, on
# the same disk, and that should not always fall on the same side. The floor is measured in every
# round, next to the runs it bounds.
declare -A dirs=([a]="$work/local" [b]="$work/sixfold" [c]="$work/free")
for phase in steady cold; do
    for round in $(seq 1 "$rounds"); do
        order=(a b c a b)
        for setup in "${order[@]:$((round % 3)):3}"; do
            measure "$setup" "${dirs[$setup]}" "$phase" "$round"
        done
        # Let the nodes finish folding what (b) wrote, on the same disk, before the floor runs.
        sleep 5
        target/release/examples/quorum_floor "$work" 1000 >"$work/runs/$phase.$round.floor"
    done
done

echo "SQLite WAL synchronous=FULL single-row inserts, ${seconds}s per run, (a), (b) and (c) in turn, $rounds rounds"
python3 - "$work/runs" "$rounds" "$warmup" <<'PY'
import re, statistics, sys
runs, rounds, warmup = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def read(name):
    return open("%s/%s" % (runs, name)).read().strip()
def run(phase, round, setup):
    base = "%s.%d.%s" % (phase, round, setup)
    n, rate = re.match(r"(\d+) commits .*= ([0-9.]+) commits/s", read(base + ".line")).groups()
    f0, t0, w0 = map(float, read(base + ".before").split())
    f1, t1, w1 = map(float, read(base + ".after").split())
    n = max(int(n), 1)
    return {"rate": float(rate), "flushes": (f1 - f0) / n,
            "flush_us": (t1 - t0) * 1000 / max(f1 - f0, 1), "bytes": (w1 - w0) / n}
med = statistics.median
for phase, label in (("steady", "steady state (after %s commits)" % warmup), ("cold", "from an empty database")):
    a = [run(phase, r, "a") for r in range(1, rounds + 1)]
    b = [run(phase, r, "b") for r in range(1, rounds + 1)]
    c = [run(phase, r, "c") for r in range(1, rounds + 1)]
    floors = [float(read("%s.%d.floor" % (phase, r)).split()[0]) for r in range(1, rounds + 1)]
    ra, rb, rc = (med(x["rate"] for x in s) for s in (a, b, c))
    fb = med(x["flushes"] for x in b)
    print("  %s:" % label)
    print("    (a) ext4 on loop over local file : %8.1f commits/s (median; runs %s)" % (ra, ", ".join("%.0f" % x["rate"] for x in a)))
    print("    (b) ext4 on sixfold (6 nodes)    : %8.1f commits/s (median; runs %s)" % (rb, ", ".join("%.0f" % x["rate"] for x in b)))
    print("    (c) ext4 on FUSE, free fsync     : %8.1f commits/s (median; runs %s)" % (rc, ", ".join("%.0f" % x["rate"] for x in c)))
    print("    ratio b/a                        : %8.2f (of medians; per round %s)" % (rb / ra, ", ".join("%.2f" % (y["rate"] / x["rate"]) for x, y in zip(a, b))))
    print("    flushes per commit (a), (b)      : %8.2f, %.2f (ext4's journal commits and data syncs)" % (med(x["flushes"] for x in a), fb))
    print("    mean flush time (a), (b)         : %8.0f us, %.0f us" % (med(x["flush_us"] for x in a), med(x["flush_us"] for x in b)))
    # A writer and nodes that cost nothing: (c)'s commit time plus one floor round per flush of (b),
    # against (a) of the same round.
    estimate = [1e6 / (1e6 / z["rate"] + y["flushes"] * f) / x["rate"] for x, y, z, f in zip(a, b, c, floors)]
    print("    quorum round floor (no sixfold)  : %8.0f us (median; rounds %s)" % (med(floors), ", ".join("%.0f" % f for f in floors)))
    print("    => zero-cost estimate of b/a     : %8.2f (median; per round %s: (c)'s commit + one floor round per flush of (b), against (a))" % (med(estimate), ", ".join("%.2f" % v for v in estimate)))
    print("    (b) against that estimate        : %8.2f (median of rounds)" % med(y["rate"] / (v * x["rate"]) for x, y, v in zip(a, b, estimate)))
    wb = med(x["bytes"] for x in b)
    print("    bytes hardened on nodes / commit : %8.0f (all six copies; %.0f per copy)" % (wb, wb / 6))
print("  last floor run                     : %s" % read("cold.%d.floor" % rounds))
PY
echo "  disk write+fdatasync (no sixfold)  : $disk_line"
