"""MLflow's artifact code path as on AWS: NO endpoint override in its environment at all.

On AWS the compose files leave MLFLOW_S3_ENDPOINT_URL out (an empty value makes MLflow 3.17.2 build
boto3 clients with endpoint_url="": "Invalid endpoint" on every artifact call while /health stays
green; the image's entrypoint unsets an empty one). Here our image runs on the stack's network with
MLFLOW_S3_ENDPOINT_URL set EMPTY, as a .env without a local store gives it, and boto3 reaches the
local store through its own AWS_ENDPOINT_URL_S3: MLflow's S3 artifact repository must log, list and
download through that path. The store is the local one (no AWS here); the code path is AWS's.
"""
import json
import subprocess

from scripts import engine

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


def test_artifacts_without_an_endpoint_override(stack, eng):
    cmd = engine.compose_args() + ["run", "--rm", "--no-deps", "-T", "-e", "MLFLOW_S3_ENDPOINT_URL=",
                                   "-e", "AWS_ENDPOINT_URL_S3=http://s3:8333", "mlflow", "python", "-c", CHECK]
    run = subprocess.run(cmd, env=eng.env, cwd=engine.ROOT, capture_output=True, text=True, timeout=180)
    # podman 4.3's API does not pass `compose run`'s exit code on (it is always 0): the check is the
    # JSON line the script prints only when every step worked.
    lines = run.stdout.strip().splitlines()
    assert lines and lines[-1].startswith("{"), run.stderr[-2000:]
    assert json.loads(lines[-1]) == {"listed": ["dir/model.txt"], "content": "as on AWS"}
