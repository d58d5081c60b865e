"""Backups of the tracking database, the auth database and the artifact bucket: the one
implementation of the backup format. The `backup` service runs it on a schedule into the `backups`
volume; `./mlflowctl backup` runs the same code on the host, with the PostgreSQL tools in the
postgres container and the bucket read by our image (scripts/ctl/backup.py).

A backup is a directory `mlflow-backup-YYYYmmddTHHMMSSZ/`: `tracking.dump` and `auth.dump`
(pg_dump, custom format), `artifacts/KEY` for every object of the bucket, and `manifest.json`: row
counts taken in the dump's own snapshot, size and sha256 of every file, start, end and
`"success": true`. It is written as `NAME.partial` and renamed when complete. A failed attempt
becomes `NAME.failed` holding only its manifest (`"success": false` and the error). Files 0600,
directories 0700.

  python3 -m jobs.backup serve   the service: a backup every BACKUP_INTERVAL_SECONDS into BACKUP_DIR,
                                 the newest BACKUP_KEEP kept, gauges on :BACKUP_METRICS_PORT/metrics
  python3 -m jobs.backup now     one backup now (after the one in progress, if any)
  python3 -m jobs.backup list    every backup and failed attempt in BACKUP_DIR, as JSON lines
  python -m jobs.backup bucket OP BUCKET   in our image: state|create|dump|load|sums|remove
"""

import datetime
import fcntl
import functools
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PREFIX = "mlflow-backup-"
DATABASES = {"tracking": "mlflow", "auth": "mlflow_auth"}
# What the manifest counts, per database: proves a restore brought the rows back.
COUNTS = {
    "tracking": {
        "experiments": "SELECT count(*) FROM experiments",
        "runs": "SELECT count(*) FROM runs",
        "metrics": "SELECT count(*) FROM metrics",
        "params": "SELECT count(*) FROM params",
    },
    "auth": {"users": "SELECT count(*) FROM users"},
}
TOOL_TIMEOUT = 3600  # seconds for one pg_dump / pg_restore / bucket copy (bounded, generous)
PROGRESS_EVERY = 5.0  # seconds between progress lines of a long copy


class BackupError(Exception):
    """A backup or restore step failed; the message says which and why."""


class Interrupted(BackupError):
    """Stopped on request (SIGTERM): the backup stays `.partial`, never counted."""


def log(msg: str):
    print(f"{datetime.datetime.now().strftime('%H:%M:%S')} {msg}", flush=True)


def last_line(text) -> str:
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    return (text.strip().splitlines() or ["?"])[-1]


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def safe_path(base: Path, key: str) -> Path:
    path = (base / key).resolve()
    if key.startswith("/") or ".." in Path(key).parts or base.resolve() not in path.parents:
        raise BackupError(f"refusing bucket key {key!r}: it would land outside {base}")
    return path


class Progress:
    """Counts objects and bytes; prints a line every PROGRESS_EVERY seconds and at the end."""

    def __init__(self, what: str, total: int = None):
        self.what, self.total, self.count, self.bytes = what, total, 0, 0
        self.started = self.shown = time.monotonic()

    def add(self, size: int):
        self.count, self.bytes = self.count + 1, self.bytes + size
        if time.monotonic() - self.shown >= PROGRESS_EVERY:
            self.shown = time.monotonic()
            self.show()

    def show(self, done: str = ""):
        of = f"/{self.total}" if self.total is not None else ""
        log(
            f"{self.what}: {self.count}{of} objects, {self.bytes / 1e6:.1f} MB, "
            f"{time.monotonic() - self.started:.1f}s{done}"
        )


# --- PostgreSQL: the tools run through SPAWN(argv, **popen_kw) -> Popen with stdin ready ----------
def local_spawn(argv: list, **kw) -> subprocess.Popen:
    """The tools in this container; libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD."""
    return subprocess.Popen(argv, **kw)


def psql_argv(db: str) -> list:
    return ["psql", "-X", "-q", "-A", "-t", "-F", "\t", "-v", "ON_ERROR_STOP=1", "-d", db]


