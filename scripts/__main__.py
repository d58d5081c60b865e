"""mlflowctl: operate the MLflow deployment bundle.

  install     apt packages, Python venv (.venv) from the lock file; run once, as root
  bootstrap   create .env (random secrets, mode 0600) and certs/ (private CA + server cert)
  up          bootstrap, images, then `docker compose up --wait` (Docker, or podman's Docker API)
  down        stop and remove the containers; data volumes are kept unless --volumes
  restart     restart some (or all) services and wait until they are healthy
  status      each service's state and health; exit 3 if one is not running/healthy
  logs        service logs (`docker compose logs`)
  compose     any `docker compose` command, with this bundle's files, engine and images
  config      check docker-compose.production.yml with the real Compose binary (both profiles)
  test        `up`, then the whole test suite (unit, stack, infra); extra args go to pytest
  backup, restore                              databases + artifact bucket (docs/security.md)
  teams, register, promote, validate, cleanup  day-2 model operations (docs/lifecycle.md)
  load, benchmark, faults                      load, comparison with plain MLflow, fault injection

`bootstrap`, `up`, `down` and `restart` can be re-run safely. Run `./mlflowctl COMMAND --help`.
"""
import argparse
import subprocess
import sys
import time

from scripts import bootstrap as boot
from scripts import backup, engine, faults, lifecycle, load

ONE_SHOT_OK = "exited (0)"


def wait_for_nginx(env: dict, deadline_s: float = 120) -> str:
    """Poll /health through Nginx over HTTPS, trusting only our CA; returns the public URL."""
    import requests
    session = requests.Session()
    session.trust_env = False  # REQUESTS_CA_BUNDLE in the environment would override verify=
    port = env.get("HTTPS_PORT", "443")
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        try:
            # The certificate always covers localhost too, so this works before DNS does.
            r = session.get(f"https://localhost:{port}/health", verify=str(boot.ROOT / "certs" / "ca.crt"), timeout=5)
            if r.status_code == 200:
                return f"https://{env['MLFLOW_PUBLIC_HOST']}" + ("/" if port == "443" else f":{port}/")
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1)
    raise SystemExit(f"mlflowctl: /health through Nginx did not answer within {deadline_s:.0f}s: {last}")


def compose_up(eng, *services, profiles: tuple = None):
    started = time.monotonic()
    engine.log(f"docker compose up --wait {' '.join(services) or '(every service)'}")
    proc = engine.up(eng, *services, profiles=profiles)
    if proc.returncode:
        print_status(eng)
        engine.compose(eng, "logs", "--no-color", "--tail", "30", check=False)
        raise SystemExit(f"mlflowctl: the stack did not become healthy (`./mlflowctl logs SERVICE` for more); "
                         f"if `migrate` failed on a password, the pgdata volume was made with another .env")
    engine.log(f"stack healthy in {time.monotonic() - started:.0f}s")


def cmd_up(args):
    env = boot.bootstrap()
    eng = engine.ensure()
    profiles = engine.default_profiles() + tuple(args.profile)
    chosen = engine.ensure_images(eng, env, profiles)
    left_out = engine.missing_images(eng, profiles)
    engine.start_ticker(eng)
    # With a service left out, name the others: `up` alone would try to pull the missing image.
    services = [s for s in engine.model(eng, profiles)["services"] if s not in left_out] if left_out else []
    compose_up(eng, *services, profiles=profiles)
    url = wait_for_nginx(env)
    standins = engine.read_images_env()
    print(f"\nMLflow is up: {url}  (engine: {eng.kind})\n"
          f"  admin user:     {env['MLFLOW_ADMIN_USERNAME']}\n"
          f"  admin password: MLFLOW_ADMIN_PASSWORD in {boot.ROOT / '.env'} (mode 0600)\n"
          f"  CA to trust:    {boot.ROOT / 'certs' / 'ca.crt'} (MLFLOW_TRACKING_SERVER_CERT_PATH)\n"
          f"  logs:           ./mlflowctl logs [SERVICE]")
    if standins:
        print("  stand-in images (no registry reachable; README \"Stand-in images\"):")
        for variable, tag in standins.items():
            print(f"    {variable}={tag}")
    if chosen.get("S3_IMAGE", "").startswith("localhost/mlflow-bundle/standin-s3"):
        print("  WARNING: the S3 stand-in keeps artifacts IN MEMORY: they are lost when the `s3` container\n"
              "  stops or restarts. Point MLFLOW_S3_ENDPOINT_URL at a real S3 store to keep them.")
    for service, image in left_out.items():
        print(f"  LEFT OUT: {service} ({image}): no registry is reachable and docker/standins/ has no stand-in\n"
              f"  for it (stand-ins are built from Debian packages; Debian does not package it). The rest of\n"
              f"  the profile runs; set {service.upper().replace('-', '_')}_IMAGE to an image you can provide.")


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
    if (engine.ROOT / ".env").exists():
        # With the benchmark profile too, so its plain-mlflow container and volume go as well.
        engine.compose(eng, "--profile", "benchmark", "--profile", "monitoring", "down", "--remove-orphans",
                       *(["--volumes"] if args.volumes else []))
    else:
        engine.remove_project(eng, args.volumes)
    engine.stop_daemon(engine.ticker_pid())
    engine.stop_daemon(engine.service_pid())
    engine.log("stack stopped" + ("" if args.volumes else "; data volumes kept (`down --volumes` removes them)"))


