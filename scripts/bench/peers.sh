#!/usr/bin/env bash
# `scripts/bench.sh --peers`: our S3 mount side by side with the mounts users compare it
# with, on one real S3 server, in one run.
#
# The server is a SeaweedFS cluster on loopback (scripts/seaweedfs.sh: master, three volume
# servers with one replica, filer with the S3 gateway). The subjects, all mounted at once
# on their own directories and measured in turn (the order rotates with each run, so no
# subject always goes first or last):
#   uploadfs       our mount (`uploadfs mount s3 …`, a table `kind = "s3"`)
#   rclone-writes  rclone mount --vfs-cache-mode writes (rclone's advice for writing; it
#                  starts an upload 5 s after the last close, its --vfs-write-back default,
#                  and "until stored" includes that wait)
#   rclone-off     rclone mount --vfs-cache-mode off
#   s3fs           s3fs (Debian's)
#   mountpoint     mountpoint-s3, when UPLOADFS_MOUNT_S3 names a `mount-s3` binary
# and the direct clients: uploadfs-cli (`uploadfs put` / `get`), rclone-cli (`rclone
# copyto` / `copy` / `cat`), and boto3 (managed transfer, 10 parts at once) for the S3
# server's own ingest and egress, so that a limit of the server can be told from one of a
# subject. A subject that fails to mount, or a step that fails, prints n/a; the run goes on.
#
# Workloads (the same keys for every subject, below bench/SUBJECT/ in the bucket):
#   cp of the big file, until the server lists it complete (a waiter polls HeadObject:
#     rclone's write-back returns from `cp` long before its upload ends); the time at
#     which `cp` returned is recorded too
#   cp -r of SMALL_N × 16 KiB, until all are listed; rsync -a of fresh ones, the same
#   sequential read of a big object (uploaded once by boto3): cold (fresh daemon, page
#     cache dropped) and warm (again, same daemon)
#   ls -l of a directory of LS_N objects, cold and warm
#   daemon peak RSS while 16 writers copy RSS_MB each, until all are stored
# Deleted data is reclaimed (a vacuum) after each big file, so the cluster's disk holds
# about one copy at a time (twice: one replica).
#
# Environment (set by bench.sh): RUNS BIG_MB SMALL_N LS_N RSS_MB, BENCH_OUT; optional
# UPLOADFS_MOUNT_S3, BENCH_BIN (an uploadfs binary to measure instead of a release build). Needs root (drop_caches, clear_refs), fuse3, s3fs, rsync, boto3.
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
BIG_MB=${BIG_MB:-1024}
SMALL_N=${SMALL_N:-1000}
LS_N=${LS_N:-10000}
RSS_MB=${RSS_MB:-256}

for tool in fusermount3 rsync s3fs curl; do
  command -v "$tool" >/dev/null || { echo "bench.sh --peers: needs $tool (run scripts/test.sh first)" >&2; exit 1; }
done
python3 -c 'import boto3' 2>/dev/null || { echo "bench.sh --peers: needs boto3 (run scripts/test.sh first)" >&2; exit 1; }

if [ -n "${BENCH_BIN:-}" ]; then
  BIN=$BENCH_BIN
else
  cargo build --release --quiet
  BIN=$PWD/target/release/uploadfs
fi
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/uploadfs-peers.XXXXXX")
OUT=${BENCH_OUT:-$WORK/samples.tsv}
: > "$OUT"
NOTES=$WORK/notes.txt
: > "$NOTES"
S3TOOL="python3 $PWD/scripts/bench/s3_tool.py"

# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh
# shellcheck source=tests/interop/s3_peers.sh
. tests/interop/s3_peers.sh
export S3_PEERS_DIR=$WORK/peers
# rclone as users run it: without the directory markers that the interop config turns on
# (with them, `rclone copy` of 100 small files took 3-5 s here instead of 0.6-0.9 s, and
# rclone mount's `cp -r` ~1.5x as long). No workload here has an empty directory.
RCLONE_DEFAULTS="--s3-directory-markers=false"
export S3_PEERS_RCLONE_ARGS=$RCLONE_DEFAULTS
RCLONE=$(peers_rclone_bin)
export UPLOADFS_RCLONE=$RCLONE

