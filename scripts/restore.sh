#!/usr/bin/env bash
# Restores the `sixfold up` volume as it was at a snapshot or a time, as a new volume, and
# mounts its ext4 at DIR, beside the running one (which goes on untouched).
#
# Usage: scripts/restore.sh NAME|TIME DIR [UP_DIR]
#   NAME     a snapshot (scripts/snapshot.sh); TIME an RFC 3339 time such as
#            2026-11-26T10:00:00Z (the newest consistency point reached by then)
#   DIR      where to mount the restored file system (created if missing)
#   UP_DIR   the directory `sixfold up` mounted (default ./mnt); its state directory is
#            $SIXFOLD_STATE, else .<name of UP_DIR>.sixfold beside it
# Detach it later with: scripts/restore.sh --unmount DIR
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
die() { printf 'restore.sh: error: %s\n' "$*" >&2; exit 1; }
say() { printf 'restore.sh: %s\n' "$*"; }
bin="${SIXFOLD_BIN:-$here/target/release/sixfold}"
[ -x "$bin" ] || bin="$(command -v sixfold || true)"
[ -n "$bin" ] || die "no sixfold binary: run cargo build --release first"

if [ "${1:-}" = "--unmount" ]; then
    [ $# -eq 2 ] || die "usage: scripts/restore.sh --unmount DIR"
    dir="$(realpath -m "$2")"
    [ -f "$dir.sixfold-restore" ] || die "$dir was not mounted by restore.sh"
    fuse="$(cat "$dir.sixfold-restore")"
    umount "$dir" || die "cannot unmount $dir (in use?)"
    fusermount3 -u "$fuse" 2>/dev/null || umount "$fuse"
    rm -f "$dir.sixfold-restore"
    say "unmounted $dir"
    exit 0
fi

[ $# -ge 2 ] && [ $# -le 3 ] || die "usage: scripts/restore.sh NAME|TIME DIR [UP_DIR]"
point="$1"
dir="$(realpath -m "$2")"
up_dir="$(realpath -m "${3:-./mnt}")"
state="${SIXFOLD_STATE:-$(dirname "$up_dir")/.$(basename "$up_dir").sixfold}"
cluster="$state/cluster.toml"
[ -f "$cluster" ] || die "no sixfold up state at $state (is $up_dir a sixfold up directory?)"
if mountpoint -q "$dir" 2>/dev/null; then die "$dir is already a mount point"; fi

if [[ "$point" =~ ^[0-9]{4}-[0-9]{2}-[0-9]{2}T ]]; then
    how=(--to-time "$point")
    label="t$(date -u -d "$point" +%Y%m%d%H%M%S 2>/dev/null || echo time)"
else
    how=(--from "$point")
    label="$point"
fi
volume="restore-$label-$(date +%s)"
"$bin" restore "${how[@]}" --volume "$volume" --source default --cluster "$cluster"

# The writer of the restored volume, detached, with its log and pid in the state directory.
work="$state/restores/$volume"
fuse="$work/fuse"
mkdir -p "$fuse" "$dir"
nohup "$bin" mount --volume "$volume" --cluster "$cluster" "$fuse" \
    > "$work/mount.log" 2>&1 < /dev/null &
echo $! > "$work/mount.pid"
for _ in $(seq 1 600); do
    [ -s "$fuse/volume" ] && break
    kill -0 "$(cat "$work/mount.pid")" 2>/dev/null || { tail -5 "$work/mount.log" >&2; die "sixfold mount of $volume exited"; }
    sleep 0.1
done
[ -s "$fuse/volume" ] || die "the restored volume did not appear at $fuse/volume (see $work/mount.log)"
mount -o loop,noinit_itable "$fuse/volume" "$dir"
echo "$fuse" > "$dir.sixfold-restore"
say "volume $volume (restored at $point) is mounted at $dir"
say "detach it with: scripts/restore.sh --unmount $dir"
