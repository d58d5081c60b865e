"""Back up and restore the tracking database, the auth database and the artifact bucket.

  backup   pg_dump (custom format) of the tracking and auth databases, and every object of the
           artifact bucket, into OUT/mlflow-backup-YYYYmmddTHHMMSSZ/ with manifest.json: row counts
           (taken in the dump's own snapshot) and sha256 of every file. Files 0600, directories 0700.
  restore  checks the manifest's checksums, then pg_restore into the databases (created when
           missing) and uploads into the bucket (created when missing). A target that already holds
           tables or objects is refused unless --force: then database objects in the dump are
           replaced (pg_restore --clean) and bucket keys in the backup overwritten; other keys stay.

Connection settings come from .env (POSTGRES_HOST/PORT, superuser `postgres` with POSTGRES_PASSWORD,
MLFLOW_ARTIFACT_BUCKET, MLFLOW_S3_ENDPOINT_URL, AWS keys); every one can be overridden, e.g. to
restore into scratch databases and a scratch bucket. Compose service names (postgres, s3) that do
not resolve on this host mean the native stack's 127.0.0.1. Passwords go to the tools through
PGPASSWORD, never on a command line.

pg_dump must be at least as new as the server: Debian bookworm's pg_dump 15 serves the native
stack (PostgreSQL 15); the compose image runs PostgreSQL 16, so back it up with pg_dump 16 (e.g.
the postgresql-client-16 package from apt.postgresql.org). The bucket is copied after the dump:
artifacts written meanwhile may be in the copy without a run that points at them, never the reverse
(unless they are deleted meanwhile). docs/security.md has the procedure.
"""
import argparse
import datetime
import hashlib
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
SERVICE_NAMES = ("postgres", "pgbouncer", "mlflow", "s3")  # scripts/native.py: 127.0.0.1 natively
# What the manifest counts, per database: proves a restore brought the rows back.
COUNTS = {"tracking": {"experiments": "SELECT count(*) FROM experiments", "runs": "SELECT count(*) FROM runs",
                       "metrics": "SELECT count(*) FROM metrics", "params": "SELECT count(*) FROM params"},
          "auth": {"users": "SELECT count(*) FROM users"}}


class BackupError(Exception):
    """Printed as one line, exit status 1."""


def local_host(host: str) -> str:
    if host in SERVICE_NAMES:
        try:
            socket.gethostbyname(host)
        except OSError:
            return "127.0.0.1"
    return host


