#!/usr/bin/env bash
# Where a quorum round's microseconds go (issue 17): one 4 KiB record appended to six
# `sixfold node` processes until four acknowledged (tests/examples/node_quorum_round.rs), over
# the append wire the writer uses and with mutual TLS (as users run it), with
# the nodes' data on this disk and on tmpfs (and on tmpfs over gRPC's AppendStream, the
# transport appends took before the append wire, for comparison) (no disk: what is left is the nodes' software and the
# network), beside the floor round of six bare processes (tests/examples/quorum_floor.rs: pwrite
# + fdatasync, 4 answers) on the disk and without it. For the nodes it also prints the CPU each
# round cost per thread kind of a node (async runtime: gRPC, TLS, request checks; appender: the
# hot-log write and fsync; folder) and on the writer's side, against what the cores give in a
# round: where there are fewer cores than processes, CPU per round is what bounds the round.
# Usage: scripts/profile-quorum-round.sh [ROUNDS]   (run as root, after scripts/setup.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
rounds="${1:-3000}"
cargo build --release -p sixfold -p sixfold-tests --examples >/dev/null
export SIXFOLD_BIN="$PWD/target/release/sixfold"
work="$PWD/target/profile-quorum-round"
shm=$(mktemp -d /dev/shm/sixfold-profile.XXXXXX)
trap 'rm -rf "$shm"' EXIT
mkdir -p "$work" "$shm/floor"

floor=$(target/release/examples/quorum_floor "$work" "$rounds")
export SIXFOLD_ROUND_TLS=1
disk=$(target/release/examples/node_quorum_round "$rounds")
tmpfs=$(SIXFOLD_TEST_RUNS="$shm" target/release/examples/node_quorum_round "$rounds")
grpc=$(SIXFOLD_WIRE=grpc SIXFOLD_TEST_RUNS="$shm" target/release/examples/node_quorum_round "$rounds")

first() { head -1 <<<"$1" | awk '{print $1}'; }
floor_disk=$(awk '{print $1}' <<<"$floor")
floor_net=$(grep -o '[0-9]* us without the disk' <<<"$floor" | awk '{print $1}')
nodes_disk=$(first "$disk")
nodes_tmpfs=$(first "$tmpfs")
echo "quorum round: one 4 KiB record, 4 of 6 acknowledgements, $rounds rounds each (mean)"
echo "  floor, no sixfold code     : $floor"
echo "  sixfold nodes, data on disk: $(head -1 <<<"$disk")"
tail -n +2 <<<"$disk"
echo "  sixfold nodes, data on tmpfs: $(head -1 <<<"$tmpfs")"
tail -n +2 <<<"$tmpfs"
echo "  sixfold nodes, data on tmpfs, gRPC AppendStream: $(head -1 <<<"$grpc")"
tail -n +2 <<<"$grpc"
awk -v fd="$floor_disk" -v fn="$floor_net" -v nd="$nodes_disk" -v nt="$nodes_tmpfs" 'BEGIN {
    printf "  => the nodes'"'"' software and transport add %.0f us to a round (nodes on tmpfs against the floor without the disk),\n", nt - fn
    printf "     the disk %.0f us (nodes on disk against tmpfs; %.0f us in the floor)\n", nd - nt, fd - fn
    printf "     round against the floor on disk: %.2f (aim: 1.3)\n", nd / fd
}'
