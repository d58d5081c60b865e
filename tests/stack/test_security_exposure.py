"""What another machine can reach: by default nothing at all; and no internal port is ever published.

Nginx is the only service with published ports, and `.env.example` binds them to 127.0.0.1
(NGINX_BIND_ADDRESS): out of the box the stack serves this machine only. PostgreSQL, PgBouncer,
MLflow and the S3 store are on the engine's internal networks and are never published.

A second network namespace joined to the host by a veth pair on a private /30 that exists only
during the test (host 10.254.254.1, namespace 10.254.254.2) plays the other machine. Traffic goes
only between the two ends; the namespace has no other route. A listener the test opens on the
host end proves the probe can reach the host at all, so "closed" means closed.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

from ctl import engine

HOST_END, NS_END = "10.254.254.1", "10.254.254.2"
STACK_PORTS = {
    "nginx https": 443,
    "nginx http": 80,
    "postgres": 5432,
    "pgbouncer": 6432,
    "mlflow": 5000,
    "s3": 8333,
    "plain-mlflow (benchmark)": 5001,
}
PROBE = """
import json, socket, sys
out = {}
for port in map(int, sys.argv[2:]):
    s = socket.socket(); s.settimeout(2)
    try:
        out[port] = "open" if s.connect_ex((sys.argv[1], port)) == 0 else "closed"
    except OSError as exc:
        out[port] = type(exc).__name__
    finally:
        s.close()
print(json.dumps(out))
"""


def ip(*args):
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True, timeout=10)


@pytest.fixture
def other_machine():
    """A network namespace `mlsecPID` linked to the host by veth `vshPID` <-> `vsnPID`; always removed."""
    tag = os.getpid() % 100000
    ns, host_if, ns_if = f"mlsec{tag}", f"vsh{tag}", f"vsn{tag}"
    try:
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", ns_if)
        ip("link", "set", ns_if, "netns", ns)
        ip("addr", "add", f"{HOST_END}/30", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{NS_END}/30", "dev", ns_if)
        ip("-n", ns, "link", "set", ns_if, "up")
        yield ns
    finally:  # deleting one end of a veth deletes both
        subprocess.run(["ip", "link", "del", host_if], capture_output=True, timeout=10)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_nothing_of_the_stack_reachable_from_another_machine(stack, other_machine, stack_env):
    assert stack_env.get("NGINX_BIND_ADDRESS", "127.0.0.1") == "127.0.0.1", "this test checks the default binding"
    control = socket.socket()
    control.bind((HOST_END, 0))
    control.listen(1)
    control_port = control.getsockname()[1]
    try:
        ports = [*STACK_PORTS.values(), control_port]
        probe = subprocess.run(
            ["ip", "netns", "exec", other_machine, sys.executable, "-c", PROBE, HOST_END, *map(str, ports)],
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        control.close()
    assert probe.returncode == 0, probe.stderr
    seen = {int(k): v for k, v in json.loads(probe.stdout).items()}
    assert seen[control_port] == "open", "the probe cannot reach the host at all: the check below would prove nothing"
    assert {name: seen[port] for name, port in STACK_PORTS.items() if seen[port] == "open"} == {}


def test_only_nginx_publishes_and_only_on_loopback(stack, eng, stack_env):
    """What the engine really publishes (not just what the file says): nginx's 443 and 80 on 127.0.0.1."""
    published = {}
    for row in engine.ps(eng):
        for pub in row.get("Publishers") or []:
            if pub.get("PublishedPort"):
                published.setdefault(row["Service"], set()).add(
                    (pub.get("URL"), pub["PublishedPort"], pub["TargetPort"])
                )
    assert set(published) - {"plain-mlflow"} == {"nginx"}, published
    https, http = int(stack_env.get("HTTPS_PORT", "443")), int(stack_env.get("HTTP_PORT", "80"))
    assert published["nginx"] == {("127.0.0.1", https, 443), ("127.0.0.1", http, 80)}, published
    # The benchmark's plain server, when it is up at all, is on loopback only.
    assert all(url == "127.0.0.1" for url, _, _ in published.get("plain-mlflow", ()))


def test_namespace_removed_after_use(stack):
    """The fixture above leaves nothing behind (runs after it in file order)."""
    tag = os.getpid() % 100000
    assert f"mlsec{tag}" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", f"vsh{tag}"], capture_output=True).returncode != 0
