#!/usr/bin/env bash
# fio on a sixfold volume against a local disk, in one run (issue 17's figures):
#   (a) ext4 on a loop device over a local file (the baseline),
#   (b) ext4 on a sixfold volume via `sixfold up` (six local nodes, TLS and encryption on: what
#       users run),
#   (r) the raw volume file of a second `sixfold up` (its ext4 unmounted, the FUSE file used
#       directly),
# three jobs each, every one for SECONDS:
#   randwrite-fsync  4 KiB random writes, an fsync after each (fio --fsync=1), one at a time
#   seqwrite         1 MiB sequential writes (buffered, fsync at the end)
#   randread         4 KiB random reads, O_DIRECT, one at a time, of a file written beforehand
# Printed: IOPS (or MiB/s), p50/p99 latency, and the ratio to (a) for each; for the fsync job
# also the flushes each fsync cost the device under ext4 (from the loop devices' counters: ext4
# sends a journal commit's preflush and FUA block as flushes) and the mean ms per flush.
# (r)'s mount has a 16 MiB page cache, so its reads come from the nodes; it runs randread once
# more with both nodes of the mount's AZ (the first ones every read asks) frozen by SIGSTOP:
# hedged reads keep the tail (p99, max) near the healthy one.
# Last, the peak resident memory (VmHWM) of each mount and node.
# Usage: scripts/bench-fio.sh [SECONDS [FILE_MIB]]   (run as root; installs fio; builds the release binary)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-20}"
file_mib="${2:-256}"
if ! command -v fio >/dev/null; then
    echo "installing fio..."
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq fio >/dev/null
fi
cargo build --release -p sixfold >/dev/null
bin="$PWD/target/release/sixfold"
work="$PWD/target/bench-fio"
cleanup() {
    # Nodes frozen for the stalled read job go on first, or `down` waits for them in vain.
    if [ -n "${frozen:-}" ]; then kill -CONT $frozen 2>/dev/null || true; fi
    mountpoint -q "$work/local" && umount "$work/local" || true
    "$bin" down "$work/sixfold" --state "$work/state" >/dev/null 2>&1 || true
    "$bin" down "$work/raw" --state "$work/raw-state" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
rm -rf "$work"
mkdir -p "$work/local" "$work/sixfold" "$work/raw" "$work/out"

truncate -s 8G "$work/local.img"
mkfs.ext4 -F -q "$work/local.img"
mount -o loop "$work/local.img" "$work/local"
"$bin" up "$work/sixfold" --state "$work/state" --size 8G --no-backup >/dev/null
"$bin" up "$work/raw" --state "$work/raw-state" --size 8G --no-backup --cache-mb 16 >/dev/null
umount "$work/raw" # its ext4 off: fio writes the FUSE file itself
raw_file="$work/raw-state/fuse/volume"

# Flush requests and the milliseconds they took, from the loop device under DIR (fields 16, 17).
flushes() { awk '{print $16, $17}' "/sys/block/$(basename "$(findmnt -no SOURCE "$1")")/stat"; }

# run NAME TARGET_FILE JOB_OPTIONS...: one fio job, its JSON in out/NAME.json
run() {
    local name="$1" file="$2"
    shift 2
    fio --name="$name" --filename="$file" --size="${file_mib}M" --runtime="$seconds" \
        --time_based --ioengine=psync --group_reporting --output-format=json \
        --output="$work/out/$name.json" "$@" >/dev/null
}

for target in local sixfold raw; do
    case "$target" in
        local) file="$work/local/fio.dat" dir="$work/local" ;;
        sixfold) file="$work/sixfold/fio.dat" dir="$work/sixfold" ;;
        raw) file="$raw_file" dir="" ;;
    esac
    echo "measuring $target..." >&2
    before=""
    [ -n "$dir" ] && before=$(flushes "$dir")
    run "$target-randwrite-fsync" "$file" --rw=randwrite --bs=4k --fsync=1
    if [ -n "$dir" ]; then
        after=$(flushes "$dir")
        echo "$before $after" >"$work/out/$target-flushes"
    fi
    run "$target-seqwrite" "$file" --rw=write --bs=1M --end_fsync=1
    run "$target-randread" "$file" --rw=randread --bs=4k --direct=1
