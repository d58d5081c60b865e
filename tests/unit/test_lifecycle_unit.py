"""Day-2 operations without the stack: CLI surface, teams file rules, metric batching, workflows."""

import inspect
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from ctl.errors import CommandError
from ctl.lifecycle.registration import team_for_model
from ctl.lifecycle.teams import load_teams
from ctl.lifecycle.validate import parse_thresholds

ROOT = Path(__file__).resolve().parents[2]
# The bundle's own CI, and the model-repository templates (examples/: they never run here).
WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.yml")) + sorted(
    (ROOT / "examples" / "workflows").glob("*.yml")
)


@pytest.mark.parametrize("command", ["teams", "register", "promote", "validate", "cleanup"])
def test_subcommand_help(command):
    out = subprocess.run(
        [sys.executable, "-m", "ctl", command, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"usage: mlflowctl {command}" in out.stdout


def test_missing_tracking_uri_is_one_line_error(monkeypatch):
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("MLFLOW_")}
    out = subprocess.run(
        [sys.executable, "-m", "ctl", "promote", "m", "--repair"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert (
        out.stderr.strip().splitlines()[-1]
        == "mlflowctl promote: MLFLOW_TRACKING_URI is not set (e.g. https://localhost; see docs/lifecycle.md)"
    )


def test_example_teams_file_loads():
    spec = load_teams(ROOT / "examples" / "teams.yaml")
    recsys = next(t for t in spec.teams if t.name == "recsys")
    assert "recsys/reco/training" in recsys.experiments(spec.experiment_types)
    assert recsys.owns_model("reco-als") and not recsys.owns_model("fraud-xgb")


def write_teams(tmp_path, teams) -> Path:
    path = tmp_path / "teams.yaml"
    path.write_text(yaml.safe_dump({"teams": teams}))
    return path


def test_overlapping_prefixes_are_refused(tmp_path):
    path = write_teams(
        tmp_path,
        [
            {"name": "a", "project_prefixes": ["reco"], "members": ["x"]},
            {"name": "b", "project_prefixes": ["recommend"], "members": ["y"]},
        ],
    )
    with pytest.raises(CommandError, match="overlaps"):
        load_teams(path)


def test_bad_permission_is_refused(tmp_path):
    path = write_teams(
        tmp_path, [{"name": "a", "project_prefixes": ["p"], "members": [{"username": "x", "permission": "OWNER"}]}]
    )
    with pytest.raises(CommandError, match="permission must be one of"):
        load_teams(path)


def test_register_refuses_other_teams_prefix(tmp_path):
    spec = load_teams(
        write_teams(
            tmp_path,
            [
                {"name": "a", "project_prefixes": ["pa"], "members": ["alice"]},
                {"name": "b", "project_prefixes": ["pb"], "members": ["bob"]},
            ],
        )
    )
    assert team_for_model(spec, "pa-als", "alice", False).name == "a"
    with pytest.raises(
        CommandError, match=r"outside the prefixes of your team\(s\) \(a: pa\*-ALGORITHM\); it belongs to team b"
    ):
        team_for_model(spec, "pb-als", "alice", False)
    with pytest.raises(CommandError, match="not a member of team 'b'"):
        team_for_model(spec, "pb-als", "alice", False, team="b")
    with pytest.raises(CommandError, match="not PROJECT-ALGORITHM"):
        team_for_model(spec, "PA_als", "alice", False)
    assert team_for_model(spec, "pb-als", "admin", True, team="b").name == "b"


def test_thresholds():
    assert parse_thresholds(["val_ndcg=0.7", "rmse = 2"]) == {"val_ndcg": 0.7, "rmse": 2.0}
    for bad in ("val_ndcg", "=1", "x=abc"):
        with pytest.raises(CommandError):
            parse_thresholds([bad])


def test_gc_core_signature_we_call():
    """cleanup calls mlflow gc's core with scoping arguments: an MLflow upgrade that renames them fails here."""
    from mlflow.cli import _gc_tracking_resources

    params = inspect.signature(_gc_tracking_resources).parameters
    for name in (
        "backend_store",
        "run_ids",
        "experiment_ids",
        "logged_model_ids",
        "older_than",
        "time_delta",
        "skip_experiments",
        "skip_logged_models",
    ):
        assert name in params


class CountingMlflow(BaseHTTPRequestHandler):
    """A local stand-in for the REST endpoint: counts log-batch requests and the metrics in each."""

    batches = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path == "/api/2.0/mlflow/runs/log-batch":
            type(self).batches.append(len(body.get("metrics", [])))
        payload = b"{}"
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


def test_per_step_metrics_are_batched_one_request_per_1000(monkeypatch):
    import mlflow

    from client.batching import MetricBatcher

    CountingMlflow.batches = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), CountingMlflow)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        for var in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD", "MLFLOW_ENABLE_ASYNC_LOGGING"):
            monkeypatch.delenv(var, raising=False)
        client = mlflow.MlflowClient(tracking_uri=f"http://127.0.0.1:{server.server_address[1]}")
        with MetricBatcher(client, "0" * 32) as batcher:
            for step in range(1250):  # 2 metrics x 1250 steps = 2500 points
                batcher.log({"loss": 0.5, "ndcg": 0.5}, step=step)
    finally:
        server.shutdown()
    assert batcher.requests == 3
    assert CountingMlflow.batches == [1000, 1000, 500]


def test_workflow_files_exist():
    names = {str(p.relative_to(ROOT)) for p in WORKFLOWS}
    templates = {"examples/workflows/model-train-validate.yml", "examples/workflows/model-promote-champion.yml"}
    assert {".github/workflows/ci.yml", *templates} <= names
    assert not list((ROOT / ".github" / "workflows").glob("model-*.yml")), (
        "templates run on push: keep them in examples/"
    )


@pytest.mark.parametrize("workflow", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_validates_against_schema(workflow):
    """check-jsonschema's vendored GitHub workflow schema: no network at test time."""
    exe = Path(sys.executable).parent / "check-jsonschema"
    out = subprocess.run(
        [str(exe), "--builtin-schema", "vendor.github-workflows", str(workflow)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr


def test_ci_workflow_shows_state_on_failure_and_champion_needs_approval():
    ci = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text())
    steps = ci["jobs"]["compose-smoke"]["steps"]
    runs = " ".join(s.get("run", "") for s in steps)
    assert "./mlflowctl up" in runs and "./mlflowctl test" in runs  # the README's two commands
    on_failure = " ".join(s["run"] for s in steps if s.get("if") == "failure()")
    assert "ps --all" in on_failure and "logs" in on_failure
    promote = yaml.safe_load((ROOT / "examples/workflows/model-promote-champion.yml").read_text())
    job = promote["jobs"]["promote-champion"]
    assert job["environment"] == "production"
    assert any("--to champion" in s.get("run", "") for s in job["steps"])
