"""The artifact bucket, read and written through boto3 (only where boto3 is: our image and the
backup image), and the tar stream in which `./mlflowctl` moves it through the engine."""

import json
import os
import sys
import tarfile

from jobs.backup.tools import copy_digest


def s3_client():
    import boto3

    # An empty MLFLOW_S3_ENDPOINT_URL means AWS S3 (boto3 refuses endpoint_url="").
    return boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)


def bucket_objects(s3, bucket: str):
    """(key, size, readable body) of every object; "directory" markers have no content."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                got = s3.get_object(Bucket=bucket, Key=obj["Key"])
                yield obj["Key"], got["ContentLength"], got["Body"]


def tar_objects(tar: tarfile.TarFile):
    """(key, size, readable body) of every file member of a streamed tar (the `dump` format)."""
    for member in tar:
        if member.isfile():
            yield member.name, member.size, tar.extractfile(member)


class Reader:
    """A member of a streamed tar is readable, not seekable: say so to boto3."""

    def __init__(self, f):
        self.f = f

    def read(self, n=-1):
        return self.f.read(n)


def bucket_command(op: str, bucket: str) -> int:
    """OP on BUCKET, run in our image (the mlflow container) for `./mlflowctl`: `state` prints the
    object count (0/1 looked at) or "none"; `create`; `dump` writes every object as a tar stream to
    stdout; `load` uploads every member of a tar stream from stdin and prints the count; `sums`
    prints {key: sha256} as JSON ({} when the bucket does not exist); `remove` empties and deletes it."""
    from botocore.exceptions import ClientError

    s3 = s3_client()
    try:
        if op == "state":
            print(s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0))
        elif op == "create":
            s3.create_bucket(Bucket=bucket)
        elif op == "dump":
            with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for key, size, body in bucket_objects(s3, bucket):
                    info = tarfile.TarInfo(key)
                    info.size, info.mode = size, 0o600
                    tar.addfile(info, body)
        elif op == "load":
            count = 0
            with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
                for key, _size, body in tar_objects(tar):
                    s3.upload_fileobj(Reader(body), bucket, key)
                    count += 1
            print(count)
        elif op in ("sums", "remove"):
            sums = {key: copy_digest(body) for key, _size, body in bucket_objects(s3, bucket)}
            if op == "remove":
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    for obj in page.get("Contents", []):
                        s3.delete_object(Bucket=bucket, Key=obj["Key"])
                s3.delete_bucket(Bucket=bucket)
            print(json.dumps(sums))
        else:
            raise SystemExit(f"unknown bucket operation {op}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("NoSuchBucket", "404"):
            raise
        print("none" if op == "state" else "{}")
    return 0
