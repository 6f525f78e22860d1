#!/usr/bin/env bash
# Benchmarks of uploadfs (release build, loopback only, ~10 minutes on 2 cores).
#
# For each target kind it starts `uploadfs serve` on a fresh data directory, mounts the
# kind, and runs every workload through the mount and through the direct client
# (`uploadfs put` / `get`) on the same server, alternating the two sides over several runs.
# It prints one table: median time, throughput, and the ratio mount/direct. The same run
# measures this machine's limits: loopback HTTP ingest of the server, plain disk write to
# the stage directory, the FUSE write ceiling of the daemon with uploads discarded (the
# `null` target), the local cycle of many small files (cp -r onto the disk, and into
# the null mount in both modes), and each target's rate of ranged reads with no mount
# (examples/read_rate.rs), the limit of cold random reads.
#
# With --peers it runs the S3 comparison instead: our mount of an S3 bucket side by side
# with rclone mount, s3fs, mountpoint-s3 and the direct clients, on one SeaweedFS cluster
# (scripts/bench/peers.sh says how).
#
# Knobs (environment): BENCH_RUNS (3), BENCH_BIG_MB (1024), BENCH_SMALL_N (1000),
# BENCH_LS_N (10000), BENCH_KINDS ("box cloudreve dyson"), BENCH_RSS_MB (256),
# BENCH_BW_LIMIT (125000000: the server's cap for the limited `cp` row, 0 skips the row),
# BENCH_SERVER_JOBS (16: uploads in flight for the server's own small-file rate),
# BENCH_OUT (a TSV of every sample). The same as options, for a reduced run:
#   --runs N  --size 64M (or 1G: the big file)  --files N (small files)
#   --ls-files N (the listed directory)  --rss-mb N (each of the 16 writers)  --peers
set -euo pipefail
cd "$(dirname "$0")/.."

PEERS=0
while [ $# -gt 0 ]; do
  case "$1" in
    --peers) PEERS=1 ;;
    --runs) BENCH_RUNS=$2; shift ;;
    --size)
      case "$2" in
        *[gG]) BENCH_BIG_MB=$((${2%[gG]} * 1024)) ;;
        *[mM]) BENCH_BIG_MB=${2%[mM]} ;;
        *) BENCH_BIG_MB=$2 ;;
      esac
      shift ;;
    --files) BENCH_SMALL_N=$2; shift ;;
    --ls-files) BENCH_LS_N=$2; shift ;;
    --rss-mb) BENCH_RSS_MB=$2; shift ;;
    *) echo "bench.sh: unknown option $1 (see the comment at the top)" >&2; exit 2 ;;
  esac
  shift
done

RUNS=${BENCH_RUNS:-3}
BIG_MB=${BENCH_BIG_MB:-1024}
SMALL_N=${BENCH_SMALL_N:-1000}
LS_N=${BENCH_LS_N:-10000}
KINDS=${BENCH_KINDS:-"box cloudreve dyson"}
RSS_MB=${BENCH_RSS_MB:-256}
BW_LIMIT=${BENCH_BW_LIMIT:-125000000}
SERVER_JOBS=${BENCH_SERVER_JOBS:-16}
TOKEN="bench-$RANDOM-$RANDOM"

if [ "$PEERS" = 1 ]; then
  export RUNS BIG_MB SMALL_N LS_N RSS_MB
  exec bash scripts/bench/peers.sh
fi

command -v fusermount3 >/dev/null || { echo "bench.sh: needs fuse3 (run scripts/test.sh first)" >&2; exit 1; }
command -v rsync >/dev/null || { echo "bench.sh: needs rsync (run scripts/test.sh first)" >&2; exit 1; }

cargo build --release --quiet --bin uploadfs --example read_rate
BIN=$PWD/target/release/uploadfs
# The target's ranged-read rate with no mount (examples/read_rate.rs).
READ_RATE=$PWD/target/release/examples/read_rate
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/uploadfs-bench.XXXXXX")
OUT=${BENCH_OUT:-$WORK/samples.tsv}
: > "$OUT"
MNT=$WORK/mnt
mkdir -p "$MNT"
SERVER_PID=""