SUBJECTS=(uploadfs rclone-writes rclone-off s3fs)
[ -n "${UPLOADFS_MOUNT_S3:-}" ] && SUBJECTS+=(mountpoint)
DIRECT=(uploadfs-cli rclone-cli boto3)
declare -A MOUNTED=()

cleanup() {
  local s
  for s in "${SUBJECTS[@]}"; do unmount_subject "$s" 2>/dev/null || true; done
  scripts/seaweedfs.sh stop "$WORK/cluster" || true
  rm -rf "$WORK"
}
trap cleanup EXIT

note() { echo "$*" >> "$NOTES"; echo "bench.sh --peers: $*" >&2; }

# ---- the cluster and the subjects ----------------------------------------------------
# Stored at once, at most: the read object, the 16 RSS files, the small trees of every
# subject and run, and one big file not yet vacuumed; twice over for margin.
SEAWEEDFS_DATA_MB=$((2 * (2 * BIG_MB + 16 * RSS_MB + 10 * RUNS * SMALL_N * 16 / 1024 + 64))) \
  SEAWEEDFS_OWNER_PID=$$ scripts/seaweedfs.sh start "$WORK/cluster" > "$WORK/cluster.env"
# shellcheck disable=SC1091
. "$WORK/cluster.env"
export UPLOADFS_S3_ENDPOINT UPLOADFS_S3_REGION UPLOADFS_S3_ACCESS_KEY UPLOADFS_S3_SECRET_KEY UPLOADFS_S3_BUCKET
vacuum() { scripts/seaweedfs.sh vacuum "$WORK/cluster"; sync; }

(
  umask 077
  cat > "$WORK/uploadfs.toml" <<EOF
[targets.s3]
kind = "s3"
endpoint = "$UPLOADFS_S3_ENDPOINT"
region = "$UPLOADFS_S3_REGION"
bucket = "$UPLOADFS_S3_BUCKET"
path_style = true
access_key_id = "$UPLOADFS_S3_ACCESS_KEY"
secret_access_key = "$UPLOADFS_S3_SECRET_KEY"
EOF
)

mnt() { echo "$WORK/mnt/$1"; }

# mount_subject S — mount S freshly (an empty cache: what it shows is fetched anew).
mount_subject() {
  local s=$1 dir
  dir=$(mnt "$s")
  mkdir -p "$dir"
  case "$s" in
    uploadfs)
      rm -rf "$WORK/uf-cache" "$WORK/uf-state"
      "$BIN" mount s3 "$dir" --config "$WORK/uploadfs.toml" --cache-dir "$WORK/uf-cache" \
        --state-dir "$WORK/uf-state" --log-file "$WORK/uploadfs-mount.log" >"$WORK/uploadfs-mount.out" 2>&1 &&
        mountpoint -q "$dir" ;;
    rclone-writes) peers_mount_rclone "$dir" writes ;;
    rclone-off) peers_mount_rclone "$dir" off ;;
    s3fs) peers_mount_s3fs "$dir" ;;
    mountpoint) peers_mount_mountpoint "$dir" ;;
  esac
}
unmount_subject() {
  local s=$1 dir
  dir=$(mnt "$s")
  mountpoint -q "$dir" || return 0
  if [ "$s" = uploadfs ]; then
    "$BIN" unmount "$dir" || "$BIN" unmount --force "$dir" || fusermount3 -uz "$dir"
  else
    peers_unmount "$dir"
  fi
}
subject_pid() {
  if [ "$1" = uploadfs ]; then uploadfs_daemon_pid "$(mnt uploadfs)"; else peers_pid "$(mnt "$1")"; fi
}
# remount S — a fresh daemon; marks S n/a when it does not mount.
remount() {
  unmount_subject "$1" || true
  if mount_subject "$1"; then MOUNTED[$1]=1; else MOUNTED[$1]=0; fi
}

# The subjects in this run's order: rotated by one place per run.
order() { # RUN NAME...
  local r=$1; shift
  local a=("$@") n=$# i
  for i in $(seq 0 $((n - 1))); do echo "${a[$(((i + r - 1) % n))]}"; done
}

na() { record "$1" s3 "$2" -1 0 "$3"; }

