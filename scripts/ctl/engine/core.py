"""What every part of the engine layer shares: paths, the project name, logging, the Engine handle
and the background daemons of ours (podman's API service, the health-check ticker)."""

import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from ctl.errors import CommandError
from ctl.settings import ROOT, setting

VAR = ROOT / "var"
BUILD_LOG = VAR / "log" / "build.log"
# `name:` in the compose file, unless COMPOSE_PROJECT_NAME overrides it, as it does for Compose: a
# second checkout on one engine needs its own project.
PROJECT = setting("COMPOSE_PROJECT_NAME", "mlflow")
# auto: Docker where `docker info` answers, otherwise podman; docker or podman: that engine only.
ENGINE_CHOICE = setting("MLFLOW_BUNDLE_ENGINE", "auto")
# This machine's CA bundle: builds reach PyPI through a TLS-intercepting proxy that it signs.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_PREFIX = "localhost/mlflow-bundle/debian:"
INPUTS_LABEL = "org.mlflow-bundle.inputs"
# The file a pip build stage finds in its (throw-away) build context: HOST_CA, or empty.
BUILD_CA = "build-ca.crt"


def mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def open_build_log():
    """The build log, opened for appending; its directory made first (on every engine's path)."""
    return open(mkdir(BUILD_LOG.parent) / BUILD_LOG.name, "a")


def throwaway_context(context: Path, scratch: Path, inputs=None) -> Path:
    """A copy of CONTEXT (its INPUTS only, where given) plus BUILD_CA, in SCRATCH."""
    skip = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for rel in inputs or ["."]:
        source, target = context / rel, scratch / rel
        if source.is_dir():
            shutil.copytree(source, target, ignore=skip, dirs_exist_ok=True)
        else:
            mkdir(target.parent)
            shutil.copy2(source, target)
    (scratch / BUILD_CA).write_bytes(HOST_CA.read_bytes() if HOST_CA.exists() else b"")
    return scratch


def log(msg: str):
    print(f"==> {msg}", flush=True)


def run(cmd: list, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, text=True, capture_output=True, timeout=timeout, **kw)


@dataclass
class Engine:
    kind: str  # "docker" or "podman"
    env: dict  # environment for Compose and the engine CLI

    @property
    def cli(self) -> list:
        return [self.kind]

    def builder(self) -> str:
        """What `build` runs: podman's buildah, or Docker's BuildKit (buildx) or classic builder."""
        if self.kind == "podman":
            return "podman's builder (buildah)"
        buildx = run([*self.cli, "buildx", "version"], env=self.env, timeout=30).returncode == 0
        return "Docker's BuildKit (buildx)" if buildx else "Docker's classic builder (no buildx)"

    def image_exists(self, ref: str) -> bool:
        return run([*self.cli, "image", "inspect", ref], env=self.env).returncode == 0

    def label(self, ref: str, key: str):
        out = run([*self.cli, "image", "inspect", "--format", "{{json .Config.Labels}}", ref], env=self.env)
        return (json.loads(out.stdout or "null") or {}).get(key) if out.returncode == 0 else None

    def top(self, container: str) -> list:
        """(user, command line) of every process in a container, seen by the engine from outside.
        podman names users from the container's passwd; Docker's `top` runs the host's `ps`, which
        needs a pid column and names uids from the host's passwd, so we name them from the container's."""
        if self.kind == "podman":
            rows = self._top(container, "user", "args")
            return [(line.split(None, 1) + [""])[:2] for line in rows]
        passwd = run([*self.cli, "exec", container, "cat", "/etc/passwd"], env=self.env, timeout=60).stdout
        names = {f[2]: f[0] for f in (line.split(":") for line in passwd.splitlines()) if len(f) > 2}
        rows = [(line.split(None, 2) + ["", ""])[1:3] for line in self._top(container, "-eo", "pid,uid,args")]
        return [[names.get(uid, uid), args] for uid, args in rows]

    def _top(self, container: str, *fmt) -> list:
        out = run([*self.cli, "top", container, *fmt], env=self.env, timeout=60)
        if out.returncode:
            raise CommandError(f"{self.kind} top {container} failed: {out.stderr.strip()}")
        return [line for line in out.stdout.splitlines()[1:] if line.strip()]

    def build(
        self,
        tag: str,
        context: Path,
        dockerfile: Path,
        args: dict,
        labels: dict = None,
        pypi=False,
        inputs=None,
        target: str = None,
    ):
        """Build TAG (the stage TARGET, where given). A PYPI build runs in a throw-away copy of CONTEXT (only INPUTS of it, paths
        relative to it, where given) with this machine's CA bundle as build-ca.crt, which only the
        Dockerfile's pip stage copies: Docker's classic builder has no -v and no --secret, and the
        final image's trust store stays the base image's."""
        # --force-rm: Docker's classic builder otherwise keeps the container of a failed step.
        cmd = [*self.cli, "build", "--force-rm", "-t", tag, "-f", str(dockerfile)]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        for key, value in (labels or {}).items():
            cmd += ["--label", f"{key}={value}"]
        if target:
            cmd += ["--target", target]
        started = time.monotonic()
        log(f"building {tag} ({dockerfile.relative_to(ROOT)}) with {self.builder()}; output in {BUILD_LOG}")
        with tempfile.TemporaryDirectory(dir=mkdir(VAR / "build"), prefix="context-") as scratch:
            if pypi:
                context = throwaway_context(context, Path(scratch), inputs)
            with open_build_log() as fh:
                fh.write(f"\n### {' '.join(cmd)} {context}\n")
                fh.flush()
                rc = subprocess.run([*cmd, str(context)], stdout=fh, stderr=subprocess.STDOUT, env=self.env).returncode
        if rc:
            raise CommandError(f"building {tag} failed; see {BUILD_LOG}")
        log(f"built {tag} in {time.monotonic() - started:.0f}s")


def alive(pidfile: Path):
    try:
        pid = int(pidfile.read_text())
        os.kill(pid, 0)
        # A zombie is not alive: /proc/PID/stat's third field is Z.
        return pid if Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z" else None
    except (OSError, ValueError):
        return None


def start_daemon(argv: list, pidfile: Path, logname: str) -> int:
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    (VAR / "log").mkdir(parents=True, exist_ok=True)
    with open(VAR / "log" / logname, "ab") as fh:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True, cwd=ROOT
        )
    pidfile.write_text(str(proc.pid))
    return proc.pid


def stop_daemon(pidfile: Path, sig=signal.SIGTERM, timeout: float = 15):
    pid = alive(pidfile)
    if pid:
        os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while alive(pidfile) and time.monotonic() < deadline:
            time.sleep(0.2)
    pidfile.unlink(missing_ok=True)
