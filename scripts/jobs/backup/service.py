"""The `backup` service: a backup every BACKUP_INTERVAL_SECONDS into the `backups` volume, the
newest BACKUP_KEEP kept, one at a time (an flock), and its gauges on :BACKUP_METRICS_PORT/metrics.
It is a daemon, not a one-shot job: compose keeps it running (`python3 -m jobs.backup serve`)."""

import fcntl
import json
import os
import shutil
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from jobs.backup.bucket import bucket_objects, s3_client
from jobs.backup.format import PREFIX, local_spawn, make_backup
from jobs.backup.tools import Interrupted, log


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


def doomed(done: list, keep: int) -> list:
    """What retention removes from DONE (attempts(), oldest first): all but the newest KEEP
    successful backups (the newest always stays), every failed attempt but the latest, and the
    latest failed one too once a success came after it."""
    good = [p for p, m in done if m.get("success")]
    newest_success = max((m["started"] for _, m in done if m.get("success")), default=0)
    failed = [(p, m) for p, m in done if not m.get("success")]
    return (
        good[: -max(keep, 1)]
        + [p for p, _ in failed[:-1]]
        + [p for p, m in failed[-1:] if m.get("started", 0) < newest_success]
    )


def prune(root: Path, keep: int):
    """Apply retention to ROOT. Called with the lock held, so never during a backup."""
    for path in doomed(attempts(root), keep):
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


def run_once(cfg: Config, lock: Lock, stop: threading.Event | None = None, wait: float = 3600) -> bool:
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


GAUGES = (  # name, help
    ("mlflow_backup_last_success_timestamp_seconds", "Unix time the last successful backup finished (0: none)."),
    ("mlflow_backup_interval_seconds", "Seconds between scheduled backups."),
    ("mlflow_backup_last_run_success", "1 if the latest backup attempt succeeded, else 0."),
    ("mlflow_backup_last_duration_seconds", "Duration of the last successful backup."),
    ("mlflow_backup_last_size_bytes", "Size of the last successful backup."),
    ("mlflow_backup_kept", "Successful backups kept in the volume."),
    ("mlflow_backup_keep", "Successful backups retention keeps (BACKUP_KEEP)."),
    ("mlflow_backup_in_progress", "1 while a backup runs."),
)


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
    values = (
        last.get("finished", 0),
        cfg.interval,
        1 if latest.get("success") else 0,
        last.get("duration_seconds", 0),
        last.get("size_bytes", 0),
        len(good),
        cfg.keep,
        int(busy),
    )
    return "".join(
        f"# HELP {name} {text}\n# TYPE {name} gauge\n{name} {value}\n"
        for (name, text), value in zip(GAUGES, values, strict=True)
    )


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

        def log_message(self, format, *args):
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


def list_attempts(cfg: Config):
    """`list`: one JSON line per attempt in the volume, oldest first."""
    for path, manifest in attempts(cfg.root):
        fields = {key: manifest.get(key) for key in ("started", "finished", "error")}
        print(json.dumps({"name": path.name, "success": manifest.get("success", False), **fields}))