class Session:
    """One psql session, driven line by line over its stdin/stdout."""

    def __init__(self, spawn, db: str):
        self.db = db
        self.proc = spawn(psql_argv(db), stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def send(self, sql: str):
        """A statement that prints nothing (BEGIN, COMMIT: psql runs with -q)."""
        self.proc.stdin.write(sql.encode() + b";\n")
        self.proc.stdin.flush()

    def query(self, sql: str, timeout: float = 120) -> str:
        """One statement that returns one row; its value (columns tab-separated)."""
        try:
            self.send(sql)
        except OSError:
            pass  # psql has exited: its stderr says why
        got = []
        reader = threading.Thread(target=lambda: got.append(self.proc.stdout.readline()), daemon=True)
        reader.start()
        reader.join(timeout)
        if not got or not got[0]:
            self.close()
            raise BackupError(
                f"psql on database {self.db} did not answer {sql!r}: {last_line(self.proc.stderr.read() or b'')}"
            )
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


def stream_tool(spawn, argv: list, what: str, stdout=None, stdin_path: Path = None):
    """pg_dump/pg_restore, streamed to a file or from one."""
    proc = spawn(argv, stdin=subprocess.PIPE, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE)
    err = []
    reader = threading.Thread(target=lambda: err.append(proc.stderr.read()), daemon=True)
    reader.start()
    try:
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
        raise BackupError(f"{what} failed: {last_line(err[0] if err else b'')}")


def dump_database(spawn, db: str, kind: str, out: Path) -> dict:
    """pg_dump and the row counts in one snapshot, so the manifest describes exactly the dump.

    A psql session holds a REPEATABLE READ transaction and exports its snapshot; pg_dump imports
    it; the session then counts."""
    started = time.monotonic()
    log(f"backup: dumping database {db}")
    session = Session(spawn, db)
    try:
        session.send("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        snapshot, server_major = session.query(
            "SELECT pg_export_snapshot(), current_setting('server_version_num')::int / 10000"
        ).split("\t")
        target = out / f"{kind}.dump"
        with open(target, "wb") as fh:
            stream_tool(
                spawn, ["pg_dump", "--format=custom", f"--snapshot={snapshot}", "-d", db], f"pg_dump of {db}", stdout=fh
            )
        counts = {name: int(session.query(query)) for name, query in COUNTS[kind].items()}
        session.send("COMMIT")
    finally:
        session.close()
    size = target.stat().st_size
    log(f"backup: dumped {db} ({size / 1e6:.1f} MB, {counts}) in {time.monotonic() - started:.1f}s")
    return {
        "database": db,
        "file": target.name,
        "sha256": sha256(target),
        "size": size,
        "counts": counts,
        "server_major": int(server_major),
    }


# --- the bucket ---------------------------------------------------------------------------------
def s3_client():
    import boto3  # only where the bucket is read: our image and the backup image

    # An empty MLFLOW_S3_ENDPOINT_URL means AWS S3 (boto3 refuses endpoint_url="").
    return boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)


def bucket_objects(s3, bucket: str):
    """(key, size, readable body) of every object; "directory" markers have no content."""
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        for obj in page.get("Contents", []):
            if not obj["Key"].endswith("/"):
                got = s3.get_object(Bucket=bucket, Key=obj["Key"])
                yield obj["Key"], got["ContentLength"], got["Body"]


def save_objects(objects, artifacts: Path, stop: threading.Event = None) -> dict:
    """Write (key, size, body) items under ARTIFACTS; key -> size and sha256."""
    out, progress = {}, Progress("backup: bucket")
    for key, _size, body in objects:
        if stop is not None and stop.is_set():
            raise Interrupted("stopped during the bucket copy")
        target = safe_path(artifacts, key)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        digest = hashlib.sha256()
        with open(target, "wb") as fh:
            for block in iter(functools.partial(body.read, 1 << 20), b""):
                digest.update(block)
                fh.write(block)
        out[key] = {"size": target.stat().st_size, "sha256": digest.hexdigest()}
        progress.add(out[key]["size"])
    progress.show(" (done)")
    return out


