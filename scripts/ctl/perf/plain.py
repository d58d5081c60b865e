"""The targets: the stack through Nginx, and for `benchmark` the `plain-mlflow` server (compose
profile `benchmark`) with the raw PostgreSQL insert ceiling measured beside it."""

import time

from ctl import engine
from ctl import stackexec as sx
from ctl.errors import CommandError
from ctl.perf import measure
from ctl.settings import Settings


def stack_target(settings: Settings, extra_env: dict = None) -> dict:
    """Our stack through Nginx/TLS with the admin's credentials and our CA."""
    return {"env": {**settings.client_env(), **(extra_env or {})}, "db": "mlflow"}


def http_ok(url: str) -> bool:
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status == 200
    except Exception:
        return False


def ensure_database(db: str, owner: str = "mlflow"):
    """CREATE DATABASE DB OWNER OWNER unless it exists (psql in the postgres container)."""
    if not sx.psql("SELECT 1 FROM pg_database WHERE datname = :'db'", "postgres", {"db": db}):
        sx.psql('CREATE DATABASE :"db" OWNER :"owner"', "postgres", {"db": db, "owner": owner})


class PlainServer:
    """`plain-mlflow` (compose profile `benchmark`): `mlflow server` with its defaults (uvicorn, no
    auth, no TLS, no PgBouncer) in the same engine, published on 127.0.0.1:5001 only. Its database:
    mlflow_plain on the stack's PostgreSQL, or with own_postgres on `plain-postgres`, the same
    PostgreSQL image with its stock settings. Started for the comparison and removed afterwards."""

    SERVICE, DB, OWN_DB_SERVICE = "plain-mlflow", "mlflow_plain", "plain-postgres"
    PROFILES = ("local", "benchmark")

    def __init__(self, settings: Settings, own_postgres: bool = False):
        self.settings, self.own_postgres = settings, own_postgres
        self.uri = f"http://127.0.0.1:{settings.env.get('PLAIN_MLFLOW_PORT', '5001')}"  # as the compose file
        self.services = [self.OWN_DB_SERVICE, self.SERVICE] if own_postgres else [self.SERVICE]
        self.env = {"PLAIN_MLFLOW_DB_HOST": self.OWN_DB_SERVICE if own_postgres else "postgres"}

    def __enter__(self):
        if not self.own_postgres:
            ensure_database(self.DB)
        engine.start_ticker(sx.eng())  # podman: `--wait` needs the health checks run (no-op when running)
        engine.log(f"starting {' and '.join(self.services)} (compose profile benchmark)")
        sx.run(
            "up",
            "--detach",
            "--wait",
            "--wait-timeout",
            "300",
            "--no-deps",
            "--force-recreate",  # PLAIN_MLFLOW_DB_HOST may differ from the last run's
            *self.services,
            profiles=self.PROFILES,
            env=self.env,
            timeout=400,
        )
        deadline = time.monotonic() + 120
        while not http_ok(f"{self.uri}/health"):
            if time.monotonic() > deadline:
                raise CommandError(
                    f"{self.SERVICE} does not answer on {self.uri}; "
                    f"see `./mlflowctl compose --profile benchmark logs {self.SERVICE}`"
                )
            time.sleep(1)
        containers = {"mlflow": engine.container_name(self.SERVICE)}
        if self.own_postgres:
            containers["postgres"] = engine.container_name(self.OWN_DB_SERVICE)
        return {
            "env": self.settings.client_env(url=self.uri),
            "db": self.DB,
            # The no-loss count: psql in the stack's postgres container, over TCP to plain-postgres.
            "db_tcp": {
                "host": self.OWN_DB_SERVICE,
                "port": 5432,
                "user": "mlflow",
                "password": self.settings.env["MLFLOW_DB_PASSWORD"],
            }
            if self.own_postgres
            else None,
            "containers": measure.components(containers),
        }

    def __exit__(self, *exc):
        sx.run("rm", "--stop", "--force", "--volumes", *self.services, profiles=self.PROFILES, timeout=120, check=False)


# Runs in the plain-mlflow container (our image, on the backend network): SECONDS CONNECTIONS ROWS.
CEILING_CODE = r"""
import sys, threading, time, uuid
import psycopg2
from psycopg2.extras import execute_values
seconds, connections, rows_per_insert = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
dsn = "host=postgres port=5432 user=mlflow dbname=mlflow_plain"  # password: PGPASSWORD of the service
with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
    cur.execute("DROP TABLE IF EXISTS metrics_ceiling; CREATE TABLE metrics_ceiling (LIKE metrics INCLUDING ALL)")
conn.close()
counts = [0] * connections
def insert(i):
    c = psycopg2.connect(dsn)
    run_uuid, deadline, step = uuid.uuid4().hex, time.monotonic() + seconds, 0
    with c.cursor() as cur:
        while time.monotonic() < deadline:
            rows = [(f"m{k % 10}", float(k), int(time.time() * 1000), run_uuid, step + k // 10, False)
                    for k in range(rows_per_insert)]
            execute_values(cur, "INSERT INTO metrics_ceiling (key, value, timestamp, run_uuid, step, is_nan) VALUES %s", rows)
            c.commit()  # one transaction per request, as MLflow commits per log_batch
            counts[i] += rows_per_insert
            step += rows_per_insert // 10
    c.close()
t0 = time.monotonic()
threads = [threading.Thread(target=insert, args=(i,)) for i in range(connections)]
for t in threads:
    t.start()
for t in threads:
    t.join(seconds + 120)
rate = sum(counts) / (time.monotonic() - t0)
with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
    cur.execute("DROP TABLE metrics_ceiling")
conn.close()
print(round(rate, 1))
"""


def insert_ceiling(seconds: float = 10, connections: int = 4, rows_per_insert: int = 1000) -> float:
    """Rows/s of the same metric rows inserted straight into PostgreSQL (no MLflow, no HTTP), from
    inside the engine's network (the plain-mlflow container, which must be up)."""
    out = sx.python(
        CEILING_CODE, seconds, connections, rows_per_insert, service=PlainServer.SERVICE, timeout=seconds + 300
    )
    return float(out.stdout.strip().splitlines()[-1])
