"""Fixtures for the day-2 operations tests (imported by tests/stack/test_lifecycle*.py).

Every name is unique per test session: the stack is long-lived and shared with other test files.
"""
import contextlib
import importlib.util
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
SESSION = f"{os.getpid() % 100000}x{time.time_ns() % 10**9}"  # lowercase alnum: fits team/prefix names
# The tracking DB through PgBouncer, as `mlflow gc` needs it: on the engine's internal network, so
# the purge runs there (run_cli_in_engine), as docs/lifecycle.md tells operators to run it.
BACKEND_STORE_URI = "postgresql+psycopg2://mlflow@pgbouncer:6432/mlflow"
ENGINE_TRACKING_URI = "http://mlflow:5000"  # the server itself, from inside the engine's network
# Runs `python -m scripts ARGS` (mlflowctl) in the mlflow container after the secrets prelude.
CLI_CODE = "import runpy, sys; sys.argv = ['mlflowctl', *sys.argv[1:]]; runpy.run_module('scripts', run_name='__main__')"


def client_env(base: dict, stack: str, user: str, password: str, ca_bundle: str) -> dict:
    env = {k: v for k, v in base.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env.update(MLFLOW_TRACKING_URI=stack, MLFLOW_TRACKING_USERNAME=user, MLFLOW_TRACKING_PASSWORD=password,
               MLFLOW_TRACKING_SERVER_CERT_PATH=ca_bundle, PYTHONWARNINGS="ignore",
               # Bounded client retries (~1 min of backoff): enough to ride out a stack restart, not
               # enough to stall a test for the client's default of several minutes.
               MLFLOW_HTTP_REQUEST_MAX_RETRIES="5", MLFLOW_HTTP_REQUEST_TIMEOUT="60",
               MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD="false")
    return env


@contextlib.contextmanager
def environment(env: dict):
    """Run in-process with exactly ENV as os.environ (MLflow reads credentials from it per request)."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


def run_cli(env: dict, *args, in_process=True, timeout=180) -> subprocess.CompletedProcess:
    """`./mlflowctl ARGS` as a user runs it. In-process by default (importing mlflow costs ~3 s a
    process on 2 cores); in_process=False runs the real `python -m scripts` process."""
    if not in_process:
        return subprocess.run([sys.executable, "-m", "scripts", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    from scripts.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def run_cli_in_engine(user: str, password: str, *args, timeout=300) -> subprocess.CompletedProcess:
    """`mlflowctl ARGS` inside the running mlflow container (our image, on the backend network):
    for the steps that need the backend store, which only the engine's network reaches. The
    container's environment supplies MLFLOW_BACKEND_STORE_URI's password (PGPASSWORD) and the S3
    settings; the tracking password goes in on stdin, never on a command line."""
    from scripts import stackexec
    return stackexec.python(CLI_CODE, *args, env={"MLFLOW_TRACKING_URI": ENGINE_TRACKING_URI,
                                                  "MLFLOW_TRACKING_USERNAME": user, "PYTHONWARNINGS": "ignore"},
                            secrets={"MLFLOW_TRACKING_PASSWORD": password}, timeout=timeout, check=False)


def run_train(env: dict, *args) -> dict:
    """examples/train.py's main(), in-process (see run_cli)."""
    spec = importlib.util.spec_from_file_location("example_train", ROOT / "examples" / "train.py")
    train = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(train)
    out = io.StringIO()
    with environment(env), contextlib.redirect_stdout(out):
        assert train.main(list(args)) == 0
    return json.loads(out.getvalue().strip().splitlines()[-1])


@pytest.fixture(scope="session")
def admin_env(stack, admin_auth, ca_bundle) -> dict:
    return client_env(os.environ, stack, *admin_auth, ca_bundle)


@pytest.fixture(scope="session")
def teams_setup(admin_env, tmp_path_factory, stack, ca_bundle) -> dict:
    """Two teams (a, b), each with one CI user, applied once with `mlflowctl teams`."""
    tmp = tmp_path_factory.mktemp("teams")
    a, b = f"ta{SESSION}", f"tb{SESSION}"
    spec = {"experiment_types": ["training"], "teams": [
        {"name": a, "project_prefixes": [f"pa{SESSION}"], "members": [{"username": f"{a}-ci", "permission": "EDIT"}]},
        {"name": b, "project_prefixes": [f"pb{SESSION}"], "members": [{"username": f"{b}-ci", "permission": "EDIT"}]},
    ]}
    teams_file, creds = tmp / "teams.yaml", tmp / "credentials.json"
    teams_file.write_text(yaml.safe_dump(spec))
    out = run_cli(admin_env, "teams", "--file", str(teams_file), "--credentials-out", str(creds))
    assert out.returncode == 0, out.stderr
    passwords = json.loads(creds.read_text())
    assert oct(creds.stat().st_mode & 0o777) == "0o600"

    def env_of(team):
        user = f"{team}-ci"
        return client_env(os.environ, stack, user, passwords[user], ca_bundle)

    return {"file": teams_file, "a": a, "b": b, "prefix_a": f"pa{SESSION}", "prefix_b": f"pb{SESSION}",
            "env_a": env_of(a), "env_b": env_of(b), "experiment_a": f"{a}/pa{SESSION}/training",
            "experiment_b": f"{b}/pb{SESSION}/training"}


@pytest.fixture(scope="session")
def trained(teams_setup) -> list:
    """Two runs of the example training script by team a's CI user (different seeds)."""
    env = teams_setup["env_a"]
    return [run_train(env, "--experiment", teams_setup["experiment_a"], "--seed", str(seed), "--epochs", "20")
            for seed in (1, 2)]


def poll(predicate, deadline_s: float, what: str, interval=0.2):
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {deadline_s}s waiting for {what}")
