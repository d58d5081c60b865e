"""`./mlflowctl upgrade` from the previous MLflow minor release to ours, on a real old-schema database.

A SEPARATE compose project (its own name, ports on 127.0.0.1 and volumes; the suite's stack keeps
running) is started on an image of MLflow OLD_VERSION, built from docker/Dockerfile with the
MLFLOW_VERSION build argument (the store plugin's replaced methods are identical in both releases,
so it is installed on the old image too). On the old server the test creates experiments, runs,
metric histories, params, tags, artifacts (one binary), registered models with versions and
aliases, a user with READ on one experiment and nothing on another. Then the real `./mlflowctl
upgrade --image OURS` runs as a subprocess with that project's environment.

1. test_failed_migration_keeps_old_server: the fault is a tracking-DB table the migration alters
   (`trace_info`) owned by another role, the `mlflow` role keeping its read/write grants (as after a
   DBA's manual fix or a restore made as `postgres`): `ALTER TABLE` needs ownership, which the app
   role has lost, so `mlflow db upgrade` fails on its first revision. The old server must serve
   through Nginx during and after, the data must be unchanged, the command must exit non-zero and
   print the restore command with its backup and the previous image. With ownership given back, a
   re-run must succeed.
2. test_upgrade_from_previous_minor: after the upgrade everything reads back identically (mlflow
   client and raw HTTP), artifacts byte for byte, permissions enforced, both schemas at our heads.

Nothing here is a double: real PostgreSQL, PgBouncer, Nginx, MLflow, S3 stand-in in the engine.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import threading
import time

import pytest
import requests

from ctl import engine
from ctl import stackexec as sx
from jobs.backup.tools import psql_argv
from tests.conftest import ROOT, free_port

OLD_VERSION = "3.16.1"  # latest patch of the minor before ours (3.17.2)
OLD_TAG = f"localhost/mlflow-bundle/mlflow:upgrade-test-{OLD_VERSION}"
PROJECT = f"{engine.PROJECT}-upgrade-test"
FAULT_TABLE = "trace_info"  # altered by the first 3.17 revision (75868b020152)
START_CODE = (
    "import sys; from ctl import engine; e = engine.ensure(); engine.start_ticker(e); "
    "sys.exit(engine.up(e, timeout_s=600).returncode)"
)


def alembic_head(package_dir: str) -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory(package_dir).get_current_head()


class Project:
    """The extra compose project: its environment, psql, mlflowctl, and its clients."""

    def __init__(self, eng, stack_env: dict):
        self.port = free_port()
        self.overrides = {"COMPOSE_PROJECT_NAME": PROJECT, "HTTPS_PORT": str(self.port), "HTTP_PORT": str(free_port())}
        # mlflowctl picks its engine itself (a DOCKER_HOST would mean "Docker"); Compose needs the engine's.
        self.cli_env = {
            **{k: v for k, v in os.environ.items() if k not in ("DOCKER_HOST", "MLFLOW_IMAGE")},
            **self.overrides,
        }
        self.compose_env = {**eng.env, **self.overrides}
        self.url = f"https://{stack_env['MLFLOW_PUBLIC_HOST']}:{self.port}"
        self.admin = (stack_env["MLFLOW_ADMIN_USERNAME"], stack_env["MLFLOW_ADMIN_PASSWORD"])

    def compose(self, *args, input=None, timeout=300, env=None):
        return subprocess.run(
            engine.compose_args() + list(args),
            input=input,
            env={**self.compose_env, **(env or {})},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def psql(self, sql: str, db: str = "mlflow") -> list:
        proc = self.compose(*sx.pg_argv(psql_argv(db)), input=sql)
        assert proc.returncode == 0, proc.stderr
        return [line.split("\t") for line in proc.stdout.splitlines() if line]

    def start(self, image: str):
        proc = subprocess.run(
            [sys.executable, "-c", START_CODE],
            env={**self.cli_env, "MLFLOW_IMAGE": image},
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=900,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    def down(self):
        self.compose(
            "--profile",
            "benchmark",
            "down",
            "--volumes",
            "--remove-orphans",
            timeout=600,
            env={"MLFLOW_IMAGE": OLD_TAG},
        )
        engine.stop_daemon(engine.VAR / "run" / f"healthcheck-ticker-{PROJECT}.pid")

    def upgrade(self, image: str) -> subprocess.CompletedProcess:
        started = time.monotonic()
        proc = subprocess.run(
            [str(ROOT / "mlflowctl"), "upgrade", "--image", image, "--deadline", "300"],
            env=self.cli_env,
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=1200,
        )
        print(
            f"mlflowctl upgrade exited {proc.returncode} after {time.monotonic() - started:.0f}s\n"
            f"{proc.stdout}\n{proc.stderr}"
        )
        return proc


@pytest.fixture(scope="module")
def old_image(eng):
    python_image = engine.read_images_env().get("PYTHON_IMAGE") or engine.image_variables()["PYTHON_IMAGE"]
    digest = engine.inputs_hash(engine.IMAGE_INPUTS, extra=python_image + OLD_VERSION)
    if eng.label(OLD_TAG, engine.INPUTS_LABEL) != digest:  # built once, reused until its inputs change
        eng.build(
            OLD_TAG,
            ROOT,
            ROOT / "docker" / "Dockerfile",
            {"PYTHON_IMAGE": python_image, "MLFLOW_VERSION": OLD_VERSION},
            {engine.INPUTS_LABEL: digest},
            pypi=True,
            inputs=engine.IMAGE_INPUTS,
        )
    return OLD_TAG


@pytest.fixture(scope="module")
def project(stack, eng, stack_env, old_image):
    proj = Project(eng, stack_env)
    proj.down()  # what an interrupted earlier run left
    try:
        proj.start(old_image)
        yield proj
    finally:
        proj.down()


@pytest.fixture(scope="module")
def client(project, ca_bundle):
    import mlflow

    with pytest.MonkeyPatch.context() as mp:
        for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            mp.delenv(var, raising=False)  # requests lets these override the cert path
        mp.setenv("MLFLOW_TRACKING_USERNAME", project.admin[0])
        mp.setenv("MLFLOW_TRACKING_PASSWORD", project.admin[1])
        mp.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", ca_bundle)
        yield mlflow.MlflowClient(tracking_uri=project.url, registry_uri=project.url)


def api(http, project, method, path, auth=None, version=2, **kw) -> requests.Response:
    return http.request(
        method, f"{project.url}/api/{version}.0/mlflow/{path}", auth=auth or project.admin, timeout=60, **kw
    )


@pytest.fixture(scope="module")
def seeded(project, client, http):
    """Everything the issue lists, created on the OLD server; returns names, ids and artifact bytes."""
    from mlflow.entities import Metric, Param, RunTag

    tag = str(time.time_ns())
    shared, private = f"upgrade-shared-{tag}", f"upgrade-private-{tag}"
    exp_ids = {
        name: client.create_experiment(name, tags={"team": name.split("-")[1], "note": "ü ✓"})
        for name in (shared, private)
    }
    files = {
        "notes/readme.txt": b"old server\n",
        "weights.bin": os.urandom(300_000),
        "model/MLmodel": b"artifact_path: model\nflavors: {}\n",
    }
    runs = {}
    for i, name in enumerate((shared, shared, private)):
        run = client.create_run(exp_ids[name], run_name=f"run-{i}", tags={"stage": f"s{i}"})
        run_id = run.info.run_id
        metrics = [
            Metric(key, float(step * (k + 1)) + 0.25, 1_700_000_000_000 + step * 1000, step)
            for k, key in enumerate(("loss", "acc"))
            for step in range(5)
        ]
        metrics.append(Metric("nan_metric", float("nan"), 1_700_000_000_000, 0))
        client.log_batch(
            run_id,
            metrics=metrics,
            params=[Param("lr", f"0.0{i + 1}"), Param("layers", str(i + 2))],
            tags=[RunTag("owner", "upgrade-test")],
        )
        for path, data in files.items():
            local = ROOT / "var" / "upgrade-test" / run_id / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(data)
            client.log_artifact(run_id, str(local), artifact_path=os.path.dirname(path) or None)
        client.set_terminated(run_id, "FINISHED" if i else "FAILED")
        runs[run_id] = name
    model = f"upgrade-model-{tag}"
    client.create_registered_model(model, tags={"domain": "test"}, description="made on the old server")
    run_ids = list(runs)
    for version, run_id in enumerate(run_ids[:2], start=1):
        client.create_model_version(
            model, f"runs:/{run_id}/model", run_id=run_id, tags={"v": str(version)}, description=f"version {version}"
        )
    client.set_registered_model_alias(model, "champion", "2")
    client.set_registered_model_alias(model, "challenger", "1")
    reader = (f"reader-{tag}", os.urandom(12).hex())
    assert api(http, project, "POST", "users/create", json={"username": reader[0], "password": reader[1]}).ok
    granted = api(
        http,
        project,
        "POST",
        "users/permissions/grant",
        version=3,
        json={
            "username": reader[0],
            "resource_type": "experiment",
            "resource_id": exp_ids[shared],
            "permission": "READ",
        },
    )
    assert granted.ok, granted.text
    data = {
        "exp_ids": exp_ids,
        "shared": shared,
        "private": private,
        "runs": runs,
        "model": model,
        "files": files,
        "reader": reader,
    }
    check_permissions(project, http, data)  # enforced on the old server: the same checks after the upgrade
    data["before"] = snapshot(project, client, http, data)
    data["revision_before"] = project.psql("SELECT version_num FROM alembic_version")
    return data


def snapshot(project, client, http, data) -> dict:
    """Everything readable through the API: mlflow client objects and raw HTTP answers."""
    out = {"experiments": {}, "runs": {}, "raw_runs": {}}
    for name, exp_id in data["exp_ids"].items():
        exp = client.get_experiment(exp_id)
        out["experiments"][name] = (exp.name, exp.tags, exp.lifecycle_stage, exp.artifact_location)
    for run_id in data["runs"]:
        run = client.get_run(run_id)
        out["runs"][run_id] = {
            "info": (
                run.info.run_name,
                run.info.status,
                run.info.start_time,
                run.info.end_time,
                run.info.lifecycle_stage,
                run.info.artifact_uri,
                run.info.experiment_id,
            ),
            "params": run.data.params,
            "tags": run.data.tags,
            "history": {
                key: [(m.step, m.timestamp, repr(m.value)) for m in client.get_metric_history(run_id, key)]
                for key in run.data.metrics
            },
            "artifacts": sorted(
                (f.path, f.is_dir, f.file_size)
                for d in ("", "notes", "model")
                for f in client.list_artifacts(run_id, d or None)
            ),
        }
        out["raw_runs"][run_id] = api(http, project, "GET", "runs/get", params={"run_id": run_id}).json()["run"]
    model = client.get_registered_model(data["model"])
    out["model"] = (model.name, model.description, model.tags, model.aliases)
    out["versions"] = sorted(
        (v.version, v.source, v.run_id, v.status, v.tags, v.description, v.aliases)
        for v in client.search_model_versions(f"name='{data['model']}'")
    )
    out["aliases"] = {
        alias: client.get_model_version_by_alias(data["model"], alias).version for alias in ("champion", "challenger")
    }
    out["raw_model"] = api(http, project, "GET", "registered-models/get", params={"name": data["model"]}).json()
    out["reader"] = api(http, project, "GET", "users/get", params={"username": data["reader"][0]}).json()
    out["grants"] = {
        name: api(
            http,
            project,
            "GET",
            "users/permissions/get",
            version=3,
            params={"username": data["reader"][0], "resource_type": "experiment", "resource_id": exp_id},
        ).json()
        for name, exp_id in data["exp_ids"].items()
    }
    return out


def subset_equal(before, after) -> bool:
    """Every field the old server returned comes back unchanged (a newer server may add fields)."""
    if isinstance(before, dict):
        return isinstance(after, dict) and all(k in after and subset_equal(v, after[k]) for k, v in before.items())
    if isinstance(before, list):
        return isinstance(after, list) and len(before) == len(after) and all(map(subset_equal, before, after))
    return before == after


def check_permissions(project, http, data):
    reader = data["reader"]
    shared, private = data["exp_ids"][data["shared"]], data["exp_ids"][data["private"]]
    shared_run = next(r for r, name in data["runs"].items() if name == data["shared"])
    assert api(http, project, "GET", "experiments/get", reader, params={"experiment_id": shared}).status_code == 200
    found = api(http, project, "POST", "runs/search", reader, json={"experiment_ids": [shared]})
    assert found.status_code == 200
    assert sorted(r["info"]["run_id"] for r in found.json()["runs"]) == sorted(
        r for r, name in data["runs"].items() if name == data["shared"]
    )
    got = http.get(
        f"{project.url}/get-artifact", params={"path": "weights.bin", "run_uuid": shared_run}, auth=reader, timeout=60
    )
    assert got.status_code == 200 and got.content == data["files"]["weights.bin"]
    write = api(
        http,
        project,
        "POST",
        "runs/log-metric",
        reader,
        json={"run_id": shared_run, "key": "x", "value": 1, "timestamp": 1, "step": 0},
    )
    assert write.status_code == 403, write.text
    assert api(http, project, "GET", "experiments/get", reader, params={"experiment_id": private}).status_code == 403


class Poller(threading.Thread):
    """Requests through Nginx every 0.5 s while the upgrade runs: /health and an authenticated read."""

    def __init__(self, project, http, exp_id):
        super().__init__(daemon=True)
        self.project, self.http, self.exp_id = project, http, exp_id
        self.results, self.stop = [], threading.Event()

    def run(self):
        deadline = time.monotonic() + 1200
        while not self.stop.is_set() and time.monotonic() < deadline:
            for path, kw in (
                ("/health", {}),
                (
                    "/api/2.0/mlflow/experiments/get",
                    {"params": {"experiment_id": self.exp_id}, "auth": self.project.admin},
                ),
            ):
                try:
                    self.results.append(self.http.get(self.project.url + path, timeout=10, **kw).status_code)
                except requests.RequestException as exc:
                    self.results.append(repr(exc))
            self.stop.wait(0.5)


@pytest.fixture(scope="module")
def upgraded(project, seeded):
    """The successful upgrade's process, made once (by the first test that needs it)."""
    state = {}

    def run(new_image):
        if "proc" not in state:
            state["proc"] = project.upgrade(new_image)
        return state["proc"]

    return run


