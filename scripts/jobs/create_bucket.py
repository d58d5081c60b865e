"""One-shot: create the artifact bucket on the `local` profile's S3-compatible store (idempotent)."""

import os
import sys

import boto3
from botocore.exceptions import ClientError


def ensure_bucket(s3, bucket: str) -> bool:
    """Create `bucket` unless it exists; True when it was created."""
    try:
        s3.head_bucket(Bucket=bucket)
        return False
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("404", "NoSuchBucket"):
            raise
    s3.create_bucket(Bucket=bucket)
    return True


def main() -> int:
    missing = [
        k
        for k in ("MLFLOW_ARTIFACT_BUCKET", "MLFLOW_S3_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
        if not os.environ.get(k)
    ]
    if missing:
        print(
            f"create-bucket: the local profile's store needs {', '.join(missing)} in .env "
            "(`./mlflowctl bootstrap` fills the keys when MLFLOW_S3_ENDPOINT_URL is set)",
            file=sys.stderr,
        )
        return 2
    bucket = os.environ["MLFLOW_ARTIFACT_BUCKET"]
    s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
    print(f"bucket {bucket}: {'created' if ensure_bucket(s3, bucket) else 'exists'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
