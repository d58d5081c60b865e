"""Secrets from .env stay out of git history and command lines; secret files are private.

Already in test_smoke.py: .env, certs/ca.key, certs/server.key are 0600, and PgBouncer's auth file
is 0600 and owned by PgBouncer's user. Here: every key in certs/ and every rendered secret file.
The admin password against MLflow's default `password1234` is in test_security_auth.py.
"""
import stat
import subprocess

import pytest

from scripts import render

from tests.conftest import ROOT

SECRET_NAME_PARTS = ("PASSWORD", "SECRET", "ACCESS_KEY")


@pytest.fixture(scope="module")
def secret_values(stack_env) -> dict:
    values = {k: v for k, v in stack_env.items() if any(p in k for p in SECRET_NAME_PARTS) and len(v) >= 8}
    assert {"POSTGRES_PASSWORD", "MLFLOW_DB_PASSWORD", "MLFLOW_ADMIN_PASSWORD"} <= set(values)
    return values


def test_no_secret_in_git_history(secret_values):
    log = subprocess.run(["git", "-C", str(ROOT), "log", "-p", "--all"], capture_output=True, text=True,
                         timeout=120, errors="replace")
    assert log.returncode == 0, log.stderr
    assert not [k for k, v in secret_values.items() if v in log.stdout]


def test_no_secret_on_any_command_line(secret_values):
    args = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True, timeout=30).stdout
    leaked = [k for k, v in secret_values.items() if v in args]
    assert not leaked, f"on a command line: {leaked}"


@pytest.mark.parametrize("key", sorted(p.name for p in (ROOT / "certs").glob("*.key")) or ["(none)"])
def test_every_private_key_is_0600(key):
    assert key != "(none)", "no keys in certs/"
    mode = stat.S_IMODE((ROOT / "certs" / key).stat().st_mode)
    assert mode == 0o600, oct(mode)


@pytest.mark.parametrize("rel", sorted(render.SECRET_FILES))
def test_rendered_secret_files_private(stack, backend, rel):
    if backend != "native":
        pytest.skip("native paths (var/volumes); in compose the files live in named volumes")
    subdir, name = rel.split("/")
    path = ROOT / "var" / "volumes" / f"rendered-{subdir}" / name
    mode = stat.S_IMODE(path.stat().st_mode)
    assert mode == 0o600 and not mode & (stat.S_IRWXG | stat.S_IRWXO), oct(mode)
