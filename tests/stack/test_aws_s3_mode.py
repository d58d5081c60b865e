"""MLflow's artifact code path as on AWS: NO endpoint override in its environment at all.

On AWS the compose files leave MLFLOW_S3_ENDPOINT_URL out (an empty value makes MLflow 3.17.2 build
boto3 clients with endpoint_url="": "Invalid endpoint" on every artifact call while /health stays
green; the image's entrypoint unsets an empty one). Here our image runs on the stack's network with
MLFLOW_S3_ENDPOINT_URL set EMPTY, as a .env without a local store gives it, and boto3 reaches the
local store through its own AWS_ENDPOINT_URL_S3: MLflow's S3 artifact repository must log, list and
download through that path. The store is the local one (no AWS here); the code path is AWS's.
"""

CHECK = r"""
import json, os, tempfile
from mlflow.store.artifact.s3_artifact_repo import S3ArtifactRepository
assert "MLFLOW_S3_ENDPOINT_URL" not in os.environ, "the entrypoint left an empty endpoint in place"
repo = S3ArtifactRepository(f"{os.environ['MLFLOW_ARTIFACTS_DESTINATION']}/aws-mode-check/{os.getpid()}")
src = os.path.join(tempfile.mkdtemp(), "model.txt")
open(src, "w").write("as on AWS")
repo.log_artifact(src, "dir")
listed = [f.path for f in repo.list_artifacts("dir")]
got = open(repo.download_artifacts("dir/model.txt")).read()
print(json.dumps({"listed": listed, "content": got}))
"""


def test_artifacts_without_an_endpoint_override(stack, run_in_image):
    out = run_in_image(CHECK, "-e", "MLFLOW_S3_ENDPOINT_URL=", "-e", "AWS_ENDPOINT_URL_S3=http://s3:8333")
    assert out == {"listed": ["dir/model.txt"], "content": "as on AWS"}
