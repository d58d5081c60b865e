"""Config files and the compose model, checked with the real tools (Compose, hadolint, nginx -t)."""
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import native, render
from scripts.bootstrap import ensure_certs, parse_env

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def env_file(tmp_path_factory) -> Path:
    """`.env.example` with placeholder secrets: the checks must not depend on a real `.env`."""
    values = parse_env((ROOT / ".env.example").read_text())
    values.update({k: "test-secret" for k, v in values.items() if not v})
    path = tmp_path_factory.mktemp("env") / "test.env"
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    return path


def compose(env_file, *args, profile=None):
    cmd = [str(VENV_BIN / "docker-compose"), "-f", str(ROOT / "docker-compose.production.yml"),
           "--env-file", str(env_file), "--project-directory", str(ROOT)]
    return subprocess.run(cmd + (["--profile", profile] if profile else []) + list(args),
                          capture_output=True, text=True)


@pytest.mark.parametrize("profile", [None, "local"])
def test_compose_config_quiet(env_file, profile):
    result = compose(env_file, "config", "--quiet", profile=profile)
    assert result.returncode == 0, result.stderr


def test_compose_refuses_missing_secrets(tmp_path):
    empty = tmp_path / "empty.env"
    empty.write_text("")
    result = compose(empty, "config", "--quiet")
    assert result.returncode != 0 and "bootstrap" in result.stderr


@pytest.fixture(scope="module")
def model(env_file):
    import json
    result = compose(env_file, "config", "--format", "json", profile="local")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_every_image_pinned(model):
    for name, svc in model["services"].items():
        image = svc["image"]
        tag = image.rsplit(":", 1)[1] if ":" in image else ""
        assert re.match(r"v?\d+\.\d+", tag), f"{name}: image {image} is not pinned to a version"


def test_only_nginx_publishes_ports(model):
    assert {n for n, s in model["services"].items() if s.get("ports")} == {"nginx"}


def test_config_mounts_read_only(model):
    for name, svc in model["services"].items():
        for vol in svc.get("volumes", []):
            writable = vol["target"].startswith(("/var/lib/postgresql", "/data", "/rendered"))
            assert vol.get("read_only", False) != writable, f"{name}: {vol['target']}"


def test_database_network_internal(model):
    assert model["networks"]["backend"].get("internal") is True
    for name in ("postgres", "pgbouncer"):
        assert list(model["services"][name]["networks"]) == ["backend"]


def test_daemons_restart_and_one_shots_do_not(model):
    one_shots = native.one_shot(model["services"])
    assert one_shots == {"render-config", "migrate", "create-bucket"}
    for name, svc in model["services"].items():
        assert svc.get("restart") == ("no" if name in one_shots else "unless-stopped"), name
        if name not in one_shots:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_every_service_runs_natively_or_is_replaced(model):
    """A service added to compose without a native form fails here, not silently in CI."""
    for name, svc in model["services"].items():
        if name in native.REPLACED:
            continue
        native.image_of(svc)  # raises for an image with no native table entry


def test_no_secret_on_any_command_line(model, env_file):
    secrets = {v for k, v in parse_env(env_file.read_text()).items() if v == "test-secret"}
    for name, svc in model["services"].items():
        for part in (svc.get("command") or []) + (svc.get("entrypoint") or []):
            assert not any(s in part for s in secrets), f"{name}: secret on the command line"


def test_backend_uris_use_psycopg2(model):
    mlflow_env = model["services"]["mlflow"]["environment"]
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://")
    ini = (ROOT / "docker" / "basic_auth.ini").read_text()
    assert re.search(r"^database_uri = postgresql\+psycopg2://", ini, re.M)


def test_hadolint_clean():
    result = subprocess.run([str(VENV_BIN / "hadolint"), str(ROOT / "docker" / "Dockerfile")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.skipif(not shutil.which("nginx", path="/usr/sbin:/usr/bin"), reason="nginx not installed")
def test_nginx_t_on_rendered_config(model, tmp_path):
    """Render exactly what the render-config service renders, then `nginx -t` it in a tree like /etc/nginx."""
    env = {k: str(v) for k, v in model["services"]["render-config"]["environment"].items()}
    env["PGBOUNCER_UID"] = env["SEAWEEDFS_UID"] = str(__import__("os").getuid())
    out = tmp_path / "rendered"
    render.render_tree(ROOT, out, env)
    prefix = tmp_path / "etc-nginx"
    prefix.mkdir()
    (prefix / "nginx.conf").symlink_to(ROOT / "nginx" / "nginx.conf")
    (prefix / "mime.types").symlink_to("/etc/nginx/mime.types")
    (prefix / "conf.d").symlink_to(out / "nginx")
    ensure_certs(env["MLFLOW_PUBLIC_HOST"], prefix / "certs")
    native.write_hosts(tmp_path / "hosts")  # nginx resolves the upstream `mlflow` at load time
    argv = ["nginx", "-t", "-p", f"{prefix}/", "-c", str(prefix / "nginx.conf"), "-g", f"pid {tmp_path}/nginx.pid;"]
    result = subprocess.run(native.with_service_hosts(argv, tmp_path / "hosts"), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
