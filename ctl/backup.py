"""Back up and restore the tracking database, the auth database and the artifact bucket.

  backup   pg_dump (custom format) of the tracking and auth databases, and every object of the
           artifact bucket, into OUT/mlflow-backup-YYYYmmddTHHMMSSZ/ with manifest.json: row counts
           (taken in the dump's own snapshot) and sha256 of every file. Files 0600, directories 0700.
  restore  checks the manifest's checksums, then pg_restore into the databases (created when
           missing) and uploads into the bucket (created when missing). A target that already holds
           tables or objects is refused unless --force: then database objects in the dump are
           replaced (pg_restore --clean) and bucket keys in the backup overwritten; other keys stay.

Everything runs inside the container engine, since PostgreSQL and the S3 store are on its internal
network only. pg_dump, pg_restore and psql run in the `postgres` container (`compose exec`), so the
client is always the server's own version; by default as the OS user `postgres` over the local
socket (peer authentication, no password at all). The dump streams out over exec's stdout and back
in over its stdin. The bucket is copied by our image in the running `mlflow` container (boto3, the
service's own S3 endpoint and credentials) as a tar stream over exec's stdout/stdin; the checksums,
the manifest and the key checks are done here.

--pg-host/--pg-port/--pg-user connect over TCP from inside the postgres container instead (e.g. to a
managed PostgreSQL the engine can reach), with POSTGRES_PASSWORD sent on the tool's stdin, never on
a command line. --bucket and --s3-endpoint choose another bucket or store (e.g. scratch targets for
a restore test). The bucket is copied after the dump: artifacts written meanwhile may be in the copy
without a run that points at them, never the reverse (unless they are deleted meanwhile).
docs/security.md has the procedure.
"""
import argparse
import datetime
import hashlib
import json
import os
import subprocess
import tarfile
import threading
from pathlib import Path

from ctl import stackexec as sx
from ctl.errors import CommandError
from ctl.settings import ROOT, Settings

# What the manifest counts, per database: proves a restore brought the rows back.
COUNTS = {"tracking": {"experiments": "SELECT count(*) FROM experiments", "runs": "SELECT count(*) FROM runs",
                       "metrics": "SELECT count(*) FROM metrics", "params": "SELECT count(*) FROM params"},
          "auth": {"users": "SELECT count(*) FROM users"}}
TOOL_TIMEOUT = 3600  # seconds for one pg_dump / pg_restore / bucket copy (bounded, generous)

# Runs in our image (the `mlflow` container): OP BUCKET. `state` prints the object count (0/1
# looked at) or "none"; `create` makes the bucket; `dump` writes every object as a tar stream to
# stdout; `load` uploads every member of a tar stream from stdin.
BUCKET_CODE = r"""
import os, sys, tarfile
import boto3
from botocore.exceptions import ClientError
op, bucket = sys.argv[1], sys.argv[2]
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
if op == "state":
    try:
        print(s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0))
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("NoSuchBucket", "404"):
            raise
        print("none")
elif op == "create":
    s3.create_bucket(Bucket=bucket)
elif op == "dump":
    with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue  # a "directory" marker: no content, recreated by the keys below it
                got = s3.get_object(Bucket=bucket, Key=obj["Key"])
                info = tarfile.TarInfo(obj["Key"])
                info.size, info.mode = got["ContentLength"], 0o600
                tar.addfile(info, got["Body"])
elif op == "load":
    class Reader:  # a member of a streamed tar is readable, not seekable: say so to boto3
        def __init__(self, f):
            self.f = f
        def read(self, n=-1):
            return self.f.read(n)
    count = 0
    with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
        for member in tar:
            if member.isfile():
                s3.upload_fileobj(Reader(tar.extractfile(member)), bucket, member.name)
                count += 1
    print(count)
"""


def settings(args) -> dict:
    env = Settings.load().env
    tcp = None
    if args.pg_host or args.pg_port or args.pg_user != "postgres":
        tcp = {"host": args.pg_host or env.get("POSTGRES_HOST", "postgres"),
               "port": str(args.pg_port or env.get("POSTGRES_PORT", "5432")),
               "user": args.pg_user, "password": env.get("POSTGRES_PASSWORD", "")}
    # None: the mlflow service's own endpoint; "": AWS S3; anything else: that endpoint.
    s3_env = {} if args.s3_endpoint is None else {"MLFLOW_S3_ENDPOINT_URL": args.s3_endpoint}
    return {"tcp": tcp, "bucket": args.bucket or env.get("MLFLOW_ARTIFACT_BUCKET", ""), "s3_env": s3_env}


