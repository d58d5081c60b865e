"""The database connection budget, computed from the files that set its numbers: the mlflow and
pgbouncer services of the resolved compose model (gunicorn workers and threads, the SQLAlchemy
pool, PgBouncer's open-file limit), pgbouncer/*.template and postgres/postgresql.conf.
connection_budget() reads them and refuses any that break an inequality; the Pulumi program
sizes RDS for ECS tasks with the same numbers. No Pulumi import: this is plain file reading."""

from __future__ import annotations

import configparser
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from infra.compose_model import REPO_ROOT, option, placeholder_model
from infra.pgconf import parse_postgresql_conf

# MLflow's log_batch holds one database session while it opens a second.
SESSIONS_PER_THREAD = 2
# SQLAlchemy engines per worker on the backend store's database: MLflow's tracking store and its
# model registry store each cache engines in their own class-level map, so the same URI gets two
# (an auth app, --app-name, adds one on its database).
BACKEND_ENGINES = 2
# The OIDC plugin's database (AUTH_MODE=oidc): MLflow's stores never open it, so its pool need not
# hold MLflow's sessions; its own pool (pgbouncer.ini) still counts towards max_connections.
PLUGIN_DATABASES = {"mlflow_oidc"}
# Connections that bypass the pools: the migrate step, backups, admin sessions.
DIRECT_CONNECTIONS = 15
# What applies when the files leave a number unset: MLflow's --workers, gunicorn's --threads,
# SQLAlchemy's QueuePool, PostgreSQL's reserved slots.
MLFLOW_DEFAULT_WORKERS = 4
GUNICORN_DEFAULT_THREADS = 1
SQLALCHEMY_DEFAULT_POOL, SQLALCHEMY_DEFAULT_OVERFLOW = 5, 10
POSTGRES_RESERVED_DEFAULTS = {"superuser_reserved_connections": 3, "reserved_connections": 0}


class BudgetError(ValueError):
    """The files break an inequality of the connection budget."""


@dataclass(frozen=True)
class Budget:
    workers: int
    threads: int
    pool_size: int
    max_overflow: int
    engines: int  # SQLAlchemy engines per worker, over all databases
    pgbouncer_pools: dict[str, int]  # "database/user" -> pool size
    reserve_pool_size: int
    max_client_conn: int
    pgbouncer_nofile: int
    max_connections: int
    reserved_connections: int  # superuser_reserved_connections + reserved_connections
    user_caps: dict[str, int] = field(default_factory=dict)  # user -> PgBouncer max_user_connections

    @property
    def sessions(self) -> int:
        """Database sessions one server (compose service or ECS task) can hold at once: at worst
        all on one database, each worker's on one engine."""
        return self.workers * self.threads * SESSIONS_PER_THREAD

    @property
    def connections_per_server(self) -> int:
        """Connections one server keeps open: per engine at most pool_size + max_overflow, and at
        most pool_size idle plus those in use (all engines together: threads x 2)."""
        per_worker = min(
            self.engines * (self.pool_size + self.max_overflow),
            self.engines * self.pool_size + self.threads * SESSIONS_PER_THREAD,
        )
        return self.workers * per_worker

    @property
    def pgbouncer_server_connections(self) -> int:
        per_user: dict[str, int] = {}
        for name, pool in self.pgbouncer_pools.items():
            user = name.split("/", 1)[1]
            per_user[user] = per_user.get(user, 0) + pool + self.reserve_pool_size
        return sum(min(n, self.user_caps.get(user, n)) for user, n in per_user.items())

    def max_connections_needed(self, direct_servers: int = 0) -> int:
        """PostgreSQL connections needed: PgBouncer's pools, or, with no PgBouncer (ECS), that
        many servers connecting directly; plus the direct connections and reserved slots."""
        clients = direct_servers * self.connections_per_server if direct_servers else self.pgbouncer_server_connections
        return clients + DIRECT_CONNECTIONS + self.reserved_connections

    def violations(self) -> list[str]:
        w, t, p, o = self.workers, self.threads, self.pool_size, self.max_overflow
        checks = [
            (
                f"workers x threads x 2 <= workers x (pool_size + max_overflow) per engine: "
                f"{w} x {t} x 2 vs {w} x ({p} + {o})",
                self.sessions,
                w * (p + o),
            )
        ]
        checks += [
            (f"workers x threads x 2 <= PgBouncer pool of {pool_name}: {w} x {t} x 2 vs {pool}", self.sessions, pool)
            for pool_name, pool in self.pgbouncer_pools.items()
            if pool_name.split("/", 1)[0] not in PLUGIN_DATABASES
        ]
        checks += [
            ("connections per server <= PgBouncer max_client_conn", self.connections_per_server, self.max_client_conn),
            (
                "PgBouncer max_client_conn + server connections <= its nofile limit",
                self.max_client_conn + self.pgbouncer_server_connections,
                self.pgbouncer_nofile,
            ),
            (
                f"PgBouncer pools x (pool + reserve_pool_size {self.reserve_pool_size}) + "
                f"{DIRECT_CONNECTIONS} direct + {self.reserved_connections} reserved <= max_connections",
                self.max_connections_needed(),
                self.max_connections,
            ),
        ]
        return [f"{rule}: {lhs} > {rhs}" for rule, lhs, rhs in checks if lhs > rhs]


