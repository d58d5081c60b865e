"""Stack commands: bootstrap, up, down, restart, status, logs, compose, config, test."""

import functools
import operator
import subprocess
import sys
import time
from pathlib import Path

from ctl import bootstrap as boot
from ctl import engine
from ctl.errors import CommandError
from ctl.settings import ROOT, Settings

ONE_SHOT_OK = "exited (0)"


def wait_for_nginx(
    settings: Settings, path: str = "/health", expect: str = None, auth: tuple = None, deadline_s: float = 120
):
    """Poll PATH through Nginx over HTTPS, trusting only our CA, until it answers 200 (with the body
    EXPECT when given). It connects to localhost, which the certificate also covers (it works
    before DNS does); the Host header names the public host, which MLflow allows."""
    import requests

    session = settings.http(auth=auth)
    host = settings.public_url.removeprefix("https://")
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        try:
            r = session.get(f"{settings.url('localhost')}{path}", headers={"Host": host}, timeout=10)
            if r.status_code == 200 and (expect is None or r.text.strip() == expect):
                return
            last = f"HTTP {r.status_code}: {r.text.strip()[:100]}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1)
    wanted = f" {expect}" if expect else ""
    raise CommandError(f"{path} through Nginx did not answer{wanted} within {deadline_s:.0f}s: {last}")


def compose_up(eng, *services, profiles: tuple = None):
    started = time.monotonic()
    engine.log(f"docker compose up --wait {' '.join(services) or '(every service)'}")
    proc = engine.up(eng, *services, profiles=profiles)
    if proc.returncode:
        print_status(eng)
        engine.compose(eng, "logs", "--no-color", "--tail", "30", check=False)
        raise CommandError(
            "the stack did not become healthy (`./mlflowctl logs SERVICE` for more); "
            "if `migrate` failed on a password, the pgdata volume was made with another .env"
        )
    engine.log(f"stack healthy in {time.monotonic() - started:.0f}s")


def _certs_stamp() -> list:
    return [(s.st_ino, s.st_mtime_ns) for s in (f.stat() for f in sorted((ROOT / "certs").glob("*.crt")))]


def cmd_up(args):
    certs_before = _certs_stamp()
    env = boot.bootstrap()
    renewed = _certs_stamp() != certs_before
    settings = Settings.load()
    eng = engine.ensure()
    profiles = engine.default_profiles() + tuple(args.profile)
    chosen = engine.ensure_images(eng, env, profiles)
    left_out = engine.missing_images(eng, profiles)
    engine.start_ticker(eng)
    # With a service left out, name the others: `up` alone would try to pull the missing image.
    services = [s for s in engine.model(eng, profiles)["services"] if s not in left_out] if left_out else []
    compose_up(eng, *services, profiles=profiles)
    # render-config re-renders from .env on every `up`, but a running daemon keeps the files it
    # read at start: both reload theirs on SIGHUP (a changed password or auth file, new users).
    engine.compose(eng, "kill", "-s", "SIGHUP", "pgbouncer", "nginx", check=False, capture=True)
    if renewed:
        # Nginx mounts each certificate file: a bind mount keeps the file it found at start, and
        # bootstrap replaces files (a new inode). A stop and start mounts the new ones.
        engine.compose(eng, "stop", "nginx", check=False, capture=True)
        engine.compose(eng, "start", "nginx", capture=True)
    wait_for_nginx(settings)
    standins = engine.read_images_env()
    print(
        f"\nMLflow is up: {settings.public_url}/  (engine: {eng.kind})\n"
        f"  admin user:     {settings.admin_auth[0]}\n"
        f"  admin password: MLFLOW_ADMIN_PASSWORD in {ROOT / '.env'} (mode 0600)\n"
        f"  CA to trust:    {settings.ca_path} (MLFLOW_TRACKING_SERVER_CERT_PATH)\n"
        f"  logs:           ./mlflowctl logs [SERVICE]"
    )
    if standins:
        print("  stand-in images (no registry reachable; docker/standins/README.md):")
        for variable, tag in standins.items():
            print(f"    {variable}={tag}")
    if chosen.get("S3_IMAGE", "").startswith("localhost/mlflow-bundle/standin-s3"):
        print(
            "  WARNING: the S3 stand-in keeps artifacts IN MEMORY: they are lost when the `s3` container\n"
            "  stops or restarts. Point MLFLOW_S3_ENDPOINT_URL at a real S3 store to keep them."
        )
    for service, image in left_out.items():
        print(
            f"  LEFT OUT: {service} ({image}): no registry is reachable and docker/standins/ has no stand-in\n"
            f"  for it (stand-ins are built from Debian packages; Debian does not package it). The rest of\n"
            f"  the profile runs; set {service.upper().replace('-', '_')}_IMAGE to an image you can provide."
        )


