"""`mlflow server --app-name bundle-auth --backend-store-uri bundle-postgresql://...` as the stack
runs it (gunicorn), on 127.0.0.1: the entry points resolve, metrics land, errors are JSON."""

import configparser
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


@pytest.fixture(scope="module")
def server(scratch_db, mlflow_template, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bundle-auth")
    with scratch_db(mlflow_template) as tracking, scratch_db() as auth:
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
            "1",
            "--gunicorn-opts",
            "--threads 2 --no-control-socket",
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


def test_auth_cache_forgets_a_changed_admin_flag_and_permission_at_once(server, session, run_id):
    """One worker: the change and the next request meet the same cache (auth_cache.py). Another
    worker keeps its cached answer for up to auth_cache_ttl_seconds, the documented cost."""
    api, user = f"{server}/api/2.0/mlflow/", ("cache-user", "cache-user-pw-1")
    assert session.post(api + "users/create", json={"username": user[0], "password": user[1]}).ok
    as_user = requests.Session()
    as_user.trust_env, as_user.auth = False, user
    exp = session.get(api + "runs/get", params={"run_id": run_id}).json()["run"]["info"]["experiment_id"]

    def log() -> int:
        body = {"run_id": run_id, "key": "by-user", "value": 1.0, "timestamp": 1, "step": 0}
        return as_user.post(api + "runs/log-metric", json=body).status_code

    assert log() == 403  # default_permission NO_PERMISSIONS; now cached
    for is_admin, expected in [(True, 200), (False, 403)]:
        assert session.patch(api + "users/update-admin", json={"username": user[0], "is_admin": is_admin}).ok
        assert log() == expected, is_admin
    grant = {"username": user[0], "resource_type": "experiment", "resource_id": exp}
    perms = f"{server}/api/3.0/mlflow/users/permissions/"
    assert session.post(perms + "grant", json={**grant, "permission": "EDIT"}).ok
    assert log() == 200
    assert session.post(perms + "revoke", json=grant).ok
    assert log() == 403
