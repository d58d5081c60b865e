"""The container engine under `./mlflowctl`: Docker where it runs, otherwise podman.

`docker-compose.production.yml` runs unchanged in either, driven by the real Compose binary from
the lock file. With podman (this project's CI machines have no Docker engine):
- `podman system service` serves the Docker API on a socket of ours (DOCKER_HOST for Compose);
- health checks are run by a ticker of ours (`python -m ctl.engine tick`), since podman runs
  them from systemd timers and there is no systemd here: it runs `podman healthcheck run` on each
  container's interval (every `start_interval` while the container is starting), and exits once
  the project has had no running container for a minute.

Images: each `${NAME_IMAGE:-official:pin}` in the compose file is used if present, else pulled.
Where the registry cannot be reached, a local stand-in is built from Debian packages
(docker/standins/NAME, on a debootstrap base) and recorded in var/images.env, which every
Compose call reads after .env. Our own image is built from docker/Dockerfile whenever its inputs
change (their hash is a label of the image).
"""

import datetime
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ctl.errors import CommandError
from ctl.settings import ROOT, parse_env

VAR = ROOT / "var"
COMPOSE_FILE = ROOT / "docker-compose.production.yml"
IMAGES_ENV = VAR / "images.env"
STANDINS = ROOT / "docker" / "standins"
VENV_BIN = Path(sys.executable).parent


def _setting(name: str, default: str) -> str:
    """A variable from the environment, then .env, as Compose reads them."""
    dotenv = ROOT / ".env"
    return os.environ.get(name) or (parse_env(dotenv.read_text()).get(name) if dotenv.exists() else None) or default


# `name:` in the compose file, unless COMPOSE_PROJECT_NAME overrides it, as it does for Compose: a
# second checkout on one engine needs its own project.
PROJECT = _setting("COMPOSE_PROJECT_NAME", "mlflow")
# auto: Docker where `docker info` answers, otherwise podman; docker or podman: that engine only.
ENGINE_CHOICE = _setting("MLFLOW_BUNDLE_ENGINE", "auto")
SOCKET_DIR = Path("/run/mlflow-bundle")
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_PREFIX = "localhost/mlflow-bundle/debian:"
INPUTS_LABEL = "org.mlflow-bundle.inputs"
# Inputs of our image: what docker/Dockerfile copies (kept in step with .dockerignore).
IMAGE_INPUTS = (
    "docker/Dockerfile",
    "docker/requirements.txt",
    "docker/entrypoint.sh",
    "requirements.lock",
    "scripts/jobs",
    "scripts/store",
)
# Inputs of the `backup` service's image (docker/backup/Containerfile, on the PostgreSQL image).
BACKUP_INPUTS = ("docker/backup", "scripts/jobs")
PODMAN_CONF = Path("/etc/containers/containers.conf")
# The process lacks CAP_SYS_RESOURCE (setrlimit fails when podman raises limits), and crun
# refuses the hybrid cgroup layout: runc with cgroupfs works.
PODMAN_SETTINGS = {
    "containers": {"default_ulimits": "[]", "pids_limit": "0"},
    "engine": {"runtime": '"runc"', "cgroup_manager": '"cgroupfs"'},
}
PODMAN_PACKAGES = ("podman", "runc", "debootstrap", "netavark", "aardvark-dns", "fuse-overlayfs", "uidmap", "iptables")


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

    def image_exists(self, ref: str) -> bool:
        return run([*self.cli, "image", "inspect", ref], env=self.env).returncode == 0

    def label(self, ref: str, key: str):
        out = run([*self.cli, "image", "inspect", "--format", "{{json .Config.Labels}}", ref], env=self.env)
        return (json.loads(out.stdout or "null") or {}).get(key) if out.returncode == 0 else None

    def top(self, container: str) -> list:
        """(user, command line) of every process in a container, seen by the engine from outside."""
        fmt = ["user", "args"] if self.kind == "podman" else ["-eo", "user,args"]
        out = run([*self.cli, "top", container, *fmt], env=self.env, timeout=60)
        if out.returncode:
            raise CommandError(f"{self.kind} top {container} failed: {out.stderr.strip()}")
        return [(line.split(None, 1) + [""])[:2] for line in out.stdout.splitlines()[1:] if line.strip()]

    def build(self, tag: str, context: Path, dockerfile: Path, args: dict, labels: dict = None, pypi: bool = False):
        cmd = [*self.cli, "build", "-t", tag, "-f", str(dockerfile)]
        if pypi and self.kind == "podman" and HOST_CA.exists():
            # Builds reach PyPI through this machine's TLS-intercepting CA only when it is mounted in.
            # Only for builds on an image that has it already: apt cannot replace a mounted file.
            cmd += ["-v", f"{HOST_CA}:{HOST_CA}:ro"]
        for key, value in args.items():
            cmd += ["--build-arg", f"{key}={value}"]
        for key, value in (labels or {}).items():
            cmd += ["--label", f"{key}={value}"]
        started = time.monotonic()
        log(f"building {tag} ({dockerfile.relative_to(ROOT)}); output in {VAR / 'log' / 'build.log'}")
        (VAR / "log").mkdir(parents=True, exist_ok=True)
        with open(VAR / "log" / "build.log", "a") as fh:
            fh.write(f"\n### {' '.join(cmd)}\n")
            fh.flush()
            rc = subprocess.run([*cmd, str(context)], stdout=fh, stderr=subprocess.STDOUT, env=self.env).returncode
        if rc:
            raise CommandError(f"building {tag} failed; see {VAR / 'log' / 'build.log'}")
        log(f"built {tag} in {time.monotonic() - started:.0f}s")


