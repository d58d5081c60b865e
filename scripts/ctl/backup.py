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

The format (dump, counts, checksums, manifest) is scripts/jobs/backup.py's, which the `backup` service also
runs on a schedule into its `backups` volume: `backup --now` has it take one at once, `backup --list`
lists them, `restore --from-volume NAME|latest` restores one of them (copied out into --dir first).
"""

import argparse
import json
import subprocess
import tarfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from ctl import stackexec as sx
from ctl.errors import CommandError
from ctl.settings import ROOT, Settings
from jobs import backup as fmt
from jobs.backup import COUNTS, TOOL_TIMEOUT, BackupError, last_line, log

SERVICE = "backup"  # the compose service with the `backups` volume (scripts/jobs/backup.py serve)


def settings(args) -> dict:
    env = Settings.load().env
    tcp = None
    if args.pg_host or args.pg_port or args.pg_user != "postgres":
        tcp = {
            "host": args.pg_host or env.get("POSTGRES_HOST", "postgres"),
            "port": str(args.pg_port or env.get("POSTGRES_PORT", "5432")),
            "user": args.pg_user,
            "password": env.get("POSTGRES_PASSWORD", ""),
        }
    # None: the mlflow service's own endpoint; "": AWS S3; anything else: that endpoint.
    s3_env = {} if args.s3_endpoint is None else {"MLFLOW_S3_ENDPOINT_URL": args.s3_endpoint}
    return {"tcp": tcp, "bucket": args.bucket or env.get("MLFLOW_ARTIFACT_BUCKET", ""), "s3_env": s3_env}


@contextmanager
def step(what: str):
    """Print WHAT, then how long it took; a format error becomes the command's one-line error."""
    started = time.monotonic()
    log(f"{what} ...")
    try:
        yield
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    log(f"{what}: done in {time.monotonic() - started:.1f}s")


def spawn(cfg: dict):
    """jobs.backup's way to start a PostgreSQL tool: in the postgres container (the server's own
    version), with the TCP password, if any, as the first line of its stdin."""

    def start(argv: list, **kw) -> subprocess.Popen:
        proc = sx.popen(*sx.pg_argv(argv, cfg["tcp"]), **kw)
        proc.stdin.write(sx.pg_stdin_prefix(cfg["tcp"]))
        return proc

    return start


def psql(cfg: dict, sql: str, db: str = "postgres", **variables) -> list:
    """Rows of SQL in DB; VARIABLES are psql variables (:'name' literal, :"name" identifier)."""
    try:
        return sx.psql(sql, db, variables, cfg["tcp"])
    except CommandError as exc:
        raise CommandError(f"psql on database {db} failed: {exc}") from None


def bucket(cfg: dict, op: str, name: str, timeout: float = 300) -> str:
    """jobs.backup's bucket OP on NAME, run by our image in the mlflow container."""
    try:
        return sx.python(BUCKET_CODE, op, name, env=cfg["s3_env"], timeout=timeout).stdout.strip()
    except CommandError as exc:
        raise CommandError(f"bucket {op} of {name} failed: {exc}") from None


BUCKET_CODE = "import sys; from jobs.backup import bucket_command; sys.exit(bucket_command(*sys.argv[1:]))"


class Pipe:
    """A process's stdout/stdin stream with its stderr collected and a TOOL_TIMEOUT kill."""

    def __init__(self, argv: list, env: dict, **kw):
        self.proc = sx.popen(*argv, env=env, stderr=subprocess.PIPE, **kw)
        self.err = []
        self.reader = threading.Thread(target=lambda: self.err.append(self.proc.stderr.read()), daemon=True)
        self.reader.start()
        self.timer = threading.Timer(TOOL_TIMEOUT, self.proc.kill)
        self.timer.start()

    def finish(self, what: str, kill: bool = False):
        if kill:
            self.proc.kill()
        try:
            self.proc.wait(TOOL_TIMEOUT)
        finally:
            self.timer.cancel()
        self.reader.join(60)
        if self.proc.returncode:
            raise CommandError(f"{what} failed: {last_line(self.err[0] if self.err else b'')}")


