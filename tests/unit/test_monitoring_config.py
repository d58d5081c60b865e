"""The `monitoring` profile's compose model and config files (no stack): docs/operations.md, "Monitoring"."""

import json

import pytest
import yaml

from jobs import render
from tests.unit.test_config_files import ROOT, compose, env_file  # noqa: F401 (env_file is a fixture)

PROFILE_NETWORKS = {  # every service of the profile and the only networks it joins
    "monitoring-config": None,
    "monitoring-setup": ["backend"],
    "prometheus": ["backend", "monitoring"],
    "postgres-exporter": ["backend"],
    "pgbouncer-exporter": ["backend"],
    "node-exporter": ["backend"],
    "blackbox-exporter": ["backend", "frontend"],
    "grafana": ["frontend", "monitoring"],
}


@pytest.fixture(scope="module")
def services(env_file):  # noqa: F811
    result = compose(env_file, "config", "--format", "json", profile="monitoring")
    assert result.returncode == 0, result.stderr
    model = json.loads(result.stdout)
    assert model["networks"]["monitoring"].get("internal") is True
    return {name: svc for name, svc in model["services"].items() if "monitoring" in svc.get("profiles", [])}


def test_profile_services_and_networks(services):
    assert set(services) == set(PROFILE_NETWORKS)
    for name, networks in PROFILE_NETWORKS.items():
        assert sorted(services[name].get("networks") or []) == (networks or []), name
    assert services["monitoring-config"]["network_mode"] == "none"


def test_only_grafana_publishes_and_only_on_loopback(services):
    published = {name: svc["ports"] for name, svc in services.items() if svc.get("ports")}
    assert set(published) == {"grafana"}
    assert [p["host_ip"] for p in published["grafana"]] == ["127.0.0.1"]


def test_secrets_only_in_environment(services, env_file):  # noqa: F811
    for name, svc in services.items():
        for part in (svc.get("command") or []) + (svc.get("entrypoint") or []):
            assert "test-secret" not in part, f"{name}: secret on the command line"
    assert "test-secret" not in services["pgbouncer-exporter"]["environment"]["PGBOUNCER_EXPORTER_CONNECTION_STRING"]


def test_data_volumes_mounted_read_only_into_node_exporter(services):
    mounts = {v["target"]: v for v in services["node-exporter"]["volumes"]}
    assert {"/volumes/pgdata", "/volumes/mlflow-spool", "/volumes/backups", "/volumes/prometheus-data"} == set(mounts)
    assert all(v["read_only"] and v["volume"]["nocopy"] for v in mounts.values())


def test_rendered_prometheus_config(tmp_path):
    env = {"MONITORING_USER": "mon", "MONITORING_PASSWORD": "s3cret", "PROMETHEUS_UID": str(__import__("os").getuid())}
    (tmp_path / "prometheus").mkdir()
    for template in (ROOT / "prometheus").glob("*.template"):
        (tmp_path / "prometheus" / template.name).write_text(template.read_text())
    written = {p.name: p for p in render.render_tree(tmp_path, tmp_path / "out", env)}
    assert set(written) == {"prometheus.yml", "mlflow_password"}  # other template dirs absent: skipped
    assert written["mlflow_password"].read_text() == "s3cret"
    assert written["mlflow_password"].stat().st_mode & 0o777 == 0o600
    config = yaml.safe_load(written["prometheus.yml"].read_text())
    assert "s3cret" not in written["prometheus.yml"].read_text()
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert jobs["mlflow"]["basic_auth"] == {
        "username": "mon",
        "password_file": "/etc/prometheus/rendered/mlflow_password",
    }
    assert jobs["backup"]["static_configs"] == [{"targets": ["backup:9188"]}]
