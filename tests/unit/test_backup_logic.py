"""The pure logic of backups, restores and the CLI, without a stack: key safety, retention,
manifest verification, the process stream, the service's gauges, `needs_stack` and
`rollback_advice`. The real backup and restore run in tests/stack/test_backup.py and
test_scheduled_backup.py."""

import hashlib
import json
import subprocess
from pathlib import Path

import pytest

from ctl.stack import needs_stack
from ctl.upgrade import rollback_advice
from jobs.backup import format as fmt
from jobs.backup import service
from jobs.backup.tools import BackupError, Stream, copy_digest, sha256


@pytest.mark.parametrize("key", ["/etc/passwd", "../outside", "a/../../outside", "a/../../../b"])
def test_safe_path_refuses_keys_outside_the_base(tmp_path, key):
    with pytest.raises(BackupError, match="would land outside"):
        fmt.safe_path(tmp_path / "artifacts", key)


def test_safe_path_refuses_a_symlink_out(tmp_path):
    (tmp_path / "artifacts").mkdir()
    (tmp_path / "artifacts" / "link").symlink_to(tmp_path)
    with pytest.raises(BackupError):
        fmt.safe_path(tmp_path / "artifacts", "link/escaped")


def test_safe_path_keeps_nested_keys_inside(tmp_path):
    base = tmp_path / "artifacts"
    assert fmt.safe_path(base, "1/abc/artifacts/model/MLmodel") == (base / "1/abc/artifacts/model/MLmodel").resolve()


def attempt(root: Path, name: str, started: float, success: bool) -> Path:
    path = root / f"{fmt.PREFIX}{name}" if success else root / f"{fmt.PREFIX}{name}.failed"
    path.mkdir()
    (path / "manifest.json").write_text(json.dumps({"started": started, "success": success}))
    return path


def test_retention_keeps_the_newest_successes_and_only_a_latest_failure(tmp_path):
    ok = [attempt(tmp_path, f"2026010{i}T000000Z", i, True) for i in range(1, 5)]
    old_failure = attempt(tmp_path, "20260101T120000Z", 1.5, False)
    new_failure = attempt(tmp_path, "20260109T000000Z", 9, False)
    (tmp_path / f"{fmt.PREFIX}20260110T000000Z.partial").mkdir()  # in progress: never touched
    service.prune(tmp_path, keep=2)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([ok[2].name, ok[3].name, new_failure.name, f"{fmt.PREFIX}20260110T000000Z.partial"])
    assert not old_failure.exists()


def test_retention_drops_a_failure_older_than_the_newest_success(tmp_path):
    failure = attempt(tmp_path, "20260101T000000Z", 1, False)
    success = attempt(tmp_path, "20260102T000000Z", 2, True)
    assert service.doomed(service.attempts(tmp_path), keep=1) == [failure]
    assert service.doomed([(success, {"started": 2, "success": True})], keep=0) == []  # the newest always stays


def backup_dir(tmp_path: Path) -> Path:
    """A backup directory with one dump and one artifact, and a manifest that describes them."""
    root = tmp_path / "mlflow-backup-20260101T000000Z"
    (root / "artifacts" / "1" / "run").mkdir(parents=True)
    (root / "tracking.dump").write_bytes(b"dump")
    (root / "artifacts" / "1" / "run" / "model.pkl").write_bytes(b"model")
    manifest = {
        "databases": {"tracking": {"file": "tracking.dump", "sha256": hashlib.sha256(b"dump").hexdigest()}},
        "bucket": {"objects": {"1/run/model.pkl": {"sha256": hashlib.sha256(b"model").hexdigest()}}},
    }
    (root / "manifest.json").write_text(json.dumps(manifest))
    return root


def test_verify_accepts_an_intact_backup(tmp_path):
    root = backup_dir(tmp_path)
    assert fmt.verify(root)["bucket"]["objects"]


@pytest.mark.parametrize("damage", ["changed", "missing"])
def test_verify_refuses_a_damaged_file(tmp_path, damage):
    root = backup_dir(tmp_path)
    artifact = root / "artifacts" / "1" / "run" / "model.pkl"
    artifact.write_bytes(b"modeL") if damage == "changed" else artifact.unlink()
    assert fmt.mismatched_files(root, fmt.read_manifest(root)) == [artifact.resolve()]
    with pytest.raises(BackupError, match="model.pkl is missing or does not match its checksum"):
        fmt.verify(root)


