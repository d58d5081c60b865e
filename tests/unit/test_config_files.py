"""Config files and the compose model, checked with the real tools (Compose, hadolint, nginx -t)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ctl import engine
from ctl.bootstrap import parse_env

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
    cmd = [
        str(VENV_BIN / "docker-compose"),
        "-f",
        str(ROOT / "docker-compose.production.yml"),
        "--env-file",
        str(env_file),
        "--project-directory",
        str(ROOT),
    ]
    return subprocess.run(
        cmd + (["--profile", profile] if profile else []) + list(args), capture_output=True, text=True
    )


@pytest.mark.parametrize("profile", [None, "local", "monitoring"])
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
            writable = vol["target"].startswith(
                ("/var/lib/postgresql", "/data", "/rendered", "/var/spool/mlflow", "/var/run/postgresql", "/backups")
            )
            assert vol.get("read_only", False) != writable, f"{name}: {vol['target']}"


def test_database_network_internal(model):
    assert model["networks"]["backend"].get("internal") is True
    for name in ("postgres", "pgbouncer"):
        assert list(model["services"][name]["networks"]) == ["backend"]


def one_shots(services: dict) -> set:
    return {
        dep
        for s in services.values()
        for dep, d in s.get("depends_on", {}).items()
        if d["condition"] == "service_completed_successfully"
    }


def test_daemons_restart_and_one_shots_do_not(model):
    jobs = one_shots(model["services"])
    assert jobs == {"render-config", "migrate", "create-bucket"}
    for name, svc in model["services"].items():
        assert svc.get("restart") == ("no" if name in jobs else "unless-stopped"), name
        if name not in jobs:
            assert svc.get("healthcheck", {}).get("test"), f"{name} has no health check"


def test_our_image_has_no_health_check_for_one_shots_to_inherit():
    assert not re.search(r"^HEALTHCHECK", (ROOT / "docker" / "Dockerfile").read_text(), re.M)


def test_every_image_is_a_variable_with_an_official_default_and_a_standin():
    """Each image but ours: `${NAME_IMAGE:-official}`, and docker/standins/NAME (or a stage NAME of a
    shared Containerfile) to build offline (the `sso` provider is one already); Grafana has none (Debian does not package it; `up` leaves
    it out offline)."""
    variables = engine.image_variables((ROOT / "docker-compose.production.yml").read_text())
    assert set(variables) == {
        "POSTGRES_IMAGE",
        "PGBOUNCER_IMAGE",
        "NGINX_IMAGE",
        "S3_IMAGE",
        "PYTHON_IMAGE",
        "OIDC_IMAGE",
        "PROMETHEUS_IMAGE",
        "POSTGRES_EXPORTER_IMAGE",
        "PGBOUNCER_EXPORTER_IMAGE",
        "NODE_EXPORTER_IMAGE",
        "BLACKBOX_EXPORTER_IMAGE",
        "GRAFANA_IMAGE",
    }
    assert engine.standin_containerfile("GRAFANA_IMAGE") == (engine.STANDINS / "grafana" / "Containerfile", None)
    assert not (engine.STANDINS / "grafana").exists()
    variables.pop("GRAFANA_IMAGE")
    standin_tags = {engine.standin_tag(v, o) for v, o in variables.items()}
    for variable, official in variables.items():
        # Only the `sso` provider is ours alone (no registry has it): its default is its stand-in.
        assert official.startswith("localhost/") == (variable == "OIDC_IMAGE"), official
        containerfile, target = engine.standin_containerfile(variable)
        assert containerfile.exists(), f"{variable}: no stand-in at {containerfile}"
        if variable.endswith("_EXPORTER_IMAGE"):
            assert (containerfile.parent.name, target) == ("exporters", engine.standin_name(variable))
        base = engine.containerfile_base(containerfile)
        assert base.startswith(engine.BASE_PREFIX) or base in standin_tags, base


def test_stop_signals(model):
    """PgBouncer >= 1.23 waits for every client on SIGTERM; SIGINT waits only for transactions."""
    services = model["services"]
    assert services["pgbouncer"]["stop_signal"] == "SIGINT"
    assert services["postgres"]["stop_signal"] == "SIGINT"
    assert services["nginx"]["stop_signal"] == "SIGQUIT"


def test_rendered_volumes_mounted_nocopy(model):
    """An empty named volume gets the image's files copied in at container creation, unless nocopy."""
    for name, svc in model["services"].items():
        for vol in svc.get("volumes", []):
            if vol["type"] == "volume" and vol["source"].startswith("rendered-") and vol["target"].startswith("/etc/"):
                assert vol.get("volume", {}).get("nocopy") is True, f"{name}: {vol['target']}"


def test_ca_key_mounted_nowhere(model):
    for name, svc in model["services"].items():
        for vol in svc.get("volumes", []):
            assert not vol["source"].endswith(("/certs", "ca.key")), f"{name} mounts {vol['source']}"


def test_mlflow_tmp_is_sized(model):
    tmpfs = model["services"]["mlflow"]["tmpfs"]
    assert tmpfs and all("size=" in t for t in tmpfs), tmpfs


def test_podman_conf_keeps_other_settings(tmp_path):
    conf = tmp_path / "containers.conf"
    conf.write_text(
        '[containers]\nlog_driver = "k8s-file"\npids_limit = 2048\n\n[network]\ndefault_subnet = "10.89.0.0/24"\n'
    )
    engine.ensure_podman_conf(conf)
    first = conf.read_text()
    engine.ensure_podman_conf(conf)
    assert conf.read_text() == first, "not idempotent"
    assert 'log_driver = "k8s-file"' in first and 'default_subnet = "10.89.0.0/24"' in first
    assert "pids_limit = 0" in first and "pids_limit = 2048" not in first
    assert 'runtime = "runc"' in first.split("[engine]")[1]
    assert 'network_backend = "netavark"' in first.split("[network]")[1]