cleanup() {
  mountpoint -q "$MNT" 2>/dev/null && { "$BIN" unmount --force "$MNT" >/dev/null 2>&1 || fusermount3 -uz "$MNT" || true; }
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

# shellcheck source=scripts/bench/common.sh
. scripts/bench/common.sh

start_server() { # [extra serve flags, e.g. --bandwidth BYTES_PER_S]
  rm -rf "$WORK/data"
  PORT=$(free_port)
  "$BIN" serve --listen "127.0.0.1:$PORT" --data "$WORK/data" --token "$TOKEN" \
    --fluxer-max-size $((2 * 1024 * 1024 * 1024)) "$@" >"$WORK/serve.log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 100); do
    curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/_uploadfs/state" >/dev/null && break
    sleep 0.1
  done
  BASE="http://127.0.0.1:$PORT"
  cat > "$WORK/config.toml" <<EOF
[targets.box]
kind = "box"
url = "$BASE/box/2.0"
upload_url = "$BASE/box/upload/2.0"
token = "$TOKEN"
[targets.cloudreve]
kind = "cloudreve"
url = "$BASE/cloudreve/api/v4"
token = "$TOKEN"
[targets.fluxer]
kind = "fluxer"
url = "$BASE/fluxer/v1"
token = "$TOKEN"
channel_id = "1000000000000000001"
[targets.virola]
kind = "virola"
url = "$BASE/virola/api/v1"
token = "$TOKEN"
room_id = 6
message_id = 1234567
[targets.dyson]
kind = "dyson"
url = "$BASE/dyson/api"
token = "$TOKEN"
[targets.null]
kind = "null"
EOF
  chmod 600 "$WORK/config.toml"
}

stop_server() {
  kill "$SERVER_PID" 2>/dev/null || true
  wait "$SERVER_PID" 2>/dev/null || true
  SERVER_PID=""
}

mount_kind() { # KIND [extra mount flags]
  local k=$1; shift
  rm -rf "$WORK/cache" "$WORK/state"
  "$BIN" mount "$k" "$MNT" --config "$WORK/config.toml" --cache-dir "$WORK/cache" \
    --state-dir "$WORK/state" --log-file "$WORK/mount-$k.log" "$@"
}
remount_kind() { # keep catalog and cache dirs: a cold block cache, same namespace
  local k=$1; shift
  "$BIN" mount "$k" "$MNT" --config "$WORK/config.toml" --cache-dir "$WORK/cache" \
    --state-dir "$WORK/state" --log-file "$WORK/mount-$k.log" "$@"
}
unmount() { "$BIN" unmount "$MNT"; }
# Requests the server has answered so far (its own counter, /_uploadfs/ included).
server_requests() {
  curl -sf -H "Authorization: Bearer $TOKEN" "$BASE/_uploadfs/state" |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["requests"])'
}
daemon_pid() { uploadfs_daemon_pid "$MNT"; }

echo "bench.sh: work dir $WORK, runs $RUNS, kinds: $KINDS" >&2
BIG=$WORK/big.bin
head -c $((BIG_MB * 1024 * 1024)) /dev/urandom > "$BIG"
BIG_BYTES=$((BIG_MB * 1024 * 1024))
# Every upload of the big file sends content the server has not seen: its first 16 bytes
# are stamped before each one. Dyson keeps one file per content and answers an upload of
# known content at once, which would flatter whichever side came second.
STAMPS=0
stamp_big() {
  STAMPS=$((STAMPS + 1))
  printf 'upload-%09d' "$STAMPS" | dd of="$BIG" bs=16 count=1 conv=notrunc status=none
}

# ---- machine limits ------------------------------------------------------------------
start_server
# Loopback HTTP ingest: 8 MiB chunks streamed with curl -T into a Fluxer chunked upload.
head -c $((8 * 1024 * 1024)) /dev/urandom > "$WORK/part.bin"
NPARTS=$((BIG_MB / 8))
SESSION=$(curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d "{\"filename\":\"ingest.bin\",\"file_size\":$((NPARTS * 8 * 1024 * 1024))}" \
  "$BASE/fluxer/v1/channels/1000000000000000001/chunked-uploads" | python3 -c 'import sys,json; print(json.load(sys.stdin)["upload_id"])')
t0=$(now_ms)
for i in $(seq 0 $((NPARTS - 1))); do
  curl -sf -o /dev/null -T "$WORK/part.bin" -H "Authorization: Bearer $TOKEN" \
    "$BASE/fluxer/v1/channels/1000000000000000001/chunked-uploads/$SESSION/chunks/$i"
