"""testinfra smoke tests of the running stack, inside its containers: processes, listeners,
mounted files and their modes, configs in force, and what the engine publishes.
"""

import configparser

import pytest

from ctl import engine
from ctl.settings import long_running_services, one_shot_services
from jobs import render
from tests.conftest import ROOT

# service -> a word of its main process's command line; none of these may run as root but nginx's
# master (it binds 443/80 and reads the key) and the S3 store (root in its official image).
PROCESS_WORDS = {
    "postgres": "postgres",
    "pgbouncer": "pgbouncer",
    "mlflow": "gunicorn",
    "nginx": "nginx: worker",
    "backup": "jobs.backup",
}
# service -> port it listens on inside its network: one row for every server of the compose model.
PORTS = {"postgres": 5432, "pgbouncer": 6432, "mlflow": 5000, "nginx": 443, "s3": 8333, "backup": 9188}
LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


@pytest.fixture(scope="module")
def ps(stack, eng) -> dict:
    """`docker compose ps` rows by service (the engine's view, not the containers')."""
    return {r["Service"]: r for r in engine.ps(eng)}


@pytest.fixture(scope="module")
def servers(compose_services) -> list:
    return long_running_services({"services": compose_services})


def test_every_server_has_a_row_in_the_tables(servers):
    """A service added to the compose file needs its expectations here (README "Adding a service")."""
    assert set(servers) == set(PORTS)


def test_long_running_services_healthy(ps, servers):
    bad = {
        s: ps.get(s)
        for s in servers
        if not (ps.get(s, {}).get("State") == "running" and ps[s].get("Health") == "healthy")
    }
    assert not bad


def test_one_shot_jobs_exited_zero_without_health_check(ps, compose_services):
    jobs = one_shot_services({"services": compose_services})
    assert jobs >= {"render-config", "migrate"}
    for job in jobs:
        assert ps[job]["State"] == "exited" and ps[job]["ExitCode"] == 0, ps[job]
        assert not ps[job].get("Health"), "a one-shot job must not inherit a health check"


def test_only_nginx_publishes_ports_and_only_443_80(ps):
    published = {
        (svc, p["TargetPort"]) for svc, row in ps.items() for p in row.get("Publishers") or [] if p.get("PublishedPort")
    }
    assert published == {("nginx", 443), ("nginx", 80)}


def processes(eng, service) -> list:
    """(user, command) of every process in the service's container, from the engine (`top`)."""
    return [tuple(p) for p in eng.top(engine.container_name(service))]


@pytest.mark.parametrize("service", sorted(PROCESS_WORDS))
def test_service_processes_not_root(stack, eng, service):
    procs = [p for p in processes(eng, service) if PROCESS_WORDS[service] in p[1]]
    assert procs, f"no {service} process: {processes(eng, service)}"
    assert all(user not in ("root", "0") for user, _ in procs), procs


def test_mlflow_container_runs_nothing_as_root(stack, eng):
    assert {user for user, _ in processes(eng, "mlflow")} == {"mlflow"}


def listening_ports(host) -> set:
    """TCP ports in LISTEN state, read from /proc/net (every image has `cat`)."""
    out = host.check_output("cat /proc/net/tcp /proc/net/tcp6 2>/dev/null || cat /proc/net/tcp")
    ports = set()
    for line in out.splitlines()[1:]:
        fields = line.split()
        if len(fields) > 3 and fields[3] == LISTEN:
            ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


@pytest.mark.parametrize("service", sorted(PORTS))
def test_service_listens_on_its_port(stack, service_host, service):
    assert PORTS[service] in listening_ports(service_host(service))


def test_nginx_listens_on_https_and_http(stack, service_host):
    assert {443, 80} <= listening_ports(service_host("nginx"))


def test_http_only_redirects(stack, http, stack_env):
    """Fails if the image's stock conf.d/default.conf (`listen 80; server_name localhost`) is in force."""
    port = stack_env.get("HTTP_PORT", "80")
    r = http.get(f"http://localhost:{port}/api/2.0/mlflow/experiments/search?x=1", allow_redirects=False, timeout=10)
    assert r.status_code == 301
    assert r.headers["Location"].startswith(f"https://{stack_env['MLFLOW_PUBLIC_HOST']}")


def test_nginx_conf_d_holds_only_the_rendered_config(stack, service_host):
    """The engine copies an image's files into an EMPTY named volume unless `nocopy` is set."""
    assert service_host("nginx").file("/etc/nginx/conf.d").listdir() == ["mlflow.conf"]