def tar_objects(tar: tarfile.TarFile):
    for member in tar:
        if member.isfile():
            yield member.name, member.size, tar.extractfile(member)


def cmd_backup(args) -> int:
    if args.now:
        return backup_in_volume()
    cfg = settings(args)
    pipe = Pipe(
        sx.python_argv(BUCKET_CODE, "dump", cfg["bucket"], env=cfg["s3_env"]),
        None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        with tarfile.open(fileobj=pipe.proc.stdout, mode="r|") as tar:
            fmt.make_backup(Path(args.out), spawn(cfg), tar_objects(tar), cfg["bucket"])
    except (tarfile.TarError, BackupError) as exc:
        try:
            pipe.finish(f"copying bucket {cfg['bucket']}", kill=True)
        except CommandError as died:
            raise CommandError(f"backup failed: {died}") from None
        raise CommandError(f"backup failed: {exc}") from None
    pipe.finish(f"copying bucket {cfg['bucket']}")
    return 0


# --- the `backups` volume of the backup service -----------------------------------------------------
def backup_in_volume() -> int:
    """`backup --now`: the service takes a backup now (after the one in progress), output shown."""
    started = time.monotonic()
    rc = subprocess.run(
        sx.compose_argv("exec", "-T", SERVICE, "python3", "-m", "jobs.backup", "now"),
        env=sx.eng().env,
        cwd=ROOT,
        timeout=TOOL_TIMEOUT + 120,
    ).returncode
    if rc:
        raise CommandError(
            f"the backup in the `{SERVICE}` service failed (exit {rc}); its output is above, and "
            f"`./mlflowctl backup --list` shows its manifest"
        )
    log(f"backup --now: done in {time.monotonic() - started:.1f}s")
    return 0


def volume_backups() -> list:
    """Every attempt in the volume (name, success, started, finished, error), oldest first."""
    out = sx.run("exec", "-T", SERVICE, "python3", "-m", "jobs.backup", "list", timeout=120).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def cmd_list(args) -> int:
    for b in volume_backups():
        print(
            f"{b['name']}  {'ok    ' if b['success'] else 'FAILED'}  "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime(b['finished'] or 0))} UTC"
            + (f"  {b['error']}" if b["error"] else "")
        )
    return 0


def fetch_from_volume(name: str, dest: Path) -> Path:
    """Copy backup NAME ("latest": the newest successful one) out of the volume into DEST."""
    good = [b["name"] for b in volume_backups() if b["success"]]
    if name == "latest":
        if not good:
            raise CommandError(
                f"the `{SERVICE}` service's volume holds no successful backup yet "
                "(`./mlflowctl backup --now` takes one)"
            )
        name = good[-1]
    elif name not in good:
        raise CommandError(f"no successful backup {name} in the volume; there are: {', '.join(good) or 'none'}")
    dest.mkdir(parents=True, exist_ok=True, mode=0o700)
    if (dest / name).exists():
        log(f"{dest / name} is there already: not copied again")
        return dest / name
    with step(f"copying {name} out of the `{SERVICE}` volume into {dest}"):
        pipe = Pipe(
            ["exec", "-T", SERVICE, "tar", "-C", "/backups", "-cf", "-", name],
            None,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
        )
        partial = dest / f".{name}.partial"
        partial.mkdir(mode=0o700, exist_ok=True)
        untar = subprocess.run(
            ["tar", "--no-same-owner", "-x", "-C", str(partial)],
            stdin=pipe.proc.stdout,
            capture_output=True,
            timeout=TOOL_TIMEOUT,
        )
        pipe.finish(f"reading {name} from the volume")
        if untar.returncode:
            raise CommandError(f"unpacking {name} failed: {last_line(untar.stderr)}")
        (partial / name).rename(dest / name)
        partial.rmdir()
    return dest / name


