"""Fixtures for tests against the running stack, native or in compose containers.

`--stack-backend native` (default): every service is a process on this host (`local://`), and a
container path is read where the native runner maps it. `--stack-backend docker`: each service is
its compose container (`docker://mlflow-SERVICE-1`) and container paths are used as they are.
"""
import pytest
import testinfra

from scripts import native

PROJECT = "mlflow"  # `name:` in docker-compose.production.yml


@pytest.fixture(scope="session")
def backend(request) -> str:
    return request.config.getoption("--stack-backend")


@pytest.fixture(scope="session")
def compose_services(stack) -> dict:
    return native.compose_model()["services"]


@pytest.fixture(scope="session")
def repo_host():
    """Where the repository (.env, certs/) lives: this machine in both backends."""
    return testinfra.get_host("local://")


@pytest.fixture(scope="session")
def service_host(backend, repo_host):
    def get(service: str):
        return repo_host if backend == "native" else testinfra.get_host(f"docker://{PROJECT}-{service}-1")
    return get


@pytest.fixture(scope="session")
def service_path(backend, compose_services):
    """A path as the service's process sees it (its mounts)."""
    def get(service: str, container_path: str) -> str:
        if backend == "docker":
            return container_path
        return native.Service(service, compose_services[service]).map(container_path)
    return get
