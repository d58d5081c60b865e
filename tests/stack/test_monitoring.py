"""The `monitoring` compose profile against the running stack (docs/operations.md, "Monitoring").

Real, in the engine: Prometheus and the exporters (official images, or their Debian stand-ins
offline) scraping the real MLflow (all gunicorn workers, through its multiprocess directory),
PgBouncer's admin console, PostgreSQL, the data volumes and the certificate Nginx serves. The
dashboard's queries run against that Prometheus, and every metric a panel or an alert uses must be
in its live data. One alert condition is produced for real (an exporter stopped, `up == 0`).

Under test doubles only: the alert rules reaching their `for:` and firing, which `promtool test
rules` checks on made-up series (prometheus/rules/mlflow.rules.test.yml), run with the promtool of
the Prometheus image in use. The backup metrics come from the scheduled-backup service: where the
compose model has none, its target is expected down and its metric names are exempt from the
live-data check. Grafana is not rendered where its image cannot be had (no registry; Debian
packages no Grafana): then only its provisioning files and the dashboard JSON are checked.
"""

import json
import re
import urllib.parse

import pytest
import yaml
from cryptography import x509

from ctl import engine
from ctl.settings import Settings
from tests.conftest import ROOT, poll

PROFILES = engine.default_profiles() + ("monitoring",)
RULES = ROOT / "prometheus" / "rules" / "mlflow.rules.yml"
RULE_TESTS = ROOT / "prometheus" / "rules" / "mlflow.rules.test.yml"
DASHBOARDS = ROOT / "grafana" / "dashboards"
# What Grafana substitutes before a query reaches Prometheus.
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$__range": "1h"}
BACKUP_METRICS = {
    "mlflow_backup_last_success_timestamp_seconds",
    "mlflow_backup_interval_seconds",
    "mlflow_backup_last_run_success",
}
# The official images' contract (their Dockerfiles): entrypoint, user, port; the stand-ins keep it.
STANDIN_CONTRACTS = {
    "PROMETHEUS_IMAGE": (["/bin/prometheus"], "nobody", "9090/tcp"),
    "POSTGRES_EXPORTER_IMAGE": (["/bin/postgres_exporter"], "nobody", "9187/tcp"),
    "PGBOUNCER_EXPORTER_IMAGE": (["/bin/pgbouncer_exporter"], "nobody", "9127/tcp"),
    "NODE_EXPORTER_IMAGE": (["/bin/node_exporter"], "nobody", "9100/tcp"),
    "BLACKBOX_EXPORTER_IMAGE": (["/bin/blackbox_exporter"], "blackbox_exporter", "9115/tcp"),
}
PROMQL_WORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "inf",
    "nan",
}


@pytest.fixture(scope="module")
def monitoring(stack, eng):
    """The profile's services, up and healthy: started here (and removed afterwards) unless they
    were already running. Returns {service: compose model} of the profile."""
    services = engine.model(eng, PROFILES)["services"]
    profile = [name for name, svc in services.items() if "monitoring" in svc.get("profiles", [])]
    running = {r["Service"] for r in ps(eng) if r.get("State") == "running"}
    engine.ensure_images(eng, Settings.load().env, PROFILES)
    left_out = engine.missing_images(eng, PROFILES)
    proc = engine.up(eng, *[s for s in services if s not in left_out], timeout_s=300, capture=True, profiles=PROFILES)
    assert proc.returncode == 0, proc.stderr[-2000:]
    yield {name: services[name] for name in profile if name not in left_out}
    started = [s for s in profile if s not in running and s not in left_out]
    if started:
        engine.compose(eng, "rm", "--stop", "--force", "--volumes", *started, capture=True, profiles=PROFILES)


def ps(eng) -> list:
    """`compose ps` rows with the profile enabled (without it, Compose leaves its containers out)."""
    return engine.json_rows(
        engine.compose(eng, "ps", "--all", "--format", "json", capture=True, profiles=PROFILES).stdout
    )


