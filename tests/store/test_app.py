"""`mlflow server --app-name bundle-auth --backend-store-uri bundle-postgresql://...` as the stack
runs it (gunicorn), on 127.0.0.1: the entry points resolve, metrics land, errors are JSON."""

import configparser
import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
ADMIN = ("admin", "bundle-auth-test-pw-1")


@contextlib.contextmanager
def serve(tracking: str, auth: str, tmp: Path, tmpdir: Path | None = None, workers: int = 2):
    """One `mlflow server --app-name bundle-auth` (2 gunicorn workers, as the stack runs it) on a
    free 127.0.0.1 port; TMPDIR is where the auth cache keeps its marker (the container's /tmp).
    The first server on fresh databases has 1 worker: each worker migrates the auth database at
    start (the stack's one-shot `migrate` service does it first)."""
    tmp.mkdir(parents=True, exist_ok=True)
    ini = configparser.ConfigParser()
    ini.read(ROOT / "docker" / "basic_auth.ini")
    ini["mlflow"]["database_uri"] = auth
    with open(tmp / "auth.ini", "w") as fh:
        ini.write(fh)
    port = free_port()
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(tmp / "auth.ini"),
        "MLFLOW_AUTH_ADMIN_USERNAME": ADMIN[0],
        "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "s" * 32,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "HOME": str(tmp),
        "TMPDIR": str(tmpdir or tmp),
    }
    cmd = [
        sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "bundle-auth",
        "--backend-store-uri",
        tracking.replace("postgresql+psycopg2://", "bundle-postgresql://"),
        "--artifacts-destination",
        str(tmp / "artifacts"),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--gunicorn-opts",
        "--threads 2",
    ]
    log = open(tmp / "server.log", "wb")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (tmp / "server.log").read_text()[-4000:]
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.RequestException:  # not listening yet, or busy starting
                pass
            assert time.monotonic() < deadline, (tmp / "server.log").read_text()[-4000:]
            time.sleep(0.3)  # poll interval of a deadline-bounded readiness loop
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGINT)  # gunicorn's quick stop; this fixture's own group
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def databases(scratch_db, mlflow_template, tmp_path_factory):
    with scratch_db(mlflow_template) as tracking, scratch_db() as auth:
        yield tracking, auth, tmp_path_factory.mktemp("bundle-auth")


@pytest.fixture(scope="module")
def server(databases):
    tracking, auth, tmp = databases
    with serve(tracking, auth, tmp / "server", tmpdir=tmp, workers=1) as url:
        yield url


@pytest.fixture(scope="module")
def sibling(databases, server):
    """Another server on the same databases and the same TMPDIR: more workers of one container."""
    tracking, auth, tmp = databases
    with serve(tracking, auth, tmp / "sibling", tmpdir=tmp) as url:
        yield url


@pytest.fixture(scope="module")
def replica(databases, server):
    """Another server on the same databases with a TMPDIR of its own: another container."""
    tracking, auth, tmp = databases
    with serve(tracking, auth, tmp / "replica") as url:
        yield url


@pytest.fixture(scope="module")
def session():
    s = requests.Session()
    s.trust_env = False  # loopback only: no proxy, no environment CA bundle
    s.auth = ADMIN
    return s


@pytest.fixture(scope="module")
def run_id(server, session):
    exp = session.post(f"{server}/api/2.0/mlflow/experiments/create", json={"name": "app"}).json()
    r = session.post(
        f"{server}/api/2.0/mlflow/runs/create", json={"experiment_id": exp["experiment_id"], "start_time": 0}
    )
    return r.json()["run"]["info"]["run_id"]


