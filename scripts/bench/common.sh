# shellcheck shell=bash
# Helpers shared by scripts/bench.sh and scripts/bench/peers.sh (sourced, not run).
# Samples go to $OUT as tab-separated rows: WORKLOAD TARGET SIDE MS AMOUNT UNIT, where MS
# is -1 for a measurement that could not be made (printed as n/a).

now_ms() { date +%s%3N; }
# record WORKLOAD KIND SIDE MS BYTES_OR_FILES UNIT
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$OUT"; }
# timed WORKLOAD KIND SIDE AMOUNT UNIT -- command...
timed() {
  local w=$1 k=$2 side=$3 amount=$4 unit=$5; shift 6
  local t0 t1
  t0=$(now_ms); "$@"; t1=$(now_ms)
  record "$w" "$k" "$side" $((t1 - t0)) "$amount" "$unit"
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# The pid of the uploadfs daemon serving the mount at DIR (the process in the foreground).
uploadfs_daemon_pid() {
  local p
  for p in $(pgrep -f "uploadfs .*mount .*$1"); do
    tr '\0' ' ' < "/proc/$p/cmdline" 2>/dev/null | grep -q -- "--foreground" && { echo "$p"; return; }
  done
}

# Peak resident memory of a process since the last reset (VmHWM; `5` to clear_refs resets it).
reset_peak() { echo 5 > "/proc/$1/clear_refs" 2>/dev/null || true; }
peak_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }

gen_tree() { # DIR N SIZE SEED — N files of SIZE bytes with distinct contents
  python3 - "$@" <<'EOF'
import os, sys, random
d, n, size, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
os.makedirs(d, exist_ok=True)
r = random.Random(seed)
for i in range(n):
    with open(os.path.join(d, f"s{seed}-f{i:05d}.bin"), "wb") as f:
        f.write(r.randbytes(size))
EOF
}
