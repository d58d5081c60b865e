"""Headless Chromium (Debian's) driven over the DevTools protocol, for the UI tests: only our
server's key is trusted (SPKI pin), and credentials go in headers, never in a URL or a command line."""

import base64
import hashlib
import itertools
import json
import shutil
import subprocess
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import websocket
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from tests.conftest import ROOT, poll

CHROMIUM = shutil.which("chromium")


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


def page_text(chromium) -> str:
    result = chromium.call("Runtime.evaluate", expression="document.body ? document.body.innerText : ''")
    return result["result"].get("value", "")


@contextmanager
def chromium(profile: Path):
    """A headless Chromium with its profile in PROFILE; yields its page's DevTools."""
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
