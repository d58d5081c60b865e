"""End to end through Nginx over HTTPS with the real mlflow client, trusting our CA."""

import json
import os
import time
from pathlib import Path

import pytest

from ctl import stackexec

SEARCH = "/api/2.0/mlflow/experiments/search?max_results=1"
# In the mlflow container (our image, the service's own S3 endpoint and keys): BUCKET NAME ->
# {"keys": [keys ending in NAME], "body": the first one's content, "on_disk": files named NAME
# anywhere on the container's own filesystems (its root, the spool volume, /tmp)}.
FIND_CODE = r"""
import json, os, sys
import boto3
bucket, name = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
keys = [o["Key"] for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket)
        for o in page.get("Contents", []) if o["Key"].endswith(name)]
body = s3.get_object(Bucket=bucket, Key=keys[0])["Body"].read().decode() if keys else None
on_disk = []
for top, dirs, files in os.walk("/", onerror=lambda e: None):
    dirs[:] = [d for d in dirs if os.path.join(top, d) not in ("/proc", "/sys", "/dev")]
    on_disk += [os.path.join(top, f) for f in files if f == name]
print(json.dumps({"keys": keys, "body": body, "on_disk": on_disk}))
"""


def test_unauthenticated_is_401_and_says_nothing_more(stack, http, admin_auth):
    cases = {
        "no credentials": None,
        "wrong password": (admin_auth[0], "wrong-password"),
        "unknown user": ("no-such-user", admin_auth[1]),
    }
    bodies = set()
    for case, auth in cases.items():
        r = http.get(stack + SEARCH, auth=auth, timeout=10)
        assert r.status_code == 401, case
        assert r.headers.get("WWW-Authenticate", "").startswith("Basic"), case
        bodies.add(r.text)
    # One answer for every case: nothing tells a scanner whether the user exists.
    assert len(bodies) == 1


def test_admin_logs_run_with_artifact_in_s3(mlflow_admin, unique, stack_env, tmp_path):
    import mlflow

    exp_id = mlflow_admin.create_experiment(f"e2e/{unique}")
    artifact = tmp_path / f"{unique}.txt"
    artifact.write_text("artifact body " + unique)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_param("alpha", 0.5)
        mlflow.log_metrics({"loss": 0.25, "acc": 0.9}, step=1)
        mlflow.log_artifact(str(artifact), artifact_path="reports")
    data = mlflow_admin.get_run(run.info.run_id).data
    assert data.params == {"alpha": "0.5"} and data.metrics == {"loss": 0.25, "acc": 0.9}
    assert [f.path for f in mlflow_admin.list_artifacts(run.info.run_id, "reports")] == [f"reports/{artifact.name}"]
    downloaded = mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path=f"reports/{artifact.name}", dst_path=str(tmp_path / "dl")
    )
    assert Path(downloaded).read_text() == artifact.read_text()

    # Proxied artifacts: the object is in the bucket, under the run's id (looked at from inside the
    # engine's network, where the store is)...
    seen = json.loads(
        stackexec.python(FIND_CODE, stack_env["MLFLOW_ARTIFACT_BUCKET"], artifact.name, timeout=120).stdout
    )
    assert len(seen["keys"]) == 1 and run.info.run_id in seen["keys"][0]
    assert seen["body"] == artifact.read_text()
    # ...and not on the server's disk: no file of that name anywhere in the mlflow container (its
    # root filesystem, the artifact spool volume, /tmp): the spooled copy is gone.
    assert seen["on_disk"] == []


def test_register_alias_and_load_champion(mlflow_admin, unique):
    import mlflow
    import numpy as np
    from sklearn.linear_model import LinearRegression

    X = np.arange(20, dtype=float).reshape(-1, 1)
    model = LinearRegression().fit(X, 3 * X.ravel() + 1)
    name = f"e2e-{unique}"
    with mlflow.start_run(experiment_id=mlflow_admin.create_experiment(f"e2e/{unique}")):
        info = mlflow.sklearn.log_model(model, name="model", registered_model_name=name, input_example=X[:2])
    version = info.registered_model_version
    mlflow_admin.set_registered_model_alias(name, "champion", version)
    assert mlflow_admin.get_model_version_by_alias(name, "champion").version == str(version)
    loaded = mlflow.pyfunc.load_model(f"models:/{name}@champion")
    assert loaded.predict(np.array([[10.0]]))[0] == pytest.approx(31.0)


def test_foreign_host_header_rejected(stack, http, admin_auth):
    r = http.get(stack + SEARCH, auth=admin_auth, headers={"Host": "evil.example.com"}, timeout=10)
    assert r.status_code == 403 and "Invalid Host header" in r.text
    assert http.get(stack + SEARCH, auth=admin_auth, timeout=10).status_code == 200  # and the server is fine


def test_non_admin_sees_only_what_default_permission_allows(mlflow_admin, stack, http, unique):
    from mlflow.server import get_app_client

    auth_client = get_app_client("basic-auth", tracking_uri=stack)  # MLflow's own auth API client, as admin
    user, password = f"u{time.time_ns()}", os.urandom(12).hex()
    auth_client.create_user(user, password)
    exp_id = mlflow_admin.create_experiment(f"e2e/private/{unique}")
    as_user = {"auth": (user, password), "timeout": 10}
    get_exp = f"{stack}/api/2.0/mlflow/experiments/get"
    grant = f"{stack}/api/3.0/mlflow/users/permissions/grant"
    # default_permission = NO_PERMISSIONS: another user's experiment is invisible...
    assert http.get(get_exp, params={"experiment_id": exp_id}, **as_user).status_code == 403
    # ...administration is refused...
    r = http.post(
        f"{stack}/api/2.0/mlflow/users/create", json={"username": user + "x", "password": password}, **as_user
    )
    assert r.status_code == 403
    r = http.post(
        grant,
        json={"username": user, "resource_type": "experiment", "resource_id": exp_id, "permission": "MANAGE"},
        **as_user,
    )
    assert r.status_code == 403
    # ...until the admin grants READ, which allows reading and nothing more.
    auth_client.grant_user_permission(user, "experiment", exp_id, "READ")
    assert http.get(get_exp, params={"experiment_id": exp_id}, **as_user).status_code == 200
    assert (
        http.post(f"{stack}/api/2.0/mlflow/runs/create", json={"experiment_id": exp_id}, **as_user).status_code == 403
    )
