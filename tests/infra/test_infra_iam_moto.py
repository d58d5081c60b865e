"""IAM proof: the server policy from infra.components.server_iam.server_policy_document (the very
function the ServerIam component uses) lets MLflow's own artifact code and `mlflow gc` work, and
denies everything else tried here.

Mock boundary: AWS cannot be reached, so S3, IAM and Secrets Manager are moto's server on
127.0.0.1 with IAM enforcement on. MLflow itself is real (S3ArtifactRepository, MlflowClient,
the `mlflow gc` command). moto checks resource ARNs only for S3 (other services are evaluated
against "*"), so the secrets statement's scoping is asserted on the document in
test_infra_components.py, not here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import boto3
import pytest
from botocore.exceptions import ClientError

from infra.bundle import BUNDLE_PREFIX
from infra.components.server_iam import server_policy_document

BUCKET, OTHER_BUCKET, REGION = "mlflow-artifacts-test", "someone-elses-bucket", "us-east-1"


def _with_moto_delete_shim(doc: dict) -> dict:
    """moto 5.2 authorises a multi-object delete (POST ?delete, what MLflow and `mlflow gc` use)
    as s3:DeleteObject on the BUCKET arn; AWS checks s3:DeleteObject on each OBJECT arn, which our
    policy grants. Only for moto, the same action is also allowed on the bucket arn."""
    shim = {
        "Sid": "MotoOnlyMultiDelete",
        "Effect": "Allow",
        "Action": ["s3:DeleteObject"],
        "Resource": [doc["Statement"][0]["Resource"][0]],
    }
    return {**doc, "Statement": doc["Statement"] + [shim]}


def _client(service, endpoint, creds):
    return boto3.client(service, endpoint_url=endpoint, region_name=REGION, **creds)


@pytest.fixture(scope="module")
def iam_world(moto_server):
    """Buckets, secrets, and a user holding exactly our generated policy; then IAM is enforced."""
    moto_server.reset()
    moto_server.enforce_iam(False)
    ep = moto_server.endpoint
    setup = {"aws_access_key_id": "setup", "aws_secret_access_key": "setup"}
    iam, s3, sm = (_client(s, ep, setup) for s in ("iam", "s3", "secretsmanager"))
    for name in (BUCKET, OTHER_BUCKET):
        s3.create_bucket(Bucket=name)
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    s3.put_object(Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}docker-compose.aws.yml", Body=b"services: {}\n")
    own = sm.create_secret(Name="mlflow-app", SecretString='{"MLFLOW_DB_PASSWORD": "x"}')["ARN"]

    def user(name, policy):
        iam.create_user(UserName=name)
        iam.put_user_policy(UserName=name, PolicyName="p", PolicyDocument=json.dumps(policy))
        key = iam.create_access_key(UserName=name)["AccessKey"]
        return {"aws_access_key_id": key["AccessKeyId"], "aws_secret_access_key": key["SecretAccessKey"]}

    doc = server_policy_document(f"arn:aws:s3:::{BUCKET}", [own])
    server = user("mlflow-server", _with_moto_delete_shim(doc))
    admin = user("admin", {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]})
    moto_server.enforce_iam(True)
    yield {"endpoint": ep, "server": server, "admin": admin}
    moto_server.enforce_iam(False)


@pytest.fixture()
def as_server(iam_world, monkeypatch):
    """Environment of the MLflow server on AWS: its credentials and NO MLFLOW_S3_ENDPOINT_URL
    (the real-S3 code path); boto3's own AWS_ENDPOINT_URL_S3 leads it to moto."""
    creds = iam_world["server"]
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", creds["aws_access_key_id"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", creds["aws_secret_access_key"])
    monkeypatch.setenv("AWS_DEFAULT_REGION", REGION)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", iam_world["endpoint"])
    for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CA_BUNDLE", "MLFLOW_S3_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    return iam_world


def _keys(world, prefix=""):
    s3 = _client("s3", world["endpoint"], world["admin"])
    return sorted(o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=prefix).get("Contents", []))


