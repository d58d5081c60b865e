"""PostgreSQL for the store tests.

`pg_admin_dsn` is the ONLY place that knows where PostgreSQL comes from: a throwaway container of
the stack's own PostgreSQL image (the official pin, or its offline stand-in), run by the engine
`./mlflowctl up` uses, published on 127.0.0.1 only. Everything else creates and drops its own
scratch databases through that superuser DSN.
"""

import secrets
import subprocess
import tempfile
import time
import uuid
from contextlib import contextmanager

import psycopg2
import pytest

from ctl import engine


def postgres_image() -> str:
    variable = "POSTGRES_IMAGE"
    return engine.read_images_env().get(variable) or engine.image_variables()[variable]


@pytest.fixture(scope="session")
def pg_admin_dsn():
    """A superuser DSN (psycopg2 / libpq key=value form) of a PostgreSQL for scratch databases."""
    eng = engine.ensure(start=False)
    password = secrets.token_hex(16)
    name = f"store-test-pg-{uuid.uuid4().hex[:8]}"
    started = subprocess.run(
        [
            *eng.cli,
            "run",
            "-d",
            "--rm",
            "--name",
            name,
            "-e",
            "POSTGRES_PASSWORD",
            "-p",
            "127.0.0.1::5432",
            postgres_image(),
            "postgres",
            "-c",
            "fsync=off",
            "-c",
            "full_page_writes=off",
        ],  # scratch data only
        env={**eng.env, "POSTGRES_PASSWORD": password},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert started.returncode == 0, started.stderr
    try:
        port = (
            subprocess.run(
                [*eng.cli, "port", name, "5432/tcp"], env=eng.env, capture_output=True, text=True, timeout=30
            )
            .stdout.split(":")[-1]
            .strip()
        )
        dsn = f"host=127.0.0.1 port={port} user=postgres password={password} dbname=postgres"
        deadline = time.monotonic() + 90
        while True:
            try:
                psycopg2.connect(dsn, connect_timeout=2).close()
                break
            except psycopg2.OperationalError as exc:
                if time.monotonic() > deadline:
                    logs = subprocess.run([*eng.cli, "logs", name], env=eng.env, capture_output=True, text=True)
                    pytest.fail(f"postgres not ready after 90 s ({exc}):\n{logs.stdout}{logs.stderr}")
                time.sleep(0.2)  # poll interval of a deadline-bounded readiness loop
        yield dsn
    finally:
        subprocess.run([*eng.cli, "rm", "-f", "-v", name], env=eng.env, capture_output=True, timeout=60)


def _sqlalchemy_uri(dsn: str, dbname: str) -> str:
    p = dict(kv.split("=", 1) for kv in dsn.split())
    return f"postgresql+psycopg2://{p['user']}:{p['password']}@{p['host']}:{p['port']}/{dbname}"


def _admin_exec(dsn: str, sql: str) -> None:
    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # CREATE/DROP DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute(sql)
    finally:
        conn.close()


@pytest.fixture(scope="session")
def scratch_db(pg_admin_dsn):
    """Factory: `with scratch_db(template=None) as uri:` a fresh database, dropped afterwards."""

    @contextmanager
    def make(template: str | None = None):
        name = f"t_{uuid.uuid4().hex[:12]}"
        _admin_exec(pg_admin_dsn, f'CREATE DATABASE "{name}"' + (f' TEMPLATE "{template}"' if template else ""))
        try:
            yield _sqlalchemy_uri(pg_admin_dsn, name)
        finally:
            _dispose_engines(name)
            _admin_exec(pg_admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)')

    return make


@pytest.fixture(scope="session")
def mlflow_template(pg_admin_dsn):
    """Name of a database with MLflow's tracking schema, to copy with CREATE DATABASE ... TEMPLATE
    (migrating each scratch database anew takes seconds)."""
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    name = f"tmpl_{uuid.uuid4().hex[:12]}"
    _admin_exec(pg_admin_dsn, f'CREATE DATABASE "{name}"')
    SqlAlchemyStore(_sqlalchemy_uri(pg_admin_dsn, name), tempfile.mkdtemp(prefix="store-art-"))
    _dispose_engines(name)  # a template must have no open connection
    yield name
    _admin_exec(pg_admin_dsn, f'DROP DATABASE "{name}" WITH (FORCE)')


def _dispose_engines(dbname: str) -> None:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    for uri in [u for u in SqlAlchemyStore._engine_map if u.endswith(f"/{dbname}")]:
        SqlAlchemyStore._engine_map.pop(uri).dispose()
