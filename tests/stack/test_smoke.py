"""testinfra smoke tests of the running stack: processes, listeners, secret files, configs in force.

The same tests run against the native stack (`local://`) and the compose containers (`docker://`):
choose with `--stack-backend`.
"""
import pytest

from scripts import render

from tests.conftest import ROOT

# service -> how its worker processes are found; none of them may run as root.
PROCESSES = {
    "postgres": {"comm": "postgres"},
    "pgbouncer": {"comm": "pgbouncer"},
    "mlflow": {"args_has": "gunicorn"},
    "nginx": {"args_has": "nginx: worker process"},
}
# service -> port it listens on; natively only on loopback, in compose on its internal network.
INTERNAL_PORTS = {"postgres": 5432, "pgbouncer": 6432, "mlflow": 5000}
LOOPBACK = ("127.0.0.1", "::1")


def processes(host, spec):
    if "comm" in spec:
        return host.process.filter(comm=spec["comm"])
    return [p for p in host.process.filter() if spec["args_has"] in p.args]


@pytest.mark.parametrize("service", sorted(PROCESSES))
def test_service_processes_not_root(stack, service_host, service):
    procs = processes(service_host(service), PROCESSES[service])
    assert procs, f"no {service} process"
    assert {p.user for p in procs} - {"root"}, f"{service} has no unprivileged process"
    assert all(p.user != "root" for p in procs), f"{service} runs as root: {[(p.pid, p.args) for p in procs]}"


def listeners(host, port: int) -> set:
    """Addresses with a TCP listener on `port` (`tcp://127.0.0.1:5432`, `tcp://:::443`)."""
    out = set()
    for sock in host.socket.get_listening_sockets():
        proto, _, rest = sock.partition("://")
        addr, _, sock_port = rest.rpartition(":")
        if proto == "tcp" and sock_port == str(port):
            out.add(addr.strip("[]"))
    return out


@pytest.mark.parametrize("service", sorted(INTERNAL_PORTS))
def test_internal_services_not_exposed(stack, backend, service_host, service):
    addrs = listeners(service_host(service), INTERNAL_PORTS[service])
    assert addrs, f"{service} is not listening on {INTERNAL_PORTS[service]}"
    if backend == "native":
        assert addrs <= set(LOOPBACK), f"{service} listens beyond loopback: {addrs}"


def test_nginx_listens_on_https_and_http(stack, service_host):
    host = service_host("nginx")
    assert listeners(host, 443) and listeners(host, 80)


def test_http_only_redirects(stack, http, stack_env):
    r = http.get(f"http://{stack_env['MLFLOW_PUBLIC_HOST']}/api/2.0/mlflow/experiments/search?x=1",
                 allow_redirects=False, timeout=10)
    assert r.status_code == 301
    assert r.headers["Location"].startswith(f"https://{stack_env['MLFLOW_PUBLIC_HOST']}/api/2.0/")


@pytest.mark.parametrize("path", [".env", "certs/ca.key", "certs/server.key"])
def test_repo_secret_files_private(repo_host, path):
    f = repo_host.file(str(ROOT / path))
    assert f.exists and f.mode == 0o600


def test_pgbouncer_auth_file_private_to_its_user(stack, service_host, service_path):
    host = service_host("pgbouncer")
    f = host.file(service_path("pgbouncer", "/etc/pgbouncer/userlist.txt"))
    assert f.mode == 0o600
    assert f.user == processes(host, PROCESSES["pgbouncer"])[0].user


def psql(host, port: int, db: str, query: str, password: str) -> str:
    cmd = host.run(f"PGPASSWORD=%s psql -h 127.0.0.1 -p {port} -U mlflow -d {db} -tAc %s",
                   password, query)
    assert cmd.rc == 0, cmd.stderr
    return cmd.stdout.strip()


def test_pgbouncer_settings_in_force(stack, service_host, stack_env):
    rows = psql(service_host("pgbouncer"), 6432, "pgbouncer", "SHOW CONFIG", stack_env["MLFLOW_DB_PASSWORD"])
    config = {line.split("|")[0]: line.split("|")[1] for line in rows.splitlines()}
    assert config["pool_mode"] == "transaction"
    assert config["auth_type"] == "scram-sha-256"
    assert config["max_client_conn"] == "500" and config["default_pool_size"] == "30"


def conf_values(text: str) -> dict:
    out = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "=" in line:
            key, value = (part.strip() for part in line.split("=", 1))
            out[key] = value.strip("'")
    return out


@pytest.mark.parametrize("setting", ["shared_buffers", "effective_cache_size", "work_mem", "maintenance_work_mem",
                                     "wal_buffers", "checkpoint_completion_target", "max_wal_size", "max_connections",
                                     "password_encryption"])
def test_postgres_settings_in_force(stack, service_host, stack_env, setting):
    wanted = conf_values((ROOT / "postgres" / "postgresql.conf").read_text())[setting]
    # Through PgBouncer as the app role: exactly the path MLflow uses.
    shown = psql(service_host("pgbouncer"), 6432, "mlflow", f"SHOW {setting}", stack_env["MLFLOW_DB_PASSWORD"])
    assert shown.lower() == wanted.lower()


def test_nginx_config_in_force_is_rendered_from_repo(stack, service_host, service_path, compose_services):
    host = service_host("nginx")
    in_force = host.file(service_path("nginx", "/etc/nginx/conf.d/mlflow.conf")).content_string
    env = {k: str(v) for k, v in compose_services["render-config"]["environment"].items()}
    expected = render.render_text((ROOT / "nginx" / "mlflow.conf.template").read_text(), env)
    assert in_force == expected
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in in_force
    main_conf = host.file(service_path("nginx", "/etc/nginx/nginx.conf")).content_string
    assert main_conf == (ROOT / "nginx" / "nginx.conf").read_text()