# --- the engine ------------------------------------------------------------------------------
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


# --- compose ---------------------------------------------------------------------------------
def default_profiles() -> tuple:
    """The `local` S3 store runs where .env points MLflow at an S3-compatible endpoint."""
    dotenv = ROOT / ".env"
    env = parse_env(dotenv.read_text()) if dotenv.exists() else {}
    return ("local",) if env.get("MLFLOW_S3_ENDPOINT_URL") else ()


def compose_args(profiles: tuple = None) -> list:
    profiles = default_profiles() if profiles is None else profiles
    args = [
        str(VENV_BIN / "docker-compose"),
        "-f",
        str(COMPOSE_FILE),
        "--project-directory",
        str(ROOT),
        "--env-file",
        str(ROOT / ".env"),
    ]
    if IMAGES_ENV.exists():
        args += ["--env-file", str(IMAGES_ENV)]
    for profile in profiles:
        args += ["--profile", profile]
    return args


def compose(
    engine: Engine, *args, check: bool = True, capture: bool = False, timeout: float = 900, profiles: tuple = None
) -> subprocess.CompletedProcess:
    cmd = compose_args(profiles) + list(args)
    proc = subprocess.run(cmd, env=engine.env, cwd=ROOT, text=True, timeout=timeout, capture_output=capture)
    if check and proc.returncode:
        detail = f": {proc.stderr.strip()[-2000:]}" if capture else ""
        raise CommandError(f"`docker compose {' '.join(args)}` failed ({proc.returncode}){detail}")
    return proc