done
record "limit: HTTP ingest (curl -T 8 MiB parts)" server - $(( $(now_ms) - t0 )) $((NPARTS * 8 * 1024 * 1024)) B
# Plain disk write of the big file's size into the stage directory's file system.
mkdir -p "$WORK/cache"
t0=$(now_ms); dd if=/dev/zero of="$WORK/cache/dd.bin" bs=1M count="$BIG_MB" conv=fsync status=none; \
  record "limit: disk write + fsync (stage dir)" disk - $(( $(now_ms) - t0 )) "$BIG_BYTES" B
rm -f "$WORK/cache/dd.bin"
# FUSE write ceiling: the daemon with the null target (uploads read from the stage, then dropped).
mount_kind null
timed "limit: FUSE ceiling (dd 1 MiB, null target)" null mount "$BIG_BYTES" B -- \
  dd if=/dev/zero of="$MNT/ceiling.bin" bs=1M count="$BIG_MB" status=none
# The same split in two: the stage write alone (1 MiB writes until the last one returns)
# and the close (the hasher's tail, then the null upload's read pass of the stage). In the
# default mode nothing is synced to disk on this path: the stage lives in the page cache.
python3 - "$MNT/split.bin" "$BIG_MB" > "$WORK/split.txt" <<'PY'
import os, sys, time
path, mb = sys.argv[1], int(sys.argv[2])
buf = bytes(1 << 20)
fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
t0 = time.monotonic()
for _ in range(mb):
    os.write(fd, buf)
t1 = time.monotonic()
os.close(fd)
t2 = time.monotonic()
print(int((t1 - t0) * 1000), int((t2 - t1) * 1000))
PY
read -r write_ms close_ms < "$WORK/split.txt"
record "limit: stage write only (1 MiB writes, null)" null mount "$write_ms" "$BIG_BYTES" B
record "limit: its close (hash tail, null read pass)" null mount "$close_ms" "$BIG_BYTES" B
# The local cycle of many small files, no network: `cp -r` onto the stage directory's own
# file system (cp's floor), then into the null mount in the default mode and in write-back
# mode (each file's FUSE requests, stage, catalog rows and, in write-back, the sync at
# close; the null upload only reads the stage). No mount can copy small files faster than
# its own local cycle, whatever the target.
for r in $(seq "$RUNS"); do
  gen_tree "$WORK/lc-$r" "$SMALL_N" 16384 $((700 + r))
  sync
  timed "limit: local cp -r ${SMALL_N}x16KiB (disk)" disk - "$SMALL_N" files -- cp -r "$WORK/lc-$r" "$WORK/cache/lc-$r"
  timed "limit: local cycle, cp -r ${SMALL_N}x16KiB (null)" null mount "$SMALL_N" files -- cp -r "$WORK/lc-$r" "$MNT/lc-$r"
  rm -rf "$WORK/cache/lc-$r"
done
unmount
mount_kind null --write-back
for r in $(seq "$RUNS"); do
  timed "limit: local cycle, write-back (null)" null mount "$SMALL_N" files -- cp -r "$WORK/lc-$r" "$MNT/wb-$r"
  rm -rf "$WORK/lc-$r"
done
unmount
stop_server

# A copy that announces the final size before writing (the mount's size hint).
cat > "$WORK/hinted_copy.py" <<'EOF'
import os, sys
src, dst = sys.argv[1], sys.argv[2]
size = os.path.getsize(src)
with open(src, "rb") as i, open(dst, "wb") as o:
    os.ftruncate(o.fileno(), size)
    while chunk := i.read(1 << 20):
        o.write(chunk)
EOF