def read_budget(model: dict, root: Path = REPO_ROOT) -> Budget:
    mlflow = model["services"]["mlflow"]
    command, env = mlflow.get("command") or [], mlflow.get("environment") or {}
    gunicorn_opts = option(command, "--gunicorn-opts") or env.get("MLFLOW_GUNICORN_OPTS")
    if not gunicorn_opts:
        raise BudgetError(
            "the mlflow service must run gunicorn (--gunicorn-opts or "
            "MLFLOW_GUNICORN_OPTS): the budget counts its workers x threads"
        )
    # gunicorn: its command line (MLflow's opts) over GUNICORN_CMD_ARGS; MLflow's -w comes last.
    threads = option(shlex.split(gunicorn_opts), "--threads") or option(
        shlex.split(env.get("GUNICORN_CMD_ARGS") or ""), "--threads"
    )
    nofile = model["services"]["pgbouncer"]["ulimits"]["nofile"]

    ini = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    ini.optionxform = str  # keys are names (users, databases): keep their case
    ini.read_string((root / "pgbouncer" / "pgbouncer.ini.template").read_text())
    bouncer = ini["pgbouncer"]
    users = [
        line.split()[0].strip('"')
        for line in (root / "pgbouncer" / "userlist.txt.template").read_text().splitlines()
        if line.strip()
    ]
    pools = {}
    for database, spec in ini["databases"].items():
        params = dict(item.split("=", 1) for item in spec.split())
        pools.update(
            {f"{database}/{user}": int(params.get("pool_size", bouncer["default_pool_size"])) for user in users}
        )

    caps = {
        user: int(dict(item.split("=", 1) for item in spec.split()).get("max_user_connections", 0))
        for user, spec in (ini["users"].items() if ini.has_section("users") else ())
    }
    conf = parse_postgresql_conf((root / "postgres" / "postgresql.conf").read_text())
    return Budget(
        workers=int(option(command, "--workers", "-w") or env.get("MLFLOW_WORKERS") or MLFLOW_DEFAULT_WORKERS),
        threads=int(threads or GUNICORN_DEFAULT_THREADS),
        # MLflow hands these to SQLAlchemy only when set and non-zero.
        pool_size=int(env.get("MLFLOW_SQLALCHEMYSTORE_POOL_SIZE") or 0) or SQLALCHEMY_DEFAULT_POOL,
        max_overflow=(int(env.get("MLFLOW_SQLALCHEMYSTORE_MAX_OVERFLOW") or 0) or SQLALCHEMY_DEFAULT_OVERFLOW),
        engines=BACKEND_ENGINES + (1 if option(command, "--app-name") else 0),
        pgbouncer_pools=pools,
        reserve_pool_size=int(bouncer["reserve_pool_size"]),
        max_client_conn=int(bouncer["max_client_conn"]),
        pgbouncer_nofile=int(nofile["soft"] if isinstance(nofile, dict) else nofile),
        max_connections=int(conf["max_connections"]),
        reserved_connections=sum(int(conf.get(k, v)) for k, v in POSTGRES_RESERVED_DEFAULTS.items()),
        user_caps={user: cap for user, cap in caps.items() if cap},
    )  # 0: no limit


def connection_budget(model: dict | None = None, root: Path = REPO_ROOT) -> Budget:
    """The budget of these files (default: the repository's), checked: BudgetError names every
    inequality that does not hold."""
    budget = read_budget(model or placeholder_model(), root)
    if problems := budget.violations():
        raise BudgetError("connection budget broken:\n  " + "\n  ".join(problems))
    return budget
