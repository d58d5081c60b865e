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

The format (dump, counts, checksums, manifest) is scripts/jobs/backup/'s, which the `backup` service also
runs on a schedule into its `backups` volume: `backup --now` has it take one at once, `backup --list`
lists them, `restore --from-volume NAME|latest` restores one of them (copied out into --dir first).
"""

import dataclasses
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
from jobs.backup import format as fmt
from jobs.backup.bucket import tar_objects
from jobs.backup.tools import TOOL_TIMEOUT, BackupError, Stream, last_line, log, pipe

SERVICE = "backup"  # the compose service with the `backups` volume (scripts/jobs/backup/service.py)
BUCKET_CODE = "import sys; from jobs.backup.bucket import bucket_command; sys.exit(bucket_command(*sys.argv[1:]))"


@dataclasses.dataclass(frozen=True)
class Target:
    """Where a backup is read from or restored into, as the engine's containers see it.

    tcp: {"host", "port", "user", "password"} to reach PostgreSQL over TCP from the postgres
    container; None: its local socket as the OS user postgres (no password). s3_env: variables
    for our image's bucket commands ({}: the mlflow service's own endpoint)."""

    bucket: str
    tcp: dict | None = None
    s3_env: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_args(cls, args) -> "Target":
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
        return cls(bucket=args.bucket or live_bucket(), tcp=tcp, s3_env=s3_env)

    def with_bucket(self, name: str) -> "Target":
        return dataclasses.replace(self, bucket=name)

    def spawn(self):
        """jobs.backup's way to start a PostgreSQL tool: in the postgres container (the server's own
        version), with the TCP password, if any, as the first line of its stdin."""

        def start(argv: list, **kw) -> subprocess.Popen:
            proc = sx.popen(*sx.pg_argv(argv, self.tcp), **kw)
            pipe(proc.stdin).write(sx.pg_stdin_prefix(self.tcp))
            return proc

        return start

    def psql(self, sql: str, db: str = "postgres", **variables) -> list:
        """Rows of SQL in DB; VARIABLES are psql variables (:'name' literal, :"name" identifier)."""
        try:
            return sx.psql(sql, db, variables, self.tcp)
        except CommandError as exc:
            raise CommandError(f"psql on database {db} failed: {exc}") from None

    def bucket_op(self, op: str, timeout: float = 300) -> str:
        """jobs.backup.bucket's OP on this bucket, run by our image in the mlflow container."""
        try:
            return sx.python(BUCKET_CODE, op, self.bucket, env=self.s3_env, timeout=timeout).stdout.strip()
        except CommandError as exc:
            raise CommandError(f"bucket {op} of {self.bucket} failed: {exc}") from None

    def bucket_stream(self, op: str, stdin=subprocess.DEVNULL) -> Stream:
        """The bucket's `dump` (a tar stream on stdout) or `load` (one on stdin) as a Stream."""
        argv = sx.python_argv(BUCKET_CODE, op, self.bucket, env=self.s3_env)
        return Stream(sx.popen(*argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE))


def live_bucket() -> str:
    return Settings.load().env.get("MLFLOW_ARTIFACT_BUCKET", "")


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


def take(out: Path, target: Target) -> Path:
    """A backup of TARGET into OUT (a new mlflow-backup-* directory, returned)."""
    dump = target.bucket_stream("dump")
    try:
        with tarfile.open(fileobj=dump.stdout, mode="r|") as tar:
            made = fmt.make_backup(out, target.spawn(), tar_objects(tar), target.bucket)
    except (tarfile.TarError, BackupError) as exc:
        try:
            dump.finish(f"copying bucket {target.bucket}", kill=True)
        except BackupError as died:
            raise CommandError(f"backup failed: {died}") from None
        raise CommandError(f"backup failed: {exc}") from None
    try:
        dump.finish(f"copying bucket {target.bucket}")
    except BackupError as exc:
        raise CommandError(str(exc)) from None
    return made


