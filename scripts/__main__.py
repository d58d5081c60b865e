"""mlflowctl: operate the MLflow deployment bundle.

  install     apt packages, Python venv (.venv) from the lock file; run once, as root
  bootstrap   create .env (random secrets, mode 0600) and certs/ (private CA + server cert)
  up          bootstrap, then run the compose stack natively on this machine (no Docker)
  down        stop the native stack (data in var/ is kept; native artifacts live in memory)
  restart     stop some (or all) native services, then `up` again
  status      show each native service, its pid and its health check
  config      check docker-compose.production.yml with the real Compose binary (both profiles)
  test        `up`, then the whole test suite (unit, stack, infra); extra args go to pytest
  backup, restore                              databases + artifact bucket (docs/security.md)
  teams, register, promote, validate, cleanup  day-2 model operations (docs/lifecycle.md)
  load, benchmark, faults                      load, comparison with plain MLflow, fault injection

Every command is idempotent. Run `./mlflowctl COMMAND --help` for options.
"""
import argparse
import subprocess
import sys
import time

from scripts import bootstrap as boot
from scripts import backup, faults, lifecycle, load, native


def wait_for_nginx(env: dict, deadline_s: float = 120) -> str:
    """Poll /health through Nginx over HTTPS, trusting only our CA; returns the public URL."""
    import requests
    session = requests.Session()
    session.trust_env = False  # the machine's CA bundle variables would override verify= (PITFALLS)
    deadline = time.monotonic() + deadline_s
    last = None
    while time.monotonic() < deadline:
        try:
            # The certificate always covers localhost too, so this works before DNS does.
            r = session.get("https://localhost/health", verify=str(boot.ROOT / "certs" / "ca.crt"), timeout=5)
            if r.status_code == 200:
                return f"https://{env['MLFLOW_PUBLIC_HOST']}/"
            last = f"HTTP {r.status_code}"
        except requests.RequestException as exc:
            last = str(exc)
        time.sleep(1)
    raise SystemExit(f"mlflowctl: /health through Nginx did not answer within {deadline_s:.0f}s: {last}")


def cmd_up(args):
    env = boot.bootstrap()
    native.up(env)
    url = wait_for_nginx(env)
    print(f"\nMLflow is up: {url}\n"
          f"  admin user:     {env['MLFLOW_ADMIN_USERNAME']}\n"
          f"  admin password: MLFLOW_ADMIN_PASSWORD in {boot.ROOT / '.env'} (mode 0600)\n"
          f"  CA to trust:    {boot.ROOT / 'certs' / 'ca.crt'} (MLFLOW_TRACKING_SERVER_CERT_PATH)\n"
          f"  logs:           {native.VAR / 'log'}/\n"
          f"  note: natively, artifacts go to an in-memory S3 stand-in (moto) and are lost on `down`.")


def cmd_status(args):
    rows = native.status()
    width = max(len(r[0]) for r in rows)
    for name, state, pid, health in rows:
        print(f"{name:<{width}}  {state:<9} pid {pid:<8} {health}")
    return 0 if all(r[1] in ("running", "one-shot") for r in rows) else 3


def cmd_config(args):
    for profile in ([], ["--profile", "local"]):
        cmd = [str(native.VENV_BIN / "docker-compose"), "-f", str(native.COMPOSE_FILE), *profile, "config", "--quiet"]
        subprocess.run(cmd, check=True, cwd=native.ROOT)
        print(f"compose config ok{' (profile local)' if profile else ''}")


def cmd_test(args):
    cmd_up(args)
    return subprocess.run([sys.executable, "-m", "pytest", "tests", *args.pytest_args], cwd=native.ROOT).returncode


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="mlflowctl", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("bootstrap", help="create .env and certs/ (idempotent)",
                   description=boot.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                   ).set_defaults(func=lambda a: boot.bootstrap() and 0)
    sub.add_parser("up", help="bring the native stack up and wait for /health through Nginx",
                   description=native.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
                   ).set_defaults(func=cmd_up)
    sub.add_parser("down", help="stop the native stack (keeps var/)").set_defaults(func=lambda a: native.down())
    restart = sub.add_parser("restart", help="stop the named services (default: all), then `up`",
                             description="Re-renders config and re-runs the one-shot steps, like compose up.")
    restart.add_argument("services", nargs="*", metavar="SERVICE")
    restart.set_defaults(func=lambda a: native.down(tuple(a.services)) or cmd_up(a))
    sub.add_parser("status", help="list native services; exit 3 if any is stopped").set_defaults(func=cmd_status)
    sub.add_parser("config", help="validate the compose file with the real Compose binary").set_defaults(func=cmd_config)
    test = sub.add_parser("test", help="bring the stack up, then run every test suite")
    test.set_defaults(pytest_args=[])  # unknown arguments go to pytest (e.g. -k e2e -x)
    test.set_defaults(func=cmd_test)
    lifecycle.add_commands(sub)
    backup.add_commands(sub)
    load.add_commands(sub)
    faults.add_commands(sub)
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "test":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.pytest_args = extra
    return args.func(args) or 0


if __name__ == "__main__":
    sys.exit(main())