def prometheus_get(eng, path: str, **params) -> dict:
    """GET Prometheus's HTTP API from inside its container (it publishes no port)."""
    url = f"http://127.0.0.1:9090{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    out = engine.run(
        [*eng.cli, "exec", engine.container_name("prometheus"), "wget", "-q", "-O", "-", url], env=eng.env, timeout=60
    )
    assert out.returncode == 0, f"{path} {params}: wget exit {out.returncode} {out.stderr}"
    body = json.loads(out.stdout)
    assert body["status"] == "success", body
    return body["data"]


def query(eng, expr: str) -> list:
    return prometheus_get(eng, "/api/v1/query", query=expr)["result"]


def value(eng, expr: str) -> float:
    result = query(eng, expr)
    assert len(result) == 1, f"{expr}: {result}"
    return float(result[0]["value"][1])


def targets(eng) -> dict:
    return {t["labels"]["job"]: t for t in prometheus_get(eng, "/api/v1/targets")["activeTargets"]}


def expected_jobs(monitoring, compose_services) -> set:
    jobs = {"prometheus", "mlflow", "postgres", "pgbouncer", "node", "tls"}
    return jobs | ({"backup"} if "backup" in compose_services else set())


def panel_queries() -> list:
    """(dashboard file, panel title, PromQL as Prometheus receives it) for every panel target."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        for panel in json.loads(path.read_text())["panels"]:
            for target in panel["targets"]:
                expr = target["expr"]
                for var, sub in GRAFANA_VARIABLES.items():
                    expr = expr.replace(var, sub)
                out.append((path.name, panel["title"], expr))
    return out


def alert_rules() -> list:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def metric_names(expr: str) -> set:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords, label
    names (inside {} or the parentheses after by/without/on/ignoring) or strings."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    names = set(re.findall(r"\b([a-zA-Z_:][a-zA-Z0-9_:]*)\b(?!\s*\()", expr))
    return {n for n in names if n.lower() not in PROMQL_WORDS and not re.fullmatch(r"\d.*", n)}


# --- the alert rules, under promtool (test doubles: made-up series) ----------------------------
def test_promtool_checks_config_and_rules_and_runs_rule_tests(monitoring, compose):
    for cmd in (
        ["promtool", "check", "config", "/etc/prometheus/rendered/prometheus.yml"],
        ["promtool", "check", "rules", "/etc/prometheus/rules/mlflow.rules.yml"],
        ["promtool", "test", "rules", "/etc/prometheus/rules/mlflow.rules.test.yml"],
    ):
        proc = compose("--profile", "monitoring", "exec", "-T", "prometheus", *cmd, check=False)
        assert proc.returncode == 0 and "SUCCESS" in proc.stdout, f"{' '.join(cmd)}:\n{proc.stdout}\n{proc.stderr}"


def test_every_alert_has_a_firing_and_a_quiet_rule_test():
    cases = [case for test in yaml.safe_load(RULE_TESTS.read_text())["tests"] for case in test["alert_rule_test"]]
    for rule in alert_rules():
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']}: no test where it fires"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']}: no test where it stays quiet"


# --- the live profile ---------------------------------------------------------------------------
def test_prometheus_scrapes_every_target(monitoring, eng, compose_services):
    jobs = expected_jobs(monitoring, compose_services)

    def all_scraped():
        found = targets(eng)
        return (
            found
            if all(found.get(j, {}).get("health") == "up" for j in jobs)
            and found.get("backup", {}).get("health", "unknown") != "unknown"
            else None
        )

    found = poll(f"targets {sorted(jobs)} up and backup scraped", all_scraped, 180, every_s=3)
    if "backup" not in compose_services:
        # No backup service in this compose model: its target is down, which BackupMetricsMissing reads.
        assert found["backup"]["health"] == "down"
        assert query(eng, 'absent(up{job="backup"} == 1)'), "BackupMetricsMissing's condition does not hold"


def test_scrape_password_file_private(monitoring, service_host):
    f = service_host("prometheus").file("/etc/prometheus/rendered/mlflow_password")
    assert (f.mode, f.uid) == (0o600, 65534)  # Prometheus's `nobody`, and no one else


def test_series_values_make_sense(monitoring, eng, stack_env):
    poll("pg_database_size_bytes", lambda: query(eng, 'pg_database_size_bytes{datname="mlflow"}'), 180, every_s=3)
    assert value(eng, 'pg_database_size_bytes{datname="mlflow"}') > 1_000_000  # MLflow's schema alone is MBs
    # PgBouncer's pools (SHOW POOLS) list both of MLflow's databases.
    pools = {r["metric"]["database"] for r in query(eng, "pgbouncer_pools_client_active_connections")}
    assert {"mlflow", "mlflow_auth"} <= pools, pools
    # max_connections as PostgreSQL reports it is the one in postgres/postgresql.conf.
    conf = re.search(r"^max_connections\s*=\s*(\d+)", (ROOT / "postgres" / "postgresql.conf").read_text(), re.M)
    assert value(eng, "pg_settings_max_connections") == int(conf.group(1))
    assert value(eng, "sum(pg_stat_database_numbackends)") >= 1
    # The data volumes, seen by node-exporter.
    for volume in ("pgdata", "mlflow-spool", "backups"):
        size = value(eng, f'node_filesystem_size_bytes{{mountpoint="/volumes/{volume}"}}')
        free = value(eng, f'node_filesystem_avail_bytes{{mountpoint="/volumes/{volume}"}}')
        assert size > 0 and 0 <= free <= size, volume
    # The certificate's expiry as probed over TLS is the one in certs/server.crt.
    cert = x509.load_pem_x509_certificate((ROOT / "certs" / "server.crt").read_bytes())
    assert value(eng, 'probe_ssl_earliest_cert_expiry{job="tls"}') == cert.not_valid_after_utc.timestamp()


def test_mlflow_request_counters_count_every_request_through_nginx(monitoring, eng, http, stack, admin_auth):
    """N requests through Nginx, spread over the gunicorn workers, are all in one scrape."""
    # `or vector(0)`: a counter appears with its first request after a restart.
    series = 'sum(mlflow_bundle_http_requests_total{endpoint="/api/2.0/mlflow/experiments/search", status="200"}) or vector(0)'
    total = 'sum(mlflow_http_request_total{method="GET", status="200"}) or vector(0)'
    scraped = lambda: targets(eng)["mlflow"]["lastScrape"]  # noqa: E731
    poll("mlflow scraped", lambda: query(eng, 'up{job="mlflow"} == 1'), 180, every_s=3)
    before_scrape = scraped()
    before = value(eng, series)
    before_total = value(eng, total)
    n = 24
    for _ in range(n):
        r = http.get(
            f"{stack}/api/2.0/mlflow/experiments/search", params={"max_results": 1}, auth=admin_auth, timeout=30
        )
        assert r.status_code == 200, r.text
    poll(
        f"{n} more experiments/search requests in Prometheus",
        lambda: scraped() != before_scrape and value(eng, series) >= before + n,
        120,
        every_s=3,
    )
    assert value(eng, series) == before + n
    assert value(eng, total) >= before_total + n


def test_dashboard_json_and_provisioning(monitoring, eng):
    datasources = yaml.safe_load((ROOT / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"]
    assert [d["url"] for d in datasources] == ["http://prometheus:9090"]
    uid = datasources[0]["uid"]
    providers = yaml.safe_load((ROOT / "grafana/provisioning/dashboards/mlflow-bundle.yml").read_text())["providers"]
    grafana = engine.model(eng, PROFILES)["services"]["grafana"]  # also where Grafana is left out
    mounts = {v["source"]: v["target"] for v in grafana["volumes"]}
    assert mounts[str(DASHBOARDS)] == providers[0]["options"]["path"]
    assert mounts[str(ROOT / "grafana" / "provisioning")] == "/etc/grafana/provisioning"
    dashboards = sorted(DASHBOARDS.glob("*.json"))
    assert dashboards
    for path in dashboards:
        dash = json.loads(path.read_text())
        assert dash["uid"] and dash["title"] and dash["panels"], path.name
        ids = [p["id"] for p in dash["panels"]]
        assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids"
        for panel in dash["panels"]:
            assert panel["type"] in ("timeseries", "stat", "gauge", "table", "bargauge"), panel["title"]
            assert set(panel["gridPos"]) == {"x", "y", "w", "h"}, panel["title"]
            assert panel["targets"], panel["title"]
            for ref in [panel["datasource"]] + [t["datasource"] for t in panel["targets"]]:
                assert ref == {"type": "prometheus", "uid": uid}, panel["title"]


@pytest.mark.parametrize("source,title,expr", panel_queries())
def test_every_panel_query_runs_on_live_prometheus(monitoring, eng, source, title, expr):
    query(eng, expr)  # a parse or evaluation error fails inside (HTTP 400/422, status error)


def test_every_metric_used_is_in_live_data(monitoring, eng, compose_services):
    used = {}
    for source, title, expr in panel_queries():
        for name in metric_names(expr):
            used.setdefault(name, f"{source}: {title}")
    for rule in alert_rules():
        for name in metric_names(rule["expr"]):
            used.setdefault(name, f"{RULES.name}: {rule['alert']}")
    assert {
        "mlflow_http_request_duration_seconds_bucket",
        "pg_settings_max_connections",
        "pgbouncer_pools_client_maxwait_seconds",
        "probe_ssl_earliest_cert_expiry",
    } <= set(used)
    exempt = BACKUP_METRICS if "backup" not in compose_services else set()
    poll(
        "targets scraped",
        lambda: query(eng, 'up{job="tls"} == 1') and query(eng, 'up{job="mlflow"} == 1'),
        180,
        every_s=3,
    )
    present = set(prometheus_get(eng, "/api/v1/label/__name__/values"))
    missing = {name: where for name, where in used.items() if name not in present and name not in exempt}
    assert not missing, f"metrics used but not scraped: {missing}"


def test_stopped_exporter_is_seen_down_and_alert_goes_pending(monitoring, eng, compose):
    """A real `up == 0`: pgbouncer-exporter stopped, ScrapeTargetDown pending; then restarted."""
    compose("--profile", "monitoring", "stop", "pgbouncer-exporter")
    try:
        poll("up{job=pgbouncer} == 0", lambda: query(eng, 'up{job="pgbouncer"} == 0'), 90, every_s=3)
        alerts = lambda: [
            a
            for a in prometheus_get(eng, "/api/v1/alerts")["alerts"]  # noqa: E731
            if a["labels"]["alertname"] == "ScrapeTargetDown" and a["labels"].get("job") == "pgbouncer"
        ]
        assert poll("ScrapeTargetDown pending", alerts, 60, every_s=3)[0]["state"] in ("pending", "firing")
    finally:
        proc = engine.up(eng, "pgbouncer-exporter", timeout_s=180, capture=True, profiles=PROFILES)
        assert proc.returncode == 0, proc.stderr[-2000:]
    poll("pgbouncer target up again", lambda: query(eng, 'up{job="pgbouncer"} == 1'), 90, every_s=3)


def test_nothing_of_the_profile_is_published_but_grafana_on_loopback(monitoring, eng):
    for name, svc in monitoring.items():
        ports = svc.get("ports", [])
        if name == "grafana":
            assert [p["host_ip"] for p in ports] == ["127.0.0.1"], ports
        else:
            assert not ports, f"{name} publishes {ports}"
    rows = [r for r in ps(eng) if r["Service"] in monitoring]
    assert {r["Service"] for r in rows} == set(monitoring)
    for row in rows:
        published = [p for p in row.get("Publishers") or [] if p.get("PublishedPort")]
        if row["Service"] == "grafana":
            assert {p["URL"] for p in published} == {"127.0.0.1"}, published
        else:
            assert not published, f"{row['Service']} publishes {published}"


@pytest.mark.parametrize("variable", sorted(STANDIN_CONTRACTS))
def test_standin_keeps_the_official_contract(monitoring, eng, variable):
    image = engine.read_images_env().get(variable)
    if not image:
        pytest.skip(f"{variable}: the official image is in use")
    entrypoint, user, port = STANDIN_CONTRACTS[variable]
    out = engine.run([*eng.cli, "image", "inspect", "--format", "{{json .Config}}", image], env=eng.env)
    config = json.loads(out.stdout)
    assert (config["Entrypoint"], config["User"], port in config["ExposedPorts"]) == (entrypoint, user, True)
    if variable == "PROMETHEUS_IMAGE":  # the rule tests above ran its /bin/promtool; the data directory:
        assert config["WorkingDir"] == "/prometheus" and "/prometheus" in config["Volumes"]