def copy_bucket_in(cfg: dict, backup: Path, objects: dict) -> int:
    """Upload the backup's objects into the bucket: a tar stream into our image."""
    pipe = Pipe(
        sx.python_argv(BUCKET_CODE, "load", cfg["bucket"], env=cfg["s3_env"]),
        None,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    out = []
    reader = threading.Thread(target=lambda: out.append(pipe.proc.stdout.read()), daemon=True)
    reader.start()
    progress = fmt.Progress(f"restore: bucket {cfg['bucket']}", len(objects))
    try:
        with tarfile.open(fileobj=pipe.proc.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for key in objects:
                path = fmt.safe_path(backup / "artifacts", key)
                info = tarfile.TarInfo(key)
                info.size, info.mode = path.stat().st_size, 0o600
                with open(path, "rb") as fh:
                    tar.addfile(info, fh)
                progress.add(info.size)
    except OSError:
        pass  # the uploader died: its stderr says why
    finally:
        try:
            pipe.proc.stdin.close()
        except OSError:
            pass
    pipe.finish(f"uploading into bucket {cfg['bucket']}")
    reader.join(60)
    progress.show(" (sent)")
    return int((out[0] if out else b"").strip() or 0)


def verify(backup: Path) -> dict:
    try:
        return fmt.verify(backup)
    except BackupError as exc:
        raise CommandError(str(exc)) from None


def table_count(cfg: dict, db: str):
    """Tables outside the system schemas, or None when the database does not exist."""
    if not psql(cfg, "SELECT 1 FROM pg_database WHERE datname = :'target'", target=db):
        return None
    return int(
        psql(cfg, "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')", db=db)[
            0
        ][0]
    )


def create_database(cfg: dict, db: str, owner: str):
    if not psql(cfg, "SELECT 1 FROM pg_roles WHERE rolname = :'owner'", owner=owner):
        raise CommandError(f"role {owner} does not exist: run the migrate step (`./mlflowctl up`) first")
    psql(cfg, 'CREATE DATABASE :"target" OWNER :"owner"', target=db, owner=owner)


def count_mismatches(cfg: dict, targets: dict, manifest: dict) -> list:
    """(database, table, in the backup, restored) for every count that differs from the manifest."""
    out = []
    for kind, db in targets.items():
        for name, query in COUNTS[kind].items():
            expected, got = manifest["databases"][kind]["counts"][name], int(psql(cfg, query, db=db)[0][0])
            log(f"  {db}.{name}: backup {expected}, restored {got}" + ("" if expected == got else "  MISMATCH"))
            if got != expected:
                out.append((db, name, expected, got))
    return out


def restore_into(cfg: dict, backup: Path, manifest: dict, targets: dict, force: bool, owner: str):
    """pg_restore into TARGETS (kind -> database) and upload into cfg's bucket; refuses targets
    holding tables or objects unless FORCE."""
    tables = {kind: table_count(cfg, db) for kind, db in targets.items()}  # every target checked first
    state = bucket(cfg, "state", cfg["bucket"])
    objects = None if state == "none" else int(state)
    busy = [f"database {targets[k]} has {n} tables" for k, n in tables.items() if n] + (
        [f"bucket {cfg['bucket']} has objects"] if objects else []
    )
    if busy and not force:
        raise CommandError(f"refusing to overwrite: {'; '.join(busy)} (pass --force to replace them)")
    for kind, db in targets.items():
        if tables[kind] is None:
            create_database(cfg, db, owner)
        with step(f"restore: database {db} from {manifest['databases'][kind]['file']}"):
            clean = ["--clean", "--if-exists"] if tables[kind] else []
            fmt.stream_tool(
                spawn(cfg),
                ["pg_restore", "--exit-on-error", "--single-transaction", *clean, "-d", db],
                f"pg_restore into {db}",
                stdin_path=backup / manifest["databases"][kind]["file"],
            )
    if objects is None:
        bucket(cfg, "create", cfg["bucket"])
    with step(f"restore: {manifest['bucket']['count']} objects into bucket {cfg['bucket']}"):
        uploaded = copy_bucket_in(cfg, backup, manifest["bucket"]["objects"])
    if uploaded != manifest["bucket"]["count"]:
        raise CommandError(
            f"uploaded {uploaded} objects into {cfg['bucket']}; the backup has {manifest['bucket']['count']}"
        )


def cmd_restore(args) -> int:
    cfg = settings(args)
    if bool(args.backup) == bool(args.from_volume):
        raise CommandError("name a backup: a directory, or --from-volume NAME|latest")
    backup = fetch_from_volume(args.from_volume, Path(args.dir)) if args.from_volume else Path(args.backup).resolve()
    with step(f"restore: checking the checksums of {backup}"):
        manifest = verify(backup)
    targets = {"tracking": args.tracking_db, "auth": args.auth_db}
    restore_into(cfg, backup, manifest, targets, args.force, args.owner)
    if count_mismatches(cfg, targets, manifest):  # the rows are back: same counts as when the dump was taken
        raise CommandError("restored databases have other row counts than the backup (listed above)")
    log(f"restore: done from {backup}")
    return 0


def _connection_options(p):
    p.add_argument(
        "--pg-host",
        help="connect over TCP to this host, as seen from the postgres container (default: "
        "its local socket as the OS user postgres, no password)",
    )
    p.add_argument("--pg-port", help="with TCP: port (default: POSTGRES_PORT from .env, else 5432)")
    p.add_argument(
        "--pg-user",
        default="postgres",
        help="with TCP: superuser; password from POSTGRES_PASSWORD (default %(default)s)",
    )
    p.add_argument("--tracking-db", default="mlflow", help="tracking database (default %(default)s)")
    p.add_argument("--auth-db", default="mlflow_auth", help="basic-auth database (default %(default)s)")
    p.add_argument("--bucket", help="artifact bucket (default: MLFLOW_ARTIFACT_BUCKET from .env)")
    p.add_argument(
        "--s3-endpoint",
        help="S3 endpoint URL as seen from the mlflow container; empty string = AWS "
        "(default: the mlflow service's MLFLOW_S3_ENDPOINT_URL)",
    )


def register(sub):
    """Register `backup` and `restore` on mlflowctl's subparsers."""
    formatter = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser(
        "backup",
        help="dump both databases and copy the artifact bucket (with a manifest)",
        description=__doc__,
        formatter_class=formatter,
    )
    p.add_argument(
        "--out",
        default=str(ROOT / "var" / "backups"),
        help="directory for the backup; var/ is git-ignored (default: %(default)s)",
    )
    p.add_argument(
        "--now",
        action="store_true",
        help="instead: the `backup` service takes one now, into its `backups` volume (shown by --list)",
    )
    p.add_argument("--list", action="store_true", help="instead: list the backups in the `backups` volume")
    _connection_options(p)
    p.set_defaults(func=lambda args: cmd_list(args) if args.list else cmd_backup(args))
    p = sub.add_parser(
        "restore",
        help="restore a backup into the databases and the bucket",
        description=__doc__,
        formatter_class=formatter,
    )
    p.add_argument("backup", nargs="?", metavar="BACKUP_DIR", help="a directory made by `mlflowctl backup`")
    p.add_argument(
        "--from-volume",
        metavar="NAME",
        help="a backup in the `backups` volume (`latest`: the newest successful one), first copied into --dir",
    )
    p.add_argument(
        "--dir",
        default=str(ROOT / "var" / "backups"),
        help="where --from-volume copies the backup (default: %(default)s)",
    )
    p.add_argument("--force", action="store_true", help="replace targets that already hold tables or objects")
    p.add_argument("--owner", default="mlflow", help="owner of databases that restore creates (default %(default)s)")
    _connection_options(p)
    p.set_defaults(func=cmd_restore)
