"""Secrets from .env stay out of git history and command lines; secret files are private.

Already in test_smoke.py: .env, certs/ca.key, certs/server.key are 0600, and PgBouncer's auth file
is 0600 and owned by PgBouncer's user. Here: every key in certs/, every rendered secret file as the
container that mounts it sees it, and the command lines of this host's processes AND of every
process in the stack's containers (the engine's `top`).
The admin password against MLflow's default `password1234` is in test_security_auth.py.
"""

import stat
import subprocess

import pytest

from ctl import engine
from jobs import render
from tests.conftest import ROOT

SECRET_NAME_PARTS = ("PASSWORD", "SECRET", "ACCESS_KEY")


@pytest.fixture(scope="module")
def secret_values(stack_env) -> dict:
    values = {k: v for k, v in stack_env.items() if any(p in k for p in SECRET_NAME_PARTS) and len(v) >= 8}
    assert {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD"} <= set(values)
    return values


def test_no_secret_in_git_history(secret_values):
    log = subprocess.run(
        ["git", "-C", str(ROOT), "log", "-p", "--all"], capture_output=True, text=True, timeout=120, errors="replace"
    )
    assert log.returncode == 0, log.stderr
    assert not [k for k, v in secret_values.items() if v in log.stdout]


def container_command_lines(eng, compose) -> dict:
    """Container -> every process's command line, listed by the engine (`top`), so the images need
    no `ps`. (`docker compose top` answers "EOF" through podman 4.3's Docker API: the engine's
    own CLI is used, with its own syntax for the columns.)"""
    names = compose("ps", "--format", "{{.Name}}").stdout.split()
    columns = ["pid", "args"] if eng.kind == "podman" else ["-eo", "pid,args"]
    out = {}
    for name in names:
        top = subprocess.run([*eng.cli, "top", name, *columns], capture_output=True, text=True, timeout=60, env=eng.env)
        assert top.returncode == 0, top.stderr
        out[name] = top.stdout
    return out


def test_no_secret_on_any_command_line(secret_values, eng, compose):
    args = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30).stdout
    leaked = [k for k, v in secret_values.items() if v in args]
    assert not leaked, f"on a host command line: {leaked}"
    # Inside the containers (their own pid namespaces), every running container of the stack.
    tops = container_command_lines(eng, compose)
    name = engine.container_name
    assert {name(s) for s in ("postgres", "pgbouncer", "mlflow", "nginx")} <= set(tops), sorted(tops)
    assert "gunicorn" in tops[name("mlflow")] and "pgbouncer" in tops[name("pgbouncer")]  # real command lines
    leaked = {name: [k for k, v in secret_values.items() if v in text] for name, text in tops.items()}
    assert not {name: keys for name, keys in leaked.items() if keys}, "on a command line inside a container"


@pytest.mark.parametrize("key", sorted(p.name for p in (ROOT / "certs").glob("*.key")) or ["(none)"])
def test_every_private_key_is_0600(key):
    assert key != "(none)", "no keys in certs/"
    mode = stat.S_IMODE((ROOT / "certs" / key).stat().st_mode)
    assert mode == 0o600, oct(mode)


@pytest.mark.parametrize("rel", sorted(render.SECRET_FILES))
def test_rendered_secret_files_private(stack, compose_services, service_host, rel):
    """Each rendered secret file, inside every running container that mounts its volume."""
    subdir, name = rel.split("/")
    mounts = [
        (svc_name, vol["target"])
        for svc_name, svc in compose_services.items()
        if svc_name != "render-config" and svc.get("restart") != "no"
        for vol in svc.get("volumes", [])
        if vol.get("source") == f"rendered-{subdir}"
    ]
    if not mounts and subdir == "prometheus":
        pytest.skip("monitoring profile not running; tests/stack/test_monitoring.py checks this file in it")
    assert mounts, f"no long-running service mounts rendered-{subdir}"
    for svc_name, target in mounts:
        f = service_host(svc_name).file(f"{target}/{name}")
        assert f.is_file, (svc_name, f.path)
        assert f.mode == 0o600 and not f.mode & (stat.S_IRWXG | stat.S_IRWXO), (svc_name, oct(f.mode))
