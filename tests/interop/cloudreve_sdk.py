"""Drive `uploadfs serve` with the vendor's Python SDK (PyPI `cloudreve`, CloudreveV4).

Environment: CLOUDREVE_BASE (the server root + "/cloudreve"), CLOUDREVE_TOKEN, WORKDIR.
Every step checks what it got; any failure raises and exits non-zero. On success the
script leaves `cloudreve://my/sdk/keep.bin` (contents of WORKDIR/keep.bin) for the Rust
side to verify through introspection, and prints OK.
"""

import os
import sys

from cloudreve import CloudreveV4

base = os.environ["CLOUDREVE_BASE"]
token = os.environ["CLOUDREVE_TOKEN"]
work = os.environ["WORKDIR"]


def check(cond, what):
    if not cond:
        raise AssertionError(what)


def pattern(n, seed):
    x = (seed * 0x9E3779B97F4A7C15 | 1) & 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while len(out) < n:
        x ^= (x << 13) & 0xFFFFFFFFFFFFFFFF
        x ^= x >> 7
        x ^= (x << 17) & 0xFFFFFFFFFFFFFFFF
        out += x.to_bytes(8, "little")
    return bytes(out[:n])


# Token given as a header, as a user with an access token would.
c = CloudreveV4(base_url=base, headers={"Authorization": "Bearer " + token})

# Login with email/password also works (the password is the server token).
c2 = CloudreveV4(base_url=base)
c2.login("sdk@example.com", token)
check(c2.user["email"] == "sdk@example.com", "login user")
check(c2.list("/")["parent"]["path"] == "cloudreve://my", "list after login")

c.create_folder("/sdk")

# A multi-chunk upload (the test server uses 1 MiB chunks) and a one-chunk upload.
big = pattern(2 * 1024 * 1024 + 4321, 11)
small = b"hello from the vendor sdk\n"
with open(os.path.join(work, "data.bin"), "wb") as f:
    f.write(big)
with open(os.path.join(work, "small.txt"), "wb") as f:
    f.write(small)
c.upload(os.path.join(work, "data.bin"), "/sdk/data.bin")
c.upload(os.path.join(work, "small.txt"), "/sdk/small.txt")

listing = c.list("/sdk")
by_name = {f["name"]: f for f in listing["files"]}
check(set(by_name) == {"data.bin", "small.txt"}, "listing names: %r" % sorted(by_name))
check(by_name["data.bin"]["size"] == len(big), "listed size")
check(by_name["data.bin"]["type"] == 0, "listed type")
check(listing["storage_policy"]["type"] == "local", "storage policy")

info = c.get_info("/sdk/data.bin")
check(info["size"] == len(big), "info size")
check(info["path"] == "cloudreve://my/sdk/data.bin", "info path")

# Download URL + download, byte-identical.
url = c.get_download_url("cloudreve://my/sdk/data.bin")
check(url.startswith("http"), "absolute download url")
out = os.path.join(work, "down.bin")
c.download("/sdk/data.bin", out)
with open(out, "rb") as f:
    check(f.read() == big, "downloaded bytes")
c.download("/sdk/small.txt", out)
with open(out, "rb") as f:
    check(f.read() == small, "downloaded small bytes")

# Small-file content update, rename, move.
c.update_file_content("/sdk/small.txt", b"changed")
c.download("/sdk/small.txt", out)
with open(out, "rb") as f:
    check(f.read() == b"changed", "updated content")
c.rename("/sdk/small.txt", "renamed.txt")
c.create_folder("/sdk/inner")
c.move("/sdk/renamed.txt", "/sdk/inner")
check([f["name"] for f in c.list("/sdk/inner")["files"]] == ["renamed.txt"], "moved")

# Errors surface as the SDK's exceptions with the envelope code.
try:
    c.get_info("/sdk/missing.bin")
    raise AssertionError("info of a missing file succeeded")
except AssertionError:
    raise
except Exception as e:  # the SDK raises Exception("code: msg")
    check(str(e).startswith("40016"), "missing file error: %s" % e)

# Delete, then the folder is empty but for what we keep.
c.delete(["/sdk/data.bin", "/sdk/inner"])
keep = pattern(1000, 12)
with open(os.path.join(work, "keep.bin"), "wb") as f:
    f.write(keep)
c.upload(os.path.join(work, "keep.bin"), "/sdk/keep.bin")
names = sorted(f["name"] for f in c.list("/sdk")["files"])
check(names == ["keep.bin"], "after delete: %r" % names)

print("OK")
sys.exit(0)
