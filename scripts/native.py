"""Native runner: the services of docker-compose.production.yml as host processes.

The resolved Compose model (the real `docker-compose config`) gives each service's command,
environment, mounts, user, working dir, ulimits, health check and start order. Container paths in
arguments and environment are mapped into a per-service directory tree (var/run/SERVICE/root)
whose entries are symlinks to what Compose would mount there, so config files with relative paths
work unchanged. Each process runs in its own mount namespace where /etc/hosts maps the service
names (postgres, pgbouncer, mlflow, s3) to 127.0.0.1, so host names in configs work unchanged too.
What the model cannot say (where an image's binaries are on this host, which user replaces the
image's user, what binds loopback only) is the explicit table in images() below; services with no
native form are listed in REPLACED.
"""
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VAR = ROOT / "var"
COMPOSE_FILE = ROOT / "docker-compose.production.yml"
VENV_BIN = Path(sys.executable).parent
SERVICE_NAMES = ("postgres", "pgbouncer", "mlflow", "s3")
NATIVE_USER = "mlflow"  # stands in for our image's non-root `mlflow` user


def pg_bin() -> Path:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name))
    if not versions:
        raise SystemExit("native: PostgreSQL server binaries not found (apt-get install postgresql)")
    return versions[-1].parent


@dataclass
class Image:
    """How one image's processes run on this host."""
    path: list            # directories searched for the image's binaries, before /usr/sbin:/usr/bin:/bin
    user: str             # host user standing in for the image's default user
    extra_args: list = field(default_factory=list)   # appended to the command; {root} {run} expand
    files: dict = field(default_factory=dict)        # image-provided container paths -> host paths


def images() -> dict:
    return {
        # Loopback only on the host (the container listens on its internal network), and TCP only:
        # the host's /var/run/postgresql belongs to Debian's own cluster.
        "postgres": Image([str(pg_bin())], "postgres", ["-c", "listen_addresses=127.0.0.1",
                                                        "-c", "unix_socket_directories="]),
        "edoburu/pgbouncer": Image([], "postgres"),
        # Debian's nginx: explicit prefix and config (its compiled default is /etc/nginx), workers as www-data.
        "nginx": Image([], "root", ["-p", "{root}/etc/nginx/", "-c", "{root}/etc/nginx/nginx.conf"],
                       {"/etc/nginx/mime.types": "/etc/nginx/mime.types"}),
        "build": Image([str(VENV_BIN)], NATIVE_USER, [], {"/opt/bundle/scripts": str(ROOT / "scripts"),
                                                          "/docker-entrypoint.sh": str(ROOT / "docker" / "entrypoint.sh")}),
    }


def env_overrides() -> dict:
    """Per-service environment that differs on the host: PgBouncer binds loopback, and its auth
    file belongs to the host user that runs it instead of the image's uid 70."""
    pgbouncer_uid = pwd.getpwnam(images()["edoburu/pgbouncer"].user).pw_uid
    return {"render-config": {"PGBOUNCER_LISTEN_ADDR": "127.0.0.1", "PGBOUNCER_UID": str(pgbouncer_uid)}}