def settings(args) -> dict:
    from scripts.bootstrap import parse_env
    env_file = ROOT / ".env"
    env = {**(parse_env(env_file.read_text()) if env_file.exists() else {}), **os.environ}
    endpoint = args.s3_endpoint if args.s3_endpoint is not None else env.get("MLFLOW_S3_ENDPOINT_URL", "")
    if endpoint:
        parts = urlsplit(endpoint)
        endpoint = urlunsplit(parts._replace(netloc=parts.netloc.replace(parts.hostname, local_host(parts.hostname))))
    return {"pg_host": local_host(args.pg_host or env.get("POSTGRES_HOST", "127.0.0.1")),
            "pg_port": str(args.pg_port or env.get("POSTGRES_PORT", "5432")),
            "pg_user": args.pg_user, "pg_password": env.get("POSTGRES_PASSWORD", ""),
            "bucket": args.bucket or env.get("MLFLOW_ARTIFACT_BUCKET", ""), "endpoint": endpoint or None,
            "aws": {k.lower(): env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY") if env.get(k)},
            "region": env.get("AWS_DEFAULT_REGION", "us-east-1")}


def connect(cfg: dict, db: str):
    import psycopg2
    try:
        return psycopg2.connect(host=cfg["pg_host"], port=cfg["pg_port"], user=cfg["pg_user"],
                                password=cfg["pg_password"], dbname=db, connect_timeout=10)
    except psycopg2.OperationalError as exc:
        raise BackupError(f"cannot connect to database {db} at {cfg['pg_host']}:{cfg['pg_port']}: "
                          f"{str(exc).strip().splitlines()[0]}")


def pg_tool(cfg: dict, argv: list, what: str):
    env = {**os.environ, "PGPASSWORD": cfg["pg_password"]}
    conn = ["-h", cfg["pg_host"], "-p", cfg["pg_port"], "-U", cfg["pg_user"]]
    run = subprocess.run([argv[0], *conn, *argv[1:]], env=env, capture_output=True, text=True)
    if run.returncode:
        raise BackupError(f"{what} failed: {(run.stderr.strip().splitlines() or ['?'])[-1]}")


def s3_client(cfg: dict):
    import boto3
    return boto3.client("s3", endpoint_url=cfg["endpoint"], region_name=cfg["region"], **cfg["aws"])


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def pg_dump_major() -> int:
    text = subprocess.run(["pg_dump", "--version"], capture_output=True, text=True).stdout
    found = re.search(r"\(PostgreSQL\) (\d+)", text)
    if not found:
        raise BackupError(f"pg_dump not found or not understood ({text.strip()!r}): apt-get install postgresql-client")
    return int(found.group(1))


def dump_database(cfg: dict, db: str, kind: str, out: Path) -> dict:
    """pg_dump and the row counts in one snapshot, so the manifest describes exactly the dump."""
    conn = connect(cfg, db)
    try:
        conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_export_snapshot(), current_setting('server_version_num')::int / 10000")
            snapshot, server_major = cur.fetchone()
            if pg_dump_major() < server_major:
                raise BackupError(f"pg_dump {pg_dump_major()} is older than the server (PostgreSQL {server_major}): "
                                  "install a pg_dump at least as new as the server")
            target = out / f"{kind}.dump"
            pg_tool(cfg, ["pg_dump", "--format=custom", f"--snapshot={snapshot}", "-d", db, "-f", str(target)],
                    f"pg_dump of {db}")
            counts = {}
            for name, query in COUNTS[kind].items():
                cur.execute(query)
                counts[name] = cur.fetchone()[0]
    finally:
        conn.close()
    return {"database": db, "file": target.name, "sha256": sha256(target), "counts": counts,
            "server_major": server_major}


def safe_path(base: Path, key: str) -> Path:
    path = (base / key).resolve()
    if key.startswith("/") or ".." in Path(key).parts or base.resolve() not in path.parents:
        raise BackupError(f"refusing bucket key {key!r}: it would land outside {base}")
    return path


def cmd_backup(args) -> int:
    cfg = settings(args)
    os.umask(0o077)  # every file and directory below is private from its creation on
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    final = Path(args.out).resolve() / f"mlflow-backup-{stamp}"
    out = final.with_name(final.name + ".partial")  # renamed when complete: never mistaken for a backup
    out.mkdir(parents=True, mode=0o700)
    manifest = {"created": stamp, "databases": {}, "bucket": {"name": cfg["bucket"], "objects": {}}}
    for kind, db in (("tracking", args.tracking_db), ("auth", args.auth_db)):
        print(f"backup: dumping database {db}", flush=True)
        manifest["databases"][kind] = dump_database(cfg, db, kind, out)
    print(f"backup: copying bucket {cfg['bucket']}", flush=True)
    s3, artifacts = s3_client(cfg), out / "artifacts"
    artifacts.mkdir(mode=0o700)
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=cfg["bucket"]):
        for obj in page.get("Contents", []):
            if obj["Key"].endswith("/"):
                continue  # a "directory" marker: no content, recreated by the keys below it
            target = safe_path(artifacts, obj["Key"])
            target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            s3.download_file(cfg["bucket"], obj["Key"], str(target))
            manifest["bucket"]["objects"][obj["Key"]] = {"size": target.stat().st_size, "sha256": sha256(target)}
    manifest["bucket"]["count"] = len(manifest["bucket"]["objects"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    out.rename(final)
    counts = ", ".join(f"{k}={v}" for d in manifest["databases"].values() for k, v in d["counts"].items())
    print(f"backup: {final} ({counts}, objects={manifest['bucket']['count']})")
    return 0


def verify(backup: Path) -> dict:
    try:
        manifest = json.loads((backup / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup} is not a backup made by `mlflowctl backup`: {exc}")
    files = {backup / d["file"]: d["sha256"] for d in manifest["databases"].values()}
    files.update({safe_path(backup / "artifacts", k): o["sha256"] for k, o in manifest["bucket"]["objects"].items()})
    for path, digest in files.items():
        if not path.is_file() or sha256(path) != digest:
            raise BackupError(f"{path} is missing or does not match its checksum in manifest.json")
    return manifest


def table_count(cfg: dict, db: str):
    """Tables outside the system schemas, or None when the database does not exist."""
    conn = connect(cfg, "postgres")
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_database WHERE datname = %s", (db,))
            if not cur.fetchone():
                return None
    finally:
        conn.close()
    conn = connect(cfg, db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')")
            return cur.fetchone()[0]
    finally:
        conn.close()


def create_database(cfg: dict, db: str, owner: str):
    from psycopg2 import sql
    conn = connect(cfg, "postgres")
    conn.autocommit = True  # CREATE DATABASE cannot run in a transaction
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (owner,))
            if not cur.fetchone():
                raise BackupError(f"role {owner} does not exist: run the migrate step (`./mlflowctl up`) first")
            cur.execute(sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(db), sql.Identifier(owner)))
    finally:
        conn.close()


def bucket_state(s3, bucket: str):
    """Number of objects (at most 1 is looked at), or None when the bucket does not exist."""
    from botocore.exceptions import ClientError
    try:
        return s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0)
    except ClientError as exc:
        if exc.response["Error"]["Code"] in ("NoSuchBucket", "404"):
            return None
        raise


def cmd_restore(args) -> int:
    cfg = settings(args)
    backup = Path(args.backup).resolve()
    manifest = verify(backup)
    targets = {"tracking": args.tracking_db, "auth": args.auth_db}
    s3 = s3_client(cfg)
    # Refuse before changing anything: every target is checked first.
    tables = {kind: table_count(cfg, db) for kind, db in targets.items()}
    objects = bucket_state(s3, cfg["bucket"])
    busy = [f"database {targets[k]} has {n} tables" for k, n in tables.items() if n] \
        + ([f"bucket {cfg['bucket']} has objects"] if objects else [])
    if busy and not args.force:
        raise BackupError(f"refusing to overwrite: {'; '.join(busy)} (pass --force to replace them)")
    for kind, db in targets.items():
        if tables[kind] is None:
            create_database(cfg, db, args.owner)
        print(f"restore: database {db} from {manifest['databases'][kind]['file']}", flush=True)
        clean = ["--clean", "--if-exists"] if tables[kind] else []
        pg_tool(cfg, ["pg_restore", "--exit-on-error", "--single-transaction", *clean, "-d", db,
                      str(backup / manifest["databases"][kind]["file"])], f"pg_restore into {db}")
    if objects is None:
        s3.create_bucket(Bucket=cfg["bucket"])
    print(f"restore: {manifest['bucket']['count']} objects into bucket {cfg['bucket']}", flush=True)
    for key in manifest["bucket"]["objects"]:
        s3.upload_file(str(safe_path(backup / "artifacts", key)), cfg["bucket"], key)
    for kind, db in targets.items():  # the rows are back: same counts as when the dump was taken
        conn = connect(cfg, db)
        try:
            with conn.cursor() as cur:
                for name, query in COUNTS[kind].items():
                    cur.execute(query)
                    if cur.fetchone()[0] != manifest["databases"][kind]["counts"][name]:
                        raise BackupError(f"restored {db} has a different {name} count than the backup")
        finally:
            conn.close()
    print(f"restore: done from {backup}")
    return 0


def _command(func):
    def run(args):
        try:
            return func(args)
        except BackupError as exc:
            print(f"mlflowctl {args.command}: {exc}", file=sys.stderr)
            return 1
    return run


def _connection_options(p):
    p.add_argument("--pg-host", help="PostgreSQL host (default: POSTGRES_HOST from .env; `postgres` = 127.0.0.1 natively)")
    p.add_argument("--pg-port", help="PostgreSQL port (default: POSTGRES_PORT from .env, else 5432)")
    p.add_argument("--pg-user", default="postgres", help="superuser; password from POSTGRES_PASSWORD (default %(default)s)")
    p.add_argument("--tracking-db", default="mlflow", help="tracking database (default %(default)s)")
    p.add_argument("--auth-db", default="mlflow_auth", help="basic-auth database (default %(default)s)")
    p.add_argument("--bucket", help="artifact bucket (default: MLFLOW_ARTIFACT_BUCKET from .env)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL; empty string = AWS (default: MLFLOW_S3_ENDPOINT_URL from .env)")


def add_commands(sub):
    """Register `backup` and `restore` on mlflowctl's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("backup", help="dump both databases and copy the artifact bucket (with a manifest)",
                       description=__doc__, formatter_class=fmt)
    p.add_argument("--out", default=str(ROOT / "var" / "backups"),
                   help="directory for the backup; var/ is git-ignored (default: %(default)s)")
    _connection_options(p)
    p.set_defaults(func=_command(cmd_backup))
    p = sub.add_parser("restore", help="restore a backup into the databases and the bucket",
                       description=__doc__, formatter_class=fmt)
    p.add_argument("backup", metavar="BACKUP_DIR", help="a directory made by `mlflowctl backup`")
    p.add_argument("--force", action="store_true", help="replace targets that already hold tables or objects")
    p.add_argument("--owner", default="mlflow", help="owner of databases that restore creates (default %(default)s)")
    _connection_options(p)
    p.set_defaults(func=_command(cmd_restore))
