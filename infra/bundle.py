"""The compose bundle the instance runs: the same files CI validates, uploaded to S3 by Pulumi."""
from __future__ import annotations

import hashlib
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
# Files and directories the compose stack bind-mounts or reads (tests check this list is complete).
BUNDLE_PATHS = ("docker-compose.production.yml", "docker-compose.aws.yml", ".env.example",
                "nginx", "pgbouncer", "postgres", "docker", "scripts", "seaweedfs")
BUNDLE_PREFIX = "deploy-bundle/"


def bundle_files(root: Path = REPO_ROOT) -> list[Path]:
    """Repo-relative paths of every file in the bundle, sorted; caches and tests left out."""
    files: list[Path] = []
    for entry in BUNDLE_PATHS:
        path = root / entry
        if path.is_file():
            files.append(Path(entry))
        elif path.is_dir():
            files.extend(p.relative_to(root) for p in path.rglob("*")
                         if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc")
    return sorted(files)


def bundle_hash(root: Path = REPO_ROOT) -> str:
    """Content hash of the bundle: a change replaces the instance (user-data changes with it)."""
    digest = hashlib.sha256()
    for rel in bundle_files(root):
        digest.update(str(rel).encode() + b"\0" + (root / rel).read_bytes() + b"\0")
    return digest.hexdigest()[:16]