# until_stored WORKLOAD SUBJECT AMOUNT UNIT WAIT-ARGS -- command... — the time from the
# command's start until the waiter (s3_tool.py WAIT-ARGS) sees the result on the server;
# for a mount also the time until the command returned (WORKLOAD's "until stored" becomes
# "until the command returns"). A failed command or a waiter that
# times out records n/a. rsync's exit 23 (some attributes not set) is noted, not fatal.
until_stored() {
  local w=$1 s=$2 amount=$3 unit=$4 wait_args=$5
  shift 6
  rm -f "$WORK/ready" "$WORK/seen"
  # shellcheck disable=SC2086
  $S3TOOL $wait_args --ready "$WORK/ready" --timeout $((120 + BIG_MB)) > "$WORK/seen" &
  local waiter=$! t0 t1 rc=0
  while [ ! -e "$WORK/ready" ] && kill -0 "$waiter" 2>/dev/null; do sleep 0.02; done
  t0=$(now_ms)
  "$@" 2>"$WORK/step.err" || rc=$?
  t1=$(now_ms)
  if [ "$rc" = 23 ] && [ "$1" = rsync ]; then
    note "$s: rsync exited 23 on '$w' ($(grep -v '^rsync error' "$WORK/step.err" | head -n 1))"
    rc=0
  fi
  if [ "$rc" != 0 ]; then
    note "$s: '$w' failed ($rc): $(head -n 2 "$WORK/step.err" | tr '\n' ' ')"
    kill "$waiter" 2>/dev/null || true
    wait "$waiter" 2>/dev/null || true
    na "$w" "$s" "$unit"
    return 0
  fi
  if wait "$waiter" && [ -s "$WORK/seen" ]; then
    record "$w" s3 "$s" $(($(cat "$WORK/seen") - t0)) "$amount" "$unit"
    # A direct client returns when its upload is done; a mount may return long before.
    case "$s" in
      *-cli | boto3) ;;
      *) record "${w%, until stored}, until the command returns" s3 "$s" $((t1 - t0)) "$amount" "$unit" ;;
    esac
  else
    note "$s: '$w' not complete on the server in time"
    na "$w" "$s" "$unit"
  fi
}

# timed_or_na WORKLOAD SUBJECT AMOUNT UNIT -- command...
timed_or_na() {
  local w=$1 s=$2 amount=$3 unit=$4 t0 t1
  shift 5
  t0=$(now_ms)
  if "$@" 2>"$WORK/step.err"; then
    t1=$(now_ms)
    record "$w" s3 "$s" $((t1 - t0)) "$amount" "$unit"
  else
    note "$s: '$w' failed: $(head -n 2 "$WORK/step.err" | tr '\n' ' ')"
    na "$w" "$s" "$unit"
  fi
}

echo "bench.sh --peers: work dir $WORK, runs $RUNS, big ${BIG_MB} MiB, ${SMALL_N} small files, ls of ${LS_N}, subjects: ${SUBJECTS[*]}" >&2
BIG=$WORK/big.bin
head -c $((BIG_MB * 1024 * 1024)) /dev/urandom > "$BIG"
BIG_BYTES=$((BIG_MB * 1024 * 1024))
W_CP="cp ${BIG_MB} MiB, until stored"
W_CPR="cp -r ${SMALL_N}x16KiB, until stored"
W_RSYNC="rsync -a ${SMALL_N}x16KiB, until stored"
W_COLD="read ${BIG_MB} MiB cold"
W_WARM="read ${BIG_MB} MiB warm"
W_LSC="ls -l ${LS_N} files cold"
W_LSW="ls -l ${LS_N} files warm"
W_RSS="daemon peak RSS, 16 writers of ${RSS_MB} MiB"

# The objects every subject reads: one big file (boto3) and a directory of LS_N (rclone
# copy, 16 at once).
$S3TOOL upload "$BIG" read/big.bin > /dev/null
mkdir -p "$WORK/ls"
python3 - "$WORK/ls" "$LS_N" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"entry-{i:05d}.txt"), "w") as f:
        f.write(str(i))
EOF
peers_rclone copy $RCLONE_DEFAULTS --transfers 16 --checkers 16 "$WORK/ls" "s3:$UPLOADFS_S3_BUCKET/ls"
rm -rf "$WORK/ls"

