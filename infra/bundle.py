"""The compose bundle the instance runs: the compose files, .env.example (defaults for .env), and
every file the AWS compose model bind-mounts. Nothing else (no tests, tools or benchmarks): a
change to the bundle is a deploy of the server."""

from __future__ import annotations

import hashlib
from pathlib import Path

from infra.compose_model import AWS_COMPOSE_FILES, REPO_ROOT, bind_mounts, placeholder_model

BUNDLE_PREFIX = "deploy-bundle/"
# Made on the instance at boot (from Secrets Manager, or self-signed in dev; the artifact role's
# credentials from STS): not shipped.
MADE_AT_BOOT = ("certs", "aws-artifacts")
# The environment that points MLflow at those credentials: EC2 only (an ECS task gets its task
# role from ECS).
EC2_CREDENTIALS_ENV = ("AWS_CONFIG_FILE", "AWS_EC2_METADATA_DISABLED")


def bundle_paths(root: Path = REPO_ROOT) -> list[str]:
    """Repo-relative files and directories the AWS stack reads."""
    model = placeholder_model(root)
    mounted = {
        src
        for svc in model["services"].values()
        for src, _ in bind_mounts(svc, root)
        if Path(src).parts[0] not in MADE_AT_BOOT
    }
    return sorted({*AWS_COMPOSE_FILES, ".env.example", *mounted})


def bundle_files(root: Path = REPO_ROOT) -> list[Path]:
    """Repo-relative paths of every file in the bundle, sorted; caches left out."""
    files: list[Path] = []
    for entry in bundle_paths(root):
        path = root / entry
        if path.is_file():
            files.append(Path(entry))
        elif path.is_dir():
            files.extend(
                p.relative_to(root)
                for p in path.rglob("*")
                if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
            )
    return sorted(set(files))


def bundle_hash(root: Path = REPO_ROOT) -> str:
    """Content hash of the bundle: a change makes SSM re-run the boot script on the instance."""
    digest = hashlib.sha256()
    for rel in bundle_files(root):
        digest.update(str(rel).encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]