NGINX_GLOBALS = "user www-data; pid {run}/nginx.pid;"  # joined to the command's own -g
REPLACED = {
    # SeaweedFS has no Debian or PyPI package. moto's S3 API stands in: in memory, so native
    # artifacts last until `down` (said by `up`, `status` and the README).
    "s3": ([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", "8333"], "http://127.0.0.1:8333/"),
}
OUR_IMAGE_ENTRYPOINT = ["/docker-entrypoint.sh"]  # docker/Dockerfile ENTRYPOINT


def log(msg: str):
    print(f"native: {msg}", flush=True)


def compose_model(profile: str = "local") -> dict:
    cmd = [str(VENV_BIN / "docker-compose"), "-f", str(COMPOSE_FILE), "--project-directory", str(ROOT),
           "--profile", profile, "config", "--format", "json"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"native: docker-compose config failed: {out.stderr.strip()}")
    return json.loads(out.stdout)


def image_of(svc: dict) -> Image:
    table = images()
    if "build" in svc:
        return table["build"]
    name = svc["image"].rsplit(":", 1)[0]
    if name not in table:
        raise SystemExit(f"native: no native form for image {svc['image']} (add it to images() or REPLACED)")
    return table[name]


def start_order(services: dict) -> list:
    order, seen = [], set()

    def visit(name, stack=()):
        if name in seen:
            return
        if name in stack:
            raise SystemExit(f"native: dependency cycle at {name}")
        for dep in services[name].get("depends_on", {}):
            if dep in services:
                visit(dep, stack + (name,))
        seen.add(name)
        order.append(name)

    for name in sorted(services):
        visit(name)
    return order


def one_shot(services: dict) -> set:
    return {dep for s in services.values() for dep, d in s.get("depends_on", {}).items()
            if d["condition"] == "service_completed_successfully"}


def pidfile(name: str) -> Path:
    return VAR / "run" / f"{name}.pid"


def main_pid(name: str):
    """The recorded main pid of a native service (None when it was never started)."""
    try:
        return int(pidfile(name).read_text())
    except (OSError, ValueError):
        return None


class Service:
    def __init__(self, name: str, svc: dict):
        self.name, self.svc = name, svc
        self.run = VAR / "run" / name
        self.root = self.run / "root"
        self.pidfile = pidfile(name)
        self.logfile = VAR / "log" / f"{name}.log"
        self.image = None if name in REPLACED else image_of(svc)

    # --- paths ----------------------------------------------------------------------------
    def mounts(self) -> dict:
        """Container path -> host path, as Compose would mount them (plus image-provided files)."""
        out = dict(self.image.files)
        for vol in self.svc.get("volumes", []):
            src = vol["source"] if vol["type"] == "bind" else str(VAR / "volumes" / vol["source"])
            out[vol["target"]] = src
        for target in self.svc.get("tmpfs", []):
            out[target] = str(self.run / "tmpfs" / target.strip("/").replace("/", "_"))
        return out

    def build_tree(self):
        shutil.rmtree(self.root, ignore_errors=True)
        user = pwd.getpwnam(self.user())
        for target, src in self.mounts().items():
            if not Path(src).exists():  # named volumes and tmpfs start empty, owned by the service user
                Path(src).mkdir(parents=True, mode=0o755)
                os.chown(src, user.pw_uid, user.pw_gid)
            link = self.root / target.lstrip("/")
            link.parent.mkdir(parents=True, exist_ok=True)
            link.symlink_to(src)
        for target in [self.svc.get("working_dir", "")] + ["/opt/bundle" if "build" in self.svc else ""]:
            if target:
                (self.root / target.lstrip("/")).mkdir(parents=True, exist_ok=True)

    def map(self, value: str) -> str:
        """Rewrite container paths into this service's tree: paths at or under a mount, and the
        directories that hold mounts (`--out /rendered` when /rendered/nginx is mounted)."""
        targets = self.mounts()
        parents = {str(p) for t in targets for p in Path(t).parents if str(p) != "/"}
        pattern = "|".join([re.escape(t) + r"(?=/|$|[^\w.-])" for t in sorted(targets, key=len, reverse=True)]
                           + [re.escape(p) + r"(?=$|[^\w./-])" for p in sorted(parents, key=len, reverse=True)])
        return re.sub(r"(?<![\w/.:@-])(?:" + pattern + ")", lambda m: str(self.root) + m.group(0), value)

    # --- process --------------------------------------------------------------------------
    def user(self) -> str:
        if self.name in REPLACED:
            return NATIVE_USER
        user = self.svc.get("user")
        return "root" if user and user.split(":")[0] in ("0", "root") else self.image.user

    def argv(self) -> list:
        if self.name in REPLACED:
            return REPLACED[self.name][0]
        command = (self.svc.get("entrypoint") or (OUR_IMAGE_ENTRYPOINT if "build" in self.svc else [])) \
            + (self.svc.get("command") or [])
        fmt = {"root": self.root, "run": self.run}
        args = [self.map(a).replace("0.0.0.0", "127.0.0.1") for a in command]
        if "-g" in args:
            args[args.index("-g") + 1] += " " + NGINX_GLOBALS.format(**fmt)
        return args + [a.format(**fmt) for a in self.image.extra_args]

    def env(self) -> dict:
        env = {k: self.map(str(v)) for k, v in (self.svc.get("environment") or {}).items() if v is not None}
        env.update(env_overrides().get(self.name, {}))
        path = (self.image.path if self.image else []) + ["/usr/sbin", "/usr/bin", "/bin"]
        return {**env, "PATH": ":".join(path), "HOME": str(self.run / "home"), "LANG": "C.UTF-8"}

    def cwd(self) -> str:
        workdir = self.svc.get("working_dir") or ("/opt/bundle" if "build" in self.svc else "")
        return str(self.root / workdir.lstrip("/")) if workdir else str(self.run)

    def wrap(self, argv: list) -> list:
        """Own mount namespace with our /etc/hosts, then drop to the service user."""
        drop = [] if self.user() == "root" else ["setpriv", f"--reuid={self.user()}", f"--regid={self.user()}",
                                                  "--init-groups", "--"]
        return with_service_hosts(drop + argv)

    def limits(self):
        for name, value in (self.svc.get("ulimits") or {}).items():
            if name == "nofile":
                resource.setrlimit(resource.RLIMIT_NOFILE, (value["soft"], value["hard"]))

    def prepare(self):
        self.run.mkdir(parents=True, exist_ok=True)
        home = self.run / "home"
        home.mkdir(exist_ok=True)
        user = pwd.getpwnam(self.user())
        os.chown(home, user.pw_uid, user.pw_gid)
        self.logfile.parent.mkdir(parents=True, exist_ok=True)
        if self.image:
            self.build_tree()

    def pid(self):
        pid = main_pid(self.name)
        try:
            if pid:
                os.kill(pid, 0)
            return pid
        except ProcessLookupError:
            return None

    def spawn(self, argv: list, logfile) -> subprocess.Popen:
        return subprocess.Popen(self.wrap(argv), cwd=self.cwd(), env=self.env(), stdin=subprocess.DEVNULL,
                                stdout=logfile, stderr=subprocess.STDOUT, start_new_session=True,
                                preexec_fn=self.limits)

    def run_once(self, timeout: float = 600):
        with open(self.logfile, "ab") as fh:
            proc = self.spawn(self.argv(), fh)
            try:
                rc = proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                rc = "timeout"
        if rc != 0:
            raise SystemExit(f"native: {self.name} failed ({rc}); last lines of {self.logfile}:\n{tail(self.logfile)}")

    def start(self):
        with open(self.logfile, "ab") as fh:
            proc = self.spawn(self.argv(), fh)
        self.pidfile.write_text(str(proc.pid))

    def healthy(self) -> bool:
        if self.pid() is None:
            return False
        if self.name in REPLACED:
            return http_ok(REPLACED[self.name][1])
        test = (self.svc.get("healthcheck") or {}).get("test")
        if not test:
            return True
        argv = [self.map(a) for a in test[1:]] if test[0] == "CMD" else ["/bin/sh", "-c", self.map(test[1])]
        try:
            return subprocess.run(self.wrap(argv), cwd=self.cwd(), env=self.env(), capture_output=True,
                                  timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def wait_healthy(self, deadline_s: float = 180):
        deadline = time.monotonic() + deadline_s
        while time.monotonic() < deadline:
            if self.pid() is None:
                raise SystemExit(f"native: {self.name} exited; last lines of {self.logfile}:\n{tail(self.logfile)}")
            if self.healthy():
                return
            time.sleep(0.5)
        raise SystemExit(f"native: {self.name} not healthy after {deadline_s:.0f}s; last lines of {self.logfile}:\n"
                         f"{tail(self.logfile)}")

    def stop(self, timeout: float = 60):
        pid = self.pid()
        if pid is None:
            self.pidfile.unlink(missing_ok=True)
            return False
        # Like Docker: the stop signal to the main process, then whatever is left of its group.
        os.kill(pid, getattr(signal, self.svc.get("stop_signal", "SIGTERM")))
        wait_until(lambda: self.pid() is None, timeout)
        for sig in (signal.SIGTERM, signal.SIGKILL):
            if not group_alive(pid):
                break
            os.killpg(pid, sig)
            wait_until(lambda: not group_alive(pid), 10)
        self.pidfile.unlink(missing_ok=True)
        return True


def wait_until(predicate, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not predicate():
        time.sleep(0.2)


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


def tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log)"


def http_ok(url: str) -> bool:
    import urllib.request
    try:
        with urllib.request.urlopen(url, timeout=3):
            return True
    except Exception:
        return False


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def init_postgres(svc: Service):
    """What the postgres image's entrypoint does on an empty PGDATA: initdb with the superuser password."""
    env = svc.env()
    data = Path(env["PGDATA"])
    if (data / "PG_VERSION").exists():
        return
    log(f"initialising PostgreSQL cluster in {data.resolve()}")
    data.resolve().chmod(0o700)
    pwfile = svc.run / "pwfile"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(env["POSTGRES_PASSWORD"] + "\n")
    user = pwd.getpwnam(svc.user())
    os.chown(pwfile, user.pw_uid, user.pw_gid)
    try:
        subprocess.run(svc.wrap(["initdb", "-D", str(data), "-U", env["POSTGRES_USER"], f"--pwfile={pwfile}",
                                 "--auth-local=peer", "--auth-host=scram-sha-256", "-E", "UTF8"]),
                       env=svc.env(), cwd=svc.cwd(), check=True, capture_output=True)
    finally:
        pwfile.unlink()


def ensure_user():
    try:
        pwd.getpwnam(NATIVE_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", NATIVE_USER],
                       check=True)


def services(model: dict) -> dict:
    return {name: Service(name, svc) for name, svc in model["services"].items()}


def preflight(model: dict, env: dict):
    if os.geteuid() != 0:
        raise SystemExit("native: run as root (daemons are then started as unprivileged users)")
    for key, target in (("HTTPS_PORT", 443), ("HTTP_PORT", 80)):
        if env.get(key, str(target)) != str(target):
            raise SystemExit(f"native: {key}={env[key]} only applies to Compose's published ports; "
                             f"the native stack serves the container port {target}: set {key}={target}")
    for tool in ("unshare", "setpriv", "nginx", "pgbouncer", "psql"):
        if not shutil.which(tool, path="/usr/sbin:/usr/bin:/bin"):
            raise SystemExit(f"native: `{tool}` not found: run `./mlflowctl install` first")


HOSTS_FILE = VAR / "run" / "hosts"


def write_hosts(path: Path = HOSTS_FILE):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("127.0.0.1 localhost " + " ".join(SERVICE_NAMES) + "\n::1 localhost\n")


def with_service_hosts(argv: list, hosts: Path = HOSTS_FILE) -> list:
    """argv in a private mount namespace whose /etc/hosts resolves the compose service names."""
    return ["unshare", "--mount", "--propagation", "private", "--", "/bin/sh", "-c",
            'mount --bind "$0" /etc/hosts && exec "$@"', str(hosts), *argv]


def up(env: dict, deadline_s: float = 300) -> dict:
    model = compose_model()
    preflight(model, env)
    ensure_user()
    write_hosts()
    svcs = services(model)
    oneshots = one_shot(model["services"])
    for name in start_order(model["services"]):
        svc = svcs[name]
        if name in oneshots:
            log(f"{name}: running once")
            svc.prepare()
            svc.run_once()
            continue
        if svc.pid():
            log(f"{name}: already running (pid {svc.pid()})")
            svc.wait_healthy(deadline_s)
            continue
        log(f"{name}: starting" + (" (native stand-in: moto S3, in memory)" if name in REPLACED else ""))
        svc.prepare()
        if name == "postgres":
            init_postgres(svc)
        svc.start()
        svc.wait_healthy(deadline_s)
        log(f"{name}: healthy (pid {svc.pid()})")
    return svcs


def restart_one(name: str, deadline_s: float = 180):
    """Stop and start one service, like `docker compose restart NAME` (no one-shot steps)."""
    svc = services(compose_model())[name]
    svc.stop()
    svc.prepare()
    svc.start()
    svc.wait_healthy(deadline_s)
    log(f"{name}: restarted (pid {svc.pid()})")


def down(only: tuple = ()):
    model = compose_model()
    svcs = services(model)
    for name in reversed(start_order(model["services"])):
        if (not only or name in only) and svcs[name].stop():
            log(f"{name}: stopped")


def status() -> list:
    model = compose_model()
    svcs = services(model)
    oneshots = one_shot(model["services"])
    rows = []
    for name in start_order(model["services"]):
        svc = svcs[name]
        if name in oneshots:
            rows.append((name, "one-shot", "-", "-"))
            continue
        pid = svc.pid()
        rows.append((name, "running" if pid else "stopped", str(pid or "-"),
                     ("healthy" if svc.healthy() else "unhealthy") if pid else "-"))
    return rows