class Reader:
    """A member of a streamed tar is readable, not seekable: say so to boto3."""

    def __init__(self, f):
        self.f = f

    def read(self, n=-1):
        return self.f.read(n)


def bucket_command(op: str, bucket: str) -> int:
    """OP on BUCKET, run in our image (the mlflow container) for `./mlflowctl`: `state` prints the
    object count (0/1 looked at) or "none"; `create`; `dump` writes every object as a tar stream to
    stdout; `load` uploads every member of a tar stream from stdin and prints the count; `sums`
    prints {key: sha256} as JSON ({} when the bucket does not exist); `remove` empties and deletes it."""
    from botocore.exceptions import ClientError

    s3 = s3_client()
    try:
        if op == "state":
            print(s3.list_objects_v2(Bucket=bucket, MaxKeys=1).get("KeyCount", 0))
        elif op == "create":
            s3.create_bucket(Bucket=bucket)
        elif op == "dump":
            with tarfile.open(fileobj=sys.stdout.buffer, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for key, size, body in bucket_objects(s3, bucket):
                    info = tarfile.TarInfo(key)
                    info.size, info.mode = size, 0o600
                    tar.addfile(info, body)
        elif op == "load":
            count = 0
            with tarfile.open(fileobj=sys.stdin.buffer, mode="r|") as tar:
                for member in tar:
                    if member.isfile():
                        s3.upload_fileobj(Reader(tar.extractfile(member)), bucket, member.name)
                        count += 1
            print(count)
        elif op in ("sums", "remove"):
            sums = {}
            for key, _size, body in bucket_objects(s3, bucket):
                digest = hashlib.sha256()
                for block in iter(functools.partial(body.read, 1 << 20), b""):
                    digest.update(block)
                sums[key] = digest.hexdigest()
            if op == "remove":
                for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket):
                    for obj in page.get("Contents", []):
                        s3.delete_object(Bucket=bucket, Key=obj["Key"])
                s3.delete_bucket(Bucket=bucket)
            print(json.dumps(sums))
        else:
            raise SystemExit(f"unknown bucket operation {op}")
    except ClientError as exc:
        if exc.response["Error"]["Code"] not in ("NoSuchBucket", "404"):
            raise
        print("none" if op == "state" else "{}")
    return 0


