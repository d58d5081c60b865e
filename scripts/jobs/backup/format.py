"""The backup format: one backup, its verification, and pg_restore of its dumps.

A backup is a directory `mlflow-backup-YYYYmmddTHHMMSSZ/`: `tracking.dump`, `auth.dump` (basic-auth)
and `oidc.dump` (the OIDC plugin's users, groups and grants; backups before it have none), all
pg_dump custom format, `artifacts/KEY` for every object of the bucket, and `manifest.json`: row
counts taken in the dump's own snapshot, size and sha256 of every file, start, end and
`"success": true`. It is written as `NAME.partial` and renamed when complete. A failed attempt
becomes `NAME.failed` holding only its manifest (`"success": false` and the error). Files 0600,
directories 0700.

The PostgreSQL tools run through SPAWN(argv, **popen_kw) -> Popen: `local_spawn` in the backup
service's container, or the host CLI's, which runs them in the postgres container.
"""

import datetime
import json
import os
import shutil
import subprocess
import threading
import time
from pathlib import Path

from jobs.backup.tools import TOOL_TIMEOUT, BackupError, Interrupted, Stream, copy_digest, log, psql_argv, sha256

PREFIX = "mlflow-backup-"
DATABASES = {"tracking": "mlflow", "auth": "mlflow_auth", "oidc": "mlflow_oidc"}
# What the manifest counts, per database: proves a restore brought the rows back.
COUNTS = {
    "tracking": {
        "experiments": "SELECT count(*) FROM experiments",
        "runs": "SELECT count(*) FROM runs",
        "metrics": "SELECT count(*) FROM metrics",
        "params": "SELECT count(*) FROM params",
    },
    "auth": {"users": "SELECT count(*) FROM users"},
    "oidc": {"users": "SELECT count(*) FROM users", "groups": "SELECT count(*) FROM groups"},
}
PROGRESS_EVERY = 5.0  # seconds between progress lines of a long copy
PIPES = {"stdin": subprocess.PIPE, "stdout": subprocess.PIPE, "stderr": subprocess.PIPE}


def safe_path(base: Path, key: str) -> Path:
    """BASE/KEY, refused when KEY would land outside BASE (absolute, `..`, or a resolved escape)."""
    path = (base / key).resolve()
    if key.startswith("/") or ".." in Path(key).parts or base.resolve() not in path.parents:
        raise BackupError(f"refusing bucket key {key!r}: it would land outside {base}")
    return path


class Progress:
    """Counts objects and bytes; prints a line every PROGRESS_EVERY seconds and at the end."""

    def __init__(self, what: str, total: int | None = None):
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


def local_spawn(argv: list, **kw) -> subprocess.Popen:
    """The tools in this container; libpq reads PGHOST, PGPORT, PGUSER, PGPASSWORD."""
    return subprocess.Popen(argv, **kw)


class Session:
    """One psql session, driven line by line over its stdin/stdout."""

    def __init__(self, spawn, db: str):
        self.db = db
        # Open while pg_dump runs (itself bounded by TOOL_TIMEOUT) and the counts after it.
        self.stream = Stream(spawn(psql_argv(db), **PIPES), timeout=2 * TOOL_TIMEOUT)

    def send(self, sql: str):
        """A statement that prints nothing (BEGIN, COMMIT: psql runs with -q)."""
        self.stream.stdin.write(sql.encode() + b";\n")
        self.stream.stdin.flush()

    def query(self, sql: str, timeout: float = 120) -> str:
        """One statement that returns one row; its value (columns tab-separated)."""
        try:
            self.send(sql)
        except OSError:
            pass  # psql has exited: its stderr says why
        line = self.stream.readline(timeout)
        if not line:
            self.close()
            raise BackupError(f"psql on database {self.db} did not answer {sql!r}: {self.stream.error()}")
        return line.decode().rstrip("\n")

    def close(self):
        if self.stream.proc.poll() is None:
            try:
                self.stream.stdin.write(b"\\q\n")
            except OSError:
                pass
        self.stream.close_stdin()
        try:
            self.stream.finish("psql", wait=30)
        except BackupError:
            pass  # a query's error has been raised already; closing only cleans up


def run_tool(spawn, argv: list, what: str, stdout=None, stdin_path: Path | None = None):
    """pg_dump/pg_restore, streamed to the file STDOUT or from the file STDIN_PATH."""
    stream = Stream(spawn(argv, stdin=subprocess.PIPE, stdout=stdout or subprocess.DEVNULL, stderr=subprocess.PIPE))
    if stdin_path:
        stream.feed(stdin_path)
    else:
        stream.close_stdin()
    stream.finish(what)


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
            run_tool(
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


def restore_database(spawn, dump: Path, db: str, clean: bool):
    """pg_restore DUMP into DB in one transaction; CLEAN replaces the objects the dump holds."""
    options = ["--clean", "--if-exists"] if clean else []
    run_tool(
        spawn,
        ["pg_restore", "--exit-on-error", "--single-transaction", *options, "-d", db],
        f"pg_restore into {db}",
        stdin_path=dump,
    )


def save_objects(objects, artifacts: Path, stop: threading.Event | None = None) -> dict:
    """Write (key, size, body) items under ARTIFACTS; key -> size and sha256."""
    out: dict[str, dict] = {}
    progress = Progress("backup: bucket")
    for key, _size, body in objects:
        if stop is not None and stop.is_set():
            raise Interrupted("stopped during the bucket copy")
        target = safe_path(artifacts, key)
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with open(target, "wb") as fh:
            digest = copy_digest(body, fh)
        out[key] = {"size": target.stat().st_size, "sha256": digest}
        progress.add(out[key]["size"])
    progress.show(" (done)")
    return out


def write_manifest(directory: Path, manifest: dict):
    (directory / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")


def make_backup(root: Path, spawn, objects, bucket: str, stop: threading.Event | None = None) -> Path:
    """A complete backup under ROOT: the databases through SPAWN, then OBJECTS (an iterable of
    (key, size, body)) of BUCKET. Returns its directory; on failure leaves NAME.failed with the
    error in its manifest and raises."""
    os.umask(0o077)  # every file and directory below is private from its creation on
    started = time.time()
    stamp = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    final = Path(root).resolve() / f"{PREFIX}{stamp}"
    out = final.with_name(final.name + ".partial")  # renamed when complete: never mistaken for a backup
    out.mkdir(parents=True, mode=0o700)
    manifest: dict = {
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
        write_manifest(failed, manifest)
        raise
    manifest["size_bytes"] = sum(d["size"] for d in manifest["databases"].values()) + sum(
        o["size"] for o in manifest["bucket"]["objects"].values()
    )
    manifest.update(finished=time.time(), success=True)
    manifest["duration_seconds"] = round(manifest["finished"] - started, 3)
    write_manifest(out, manifest)
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
    """The manifest of BACKUP, once every file it names is there with its sha256."""
    manifest = read_manifest(backup)
    bad = mismatched_files(backup, manifest)
    if bad:
        raise BackupError(
            f"{bad[0]} is missing or does not match its checksum in manifest.json"
            + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        )
    return manifest
