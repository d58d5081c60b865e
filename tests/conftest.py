"""Shared test fixtures.

tests/unit   fast, no stack (configs, renderer, bootstrap, compose model, Dockerfile)
tests/stack  against the running stack (`./mlflowctl up`), real mlflow client through Nginx/TLS
tests/infra  Pulumi program under mocks, IAM against a local S3 server
"""

import os
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from ctl.errors import CommandError
from ctl.settings import CA_OVERRIDES, ROOT, Settings

SUITES = ("unit", "store", "stack", "infra")
# The lifecycle tests' fixtures (admin_env, teams_setup, trained); pytest takes plugins only here.
pytest_plugins = ["tests.stack.lifecycle_fixtures"]


def pytest_collection_modifyitems(items):
    """Each test gets the marker of its suite (its directory under tests/)."""
    for item in items:
        suite = Path(item.path).relative_to(ROOT / "tests").parts[0]
        if suite in SUITES:
            item.add_marker(suite)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def self_signed_cert(common_name: str, key: Path, cert: Path):
    """A throwaway self-signed certificate (one day) for a server a test starts."""
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={common_name}",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip


def poll(what: str, check, deadline_s: float, every_s: float = 0.5):
    """Call check() every EVERY_S seconds until it returns something truthy, and return that.

    It is tried once more at the deadline; then AssertionError names WHAT and check()'s last (falsy)
    answer. An exception from check() is not caught: it fails the test at once.
    """
    deadline = time.monotonic() + deadline_s
    while True:
        last = check()
        if last:
            return last
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"{what}: not within {deadline_s:g}s (last: {last!r})")
        time.sleep(min(every_s, left))  # poll interval of a deadline-bounded loop


@pytest.fixture(scope="session")
def settings() -> Settings:
    try:
        return Settings.load()
    except CommandError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def stack_env(settings) -> dict:
    return settings.env


@pytest.fixture(scope="session")
def ca_bundle(settings) -> str:
    return str(settings.ca_path)


@pytest.fixture(scope="session")
def base_url(settings) -> str:
    return settings.public_url


@pytest.fixture(scope="session")
def admin_auth(settings) -> tuple:
    return settings.admin_auth


@pytest.fixture(scope="session")
def http(settings):
    """requests session trusting only our CA (the machine's CA env variables would override verify=)."""
    return settings.http()


@pytest.fixture(scope="session")
def stack(http, base_url):
    """The running stack: /health through Nginx, polled with a deadline."""
    deadline, last = time.monotonic() + 60, None
    while time.monotonic() < deadline:
        try:
            if http.get(f"{base_url}/health", timeout=5).status_code == 200:
                return base_url
        except requests.RequestException as exc:
            last = exc
        time.sleep(1)
    pytest.fail(f"stack not answering at {base_url}/health ({last}): run `./mlflowctl up`")


@pytest.fixture
def mlflow_admin(stack, settings, monkeypatch):
    """The real mlflow client, configured like a user would: URI, basic auth, our CA (not INSECURE_TLS)."""
    import mlflow

    for var in CA_OVERRIDES:
        monkeypatch.delenv(var, raising=False)
    for key, value in settings.client_env(base={}).items():
        monkeypatch.setenv(key, value)
    mlflow.set_tracking_uri(stack)
    mlflow.set_registry_uri(stack)
    yield mlflow.MlflowClient(tracking_uri=stack, registry_uri=stack)
    mlflow.set_tracking_uri(None)


@pytest.fixture
def unique(request) -> str:
    """A name no earlier run used: tests share one long-lived stack."""
    return f"{request.node.name[:40]}-{os.getpid()}-{time.time_ns()}"
