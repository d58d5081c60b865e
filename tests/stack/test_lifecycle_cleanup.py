"""`mlflowctl cleanup` against the running stack: what goes, what stays, and the S3 objects behind them.

"Old" runs are created with MlflowClient.create_run(start_time=...) in the past: the server stores
that start time and cleanup's search sees it, as it would see a 100-day-old run.
"""
import time

import boto3
import pytest
from mlflow.exceptions import MlflowException

from tests.stack.lifecycle_fixtures import BACKEND_STORE_URI, S3_ENDPOINT, admin_env, run_cli  # noqa: F401

DAY_MS = 86_400_000


@pytest.fixture
def s3(stack_env):
    session = boto3.session.Session(aws_access_key_id=stack_env["AWS_ACCESS_KEY_ID"],
                                    aws_secret_access_key=stack_env["AWS_SECRET_ACCESS_KEY"], region_name="us-east-1")
    return session.client("s3", endpoint_url=S3_ENDPOINT)


def objects(s3, bucket, prefix) -> dict:
    """Key -> size under PREFIX (bounded pagination)."""
    out, token = {}, None
    for _ in range(1000):
        page = s3.list_objects_v2(Bucket=bucket, Prefix=prefix, **({"ContinuationToken": token} if token else {}))
        out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
        token = page.get("NextContinuationToken")
        if not token:
            return out
    raise AssertionError("S3 listing did not finish")


def test_cleanup_dry_run_then_execute(mlflow_admin, admin_env, stack_env, s3, unique, monkeypatch):
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

    prefix = lambda run_id: f"{exp_id}/{run_id}/"
    before = {r: objects(s3, bucket, prefix(r)) for r in old_best + old_doomed + [old_registered, young]}
    model_prefix = f"{exp_id}/models/{logged.model_id}/"
    model_objects = objects(s3, bucket, model_prefix)
    assert all(before.values()) and model_objects
    args = ("cleanup", f"cleanup/{unique}", "--max-age-days", "90", "--keep-top-n", "2", "--metric", "val_ndcg")

    dry = run_cli(admin_env, *args)
    assert dry.returncode == 0, dry.stderr
    assert "dry run: would delete 2 run(s), 1 logged model(s)" in dry.stdout
    for run_id in old_doomed:
        assert run_id in dry.stdout
    for run_id in old_best + [old_registered, young]:
        assert run_id not in dry.stdout
    assert {r: objects(s3, bucket, prefix(r)) for r in before} == before  # dry run changed nothing
    assert len(mlf.search_runs([exp_id])) == 6

    env = dict(admin_env, PGPASSWORD=stack_env["MLFLOW_DB_PASSWORD"])
    done = run_cli(env, *args, "--execute", "--backend-store-uri", BACKEND_STORE_URI, in_process=False)
    assert done.returncode == 0, done.stderr
    freed = sum(before[r][k] for r in old_doomed for k in before[r]) + sum(model_objects.values())
    assert "freed" in done.stdout and f"({freed} bytes)" in done.stdout, done.stdout

    for run_id in old_doomed:  # purged: metadata and objects
        with pytest.raises(MlflowException) as exc:
            mlf.get_run(run_id)
        assert exc.value.error_code == "RESOURCE_DOES_NOT_EXIST"
        assert objects(s3, bucket, prefix(run_id)) == {}
    assert objects(s3, bucket, model_prefix) == {}
    for run_id in old_best + [old_registered, young]:  # kept: metadata and objects
        assert mlf.get_run(run_id).info.lifecycle_stage == "active"
        assert objects(s3, bucket, prefix(run_id)) == before[run_id]
    assert objects(s3, bucket, f"{exp_id}/models/{reg.model_id}/")

    again = run_cli(env, *args, "--execute", "--backend-store-uri", BACKEND_STORE_URI)
    assert again.returncode == 0 and "nothing to delete" in again.stdout


def test_execute_without_backend_store_uri_changes_nothing(mlflow_admin, admin_env, unique):
    exp_id = mlflow_admin.create_experiment(f"cleanup/{unique}")
    run = mlflow_admin.create_run(exp_id, start_time=int(time.time() * 1000) - 400 * DAY_MS)
    env = {k: v for k, v in admin_env.items() if k != "MLFLOW_BACKEND_STORE_URI"}
    out = run_cli(env, "cleanup", exp_id, "--keep-top-n", "0", "--execute")
    assert out.returncode == 1
    assert out.stderr.strip().splitlines()[-1] == \
        "mlflowctl cleanup: --execute needs --backend-store-uri or MLFLOW_BACKEND_STORE_URI (see --help)"
    assert mlflow_admin.get_run(run.info.run_id).info.lifecycle_stage == "active"
