"""Compose calls with this bundle's files, env files and profiles, and the engine differences they hide."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ctl.engine.core import PROJECT, ROOT, VAR, Engine, log, run
from ctl.errors import CommandError
from ctl.settings import setting

COMPOSE_FILE = ROOT / "docker-compose.production.yml"
IMAGES_ENV = VAR / "images.env"
VENV_BIN = Path(sys.executable).parent


def default_profiles() -> tuple:
    """The `local` S3 store runs where .env points MLflow at an S3-compatible endpoint."""
    return ("local",) if setting("MLFLOW_S3_ENDPOINT_URL") else ()


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
