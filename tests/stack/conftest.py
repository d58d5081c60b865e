"""Fixtures for tests against the running stack: the compose containers in the engine.

Each service is its container (`podman://mlflow-SERVICE-1` or `docker://...`, whichever engine
`./mlflowctl up` used); testinfra runs its commands inside it. Checks use only what the official
images ship (cat, stat, the services' own clients): no `ps`, `ss` or `netstat`, which the slim
images lack. Processes come from the engine (`compose top`), listening sockets from /proc/net.
"""

import json
import subprocess

import pytest
import testinfra

from ctl import engine
from tests.stack import browser


@pytest.fixture(scope="session")
def eng():
    return engine.ensure(start=False)


@pytest.fixture(scope="session")
def compose_services(stack, eng) -> dict:
    return engine.model(eng)["services"]


@pytest.fixture(scope="session")
def repo_host():
    """Where the repository (.env, certs/) lives: this machine."""
    return testinfra.get_host("local://")


@pytest.fixture(scope="session")
def service_host(eng):
    def get(service: str):
        return testinfra.get_host(f"{eng.kind}://{engine.container_name(service)}")

    return get


@pytest.fixture(scope="session")
def compose(eng):
    """Run `docker compose ARGS` for the stack; returns the CompletedProcess (text, captured)."""

    def run(*args, check=True, timeout=300):
        return engine.compose(eng, *args, check=check, capture=True, timeout=timeout)

    return run


@pytest.fixture(scope="session")
def bring_up(eng):
    """Start services again after a test stopped them, without recreating anything (engine.up)."""

    def run(*services):
        proc = engine.up(eng, *services, timeout_s=300, capture=True)
        assert proc.returncode == 0, proc.stderr[-2000:]

    return run


@pytest.fixture(scope="session")
def run_in_image(eng):
    """Run Python CODE in a throwaway container of the mlflow service (`compose run`: our image, its
    entrypoint, the stack's networks) and return the JSON object the code prints last. podman 4.3's
    API always returns 0 from `compose run`, so that line, printed only when every step worked, is
    the check."""

    def run(code: str, *options, input: str = None) -> dict:
        cmd = engine.compose_args() + ["run", "--rm", "--no-deps", "-T", *options, "mlflow", "python", "-c", code]
        proc = subprocess.run(
            cmd, input=input, env=eng.env, cwd=engine.ROOT, capture_output=True, text=True, timeout=180
        )
        lines = proc.stdout.strip().splitlines()
        assert proc.returncode == 0 and lines and lines[-1].startswith("{"), proc.stderr[-2000:]
        return json.loads(lines[-1])

    return run


@pytest.fixture
def chromium(tmp_path):
    """Headless Chromium's DevTools (tests/stack/browser.py), for one test."""
    if not browser.CHROMIUM:
        pytest.fail("chromium not installed: run `./mlflowctl install`")
    with browser.chromium(tmp_path / "profile") as devtools:
        yield devtools
