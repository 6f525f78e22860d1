#!/usr/bin/env bash
# The project's test command: installs what the suite needs on a fresh Debian machine
# (FUSE, rsync, attr, gio, the vendors' Python SDKs for interop tests) and runs every test,
# including the real-mount tests, which fail loudly when FUSE is unavailable.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" = 0 ] || SUDO="sudo"

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v rsync >/dev/null 2>&1 || need+=(rsync)
command -v getfattr >/dev/null 2>&1 || need+=(attr)
command -v gio >/dev/null 2>&1 || need+=(libglib2.0-bin)
command -v curl >/dev/null 2>&1 || need+=(curl)
if [ ${#need[@]} -gt 0 ]; then
  echo "test.sh: installing ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

# The vendors' own SDKs run against `uploadfs serve` in the interop tests.
if ! python3 -c 'import box_sdk_gen, cloudreve' >/dev/null 2>&1; then
  echo "test.sh: installing box-sdk-gen and cloudreve from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check box-sdk-gen cloudreve
fi

if [ ! -e /dev/fuse ]; then
  echo "test.sh: FATAL: /dev/fuse is missing; the real-mount tests cannot run here" >&2
  exit 1
fi

export RUST_BACKTRACE=1
cargo build --bins --quiet
cargo test --no-fail-fast -- --test-threads="${UPLOADFS_TEST_THREADS:-2}"