for s in "${SUBJECTS[@]}"; do
  remount "$s"
  if [ "${MOUNTED[$s]}" != 1 ]; then
    why=""
    [ "$s" = uploadfs ] && why=": $(tail -n 1 "$WORK/uploadfs-mount.out" 2>/dev/null || true)"
    note "$s: did not mount$why"
  fi
done

# ---- writes --------------------------------------------------------------------------
for r in $(seq "$RUNS"); do
  mapfile -t ORDER < <(order "$r" "${SUBJECTS[@]}" "${DIRECT[@]}")
  echo "bench.sh --peers: run $r: ${ORDER[*]}" >&2

  # 1. the big file, until stored
  for s in "${ORDER[@]}"; do
    key="bench/$s/big-$r.bin"
    case "$s" in
      uploadfs-cli) until_stored "$W_CP" "$s" "$BIG_BYTES" B "wait-key --key $key --size $BIG_BYTES" -- \
        "$BIN" put -q "$BIG" "s3:$key" --config "$WORK/uploadfs.toml" ;;
      rclone-cli) until_stored "$W_CP" "$s" "$BIG_BYTES" B "wait-key --key $key --size $BIG_BYTES" -- \
        peers_rclone copyto $RCLONE_DEFAULTS "$BIG" "s3:$UPLOADFS_S3_BUCKET/$key" ;;
      boto3)
        if ms=$($S3TOOL upload "$BIG" "$key"); then record "$W_CP" s3 boto3 "$ms" "$BIG_BYTES" B; else na "$W_CP" boto3 B; fi ;;
      *)
        if [ "${MOUNTED[$s]}" != 1 ]; then na "$W_CP" "$s" B; continue; fi
        mkdir -p "$(mnt "$s")/bench/$s"
        until_stored "$W_CP" "$s" "$BIG_BYTES" B "wait-key --key $key --size $BIG_BYTES" -- \
          cp "$BIG" "$(mnt "$s")/$key"
        rm -f "$(mnt "$s")/$key" 2>/dev/null || true ;;
    esac
    $S3TOOL delete-prefix "$key" || true
    vacuum
  done

  # 2. cp -r and 3. rsync -a of small files, fresh contents each run
  gen_tree "$WORK/small-$r" "$SMALL_N" 16384 "$r"
  gen_tree "$WORK/rs-$r" "$SMALL_N" 16384 $((100 + r))
  for w in cpr rsync; do
    for s in "${ORDER[@]}"; do
      [ "$s" = boto3 ] && continue
      if [ "$w" = cpr ]; then wl=$W_CPR; src=$WORK/small-$r; p="bench/$s/small-$r"
      else wl=$W_RSYNC; src=$WORK/rs-$r; p="bench/$s/rs-$r"; fi
      wait_args="wait-prefix --prefix $p/ --count $SMALL_N --size 16384"
      case "$s" in
        uploadfs-cli) until_stored "$wl" "$s" "$SMALL_N" files "$wait_args" -- \
          "$BIN" put -q -r -j 8 "$src" "s3:$p" --config "$WORK/uploadfs.toml" ;;
        rclone-cli) until_stored "$wl" "$s" "$SMALL_N" files "$wait_args" -- \
          peers_rclone copy $RCLONE_DEFAULTS --transfers 8 "$src" "s3:$UPLOADFS_S3_BUCKET/$p" ;;
        *)
          if [ "${MOUNTED[$s]}" != 1 ]; then na "$wl" "$s" files; continue; fi
          mkdir -p "$(mnt "$s")/bench/$s"
          if [ "$w" = cpr ]; then
            until_stored "$wl" "$s" "$SMALL_N" files "$wait_args" -- cp -r "$src" "$(mnt "$s")/$p"
          else
            until_stored "$wl" "$s" "$SMALL_N" files "$wait_args" -- rsync -a "$src/" "$(mnt "$s")/$p/"
          fi ;;
      esac
    done
  done
  rm -rf "$WORK/small-$r" "$WORK/rs-$r"

  # 4. sequential read of read/big.bin: cold (fresh daemon, dropped page cache) and warm
  for s in "${ORDER[@]}"; do
    case "$s" in
      uploadfs-cli) drop_caches; timed_or_na "$W_COLD" "$s" "$BIG_BYTES" B -- \
        "$BIN" get -q s3:read/big.bin /dev/null --config "$WORK/uploadfs.toml" ;;
      rclone-cli) drop_caches; timed_or_na "$W_COLD" "$s" "$BIG_BYTES" B -- \
        sh -c "'$RCLONE' --config '$S3_PEERS_DIR/rclone.conf' cat 's3:$UPLOADFS_S3_BUCKET/read/big.bin' > /dev/null" ;;
      boto3)
        drop_caches
        if ms=$($S3TOOL download read/big.bin); then record "$W_COLD" s3 boto3 "$ms" "$BIG_BYTES" B; else na "$W_COLD" boto3 B; fi ;;
      *)
        remount "$s"
        if [ "${MOUNTED[$s]}" != 1 ]; then na "$W_COLD" "$s" B; na "$W_WARM" "$s" B; continue; fi
        drop_caches
        timed_or_na "$W_COLD" "$s" "$BIG_BYTES" B -- sh -c "cat '$(mnt "$s")/read/big.bin' > /dev/null"
        timed_or_na "$W_WARM" "$s" "$BIG_BYTES" B -- sh -c "cat '$(mnt "$s")/read/big.bin' > /dev/null" ;;
    esac
  done

  # 5. ls -l of LS_N objects: cold (fresh daemon, dropped caches) and warm (at once again)
  for s in "${ORDER[@]}"; do
    case "$s" in
      rclone-cli) timed_or_na "$W_LSC" "$s" "$LS_N" files -- \
        sh -c "'$RCLONE' --config '$S3_PEERS_DIR/rclone.conf' lsl 's3:$UPLOADFS_S3_BUCKET/ls' > /dev/null" ;;
      uploadfs-cli | boto3) ;;
      *)
        remount "$s"
        if [ "${MOUNTED[$s]}" != 1 ]; then na "$W_LSC" "$s" files; na "$W_LSW" "$s" files; continue; fi
        drop_caches
        timed_or_na "$W_LSC" "$s" "$LS_N" files -- sh -c "ls -l '$(mnt "$s")/ls' > /dev/null"
        timed_or_na "$W_LSW" "$s" "$LS_N" files -- sh -c "ls -l '$(mnt "$s")/ls' > /dev/null" ;;
    esac
  done