def last_line(text) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text.strip().splitlines() or ["?"])[-1]


def psql(cfg: dict, sql: str, db: str = "postgres", **variables) -> list:
    """Rows of SQL in DB; VARIABLES are psql variables (:'name' literal, :"name" identifier)."""
    try:
        return sx.psql(sql, db, variables, cfg["tcp"])
    except CommandError as exc:
        raise CommandError(f"psql on database {db} failed: {exc}") from None


def bucket(cfg: dict, op: str, name: str, **kw) -> str:
    try:
        return sx.python(BUCKET_CODE, op, name, env=cfg["s3_env"], timeout=kw.pop("timeout", 300), **kw).stdout.strip()
    except CommandError as exc:
        raise CommandError(f"bucket {op} of {name} failed: {exc}") from None


class Session:
    """One psql session in the postgres container, driven line by line over exec's stdin/stdout."""

    def __init__(self, cfg: dict, db: str):
        self.db = db
        self.proc = sx.popen(*sx.psql_argv(db, tcp=cfg["tcp"]), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE)
        self.proc.stdin.write(sx.pg_stdin_prefix(cfg["tcp"]))

    def send(self, sql: str):
        """A statement that prints nothing (BEGIN, COMMIT: psql runs with -q)."""
        self.proc.stdin.write(sql.encode() + b";\n")
        self.proc.stdin.flush()

    def query(self, sql: str, timeout: float = 120) -> str:
        """One statement that returns one row; its value (columns tab-separated)."""
        self.send(sql)
        got = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or not got[0]:
            self.close()
            raise CommandError(f"psql on database {self.db} did not answer {sql!r}: "
                              f"{last_line(self.proc.stderr.read() or b'')}")
        return got[0].decode().rstrip("\n")

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b"\\q\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def stream_tool(cfg: dict, tool_argv: list, what: str, stdout=None, stdin_path: Path = None):
    """pg_dump/pg_restore in the postgres container, streamed to a file or from one."""
    argv = sx.pg_argv(tool_argv, cfg["tcp"])
    proc = sx.popen(*argv, stdin=subprocess.PIPE, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
        proc.stdin.write(sx.pg_stdin_prefix(cfg["tcp"]))
        if stdin_path:
            with open(stdin_path, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    proc.stdin.write(block)
        proc.stdin.close()
        proc.wait(TOOL_TIMEOUT)
    except (OSError, subprocess.TimeoutExpired):
        proc.kill()
        proc.wait(30)
    reader.join(60)
    if proc.returncode:
        raise CommandError(f"{what} failed: {last_line(err[0] if err else b'')}")


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def dump_database(cfg: dict, db: str, kind: str, out: Path) -> dict:
    """pg_dump and the row counts in one snapshot, so the manifest describes exactly the dump.

    A psql session holds a REPEATABLE READ transaction and exports its snapshot; pg_dump (in the
    same container, streaming to OUT over exec's stdout) imports it; the session then counts."""
    session = Session(cfg, db)
    try:
        session.send("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot, server_major = session.query(
            "SELECT pg_export_snapshot(), current_setting('server_version_num')::int / 10000").split("\t")
        target = out / f"{kind}.dump"
        with open(target, "wb") as fh:
            stream_tool(cfg, ["pg_dump", "--format=custom", f"--snapshot={snapshot}", "-d", db], f"pg_dump of {db}",
                        stdout=fh)
        counts = {name: int(session.query(query)) for name, query in COUNTS[kind].items()}
        session.send("COMMIT")
    finally:
        session.close()
    return {"database": db, "file": target.name, "sha256": sha256(target), "counts": counts,
            "server_major": int(server_major)}


def safe_path(base: Path, key: str) -> Path:
    path = (base / key).resolve()
    if key.startswith("/") or ".." in Path(key).parts or base.resolve() not in path.parents:
        raise CommandError(f"refusing bucket key {key!r}: it would land outside {base}")
    return path


def cmd_backup(args) -> int:
    cfg = settings(args)
    os.umask(0o077)  # every file and directory below is private from its creation on
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    final = Path(args.out).resolve() / f"mlflow-backup-{stamp}"
    out = final.with_name(final.name + ".partial")  # renamed when complete: never mistaken for a backup
    out.mkdir(parents=True, mode=0o700)
    manifest = {"created": stamp, "databases": {}, "bucket": {"name": cfg["bucket"], "objects": {}}}
    for kind, db in (("tracking", args.tracking_db), ("auth", args.auth_db)):
        print(f"backup: dumping database {db}", flush=True)
        manifest["databases"][kind] = dump_database(cfg, db, kind, out)
    print(f"backup: copying bucket {cfg['bucket']}", flush=True)
    artifacts = out / "artifacts"
    artifacts.mkdir(mode=0o700)
    manifest["bucket"]["objects"] = copy_bucket_out(cfg, artifacts)
    manifest["bucket"]["count"] = len(manifest["bucket"]["objects"])
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    out.rename(final)
    counts = ", ".join(f"{k}={v}" for d in manifest["databases"].values() for k, v in d["counts"].items())
    print(f"backup: {final} ({counts}, objects={manifest['bucket']['count']})")
    return 0


def copy_bucket_out(cfg: dict, artifacts: Path) -> dict:
    """Every object of the bucket, streamed as tar by our image; key -> size and sha256."""
    proc = sx.popen(*sx.python_argv(BUCKET_CODE, "dump", cfg["bucket"], env=cfg["s3_env"]),
                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    objects, timer = {}, threading.Timer(TOOL_TIMEOUT, proc.kill)
    timer.start()
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                target = safe_path(artifacts, member.name)
                target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                digest, source = hashlib.sha256(), tar.extractfile(member)
                with open(target, "wb") as fh:
                    for block in iter(lambda: source.read(1 << 20), b""):
                        digest.update(block)
                        fh.write(block)
                objects[member.name] = {"size": target.stat().st_size, "sha256": digest.hexdigest()}
    except (tarfile.TarError, CommandError) as exc:
        proc.kill()
        proc.wait(60)
        reader.join(60)
        if isinstance(exc, CommandError):
            raise
        raise CommandError(f"copying bucket {cfg['bucket']} failed: {last_line(err[0] if err else b'') or exc}")
    finally:
        timer.cancel()
    proc.wait(60)
    reader.join(60)
    if proc.returncode:
        raise CommandError(f"copying bucket {cfg['bucket']} failed: {last_line(err[0] if err else b'')}")
    return objects


def copy_bucket_in(cfg: dict, backup: Path, keys) -> int:
    """Upload the backup's objects into the bucket: a tar stream into our image."""
    proc = sx.popen(*sx.python_argv(BUCKET_CODE, "load", cfg["bucket"], env=cfg["s3_env"]),
                    stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = [], []
    readers = [threading.Thread(target=lambda: out.append(proc.stdout.read()), daemon=True),
               threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)]
    for r in readers:
        r.start()
    timer = threading.Timer(TOOL_TIMEOUT, proc.kill)
    timer.start()
    try:
        with tarfile.open(fileobj=proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for key in keys:
                path = safe_path(backup / "artifacts", key)
                info = tarfile.TarInfo(key)
                info.size, info.mode = path.stat().st_size, 0o600
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
    except OSError:
        pass  # the uploader died: its stderr says why
    finally:
        try:
            proc.stdin.close()
        except OSError:
            pass
    try:
        proc.wait(TOOL_TIMEOUT)
    finally:
        timer.cancel()
    for r in readers:
        r.join(60)
    if proc.returncode:
        raise CommandError(f"uploading into bucket {cfg['bucket']} failed: {last_line(err[0] if err else b'')}")
    return int((out[0] if out else b"").strip() or 0)


def verify(backup: Path) -> dict:
    try:
        manifest = json.loads((backup / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise CommandError(f"{backup} is not a backup made by `mlflowctl backup`: {exc}")
    files = {backup / d["file"]: d["sha256"] for d in manifest["databases"].values()}
    files.update({safe_path(backup / "artifacts", k): o["sha256"] for k, o in manifest["bucket"]["objects"].items()})
    for path, digest in files.items():
        if not path.is_file() or sha256(path) != digest:
            raise CommandError(f"{path} is missing or does not match its checksum in manifest.json")
    return manifest


def table_count(cfg: dict, db: str):
    """Tables outside the system schemas, or None when the database does not exist."""
    if not psql(cfg, "SELECT 1 FROM pg_database WHERE datname = :'target'", target=db):
        return None
    return int(psql(cfg, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')",
                    db=db)[0][0])


def create_database(cfg: dict, db: str, owner: str):
    if not psql(cfg, "SELECT 1 FROM pg_roles WHERE rolname = :'owner'", owner=owner):
        raise CommandError(f"role {owner} does not exist: run the migrate step (`./mlflowctl up`) first")
    psql(cfg, 'CREATE DATABASE :"target" OWNER :"owner"', target=db, owner=owner)


def cmd_restore(args) -> int:
    cfg = settings(args)
    backup = Path(args.backup).resolve()
    manifest = verify(backup)
    targets = {"tracking": args.tracking_db, "auth": args.auth_db}
    # Refuse before changing anything: every target is checked first.
    tables = {kind: table_count(cfg, db) for kind, db in targets.items()}
    state = bucket(cfg, "state", cfg["bucket"])
    objects = None if state == "none" else int(state)
    busy = [f"database {targets[k]} has {n} tables" for k, n in tables.items() if n] \
        + ([f"bucket {cfg['bucket']} has objects"] if objects else [])
    if busy and not args.force:
        raise CommandError(f"refusing to overwrite: {'; '.join(busy)} (pass --force to replace them)")
    for kind, db in targets.items():
        if tables[kind] is None:
            create_database(cfg, db, args.owner)
        print(f"restore: database {db} from {manifest['databases'][kind]['file']}", flush=True)
        clean = ["--clean", "--if-exists"] if tables[kind] else []
        stream_tool(cfg, ["pg_restore", "--exit-on-error", "--single-transaction", *clean, "-d", db],
                    f"pg_restore into {db}", stdin_path=backup / manifest["databases"][kind]["file"])
    if objects is None:
        bucket(cfg, "create", cfg["bucket"])
    print(f"restore: {manifest['bucket']['count']} objects into bucket {cfg['bucket']}", flush=True)
    uploaded = copy_bucket_in(cfg, backup, manifest["bucket"]["objects"])
    if uploaded != manifest["bucket"]["count"]:
        raise CommandError(f"uploaded {uploaded} objects into {cfg['bucket']}; the backup has {manifest['bucket']['count']}")
    for kind, db in targets.items():  # the rows are back: same counts as when the dump was taken
        for name, query in COUNTS[kind].items():
            if int(psql(cfg, query, db=db)[0][0]) != manifest["databases"][kind]["counts"][name]:
                raise CommandError(f"restored {db} has a different {name} count than the backup")
    print(f"restore: done from {backup}")
    return 0



def _connection_options(p):
    p.add_argument("--pg-host", help="connect over TCP to this host, as seen from the postgres container (default: "
                                     "its local socket as the OS user postgres, no password)")
    p.add_argument("--pg-port", help="with TCP: port (default: POSTGRES_PORT from .env, else 5432)")
    p.add_argument("--pg-user", default="postgres", help="with TCP: superuser; password from POSTGRES_PASSWORD "
                                                        "(default %(default)s)")
    p.add_argument("--tracking-db", default="mlflow", help="tracking database (default %(default)s)")
    p.add_argument("--auth-db", default="mlflow_auth", help="basic-auth database (default %(default)s)")
    p.add_argument("--bucket", help="artifact bucket (default: MLFLOW_ARTIFACT_BUCKET from .env)")
    p.add_argument("--s3-endpoint", help="S3 endpoint URL as seen from the mlflow container; empty string = AWS "
                                         "(default: the mlflow service's MLFLOW_S3_ENDPOINT_URL)")


def register(sub):
    """Register `backup` and `restore` on mlflowctl's subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("backup", help="dump both databases and copy the artifact bucket (with a manifest)",
                       description=__doc__, formatter_class=fmt)
    p.add_argument("--out", default=str(ROOT / "var" / "backups"),
                   help="directory for the backup; var/ is git-ignored (default: %(default)s)")
    _connection_options(p)
    p.set_defaults(func=cmd_backup)
    p = sub.add_parser("restore", help="restore a backup into the databases and the bucket",
                       description=__doc__, formatter_class=fmt)
    p.add_argument("backup", metavar="BACKUP_DIR", help="a directory made by `mlflowctl backup`")
    p.add_argument("--force", action="store_true", help="replace targets that already hold tables or objects")
    p.add_argument("--owner", default="mlflow", help="owner of databases that restore creates (default %(default)s)")
    _connection_options(p)
    p.set_defaults(func=cmd_restore)