def cmd_restart(args):
    eng = engine.ensure()
    engine.start_ticker(eng)
    engine.compose(eng, "restart", *args.services)
    compose_up(eng, *args.services)


def cmd_logs(args):
    eng = engine.ensure()
    return engine.compose(eng, "logs", "--no-color", "--tail", str(args.tail), *args.services, check=False).returncode


def cmd_compose(args):
    eng = engine.ensure()
    return subprocess.run(engine.compose_args() + args.pytest_args, env=eng.env, cwd=engine.ROOT).returncode


def cmd_config(args):
    for profiles in ((), ("local",), ("local", "monitoring")):
        subprocess.run(engine.compose_args(profiles) + ["config", "--quiet"], check=True, cwd=engine.ROOT)
        print(f"compose config ok{' (profiles ' + ', '.join(profiles) + ')' if profiles else ''}")


def cmd_test(args):
    cmd_up(args)
    return subprocess.run([sys.executable, "-m", "pytest", "tests", *args.pytest_args], cwd=engine.ROOT).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mlflowctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("bootstrap", help="create .env and certs/ (idempotent)",
                   description=boot.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                   ).set_defaults(func=lambda a: boot.bootstrap() and 0)
    up = sub.add_parser("up", help="build/pull images, start the stack, wait for /health through Nginx",
                        description=engine.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    up.add_argument("--profile", action="append", default=[], metavar="PROFILE",
                    help="also start a compose profile, e.g. `monitoring` (README \"Monitoring\"); repeatable")
    up.set_defaults(func=cmd_up)
    down = sub.add_parser("down", help="stop and remove the containers (data volumes are kept)")
    down.add_argument("--volumes", action="store_true",
                      help="also DELETE the data volumes: databases, artifacts, rendered config")
    down.set_defaults(func=cmd_down)
    restart = sub.add_parser("restart", help="restart the named services (default: all), wait until healthy")
    restart.add_argument("services", nargs="*", metavar="SERVICE")
    restart.set_defaults(func=cmd_restart)
    sub.add_parser("status", help="each service's state and health; exit 3 if one is down").set_defaults(func=cmd_status)
    logs = sub.add_parser("logs", help="service logs")
    logs.add_argument("services", nargs="*", metavar="SERVICE")
    logs.add_argument("--tail", type=int, default=200, help="lines per service (default 200)")
    logs.set_defaults(func=cmd_logs)
    sub.add_parser("compose", help="run any docker compose command with the bundle's settings",
                   add_help=False).set_defaults(func=cmd_compose)
    sub.add_parser("config", help="validate the compose file with the real Compose binary").set_defaults(func=cmd_config)
    test = sub.add_parser("test", help="bring the stack up, then run every test suite")
    test.set_defaults(pytest_args=[], profile=[])  # unknown arguments go to pytest (e.g. -k e2e -x)
    test.set_defaults(func=cmd_test)
    lifecycle.add_commands(sub)
    backup.add_commands(sub)
    load.add_commands(sub)
    faults.add_commands(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("test", "compose"):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pytest_args = extra
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
