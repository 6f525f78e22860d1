#!/usr/bin/env python3
"""Run Box's own Python SDK (box-sdk-gen) against `uploadfs serve`.

Usage: box_sdk.py BASE_URL TOKEN

Exercises a chunked upload (upload_big_file), a direct upload, a new version, a download,
folder creation and listing, and the SDK's handling of a 409 name conflict; exits non-zero
with a message on the first thing that does not hold.
"""

import hashlib
import io
import sys

from box_sdk_gen import (
    BaseUrls,
    BoxAPIError,
    BoxClient,
    BoxDeveloperTokenAuth,
    CreateFolderParent,
    UploadFileAttributes,
    UploadFileAttributesParentField,
    UploadFileVersionAttributes,
)


def pattern(n: int, seed: int) -> bytes:
    # Deterministic, incompressible enough, fast to build.
    block = hashlib.sha256(seed.to_bytes(8, "little")).digest() * 2048
    reps = n // len(block) + 1
    return (block * reps)[:n]


def check(cond: bool, what: str) -> None:
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)


def main() -> None:
    base, token = sys.argv[1].rstrip("/"), sys.argv[2]
    client = BoxClient(auth=BoxDeveloperTokenAuth(token=token)).with_custom_base_urls(
        BaseUrls(
            base_url=base + "/box",
            upload_url=base + "/box/upload",
            oauth_2_url=base + "/box/oauth2",
        )
    )

    folder = client.folders.create_folder("sdk", CreateFolderParent(id="0"))
    check(folder.name == "sdk" and folder.id.isdigit(), f"create_folder: {folder.id} {folder.name}")

    # Chunked upload of ~25 MB (parts of the server's part size, commit with digest).
    big = pattern(25 * 1000 * 1000 + 123, 1)
    f_big = client.chunked_uploads.upload_big_file(io.BytesIO(big), "big.bin", len(big), folder.id)
    check(f_big.size == len(big), f"big size {f_big.size}")
    check(f_big.sha_1 == hashlib.sha1(big).hexdigest(), "big sha1")
    check(f_big.parent.id == folder.id, "big parent")

    # Direct upload of a small file.
    small = pattern(54321, 2)
    files = client.uploads.upload_file(
        UploadFileAttributes(name="small.txt", parent=UploadFileAttributesParentField(id=folder.id)),
        io.BytesIO(small),
    )
    f_small = files.entries[0]
    check(f_small.size == len(small) and f_small.sha_1 == hashlib.sha1(small).hexdigest(), "small upload")

    # A second upload over the same name (other case) is a 409 naming the file.
    try:
        client.uploads.upload_file(
            UploadFileAttributes(name="SMALL.TXT", parent=UploadFileAttributesParentField(id=folder.id)),
            io.BytesIO(b"x"),
        )
        check(False, "conflicting upload accepted")
    except BoxAPIError as e:
        check(e.response_info.status_code == 409, f"conflict status {e.response_info.status_code}")
        check(e.response_info.code == "item_name_in_use", f"conflict code {e.response_info.code}")
        conflicts = e.response_info.context_info["conflicts"]
        check(conflicts["id"] == f_small.id, f"conflict names the file: {conflicts}")

    # A new version keeps the id.
    newer = pattern(1000, 3)
    v = client.uploads.upload_file_version(
        f_small.id, UploadFileVersionAttributes(name="small.txt"), io.BytesIO(newer)
    ).entries[0]
    check(v.id == f_small.id and v.sha_1 == hashlib.sha1(newer).hexdigest(), "new version")

    # Downloads follow the 302.
    got = client.downloads.download_file(f_big.id).read()
    check(got == big, f"big download ({len(got)} bytes)")
    got = client.downloads.download_file(f_small.id).read()
    check(got == newer, "small download")

    # Listing, with fields.
    items = client.folders.get_folder_items(folder.id, fields=["name", "size", "sha1"])
    listed = {e.name: e for e in items.entries}
    check(items.total_count == 2, f"total_count {items.total_count}")
    check(set(listed) == {"big.bin", "small.txt"}, f"listed {sorted(listed)}")
    check(listed["big.bin"].size == len(big), "listed size")
    root = client.folders.get_folder_items("0")
    check([e.name for e in root.entries] == ["sdk"], "root listing")

    print("box-sdk-gen interop: ok")


if __name__ == "__main__":
    main()