# --- one backup ---------------------------------------------------------------------------------
def make_backup(root: Path, spawn, objects, bucket: str, stop: threading.Event = None) -> Path:
    """A complete backup under ROOT: the databases through SPAWN, then OBJECTS (an iterable of
    (key, size, body)) of BUCKET. Returns its directory; on failure leaves NAME.failed with the
    error in its manifest and raises."""
    os.umask(0o077)  # every file and directory below is private from its creation on
    started = time.time()
    stamp = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    final = Path(root).resolve() / f"{PREFIX}{stamp}"
    out = final.with_name(final.name + ".partial")  # renamed when complete: never mistaken for a backup
    out.mkdir(parents=True, mode=0o700)
    manifest = {
        "created": stamp,
        "started": started,
        "success": False,
        "databases": {},
        "bucket": {"name": bucket, "objects": {}},
    }
    try:
        for kind, db in DATABASES.items():
            if stop is not None and stop.is_set():
                raise Interrupted("stopped before the dump")
            manifest["databases"][kind] = dump_database(spawn, db, kind, out)
        log(f"backup: copying bucket {bucket}")
        artifacts = out / "artifacts"
        artifacts.mkdir(mode=0o700)
        manifest["bucket"]["objects"] = save_objects(objects, artifacts, stop)
        manifest["bucket"]["count"] = len(manifest["bucket"]["objects"])
    except Interrupted:
        raise
    except Exception as exc:
        manifest.update(finished=time.time(), error=f"{type(exc).__name__}: {exc}")
        failed = final.with_name(final.name + ".failed")
        shutil.rmtree(out, ignore_errors=True)
        failed.mkdir(mode=0o700)
        (failed / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        raise
    manifest["size_bytes"] = sum(d["size"] for d in manifest["databases"].values()) + sum(
        o["size"] for o in manifest["bucket"]["objects"].values()
    )
    manifest.update(finished=time.time(), success=True)
    manifest["duration_seconds"] = round(manifest["finished"] - started, 3)
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    out.rename(final)
    counts = ", ".join(f"{k}={v}" for d in manifest["databases"].values() for k, v in d["counts"].items())
    log(
        f"backup: {final} ({counts}, objects={manifest['bucket']['count']}, "
        f"{manifest['size_bytes'] / 1e6:.1f} MB) in {manifest['duration_seconds']:.1f}s"
    )
    return final


def read_manifest(backup: Path) -> dict:
    try:
        return json.loads((backup / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{backup} is not a backup made by `mlflowctl backup`: {exc}") from None


def mismatched_files(backup: Path, manifest: dict) -> list:
    """Files of the backup that are missing or do not match their sha256 in the manifest."""
    files = {backup / d["file"]: d["sha256"] for d in manifest["databases"].values()}
    files.update({safe_path(backup / "artifacts", k): o["sha256"] for k, o in manifest["bucket"]["objects"].items()})
    return [path for path, digest in files.items() if not path.is_file() or sha256(path) != digest]


def verify(backup: Path) -> dict:
    manifest = read_manifest(backup)
    bad = mismatched_files(backup, manifest)
    if bad:
        raise BackupError(
            f"{bad[0]} is missing or does not match its checksum in manifest.json"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        )
    return manifest


# --- the backups volume: attempts, retention, the lock --------------------------------------------
def attempts(root: Path) -> list:
    """(directory, manifest) of every finished attempt, successful or failed, oldest first."""
    out = []
    for path in sorted(Path(root).glob(PREFIX + "*")):
        if path.is_dir() and not path.name.endswith(".partial"):
            try:
                out.append((path, json.loads((path / "manifest.json").read_text())))
            except (OSError, ValueError):
                continue  # being deleted, or not ours
    return sorted(out, key=lambda a: a[1].get("started", 0))


def prune(root: Path, keep: int):
    """Keep the newest KEEP successful backups (the newest always) and only the newest failed
    attempt, if it came after them. Called with the lock held, so never during a backup."""
    done = attempts(root)
    good = [p for p, m in done if m.get("success")]
    newest_success = max((m["started"] for _, m in done if m.get("success")), default=0)
    doomed = good[: -max(keep, 1)]
    failed = [(p, m) for p, m in done if not m.get("success")]
    doomed += [p for p, m in failed[:-1]] + [p for p, m in failed[-1:] if m.get("started", 0) < newest_success]
    for path in doomed:
        log(f"backup: retention removes {path.name}")
        shutil.rmtree(path)


class Lock:
    """One backup at a time in a directory: an flock on ROOT/.lock (the service's and `now`'s)."""

    def __init__(self, root: Path):
        self.fh = open(Path(root) / ".lock", "a")

    def acquire(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.5)

    def release(self):
        fcntl.flock(self.fh, fcntl.LOCK_UN)


class Config:
    """The service's settings, from its environment (compose: .env)."""

    def __init__(self, env=os.environ):
        self.root = Path(env.get("BACKUP_DIR", "/backups"))
        self.interval = int(env.get("BACKUP_INTERVAL_SECONDS") or 86400)
        self.keep = int(env.get("BACKUP_KEEP") or 7)
        self.port = int(env.get("BACKUP_METRICS_PORT") or 9188)
        self.bucket = env.get("MLFLOW_ARTIFACT_BUCKET", "")
        if self.interval < 1 or self.keep < 1 or not self.bucket or not env.get("PGPASSWORD"):
            raise SystemExit(
                "backup: BACKUP_INTERVAL_SECONDS and BACKUP_KEEP must be >= 1; MLFLOW_ARTIFACT_BUCKET and "
                "BACKUP_DB_PASSWORD must be set (./mlflowctl bootstrap fills the password)"
            )


def run_once(cfg: Config, lock: Lock, stop: threading.Event = None, wait: float = 3600) -> bool:
    """One backup into the volume and retention, under the lock; True on success."""
    if not lock.acquire(wait):
        log(f"backup: another backup held the lock for {wait:.0f}s; none taken")
        return False
    try:
        make_backup(cfg.root, local_spawn, bucket_objects(s3_client(), cfg.bucket), cfg.bucket, stop)
        return True
    except Interrupted as exc:
        log(f"backup: {exc}; left as .partial (not a backup)")
        return False
    except Exception as exc:  # recorded in its manifest (.failed) and in the metrics
        log(f"backup: FAILED: {type(exc).__name__}: {exc}")
        return False
    finally:
        prune(cfg.root, cfg.keep)
        lock.release()


def metrics(cfg: Config, lock: Lock) -> str:
    """Prometheus text: read from the volume's manifests, so every backup (the service's own and
    `now`'s) counts, and a restart keeps what happened before."""
    done = attempts(cfg.root)
    good = [m for _, m in done if m.get("success")]
    latest = done[-1][1] if done else {}
    last = good[-1] if good else {}
    busy = not lock.acquire(0)
    if not busy:
        lock.release()
    gauges = [
        (
            "mlflow_backup_last_success_timestamp_seconds",
            "Unix time the last successful backup finished (0: none).",
            last.get("finished", 0),
        ),
        ("mlflow_backup_interval_seconds", "Seconds between scheduled backups.", cfg.interval),
        (
            "mlflow_backup_last_run_success",
            "1 if the latest backup attempt succeeded, else 0.",
            1 if latest.get("success") else 0,
        ),
        (
            "mlflow_backup_last_duration_seconds",
            "Duration of the last successful backup.",
            last.get("duration_seconds", 0),
        ),
        ("mlflow_backup_last_size_bytes", "Size of the last successful backup.", last.get("size_bytes", 0)),
        ("mlflow_backup_kept", "Successful backups kept in the volume.", len(good)),
        ("mlflow_backup_keep", "Successful backups retention keeps (BACKUP_KEEP).", cfg.keep),
        ("mlflow_backup_in_progress", "1 while a backup runs.", int(busy)),
    ]
    return "".join(f"# HELP {name} {text}\n# TYPE {name} gauge\n{name} {value}\n" for name, text, value in gauges)


def serve(cfg: Config) -> int:
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    lock = Lock(cfg.root)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/metrics":
                self.send_error(404)
                return
            body = metrics(cfg, lock).encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass  # scrapes every few seconds: not worth a log line

    server = ThreadingHTTPServer(("0.0.0.0", cfg.port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    if lock.acquire(60):  # a .partial left by a killed run is garbage; nobody else writes now
        for stale in cfg.root.glob(PREFIX + "*.partial"):
            log(f"backup: removing {stale.name} (interrupted)")
            shutil.rmtree(stale)
        lock.release()
    log(f"backup: every {cfg.interval}s into {cfg.root}, keeping {cfg.keep}; metrics on :{cfg.port}/metrics")
    while not stop.is_set():
        done = attempts(cfg.root)
        due = done[-1][1].get("started", 0) + cfg.interval if done else 0
        if time.time() < due:
            stop.wait(min(due - time.time(), 60))  # re-read: `now` may have taken one meanwhile
            continue
        run_once(cfg, lock, stop)
    server.shutdown()
    log("backup: stopped")
    return 0


def main(argv: list) -> int:
    if argv[:1] == ["bucket"] and len(argv) == 3:
        return bucket_command(argv[1], argv[2])
    if argv == ["list"]:
        for path, manifest in attempts(Config().root):
            print(
                json.dumps(
                    {
                        "name": path.name,
                        "success": manifest.get("success", False),
                        "started": manifest.get("started"),
                        "finished": manifest.get("finished"),
                        "error": manifest.get("error"),
                    }
                )
            )
        return 0
    if argv == ["now"]:
        cfg = Config()
        return 0 if run_once(cfg, Lock(cfg.root)) else 1
    if argv == ["serve"]:
        return serve(Config())
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
