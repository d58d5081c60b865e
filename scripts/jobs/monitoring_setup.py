"""One-shot of the `monitoring` profile (compose service `monitoring-setup`): the monitoring identity.

MONITORING_USER with MONITORING_PASSWORD (random at bootstrap) becomes, idempotently:
- a PostgreSQL role with LOGIN and `pg_monitor` only (statistics and settings, no table data),
  for postgres-exporter; connected DIRECTLY to PostgreSQL as the superuser, like `migrate`;
- an MLflow basic-auth user without admin rights and, with `default_permission = NO_PERMISSIONS`,
  without access to any experiment or model: Prometheus scrapes /metrics with it. Written into the
  auth database as the `mlflow` role, so it works whatever the admin's current password is.
PgBouncer's stats user needs no role: PgBouncer checks it against its own auth file
(pgbouncer/userlist.txt.template). Setting the passwords on every run makes a rotated
MONITORING_PASSWORD take effect.
"""

import os
import sys

import psycopg2
from psycopg2 import sql


def ensure_db_role(host: str, port: str, admin: str, admin_password: str, user: str, password: str):
    conn = psycopg2.connect(host=host, port=port, user=admin, password=admin_password, dbname="postgres")
    conn.autocommit = True
    with conn.cursor() as cur:
        cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (user,))
        verb = "ALTER" if cur.fetchone() else "CREATE"
        cur.execute(
            sql.SQL(verb + " ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD %s").format(
                sql.Identifier(user)
            ),
            (password,),
        )
        cur.execute(sql.SQL("GRANT pg_monitor TO {}").format(sql.Identifier(user)))
    conn.close()


def ensure_mlflow_user(auth_db_uri: str, user: str, password: str) -> str:
    from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(auth_db_uri)
    if not store.has_user(user):
        store.create_user(user, password, is_admin=False)
        return "created"
    if not store.authenticate_user(user, password) or store.get_user(user).is_admin:
        store.update_user(user, password=password, is_admin=False)
        return "updated"
    return "unchanged"


def main() -> int:
    env = os.environ
    host, port, user = env["POSTGRES_HOST"], env["POSTGRES_PORT"], env["MONITORING_USER"]
    ensure_db_role(
        host, port, env.get("POSTGRES_USER", "postgres"), env["POSTGRES_PASSWORD"], user, env["MONITORING_PASSWORD"]
    )
    print(f"monitoring-setup: PostgreSQL role {user} (pg_monitor) ready", flush=True)
    state = ensure_mlflow_user(
        f"postgresql+psycopg2://mlflow@{host}:{port}/mlflow_auth", user, env["MONITORING_PASSWORD"]
    )
    print(f"monitoring-setup: MLflow user {user} (no admin, no permissions) {state}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