def test_no_secret_on_any_command_line(model, env_file):
    secrets = {v for k, v in parse_env(env_file.read_text()).items() if v == "test-secret"}
    for name, svc in model["services"].items():
        for part in (svc.get("command") or []) + (svc.get("entrypoint") or []):
            assert not any(s in part for s in secrets), f"{name}: secret on the command line"


def test_backend_uris_use_psycopg2(model):
    mlflow_env = model["services"]["mlflow"]["environment"]
    # bundle-postgresql:// is postgresql+psycopg2:// with set-based metric writes (scripts/store/).
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"].startswith("bundle-postgresql://")
    ini = (ROOT / "docker" / "basic_auth.ini").read_text()
    assert re.search(r"^database_uri = postgresql\+psycopg2://", ini, re.M)


def test_hadolint_clean():
    result = subprocess.run(
        [str(VENV_BIN / "hadolint"), str(ROOT / "docker" / "Dockerfile")], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_health_check_arguments_survive_podman(model):
    """podman's Docker API splits CMD arguments on spaces (containers/podman#26519): CMD-SHELL there."""
    for name, svc in model["services"].items():
        test = svc.get("healthcheck", {}).get("test") or ["NONE"]
        if test[0] == "CMD":
            assert not [arg for arg in test[1:] if any(c.isspace() for c in arg)], name


def test_image_installs_what_ci_tested():
    """The image's pins are installed constrained by requirements.lock, then `pip check`ed."""
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    assert re.search(r"pip install .*-r /tmp/req/requirements\.txt -c /tmp/req/requirements\.lock", dockerfile)
    assert dockerfile.count("pip check") >= 1
    assert "!requirements.lock" in (ROOT / ".dockerignore").read_text()


@pytest.mark.parametrize(
    "url, parsed",
    [
        ("postgres://u:p:q@h:6432/db", "u|p:q|h|6432|db"),
        ("postgres://u@h/db", "u||h|keep|db"),
        ("postgresql://h:1", "x|y|h|1|"),
        ("postgres://a@b:c@h:5/d/e", "a@b|c|h|5|d/e"),
    ],
)
def test_pgbouncer_standin_parses_database_url_as_edoburu_does(url, parsed):
    """The stand-in entrypoint's DATABASE_URL parsing, run by bash: a password may hold ':', the
    user '@' (the last one ends it); a missing port leaves DB_PORT as it was (5432 by default)."""
    script = (ROOT / "docker" / "standins" / "pgbouncer" / "entrypoint.sh").read_text()
    functions = "".join(re.findall(r"^(?:split_pair|parse_url)\(\) \{\n.*?^\}\n", script, re.M | re.S))
    probe = (
        'DB_PORT=keep DB_USER=x DB_PASSWORD=y\nparse_url "$1"\necho "$DB_USER|$DB_PASSWORD|$DB_HOST|$DB_PORT|$DB_NAME"'
    )
    out = subprocess.run(["bash", "-c", functions + probe, "-", url], capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == parsed, out.stderr


def _entrypoint(tmp_path, env: dict) -> subprocess.CompletedProcess:
    """docker/entrypoint.sh, run by sh, with an `mlflow` on PATH that prints its arguments and
    MLFLOW_GUNICORN_OPTS instead of serving."""
    (tmp_path / "mlflow").write_text('#!/bin/sh\necho "$*"\necho "$MLFLOW_GUNICORN_OPTS"\n')
    (tmp_path / "mlflow").chmod(0o755)
    compose = yaml.safe_load((ROOT / "docker-compose.production.yml").read_text())["services"]["mlflow"]
    base = {"PATH": f"{tmp_path}:/usr/bin:/bin", "MLFLOW_GUNICORN_OPTS": compose["environment"]["MLFLOW_GUNICORN_OPTS"]}
    return subprocess.run(
        ["sh", str(ROOT / "docker" / "entrypoint.sh"), *compose["command"]],
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_entrypoint_switches_the_app_and_worker_class_for_oidc(tmp_path):
    """AUTH_MODE=oidc: the compose command's bundle-auth becomes bundle-oidc, gunicorn's gthread
    worker and --threads give way to uvicorn's worker, and every other option stays; basic: as is."""
    basic = _entrypoint(tmp_path, {"AUTH_MODE": "basic"})
    args, opts = basic.stdout.splitlines()
    assert "--app-name bundle-auth" in args and "--worker-class gthread --threads 4" in opts
    oidc = _entrypoint(
        tmp_path, {"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://idp", "OIDC_CLIENT_ID": "m", "OIDC_CLIENT_SECRET": "s"}
    )
    args, opts = oidc.stdout.splitlines()
    assert "--app-name bundle-oidc" in args and "bundle-auth" not in args and "--workers 2" in args
    assert opts.split()[:2] == ["--worker-class", "uvicorn.workers.UvicornWorker"]
    assert "gthread" not in opts and "--threads" not in opts and "--max-requests 5000" in opts


def test_entrypoint_refuses_oidc_without_its_settings_or_an_unknown_mode(tmp_path):
    missing = _entrypoint(tmp_path, {"AUTH_MODE": "oidc", "OIDC_ISSUER": "https://idp", "OIDC_CLIENT_ID": "m"})
    assert missing.returncode == 2 and "needs OIDC_CLIENT_SECRET" in missing.stderr and not missing.stdout
    unknown = _entrypoint(tmp_path, {"AUTH_MODE": "ldap"})
    assert unknown.returncode == 2 and "basic or oidc" in unknown.stderr