# ---- per target kind -----------------------------------------------------------------
for K in $KINDS; do
  echo "bench.sh: $K" >&2
  start_server
  mount_kind "$K"
  for r in $(seq "$RUNS"); do
    # 1. cp of one big file, until cp returns (commit included) vs uploadfs put.
    stamp_big
    timed "cp ${BIG_MB} MiB" "$K" mount "$BIG_BYTES" B -- cp "$BIG" "$MNT/big-$r.bin"
    # Only big-1 is read later: the others go at once, so the server's disk holds one copy.
    [ "$r" = 1 ] || rm -f "$MNT/big-$r.bin"
    # The direct side uploads over the same name each run (a new version replaces the old).
    stamp_big
    timed "cp ${BIG_MB} MiB" "$K" direct "$BIG_BYTES" B -- "$BIN" put -q "$BIG" "$K:bigd.bin" --config "$WORK/config.toml"
    # 1a. the same file by a writer that announces its size first (ftruncate to the
    # final size, then 1 MiB writes in order, like a download manager): the upload runs
    # while the file is written. Its direct side is the `put` just measured.
    stamp_big
    timed "cp ${BIG_MB} MiB, size announced first" "$K" mount "$BIG_BYTES" B -- python3 "$WORK/hinted_copy.py" "$BIG" "$MNT/pre-$r.bin"
    rm -f "$MNT/pre-$r.bin"
    grep "^cp ${BIG_MB} MiB	$K	direct	" "$OUT" | tail -n 1 | sed "s/^cp ${BIG_MB} MiB	/cp ${BIG_MB} MiB, size announced first	/" >> "$OUT"
    # 2. many small files: cp -r and rsync -a vs put -r, fresh contents each run.
    gen_tree "$WORK/small-$r" "$SMALL_N" 16384 "$r"
    timed "cp -r ${SMALL_N}x16KiB" "$K" mount "$SMALL_N" files -- cp -r "$WORK/small-$r" "$MNT/small-$r"
    gen_tree "$WORK/rs-$r" "$SMALL_N" 16384 $((100 + r))
    timed "rsync -a ${SMALL_N}x16KiB" "$K" mount "$SMALL_N" files -- rsync -a "$WORK/rs-$r/" "$MNT/rs-$r/"
    gen_tree "$WORK/pd-$r" "$SMALL_N" 16384 $((200 + r))
    timed "cp -r ${SMALL_N}x16KiB" "$K" direct "$SMALL_N" files -- "$BIN" put -q -r "$WORK/pd-$r" "$K" --config "$WORK/config.toml"
    # Fresh contents for the direct side too (Dyson answers known contents at once).
    gen_tree "$WORK/rd-$r" "$SMALL_N" 16384 $((700 + r))
    timed "rsync -a ${SMALL_N}x16KiB" "$K" direct "$SMALL_N" files -- "$BIN" put -q -r -j 8 "$WORK/rd-$r" "$K" --config "$WORK/config.toml"
    # 2a. the server's own small-file rate: one upload cycle per file with no mount in
    # the way, SERVER_JOBS files at a time (more than the 2 cores can serve, so the server
    # is the limit), in files/s and in requests/s (the server's request counter; the
    # second read of the counter counts itself, hence the 1 taken off).
    gen_tree "$WORK/sv-$r" "$SMALL_N" 16384 $((400 + r))
    req0=$(server_requests)
    t0=$(now_ms)
    "$BIN" put -q -r -j "$SERVER_JOBS" "$WORK/sv-$r" "$K" --config "$WORK/config.toml"
    ms=$(( $(now_ms) - t0 ))
    req1=$(server_requests)
    record "limit: server small-file rate (put -r -j $SERVER_JOBS)" "$K" direct "$ms" "$SMALL_N" files
    record "limit: server small-file rate, requests" "$K" direct "$ms" $((req1 - req0 - 1)) req
    # 2b. the floor of a serial writer: one upload at a time, no mount (`cp` closes one
    # file after the other and close() returns each upload's outcome, so the mount's
    # default mode can be no faster than this: the request's round trip and the
    # server's own time per file, in sequence).
    gen_tree "$WORK/s1-$r" "$SMALL_N" 16384 $((500 + r))
    timed "limit: one upload at a time (put -r -j 1)" "$K" direct "$SMALL_N" files -- "$BIN" put -q -r -j 1 "$WORK/s1-$r" "$K" --config "$WORK/config.toml"
    rm -rf "$WORK/small-$r" "$WORK/rs-$r" "$WORK/rd-$r" "$WORK/pd-$r" "$WORK/sv-$r" "$WORK/s1-$r"
  done
  unmount
  # 3. sequential read of a committed big file: cold (fresh daemon, dropped page cache) and warm.
  for r in $(seq "$RUNS"); do
    remount_kind "$K"
    drop_caches
    timed "read ${BIG_MB} MiB cold" "$K" mount "$BIG_BYTES" B -- cat "$MNT/big-1.bin" > /dev/null
    timed "read ${BIG_MB} MiB warm" "$K" mount "$BIG_BYTES" B -- cat "$MNT/big-1.bin" > /dev/null
    # 4. 4 KiB random reads (IOPS) over the same file.
    if command -v fio >/dev/null && [ "$r" = 1 ]; then
      iops=$(fio --name=rr --filename="$MNT/big-1.bin" --rw=randread --bs=4k --ioengine=psync \
        --size="${BIG_MB}M" --runtime=10 --time_based --readonly --output-format=json 2>/dev/null |
        python3 -c 'import sys,json; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
      record "4 KiB random read (fio, IOPS)" "$K" mount 10000 "$((iops * 10))" reads
    fi
    unmount
    # 4a. the same with 4 parallel readers on a cold file (fresh daemon, no page cache).
    if command -v fio >/dev/null && [ "$r" = 1 ]; then
      remount_kind "$K"
      drop_caches
      iops=$(fio --name=rr4 --filename="$MNT/big-1.bin" --rw=randread --bs=4k --ioengine=psync \
        --size="${BIG_MB}M" --numjobs=4 --group_reporting --runtime=10 --time_based --readonly \
        --output-format=json 2>/dev/null |
        python3 -c 'import sys,json; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))')
      record "4 KiB random read, 4 readers, cold (fio)" "$K" mount 10000 "$((iops * 10))" reads
      unmount
      # 4b. its limit: the same file's ranges of one cache block (32 KiB) read through the
      # same target code with no mount, 4 in flight, for as long; every block the mount's
      # cache misses costs one such request.
      reads=$("$READ_RATE" "$WORK/config.toml" "$K:big-1.bin" 32768 4 10)
      record "limit: ranged reads of 32 KiB, 4 in flight" "$K" direct 10000 "$reads" req
    fi
    drop_caches
    timed "read ${BIG_MB} MiB cold" "$K" direct "$BIG_BYTES" B -- "$BIN" get -q "$K:big-1.bin" /dev/null --config "$WORK/config.toml"
  done
  # 6. daemon peak RSS during 1 and 16 parallel writes of RSS_MB each.
  head -c $((RSS_MB * 1024 * 1024)) /dev/urandom > "$WORK/rss.bin"
  remount_kind "$K"
  pid=$(daemon_pid)
  reset_peak "$pid"
  cp "$WORK/rss.bin" "$MNT/rss-one.bin"
  record "daemon peak RSS, 1 writer of ${RSS_MB} MiB" "$K" mount 0 "$(peak_kib "$pid")" KiB
  reset_peak "$pid"
  writers=()
  for i in $(seq 16); do cp "$WORK/rss.bin" "$MNT/rss-$i.bin" & writers+=($!); done
  wait "${writers[@]}"
  record "daemon peak RSS, 16 writers of ${RSS_MB} MiB" "$K" mount 0 "$(peak_kib "$pid")" KiB
  rm -f "$MNT"/rss-*.bin
  unmount
  rm -f "$WORK/rss.bin"
  # 1b. write-back: cp returns once staged; the time runs until unmount has drained.
  # Only where --write-back is implemented (an older daemon mounts with a warning and
  # waits for each upload anyway, which would be measured under the wrong name).
  for r in $(seq "$RUNS"); do
    wb_out=$(remount_kind "$K" --write-back 2>&1) || break
    if grep -q "not implemented" <<<"$wb_out"; then
      unmount
      break
    fi
    stamp_big
    timed "cp ${BIG_MB} MiB write-back (to drained)" "$K" mount "$BIG_BYTES" B -- sh -c "cp '$BIG' '$MNT/wb-$r.bin' && '$BIN' unmount '$MNT'"
    gen_tree "$WORK/wb-$r" "$SMALL_N" 16384 $((300 + r))
    remount_kind "$K" --write-back
    rm -f "$MNT/wb-$r.bin"
    timed "cp -r ${SMALL_N}x16KiB write-back (to drained)" "$K" mount "$SMALL_N" files -- sh -c "cp -r '$WORK/wb-$r' '$MNT/wb-$r' && '$BIN' unmount '$MNT'"
    # The direct side of both: the same uploads by `uploadfs put` (fresh contents).
    stamp_big
    timed "cp ${BIG_MB} MiB write-back (to drained)" "$K" direct "$BIG_BYTES" B -- "$BIN" put -q "$BIG" "$K:wbd.bin" --config "$WORK/config.toml"
    gen_tree "$WORK/wbd-$r" "$SMALL_N" 16384 $((600 + r))
    timed "cp -r ${SMALL_N}x16KiB write-back (to drained)" "$K" direct "$SMALL_N" files -- "$BIN" put -q -r "$WORK/wbd-$r" "$K" --config "$WORK/config.toml"
    rm -rf "$WORK/wb-$r" "$WORK/wbd-$r"
  done
  stop_server
done

# 7. plain cp of the big file into box with the server held to BW_LIMIT bytes/s (1 Gbit/s
# by default: a realistic link), against uploadfs put through the same limit.
if [[ " $KINDS " == *" box "* ]] && [ "$BW_LIMIT" != 0 ]; then
  echo "bench.sh: box, server at $BW_LIMIT B/s" >&2
  start_server --bandwidth "$BW_LIMIT"
  mount_kind box
  for r in $(seq "$RUNS"); do
    stamp_big
    timed "cp ${BIG_MB} MiB, server at $((BW_LIMIT * 8 / 1000000)) Mbit/s" box mount "$BIG_BYTES" B -- cp "$BIG" "$MNT/bw-$r.bin"
    rm -f "$MNT/bw-$r.bin"
    stamp_big
    timed "cp ${BIG_MB} MiB, server at $((BW_LIMIT * 8 / 1000000)) Mbit/s" box direct "$BIG_BYTES" B -- "$BIN" put -q "$BIG" "box:bwd.bin" --config "$WORK/config.toml"
  done
  unmount
  stop_server
fi

# 5. ls -l of a directory of LS_N files (box: native folders), cold and warm.
start_server
mkdir -p "$WORK/ls"
python3 - "$WORK/ls" "$LS_N" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open(os.path.join(d, f"entry-{i:05d}.txt"), "w") as f:
        f.write(str(i))
EOF
"$BIN" put -q -r -j 16 "$WORK/ls" box:ls --config "$WORK/config.toml"
for r in $(seq "$RUNS"); do
  mount_kind box
  timed "ls -l ${LS_N} files cold" box mount "$LS_N" files -- sh -c "ls -l '$MNT/ls' > /dev/null"
  timed "ls -l ${LS_N} files warm" box mount "$LS_N" files -- sh -c "ls -l '$MNT/ls' > /dev/null"
  unmount
done
stop_server

# ---- the table -----------------------------------------------------------------------
python3 - "$OUT" <<'EOF'
import sys, statistics, collections
rows = [l.rstrip("\n").split("\t") for l in open(sys.argv[1]) if l.strip()]
groups = collections.OrderedDict()
for w, k, side, ms, amount, unit in rows:
    groups.setdefault((w, k), {}).setdefault(side, []).append((int(ms), int(amount), unit))
def rate(ms, amount, unit):
    if unit == "B":
        return f"{amount / 1e6 / (ms / 1000):8.1f} MB/s" if ms else "-"
    if unit == "files":
        return f"{amount / (ms / 1000):8.0f} files/s" if ms else "-"
    if unit == "reads":
        return f"{amount / (ms / 1000):8.0f} IOPS"
    if unit == "req":
        return f"{amount / (ms / 1000):8.0f} req/s" if ms else "-"
    return f"{amount / 1024:8.1f} MiB"
print(f"{'workload':46} {'target':10} {'side':7} {'median':>9} {'rate':>16} {'mount/direct':>13}")
for (w, k), sides in groups.items():
    med = {}
    for side, samples in sides.items():
        ms = statistics.median(s[0] for s in samples)
        amount, unit = samples[0][1], samples[0][2]
        med[side] = ms
        shown = f"{ms / 1000:8.2f}s" if unit != "KiB" else "        -"
        if unit == "KiB":
            amount = max(s[1] for s in samples)
        ratio = ""
        if side == "mount" and "direct" in sides:
            d = statistics.median(s[0] for s in sides["direct"])
            ratio = f"{ms / d:12.2f}x" if d else ""
        print(f"{w:46} {k:10} {side:7} {shown:>9} {rate(ms, amount, unit):>16} {ratio:>13}")
EOF
echo "samples: $OUT (removed with the work dir unless BENCH_OUT is set)" >&2
