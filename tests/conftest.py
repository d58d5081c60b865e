"""Shared test fixtures.

tests/unit   fast, no stack (configs, renderer, bootstrap, compose model, Dockerfile)
tests/stack  against the running stack (`./mlflowctl up`), real mlflow client through Nginx/TLS
tests/infra  Pulumi program under mocks, IAM against a local S3 server
"""
import os
import sys
import time
from pathlib import Path

import pytest
import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.bootstrap import parse_env  # noqa: E402


@pytest.fixture(scope="session")
def stack_env() -> dict:
    env_file = ROOT / ".env"
    if not env_file.exists():
        pytest.fail("no .env: run `./mlflowctl up` first")
    return parse_env(env_file.read_text())


@pytest.fixture(scope="session")
def ca_bundle() -> str:
    return str(ROOT / "certs" / "ca.crt")


@pytest.fixture(scope="session")
def base_url(stack_env) -> str:
    port = stack_env.get("HTTPS_PORT", "443")
    return f"https://{stack_env['MLFLOW_PUBLIC_HOST']}" + ("" if port == "443" else f":{port}")


@pytest.fixture(scope="session")
def admin_auth(stack_env) -> tuple:
    return stack_env["MLFLOW_ADMIN_USERNAME"], stack_env["MLFLOW_ADMIN_PASSWORD"]


@pytest.fixture(scope="session")
def http(ca_bundle):
    """requests session trusting only our CA (the machine's CA env variables would override verify=)."""
    session = requests.Session()
    session.trust_env = False
    session.verify = ca_bundle
    return session


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
def mlflow_admin(stack, admin_auth, ca_bundle, monkeypatch):
    """The real mlflow client, configured like a user would: URI, basic auth, our CA (not INSECURE_TLS)."""
    import mlflow
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
        monkeypatch.delenv(var, raising=False)  # requests lets these override the cert path
    monkeypatch.setenv("MLFLOW_TRACKING_URI", stack)
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", admin_auth[0])
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", admin_auth[1])
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", ca_bundle)
    mlflow.set_tracking_uri(stack)
    mlflow.set_registry_uri(stack)
    yield mlflow.MlflowClient(tracking_uri=stack, registry_uri=stack)
    mlflow.set_tracking_uri(None)


@pytest.fixture
def unique(request) -> str:
    """A name no earlier run used: tests share one long-lived stack."""
    return f"{request.node.name[:40]}-{os.getpid()}-{time.time_ns()}"
