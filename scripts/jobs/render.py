"""Render the bundle's config templates (`*.template`) from environment variables.

The one renderer of per-deployment config: Compose runs it as the one-shot `render-config` service.
Placeholders are `{{NAME}}` (Nginx and PgBouncer use `$` themselves); a missing variable is an
error, never an empty string.
"""

import argparse
import os
import re
import sys
from pathlib import Path

PLACEHOLDER = re.compile(r"\{\{\s*([A-Z][A-Z0-9_]*)\s*\}\}")
# Template dir -> output subdir; files holding secrets are written 0600 for their daemon's user.
# A directory not mounted into the container is skipped (the monitoring profile renders prometheus/ alone).
TEMPLATE_DIRS = ("nginx", "pgbouncer", "seaweedfs", "prometheus")
SECRET_FILES = {
    "pgbouncer/userlist.txt": "PGBOUNCER_UID",
    "seaweedfs/s3.json": "SEAWEEDFS_UID",
    "prometheus/mlflow_password": "PROMETHEUS_UID",
}


def public_url(env: dict, host: str = "") -> str:
    """https://HOST[:HTTPS_PORT], HOST defaulting to MLFLOW_PUBLIC_HOST (no port when it is 443):
    the one derivation, for the templates and for mlflowctl (ctl.settings)."""
    port = env.get("HTTPS_PORT", "443")
    return f"https://{host or env.get('MLFLOW_PUBLIC_HOST', '')}" + ("" if port == "443" else f":{port}")


def derived(env: dict) -> dict:
    """Values computed from others, so `.env` states each fact once."""
    return {"PUBLIC_URL": public_url(env)}


def render_text(text: str, env: dict, source: str = "template") -> str:
    values = {**derived(env), **env}
    missing = sorted({m for m in PLACEHOLDER.findall(text) if m not in values})
    if missing:
        raise KeyError(f"{source}: unset variable(s) {', '.join(missing)}")
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], text)


def render_tree(templates: Path, out: Path, env: dict) -> list[Path]:
    written = []
    for subdir in TEMPLATE_DIRS:
        for template in sorted((templates / subdir).glob("*.template")):
            rel = f"{subdir}/{template.name.removesuffix('.template')}"
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            text = render_text(template.read_text(), env, str(template))
            owner_var = SECRET_FILES.get(rel)
            tmp = target.with_name(f".{target.name}.tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if owner_var else 0o644)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            if owner_var:
                os.chown(tmp, int(env[owner_var]), -1)
            os.replace(tmp, target)  # atomic: a daemon reloading never reads half a file
            written.append(target)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="render", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--templates",
        type=Path,
        default=Path.cwd(),
        help="directory holding nginx/, pgbouncer/, seaweedfs/, prometheus/ (default: cwd)",
    )
    parser.add_argument("--out", type=Path, required=True, help="output directory")
    args = parser.parse_args(argv)
    try:
        for path in render_tree(args.templates, args.out, dict(os.environ)):
            print(f"rendered {path}")
    except KeyError as exc:
        print(f"render: {exc.args[0]}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