def cmd_backup(args) -> int:
    if args.now:
        return backup_in_volume()
    take(Path(args.out), Target.from_args(args))
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
        tar = Stream(
            sx.popen(
                "exec",
                "-T",
                SERVICE,
                *("tar", "-C", "/backups", "-cf", "-", name),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
        )
        partial = dest / f".{name}.partial"
        partial.mkdir(mode=0o700, exist_ok=True)
        untar = subprocess.run(
            ["tar", "--no-same-owner", "-x", "-C", str(partial)],
            stdin=tar.stdout,
            capture_output=True,
            timeout=TOOL_TIMEOUT,
        )
        tar.finish(f"reading {name} from the volume")
        if untar.returncode:
            raise CommandError(f"unpacking {name} failed: {last_line(untar.stderr)}")
        (partial / name).rename(dest / name)
        partial.rmdir()
    return dest / name


def copy_bucket_in(target: Target, backup: Path, objects: dict) -> int:
    """Upload the backup's objects into the bucket: a tar stream into our image."""
    load = target.bucket_stream("load", stdin=subprocess.PIPE)
    out = []
    reader = threading.Thread(target=lambda: out.append(load.stdout.read()), daemon=True)
    reader.start()
    progress = fmt.Progress(f"restore: bucket {target.bucket}", len(objects))
    try:
        with tarfile.open(fileobj=load.stdin, mode="w|", format=tarfile.PAX_FORMAT) as tar:
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
        load.close_stdin()
    load.finish(f"uploading into bucket {target.bucket}")
    reader.join(60)
    progress.show(" (sent)")
    return int((out[0] if out else b"").strip() or 0)


def table_count(target: Target, db: str) -> int | None:
    """Tables outside the system schemas, or None when the database does not exist."""
    if not target.psql("SELECT 1 FROM pg_database WHERE datname = :'target'", target=db):
        return None
    query = "SELECT count(*) FROM pg_tables WHERE schemaname NOT IN ('pg_catalog', 'information_schema')"
    return int(target.psql(query, db=db)[0][0])


def create_database(target: Target, db: str, owner: str):
    if not target.psql("SELECT 1 FROM pg_roles WHERE rolname = :'owner'", owner=owner):
        raise CommandError(f"role {owner} does not exist: run the migrate step (`./mlflowctl up`) first")
    target.psql('CREATE DATABASE :"target" OWNER :"owner"', target=db, owner=owner)


def count_mismatches(target: Target, databases: dict, manifest: dict) -> list:
    """(database, table, in the backup, restored) for every count that differs from the manifest."""
    out = []
    for kind, db in databases.items():
        for name, query in fmt.COUNTS[kind].items():
            expected, got = manifest["databases"][kind]["counts"][name], int(target.psql(query, db=db)[0][0])
            log(f"  {db}.{name}: backup {expected}, restored {got}" + ("" if expected == got else "  MISMATCH"))
            if got != expected:
                out.append((db, name, expected, got))
    return out


def in_backup(databases: dict, manifest: dict) -> dict:
    """DATABASES (kind -> database) the backup has a dump of; the others are said and left as they are."""
    for kind in databases.keys() - manifest["databases"].keys():
        log(
            f"restore: the backup has no {kind} database (taken before it was backed up): {databases[kind]} left as it is"
        )
    return {kind: db for kind, db in databases.items() if kind in manifest["databases"]}


def restore_into(target: Target, backup: Path, manifest: dict, databases: dict, force: bool, owner: str):
    """pg_restore into DATABASES (kind -> database; see in_backup) and upload into the target's
    bucket; refuses databases holding tables or a bucket holding objects unless FORCE."""
    tables = {kind: table_count(target, db) for kind, db in databases.items()}  # every target checked first
    state = target.bucket_op("state")
    objects = None if state == "none" else int(state)
    busy = [f"database {databases[k]} has {n} tables" for k, n in tables.items() if n] + (
        [f"bucket {target.bucket} has objects"] if objects else []
    )
    if busy and not force:
        raise CommandError(f"refusing to overwrite: {'; '.join(busy)} (pass --force to replace them)")
    for kind, db in databases.items():
        if tables[kind] is None:
            create_database(target, db, owner)
        dump = manifest["databases"][kind]["file"]
        with step(f"restore: database {db} from {dump}"):
            fmt.restore_database(target.spawn(), backup / dump, db, clean=bool(tables[kind]))
    if objects is None:
        target.bucket_op("create")
    with step(f"restore: {manifest['bucket']['count']} objects into bucket {target.bucket}"):
        uploaded = copy_bucket_in(target, backup, manifest["bucket"]["objects"])
    if uploaded != manifest["bucket"]["count"]:
        raise CommandError(
            f"uploaded {uploaded} objects into {target.bucket}; the backup has {manifest['bucket']['count']}"
        )


def cmd_restore(args) -> int:
    target = Target.from_args(args)
    if bool(args.backup) == bool(args.from_volume):
        raise CommandError("name a backup: a directory, or --from-volume NAME|latest")
    backup = fetch_from_volume(args.from_volume, Path(args.dir)) if args.from_volume else Path(args.backup).resolve()
    with step(f"restore: checking the checksums of {backup}"):
        manifest = fmt.verify(backup)
    # Every kind of the format (a --KIND-db option each): a kind left out here would not be restored.
    databases = in_backup({kind: getattr(args, f"{kind}_db") for kind in fmt.DATABASES}, manifest)
    restore_into(target, backup, manifest, databases, args.force, args.owner)
    if count_mismatches(target, databases, manifest):  # the rows are back: same counts as when the dump was taken
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
    for kind, what in (("tracking", "tracking"), ("auth", "basic-auth"), ("oidc", "the OIDC plugin's")):
        p.add_argument(f"--{kind}-db", default=fmt.DATABASES[kind], help=f"{what} database (default %(default)s)")
    p.add_argument("--bucket", help="artifact bucket (default: MLFLOW_ARTIFACT_BUCKET from .env)")
    p.add_argument(
        "--s3-endpoint",
        help="S3 endpoint URL as seen from the mlflow container; empty string = AWS "
        "(default: the mlflow service's MLFLOW_S3_ENDPOINT_URL)",
    )


def register(sub):
    """Register `backup` and `restore` on mlflowctl's subparsers."""
    p = sub.add_parser(
        "backup", help="dump both databases and copy the artifact bucket (with a manifest)", description=__doc__
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
    p = sub.add_parser("restore", help="restore a backup into the databases and the bucket", description=__doc__)
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
