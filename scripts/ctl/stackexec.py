"""Reach the stack's internal services the only way they can be reached: inside the engine.

From the host only Nginx is published (127.0.0.1:443 and :80). PostgreSQL, PgBouncer, MLflow and
the S3 store live on the engine's internal networks, so the tools and tests run there:
- SQL: `psql` in the postgres container as its OS user `postgres` (peer authentication on the
  local socket: no password anywhere), `compose exec -T -u postgres postgres psql ...`;
- Python with boto3/psycopg2/mlflow: our image, in the running `mlflow` container (its environment
  has the S3 endpoint, the AWS keys and PGPASSWORD), `compose exec -T mlflow python -c CODE`.
Code is passed with `-c` and data streamed on stdin/stdout. Secrets never go on a command line
(the host's or the container's): `compose exec -e NAME` without a value is refused ("badly
formed"), so a secret a command needs goes as the first line of its stdin.
"""

import functools
import subprocess

from ctl import engine
from ctl.errors import CommandError
from jobs.backup.tools import psql_argv


@functools.cache
def eng() -> engine.Engine:
    return engine.ensure(start=False)


def compose_argv(*args, profiles=None) -> list:
    return engine.compose_args(profiles) + [str(a) for a in args]


def _env(extra: dict = None) -> dict:
    return {**eng().env, **(extra or {})}


def run(
    *args, input=None, timeout: float = 300, check: bool = True, text: bool = True, env: dict = None, profiles=None
) -> subprocess.CompletedProcess:
    """`docker compose ARGS` for the stack, captured; `input` goes to its stdin."""
    proc = subprocess.run(
        compose_argv(*args, profiles=profiles),
        input=input,
        env=_env(env),
        cwd=engine.ROOT,
        capture_output=True,
        text=text,
        timeout=timeout,
    )
    if check and proc.returncode:
        err = proc.stderr if text else proc.stderr.decode(errors="replace")
        last = (err.strip().splitlines() or ["?"])[-1]
        raise CommandError(f"`docker compose {' '.join(map(str, args[:6]))} ...` failed ({proc.returncode}): {last}")
    return proc


def popen(*args, env: dict = None, **kw) -> subprocess.Popen:
    """`docker compose ARGS` as a process whose stdin/stdout the caller streams."""
    return subprocess.Popen(compose_argv(*args), env=_env(env), cwd=engine.ROOT, **kw)


def pg_argv(tool_argv: list, tcp: dict = None) -> list:
    """A PostgreSQL client tool in the postgres container (its version matches the server's).

    Default: as the OS user `postgres` over the local socket (peer authentication). With
    tcp = {"host", "port", "user", "password"}: over TCP; the caller then sends the password as
    the first line of stdin (pg_stdin_prefix) and the tool reads the rest."""
    if not tcp:
        return ["exec", "-T", "-u", "postgres", "postgres", *tool_argv]
    wrapped = 'IFS= read -r PGPASSWORD; export PGPASSWORD; exec "$@"'
    return [
        "exec",
        "-T",
        "-u",
        "postgres",
        "postgres",
        "sh",
        "-c",
        wrapped,
        "sh",
        *tool_argv,
        "-h",
        tcp["host"],
        "-p",
        str(tcp["port"]),
        "-U",
        tcp["user"],
    ]


def pg_stdin_prefix(tcp: dict = None) -> bytes:
    return (tcp["password"] + "\n").encode() if tcp else b""


def psql(sql: str, db: str = "postgres", variables: dict = None, tcp: dict = None, timeout: float = 120) -> list:
    """Rows (tuples of strings) of SQL run by psql in the postgres container.

    SQL is read from stdin, so psql interpolates VARIABLES: `:'name'` is a quoted literal and
    `:"name"` a quoted identifier (never format values into SQL)."""
    argv = pg_argv(psql_argv(db, variables), tcp)
    out = run(*argv, input=pg_stdin_prefix(tcp).decode() + sql, timeout=timeout).stdout
    return [tuple(line.split("\t")) for line in out.splitlines() if line]


def python_argv(code: str, *args, service: str = "mlflow", env: dict = None, user: str = None) -> list:
    """`python -c CODE ARGS` in a running container of our image (default: `mlflow`), with the
    non-secret variables ENV (`-e NAME=VALUE`)."""
    argv = ["exec", "-T", *(["-u", user] if user else [])]
    for key, value in (env or {}).items():
        argv += ["-e", f"{key}={value}"]
    return argv + [service, "python", "-c", code, *map(str, args)]


def python(
    code: str, *args, service: str = "mlflow", env: dict = None, input=None, timeout: float = 300, check: bool = True
) -> subprocess.CompletedProcess:
    """Run CODE in our image and return the CompletedProcess (text); INPUT goes to its stdin."""
    return run(*python_argv(code, *args, service=service, env=env), input=input, timeout=timeout, check=check)
