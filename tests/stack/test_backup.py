"""`mlflowctl backup` of the live stack, then `mlflowctl restore` into SCRATCH databases and a SCRATCH
bucket (never the live ones): rows, users and artifact bytes come back; non-empty targets are refused
without --force. The scratch targets are dropped at the end, also on failure.

The databases and the bucket are on the engine's internal network: the test reads them where they
are, with psql in the postgres container and boto3 in our image (scripts/ctl/stackexec.py).
"""

import json
import os
import stat
import subprocess
import time

import pytest

from ctl import stackexec
from jobs.backup.format import COUNTS
from tests.conftest import ROOT

# In our image: BUCKET [delete] -> {key: sha256} of every object (then empties and removes the
# bucket when asked); {} when the bucket does not exist.
BUCKET_CODE = r"""
import hashlib, json, os, sys
import boto3
from botocore.exceptions import ClientError
bucket, delete = sys.argv[1], sys.argv[2:] == ["delete"]
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
out = {}
try:
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for o in page.get("Contents", []):
            out[o["Key"]] = hashlib.sha256(s3.get_object(Bucket=bucket, Key=o["Key"])["Body"].read()).hexdigest()
            if delete:
                s3.delete_object(Bucket=bucket, Key=o["Key"])
    if delete:
        s3.delete_bucket(Bucket=bucket)
except ClientError as exc:
    if exc.response["Error"]["Code"] not in ("NoSuchBucket", "404"):
        raise
print(json.dumps(out))
"""


def mlflowctl(*args, timeout=600):
    return subprocess.run([str(ROOT / "mlflowctl"), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def scratch(stack):
    """Names for scratch targets; whatever restore created under them is removed afterwards."""
    tag = f"{os.getpid()}_{time.time_ns()}"
    names = {
        "tracking": f"mlflow_restore_{tag}",
        "auth": f"mlflow_auth_restore_{tag}",
        "oidc": f"mlflow_oidc_restore_{tag}",
        "bucket": f"mlflow-restore-{tag.replace('_', '-')}",
    }
    yield names
    for db in (names["tracking"], names["auth"], names["oidc"]):
        stackexec.psql('DROP DATABASE IF EXISTS :"db" WITH (FORCE)', "postgres", {"db": db})
    bucket_objects(names["bucket"], delete=True)


def bucket_objects(bucket: str, delete: bool = False) -> dict:
    """Key -> sha256 of every object in BUCKET, read inside the engine's network."""
    return json.loads(stackexec.python(BUCKET_CODE, bucket, *(["delete"] if delete else []), timeout=300).stdout)


def query(db, text, **variables):
    """Rows of TEXT in DB (psql in the postgres container; :'name' interpolates a variable)."""
    return stackexec.psql(text, db, variables)


def sha256_of(data: bytes) -> str:
    import hashlib

    return hashlib.sha256(data).hexdigest()


def test_backup_and_restore_round_trip(mlflow_admin, stack, stack_env, unique, scratch, tmp_path):
    import mlflow
    from mlflow.server import get_app_client

    # Known data in the live stack: a run with metrics and an artifact, and a user.
    exp_id = mlflow_admin.create_experiment(f"backup/{unique}")
    artifact = tmp_path / "model-card.txt"
    artifact.write_text("backed up " + unique)
    with mlflow.start_run(experiment_id=exp_id) as run:
        for step in range(5):
            mlflow.log_metric("loss", 1.0 / (step + 1), step=step)
        mlflow.log_artifact(str(artifact), artifact_path="docs")
    user = f"backup-{time.time_ns()}"
    auth_client = get_app_client("basic-auth", tracking_uri=stack)
    auth_client.create_user(user, os.urandom(12).hex())
    # And a group in the OIDC plugin's database (as a sign-in in AUTH_MODE=oidc makes one).
    query("mlflow_oidc", "INSERT INTO groups (group_name) VALUES (:'group')", group=unique)

    try:
        made = mlflowctl("backup", "--out", str(tmp_path / "backups"))
        assert made.returncode == 0, made.stderr
        (backup,) = (tmp_path / "backups").iterdir()
        assert backup.name.startswith("mlflow-backup-") and not backup.name.endswith(".partial")
        # Private: every file 0600, every directory 0700.
        for path in [backup, *backup.rglob("*")]:
            mode = stat.S_IMODE(path.stat().st_mode)
            assert mode == (0o700 if path.is_dir() else 0o600), (path, oct(mode))
        manifest = json.loads((backup / "manifest.json").read_text())
        key = next(
            k for k in manifest["bucket"]["objects"] if k.endswith(f"{run.info.run_id}/artifacts/docs/model-card.txt")
        )
        assert manifest["bucket"]["objects"][key]["sha256"] == sha256_of(artifact.read_bytes())
        # The copy is exactly the live bucket at that time (our new object included), byte for byte.
        assert (backup / "artifacts" / key).read_bytes() == artifact.read_bytes()

        target = [f"--{kind}-db={scratch[kind]}" for kind in ("tracking", "auth", "oidc")] + [
            "--bucket",
            scratch["bucket"],
        ]
        restored = mlflowctl("restore", str(backup), *target)
        assert restored.returncode == 0, restored.stderr

        # The same rows as in the dump's snapshot, our run's metrics and our user included...
        for kind in ("tracking", "auth", "oidc"):
            for name, text in COUNTS[kind].items():
                assert int(query(scratch[kind], text)[0][0]) == manifest["databases"][kind]["counts"][name], name
        steps = query(
            scratch["tracking"],
            "SELECT step, value FROM metrics WHERE run_uuid = :'run' AND key = 'loss' ORDER BY step",
            run=run.info.run_id,
        )
        assert [(int(s), float(v)) for s, v in steps] == [(s, 1.0 / (s + 1)) for s in range(5)]
        assert query(scratch["auth"], "SELECT count(*) FROM users WHERE username = :'user'", user=user) == [("1",)]
        assert query(scratch["oidc"], "SELECT count(*) FROM groups WHERE group_name = :'g'", g=unique) == [("1",)]
        # ...and the same bytes in the scratch bucket as in the live one.
        restored_objects = bucket_objects(scratch["bucket"])
        assert restored_objects == {k: v["sha256"] for k, v in manifest["bucket"]["objects"].items()}
        assert restored_objects[key] == sha256_of(artifact.read_bytes())

        # A second restore onto the now non-empty targets is refused with a clear line, unless --force.
        again = mlflowctl("restore", str(backup), *target)
        assert again.returncode == 1
        assert "refusing to overwrite" in again.stderr and "--force" in again.stderr
        assert len(again.stderr.strip().splitlines()) == 1
        forced = mlflowctl("restore", str(backup), "--force", *target)
        assert forced.returncode == 0, forced.stderr

        # A damaged backup is refused before anything is touched.
        (backup / "auth.dump").write_bytes(b"corrupt")
        damaged = mlflowctl("restore", str(backup), "--force", *target)
        assert damaged.returncode == 1 and "checksum" in damaged.stderr
    finally:
        auth_client.delete_user(user)
        query("mlflow_oidc", "DELETE FROM groups WHERE group_name = :'group'", group=unique)
