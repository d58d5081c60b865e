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


def client_env(settings, user: str, password: str) -> dict:
    # Bounded client retries (~1 min of backoff): enough to ride out a stack restart, not enough to
    # stall a test for the client's default of several minutes.
    return {
        **settings.client_env(auth=(user, password)),
        "PYTHONWARNINGS": "ignore",
        "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "5",
        "MLFLOW_HTTP_REQUEST_TIMEOUT": "60",
    }


@contextlib.contextmanager
def environment(env: dict):
    """Run in-process with exactly ENV as the environment (MLflow reads credentials from it per
    request); pytest's monkeypatch puts the old one back."""
    with pytest.MonkeyPatch.context() as mp:
        for key in set(os.environ) - set(env):
            mp.delenv(key)
        for key, value in env.items():
            mp.setenv(key, value)
        yield


def run_cli(env: dict, *args, in_process=True, timeout=180) -> subprocess.CompletedProcess:
    """`./mlflowctl ARGS` as a user runs it. In-process by default (importing mlflow costs ~3 s a
    process on 2 cores); in_process=False runs the real `python -m ctl` process."""
    if not in_process:
        return subprocess.run(
            [sys.executable, "-m", "ctl", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
        )
    from ctl.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with environment(env), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse usage errors
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


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
def admin_env(stack, settings, admin_auth) -> dict:
    return client_env(settings, *admin_auth)


@pytest.fixture(scope="session")
def teams_setup(admin_env, tmp_path_factory, stack, settings) -> dict:
    """Two teams (a, b), each with one CI user, applied once with `mlflowctl teams`."""
    tmp = tmp_path_factory.mktemp("teams")
    a, b = f"ta{SESSION}", f"tb{SESSION}"
    spec = {
        "experiment_types": ["training"],
        "teams": [
            {
                "name": a,
                "project_prefixes": [f"pa{SESSION}"],
                "members": [{"username": f"{a}-ci", "permission": "EDIT"}],
            },
            {
                "name": b,
                "project_prefixes": [f"pb{SESSION}"],
                "members": [{"username": f"{b}-ci", "permission": "EDIT"}],
            },
        ],
    }
    teams_file, creds = tmp / "teams.yaml", tmp / "credentials.json"
    teams_file.write_text(yaml.safe_dump(spec))
    out = run_cli(admin_env, "teams", "--file", str(teams_file), "--credentials-out", str(creds))
    assert out.returncode == 0, out.stderr
    passwords = json.loads(creds.read_text())
    assert oct(creds.stat().st_mode & 0o777) == "0o600"

    def env_of(team):
        user = f"{team}-ci"
        return client_env(settings, user, passwords[user])

    return {
        "file": teams_file,
        "a": a,
        "b": b,
        "prefix_a": f"pa{SESSION}",
        "prefix_b": f"pb{SESSION}",
        "env_a": env_of(a),
        "env_b": env_of(b),
        "experiment_a": f"{a}/pa{SESSION}/training",
        "experiment_b": f"{b}/pb{SESSION}/training",
    }


@pytest.fixture(scope="session")
def trained(teams_setup) -> list:
    """Two runs of the example training script by team a's CI user (different seeds)."""
    env = teams_setup["env_a"]
    return [
        run_train(env, "--experiment", teams_setup["experiment_a"], "--seed", str(seed), "--epochs", "20")
        for seed in (1, 2)
    ]