def test_log_batch_and_metric_through_our_store(server, session, run_id):
    metrics = [{"key": "loss", "value": v, "timestamp": 5, "step": 1} for v in (2.0, 1.0)]
    metrics.append({"key": "acc", "value": "NaN", "timestamp": 5, "step": 1})
    assert (
        session.post(f"{server}/api/2.0/mlflow/runs/log-batch", json={"run_id": run_id, "metrics": metrics}).status_code
        == 200
    )
    assert session.post(
        f"{server}/api/2.0/mlflow/runs/log-metric",
        json={"run_id": run_id, "key": "loss", "value": 0.5, "timestamp": 4, "step": 1},
    ).ok
    latest = session.get(f"{server}/api/2.0/mlflow/runs/get", params={"run_id": run_id}).json()
    got = {m["key"]: m for m in latest["run"]["data"]["metrics"]}
    assert got["loss"]["value"] == 2.0  # (step 1, ts 5, 2.0) beats (1, 5, 1.0) and (1, 4, 0.5)
    assert math.isnan(float(got["acc"]["value"]))


def test_model_registry_uses_the_same_database(server, session):
    r = session.post(f"{server}/api/2.0/mlflow/registered-models/create", json={"name": "m1"})
    assert r.status_code == 200, r.text
    assert session.get(f"{server}/api/2.0/mlflow/registered-models/get", params={"name": "m1"}).ok