done
echo "measuring raw reads with AZ a's nodes frozen..." >&2
frozen="$(cat "$work/raw-state/pids/node-1.pid") $(cat "$work/raw-state/pids/node-2.pid")"
kill -STOP $frozen
run "raw-randread-stalled" "$raw_file" --rw=randread --bs=4k --direct=1 || echo "the read job with AZ a frozen failed" >&2
kill -CONT $frozen
frozen=""
for state in state raw-state; do
    for f in "$work/$state"/pids/*.pid; do
        echo "$state $(basename "$f" .pid) $(awk '/VmHWM/ {print $2}' "/proc/$(cat "$f")/status")"
    done
done >"$work/out/peak-rss"

python3 - "$work/out" "$seconds" <<'PY'
import json, os, sys
out, seconds = sys.argv[1], float(sys.argv[2])

def job(name):
    with open(os.path.join(out, name + ".json")) as f:
        j = json.load(f)["jobs"][0]
    return j

def side(j, kind):
    return j["write"] if kind == "write" else j["read"]

def lat_ms(s, pct):
    # completion latency percentiles, ns
    p = s.get("clat_ns", {}).get("percentile", {})
    return p.get(pct, 0) / 1e6

rows = []
base = {}
for target in ["local", "sixfold", "raw"]:
    w = job(f"{target}-randwrite-fsync")
    s = side(w, "write")
    iops = s["iops"]
    sync = w.get("sync", {})
    sync_p99 = sync.get("lat_ns", {}).get("percentile", {}).get("99.000000", 0) / 1e6
    fl = ""
    path = os.path.join(out, f"{target}-flushes")
    if os.path.exists(path):
        b_n, b_ms, a_n, a_ms = map(int, open(path).read().split())
        writes = s["total_ios"]
        n = a_n - b_n
        fl = f"{n / max(writes, 1):.2f} flushes/fsync, {((a_ms - b_ms) / max(n, 1)):.2f} ms each"
    q = job(f"{target}-seqwrite")
    bw = side(q, "write")["bw_bytes"] / (1 << 20)
    r = job(f"{target}-randread")
    rs = side(r, "read")
    rows.append((target, iops, sync_p99, fl, bw, rs["iops"], lat_ms(rs, "50.000000"), lat_ms(rs, "99.000000")))
    if target == "local":
        base = {"w": iops, "bw": bw, "r": rs["iops"]}

print(f"fio, {seconds:.0f} s per job; ratios to (a) ext4 on a local loop file")
print(f"{'target':<9} {'4k randwrite+fsync':>20} {'ratio':>6} {'fsync p99 ms':>13}  {'1M seqwrite MiB/s':>18} {'ratio':>6}  {'4k randread IOPS':>17} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7}")
for target, iops, sync_p99, fl, bw, riops, r50, r99 in rows:
    print(f"{target:<9} {iops:>20.0f} {iops / base['w']:>6.2f} {sync_p99:>13.2f}  {bw:>18.1f} {bw / base['bw']:>6.2f}  {riops:>17.0f} {riops / base['r']:>6.2f} {r50:>7.3f} {r99:>7.3f}")
print()
for target, *_rest in rows:
    path = os.path.join(out, f"{target}-flushes")
    if os.path.exists(path):
        fl = [r[3] for r in rows if r[0] == target][0]
        print(f"{target}: the device under ext4 saw {fl} during the fsync job")
print()
print("raw 4k randread from the nodes (16 MiB page cache), hedged reads:")
for name, label in [("raw-randread", "all nodes healthy"), ("raw-randread-stalled", "AZ a's 2 nodes frozen")]:
    try:
        rs = side(job(name), "read")
    except (OSError, ValueError, KeyError, IndexError) as e:
        print(f"  {label:<22} no result ({e})")
        continue
    print(f"  {label:<22} {rs['iops']:>8.0f} IOPS  p50 {lat_ms(rs, '50.000000'):.3f} ms  p99 {lat_ms(rs, '99.000000'):.3f} ms  p99.9 {lat_ms(rs, '99.900000'):.3f} ms  max {rs['clat_ns']['max'] / 1e6:.1f} ms")
print()
print("peak resident memory (VmHWM, MiB); (b) mounts with a 256 MiB page cache, (r) with 16 MiB:")
peaks = {}
for line in open(os.path.join(out, "peak-rss")):
    fields = line.split()
    if len(fields) != 3:
        continue  # the process was gone
    state, proc, kib = fields
    peaks.setdefault(state, []).append((proc, int(kib) / 1024))
for state, label in [("state", "(b) sixfold"), ("raw-state", "(r) raw")]:
    print(f"  {label:<12} " + "  ".join(f"{p} {m:.0f}" for p, m in peaks.get(state, [])))
PY
