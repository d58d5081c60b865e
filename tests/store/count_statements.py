"""Counts the round trips to PostgreSQL that one `log-metric` and one 100-metric `log-batch`
request cost, through the whole app (basic-auth + tracking store), per database: every
statement, BEGIN, COMMIT/ROLLBACK and the pool's pre-ping. Run by test_statement_count.py in a subprocess:
MLflow's Flask app and stores are process globals, so stock and ours each get a fresh process.

usage: count_statements.py TRACKING_URI AUTH_URI APP  (APP: basic-auth | bundle-auth)
Environment: MLFLOW_AUTH_CONFIG_PATH, MLFLOW_AUTH_ADMIN_*, MLFLOW_FLASK_SERVER_SECRET_KEY, and
_MLFLOW_SERVER_FILE_STORE / _MLFLOW_SERVER_ARTIFACT_ROOT (what `mlflow server` hands its workers).
Prints JSON: {"log-metric": {"tracking": n, "auth": n, "log": [[db, statement], ...]}, "log-batch": {...}}.
"""

import base64
import json
import os
import sys
from collections import Counter

tracking_uri, auth_uri, app_name = sys.argv[1:4]

from sqlalchemy import event  # noqa: E402
from sqlalchemy.dialects.postgresql.psycopg2 import PGDialect_psycopg2  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402
from sqlalchemy.engine.interfaces import ExecuteStyle  # noqa: E402

AUTH_DB = auth_uri.rsplit("/", 1)[1]
log: list[list[str]] = []


def _record(dbname: str, statement: str) -> None:
    log.append(["auth" if dbname == AUTH_DB else "tracking", " ".join(statement.split())[:90]])


# What PostgreSQL sees: every cursor execute, BEGIN (psycopg2 sends it before the first
# statement of a transaction), COMMIT/ROLLBACK, and the pool's pre-ping `SELECT 1`.
def _execute(conn, cursor, statement, parameters, context, executemany):
    # psycopg2's executemany sends one statement per parameter set (MLflow's per-row UPDATEs);
    # SQLAlchemy's "insertmanyvalues" batches are already single multi-row statements.
    per_row = executemany and context.execute_style is ExecuteStyle.EXECUTEMANY
    for _ in range(len(parameters) if per_row else 1):
        _record(conn.engine.url.database, statement)


event.listen(Engine, "before_cursor_execute", _execute)
event.listen(Engine, "begin", lambda c: _record(c.engine.url.database, "BEGIN"))
event.listen(Engine, "commit", lambda c: _record(c.engine.url.database, "COMMIT"))
event.listen(Engine, "rollback", lambda c: _record(c.engine.url.database, "ROLLBACK"))
_do_ping = PGDialect_psycopg2.do_ping


def _ping(self, dbapi_connection):
    _record(dbapi_connection.info.dbname, "SELECT 1 (pre-ping)")
    return _do_ping(self, dbapi_connection)


PGDialect_psycopg2.do_ping = _ping

from mlflow.server import _find_app  # noqa: E402

module, attr = _find_app(app_name).split(":")
app = getattr(__import__(module, fromlist=[attr]), attr)()
client = app.test_client()
creds = f"{os.environ['MLFLOW_AUTH_ADMIN_USERNAME']}:{os.environ['MLFLOW_AUTH_ADMIN_PASSWORD']}"
headers = {"Authorization": "Basic " + base64.b64encode(creds.encode()).decode()}


def post(path: str, body: dict) -> dict:
    r = client.post(f"/api/2.0/mlflow/{path}", json=body, headers=headers)
    assert r.status_code == 200, (path, r.status_code, r.data[:300])
    return r.get_json()


exp = post("experiments/create", {"name": "count"})["experiment_id"]
run = post("runs/create", {"experiment_id": exp, "start_time": 0})["run"]["info"]["run_id"]


def batch(step: int) -> dict:
    return {
        "run_id": run,
        "metrics": [
            {"key": f"m{i:03d}", "value": i * 0.5 + step, "timestamp": 1_700_000_000_000 + step, "step": step}
            for i in range(100)
        ],
    }


def measure(path: str, body: dict) -> dict:
    log.clear()
    post(path, body)
    counts = Counter(db for db, _ in log)
    return {"tracking": counts["tracking"], "auth": counts["auth"], "log": list(log)}


# Warm-up: the first batch creates the latest_metrics rows and fills the caches.
post("runs/log-batch", batch(0))
post("runs/log-metric", {"run_id": run, "key": "loss", "value": 1.0, "timestamp": 1_700_000_000_000, "step": 0})
# Steady state: every key's latest row is updated.
result = {
    "log-metric": measure(
        "runs/log-metric", {"run_id": run, "key": "loss", "value": 0.5, "timestamp": 1_700_000_000_001, "step": 1}
    ),
    "log-batch": measure("runs/log-batch", batch(1)),
}
print(json.dumps(result))
