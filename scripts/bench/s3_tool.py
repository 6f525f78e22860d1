#!/usr/bin/env python3
"""The benchmark's own view of the S3 server: wait for results, upload, download, delete.

Used by `scripts/bench/peers.sh`, through boto3 (an independent client, not one of the
subjects measured):

  s3_tool.py wait-key --ready F --key KEY --size N
        until one object of N bytes is there (HeadObject every 20 ms)
  s3_tool.py wait-prefix --ready F --prefix P --count N --size S
        until N objects of S bytes are below P (ListObjectsV2, every page, every 100 ms;
        temporary names starting with "." and directory markers do not count)
  s3_tool.py upload FILE KEY      boto3's managed upload (8 MiB parts, 10 at once);
                                  prints its time in ms: the server's own ingest
  s3_tool.py download KEY         the same for a download into nothing
  s3_tool.py delete-prefix P      delete every object below P

A copy is timed "until stored" because a mount may return from `cp` long before its
upload ends (rclone's write-back): the waiter is started before the copy, writes the file
--ready once its client is set up (boto3's import takes ~0.3 s, which must not be timed),
and prints the wall-clock time in ms since the epoch at which it first saw the result
complete (the clock of `date +%s%3N`). It exits 1, printing nothing, after --timeout.

The endpoint and keys come from UPLOADFS_S3_* (`scripts/seaweedfs.sh start`).
"""

import argparse
import os
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config
from botocore.exceptions import ClientError


def client():
    return boto3.client(
        "s3",
        endpoint_url=os.environ["UPLOADFS_S3_ENDPOINT"],
        aws_access_key_id=os.environ["UPLOADFS_S3_ACCESS_KEY"],
        aws_secret_access_key=os.environ["UPLOADFS_S3_SECRET_KEY"],
        region_name=os.environ.get("UPLOADFS_S3_REGION", "us-east-1"),
        config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}),
    )


def objects(s3, bucket, prefix):
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        yield from page.get("Contents", [])


def key_done(s3, bucket, key, size):
    try:
        return s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == size
    except ClientError:
        return False


def prefix_done(s3, bucket, prefix, count, size):
    n = 0
    for o in objects(s3, bucket, prefix):
        name = o["Key"].rsplit("/", 1)[-1]
        if o["Size"] == size and name and not name.startswith("."):
            n += 1
    return n >= count


class Null:
    def write(self, b):
        return len(b)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["wait-key", "wait-prefix", "upload", "download", "delete-prefix"])
    ap.add_argument("args", nargs="*")
    ap.add_argument("--ready")
    ap.add_argument("--key")
    ap.add_argument("--prefix")
    ap.add_argument("--count", type=int, default=1)
    ap.add_argument("--size", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=600)
    a = ap.parse_args()
    s3 = client()
    bucket = os.environ["UPLOADFS_S3_BUCKET"]

    if a.cmd == "upload":
        t0 = time.time()
        s3.upload_file(a.args[0], bucket, a.args[1], Config=TransferConfig())
        print(int((time.time() - t0) * 1000))
        return 0
    if a.cmd == "download":
        t0 = time.time()
        s3.download_fileobj(bucket, a.args[0], Null(), Config=TransferConfig())
        print(int((time.time() - t0) * 1000))
        return 0
    if a.cmd == "delete-prefix":
        keys = [{"Key": o["Key"]} for o in objects(s3, bucket, a.args[0])]
        for i in range(0, len(keys), 1000):
            s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i : i + 1000], "Quiet": True})
        return 0

    if a.ready:
        open(a.ready, "w").close()
    # Polling costs the server little next to the copy it watches; the figures are late
    # by at most one interval.
    interval = 0.02 if a.cmd == "wait-key" else 0.1
    deadline = time.time() + a.timeout
    while time.time() < deadline:
        if a.cmd == "wait-key":
            ok = key_done(s3, bucket, a.key, a.size)
        else:
            ok = prefix_done(s3, bucket, a.prefix, a.count, a.size)
        if ok:
            print(int(time.time() * 1000))
            return 0
        time.sleep(interval)
    return 1


if __name__ == "__main__":
    sys.exit(main())
