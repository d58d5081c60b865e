"""Restore drill: prove a backup restores, without touching the live databases or bucket.

  1. copy the backup (default: the newest successful one in the `backup` service's volume; or
     --from-volume NAME, or --dir PATH on this machine) into a private scratch directory under var/;
  2. check every file of it against the sha256 in its manifest;
  3. restore it into SCRATCH databases (mlflow_drill, mlflow_auth_drill) and a SCRATCH bucket
     (MLFLOW_ARTIFACT_BUCKET-drill), whatever an earlier drill left there being dropped first;
  4. compare: restored row counts == the manifest's; every restored object's sha256 == the
     manifest's; for objects still in the live bucket, live == backup (only read);
  5. drop the scratch databases, empty and remove the scratch bucket and the scratch copy, also
     when a step failed.

It prints each step with its timing and a report, and exits 1 on any mismatch. It runs where
`./mlflowctl restore` runs: pg_restore in the postgres container, the bucket through our image in
the mlflow container.
"""

import json
import shutil
import tempfile
import time
from pathlib import Path

from ctl import backup
from ctl.backup import Target, log, step
from ctl.errors import CommandError
from ctl.settings import ROOT
from jobs.backup import format as fmt

SCRATCH_DB_SUFFIX = "_drill"


def scratch_targets(live_bucket: str) -> dict:
    targets = {kind: db + SCRATCH_DB_SUFFIX for kind, db in fmt.DATABASES.items()}
    return {**targets, "bucket": f"{live_bucket}-drill"}


def drop_scratch(target: Target, scratch: dict, live_bucket: str):
    """Drop the scratch databases and remove the scratch bucket (never a live name)."""
    if set(scratch.values()) & {*fmt.DATABASES.values(), live_bucket}:
        raise CommandError(f"scratch targets {scratch} name a live database or bucket")
    for kind in fmt.DATABASES:
        target.psql('DROP DATABASE IF EXISTS :"target" WITH (FORCE)', target=scratch[kind])
    target.with_bucket(scratch["bucket"]).bucket_op("remove", timeout=900)


def sums(target: Target) -> dict:
    return json.loads(target.bucket_op("sums", timeout=900) or "{}")


def cmd_drill(args) -> int:
    started = time.monotonic()
    live_bucket = backup.live_bucket()
    scratch = scratch_targets(live_bucket)
    target = Target(bucket=scratch["bucket"])
    work = Path(tempfile.mkdtemp(prefix="drill-", dir=ROOT / "var"))  # 0700
    problems = []
    try:
        if args.dir:
            source = Path(args.dir).resolve()
            with step(f"drill: copying {source} into {work}"):
                shutil.copytree(source, work / source.name)
            copy = work / source.name
        else:
            copy = backup.fetch_from_volume(args.from_volume, work)
        with step(f"drill: reading the manifest of {copy.name}"):
            manifest = fmt.read_manifest(copy)
        log(
            f"drill: backup {copy.name} ({manifest['bucket']['count']} objects, "
            f"{manifest.get('size_bytes', 0) / 1e6:.1f} MB)"
        )
        with step("drill: checking every file of the backup against its manifest"):
            bad = fmt.mismatched_files(copy, manifest)
        problems += [f"file {p.relative_to(copy)} does not match its sha256 in the manifest" for p in bad]
        with step("drill: dropping what an earlier drill left"):
            drop_scratch(target, scratch, live_bucket)
        databases = backup.in_backup({kind: scratch[kind] for kind in fmt.DATABASES}, manifest)
        backup.restore_into(target, copy, manifest, databases, force=False, owner=args.owner)
        with step("drill: comparing row counts with the manifest"):
            problems += [
                f"{db}.{name}: {got} rows restored, {expected} in the backup"
                for db, name, expected, got in backup.count_mismatches(target, databases, manifest)
            ]
        with step(f"drill: checksums of the restored bucket {scratch['bucket']}"):
            restored = sums(target)
        expected = {k: o["sha256"] for k, o in manifest["bucket"]["objects"].items()}
        problems += [
            f"object {k}: restored sha256 differs from the manifest" for k in expected if restored.get(k) != expected[k]
        ]
        problems += [f"object {k}: in the restored bucket, not in the manifest" for k in set(restored) - set(expected)]
        with step(f"drill: checksums of the live bucket {live_bucket} (read only)"):
            live = sums(target.with_bucket(live_bucket))
        still = [k for k in expected if k in live]
        problems += [f"object {k}: live sha256 differs from the backup" for k in still if live[k] != expected[k]]
        log(
            f"drill: {len(expected)} objects in the backup, {len(still)} still in the live bucket, "
            f"{len(expected) - len(still)} deleted since"
        )
    finally:
        with step("drill: dropping the scratch databases and bucket, removing the scratch copy"):
            try:
                drop_scratch(target, scratch, live_bucket)
            finally:
                shutil.rmtree(work, ignore_errors=True)
    took = time.monotonic() - started
    if problems:
        for problem in problems:
            print(f"  MISMATCH {problem}")
        raise CommandError(f"restore drill FAILED: {len(problems)} mismatch(es) (listed above), in {took:.0f}s")
    print(f"restore drill PASSED: {copy.name}: row counts and {len(expected)} object checksums match, in {took:.0f}s")
    return 0


def register(sub):
    """Register `restore-drill` on mlflowctl's subparsers."""
    p = sub.add_parser(
        "restore-drill",
        help="restore a backup into scratch databases and a scratch bucket and compare counts and checksums",
        description=__doc__,
    )
    p.add_argument(
        "--from-volume",
        default="latest",
        metavar="NAME",
        help="a backup in the `backup` service's volume (default: %(default)s, the newest successful one)",
    )
    p.add_argument("--dir", help="instead: a backup directory on this machine (it is copied; never changed)")
    p.add_argument("--owner", default="mlflow", help="owner of the scratch databases (default %(default)s)")
    p.set_defaults(func=cmd_drill)
