"""`mlflowctl cleanup` against the running stack: what goes, what stays, and the S3 objects behind them.

"Old" runs are created with MlflowClient.create_run(start_time=...) in the past: the server stores
that start time and cleanup's search sees it, as it would see a 100-day-old run.

The bucket and the backend store are on the engine's internal network: objects are listed by our
image in the mlflow container; `cleanup --execute` runs on this host and its purge step (it writes
to the tracking DB, as `mlflow gc` does) runs there as scripts/jobs/purge.py.
"""

import json
import time

import pytest
from mlflow.exceptions import MlflowException

from ctl import stackexec
from tests.stack.lifecycle_fixtures import run_cli

DAY_MS = 86_400_000
# In our image: BUCKET PREFIX... -> {prefix: {key: size}} (bounded pagination).
LIST_CODE = r"""
import json, os, sys
import boto3
s3 = boto3.client("s3", endpoint_url=os.environ.get("MLFLOW_S3_ENDPOINT_URL") or None)
out = {}
for prefix in sys.argv[2:]:
    out[prefix], token = {}, None
    for _ in range(1000):
        page = s3.list_objects_v2(Bucket=sys.argv[1], Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        out[prefix].update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        token = page.get("NextContinuationToken")
        if not token:
            break
    else:
        raise SystemExit("S3 listing did not finish")
print(json.dumps(out))
"""


def listing(bucket, *prefixes) -> dict:
    """Prefix -> {key: size} of the objects under it, for every prefix, in one call into the engine."""
    return json.loads(stackexec.python(LIST_CODE, bucket, *prefixes, timeout=120).stdout)


def test_cleanup_dry_run_then_execute(mlflow_admin, admin_env, stack_env, unique, monkeypatch):
    import mlflow
    from sklearn.linear_model import LogisticRegression

    monkeypatch.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    mlf, bucket = mlflow_admin, stack_env["MLFLOW_ARTIFACT_BUCKET"]
    exp_id = mlf.create_experiment(f"cleanup/{unique}")
    now = int(time.time() * 1000)

    def make_run(age_days, ndcg, name):
        run = mlf.create_run(exp_id, start_time=now - int(age_days * DAY_MS), run_name=name)
        if ndcg is not None:
            mlf.log_metric(run.info.run_id, "val_ndcg", ndcg, timestamp=now)
        mlf.log_text(run.info.run_id, f"{name} " * 200, "notes/summary.txt")
        mlf.set_terminated(run.info.run_id, end_time=now - int(age_days * DAY_MS) + 1000)
        return run.info.run_id

    old_best = [make_run(120, 0.9, "old-best-1"), make_run(100, 0.8, "old-best-2")]
    old_doomed = [make_run(95, 0.3, "old-worse"), make_run(200, None, "old-no-metric")]
    old_registered = make_run(150, 0.1, "old-registered")
    young = make_run(5, 0.05, "young-poor")
    # A logged model (MLflow 3 keeps model artifacts under models/, not under the run: #17240).
    with mlflow.start_run(run_id=old_doomed[0]):
        logged = mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="model")
    mlf.set_terminated(old_doomed[0])
    with mlflow.start_run(run_id=old_registered):
        reg = mlflow.sklearn.log_model(LogisticRegression().fit([[0.0], [1.0]], [0, 1]), name="model")
    mlf.set_terminated(old_registered)
    mlflow.register_model(reg.model_uri, f"cleanup-{unique}".lower().replace("_", "-")[:60])

    def prefix(run_id):
        return f"{exp_id}/{run_id}/"

    runs = old_best + old_doomed + [old_registered, young]
    model_prefix = f"{exp_id}/models/{logged.model_id}/"
    seen = listing(bucket, model_prefix, *map(prefix, runs))
    before, model_objects = {r: seen[prefix(r)] for r in runs}, seen[model_prefix]
    assert all(before.values()) and model_objects
    args = ("cleanup", f"cleanup/{unique}", "--max-age-days", "90", "--keep-top-n", "2", "--metric", "val_ndcg")

    dry = run_cli(admin_env, *args)
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would delete 2 run(s), 1 logged model(s)" in dry.stdout
    for run_id in old_doomed:
        assert run_id in dry.stdout
    for run_id in old_best + [old_registered, young]:
        assert run_id not in dry.stdout
    after_dry = listing(bucket, *map(prefix, runs))
    assert {r: after_dry[prefix(r)] for r in runs} == before  # dry run changed nothing
    assert len(mlf.search_runs([exp_id])) == 6

    # The purge step runs as scripts/jobs/purge.py in the mlflow container, the only place that reaches the database.
    done = run_cli(admin_env, *args, "--execute")
    assert done.returncode == 0, done.stderr
    freed = sum(before[r][k] for r in old_doomed for k in before[r]) + sum(model_objects.values())
    assert "freed" in done.stdout and f"({freed} bytes)" in done.stdout, done.stdout

    kept_model_prefix = f"{exp_id}/models/{reg.model_id}/"
    after = listing(bucket, model_prefix, kept_model_prefix, *map(prefix, runs))
    for run_id in old_doomed:  # purged: metadata and objects
        with pytest.raises(MlflowException) as exc:
            mlf.get_run(run_id)
        assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        assert after[prefix(run_id)] == {}
    assert after[model_prefix] == {}
    for run_id in old_best + [old_registered, young]:  # kept: metadata and objects
        assert mlf.get_run(run_id).info.lifecycle_stage == "active"
        assert after[prefix(run_id)] == before[run_id]
    assert after[kept_model_prefix]

    # Nothing left: the plan (through Nginx, from this host) finds nothing, so no purge is attempted.
    again = run_cli(admin_env, *args, "--execute")
    assert again.returncode == 0 and "nothing to delete" in again.stdout
