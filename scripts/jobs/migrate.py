"""One-shot database migration (the compose `migrate` service).

Connects DIRECTLY to PostgreSQL (not through PgBouncer in transaction mode), makes sure the
`mlflow` role and the tracking, auth and OIDC plugin databases exist (idempotent: also on RDS,
where no init script runs), then runs `mlflow db upgrade`, the auth DB upgrade and the plugin's
DB upgrade once, before the server starts.
Passwords come from the environment (PGPASSWORD for the tools), never from a command line.
"""

import os
import subprocess
import sys

import psycopg2
from psycopg2 import sql

ROLE = "mlflow"
DATABASES = ("mlflow", "mlflow_auth", "mlflow_oidc")
# mlflow-oidc-auth 11.0.2 has no command for it (its `db upgrade` is not on any entry point).
OIDC_DB_UPGRADE = (
    "import sys, sqlalchemy; from mlflow_oidc_auth.db import utils; "
    "utils.migrate(sqlalchemy.create_engine(sys.argv[1]), 'head')"
)
# The `backup` service's role: reads every table (pg_read_all_data, PostgreSQL 14+), writes nothing.
BACKUP_ROLE = "mlflow_backup"


def ensure_role_and_databases(
    host: str,
    port: str,
    admin: str,
    admin_password: str,
    password: str,
    databases: tuple = DATABASES,
    backup_password: str = "",
):
    conn = psycopg2.connect(host=host, port=port, user=admin, password=admin_password, dbname="postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (ROLE,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        # Setting the password every run makes a rotated MLFLOW_DB_PASSWORD take effect.
        cur.execute(sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(ROLE)), (password,))
        # RDS's master user is no superuser: it may only CREATE DATABASE ... OWNER a role it is in.
        cur.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user")
        if not cur.fetchone()[0]:
            cur.execute(sql.SQL("GRANT {} TO CURRENT_USER").format(sql.Identifier(ROLE)))
        for db in databases:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if not cur.fetchone():
                print(f"migrate: creating database {db}", flush=True)
                cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(ROLE)))
        if backup_password:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (BACKUP_ROLE,))
            verb = "ALTER" if cur.fetchone() else "CREATE"
            cur.execute(
                sql.SQL(verb + " ROLE {} LOGIN PASSWORD %s").format(sql.Identifier(BACKUP_ROLE)), (backup_password,)
            )
            cur.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(BACKUP_ROLE)))
    conn.close()


def main() -> int:
    env = os.environ
    host, port = env["POSTGRES_HOST"], env["POSTGRES_PORT"]
    ensure_role_and_databases(
        host,
        port,
        env.get("POSTGRES_USER", "postgres"),
        env["POSTGRES_PASSWORD"],
        env["MLFLOW_DB_PASSWORD"],
        backup_password=env.get("BACKUP_DB_PASSWORD", ""),
    )
    tool_env = {**env, "PGPASSWORD": env["MLFLOW_DB_PASSWORD"]}
    tool_env.pop("POSTGRES_PASSWORD")
    tool_env.pop("BACKUP_DB_PASSWORD", None)
    # psycopg2 explicitly: SQLAlchemy 2.1 maps bare postgresql:// to psycopg 3, whose prepared statements break behind PgBouncer.
    uri = f"postgresql+psycopg2://{ROLE}@{host}:{port}/"
    steps = [
        ["mlflow", "db", "upgrade", uri + "mlflow"],
        [sys.executable, "-m", "mlflow.server.auth", "db", "upgrade", "--url", uri + "mlflow_auth"],
        # The OIDC plugin's DB (AUTH_MODE=oidc; upgraded in either mode, so a switch finds it
        # ready). Here, once: otherwise each server worker runs the same upgrade as it starts.
        [sys.executable, "-c", OIDC_DB_UPGRADE, uri + "mlflow_oidc"],
    ]
    for step in steps:
        print("migrate: " + " ".join(step), flush=True)
        subprocess.run(step, env=tool_env, check=True)
    print("migrate: done", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
