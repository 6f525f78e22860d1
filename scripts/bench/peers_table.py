#!/usr/bin/env python3
"""The table of `scripts/bench.sh --peers`, from its samples (TSV rows: WORKLOAD TARGET
SUBJECT MS AMOUNT UNIT; MS -1 = could not be measured).

Per workload: each subject's median time and rate (memory rows: the highest peak), then
our mount against the best peer mount, and `uploadfs put/get` against rclone's own client.
A ratio above 1 means ours is better: the best peer's time (or peak RSS) divided by ours.
"""

import collections
import statistics
import sys

MOUNT = "uploadfs"
PEER_MOUNTS = ["rclone-writes", "rclone-off", "s3fs", "mountpoint"]
LABELS = {
    "uploadfs": "uploadfs mount",
    "rclone-writes": "rclone mount, cache writes",
    "rclone-off": "rclone mount, cache off",
    "s3fs": "s3fs",
    "mountpoint": "mountpoint-s3",
    "uploadfs-cli": "uploadfs put/get",
    "rclone-cli": "rclone copyto/copy/cat/lsl",
    "boto3": "boto3 (the server's own rate)",
}
ORDER = [MOUNT] + PEER_MOUNTS + ["uploadfs-cli", "rclone-cli", "boto3"]


def main(path):
    groups = collections.OrderedDict()
    for line in open(path):
        if not line.strip():
            continue
        w, _target, side, ms, amount, unit = line.rstrip("\n").split("\t")
        groups.setdefault(w, {}).setdefault(side, []).append((int(ms), int(amount), unit))

    def figure(samples):
        """(value to compare, lower is better; shown time; shown rate) or None for n/a."""
        ok = [s for s in samples if s[0] >= 0]
        if not ok:
            return None
        unit = ok[0][2]
        if unit == "KiB":
            kib = max(s[1] for s in ok)
            return kib, "", f"{kib / 1024:9.1f} MiB"
        ms = statistics.median(s[0] for s in ok)
        amount = ok[0][1]
        if unit == "B":
            rate = f"{amount / 2**20 / (ms / 1000):9.1f} MiB/s" if ms else "-"
        else:
            rate = f"{amount / (ms / 1000):9.0f} files/s" if ms else "-"
        return ms, f"{ms / 1000:8.2f}s", rate

    def ratio(ours, others):
        best = [(f[0], s) for s, f in others if f is not None]
        if ours is None or not best:
            return "n/a"
        b, who = min(best)
        return f"{b / ours[0]:.2f}x (best: {LABELS[who]})" if ours[0] else "-"

    print("workload / subject                          median           rate    (n = samples)")
    for w, sides in groups.items():
        print(w)
        figs = {}
        for s in ORDER:
            if s not in sides:
                continue
            f = figure(sides[s])
            figs[s] = f
            n = sum(1 for x in sides[s] if x[0] >= 0)
            if f is None:
                print(f"  {LABELS[s]:40} {'n/a':>8}")
            else:
                print(f"  {LABELS[s]:40} {f[1]:>8} {f[2]:>16}    (n = {n})")
        if w.endswith("until the command returns"):
            continue
        peers = [(s, figs[s]) for s in PEER_MOUNTS if s in figs]
        if MOUNT in figs and peers:
            print(f"  => uploadfs mount vs best peer mount: {ratio(figs[MOUNT], peers)}")
        if "uploadfs-cli" in figs and "rclone-cli" in figs:
            print(f"  => uploadfs put/get vs rclone's client: {ratio(figs['uploadfs-cli'], [('rclone-cli', figs['rclone-cli'])])}")


if __name__ == "__main__":
    main(sys.argv[1])