def model(engine: Engine = None, profiles: tuple = None) -> dict:
    """The resolved compose model (with the profiles in use)."""
    env = engine.env if engine else {**os.environ}
    out = subprocess.run(
        compose_args(profiles) + ["config", "--format", "json"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if out.returncode:
        raise CommandError(f"docker-compose config failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def stale_services(engine: Engine, services=(), profiles: tuple = None) -> list:
    """Services whose container no longer matches the compose file or its image."""
    hashes = dict(
        line.split()
        for line in compose(engine, "config", "--hash=*", capture=True, profiles=profiles).stdout.splitlines()
        if line.strip()
    )
    stale = []
    for service, expected in hashes.items():
        if services and service not in services:
            continue
        out = run(
            [
                *engine.cli,
                "inspect",
                "--format",
                '{{index .Config.Labels "com.docker.compose.config-hash"}} {{.Image}} {{.Config.Image}}',
                container_name(service),
            ],
            env=engine.env,
        )
        if out.returncode:
            continue  # not created yet: `up` creates it
        label, image_id, ref = (out.stdout.split() + ["", "", ""])[:3]
        current = run([*engine.cli, "image", "inspect", "--format", "{{.Id}}", ref], env=engine.env).stdout.strip()
        if label != expected or image_id.removeprefix("sha256:") != current.removeprefix("sha256:"):
            stale.append(service)
    return stale


def up(
    engine: Engine, *services, timeout_s: int = 600, capture: bool = False, options: tuple = (), profiles: tuple = None
) -> subprocess.CompletedProcess:
    """`compose up --detach --wait`, recreating only containers that changed.

    podman 4.3's Docker API reports a network's name where Compose expects the network's ID, so
    Compose sees every container as attached to the wrong network and recreates all of them on
    every `up` (a restart of PostgreSQL, and the loss of an in-memory S3 store's objects). With
    podman we compare config hashes and images ourselves, remove what changed, and pass
    --no-recreate.
    """
    args = ["up", "--detach", "--wait", "--wait-timeout", str(timeout_s), "--remove-orphans"]
    if engine.kind == "podman":
        stale = stale_services(engine, services, profiles)
        if stale:
            log(f"recreating {', '.join(stale)} (config or image changed)")
            compose(engine, "rm", "--stop", "--force", "--volumes", *stale, capture=True, profiles=profiles)
        args.append("--no-recreate")
    return compose(
        engine, *args, *options, *services, check=False, capture=capture, timeout=timeout_s + 120, profiles=profiles
    )


def restart(engine: Engine, *services, timeout: float = 600):
    """`compose stop` then `start` (every service by default), so each container gets its own
    stop_signal and stop_grace_period. podman's Docker API turns a `restart` without a timeout into
    an immediate SIGKILL (podman-container-tools/podman#29276): PostgreSQL then needs crash recovery."""
    compose(engine, "stop", *services, timeout=timeout)
    compose(engine, "start", *services, timeout=timeout)


def remove_project(engine: Engine, volumes: bool):
    """What `compose down` removes, found by the project's label: for when there is no .env to
    interpolate the compose file with (a fresh checkout cleaning up after an earlier one)."""
    label = f"label=com.docker.compose.project={PROJECT}"
    kinds = [("container", ["ps", "-aq"], ["rm", "-f"]), ("network", ["network", "ls", "-q"], ["network", "rm"])]
    if volumes:
        kinds.append(("volume", ["volume", "ls", "-q"], ["volume", "rm", "-f"]))
    for kind, ls, rm in kinds:
        ids = run([*engine.cli, *ls, "--filter", label], env=engine.env).stdout.split()
        if ids:
            log(f"removing {len(ids)} {kind}(s) of project {PROJECT}")
            run([*engine.cli, *rm, *ids], env=engine.env, timeout=300)


def json_rows(text: str) -> list:
    """The engine's `--format json` output: one JSON array (Docker) or one object per line (Compose, podman)."""
    text = text.strip()
    return (
        json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines() if line.strip()]
    )


def ps(engine: Engine, *services) -> list:
    """`compose ps --all` rows (Service, State, Health, ExitCode, Publishers, ...), one per container."""
    return json_rows(compose(engine, "ps", "--all", "--format", "json", *services, capture=True).stdout)


def container_name(service: str) -> str:
    return f"{PROJECT}-{service}-1"


# --- images ----------------------------------------------------------------------------------
def image_variables(text: str = None) -> dict:
    """`NAME_IMAGE` -> official default, as written in the compose file (its one definition)."""
    text = text if text is not None else COMPOSE_FILE.read_text()
    return dict(re.findall(r"\$\{([A-Z0-9_]+_IMAGE):-([^}]+)\}", text))


def standin_dir(variable: str) -> Path:
    return STANDINS / variable.removesuffix("_IMAGE").lower()


def standin_tag(variable: str, official: str) -> str:
    return f"localhost/mlflow-bundle/standin-{standin_dir(variable).name}:{official.rsplit(':', 1)[-1]}"


def containerfile_base(path: Path) -> str:
    found = re.search(r"^ARG BASE=(\S+)", path.read_text(), re.M)
    if not found:
        raise CommandError(f"{path} has no `ARG BASE=` default")
    return found.group(1)


def ensure_debian_base(engine: Engine, ref: str):
    if engine.image_exists(ref):
        return
    suite = ref.removeprefix(BASE_PREFIX)
    if not shutil.which("debootstrap"):
        raise CommandError("debootstrap is needed to build the offline base images (apt-get install debootstrap)")
    target = VAR / "debootstrap" / suite
    shutil.rmtree(target, ignore_errors=True)
    target.mkdir(parents=True)
    log(f"debootstrap {suite} (minbase) for the stand-in images")
    started = time.monotonic()
    with open(VAR / "log" / "build.log", "a") as fh:
        rc = subprocess.run(
            ["debootstrap", "--variant=minbase", suite, str(target), "http://deb.debian.org/debian"],
            stdout=fh,
            stderr=subprocess.STDOUT,
        ).returncode
    if rc:
        raise CommandError(f"debootstrap {suite} failed; see {VAR / 'log' / 'build.log'}")
    tar = subprocess.Popen(["tar", "-C", str(target), "-c", "."], stdout=subprocess.PIPE)
    imported = subprocess.run([*engine.cli, "import", "-", ref], stdin=tar.stdout, capture_output=True, env=engine.env)
    tar.wait()
    shutil.rmtree(target, ignore_errors=True)
    if imported.returncode or tar.returncode:
        raise CommandError(f"importing {ref} failed: {imported.stderr.decode().strip()}")
    log(f"made {ref} in {time.monotonic() - started:.0f}s")


def ensure_standin(engine: Engine, variable: str, official: str) -> str:
    tag = standin_tag(variable, official)
    containerfile = standin_dir(variable) / "Containerfile"
    if not containerfile.exists():
        raise CommandError(f"{official} cannot be pulled and there is no stand-in for it ({containerfile})")
    digest = inputs_hash([containerfile.parent.relative_to(ROOT).as_posix()])
    if engine.label(tag, INPUTS_LABEL) == digest:
        return tag
    base = containerfile_base(containerfile)
    if base.startswith(BASE_PREFIX):
        ensure_debian_base(engine, base)
    else:  # another stand-in, e.g. the S3 store on the python stand-in
        variable_of = {standin_tag(v, o): (v, o) for v, o in image_variables().items()}
        ensure_standin(engine, *variable_of[base])
    # On a debootstrap base the build needs only the Debian mirror; on another stand-in, PyPI.
    engine.build(
        tag,
        containerfile.parent,
        containerfile,
        {"BASE": base},
        {INPUTS_LABEL: digest},
        pypi=not base.startswith(BASE_PREFIX),
    )
    return tag


def pull(engine: Engine, ref: str) -> bool:
    log(f"pulling {ref}")
    try:
        return run([*engine.cli, "pull", ref], timeout=600, env=engine.env).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def inputs_hash(paths, extra: str = "") -> str:
    digest = hashlib.sha256(extra.encode())
    for rel in paths:
        base = ROOT / rel
        files = (
            sorted(
                p
                for p in base.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and not any(part.endswith(".egg-info") for part in p.parts)
            )
            if base.is_dir()
            else [base]
        )
        for f in files:
            digest.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def read_images_env() -> dict:
    return parse_env(IMAGES_ENV.read_text()) if IMAGES_ENV.exists() else {}


def ensure_images(engine: Engine, env: dict, profiles: tuple = None) -> dict:
    """Every image the stack uses is present: official (present or pulled), else a stand-in; an
    image with neither (Grafana: Debian packages none) is left out, see missing_images."""
    chosen = {}
    services = model(engine, profiles)["services"].values()
    in_use = {svc.get("image") for svc in services} | {
        a for svc in services for a in svc.get("build", {}).get("args", {}).values()
    }
    recorded, officials = read_images_env(), image_variables()
    for variable, official in officials.items():
        wanted = env.get(variable) or official
        if (recorded.get(variable) or wanted) not in in_use:
            continue  # e.g. the local S3 store when artifacts go to AWS S3
        if engine.image_exists(wanted) or pull(engine, wanted):
            chosen[variable] = wanted
            continue
        if not (standin_dir(variable) / "Containerfile").exists():
            log(f"{wanted} cannot be pulled (no registry reachable?) and has no stand-in: its services are left out")
            continue
        log(f"{wanted} cannot be pulled (no registry reachable?): using a local stand-in built from Debian packages")
        chosen[variable] = ensure_standin(engine, variable, official)
    standins = {k: v for k, v in chosen.items() if v != (env.get(k) or officials[k])}
    # Stand-ins of profiles not in use this time (e.g. monitoring) stay recorded for the next `up` that uses them.
    standins.update({k: v for k, v in recorded.items() if k in officials and k not in chosen})
    VAR.mkdir(exist_ok=True)
    IMAGES_ENV.write_text(
        "# Written by `./mlflowctl up`: stand-ins for images no registry could provide.\n"
        + "".join(f"{k}={v}\n" for k, v in sorted(standins.items()))
    )
    ensure_our_image(engine, env, chosen)
    # apt only: with the host CA mounted in, apt could not update ca-certificates.
    ensure_built(
        engine, env["BACKUP_IMAGE"], "docker/backup/Containerfile", BACKUP_INPUTS, "POSTGRES_IMAGE", chosen, pypi=False
    )
    return chosen


def missing_images(engine: Engine, profiles: tuple = None) -> dict:
    """Service -> image, for services whose image is absent after ensure_images (left out)."""
    return {
        name: svc["image"]
        for name, svc in model(engine, profiles)["services"].items()
        if not engine.image_exists(svc["image"])
    }


def ensure_our_image(engine: Engine, env: dict, chosen: dict):
    ensure_built(engine, env["MLFLOW_IMAGE"], "docker/Dockerfile", IMAGE_INPUTS, "PYTHON_IMAGE", chosen, pypi=True)


def ensure_built(engine: Engine, tag: str, dockerfile: str, inputs: tuple, base: str, chosen: dict, pypi: bool):
    """Build TAG from DOCKERFILE on the image chosen for the variable BASE, unless it is up to date."""
    digest = inputs_hash(inputs, extra=chosen[base])
    if engine.label(tag, INPUTS_LABEL) == digest:
        log(f"{tag} is up to date")
        return
    engine.build(tag, ROOT, ROOT / dockerfile, {base: chosen[base]}, {INPUTS_LABEL: digest}, pypi=pypi)


# --- health-check ticker (podman only) -------------------------------------------------------
def ticker_pid() -> Path:
    """One ticker per compose project: it checks only its own project's containers."""
    return VAR / "run" / f"healthcheck-ticker-{PROJECT}.pid"


def start_ticker(engine: Engine):
    if engine.kind == "podman" and not alive(ticker_pid()):
        start_daemon([sys.executable, "-m", "ctl.engine", "tick"], ticker_pid(), "healthcheck-ticker.log")


def stop_daemon(pidfile: Path, sig=signal.SIGTERM, timeout: float = 15):
    pid = alive(pidfile)
    if pid:
        os.killpg(pid, sig)
        deadline = time.monotonic() + timeout
        while alive(pidfile) and time.monotonic() < deadline:
            time.sleep(0.2)
    pidfile.unlink(missing_ok=True)


def duration_s(ns) -> float:
    return (ns or 0) / 1e9


def in_start_period(info: dict, check: dict) -> bool:
    started = datetime.datetime.fromisoformat(info.get("State", {}).get("StartedAt") or "1970-01-01T00:00:00Z")
    elapsed = (datetime.datetime.now(datetime.UTC) - started).total_seconds()
    return elapsed < duration_s(check.get("StartPeriod"))


def tick(idle_exit_s: float = 60, max_hours: float = 24 * 30):
    """Run each project container's health check when due; exit when the project stays empty."""
    due: dict = {}
    last_seen = time.monotonic()
    stop = time.monotonic() + max_hours * 3600
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while time.monotonic() < stop:
        out = run(
            ["podman", "ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format", "{{.ID}}"],
            timeout=30,
        )
        ids = out.stdout.split()
        now = time.monotonic()
        if ids:
            last_seen = now
        elif now - last_seen > idle_exit_s:
            print("no running container for a minute: ticker exits", flush=True)
            return
        if ids:
            infos = json.loads(run(["podman", "inspect", *ids], timeout=30).stdout or "[]")
            for info in infos:
                check = info.get("Config", {}).get("Healthcheck") or {}
                if not check.get("Test") or check["Test"][0] == "NONE":
                    continue
                interval = duration_s(check.get("Interval")) or 30
                if in_start_period(info, check):  # as Docker: start_interval only in the start period
                    interval = min(interval, duration_s(check.get("StartInterval")) or 2)
                cid = info["Id"]
                if now >= due.get(cid, 0):
                    due[cid] = now + interval
                    try:
                        run(["podman", "healthcheck", "run", cid], timeout=duration_s(check.get("Timeout")) + 30)
                    except subprocess.TimeoutExpired:
                        print(f"health check of {info.get('Name')} hung", flush=True)
            due = {k: v for k, v in due.items() if k in {i["Id"] for i in infos}}
        time.sleep(1)


if __name__ == "__main__":
    if sys.argv[1:] == ["tick"]:
        tick()
    else:
        sys.exit("usage: python -m ctl.engine tick")
