"""`mlflowctl backup` of the live stack, then `mlflowctl restore` into SCRATCH databases and a SCRATCH
bucket (never the live ones): rows, users and artifact bytes come back; non-empty targets are refused
without --force. The scratch targets are dropped at the end, also on failure.
"""
import hashlib
import json
import os
import stat
import subprocess
import time

import boto3
import psycopg2
import pytest
from psycopg2 import sql

from scripts.backup import COUNTS

from tests.conftest import ROOT


def mlflowctl(*args, timeout=600):
    return subprocess.run([str(ROOT / "mlflowctl"), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


@pytest.fixture
def scratch(stack_env):
    """Names for scratch targets; whatever restore created under them is removed afterwards."""
    tag = f"{os.getpid()}_{time.time_ns()}"
    names = {"tracking": f"mlflow_restore_{tag}", "auth": f"mlflow_auth_restore_{tag}",
             "bucket": f"mlflow-restore-{tag.replace('_', '-')}"}
    yield names
    conn = pg(stack_env, "postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        for db in (names["tracking"], names["auth"]):
            cur.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
    conn.close()
    bucket = s3(stack_env).Bucket(names["bucket"])
    if bucket.creation_date:
        bucket.objects.all().delete()
        bucket.delete()


def pg(stack_env, db):
    return psycopg2.connect(host="127.0.0.1", port=stack_env.get("POSTGRES_PORT", "5432"), user="postgres",
                            password=stack_env["POSTGRES_PASSWORD"], dbname=db, connect_timeout=10)


def s3(stack_env):
    return boto3.resource("s3", endpoint_url="http://127.0.0.1:8333", region_name="us-east-1",
                          aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
                          aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"])


def query(stack_env, db, text, args=()):
    conn = pg(stack_env, db)
    try:
        with conn.cursor() as cur:
            cur.execute(text, args)
            return cur.fetchall()
    finally:
        conn.close()


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
        key = next(k for k in manifest["bucket"]["objects"] if k.endswith(f"{run.info.run_id}/artifacts/docs/model-card.txt"))
        assert manifest["bucket"]["objects"][key]["sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()

        target = ["--tracking-db", scratch["tracking"], "--auth-db", scratch["auth"], "--bucket", scratch["bucket"]]
        restored = mlflowctl("restore", str(backup), *target)
        assert restored.returncode == 0, restored.stderr

        # The same rows as in the dump's snapshot, our run's metrics and our user included...
        for kind in ("tracking", "auth"):
            for name, text in COUNTS[kind].items():
                assert query(stack_env, scratch[kind], text)[0][0] == manifest["databases"][kind]["counts"][name], name
        steps = query(stack_env, scratch["tracking"], "SELECT step, value FROM metrics WHERE run_uuid = %s "
                      "AND key = 'loss' ORDER BY step", (run.info.run_id,))
        assert steps == [(s, 1.0 / (s + 1)) for s in range(5)]
        assert query(stack_env, scratch["auth"], "SELECT count(*) FROM users WHERE username = %s", (user,)) == [(1,)]
        # ...and the same bytes in the scratch bucket as in the live one.
        scratch_bucket = s3(stack_env).Bucket(scratch["bucket"])
        restored_objects = {o.key: hashlib.sha256(o.get()["Body"].read()).hexdigest() for o in scratch_bucket.objects.all()}
        assert restored_objects == {k: v["sha256"] for k, v in manifest["bucket"]["objects"].items()}
        assert restored_objects[key] == hashlib.sha256(artifact.read_bytes()).hexdigest()

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
