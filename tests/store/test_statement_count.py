"""Round trips to PostgreSQL per `log-metric` and per 100-metric `log-batch` request, tracking and
auth database together: every statement, BEGIN, COMMIT and the pool's pre-ping `SELECT 1`.

Goal (issue 21): <= GOAL each. The figures of both apps are printed (`-s`) and in docs/benchmarks.md.
"""

import configparser
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
GOAL = 3  # round trips per request (auth + tracking): BEGIN, the one write statement, COMMIT


def _count(tmp_path, tracking_uri: str, auth_uri: str, app: str) -> dict:
    ini = configparser.ConfigParser()
    ini.read(ROOT / "docker" / "basic_auth.ini")  # the production settings (auth cache included)
    ini["mlflow"]["database_uri"] = auth_uri
    config = tmp_path / f"auth-{app}.ini"
    with open(config, "w") as fh:
        ini.write(fh)
    env = {
        **os.environ,
        "MLFLOW_AUTH_CONFIG_PATH": str(config),
        "MLFLOW_AUTH_ADMIN_USERNAME": "admin",
        "MLFLOW_AUTH_ADMIN_PASSWORD": "count-statements-pw-1",
        "MLFLOW_FLASK_SERVER_SECRET_KEY": "k" * 32,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
        "_MLFLOW_SERVER_FILE_STORE": tracking_uri,  # what `mlflow server` hands its workers
        "_MLFLOW_SERVER_ARTIFACT_ROOT": str(tmp_path / "artifacts"),
    }
    out = subprocess.run(
        [sys.executable, str(HERE / "count_statements.py"), tracking_uri, auth_uri, app],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.fixture
def dbs(scratch_db, mlflow_template):
    with scratch_db(mlflow_template) as tracking, scratch_db() as auth:
        yield tracking, auth


def _summary(counts: dict) -> dict:
    return {request: (c["tracking"], c["auth"]) for request, c in counts.items()}


def test_ours_within_goal(dbs, tmp_path):
    tracking, auth = dbs
    ours = _count(tmp_path, tracking.replace("postgresql+psycopg2://", "bundle-postgresql://"), auth, "bundle-auth")
    print("ours (tracking, auth):", _summary(ours), json.dumps(ours, indent=1))
    for request, c in ours.items():
        assert c["tracking"] + c["auth"] <= GOAL, (request, c["log"])


def test_stock_for_comparison(dbs, tmp_path):
    tracking, auth = dbs
    stock = _count(tmp_path, tracking, auth, "basic-auth")
    print("stock (tracking, auth):", _summary(stock))
    assert stock["log-batch"]["tracking"] > 100  # one UPDATE per key: the per-row path this package replaces
