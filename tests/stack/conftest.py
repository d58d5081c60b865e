"""Fixtures for tests against the running stack: the compose containers in the engine.

Each service is its container (`podman://mlflow-SERVICE-1` or `docker://...`, whichever engine
`./mlflowctl up` used); testinfra runs its commands inside it. Checks use only what the official
images ship (cat, stat, the services' own clients): no `ps`, `ss` or `netstat`, which the slim
images lack. Processes come from the engine (`compose top`), listening sockets from /proc/net.
"""
import pytest
import testinfra

from scripts import engine


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
