#!/usr/bin/env bash
# Installs what sixfold and its tests need on a fresh Debian machine; safe to run again.
#
#   fuse3       fusermount3 (FUSE mounts without root; fuser's fallback)
#   e2fsprogs   mkfs.ext4 / resize2fs for `sixfold up` and `sixfold grow`
#   util-linux, mount   mount, umount, losetup
#   iproute2    ip: network namespaces for the tests that cut nodes off the network
#   sqlite3, mariadb-server   the databases the end-to-end tests run on the volume
#   moto (PyPI, in a virtualenv at target/tools/moto)   the S3-compatible server of the backup
#               tests (python3-venv from apt only where python3 cannot make a virtualenv)
#
# The system MariaDB service is never started (the tests run their own server with their own
# datadir and socket): a policy-rc.d refuses service starts during the install, and the unit is
# disabled afterwards where systemd runs.
set -euo pipefail

PACKAGES=(fuse3 sqlite3 e2fsprogs util-linux mount mariadb-server iproute2)

say() { printf 'setup: %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }

SUDO=()
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || die "run as root (or install sudo): installing packages and loading modules needs root"
  SUDO=(sudo)
fi

missing=()
for package in "${PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
    missing+=("$package")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  say "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep package scripts from starting services (mariadb) while installing.
  policy=/usr/sbin/policy-rc.d
  created_policy=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy" >/dev/null
    "${SUDO[@]}" chmod 755 "$policy"
    created_policy=1
  fi
  cleanup() { if [ "$created_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi; }
  trap cleanup EXIT
  "${SUDO[@]}" apt-get update -qq
  "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}"
  cleanup
  trap - EXIT
else
  say "packages already installed: ${PACKAGES[*]}"
fi

# We never use the system MariaDB instance.
if command -v systemctl >/dev/null 2>&1 && systemctl is-enabled mariadb >/dev/null 2>&1; then
  if [ -d /run/systemd/system ]; then
    "${SUDO[@]}" systemctl disable --now mariadb >/dev/null 2>&1 || true
  else
    "${SUDO[@]}" systemctl disable mariadb >/dev/null 2>&1 || true
  fi
fi
if [ ! -d /run/systemd/system ] && command -v service >/dev/null 2>&1 \
  && service mariadb status >/dev/null 2>&1; then
  say "stopping the system MariaDB service"
  "${SUDO[@]}" service mariadb stop >/dev/null 2>&1 || true
fi

# Kernel facilities: FUSE (required) and loop devices (for `sixfold up`).
if [ ! -e /dev/fuse ]; then
  "${SUDO[@]}" modprobe fuse 2>/dev/null || true
fi
[ -e /dev/fuse ] || die "/dev/fuse is missing: load the fuse module (modprobe fuse); in a container pass --device /dev/fuse --cap-add SYS_ADMIN"
if [ ! -e /dev/loop-control ]; then
  "${SUDO[@]}" modprobe loop 2>/dev/null || true
fi
if [ -e /dev/loop-control ]; then
  say "/dev/fuse and loop devices present"
else
  say "warning: no loop devices (/dev/loop-control missing; try modprobe loop): 'sixfold up' and the tests that use it will fail"
fi

# moto's S3 server for the backup tests, pinned, in a virtualenv inside the repository's
# target directory (never the system Python).
MOTO_VERSION=5.2.5
moto_dir="$(cd "$(dirname "$0")/.." && pwd)/target/tools/moto"
if ! "$moto_dir/bin/python" -c "import moto, sys; sys.exit(moto.__version__ != '$MOTO_VERSION')" 2>/dev/null; then
  if ! python3 -c 'import venv, ensurepip' 2>/dev/null; then
    say "installing python3-venv"
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends python3-venv python3-pip
  fi
  say "installing moto $MOTO_VERSION (S3 server for the backup tests) in $moto_dir"
  rm -rf "$moto_dir"
  python3 -m venv "$moto_dir"
  "$moto_dir/bin/pip" install -q --disable-pip-version-check "moto[server]==$MOTO_VERSION"
fi
"$moto_dir/bin/moto_server" --help >/dev/null 2>&1 || die "moto_server does not run from $moto_dir"

command -v cargo >/dev/null 2>&1 || say "warning: cargo is not installed (https://rustup.rs); it is needed to build sixfold"
say "done"
