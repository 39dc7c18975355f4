#!/usr/bin/env bash
# Takes a snapshot of the `sixfold up` volume, with no write pause.
#
# Usage: scripts/snapshot.sh NAME [UP_DIR]
#   NAME     snapshot name (A-Z a-z 0-9 . _ -)
#   UP_DIR   the directory `sixfold up` mounted (default ./mnt); its state directory is
#            $SIXFOLD_STATE, else .<name of UP_DIR>.sixfold beside it
# List snapshots: sixfold snapshot list --cluster STATE/cluster.toml
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
die() { printf 'snapshot.sh: error: %s\n' "$*" >&2; exit 1; }
[ $# -ge 1 ] && [ $# -le 2 ] || die "usage: scripts/snapshot.sh NAME [UP_DIR]"
name="$1"
up_dir="$(realpath -m "${2:-./mnt}")"
state="${SIXFOLD_STATE:-$(dirname "$up_dir")/.$(basename "$up_dir").sixfold}"
bin="${SIXFOLD_BIN:-$here/target/release/sixfold}"
[ -x "$bin" ] || bin="$(command -v sixfold || true)"
[ -n "$bin" ] || die "no sixfold binary: run cargo build --release first"
[ -f "$state/cluster.toml" ] || die "no sixfold up state at $state (is $up_dir a sixfold up directory?)"
exec "$bin" snapshot create "$name" --volume default --cluster "$state/cluster.toml"