def test_enforcement_is_on(as_server):
    """Sanity: an unknown key is refused, so the allows below are the policy's doing."""
    s3 = _client(
        "s3", as_server["endpoint"], {"aws_access_key_id": "AKIAUNKNOWN0000000000", "aws_secret_access_key": "x"}
    )
    with pytest.raises(ClientError):
        s3.list_objects_v2(Bucket=BUCKET)


def test_artifact_repository_log_list_download_delete(as_server, tmp_path):
    from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository

    repo = S3ArtifactRepository(f"s3://{BUCKET}/1/run1/artifacts")
    (tmp_path / "model.txt").write_text("weights")
    (tmp_path / "dir").mkdir()
    (tmp_path / "dir" / "a.json").write_text("{}")
    repo.log_artifact(str(tmp_path / "model.txt"))
    repo.log_artifacts(str(tmp_path / "dir"), artifact_path="plots")
    assert sorted(f.path for f in repo.list_artifacts()) == ["model.txt", "plots"]
    assert [f.path for f in repo.list_artifacts("plots")] == ["plots/a.json"]
    (tmp_path / "dl").mkdir()
    out = repo.download_artifacts("model.txt", dst_path=str(tmp_path / "dl"))
    assert open(out).read() == "weights"
    repo.delete_artifacts("plots")
    assert _keys(as_server, "1/run1/") == ["1/run1/artifacts/model.txt"]


def test_mlflow_gc_deletes_artifacts_of_deleted_runs(as_server, tmp_path):
    from mlflow.tracking import MlflowClient

    tracking = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=tracking)
    exp = client.create_experiment("gc", artifact_location=f"s3://{BUCKET}/gc")
    run = client.create_run(exp)
    (tmp_path / "f.txt").write_text("x")
    client.log_artifact(run.info.run_id, str(tmp_path / "f.txt"))
    assert _keys(as_server, f"gc/{run.info.run_id}/")
    client.delete_run(run.info.run_id)
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking}
    result = subprocess.run(
        [sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", tracking],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert _keys(as_server, f"gc/{run.info.run_id}/") == []


@pytest.mark.parametrize(
    "action",
    [
        "put_other_bucket",
        "delete_bucket",
        "put_bucket_policy",
        "delete_bucket_policy",
        "put_bucket_versioning",
        "overwrite_deploy_bundle",
        "delete_deploy_bundle",
        "list_all_buckets",
    ],
)
def test_everything_else_is_denied(as_server, action):
    s3 = _client("s3", as_server["endpoint"], as_server["server"])
    calls = {
        "put_other_bucket": lambda: s3.put_object(Bucket=OTHER_BUCKET, Key="x", Body=b"x"),
        "delete_bucket": lambda: s3.delete_bucket(Bucket=BUCKET),
        "put_bucket_policy": lambda: s3.put_bucket_policy(
            Bucket=BUCKET,
            Policy=json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": "*",
                            "Action": "s3:GetObject",
                            "Resource": f"arn:aws:s3:::{BUCKET}/*",
                        }
                    ],
                }
            ),
        ),
        "delete_bucket_policy": lambda: s3.delete_bucket_policy(Bucket=BUCKET),
        "put_bucket_versioning": lambda: s3.put_bucket_versioning(
            Bucket=BUCKET, VersioningConfiguration={"Status": "Suspended"}
        ),
        "overwrite_deploy_bundle": lambda: s3.put_object(
            Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}docker-compose.aws.yml", Body=b"evil"
        ),
        "delete_deploy_bundle": lambda: s3.delete_object(Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}docker-compose.aws.yml"),
        "list_all_buckets": lambda: s3.list_buckets(),
    }
    with pytest.raises(ClientError) as err:
        calls[action]()
    assert err.value.response["Error"]["Code"] in ("AccessDenied", "AccessDeniedException", "403")


def test_boot_can_read_the_deploy_bundle(as_server):
    s3 = _client("s3", as_server["endpoint"], as_server["server"])
    body = s3.get_object(Bucket=BUCKET, Key=f"{BUNDLE_PREFIX}docker-compose.aws.yml")["Body"].read()
    assert body == b"services: {}\n"
