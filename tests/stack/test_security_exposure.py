"""What another machine can reach: only Nginx (443, 80).

A second network namespace joined to the host by a veth pair on a private /30 that exists only
during the test (host 10.254.254.1, namespace 10.254.254.2) plays the other machine. Traffic goes
only between the two ends; the namespace has no other route. Native backend only: in compose the
same rule is the `internal` backend network (tests/unit).
"""
import json
import os
import subprocess
import sys

import pytest

HOST_END, NS_END = "10.254.254.1", "10.254.254.2"
REACHABLE = {"nginx https": 443, "nginx http": 80}
UNREACHABLE = {"postgres": 5432, "pgbouncer": 6432, "mlflow": 5000, "s3": 8333}
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
def other_machine(backend):
    """A network namespace `mlsecPID` linked to the host by veth `vshPID` <-> `vsnPID`; always removed."""
    if backend != "native":
        pytest.skip("the namespace probe needs the native stack's host ports")
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


def test_only_nginx_reachable_from_another_machine(stack, other_machine):
    ports = [*REACHABLE.values(), *UNREACHABLE.values()]
    probe = subprocess.run(["ip", "netns", "exec", other_machine, sys.executable, "-c", PROBE, HOST_END,
                            *map(str, ports)], capture_output=True, text=True, timeout=60)
    assert probe.returncode == 0, probe.stderr
    seen = {int(k): v for k, v in json.loads(probe.stdout).items()}
    assert {name: seen[port] for name, port in REACHABLE.items()} == {name: "open" for name in REACHABLE}
    assert not {name: seen[port] for name, port in UNREACHABLE.items() if seen[port] == "open"}


def test_namespace_removed_after_use(stack, backend):
    """The fixture above leaves nothing behind (runs after it in file order)."""
    if backend != "native":
        pytest.skip("native only")
    tag = os.getpid() % 100000
    assert f"mlsec{tag}" not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert subprocess.run(["ip", "link", "show", f"vsh{tag}"], capture_output=True).returncode != 0
