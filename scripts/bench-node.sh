#!/usr/bin/env bash
# Storage-node benchmarks, each beside a local-disk baseline from the same run:
#   1. ingest: records/s and MiB/s one node hardens (fsync'd) from AppendStreams, against
#      writing the same batches to a local file with one fdatasync each;
#   2. repair: how fast a node killed during 1 GiB (or MIB) of writes catches up from its peers
#      through gossip alone, against copying the same amount to a local file (dd, fdatasync);
#   3. quorum round: one 4 KiB record appended to six nodes until four acknowledged
#      (tests/examples/node_quorum_round.rs), against the same round with no sixfold code
#      (tests/examples/quorum_floor.rs), three times each, alternating.
# Usage: scripts/bench-node.sh [SECONDS] [MIB]   (run as root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-10}"
mib="${2:-1024}"
cargo build --release -p sixfold -p sixfold-tests --examples >/dev/null
export SIXFOLD_BIN="$PWD/target/release/sixfold"

target/release/examples/node_ingest "$seconds"

echo "quorum round (one 4 KiB record, 4 of 6 acknowledgements; alternating, this disk drifts)"
mkdir -p "$PWD/target/bench-node"
for _ in 1 2 3; do
    nodes=$(target/release/examples/node_quorum_round 2000)
    echo "  sixfold nodes : $nodes"
    floor=$(target/release/examples/quorum_floor "$PWD/target/bench-node" 2000)
    echo "  no sixfold    : $floor"
done

repair=$(SIXFOLD_REPAIR_TEST_MIB="$mib" cargo test --release -p sixfold-tests \
    --test node_repair -- --nocapture 2>&1 | grep -E "MiB/s" || true)
work="$PWD/target/bench-node"
mkdir -p "$work"
copy=$(dd if=/dev/zero of="$work/copy.dat" bs=1M count="$mib" conv=fdatasync 2>&1 | tail -1)
rm -f "$work/copy.dat"
echo "segment repair (${mib} MiB written while one of six nodes was down)"
echo "  sixfold gossip repair        : ${repair:-FAILED (see cargo test -p sixfold-tests --test node_repair)}"
echo "  local copy (dd, fdatasync)   : $copy"
