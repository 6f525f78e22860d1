#!/usr/bin/env bash
# Ingest throughput of `uploadfs serve` for one Box upload session of SIZE_MB (default
# 1024 MiB), parts sent with `curl -T` (streamed, as a real client would) one after the
# other, then the commit. Prints MB/s for the parts alone and including the commit (which
# assembles and hashes the file). Release build, loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${1:-1024}
cargo build --release --quiet
BIN=$PWD/target/release/uploadfs
WORK=$(mktemp -d "${TMPDIR:-/var/tmp}/uploadfs-ingest.XXXXXX")
PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
TOKEN=ingest-token
"$BIN" serve --listen "127.0.0.1:$PORT" --data "$WORK/data" --token "$TOKEN" >"$WORK/serve.log" 2>&1 &
PID=$!
trap 'kill $PID 2>/dev/null; wait $PID 2>/dev/null; rm -rf "$WORK"' EXIT
U="http://127.0.0.1:$PORT/box/upload/2.0"
for _ in $(seq 50); do curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$PORT/box/2.0/folders/0" && break; sleep 0.1; done
TOTAL=$((SIZE_MB * 1024 * 1024))
SESSION=$(curl -sf -X POST -H "Authorization: Bearer $TOKEN" -H 'Content-Type: application/json' \
  -d "{\"folder_id\":\"0\",\"file_size\":$TOTAL,\"file_name\":\"ingest.bin\"}" "$U/files/upload_sessions")
read -r SID PART < <(python3 -c 'import sys,json; d=json.loads(sys.argv[1]); print(d["id"], d["part_size"])' "$SESSION")
head -c "$PART" /dev/urandom > "$WORK/part.bin"
NPARTS=$(( (TOTAL + PART - 1) / PART ))
# Every part carries the same bytes (the last one a prefix), so the digests are computed once.
read -r PART_DIGEST WHOLE_DIGEST LAST_DIGEST LAST_LEN < <(python3 - "$WORK/part.bin" "$TOTAL" <<'PY'
import sys, hashlib, base64
p = open(sys.argv[1], "rb").read(); total = int(sys.argv[2]); n = -(-total // len(p))
last = total - (n - 1) * len(p)
whole = hashlib.sha1()
for _ in range(n - 1): whole.update(p)
whole.update(p[:last])
b = lambda h: base64.b64encode(h.digest()).decode()
print(b(hashlib.sha1(p)), b(whole), b(hashlib.sha1(p[:last])), last)
PY
)
head -c "$LAST_LEN" "$WORK/part.bin" > "$WORK/last.bin"
t0=$(date +%s%3N)
for i in $(seq 0 $((NPARTS - 1))); do
  lo=$((i * PART)); file="$WORK/part.bin"; dig=$PART_DIGEST; len=$PART
  if [ "$i" = $((NPARTS - 1)) ]; then file="$WORK/last.bin"; dig=$LAST_DIGEST; len=$LAST_LEN; fi
  curl -sf -o "$WORK/answer-$i.json" -T "$file" -H "Authorization: Bearer $TOKEN" -H "Digest: sha=$dig" \
    -H "Content-Range: bytes $lo-$((lo + len - 1))/$TOTAL" -H 'Content-Type: application/octet-stream' \
    "$U/files/upload_sessions/$SID"
done
t1=$(date +%s%3N)
python3 - "$WORK" "$NPARTS" > "$WORK/commit.json" <<'PY'
import sys, json
work, n = sys.argv[1], int(sys.argv[2])
print(json.dumps({"parts": [json.load(open(f"{work}/answer-{i}.json"))["part"] for i in range(n)]}))
PY
t1b=$(date +%s%3N)
curl -sf -o /dev/null -X POST -H "Authorization: Bearer $TOKEN" -H "Digest: sha=$WHOLE_DIGEST" \
  -H 'Content-Type: application/json' --data-binary "@$WORK/commit.json" "$U/files/upload_sessions/$SID/commit"
t2=$(( $(date +%s%3N) - (t1b - t1) ))
python3 - "$TOTAL" $((t1 - t0)) $((t2 - t0)) <<'PY'
import sys
total, parts_ms, all_ms = map(int, sys.argv[1:])
print(f"Box session of {total/2**20:.0f} MiB: parts {total/1e6/(parts_ms/1000):.0f} MB/s ({parts_ms} ms), "
      f"with commit {total/1e6/(all_ms/1000):.0f} MB/s ({all_ms} ms)")
PY