def print_status(eng) -> bool:
    """One line per service of the compose model; False if one is missing, down or unhealthy."""
    rows = {r["Service"]: r for r in engine.ps(eng)}
    ok = True
    for name in sorted(engine.model(eng)["services"]):
        r = rows.get(name, {})
        state, health = r.get("State", "missing"), r.get("Health", "")
        one_shot = state == "exited" and r.get("ExitCode") == 0
        good = one_shot or (state == "running" and health in ("", "healthy"))
        ok &= good
        shown = ONE_SHOT_OK if one_shot else f"{state} {health}".strip()
        print(f"{name:<14} {shown:<22} {r.get('Name', '')}")
    return ok


def cmd_status(args):
    eng = engine.ensure()
    return 0 if print_status(eng) else 3


def cmd_down(args):
    eng = engine.ensure()
    if args.volumes:
        engine.log("removing containers AND data volumes (databases, artifacts, rendered config)")
    if (ROOT / ".env").exists():
        # With the benchmark profile too, so its plain-mlflow container and volume go as well.
        engine.compose(
            eng,
            "--profile",
            "benchmark",
            "--profile",
            "monitoring",
            "down",
            "--remove-orphans",
            *(["--volumes"] if args.volumes else []),
        )
    else:
        engine.remove_project(eng, args.volumes)
    engine.stop_daemon(engine.ticker_pid())
    engine.stop_daemon(engine.service_pid())
    engine.log("stack stopped" + ("" if args.volumes else "; data volumes kept (`down --volumes` removes them)"))


def cmd_restart(args):
    eng = engine.ensure()
    engine.start_ticker(eng)
    engine.restart(eng, *args.services)
    compose_up(eng, *args.services)


def cmd_logs(args):
    eng = engine.ensure()
    return engine.compose(eng, "logs", "--no-color", "--tail", str(args.tail), *args.services, check=False).returncode


def cmd_compose(args):
    eng = engine.ensure()
    return subprocess.run(engine.compose_args() + args.extra, env=eng.env, cwd=ROOT).returncode


def cmd_config(args):
    for profiles in ((), ("local",), ("local", "monitoring")):
        subprocess.run(engine.compose_args(profiles) + ["config", "--quiet"], check=True, cwd=ROOT)
        print(f"compose config ok{' (profiles ' + ', '.join(profiles) + ')' if profiles else ''}")


def needs_stack(pytest_args: list) -> bool:
    """False when the selection holds no `stack` or `store` test: paths outside tests/stack and
    tests/store (e.g. `tests/infra`), or a `-m EXPR` without them (`-m unit`, `-m "unit or infra"`)."""
    from _pytest.mark.expression import Expression

    paths = [
        Path(a.split("::")[0]).resolve()
        for a in pytest_args
        if not a.startswith("-") and Path(a.split("::")[0]).exists()
    ]
    suites = [ROOT / "tests" / "stack", ROOT / "tests" / "store"]
    if paths and not any(p in (ROOT, ROOT / "tests") or any(p.is_relative_to(s) for s in suites) for p in paths):
        return False
    if "-m" not in pytest_args or pytest_args.index("-m") + 1 >= len(pytest_args):
        return True
    expr = Expression.compile(pytest_args[pytest_args.index("-m") + 1])
    return any(expr.evaluate(functools.partial(operator.eq, suite)) for suite in ("stack", "store"))


def cmd_test(args):
    if needs_stack(args.extra):
        cmd_up(args)
    return subprocess.run([sys.executable, "-m", "pytest", *args.extra], cwd=ROOT).returncode


def register(sub):
    sub.add_parser("bootstrap", help="create .env and certs/ (idempotent)", description=boot.__doc__).set_defaults(
        func=lambda a: boot.bootstrap() and 0
    )
    up = sub.add_parser(
        "up", help="build/pull images, start the stack, wait for /health through Nginx", description=engine.__doc__
    )
    up.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="PROFILE",
        help='also start a compose profile, e.g. `monitoring` (docs/operations.md, "Monitoring"); repeatable',
    )
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop and remove the containers (data volumes are kept)")
    down.add_argument(
        "--volumes", action="store_true", help="also DELETE the data volumes: databases, artifacts, rendered config"
    )
    down.set_defaults(func=cmd_down)
    restart = sub.add_parser("restart", help="restart the named services (default: all), wait until healthy")
    restart.add_argument("services", nargs="*", metavar="SERVICE")
    restart.set_defaults(func=cmd_restart)
    sub.add_parser("status", help="each service's state and health; exit 3 if one is down").set_defaults(
        func=cmd_status
    )
    logs = sub.add_parser("logs", help="service logs")
    logs.add_argument("services", nargs="*", metavar="SERVICE")
    logs.add_argument("--tail", type=int, default=200, help="lines per service (default 200)")
    logs.set_defaults(func=cmd_logs)
    sub.add_parser(
        "compose", help="run any docker compose command with the bundle's settings", add_help=False
    ).set_defaults(func=cmd_compose, passthrough=True)
    sub.add_parser("config", help="validate the compose file with the real Compose binary").set_defaults(
        func=cmd_config
    )
    # Unknown arguments go to pytest (e.g. -m unit, -k e2e -x).
    sub.add_parser("test", help="bring the stack up, then run every test suite").set_defaults(
        func=cmd_test, passthrough=True, profile=[]
    )