def test_ca_key_not_mounted_into_nginx(stack, service_host):
    certs = service_host("nginx").file("/etc/nginx/certs")
    assert sorted(certs.listdir()) == ["ca.crt", "server.crt", "server.key"]


@pytest.mark.parametrize("path", [".env", "certs/ca.key", "certs/server.key"])
def test_repo_secret_files_private(repo_host, path):
    f = repo_host.file(str(ROOT / path))
    assert f.exists and f.mode == 0o600


def test_pgbouncer_auth_file_private_to_its_user(stack, service_host):
    host = service_host("pgbouncer")
    f = host.file("/etc/pgbouncer/userlist.txt")
    assert f.mode == 0o600
    assert f.uid == 70 and host.user().uid == 70  # the image's `postgres` user, which runs pgbouncer


def test_mlflow_user_has_a_home(stack, service_host):
    host = service_host("mlflow")
    user = host.user()
    assert (user.uid, user.name) == (10001, "mlflow")
    assert host.file(user.home).is_directory and host.file(user.home).uid == 10001


def test_mlflow_spools_to_disk_and_tmp_is_bounded(stack, service_host):
    """Artifacts are spooled in TMPDIR, a disk volume; /tmp is a tmpfs with a size, not half of RAM."""
    host = service_host("mlflow")
    assert host.check_output("echo $TMPDIR") == "/var/spool/mlflow"
    mounts = {line.split()[1]: line.split() for line in host.file("/proc/mounts").content_string.splitlines()}
    assert mounts["/var/spool/mlflow"][2] != "tmpfs"
    assert mounts["/tmp"][2] == "tmpfs" and "size=65536k" in mounts["/tmp"][3]
    assert host.file("/var/spool/mlflow").uid == 10001


def psql(host, port: int, db: str, query: str, password: str) -> str:
    cmd = host.run(f"PGPASSWORD=%s psql -h 127.0.0.1 -p {port} -U mlflow -d {db} -tAc %s", password, query)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def test_pgbouncer_settings_in_force(stack, service_host, stack_env):
    rows = psql(service_host("pgbouncer"), 6432, "pgbouncer", "SHOW CONFIG", stack_env["MLFLOW_DB_PASSWORD"])
    config = {line.split("|")[0]: line.split("|")[1] for line in rows.splitlines()}
    assert config["pool_mode"] == "transaction"
    assert config["auth_type"] == "scram-sha-256"
    template = configparser.ConfigParser(interpolation=None, inline_comment_prefixes=(";",))
    template.read_string((ROOT / "pgbouncer" / "pgbouncer.ini.template").read_text())
    for key in ("max_client_conn", "default_pool_size", "reserve_pool_size"):
        assert config[key] == template["pgbouncer"][key], key


def conf_values(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            out[key] = value.strip("'")
    return out


@pytest.mark.parametrize(
    "setting",
    [
        "shared_buffers",
        "effective_cache_size",
        "work_mem",
        "maintenance_work_mem",
        "wal_buffers",
        "checkpoint_completion_target",
        "max_wal_size",
        "max_connections",
        "password_encryption",
    ],
)
def test_postgres_settings_in_force(stack, service_host, stack_env, setting):
    wanted = conf_values((ROOT / "postgres" / "postgresql.conf").read_text())[setting]
    # Through PgBouncer as the app role: exactly the path MLflow uses.
    shown = psql(service_host("pgbouncer"), 6432, "mlflow", f"SHOW {setting}", stack_env["MLFLOW_DB_PASSWORD"])
    assert shown.lower() == wanted.lower()


def test_nginx_config_in_force_is_rendered_from_repo(stack, service_host, compose_services):
    host = service_host("nginx")
    in_force = host.file("/etc/nginx/conf.d/mlflow.conf").content_string
    env = {k: str(v) for k, v in compose_services["render-config"]["environment"].items()}
    expected = render.render_text((ROOT / "nginx" / "mlflow.conf.template").read_text(), env)
    assert in_force == expected
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in in_force
    assert host.file("/etc/nginx/nginx.conf").content_string == (ROOT / "nginx" / "nginx.conf").read_text()


def test_up_again_recreates_nothing(stack, eng, servers):
    """`up` on a running stack restarts nothing: podman's API makes plain `compose up` recreate
    every container (a PostgreSQL restart, and the offline S3 store's objects lost)."""

    def ids():
        return {
            name: engine.run(
                [*eng.cli, "inspect", "--format", "{{.Id}} {{.State.StartedAt}}", engine.container_name(name)],
                env=eng.env,
            ).stdout.strip()
            for name in servers
        }

    before = ids()
    assert engine.up(eng, capture=True).returncode == 0
    assert ids() == before