done

# ---- 6. daemon peak RSS with 16 writers, until all is stored -------------------------
head -c $((RSS_MB * 1024 * 1024)) /dev/urandom > "$WORK/rss.bin"
for s in $(order 1 "${SUBJECTS[@]}"); do
  remount "$s"
  pid=$(subject_pid "$s" || true)
  if [ "${MOUNTED[$s]}" != 1 ] || [ -z "$pid" ]; then na "$W_RSS" "$s" KiB; continue; fi
  d=$(mnt "$s")/bench/$s/rss
  mkdir -p "$d"
  reset_peak "$pid"
  writers=()
  rm -f "$WORK/ready"
  $S3TOOL wait-prefix --prefix "bench/$s/rss/" --count 16 --size $((RSS_MB * 1024 * 1024)) \
    --ready "$WORK/ready" --timeout $((120 + 16 * RSS_MB)) > "$WORK/seen" &
  waiter=$!
  for i in $(seq 16); do cp "$WORK/rss.bin" "$d/rss-$i.bin" & writers+=($!); done
  ok=1
  for w in "${writers[@]}"; do wait "$w" || ok=0; done
  wait "$waiter" || ok=0
  if [ "$ok" = 1 ]; then record "$W_RSS" s3 "$s" 0 "$(peak_kib "$pid")" KiB; else note "$s: 16 writers failed"; na "$W_RSS" "$s" KiB; fi
  rm -rf "$d" 2>/dev/null || true
  $S3TOOL delete-prefix "bench/$s/rss/" || true
  vacuum
done
rm -f "$WORK/rss.bin"
for s in "${SUBJECTS[@]}"; do unmount_subject "$s" || true; done

# ---- the table -----------------------------------------------------------------------
python3 scripts/bench/peers_table.py "$OUT"
if [ -s "$NOTES" ]; then echo; echo "notes:"; sort -u "$NOTES" | sed 's/^/  /'; fi
echo "samples: $OUT (removed with the work dir unless BENCH_OUT is set)" >&2
