"""The `backup` service (scripts/jobs/backup/service.py) and `./mlflowctl restore-drill`, on the real stack.

- On schedule: the service, recreated with a 20 s interval and BACKUP_KEEP=2, takes backups by
  itself (no trigger); retention keeps exactly 2; its /metrics, scraped from the mlflow container
  over the backend network, reports them. The normal settings are put back afterwards.
- A failed backup: the fault is the backup role losing its login (`ALTER ROLE ... NOLOGIN`, as
  after a botched password rotation), undone afterwards. `backup --now` fails, the metrics say
  last_run_success 0 and keep the previous success's timestamp.
- The drill restores the newest backup (experiments, runs with metrics, an artifact) into scratch
  databases and a scratch bucket and passes; on a copy of the backup with one artifact corrupted it
  fails and names the object. Either way the scratch targets are gone afterwards.

Nothing here is a double: real PostgreSQL, MLflow, the S3 stand-in, and the backup image.
"""

import json
import subprocess
import time

import pytest

from ctl import backup as ctl_backup
from ctl import engine
from ctl import stackexec as sx
from tests.conftest import ROOT, poll

LAST_SUCCESS = "mlflow_backup_last_success_timestamp_seconds"
SCRAPE = (
    "import urllib.request; print(urllib.request.urlopen('http://backup:9188/metrics', timeout=10).read().decode())"
)


