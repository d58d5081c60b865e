"""Fixtures for the infra tests: Pulumi mocks (no AWS here) and a local IAM-enforcing S3 server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from infra.mockrun import ensure_mocks, run_stack
from tests.conftest import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

# Pulumi keeps one global runtime: configure the mocks once, when this conftest is imported.
ensure_mocks()


@pytest.fixture(scope="session")
def dev_run():
    return run_stack("dev")


@pytest.fixture(scope="session")
def prod_run():
    return run_stack("prod")


@pytest.fixture(scope="session", params=["dev", "prod"])
def stack_run(request, dev_run, prod_run):
    return {"dev": dev_run, "prod": prod_run}[request.param]


def _wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise TimeoutError(f"{what} not ready after {timeout}s")


class MotoServer:
    def __init__(self, endpoint: str):
        self.endpoint = endpoint

    def enforce_iam(self, enabled: bool) -> None:
        """From now on every request is authorised against IAM (or not, for setup)."""
        body = b"0" if enabled else b"inf"
        req = urllib.request.Request(
            f"{self.endpoint}/moto-api/reset-auth", data=body, method="POST", headers={"Content-Type": "text/plain"}
        )  # else Flask eats the body
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200

    def reset(self) -> None:
        req = urllib.request.Request(f"{self.endpoint}/moto-api/reset", data=b"", method="POST")
        with urllib.request.urlopen(req, timeout=10) as resp:
            assert resp.status == 200


@pytest.fixture(scope="session")
def moto_server(tmp_path_factory):
    """moto's S3/IAM/Secrets Manager server on 127.0.0.1 (AWS itself cannot be reached here)."""
    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("w")
    env = {**os.environ, "MOTO_PORT": str(port)}
    proc = subprocess.Popen(
        [str(VENV_BIN / "python"), "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    endpoint = f"http://127.0.0.1:{port}"

    def up() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"{endpoint}/moto-api/data.json", timeout=1):
                return True
        except OSError:
            return False

    try:
        _wait_until(up, 60, "moto server")
        yield MotoServer(endpoint)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def iam_json(doc: dict) -> str:
    return json.dumps(doc)
