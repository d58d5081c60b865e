"""Which engine: Docker where `docker info` answers, otherwise podman behind a Docker-API socket of
ours (installed and configured for this machine where missing); MLFLOW_BUNDLE_ENGINE chooses."""

import hashlib
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

from ctl.engine.core import ENGINE_CHOICE, ROOT, VAR, Engine, alive, log, run, start_daemon
from ctl.errors import CommandError

SOCKET_DIR = Path("/run/mlflow-bundle")
PODMAN_CONF = Path("/etc/containers/containers.conf")
# The process lacks CAP_SYS_RESOURCE (setrlimit fails when podman raises limits), and crun
# refuses the hybrid cgroup layout: runc with cgroupfs works. Without network_backend, podman 4.3
# may pick CNI (on a fresh machine its API service did, and so does a `podman import` into an empty
# storage root), and Debian's podman ships no CNI plugins: containers got no service-name DNS.
PODMAN_SETTINGS = {
    "containers": {"default_ulimits": "[]", "pids_limit": "0"},
    "engine": {"runtime": '"runc"', "cgroup_manager": '"cgroupfs"'},
    "network": {"network_backend": '"netavark"'},
}
PODMAN_PACKAGES = ("podman", "runc", "debootstrap", "netavark", "aardvark-dns", "fuse-overlayfs", "uidmap", "iptables")


def docker_works() -> bool:
    return (
        bool(shutil.which("docker"))
        and run(["docker", "info", "--format", "{{.OperatingSystem}}"], timeout=20).returncode == 0
    )


def podman_socket() -> Path:
    """One API socket per checkout (the path must stay short: a unix socket path has 108 bytes)."""
    return SOCKET_DIR / f"podman-{hashlib.sha256(str(ROOT).encode()).hexdigest()[:8]}.sock"


def ensure_podman_installed():
    missing = [
        p for p in PODMAN_PACKAGES if run(["dpkg-query", "-W", "-f=${Status}", p]).stdout.find("ok installed") < 0
    ]
    if missing:
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            raise CommandError(f"no Docker engine, and podman needs installing as root on Debian: {' '.join(missing)}")
        log(f"no Docker engine: installing podman ({' '.join(missing)})")
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *missing],
            check=True,
            env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"},
        )
    ensure_podman_conf()


def ensure_podman_conf(path: Path = PODMAN_CONF):
    """Set the keys of PODMAN_SETTINGS in containers.conf, leaving every other line as it is."""
    lines = path.read_text().splitlines() if path.exists() else []
    for table, keys in PODMAN_SETTINGS.items():
        for key, value in keys.items():
            section, found, end = None, None, None
            for i, line in enumerate(lines):
                if re.match(r"^\s*\[", line):
                    section = line.strip()
                    if section == f"[{table}]":
                        end = i + 1
                elif section == f"[{table}]":
                    end = i + 1 if line.strip() else end
                    if re.match(rf"^\s*{key}\s*=", line):
                        found = i
            if found is not None:
                lines[found] = f"{key} = {value}"
            elif end is not None:
                lines.insert(end, f"{key} = {value}")
            else:
                lines += ([""] if lines else []) + [f"[{table}]", f"{key} = {value}"]
    text = "\n".join(lines) + "\n"
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        log(f"wrote podman settings to {path}")


def service_pid() -> Path:
    return VAR / "run" / "podman-service.pid"


def ensure(start: bool = True) -> Engine:
    """Docker if a Docker engine answers; otherwise podman behind a Docker-API socket of ours.
    MLFLOW_BUNDLE_ENGINE=docker|podman chooses one where both run."""
    if ENGINE_CHOICE not in ("auto", "docker", "podman"):
        raise CommandError(f"MLFLOW_BUNDLE_ENGINE={ENGINE_CHOICE}: expected auto, docker or podman")
    if ENGINE_CHOICE == "docker" or (ENGINE_CHOICE == "auto" and (os.environ.get("DOCKER_HOST") or docker_works())):
        if ENGINE_CHOICE == "docker" and not docker_works():
            raise CommandError("MLFLOW_BUNDLE_ENGINE=docker, but `docker info` does not answer: start dockerd")
        return Engine("docker", {**os.environ})
    sock = podman_socket()
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    if not start:
        return Engine("podman", env)
    ensure_podman_installed()
    if not alive(service_pid()) or not sock.exists():
        SOCKET_DIR.mkdir(parents=True, exist_ok=True)
        sock.unlink(missing_ok=True)
        start_daemon(["podman", "system", "service", "--time=0", f"unix://{sock}"], service_pid(), "podman-service.log")
        deadline = time.monotonic() + 30
        while not sock.exists():
            if time.monotonic() > deadline:
                raise CommandError(
                    f"podman's API socket {sock} did not appear; see {VAR / 'log' / 'podman-service.log'}"
                )
            time.sleep(0.2)
        log(f"podman API on {sock}")
    return Engine("podman", env)