def test_verify_refuses_a_directory_without_manifest(tmp_path):
    with pytest.raises(BackupError, match="is not a backup made by `mlflowctl backup`"):
        fmt.verify(tmp_path)


def test_one_sha256_for_files_and_streams(tmp_path):
    data = b"x" * (3 << 20)
    (tmp_path / "f").write_bytes(data)
    with open(tmp_path / "f", "rb") as src, open(tmp_path / "copy", "wb") as dst:
        assert copy_digest(src, dst) == sha256(tmp_path / "f") == hashlib.sha256(data).hexdigest()
    assert (tmp_path / "copy").read_bytes() == data


def test_stream_reports_the_last_stderr_line_of_a_failed_process():
    argv = ["sh", "-c", "echo first >&2; echo 'the real reason' >&2; exit 3"]
    stream = Stream(subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE), timeout=30)
    stream.close_stdin()
    with pytest.raises(BackupError, match="^pg_dump of x failed: the real reason$"):
        stream.finish("pg_dump of x")


def test_stream_kills_a_process_past_its_timeout():
    stream = Stream(subprocess.Popen(["sleep", "60"], stderr=subprocess.PIPE), timeout=0.5)
    with pytest.raises(BackupError, match="sleep failed"):
        stream.finish("sleep", wait=20)


def test_metrics_read_the_volume(tmp_path):
    attempt(tmp_path, "20260101T000000Z", 1, True)
    attempt(tmp_path, "20260102T000000Z", 2, False)
    env = {"BACKUP_DIR": str(tmp_path), "MLFLOW_ARTIFACT_BUCKET": "b", "PGPASSWORD": "p", "BACKUP_KEEP": "3"}
    cfg = service.Config(env)
    text = service.metrics(cfg, service.Lock(cfg.root))
    values = dict(line.split() for line in text.splitlines() if not line.startswith("#"))
    assert values["mlflow_backup_kept"] == "1" and values["mlflow_backup_keep"] == "3"
    assert values["mlflow_backup_last_run_success"] == "0" and values["mlflow_backup_in_progress"] == "0"
    assert len(values) == len(service.GAUGES)


@pytest.mark.parametrize(
    "args, expected",
    [
        ([], True),
        (["-m", "unit"], False),
        (["-m", "unit or infra"], False),
        (["-m", "stack"], True),
        (["-m", "not unit"], True),
        (["tests/infra"], False),
        (["tests/unit/test_docs.py", "-q"], False),
        (["tests/stack/test_backup.py"], True),
        (["tests"], True),
        (["-k", "backup"], True),
    ],
)
def test_needs_stack(args, expected):
    assert needs_stack(args) is expected


RECORD = {"previous_image": "mlflow:old", "image": "mlflow:new", "backup": "/var/backups/mlflow-backup-X"}


def test_rollback_advice_without_a_backup_says_nothing_changed():
    advice = rollback_advice({**RECORD, "backup": None}, "backup")
    assert advice.startswith("Nothing was changed: the stack still runs mlflow:old")


@pytest.mark.parametrize("step, serving", [("migrate", True), ("one-shots", True), ("roll", False), ("verify", False)])
def test_rollback_advice_names_the_restore_and_the_previous_image(step, serving):
    advice = rollback_advice(RECORD, step)
    assert "  ./mlflowctl restore /var/backups/mlflow-backup-X --force" in advice
    assert "  ./mlflowctl upgrade --image mlflow:old" in advice
    assert ("previous server (mlflow:old) is still serving" in advice) is serving
    assert ("migrated for mlflow:new" in advice) is not serving


def test_a_backup_from_before_the_oidc_dump_restores_what_it_has(capsys):
    from ctl.backup import in_backup

    targets = {"tracking": "t", "auth": "a", "oidc": "o"}
    old = {"databases": {"tracking": {}, "auth": {}}}
    assert in_backup(targets, old) == {"tracking": "t", "auth": "a"}
    assert "the backup has no oidc database" in capsys.readouterr().out
    assert in_backup(targets, {"databases": dict.fromkeys(fmt.DATABASES, {})}) == targets
