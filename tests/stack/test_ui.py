"""The MLflow web UI through Nginx in headless Chromium (Debian's), after basic auth.

Chromium is driven over the DevTools protocol: basic-auth credentials go in an Authorization
header (not in a URL or on a command line) and only our server's key is trusted (SPKI pin).
The screenshot is saved to test-artifacts/ui-experiments.png.
"""

import base64
import hashlib
import itertools
import json
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest
import websocket
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import ROOT, poll

CHROMIUM = shutil.which("chromium")
ARTIFACTS = ROOT / "test-artifacts"


def spki_pin(cert_file: Path) -> str:
    cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


class DevTools:
    def __init__(self, ws_url: str):
        self.ws = websocket.create_connection(ws_url, timeout=30, suppress_origin=True)
        self.ids = itertools.count(1)
        self.responses = []  # (status, url) of every Network.responseReceived seen so far

    def call(self, method: str, **params) -> dict:
        msg_id = next(self.ids)
        self.ws.send(json.dumps({"id": msg_id, "method": method, "params": params}))
        while True:  # events arrive in between; bounded by the socket timeout
            msg = json.loads(self.ws.recv())
            if msg.get("method") == "Network.responseReceived":
                response = msg["params"]["response"]
                self.responses.append((response["status"], response["url"]))
            if msg.get("id") == msg_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]


@pytest.fixture
def chromium(tmp_path):
    if not CHROMIUM:
        pytest.fail("chromium not installed: run `./mlflowctl install`")
    profile = tmp_path / "profile"
    proc = subprocess.Popen(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-quic",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--remote-debugging-port=0",
            "--window-size=1400,900",
            f"--ignore-certificate-errors-spki-list={spki_pin(ROOT / 'certs' / 'server.crt')}",
            "about:blank",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        port_file = profile / "DevToolsActivePort"
        port = poll(
            "DevTools port", lambda: port_file.exists() and port_file.read_text().split("\n")[0], 30, every_s=0.25
        )
        targets = poll(
            "a page target",
            lambda: json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=5)),
            30,
            every_s=0.25,
        )
        page = next(t for t in targets if t["type"] == "page")
        yield DevTools(page["webSocketDebuggerUrl"])
    finally:
        proc.terminate()
        proc.wait(timeout=20)


def page_text(chromium) -> str:
    result = chromium.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
    return result["result"].get("value", "")


def test_ui_for_a_reader_loads_without_403(mlflow_admin, stack, chromium, unique, monkeypatch):
    """A non-admin with READ on one experiment: its runs, a run's metric chart, its artifacts, its
    logged models (list and page) and its traces (list and one trace) load, and none of the page's
    API calls gets 403 (bundle-auth's checks, authz.py, must not break the UI)."""
    import os

    import mlflow
    from mlflow.server import get_app_client

    auth = get_app_client("basic-auth", tracking_uri=stack)
    user, password = f"ui-reader-{time.time_ns()}", os.urandom(12).hex()
    auth.create_user(user, password)
    try:
        exp = mlflow_admin.create_experiment(f"ui-read/{unique}")
        run = mlflow_admin.create_run(exp, run_name=f"run-{unique[:20]}").info.run_id
        for step in range(3):
            mlflow_admin.log_metric(run, "reader_loss", 1.0 / (step + 1), step=step)
        mlflow_admin.log_text(run, "hello", "reader-notes.txt")
        model = mlflow_admin.create_logged_model(exp, name=f"lm-{unique[:20]}")
        # The trace's experiment through the environment: set_experiment() is process-wide state.
        monkeypatch.setenv("MLFLOW_EXPERIMENT_ID", exp)
        with mlflow.start_span(name=f"span-{unique[:20]}") as span:
            span.set_inputs({"question": f"q-{unique[:20]}"})
        mlflow.flush_trace_async_logging()
        auth.grant_user_permission(user, "experiment", exp, "READ")
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        chromium.call("Network.enable")
        chromium.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
        pages = [
            (f"#/experiments/{exp}/runs", f"run-{unique[:20]}"),
            (f"#/experiments/{exp}/runs/{run}/model-metrics", "reader_loss"),
            (f"#/experiments/{exp}/runs/{run}/artifacts", "reader-notes.txt"),
            (f"#/experiments/{exp}/models", f"lm-{unique[:20]}"),
            (f"#/experiments/{exp}/models/{model.model_id}", f"lm-{unique[:20]}"),
            (f"#/experiments/{exp}/traces", f"q-{unique[:20]}"),
            (f"#/experiments/{exp}/traces/{span.trace_id}", f"span-{unique[:20]}"),
        ]
        for fragment, text in pages:
            chromium.call("Page.navigate", url=f"{stack}/{fragment}")
            try:
                poll(f"{text!r} on {fragment}", lambda text=text: text in page_text(chromium), 90, every_s=0.25)
            except AssertionError as exc:
                failed = [(status, url) for status, url in chromium.responses if status >= 400]
                raise AssertionError(
                    f"{exc}; failed API calls: {failed}; page: {page_text(chromium)[:400]!r}"
                ) from None
        api = [(status, url) for status, url in chromium.responses if "/ajax-api/" in url or "/api/" in url]
        assert api, "no API call seen"
        bad = [(status, url) for status, url in api if status == 403 or status >= 500]
        assert not bad, bad
    finally:
        auth.delete_user(user)


def test_ui_shows_experiment_after_basic_auth(mlflow_admin, stack, admin_auth, chromium, unique):
    name = f"ui/{unique}"
    mlflow_admin.create_experiment(name)
    token = base64.b64encode(":".join(admin_auth).encode()).decode()
    chromium.call("Network.enable")
    chromium.call("Network.setExtraHTTPHeaders", headers={"Authorization": f"Basic {token}"})
    chromium.call("Page.navigate", url=f"{stack}/#/experiments")

    def page_text():
        return chromium.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")[
            "result"
        ].get("value", "")

    poll(f"experiment {name} on the experiments page", lambda: name in page_text(), 90, every_s=0.25)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = chromium.call("Page.captureScreenshot", format="png")
    (ARTIFACTS / "ui-experiments.png").write_bytes(base64.b64decode(shot["data"]))
    assert (ARTIFACTS / "ui-experiments.png").stat().st_size > 10_000