def test_failed_migration_keeps_old_server(project, seeded, upgraded, client, http, stack_env):
    new_image = stack_env["MLFLOW_IMAGE"]
    project.psql(f"ALTER TABLE {FAULT_TABLE} OWNER TO postgres; GRANT ALL ON {FAULT_TABLE} TO mlflow")
    poller = Poller(project, http, seeded["exp_ids"][seeded["shared"]])
    poller.start()
    try:
        proc = project.upgrade(new_image)
    finally:
        poller.stop.set()
        poller.join(30)
    assert proc.returncode != 0
    assert (
        "FAILED at step migrate" in proc.stderr and f"must be owner of table {FAULT_TABLE}" in proc.stdout + proc.stderr
    )
    restore = re.search(r"\./mlflowctl restore (\S+) --force", proc.stderr)
    assert restore and (ROOT / restore.group(1) / "manifest.json").is_file(), proc.stderr
    assert f"./mlflowctl upgrade --image {OLD_TAG}" in proc.stderr
    # The old server answered every request, during the attempt and after it.
    assert len(poller.results) >= 6 and set(poller.results) == {200}, poller.results
    assert (
        api(
            http, project, "GET", "experiments/get", params={"experiment_id": seeded["exp_ids"][seeded["shared"]]}
        ).status_code
        == 200
    )
    assert project.psql("SELECT version_num FROM alembic_version") == seeded["revision_before"]
    assert snapshot(project, client, http, seeded) == seeded["before"]
    assert json.loads((engine.VAR / f"upgrade-{PROJECT}.json").read_text())["state"] == "failed at migrate"

    project.psql(f"ALTER TABLE {FAULT_TABLE} OWNER TO mlflow")
    assert upgraded(new_image).returncode == 0


