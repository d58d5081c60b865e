"""The real-S3 code path: MLflow's own S3 artifact code, run with exactly the environment the AWS
compose model gives the `mlflow` service, so no MLFLOW_S3_ENDPOINT_URL at all (an empty one makes
boto3 raise "Invalid endpoint" on every artifact call). boto3 reaches moto through its own
AWS_ENDPOINT_URL_S3, the way it would reach S3 itself with no setting.

Mock boundary: S3 is moto's server on 127.0.0.1; MLflow and boto3 are real.
"""

import os
import subprocess
import sys

import boto3

from infra.compose_model import placeholder_model

BUCKET = "mlflow-real-s3-path"
CLIENT = """
import os, tempfile
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository
repo = S3ArtifactRepository(os.environ["MLFLOW_ARTIFACTS_DESTINATION"] + "/1/run1/artifacts")
src = tempfile.mkdtemp()
open(os.path.join(src, "model.txt"), "w").write("weights")
repo.log_artifact(os.path.join(src, "model.txt"))
assert [f.path for f in repo.list_artifacts()] == ["model.txt"]
out = repo.download_artifacts("model.txt", dst_path=tempfile.mkdtemp())
assert open(out).read() == "weights"
print("artifacts ok")
"""


def test_mlflow_artifacts_work_with_the_aws_model_environment(moto_server):
    moto_server.reset()
    moto_server.enforce_iam(False)
    boto3.client(
        "s3",
        region_name="us-east-1",
        endpoint_url=moto_server.endpoint,
        aws_access_key_id="test",
        aws_secret_access_key="test",
    ).create_bucket(Bucket=BUCKET)
    model = placeholder_model(bucket=BUCKET)
    service_env = model["services"]["mlflow"]["environment"]
    assert "MLFLOW_S3_ENDPOINT_URL" not in service_env
    env = {k: v.replace("$$", "$") for k, v in service_env.items() if v is not None}
    env.update(
        PATH=os.environ["PATH"],
        HOME=os.environ.get("HOME", "/root"),
        # What the instance role supplies on AWS; and the redirect to moto.
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_ENDPOINT_URL_S3=moto_server.endpoint,
        TMPDIR="/tmp",
    )
    result = subprocess.run([sys.executable, "-c", CLIENT], env=env, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "artifacts ok" in result.stdout