def mlflowctl(*args, timeout=600):
    return subprocess.run([str(ROOT / "mlflowctl"), *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT)


def scrape() -> dict:
    """The service's gauges, fetched by our image in the mlflow container (backend network)."""
    text = sx.python(SCRAPE, timeout=60).stdout
    return {line.split()[0]: float(line.split()[1]) for line in text.splitlines() if line and not line.startswith("#")}


def at_least(n: int, items: list):
    return items if len(items) >= n else None


def successes() -> list:
    return [b for b in ctl_backup.volume_backups() if b["success"]]


def restart_backup_service(eng, **env):
    """Recreate the backup service with ENV overriding .env (Compose prefers the environment)."""
    proc = engine.up(engine.Engine(eng.kind, {**eng.env, **env}), "backup", timeout_s=300, capture=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_backup_service_contract(compose_services, compose):
    svc = compose_services["backup"]
    assert set(svc["networks"]) == {"backend"} and not svc.get("ports")
    assert svc["restart"] == "unless-stopped" and svc["healthcheck"]["test"]
    assert compose("exec", "-T", "backup", "id", "-u").stdout.strip() not in ("", "0")
    # The volume's backups are private to the service's user.
    listing = compose("exec", "-T", "backup", "stat", "-c", "%a %U", "/backups").stdout.split()
    assert listing[0] == "700" and listing[1] != "root"


def test_backups_on_schedule_with_retention(stack, eng):
    started = time.time()
    try:
        restart_backup_service(eng, BACKUP_INTERVAL_SECONDS="20", BACKUP_KEEP="2")
        assert poll(
            "the new interval in /metrics", lambda: scrape().get("mlflow_backup_interval_seconds") == 20, 120, every_s=2
        )
        # Two backups the service took by itself, after the restart, one interval apart.
        fresh = poll(
            "two scheduled backups",
            lambda: at_least(2, [b for b in successes() if b["started"] >= started]),
            180,
            every_s=3,
        )
        assert fresh[1]["started"] - fresh[0]["started"] >= 19
        # Retention: exactly BACKUP_KEEP successful backups, the newest ones.
        kept = poll("retention down to 2", lambda: successes() if len(successes()) == 2 else None, 60, every_s=2)
        assert kept[-1]["name"] == successes()[-1]["name"] and kept[-1]["started"] >= fresh[1]["started"]
        gauges = scrape()
        assert gauges["mlflow_backup_kept"] == 2 and gauges["mlflow_backup_last_run_success"] == 1
        assert gauges[LAST_SUCCESS] >= fresh[1]["finished"] - 1
        assert gauges["mlflow_backup_last_size_bytes"] > 0 and gauges["mlflow_backup_last_duration_seconds"] > 0
    finally:
        restart_backup_service(eng)
    # A restart keeps what happened: the timestamp is read back from the volume's manifests.
    assert scrape()[LAST_SUCCESS] >= fresh[1]["finished"] - 1


def test_failed_backup_sets_last_run_success_0(stack):
    if not successes():
        assert mlflowctl("backup", "--now").returncode == 0
    before = poll(
        "a success in /metrics", lambda: (lambda g: g if g[LAST_SUCCESS] > 0 else None)(scrape()), 60, every_s=2
    )
    sx.psql("ALTER ROLE mlflow_backup NOLOGIN")
    try:
        failed = mlflowctl("backup", "--now")
        assert failed.returncode == 1 and "failed" in failed.stderr, failed.stdout + failed.stderr
        gauges = scrape()
        assert gauges["mlflow_backup_last_run_success"] == 0
        assert gauges[LAST_SUCCESS] == before[LAST_SUCCESS]
        listed = mlflowctl("backup", "--list")
        assert "FAILED" in listed.stdout.splitlines()[-1] and "mlflow_backup" in listed.stdout.splitlines()[-1]
    finally:
        sx.psql("ALTER ROLE mlflow_backup LOGIN")
    again = mlflowctl("backup", "--now")
    assert again.returncode == 0, again.stdout + again.stderr
    gauges = scrape()
    assert gauges["mlflow_backup_last_run_success"] == 1
    assert gauges[LAST_SUCCESS] > before[LAST_SUCCESS]


def scratch_gone(bucket: str) -> bool:
    """No scratch database, and no scratch bucket (`sums` answers {} for a missing bucket)."""
    dbs = sx.psql("SELECT datname FROM pg_database WHERE datname LIKE '%\\_drill'")
    return not dbs and ctl_backup.Target(bucket=f"{bucket}-drill").bucket_op("sums") == "{}"


@pytest.fixture
def seeded(mlflow_admin, unique, tmp_path):
    import mlflow

    exp_id = mlflow_admin.create_experiment(f"drill/{unique}")
    artifact = tmp_path / "weights.bin"
    artifact.write_bytes(unique.encode() * 1000)
    with mlflow.start_run(experiment_id=exp_id) as run:
        mlflow.log_metrics({"loss": 0.5, "acc": 0.9}, step=1)
        mlflow.log_param("lr", "0.01")
        mlflow.log_artifact(str(artifact))
    return run.info.run_id


def test_restore_drill(stack, stack_env, seeded, tmp_path):
    made = mlflowctl("backup", "--now")
    assert made.returncode == 0, made.stdout + made.stderr
    live_experiments = sx.psql("SELECT count(*) FROM experiments", "mlflow")

    drill = mlflowctl("restore-drill")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    assert "restore drill PASSED" in drill.stdout and "done in" in drill.stdout
    assert scratch_gone(stack_env["MLFLOW_ARTIFACT_BUCKET"])
    assert sx.psql("SELECT count(*) FROM experiments", "mlflow") == live_experiments

    # A copy of that backup with our artifact corrupted: the drill fails and names it.
    copy = ctl_backup.fetch_from_volume("latest", tmp_path / "copy")
    manifest = json.loads((copy / "manifest.json").read_text())
    assert manifest["success"] is True
    key = next(k for k in manifest["bucket"]["objects"] if k.endswith(f"{seeded}/artifacts/weights.bin"))
    target = copy / "artifacts" / key
    target.write_bytes(b"corrupted" + target.read_bytes()[9:])
    bad = mlflowctl("restore-drill", "--dir", str(copy))
    assert bad.returncode == 1 and "restore drill FAILED" in bad.stderr, bad.stdout + bad.stderr
    assert f"object {key}: restored sha256 differs" in bad.stdout
    assert f"file artifacts/{key} does not match" in bad.stdout
    assert scratch_gone(stack_env["MLFLOW_ARTIFACT_BUCKET"])