def test_upgrade_from_previous_minor(project, seeded, upgraded, client, http, stack_env):
    import mlflow
    from packaging.version import Version

    ours, old = Version(mlflow.__version__), Version(OLD_VERSION)
    assert (old.major, old.minor + 1) == (ours.major, ours.minor), "OLD_VERSION must be the previous minor's latest"

    proc = upgraded(stack_env["MLFLOW_IMAGE"])
    assert proc.returncode == 0, proc.stderr
    for number, name in enumerate(("image", "backup", "migrate", "one-shots", "roll", "verify", "record"), start=1):
        assert re.search(rf"\[{number}/7\] {name}: done in [\d.]+s", proc.stdout), name
    backup_dir = re.search(r"backup taken before: (\S+)", proc.stdout).group(1)
    assert (ROOT / backup_dir / "manifest.json").is_file()
    assert http.get(f"{project.url}/version", auth=project.admin, timeout=30).text.strip() == str(ours)

    after, before = snapshot(project, client, http, seeded), dict(seeded["before"])
    assert after["raw_runs"].keys() == before["raw_runs"].keys()
    assert subset_equal(before.pop("raw_runs"), after.pop("raw_runs"))
    assert subset_equal(before.pop("raw_model"), after.pop("raw_model"))
    assert subset_equal(before.pop("reader"), after.pop("reader"))
    assert subset_equal(before.pop("grants"), after.pop("grants"))
    assert after == before
    for run_id in seeded["runs"]:
        target = ROOT / "var" / "upgrade-test" / "download" / run_id
        for path, data in seeded["files"].items():
            local = client.download_artifacts(run_id, path, str(target))
            assert hashlib.sha256(open(local, "rb").read()).hexdigest() == hashlib.sha256(data).hexdigest(), path
    check_permissions(project, http, seeded)

    import mlflow.server.auth.db as auth_db
    import mlflow.store.db_migrations as tracking_db

    assert project.psql("SELECT version_num FROM alembic_version") == [[alembic_head(tracking_db.__path__[0])]]
    assert project.psql("SELECT version_num FROM alembic_version_auth", db="mlflow_auth") == [
        [alembic_head(os.path.join(auth_db.__path__[0], "migrations"))]
    ]
    assert seeded["revision_before"] != [[alembic_head(tracking_db.__path__[0])]]

    again = project.upgrade(stack_env["MLFLOW_IMAGE"])  # idempotent: nothing to back up, migrate or roll
    assert again.returncode == 0 and "already runs this image" in again.stdout, again.stderr
