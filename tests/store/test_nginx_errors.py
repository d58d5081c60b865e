"""nginx/mlflow.conf.template, rendered by scripts/jobs/render.py and run by Debian's nginx on loopback
(own prefix, never the system service) in front of a tiny upstream: the answers Nginx makes on
/api/ and /ajax-api/ are MLflow JSON errors, the UI keeps HTML, the 401 -> 429 limiter holds."""

import http.server
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import requests

from jobs.render import render_text
from tests.conftest import free_port, self_signed_cert

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
ROOT = Path(__file__).resolve().parents[2]


class Upstream(http.server.BaseHTTPRequestHandler):
    """GET/POST /<anything>/status/NNN answers NNN; /<anything>/close drops the connection."""

    def _answer(self):
        if self.path.endswith("/close"):
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)  # no response: Nginx's 502
            return
        status = int(self.path.rsplit("/", 1)[1]) if "/status/" in self.path else 200
        body = b'{"upstream": true}'
        self.send_response(status)
        if status == 401:
            self.send_header("WWW-Authenticate", 'Basic realm="mlflow"')
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    if not Path(NGINX).exists():
        pytest.fail("no nginx: apt-get install nginx-light")
    upstream = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Upstream)
    threading.Thread(target=upstream.serve_forever, daemon=True).start()
    prefix = tmp_path_factory.mktemp("nginx")
    (prefix / "certs").mkdir()
    self_signed_cert("localhost", prefix / "certs/server.key", prefix / "certs/server.crt")
    http_port, https_port = free_port(), free_port()
    env = {
        "MLFLOW_UPSTREAM": f"127.0.0.1:{upstream.server_address[1]}",
        "MLFLOW_PUBLIC_HOST": "localhost",
        "HTTPS_PORT": str(https_port),
        "NGINX_LISTEN_HTTP": f"127.0.0.1:{http_port}",
        "NGINX_LISTEN_HTTPS": f"127.0.0.1:{https_port}",
        "NGINX_MAX_BODY_SIZE": "1k",
        "MLFLOW_DIRECT_ARTIFACT_ACCESS": "false",
    }
    (prefix / "mlflow.conf").write_text(render_text((ROOT / "nginx/mlflow.conf.template").read_text(), env))
    (prefix / "nginx.conf").write_text(
        f"daemon off; master_process on; worker_processes 1; pid {prefix}/nginx.pid;\n"
        f"error_log {prefix}/error.log warn;\n"
        "events { worker_connections 64; }\n"
        f"http {{ access_log off; client_body_temp_path {prefix}/tmp_body; proxy_temp_path {prefix}/tmp_proxy;\n"
        f"  include {prefix}/mlflow.conf; }}\n"
    )
    proc = subprocess.Popen(
        [NGINX, "-p", str(prefix), "-c", str(prefix / "nginx.conf")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    url = f"https://127.0.0.1:{https_port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                requests.get(f"{url}/api/2.0/mlflow/ok", verify=False, timeout=2)
                break
            except requests.ConnectionError:
                assert time.monotonic() < deadline, "nginx did not listen"
                time.sleep(0.1)  # poll interval of a deadline-bounded readiness loop
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        upstream.shutdown()


@pytest.fixture
def client(nginx):
    s = requests.Session()
    s.trust_env = False
    s.verify = False  # the test's throwaway self-signed certificate
    return s


def _json_error(r: requests.Response, status: int, error_code: str) -> None:
    assert r.status_code == status, r.text
    assert r.headers["Content-Type"] == "application/json", r.text
    assert r.json()["error_code"] == error_code
    assert "max-age" in r.headers.get("Strict-Transport-Security", "")  # server-wide headers kept


@pytest.mark.parametrize("prefix", ["/api", "/ajax-api"])
def test_upstream_gone_is_json_502(nginx, client, prefix):
    _json_error(client.post(f"{nginx}{prefix}/2.0/mlflow/runs/close", json={}), 502, "TEMPORARILY_UNAVAILABLE")


@pytest.mark.parametrize("status", [502, 503, 504])
def test_unavailable_is_json_and_keeps_status(nginx, client, status):
    _json_error(client.get(f"{nginx}/api/2.0/mlflow/status/{status}"), status, "TEMPORARILY_UNAVAILABLE")


def test_server_info_location_has_the_json_errors_too(nginx, client):
    _json_error(client.get(f"{nginx}/api/3.0/mlflow/server-info/close"), 502, "TEMPORARILY_UNAVAILABLE")


def test_body_too_large_is_json_413(nginx, client):
    _json_error(
        client.post(
            f"{nginx}/api/2.0/mlflow/runs/log-batch", data=b"x" * 4096, headers={"Content-Type": "application/json"}
        ),
        413,
        "INVALID_PARAMETER_VALUE",
    )


def test_other_statuses_pass_through(nginx, client):
    r = client.get(f"{nginx}/api/2.0/mlflow/status/500")
    assert r.status_code == 500 and r.json() == {"upstream": True}  # MLflow's own answer
    assert client.get(f"{nginx}/api/2.0/mlflow/ok").json() == {"upstream": True}


def test_ui_keeps_html(nginx, client):
    r = client.get(f"{nginx}/static-files/close")
    assert r.status_code == 502 and r.headers["Content-Type"].startswith("text/html")
    r = client.get(f"{nginx}/status/401")
    assert r.status_code == 401 and r.headers["Content-Type"].startswith("text/html")


def test_api_401_is_json_and_failures_are_rate_limited(nginx, client):
    r = client.post(f"{nginx}/api/2.0/mlflow/status/401", json={})
    _json_error(r, 401, "UNAUTHENTICATED")
    assert r.headers["WWW-Authenticate"] == 'Basic realm="mlflow"'
    # A new connection each: Nginx may close one after answering 429 to a request whose body it did
    # not read, and the next request on it would fail in the client instead of being counted.
    statuses = [
        client.post(f"{nginx}/api/2.0/mlflow/status/401", json={}, headers={"Connection": "close"}) for _ in range(40)
    ]
    limited = [r for r in statuses if r.status_code == 429]
    assert limited, [r.status_code for r in statuses]  # burst 20, then 10 a minute
    _json_error(limited[0], 429, "TEMPORARILY_UNAVAILABLE")