@pytest.mark.parametrize("body", ["{not json", "[]", '[{"run_id": "x"}]', '"x"', "null", '"[1]"', "1"])
@pytest.mark.parametrize(
    "path",
    [
        "/api/2.0/mlflow/runs/log-batch",
        "/ajax-api/2.0/mlflow/runs/log-metric",
        "/api/2.0/mlflow/experiments/create",
        "/api/2.0/mlflow/runs/search",
    ],
)
def test_malformed_json_is_a_json_400(server, session, path, body):
    r = session.post(f"{server}{path}", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    assert r.json()["error_code"] == "INVALID_PARAMETER_VALUE"


def test_legacy_double_encoded_body_still_works(server, session, run_id):
    body = json.dumps(json.dumps({"run_id": run_id, "metrics": []}))
    r = session.post(f"{server}/api/2.0/mlflow/runs/log-batch", data=body, headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text


def test_unknown_api_path_is_json_and_ui_is_html(server, session):
    r = session.get(f"{server}/api/2.0/mlflow/no-such-endpoint")
    assert r.status_code == 404 and r.json()["error_code"] == "ENDPOINT_NOT_FOUND"
    r = session.get(f"{server}/no-such-page")
    assert r.status_code == 404 and r.headers["Content-Type"].startswith("text/html")
    assert session.get(f"{server}/").headers["Content-Type"].startswith("text/html")


def test_unauthenticated_still_401(server):
    r = requests.post(
        f"{server}/api/2.0/mlflow/runs/log-batch",
        data="{not json",
        headers={"Content-Type": "application/json"},
        auth=("admin", "wrong"),
    )
    # Malformed bodies are refused before authentication: no password is checked for them.
    assert r.status_code == 400
    r = requests.post(f"{server}/api/2.0/mlflow/runs/log-batch", json={"run_id": "x"}, auth=("admin", "wrong"))
    assert r.status_code == 401


def test_missing_and_deleted_run_keep_mlflows_error_codes(server, session):
    api = f"{server}/api/2.0/mlflow/"
    point = {"key": "x", "value": 1.0, "timestamp": 1, "step": 0}
    r = session.post(api + "runs/log-metric", json={"run_id": "0" * 32, **point})
    assert (r.status_code, r.json()["error_code"]) == (404, "RESOURCE_DOES_NOT_EXIST")
    exp = session.post(api + "experiments/create", json={"name": "app-deleted"}).json()["experiment_id"]
    run = session.post(api + "runs/create", json={"experiment_id": exp}).json()["run"]["info"]["run_id"]
    assert session.post(api + "runs/delete", json={"run_id": run}).ok
    for path, body in [("log-metric", point), ("log-batch", {"metrics": [point]})]:
        r = session.post(api + "runs/" + path, json={"run_id": run, **body})
        assert (r.status_code, r.json()["error_code"]) == (400, "INVALID_PARAMETER_VALUE"), path


def _user_session(api: str, admin: requests.Session, username: str) -> requests.Session:
    password = f"{username}-pw-1"
    assert admin.post(api + "users/create", json={"username": username, "password": password}).ok
    s = requests.Session()  # keep-alive: its requests stay on one gunicorn worker, and its cache
    s.trust_env, s.auth = False, (username, password)
    return s


def _log_as(s: requests.Session, server: str, run_id: str) -> int:
    body = {"run_id": run_id, "key": "by-user", "value": 1.0, "timestamp": 1, "step": 0}
    return s.post(f"{server}/api/2.0/mlflow/runs/log-metric", json=body).status_code


def test_auth_cache_follows_every_change_made_through_another_worker(server, sibling, session, run_id):
    """The stack's case: a change made through one worker, the next request on another worker of
    the same container (SIBLING: another gunicorn master with the same TMPDIR, so its workers
    never saw the write). A grant, a revocation, the admin flag and a new password hold there at
    once."""
    api = f"{server}/api/2.0/mlflow/"
    as_user = _user_session(api, session, "cache-user")
    exp = session.get(api + "runs/get", params={"run_id": run_id}).json()["run"]["info"]["experiment_id"]
    grant = {"username": "cache-user", "resource_type": "experiment", "resource_id": exp}
    # An admin reading the user's permission on the sibling caches the user's (empty) grants there,
    # as `mlflowctl teams` does before it grants.
    admin_on_sibling = f"{sibling}/api/3.0/mlflow/users/permissions/get"
    assert session.get(admin_on_sibling, params=grant).status_code in (200, 404)
    assert _log_as(as_user, sibling, run_id) == 403  # default_permission NO_PERMISSIONS; now cached
    for is_admin, expected in [(True, 200), (False, 403)]:
        assert session.patch(api + "users/update-admin", json={"username": "cache-user", "is_admin": is_admin}).ok
        assert _log_as(as_user, sibling, run_id) == expected, is_admin
    perms = f"{server}/api/3.0/mlflow/users/permissions/"
    assert session.post(perms + "grant", json={**grant, "permission": "EDIT"}).ok
    assert [_log_as(as_user, sibling, run_id) for _ in range(3)] == [200] * 3
    found = as_user.post(f"{sibling}/api/2.0/mlflow/experiments/search", json={"max_results": 100}).json()
    assert exp in [e["experiment_id"] for e in found.get("experiments", [])]
    assert session.post(perms + "revoke", json=grant).ok
    assert _log_as(as_user, sibling, run_id) == 403
    new_password = {"username": "cache-user", "password": "cache-user-pw-2"}
    assert session.patch(api + "users/update-password", json=new_password).ok
    assert _log_as(as_user, sibling, run_id) == 401  # MLflow's password cache is dropped too


def test_a_grant_made_through_another_replica_is_never_refused(server, replica, session, run_id):
    """REPLICA shares the databases but not the TMPDIR (a rolling upgrade's second container, or
    another ECS task): a request refused on a cached answer is checked again against the database.
    A revocation there is the documented cost (it holds within auth_cache_ttl_seconds), not tested."""
    api = f"{server}/api/2.0/mlflow/"
    as_user = _user_session(api, session, "replica-user")
    exp = session.get(api + "runs/get", params={"run_id": run_id}).json()["run"]["info"]["experiment_id"]
    assert [_log_as(as_user, replica, run_id) for _ in range(3)] == [403] * 3  # cached on that worker
    grant = {"username": "replica-user", "resource_type": "experiment", "resource_id": exp, "permission": "EDIT"}
    assert session.post(f"{server}/api/3.0/mlflow/users/permissions/grant", json=grant).ok
    assert [_log_as(as_user, replica, run_id) for _ in range(3)] == [200] * 3
